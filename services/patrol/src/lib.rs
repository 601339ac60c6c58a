//! The patrol (`colony patrol`, part of `colony all`): deterministic rules,
//! no model calls, that find work that is stuck and recover it in steps.
//!
//! Any number of patrols may run; one acts at a time, the holder of the
//! `patrol` lease in Postgres (renewed every sweep, taken over when it
//! lapses). Every patrol watches the live events (so a new holder knows
//! what the runs are doing); the holder sweeps every `interval` for:
//!
//! - `stale_heartbeat`: a running task whose worker stopped heartbeating
//!   for `stale_after` (its worker is gone and nothing redelivered it);
//! - `looping`: a run that made the same tool call with the same result
//!   `loop_repeats` times in a row (the evidence: the call and its result);
//! - `silent`: a run with no new output for `silent_after`;
//! - `unclaimed`: a task queued for `unclaimed_after` that no worker took
//!   (no worker serves its pool): an alert, once per attempt;
//! - `goal_idle`: a running goal where nothing changed for `goal_idle_after`:
//!   an alert, once per quiet spell;
//! - `redelivery_storm`: a task started `storm_runs` times within
//!   `storm_window`: an alert, once per attempt;
//! - a goal past its wall-clock budget (`budget.wall_secs`): blocked for
//!   a person, its queued work held (kind `budget`, like a spent one);
//! - `dlq_growth`: the dead-letter stream grew by `dlq_growth` messages
//!   since the patrol last looked: an alert to the operator's (`default`)
//!   tenant.
//!
//! A stuck task is recovered in steps, one per finding, each written down
//! with its rule, reason and evidence (`patrol_actions`), as a `patrol`
//! event on its goal, and as a `patrol_alert` notification: requeue it;
//! then requeue it to another employee of its role; then (a goal's
//! sub-task) ask the planner to plan the goal again; then fail it for
//! good, which puts its goal in front of a person. Each step ends the
//! attempt under the task path's own guard, so a run that finished in the
//! meantime is left alone, and its worker is told to stop the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relay::Relay;
use serde_json::json;
use sha2::{Digest, Sha256};
use store::patrol::{PatrolAction, Suspect};
use store::tasks::Finish;
use store::Store;
use subjects::agent::AgentEvent;
use subjects::{subject, Event, EventBody};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The lease's name.
pub const LEASE: &str = "patrol";

#[derive(Clone, Debug)]
pub struct Config {
    /// Who this patrol is (its lease holder name).
    pub holder: String,
    pub interval: Duration,
    /// The lease lapses this long after its last renewal.
    pub lease_ttl: Duration,
    pub stale_after: Duration,
    pub loop_repeats: u32,
    pub silent_after: Duration,
    pub unclaimed_after: Duration,
    pub goal_idle_after: Duration,
    /// This many runs of one task within `storm_window`: an alert.
    pub storm_runs: u32,
    pub storm_window: Duration,
    /// The dead-letter stream growing by this many since the last alert:
    /// an alert (to the `default` tenant, the operator's).
    pub dlq_growth: u64,
}

impl Config {
    pub fn new(holder: String) -> Config {
        Config {
            holder,
            interval: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            stale_after: Duration::from_secs(30),
            loop_repeats: 5,
            silent_after: Duration::from_secs(300),
            unclaimed_after: Duration::from_secs(60),
            goal_idle_after: Duration::from_secs(900),
            storm_runs: 5,
            storm_window: Duration::from_secs(600),
            dlq_growth: 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot watch the events: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// What the event watcher knows of one run (task, attempt).
#[derive(Default)]
struct Seen {
    /// Tool calls asked for and not yet answered: call id → (name, args).
    calls: HashMap<String, (String, String)>,
    /// The last answered call's fingerprint, its text, and how many times
    /// in a row it came back the same.
    last: Option<([u8; 32], String)>,
    repeats: u32,
    /// The last time the run showed anything.
    at: Option<Instant>,
}

/// A run the watcher caught repeating itself.
#[derive(Clone, Debug)]
struct Looping {
    task: Uuid,
    attempt: u32,
    call: String,
    repeats: u32,
}

#[derive(Default)]
struct Watch {
    runs: HashMap<(Uuid, u32), Seen>,
    looping: Vec<Looping>,
}

type Shared = Arc<Mutex<Watch>>;

/// Run the patrol until `shutdown`.
pub async fn run(
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    relay: Relay,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let watch: Shared = Arc::default();
    let mut events = nats.subscribe(subject::events_all()).await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut holding = false;
    let js = async_nats::jetstream::new(nats.clone());
    let mut dlq_seen: Option<u64> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            msg = events.next() => match msg {
                Some(m) => observe(&watch, &cfg, &m.payload),
                None => break,
            },
            _ = tick.tick() => {
                let held = match store.take_lease(LEASE, &cfg.holder, cfg.lease_ttl).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(error = %e, "patrol: cannot renew its lease; not acting this sweep");
                        false
                    }
                };
                if held != holding {
                    tracing::info!(holder = %cfg.holder, held, "patrol lease");
                    holding = held;
                }
                if held {
                    let p = Patrol { cfg: &cfg, store: &store, nats: &nats, relay: &relay };
                    if let Err(e) = p.sweep(&watch, started).await {
                        tracing::warn!(error = %e, "patrol: the sweep stopped early; next one in {:?}", cfg.interval);
                    }
                    if let Err(e) = p.dead_letters(&js, &mut dlq_seen).await {
                        tracing::warn!(error = %e, "patrol: cannot record a dead-letter alert");
                    }
                } else {
                    watch.lock().expect("watch lock").looping.clear();
                }
            }
        }
    }
    if holding {
        let _ = store.release_lease(LEASE, &cfg.holder).await;
    }
    Ok(())
}

/// Learn from one live event: a run's tool calls and results.
fn observe(watch: &Shared, cfg: &Config, payload: &[u8]) {
    let Ok(ev) = serde_json::from_slice::<Event>(payload) else {
        return;
    };
    let mut w = watch.lock().expect("watch lock");
    let key = (ev.task_id, ev.attempt);
    match &ev.body {
        EventBody::State { to, .. } => {
            if to.is_final() || *to != subjects::TaskState::Running {
                w.runs.remove(&key);
            } else {
                w.runs.entry(key).or_default().at = Some(Instant::now());
            }
        }
        EventBody::Output { .. } => {
            w.runs.entry(key).or_default().at = Some(Instant::now());
        }
        EventBody::Agent { event } => {
            let seen = w.runs.entry(key).or_default();
            seen.at = Some(Instant::now());
            match event {
                AgentEvent::ToolCall {
                    call_id,
                    name,
                    arguments,
                } => {
                    seen.calls
                        .insert(call_id.clone(), (name.clone(), arguments.clone()));
                }
                AgentEvent::ToolResult {
                    call_id, output, ..
                } => {
                    let Some((name, args)) = seen.calls.remove(call_id) else {
                        return;
                    };
                    let mut h = Sha256::new();
                    for part in [&name, &args, output] {
                        h.update(part.len().to_le_bytes());
                        h.update(part.as_bytes());
                    }
                    let print: [u8; 32] = h.finalize().into();
                    if seen.last.as_ref().is_some_and(|(p, _)| *p == print) {
                        seen.repeats += 1;
                    } else {
                        let shown: String = output.chars().take(200).collect();
                        seen.last = Some((print, format!("{name} {args} → {shown}")));
                        seen.repeats = 1;
                    }
                    if seen.repeats == cfg.loop_repeats {
                        let call = seen
                            .last
                            .as_ref()
                            .map(|(_, c)| c.clone())
                            .unwrap_or_default();
                        let repeats = seen.repeats;
                        w.looping.push(Looping {
                            task: ev.task_id,
                            attempt: ev.attempt,
                            call,
                            repeats,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    // Bounded: runs whose end was not seen (a lost event) age out.
    if w.runs.len() > 10_000 {
        let cut = Instant::now() - Duration::from_secs(3600);
        w.runs.retain(|_, s| s.at.is_some_and(|a| a > cut));
    }
}

struct Patrol<'a> {
    cfg: &'a Config,
    store: &'a Store,
    nats: &'a async_nats::Client,
    relay: &'a Relay,
}

impl Patrol<'_> {
    async fn sweep(&self, watch: &Shared, started: Instant) -> Result<(), store::Error> {
        let running = self.store.running_suspects(None).await?;
        // Runs caught repeating themselves.
        let looping: Vec<Looping> = std::mem::take(&mut watch.lock().expect("watch lock").looping);
        for l in looping {
            let Some(s) = running
                .iter()
                .find(|s| s.running.task.id == l.task && s.running.task.attempt == l.attempt)
            else {
                continue;
            };
            let reason = format!(
                "stuck: the same tool call returned the same result {} times in a row: {}",
                l.repeats, l.call
            );
            let evidence = json!({"call": l.call, "repeats": l.repeats});
            self.intervene(s, "looping", reason, evidence).await?;
        }
        // Runs whose worker stopped heartbeating.
        for s in running
            .iter()
            .filter(|s| s.silent_secs >= self.cfg.stale_after.as_secs_f64())
        {
            let reason = format!(
                "worker {} stopped heartbeating {:.0} s ago; the run is presumed lost",
                s.running.worker_id, s.silent_secs
            );
            let evidence = json!({"worker": s.running.worker_id, "silent_secs": s.silent_secs});
            self.intervene(s, "stale_heartbeat", reason, evidence)
                .await?;
        }
        // Runs that heartbeat but show nothing.
        let quiet: Vec<(Uuid, u32, f64)> = {
            let w = watch.lock().expect("watch lock");
            running
                .iter()
                .filter_map(|s| {
                    let key = (s.running.task.id, s.running.task.attempt);
                    let last = w.runs.get(&key).and_then(|r| r.at).unwrap_or(started);
                    let idle = last.elapsed();
                    (idle >= self.cfg.silent_after
                        && s.silent_secs < self.cfg.stale_after.as_secs_f64())
                    .then_some((key.0, key.1, idle.as_secs_f64()))
                })
                .collect()
        };
        for (task, attempt, idle) in quiet {
            if let Some(s) = running
                .iter()
                .find(|s| s.running.task.id == task && s.running.task.attempt == attempt)
            {
                let reason = format!("stuck: no new output for {idle:.0} s");
                self.intervene(s, "silent", reason, json!({"silent_secs": idle}))
                    .await?;
            }
        }
        // Work no worker takes.
        for w in self.store.unclaimed(self.cfg.unclaimed_after).await? {
            let reason = format!(
                "task {} has waited {:.0} s in pool {} and no worker claimed it: is any worker serving {}?",
                w.id, w.waited_secs, w.role, w.role
            );
            self.record(PatrolAction {
                tenant: w.tenant,
                task_id: Some(w.id),
                attempt: Some(w.attempt),
                goal_id: w.goal_id,
                subtask_key: None,
                rule: "unclaimed",
                action: "alert",
                reason,
                evidence: Some(json!({"pool": w.role, "waited_secs": w.waited_secs})),
                holder: self.cfg.holder.clone(),
            })
            .await?;
        }
        // Tasks started over and over.
        for c in self
            .store
            .churning(self.cfg.storm_window, self.cfg.storm_runs)
            .await?
        {
            let reason = format!(
                "task {} was started {:.0} times in {} s (a redelivery or retry storm); its last error says why",
                c.id,
                c.waited_secs,
                self.cfg.storm_window.as_secs()
            );
            self.record(PatrolAction {
                tenant: c.tenant,
                task_id: Some(c.id),
                attempt: Some(c.attempt),
                goal_id: c.goal_id,
                subtask_key: None,
                rule: "redelivery_storm",
                action: "alert",
                reason,
                evidence: Some(
                    json!({"runs": c.waited_secs, "window_secs": self.cfg.storm_window.as_secs()}),
                ),
                holder: self.cfg.holder.clone(),
            })
            .await?;
        }
        // Goals past their wall-clock budget wait for a person.
        for goal in self.store.overdue_goals().await? {
            let outbox = self.store.block_if_over_budget(goal).await?;
            if !outbox.is_empty() {
                tracing::warn!(goal = %goal, "goal past its wall-clock budget: blocked");
            }
            self.relay.send(outbox);
        }
        // Goals where nothing moves.
        for g in self.store.quiet_goals(self.cfg.goal_idle_after).await? {
            let reason = format!(
                "goal {} ({}) has not moved since {}",
                g.id, g.title, g.since
            );
            self.record(PatrolAction {
                tenant: g.tenant,
                task_id: None,
                attempt: None,
                goal_id: Some(g.id),
                subtask_key: None,
                rule: "goal_idle",
                action: "alert",
                reason,
                evidence: Some(json!({"since": g.since.unix_timestamp()})),
                holder: self.cfg.holder.clone(),
            })
            .await?;
        }
        Ok(())
    }

    /// Alert when the dead-letter stream grew by `dlq_growth` since the
    /// last look that alerted (or the first look).
    async fn dead_letters(
        &self,
        js: &async_nats::jetstream::Context,
        seen: &mut Option<u64>,
    ) -> Result<(), store::Error> {
        let depth = match js.get_stream(subjects::stream::DLQ).await {
            Ok(mut s) => match s.info().await {
                Ok(i) => i.state.messages,
                Err(e) => {
                    tracing::debug!(error = %e, "patrol: no dead-letter stream info");
                    return Ok(());
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "patrol: no dead-letter stream");
                return Ok(());
            }
        };
        let Some(before) = *seen else {
            *seen = Some(depth);
            return Ok(());
        };
        if depth < before {
            // Aged out or purged: a new baseline.
            *seen = Some(depth);
        } else if depth - before >= self.cfg.dlq_growth {
            *seen = Some(depth);
            self.record(PatrolAction {
                tenant: subjects::DEFAULT_TENANT.to_string(),
                task_id: None,
                attempt: None,
                goal_id: None,
                subtask_key: None,
                rule: "dlq_growth",
                action: "alert",
                reason: format!(
                    "the dead-letter stream grew from {before} to {depth} messages; see what was refused and why on colony.dlq.>"
                ),
                evidence: Some(json!({"from": before, "to": depth})),
                holder: self.cfg.holder.clone(),
            })
            .await?;
        }
        Ok(())
    }

    async fn record(&self, a: PatrolAction) -> Result<bool, store::Error> {
        match self.store.record_patrol(&a).await? {
            Some(outbox) => {
                tracing::warn!(rule = a.rule, action = a.action, task = ?a.task_id, goal = ?a.goal_id, reason = %a.reason, "patrol");
                self.relay.send(outbox);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next recovery step for a stuck run.
    async fn intervene(
        &self,
        s: &Suspect,
        rule: &'static str,
        reason: String,
        evidence: serde_json::Value,
    ) -> Result<(), store::Error> {
        let t = &s.running.task;
        let goal = t.goal_id;
        let steps = self
            .store
            .patrol_steps(t.id, goal, s.subtask_key.as_deref())
            .await?;
        let attempts_left = t.attempt < s.max_attempts;
        let action = match (steps, goal.is_some()) {
            (0, _) if attempts_left => "requeue",
            (1, true) if attempts_left => "reassign",
            (0..=2, true) => "replan",
            _ => "escalate",
        };
        let outbox = match action {
            "requeue" | "reassign" => {
                let finished = self
                    .store
                    .finish(
                        &s.running,
                        Finish::Retry {
                            error: reason.clone(),
                            delay: Duration::ZERO,
                        },
                    )
                    .await?;
                let Some(f) = finished else {
                    // The run ended on its own meanwhile.
                    return Ok(());
                };
                if let (Some(g), "reassign") = (goal, action) {
                    self.store.reassign(g, t.id).await?;
                }
                f.outbox
            }
            "replan" => {
                let note = format!(
                    "the patrol found sub-task {} stuck: {reason}",
                    s.subtask_key.as_deref().unwrap_or("?")
                );
                let changed = self
                    .store
                    .act_on_goal(
                        &t.tenant,
                        goal.expect("a goal"),
                        store::goals::GoalAction::Replan(note),
                    )
                    .await;
                match changed {
                    Ok(c) => c.outbox,
                    // Not plannable now (waiting for a person already).
                    Err(store::Error::Conflict(_) | store::Error::IllegalGoal(_)) => {
                        self.fail(s, &reason).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => self.fail(s, &reason).await?,
        };
        self.relay.send(outbox);
        // The run's worker stops it: the task is no longer this run's.
        let _ = self
            .nats
            .publish(
                subject::ctl(&s.running.worker_id, subject::CTL_CANCEL),
                t.id.to_string().into(),
            )
            .await;
        self.record(PatrolAction {
            tenant: t.tenant.clone(),
            task_id: Some(t.id),
            attempt: Some(t.attempt),
            goal_id: goal,
            subtask_key: s.subtask_key.clone(),
            rule,
            action,
            reason,
            evidence: Some(evidence),
            holder: self.cfg.holder.clone(),
        })
        .await?;
        Ok(())
    }

    /// Fail the attempt for good (a goal's sub-task then blocks its goal).
    async fn fail(&self, s: &Suspect, reason: &str) -> Result<Vec<store::OutboxMsg>, store::Error> {
        Ok(self
            .store
            .finish(
                &s.running,
                Finish::Fail {
                    error: format!("{reason}; the patrol gave up on it"),
                },
            )
            .await?
            .map(|f| f.outbox)
            .unwrap_or_default())
    }
}
