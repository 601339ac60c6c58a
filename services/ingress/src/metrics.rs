//! `GET /metrics`: the process's own metrics (the scheduler's fires, the
//! HTTP API's requests) and the fleet's figures — streams, consumers,
//! dead letters from JetStream; tasks, goals, patrol actions and reviews
//! from Postgres; each worker's slots and container pool from the status it
//! writes to the registry bucket. The fleet's figures are read at most every
//! [`Collector::ttl`], however often Prometheus scrapes.
//!
//! Stage durations, retries, takeovers, hand-backs, quota refusals, model
//! tokens and cost, and the gateway's actions come from Postgres's history
//! tables (`events`, `usage`, `audit`): each refresh reads only the rows
//! written since the last one ([`store::Store::fleet_history`]) and counts
//! them into counters and histograms. The first refresh of a process starts
//! at the tables' ends rather than reading history back: these series start
//! at 0 with the process like any counter, and a restart is a counter reset
//! to Prometheus, not a replay of old rows counted again.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::TryStreamExt;
use store::Store;
use subjects::stream;
use telemetry::{
    ActionLabels, ConsumerLabels, ModelLabels, PatrolLabels, PoolLabels, QuotaLabels, RoleLabels,
    SourceLabels, StageLabels, StateLabels, StreamLabels, TaskLabels, TokenLabels,
    TransitionLabels, VerdictLabels, WorkerFigures,
};
use time::OffsetDateTime;

pub struct Collector {
    store: Store,
    js: jetstream::Context,
    pub ttl: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
    /// The last refresh's streams, consumers and backlogs, for
    /// `GET /v1/streams`.
    snapshot: std::sync::Mutex<subjects::ops::Streams>,
    /// How far the history tables have been read.
    /// Where the reading of the history tables stands: moved only once
    /// what was read is counted (refreshes are one at a time, under `last`).
    tails: std::sync::Mutex<store::fleet::Tails>,
}

fn age(t: OffsetDateTime) -> f64 {
    (OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0)
}

/// A consumer's figures, and the age of its oldest unacknowledged message.
struct ConsumerFigures {
    info: consumer::Info,
    backlog_age: f64,
}

impl Collector {
    pub fn new(store: Store, js: jetstream::Context, ttl: Duration) -> Collector {
        Collector {
            store,
            js,
            ttl,
            last: tokio::sync::Mutex::new(None),
            snapshot: std::sync::Mutex::new(Default::default()),
            tails: std::sync::Mutex::new(Default::default()),
        }
    }

    /// What the history tables gained since the last refresh, and the
    /// tails past it (not kept yet).
    async fn history(&self) -> Result<(store::fleet::History, store::fleet::Tails), store::Error> {
        let tails = self.tails.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.store.fleet_history(tails).await
    }

    /// Every worker's last status in the registry bucket.
    async fn worker_statuses(
        &self,
    ) -> Result<Vec<subjects::status::WorkerStatus>, async_nats::Error> {
        // No bucket: no worker has started yet.
        let Ok(kv) = self.js.get_key_value(subjects::kv::WORKERS).await else {
            return Ok(Vec::new());
        };
        let keys: Vec<String> = kv.keys().await?.try_collect().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(v) = kv.get(&key).await? {
                match serde_json::from_slice::<subjects::status::WorkerStatus>(&v) {
                    Ok(status) => out.push(status),
                    Err(e) => {
                        tracing::debug!(worker = %key, error = %e, "metrics: an unreadable worker status")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Refresh the fleet's figures when they are older than the TTL.
    async fn fresh(&self) {
        let mut last = self.last.lock().await;
        if last.is_none_or(|t| t.elapsed() >= self.ttl) {
            self.refresh().await;
            *last = Some(Instant::now());
        }
    }

    /// The text of a scrape, the fleet's figures refreshed when stale.
    pub async fn scrape(&self) -> String {
        self.fresh().await;
        telemetry::encode()
    }

    /// Streams, consumers and backlogs, as fresh as a scrape's.
    pub async fn streams(&self) -> subjects::ops::Streams {
        self.fresh().await;
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn consumers_of(
        &self,
        s: &jetstream::stream::Stream,
        first_ts: OffsetDateTime,
    ) -> Result<Vec<ConsumerFigures>, async_nats::Error> {
        let infos: Vec<consumer::Info> = s.consumers().try_collect().await?;
        let mut out = Vec::with_capacity(infos.len());
        // Durable consumers only: the ordered ones an event feed makes for a
        // while have random names, and would be a new series each.
        for info in infos
            .into_iter()
            .filter(|i| i.config.durable_name.is_some())
        {
            let unacked = info.num_pending + info.num_ack_pending as u64;
            let mut backlog_age = 0.0;
            let by_message =
                subjects::metrics::BACKLOG_BY_MESSAGE.contains(&info.stream_name.as_str());
            if unacked > 0 && !by_message {
                backlog_age = age(first_ts);
            } else if unacked > 0 {
                let filter = if info.config.filter_subject.is_empty() {
                    ">".to_string()
                } else {
                    info.config.filter_subject.clone()
                };
                // The first message past the ack floor of the consumer's
                // subjects: the oldest it has not finished with.
                match s
                    .raw_message_builder()
                    .sequence(info.ack_floor.stream_sequence + 1)
                    .next_by_subject(filter)
                    .send()
                    .await
                {
                    Ok(m) => backlog_age = age(m.time),
                    Err(e) => {
                        tracing::debug!(consumer = %info.name, error = %e, "no oldest message")
                    }
                }
            }
            out.push(ConsumerFigures { info, backlog_age });
        }
        Ok(out)
    }

    async fn refresh(&self) {
        let started = Instant::now();
        let f = &telemetry::get().fleet;
        let mut streams = Vec::new();
        for name in stream::ALL {
            let got = async {
                let mut s = self.js.get_stream(name).await?;
                let info = s.info().await?.clone();
                let consumers = self.consumers_of(&s, info.state.first_timestamp).await?;
                // Messages by subject: dead letters by source, and work by
                // pool (with the age of each pool's oldest).
                let mut by_subject = Vec::new();
                let filter = match name {
                    stream::DLQ => Some(subjects::subject::dlq_all()),
                    stream::WORK => Some(subjects::subject::work_all()),
                    _ => None,
                };
                if let Some(filter) = filter {
                    let i = s.info_with_subjects(filter).await?;
                    let counts: std::collections::HashMap<String, usize> = i.try_collect().await?;
                    for (subject, n) in counts {
                        let oldest = if name == stream::WORK && n > 0 {
                            s.get_first_raw_message_by_subject(&subject, info.state.first_sequence)
                                .await
                                .ok()
                                .map(|m| age(m.time))
                        } else {
                            None
                        };
                        by_subject.push((subject, n, oldest));
                    }
                }
                Ok::<_, async_nats::Error>((info, consumers, by_subject))
            }
            .await;
            match got {
                Ok(x) => streams.push(x),
                Err(e) => {
                    tracing::warn!(stream = name, error = %e, "metrics: cannot read a stream")
                }
            }
        }
        let (counts, history, statuses) = tokio::join!(
            self.store.fleet_counts(),
            self.history(),
            self.worker_statuses()
        );
        if let Err(e) = &counts {
            tracing::warn!(error = %e, "metrics: cannot count in Postgres");
        }
        match history {
            Ok((h, tails)) => {
                // Counted, then the tails move: nothing in between can stop
                // this (no await), so no row is counted twice or lost.
                count_history(&h);
                *self.tails.lock().unwrap_or_else(|e| e.into_inner()) = tails;
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the history tables"),
        }
        match statuses {
            Ok(s) => telemetry::get()
                .workers
                .set(s.iter().map(worker_figures).collect()),
            Err(e) => {
                // Shown as missing rather than as they were.
                telemetry::get().workers.set(Vec::new());
                tracing::warn!(error = %e, "metrics: cannot read the worker registry")
            }
        }
        f.clear();
        // What may have no rows yet shows as 0, not as no data.
        for source in subjects::subject::DLQ_SOURCES {
            f.dlq_messages
                .get_or_create(&SourceLabels {
                    source: source.to_string(),
                })
                .set(0);
        }
        for state in subjects::goals::GoalState::ALL {
            f.goals
                .get_or_create(&StateLabels {
                    state: state.as_str().to_string(),
                })
                .set(0);
        }
        for verdict in ["approved", "rejected"] {
            f.reviews
                .get_or_create(&VerdictLabels {
                    verdict: verdict.to_string(),
                })
                .set(0);
        }
        f.patrol_actions
            .get_or_create(&PatrolLabels {
                rule: "stale_heartbeat".into(),
                action: "requeue".into(),
            })
            .set(0);
        let mut snap = subjects::ops::Streams {
            at: Some(OffsetDateTime::now_utc()),
            ..Default::default()
        };
        for (info, consumers, by_subject) in &streams {
            let mut view = subjects::ops::StreamView {
                name: info.config.name.clone(),
                messages: info.state.messages,
                bytes: info.state.bytes,
                first_age_secs: 0.0,
                last_age_secs: 0.0,
                consumers: Vec::new(),
            };
            let sl = StreamLabels {
                stream: info.config.name.clone(),
            };
            f.stream_messages
                .get_or_create(&sl)
                .set(info.state.messages as i64);
            f.stream_bytes
                .get_or_create(&sl)
                .set(info.state.bytes as i64);
            if info.state.messages > 0 {
                view.first_age_secs = age(info.state.first_timestamp);
            }
            if info.state.last_sequence > 0 {
                view.last_age_secs = age(info.state.last_timestamp);
            }
            f.stream_first_age
                .get_or_create(&sl)
                .set(view.first_age_secs);
            f.stream_last_age.get_or_create(&sl).set(view.last_age_secs);
            for c in consumers {
                let i = &c.info;
                let labels = ConsumerLabels {
                    stream: i.stream_name.clone(),
                    consumer: i.name.clone(),
                    pool: i.name.strip_prefix("worker-").unwrap_or("").to_string(),
                };
                f.consumer_pending
                    .get_or_create(&labels)
                    .set(i.num_pending as i64);
                f.consumer_ack_pending
                    .get_or_create(&labels)
                    .set(i.num_ack_pending as i64);
                f.consumer_redelivered
                    .get_or_create(&labels)
                    .set(i.num_redelivered as i64);
                f.consumer_waiting
                    .get_or_create(&labels)
                    .set(i.num_waiting as i64);
                f.consumer_lag
                    .get_or_create(&labels)
                    .set((i.num_pending + i.num_ack_pending as u64) as i64);
                f.consumer_backlog_age
                    .get_or_create(&labels)
                    .set(c.backlog_age);
                view.consumers.push(subjects::ops::ConsumerView {
                    name: i.name.clone(),
                    pool: labels.pool.clone(),
                    pending: i.num_pending,
                    ack_pending: i.num_ack_pending as u64,
                    redelivered: i.num_redelivered as u64,
                    waiting: i.num_waiting as u64,
                    lag: i.num_pending + i.num_ack_pending as u64,
                    backlog_age_secs: c.backlog_age,
                });
                if !labels.pool.is_empty() {
                    // A served pool with nothing waiting: 0.
                    let pool = PoolLabels {
                        pool: labels.pool.clone(),
                    };
                    f.pool_backlog.get_or_create(&pool).inc_by(0);
                    f.pool_backlog_age.get_or_create(&pool).inc_by(0.0);
                }
            }
            for (subject, n, oldest) in by_subject {
                let last = subject.rsplit('.').next().unwrap_or(subject).to_string();
                if info.config.name == stream::DLQ {
                    // colony.dlq.<source>.<tenant>: counted by source.
                    let source = subjects::subject::dlq_source(subject)
                        .unwrap_or_default()
                        .to_string();
                    *snap.dlq.entry(source.clone()).or_default() += *n as u64;
                    f.dlq_messages
                        .get_or_create(&SourceLabels { source })
                        .inc_by(*n as i64);
                } else {
                    snap.pools.push(subjects::ops::PoolBacklog {
                        pool: last.clone(),
                        backlog: *n as u64,
                        oldest_age_secs: oldest.unwrap_or(0.0),
                    });
                    let pool = PoolLabels { pool: last };
                    f.pool_backlog.get_or_create(&pool).inc_by(*n as i64);
                    f.pool_backlog_age
                        .get_or_create(&pool)
                        .set(oldest.unwrap_or(0.0));
                }
            }
            snap.streams.push(view);
        }
        // Served pools with nothing waiting, and sources with no dead
        // letters, as 0.
        for c in snap.streams.iter().flat_map(|s| &s.consumers) {
            if !c.pool.is_empty() && !snap.pools.iter().any(|p| p.pool == c.pool) {
                snap.pools.push(subjects::ops::PoolBacklog {
                    pool: c.pool.clone(),
                    backlog: 0,
                    oldest_age_secs: 0.0,
                });
            }
        }
        snap.pools.sort_by(|a, b| a.pool.cmp(&b.pool));
        for source in subjects::subject::DLQ_SOURCES {
            snap.dlq.entry(source.to_string()).or_default();
        }
        // Every role with tasks or a served pool shows its stage
        // durations, retries, takeovers and hand-backs, 0 before the first.
        let mut roles: std::collections::BTreeSet<String> =
            snap.pools.iter().map(|p| p.pool.clone()).collect();
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snap;
        if let Ok(c) = &counts {
            roles.extend(c.tasks.iter().map(|(_, role, _)| role.clone()));
        }
        seed_history(&roles);
        if let Ok(c) = counts {
            for (state, role, n) in c.tasks {
                f.tasks.get_or_create(&TaskLabels { state, role }).set(n);
            }
            for (state, n) in c.goals {
                f.goals.get_or_create(&StateLabels { state }).set(n);
            }
            for (rule, action, n) in c.patrol_actions {
                f.patrol_actions
                    .get_or_create(&PatrolLabels { rule, action })
                    .set(n);
            }
            for (verdict, n) in c.reviews {
                f.reviews.get_or_create(&VerdictLabels { verdict }).set(n);
            }
        }
        f.refresh_seconds.set(started.elapsed().as_secs_f64());
    }
}

/// The stages whose durations show (as empty histograms) before the first
/// task leaves them.
const SEEDED_STAGES: [&str; 2] = ["queued", "running"];

/// Zero series for `roles`, and for the gateway's refusals.
fn seed_history(roles: &std::collections::BTreeSet<String>) {
    let h = &telemetry::get().history;
    for role in roles {
        for stage in SEEDED_STAGES {
            // An empty histogram, created.
            drop(h.stage_seconds.get_or_create(&StageLabels {
                role: role.clone(),
                stage: stage.to_string(),
            }));
        }
        let r = RoleLabels { role: role.clone() };
        h.retries.get_or_create(&r).inc_by(0);
        h.takeovers.get_or_create(&r).inc_by(0);
        h.handbacks.get_or_create(&r).inc_by(0);
    }
    for action in ["egress", "model"] {
        h.actions
            .get_or_create(&ActionLabels {
                action: action.to_string(),
                outcome: "denied".to_string(),
            })
            .inc_by(0);
    }
}

/// Count what the history tables gained.
fn count_history(x: &store::fleet::History) {
    use store::fleet::Step;
    let h = &telemetry::get().history;
    for (model, role) in &x.recent_models {
        let m = ModelLabels {
            model: model.clone(),
            role: role.clone(),
        };
        h.cost_usd.get_or_create(&m).inc_by(0.0);
        h.model_calls.get_or_create(&m).inc_by(0);
        for kind in ["prompt", "completion"] {
            h.tokens
                .get_or_create(&TokenLabels {
                    model: model.clone(),
                    role: role.clone(),
                    kind: kind.to_string(),
                })
                .inc_by(0);
        }
    }
    for t in &x.transitions {
        h.transitions
            .get_or_create(&TransitionLabels {
                role: t.role.clone(),
                from: t.from.clone().unwrap_or_else(|| "none".to_string()),
                to: t.to.clone(),
            })
            .inc();
        if let (Some(stage), Some(secs)) = (&t.from, t.secs) {
            h.stage_seconds
                .get_or_create(&StageLabels {
                    role: t.role.clone(),
                    stage: stage.clone(),
                })
                .observe(secs);
        }
        let role = RoleLabels {
            role: t.role.clone(),
        };
        match t.step {
            Some(Step::Retry) => h.retries.get_or_create(&role).inc(),
            Some(Step::Takeover) => h.takeovers.get_or_create(&role).inc(),
            Some(Step::HandBack) => h.handbacks.get_or_create(&role).inc(),
            None => 0,
        };
        if let Some(quota) = &t.quota {
            h.quota_refusals
                .get_or_create(&QuotaLabels {
                    role: t.role.clone(),
                    quota: quota.clone(),
                })
                .inc();
        }
    }
    for c in &x.calls {
        let m = ModelLabels {
            model: c.model.clone(),
            role: c.role.clone(),
        };
        h.model_calls.get_or_create(&m).inc();
        h.cost_usd.get_or_create(&m).inc_by(c.cost_usd);
        for (kind, n) in [
            ("prompt", c.prompt_tokens),
            ("completion", c.completion_tokens),
        ] {
            h.tokens
                .get_or_create(&TokenLabels {
                    model: c.model.clone(),
                    role: c.role.clone(),
                    kind: kind.to_string(),
                })
                .inc_by(n);
        }
    }
    for a in &x.actions {
        h.actions
            .get_or_create(&ActionLabels {
                action: a.action.clone(),
                outcome: a.outcome.clone(),
            })
            .inc();
    }
}

/// A worker's status as the figures `/metrics` shows.
fn worker_figures(s: &subjects::status::WorkerStatus) -> WorkerFigures {
    let p = &s.pool;
    WorkerFigures {
        worker: s.worker_id.clone(),
        slots: s.slots as u64,
        running: s.running as u64,
        active: p.active as u64,
        warm: p.warm as u64,
        waiting: p.waiting as u64,
        acquires: vec![
            ("warm", p.acquire_warm),
            ("reuse", p.acquire_reuse),
            ("cold", p.acquire_cold),
            ("adopted", p.acquire_adopted),
        ],
        evictions: vec![("cap", p.evicted), ("idle", p.reaped)],
        cold_start_buckets: p
            .cold_start_le_ms
            .iter()
            .zip(&p.cold_start_buckets)
            .map(|(le, n)| (le / 1000.0, *n))
            .collect(),
        cold_starts: p.cold_starts,
        cold_start_seconds: p.cold_start_sum_ms / 1000.0,
    }
}
