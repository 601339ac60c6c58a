//! Runs: whose they are, what they may spend, and the meter that counts it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::backend::{AuditOutcome, AuditRecord, UsageRecord};
use crate::egress::EgressPolicy;
use crate::{Inner, Shared};

/// Locks, taking over a lock whose holder panicked (every critical section
/// here leaves its data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spend limits of a run; an absent field is unlimited. A limit is crossed
/// when the figure goes above it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Quotas {
    /// Prompt plus completion tokens over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_run: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd_per_run: Option<f64>,
    /// Wall time from [`crate::ContainerGateway::begin_run`], in seconds
    /// (fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_secs_per_run: Option<f64>,
    /// Tokens of the day (UTC) of the run's employee, or of its role in its
    /// tenant for a run without one, over every run in every process: kept
    /// by [`crate::Backend::charge_day`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd_per_day: Option<f64>,
}

impl Quotas {
    /// A daily quota is set: every model call is charged to the day.
    pub fn has_daily(&self) -> bool {
        self.tokens_per_day.is_some() || self.cost_usd_per_day.is_some()
    }

    /// A cost quota is set: a model without a price cannot be metered.
    pub fn has_cost(&self) -> bool {
        self.cost_usd_per_run.is_some() || self.cost_usd_per_day.is_some()
    }
}

/// What the employee (or, without one, the role in this tenant) has spent
/// today, over every run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct DailyUsage {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// Who a run is, and what it may do.
#[derive(Clone, Debug, PartialEq)]
pub struct RunContext {
    pub task_id: Uuid,
    pub run_id: Uuid,
    /// The AI employee doing the run; `None` for a role run without one
    /// (which then has no memory).
    pub employee_id: Option<Uuid>,
    pub tenant: String,
    pub role: String,
    /// The one model name the role's runs may ask for (the gateway maps it
    /// to the provider's).
    pub model: String,
    /// Platform actions the role allows (deny by default).
    pub allowed_actions: BTreeSet<String>,
    /// Hosts the run may reach: an exact host name or IP address, or
    /// `*.suffix` for any name below `suffix` (not `suffix` itself).
    pub egress: Vec<String>,
    pub quotas: Quotas,
}

/// What a run has spent so far.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct RunTotals {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Model calls answered.
    pub calls: u64,
    /// Bytes the run's egress received from outside, and sent out.
    pub egress_bytes_in: u64,
    pub egress_bytes_out: u64,
}

impl RunTotals {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// A run in progress, as the request handlers see it.
pub(crate) struct Run {
    pub(crate) ctx: RunContext,
    pub(crate) egress: EgressPolicy,
    totals: Mutex<RunTotals>,
    exceeded: CancellationToken,
    reason: OnceLock<String>,
    /// Fires when the run ends (tunnels close, the wall timer stops).
    pub(crate) ended: CancellationToken,
    started: Instant,
    /// Backend writes (usage, audit) still in flight.
    pub(crate) writes: TaskTracker,
    /// Egress bytes, counted as they pass.
    pub(crate) egress_in: AtomicU64,
    pub(crate) egress_out: AtomicU64,
}

impl Run {
    pub(crate) fn new(ctx: RunContext) -> Arc<Run> {
        Arc::new(Run {
            egress: EgressPolicy::new(&ctx.egress),
            ctx,
            totals: Mutex::new(RunTotals::default()),
            exceeded: CancellationToken::new(),
            reason: OnceLock::new(),
            ended: CancellationToken::new(),
            started: Instant::now(),
            writes: TaskTracker::new(),
            egress_in: AtomicU64::new(0),
            egress_out: AtomicU64::new(0),
        })
    }

    /// The reason the run is over quota, once it is.
    pub(crate) fn over_quota(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    pub(crate) fn exceed(&self, reason: String) {
        if self.reason.set(reason).is_ok() {
            tracing::info!(
                task = %self.ctx.task_id,
                run = %self.ctx.run_id,
                "gateway: {}",
                self.reason.get().map(String::as_str).unwrap_or_default()
            );
        }
        self.exceeded.cancel();
    }

    pub(crate) fn end(&self) {
        self.ended.cancel();
        self.writes.close();
    }

    pub(crate) fn totals(&self) -> RunTotals {
        RunTotals {
            egress_bytes_in: self.egress_in.load(Ordering::Relaxed),
            egress_bytes_out: self.egress_out.load(Ordering::Relaxed),
            ..*lock(&self.totals)
        }
    }

    pub(crate) fn count_in(&self, n: usize) {
        self.egress_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_out(&self, n: usize) {
        self.egress_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds one answered model call and fires `exceeded` when that crosses a
    /// quota.
    pub(crate) fn meter(&self, prompt_tokens: u64, completion_tokens: u64, cost_usd: f64) {
        let crossed_now = {
            let mut t = lock(&self.totals);
            t.prompt_tokens += prompt_tokens;
            t.completion_tokens += completion_tokens;
            t.cost_usd += cost_usd;
            t.calls += 1;
            crossed(&self.ctx.quotas, &t)
        };
        if let Some(reason) = crossed_now {
            self.exceed(reason);
        }
    }

    /// Writes an audit record in the background (the meter's
    /// [`RunMeter::finish`] waits for it).
    pub(crate) fn audit(
        &self,
        gw: &Inner,
        action: &str,
        target: Option<String>,
        outcome: AuditOutcome,
        detail: &str,
    ) {
        let record = AuditRecord {
            at: SystemTime::now(),
            tenant: self.ctx.tenant.clone(),
            employee_id: self.ctx.employee_id,
            task_id: self.ctx.task_id,
            run_id: self.ctx.run_id,
            role: self.ctx.role.clone(),
            action: action.to_string(),
            target,
            outcome,
            detail: crate::reply::one_line(detail, 500),
        };
        let backend = gw.backend.clone();
        self.writes.spawn(async move {
            if let Err(e) = backend.audit(record.clone()).await {
                tracing::error!(
                    run = %record.run_id,
                    action = %record.action,
                    outcome = record.outcome.as_str(),
                    "gateway: could not write an audit record: {e}"
                );
            }
        });
    }

    /// Whose day a daily quota counts, in the sentence of a crossing.
    pub(crate) fn whose(&self) -> String {
        match self.ctx.employee_id {
            Some(e) => format!("employee {e}"),
            None => format!("role {} in tenant {}", self.ctx.role, self.ctx.tenant),
        }
    }

    /// Charges `tokens` and `cost_usd` (negative: gives back) to `day`
    /// (today when `None`). When the day is now over a daily quota, or the
    /// budget cannot be checked (money is not spent blind), the run is over
    /// quota too.
    pub(crate) async fn charge_day(
        &self,
        backend: &dyn crate::Backend,
        tokens: i64,
        cost_usd: f64,
        day: Option<time::Date>,
    ) -> Charge {
        let charge = match backend.charge_day(&self.ctx, tokens, cost_usd, day).await {
            Ok((totals, day)) => match crossed_day(&self.ctx.quotas, &totals, &self.whose()) {
                None => return Charge::Fits(totals, day),
                Some(reason) => Charge::Crossed(reason, day),
            },
            Err(e) => {
                tracing::error!(run = %self.ctx.run_id, "gateway: the daily budget could not be charged: {e}");
                Charge::Failed(
                    "quota_exceeded: the daily budget could not be checked (the database did not answer); the run stops rather than spend unmetered".to_string(),
                )
            }
        };
        if let Charge::Crossed(reason, _) | Charge::Failed(reason) = &charge {
            self.exceed(reason.clone());
        }
        charge
    }

    pub(crate) fn record_usage(&self, gw: &Inner, record: UsageRecord) {
        let backend = gw.backend.clone();
        self.writes.spawn(async move {
            let run = record.run_id;
            if let Err(e) = backend.record_usage(record).await {
                tracing::error!(run = %run, "gateway: could not record usage: {e}");
            }
        });
    }
}

/// The first per-run quota `t` crosses, as the sentence the worker and the
/// model see.
fn crossed(q: &Quotas, t: &RunTotals) -> Option<String> {
    let tokens = t.tokens();
    if let Some(max) = q.tokens_per_run {
        if tokens > max {
            return Some(format!(
                "quota_exceeded: tokens_per_run {tokens} > {max} (prompt {}, completion {})",
                t.prompt_tokens, t.completion_tokens
            ));
        }
    }
    if let Some(max) = q.cost_usd_per_run {
        if t.cost_usd > max {
            return Some(format!(
                "quota_exceeded: cost_usd_per_run {} > {} (prompt {} tokens, completion {} tokens)",
                usd(t.cost_usd),
                usd(max),
                t.prompt_tokens,
                t.completion_tokens
            ));
        }
    }
    None
}

/// What a charge to the day came to.
#[derive(Debug)]
pub(crate) enum Charge {
    /// Within the daily quotas: the day's totals after it, and the day.
    Fits(DailyUsage, time::Date),
    /// Charged, and now over a quota (the reason); the day it went to.
    Crossed(String, time::Date),
    /// Not charged: the budget could not be reached (the reason).
    Failed(String),
}

/// The first daily quota the day's totals `day` cross (after a charge of
/// this run's), as the sentence the worker and the model see.
pub(crate) fn crossed_day(q: &Quotas, day: &DailyUsage, whose: &str) -> Option<String> {
    if let Some(max) = q.tokens_per_day {
        if day.tokens > max {
            return Some(format!(
                "quota_exceeded: tokens_per_day {} > {max} (today's total of {whose}, over every run)",
                day.tokens
            ));
        }
    }
    if let Some(max) = q.cost_usd_per_day {
        if day.cost_usd > max {
            return Some(format!(
                "quota_exceeded: cost_usd_per_day {} > {} (today's total of {whose}, over every run)",
                usd(day.cost_usd),
                usd(max)
            ));
        }
    }
    None
}

/// Dollars with up to six decimals, without trailing zeros.
pub(crate) fn usd(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

/// The handle the worker keeps for a run: totals, and the token that fires
/// when a quota is crossed. Dropping it (or [`finish`](RunMeter::finish))
/// ends the run; requests after that get 409.
pub struct RunMeter {
    run: Arc<Run>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RunMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunMeter")
            .field("run_id", &self.run.ctx.run_id)
            .field("totals", &self.totals())
            .field("exceeded", &self.exceeded_reason())
            .finish()
    }
}

impl RunMeter {
    pub(crate) fn start(run: Arc<Run>, shared: Arc<Shared>) -> RunMeter {
        // A limit too far off to represent is no limit; a negative or NaN one
        // is already spent.
        let deadline = run.ctx.quotas.wall_secs_per_run.and_then(|secs| {
            let limit = if secs.is_nan() || secs <= 0.0 {
                Duration::ZERO
            } else {
                Duration::try_from_secs_f64(secs).ok()?
            };
            Some((secs, run.started.checked_add(limit)?))
        });
        if let Some((secs, deadline)) = deadline {
            let timer = run.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = timer.ended.cancelled() => {}
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        let elapsed = timer.started.elapsed().as_secs_f64();
                        timer.exceed(format!(
                            "quota_exceeded: wall_secs_per_run {secs} reached (the run has been going for {elapsed:.3} s)"
                        ));
                    }
                }
            });
        }
        RunMeter { run, shared }
    }

    pub fn context(&self) -> &RunContext {
        &self.run.ctx
    }

    pub fn run_id(&self) -> Uuid {
        self.run.ctx.run_id
    }

    /// Tokens, cost and calls so far (usage is counted as each call's answer
    /// ends).
    pub fn totals(&self) -> RunTotals {
        self.run.totals()
    }

    /// Fires once a quota is crossed: the worker should stop the run. The
    /// call that crossed it got its answer; every later request gets 429.
    pub fn exceeded(&self) -> CancellationToken {
        self.run.exceeded.clone()
    }

    /// Why [`exceeded`](RunMeter::exceeded) fired, e.g.
    /// `quota_exceeded: tokens_per_run 1234 > 1000 (prompt 900, completion 334)`.
    pub fn exceeded_reason(&self) -> Option<String> {
        self.run.over_quota().map(str::to_string)
    }

    pub fn elapsed(&self) -> Duration {
        self.run.started.elapsed()
    }

    /// Ends the run and waits until its usage and audit records are written
    /// (a streamed answer whose reader went away is read to its end, at most
    /// a minute, so that its usage counts). Returns the final totals.
    pub async fn finish(self) -> RunTotals {
        let run = self.run.clone();
        drop(self);
        run.writes.wait().await;
        run.totals()
    }
}

impl Drop for RunMeter {
    fn drop(&mut self) {
        self.shared.end(&self.run);
        self.run.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(p: u64, c: u64, cost: f64) -> RunTotals {
        RunTotals {
            prompt_tokens: p,
            completion_tokens: c,
            cost_usd: cost,
            calls: 1,
            ..RunTotals::default()
        }
    }

    #[test]
    fn a_quota_is_crossed_only_above_its_limit() {
        let q = Quotas {
            tokens_per_run: Some(1000),
            ..Quotas::default()
        };
        assert_eq!(crossed(&q, &totals(600, 400, 0.0)), None);
        assert_eq!(
            crossed(&q, &totals(900, 334, 0.0)).as_deref(),
            Some("quota_exceeded: tokens_per_run 1234 > 1000 (prompt 900, completion 334)")
        );
    }

    #[test]
    fn daily_quotas_judge_the_days_totals() {
        let q = Quotas {
            tokens_per_day: Some(5000),
            cost_usd_per_day: Some(1.0),
            ..Quotas::default()
        };
        let day = |tokens, cost_usd| DailyUsage { tokens, cost_usd };
        assert!(q.has_daily() && q.has_cost());
        assert!(!Quotas::default().has_daily());
        assert_eq!(crossed_day(&q, &day(5000, 1.0), "employee ada"), None);
        assert_eq!(
            crossed_day(&q, &day(5200, 0.5), "employee ada").as_deref(),
            Some("quota_exceeded: tokens_per_day 5200 > 5000 (today's total of employee ada, over every run)")
        );
        assert_eq!(
            crossed_day(&q, &day(10, 1.25), "role coder").as_deref(),
            Some("quota_exceeded: cost_usd_per_day 1.25 > 1 (today's total of role coder, over every run)")
        );
    }

    #[test]
    fn dollars_are_short() {
        assert_eq!(usd(0.0), "0");
        assert_eq!(usd(1.0), "1");
        assert_eq!(usd(0.0123), "0.0123");
        assert_eq!(usd(0.00000049), "0");
        assert_eq!(usd(12.5), "12.5");
    }
}
