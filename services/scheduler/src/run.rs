//! The scheduler process (`colony scheduler`, part of `colony all`).
//!
//! Its clock is a timer of its own: it sleeps until the earliest
//! `next_due_at` of any schedule (at most `max_sleep`, so a schedule made
//! meanwhile is seen), then decides every due schedule, several at once.
//! Any number of schedulers may run: each due schedule is decided by the
//! one that locks it first, and the fire rows keep every fire once.

use std::time::{Duration, Instant};

use relay::Relay;
use store::goals::GoalAction;
use store::schedules::{Decided, Previous};
use store::Store;
use subjects::subject;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::spec::Rules;

#[derive(Clone, Debug)]
pub struct Config {
    /// Loops deciding at once (each its own transaction).
    pub concurrency: usize,
    /// Due schedules one transaction decides at most.
    pub batch: u32,
    /// Longest sleep between looks at the schedules.
    pub max_sleep: Duration,
    /// How often buffered fires are checked for their predecessor's end.
    pub buffered_every: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 4,
            batch: 100,
            max_sleep: Duration::from_millis(250),
            buffered_every: Duration::from_millis(500),
        }
    }
}

/// Count decided fires in the process's metrics.
pub fn record(fires: &[subjects::schedules::FireView]) {
    let m = &telemetry::get().scheduler;
    for f in fires {
        // A fire that waited for its predecessor (it has a reason) is late
        // by policy, not by the scheduler.
        let lateness = f.lateness_ms.filter(|_| f.reason.is_none());
        m.fire(f.outcome.as_str(), f.kind.as_str(), lateness);
    }
}

/// Stop the task or goal of `prev` (overlap `cancel_previous`); a final
/// one is left as it is.
pub async fn cancel_previous(
    store: &Store,
    nats: &async_nats::Client,
    relay: &Relay,
    prev: &Previous,
) {
    let reason = "cancelled by its schedule's next fire (overlap: cancel_previous)";
    if let Some(task) = prev.task_id {
        match store.cancel(&prev.tenant, task, reason).await {
            Ok((_, outbox, worker)) => {
                relay.send(outbox);
                let target = match worker {
                    Some(w) => subject::ctl(&w, subject::CTL_CANCEL),
                    None => subject::ctl_broadcast(subject::CTL_CANCEL),
                };
                // Core NATS like a person's cancel: a lost one leaves the
                // run to finish and its result to be dropped.
                let _ = nats.publish(target, task.to_string().into()).await;
            }
            Err(e) => tracing::info!(%task, error = %e, "previous fire's task not cancelled"),
        }
    }
    if let Some(goal) = prev.goal_id {
        match store
            .act_on_goal(&prev.tenant, goal, GoalAction::Cancel(reason.to_string()))
            .await
        {
            Ok(changed) => {
                relay.send(changed.outbox);
                for (task, worker) in &changed.cancelled_on {
                    let target = match worker {
                        Some(w) => subject::ctl(w, subject::CTL_CANCEL),
                        None => subject::ctl_broadcast(subject::CTL_CANCEL),
                    };
                    let _ = nats.publish(target, task.to_string().into()).await;
                }
            }
            Err(e) => tracing::info!(%goal, error = %e, "previous fire's goal not cancelled"),
        }
    }
}

/// Run `step` (a decision of one schedule) until it has nothing more to
/// do, cancelling a previous fire when the overlap policy asks for it.
/// Returns every fire decided.
pub async fn drive<F, Fut>(
    store: &Store,
    nats: &async_nats::Client,
    relay: &Relay,
    mut step: F,
) -> store::Result<Decided>
where
    F: FnMut(Option<Previous>) -> Fut,
    Fut: std::future::Future<Output = store::Result<Decided>>,
{
    let mut all = Decided::default();
    let mut tried: Option<Previous> = None;
    // Bounded: a long downtime is caught up 1 000 fire times a pass.
    for _ in 0..1000 {
        let d = step(tried.clone()).await?;
        relay.send(d.outbox);
        record(&d.fires);
        all.fires.extend(d.fires);
        match d.cancel_first {
            Some(prev) => {
                cancel_previous(store, nats, relay, &prev).await;
                tried = Some(prev);
            }
            None => {
                tried = None;
                if !d.more {
                    break;
                }
            }
        }
    }
    Ok(all)
}

/// Decide schedule `id`'s due fire times.
async fn decide(
    store: &Store,
    rules: &Rules,
    nats: &async_nats::Client,
    relay: &Relay,
    id: Uuid,
) -> bool {
    let r = drive(store, nats, relay, |tried| async move {
        store.decide_due(id, rules, tried.as_ref()).await
    })
    .await;
    match r {
        Ok(d) => {
            for f in &d.fires {
                tracing::debug!(schedule = %id, fire_at = %f.fire_at, outcome = f.outcome.as_str(), lateness_ms = ?f.lateness_ms, "fire decided");
            }
            true
        }
        Err(e) => {
            tracing::warn!(schedule = %id, error = %e, "schedule not decided; trying again");
            false
        }
    }
}

/// Decide due schedules until `token` fires; errors are logged and
/// retried, never the end of the scheduler. `cfg.concurrency` loops share
/// the work: each takes a batch of due schedules at a time
/// ([`Store::decide_batch`]), then decides the ones the batch left one by
/// one.
pub async fn run(
    cfg: Config,
    rules: Rules,
    nats: async_nats::Client,
    relay: Relay,
    token: CancellationToken,
) {
    tracing::info!(loops = cfg.concurrency, "scheduler started");
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..cfg.concurrency.max(1) {
        let (cfg, rules, nats, relay, token) = (
            cfg.clone(),
            rules.clone(),
            nats.clone(),
            relay.clone(),
            token.clone(),
        );
        loops.spawn(async move { one_loop(i, cfg, rules, nats, relay, token).await });
    }
    while loops.join_next().await.is_some() {}
    tracing::info!("scheduler stopped");
}

async fn one_loop(
    index: usize,
    cfg: Config,
    rules: Rules,
    nats: async_nats::Client,
    relay: Relay,
    token: CancellationToken,
) {
    let store = rules.store.clone();
    let mut last_buffered = Instant::now();
    let mut last_prune: Option<Instant> = None;
    // Schedules whose decision failed, left alone until then (the others
    // go on).
    let mut backoff: std::collections::HashMap<uuid::Uuid, Instant> = Default::default();
    while !token.is_cancelled() {
        let mut pause = Duration::ZERO;
        let mut full = false;
        match store.decide_batch(cfg.batch, &rules).await {
            Ok(b) => {
                full = b.claimed as u32 >= cfg.batch;
                relay.send(b.decided.outbox);
                record(&b.decided.fires);
                for f in &b.decided.fires {
                    tracing::debug!(fire_at = %f.fire_at, outcome = f.outcome.as_str(), lateness_ms = ?f.lateness_ms, "fire decided");
                }
                backoff.retain(|_, until| *until > Instant::now());
                for id in b.single {
                    if backoff.contains_key(&id) {
                        continue;
                    }
                    if !decide(&store, &rules, &nats, &relay, id).await {
                        backoff.insert(id, Instant::now() + Duration::from_secs(5));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot decide the due schedules");
                pause = Duration::from_secs(1);
            }
        }
        if index == 0 && last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(Instant::now());
            match store.prune_fires().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "old fire rows removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove old fire rows"),
            }
        }
        if index == 0 && last_buffered.elapsed() >= cfg.buffered_every {
            last_buffered = Instant::now();
            match store.buffered_schedules().await {
                Ok(ids) => {
                    for id in ids {
                        if let Err(e) = drive(&store, &nats, &relay, |_| {
                            store.promote_buffered(id, &rules)
                        })
                        .await
                        {
                            tracing::warn!(schedule = %id, error = %e, "buffered fire not started");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the buffered fires"),
            }
        }
        if full && pause.is_zero() {
            continue;
        }
        // Due schedules another loop or scheduler holds: look again soon,
        // not at once.
        let idle = Duration::from_millis(20);
        if pause.is_zero() {
            pause = match store.next_due().await {
                Ok(Some(next)) => match Duration::try_from(next - OffsetDateTime::now_utc()) {
                    Ok(left) if !left.is_zero() => left.min(cfg.max_sleep),
                    _ => idle,
                },
                Ok(None) => cfg.max_sleep,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the next due time");
                    Duration::from_secs(1)
                }
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = token.cancelled() => {}
        }
    }
}
