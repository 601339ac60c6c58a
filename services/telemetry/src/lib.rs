//! Colony's metrics: one registry per process ([`get`]), which the HTTP API
//! serves at `GET /metrics` ([`encode`]), in the OpenMetrics text format of
//! `prometheus-client`.
//!
//! Each part of a process records what it does here as it does it: the
//! scheduler its fires ([`Scheduler`]).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode as encode_text;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// fired | skipped | missed | buffered | failed
    pub outcome: String,
    /// cron | trigger | backfill
    pub kind: String,
}

/// What the scheduler decided.
pub struct Scheduler {
    /// `colony_schedule_fires_total{outcome, kind}`.
    pub fires: Family<OutcomeLabels, Counter>,
    /// `colony_schedule_fire_lateness_seconds`: due time → task or goal
    /// created, of the cron fires that started something.
    pub lateness: Histogram,
}

impl Scheduler {
    /// Count one decided fire (`lateness_ms` of one that started
    /// something on time's account).
    pub fn fire(&self, outcome: &str, kind: &str, lateness_ms: Option<f64>) {
        self.fires
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
                kind: kind.to_string(),
            })
            .inc();
        if let (Some(ms), "cron", "fired") = (lateness_ms, kind, outcome) {
            self.lateness.observe((ms / 1000.0).max(0.0));
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub stream: String,
    pub consumer: String,
    /// The pool (role) a worker consumer serves; empty for the others.
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub state: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PatrolLabels {
    pub rule: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's pattern (`/v1/tasks/{id}`), never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// peer | key | nats_tenant
    pub by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// submit-task | submit-goal | get-task | get-goal
    pub call: String,
    /// ok, or the refusal's HTTP-like status
    pub outcome: String,
}

type Gauges<L> = Family<L, Gauge>;
type FloatGauges<L> = Family<L, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// What the streams, the consumers and Postgres hold: set from scratch by
/// whoever refreshes them (the HTTP API, a few seconds apart), read by
/// every scrape.
#[derive(Default)]
pub struct Fleet {
    pub stream_messages: Gauges<StreamLabels>,
    pub stream_bytes: Gauges<StreamLabels>,
    pub stream_first_age: FloatGauges<StreamLabels>,
    pub stream_last_age: FloatGauges<StreamLabels>,
    pub consumer_pending: Gauges<ConsumerLabels>,
    pub consumer_ack_pending: Gauges<ConsumerLabels>,
    pub consumer_redelivered: Gauges<ConsumerLabels>,
    pub consumer_waiting: Gauges<ConsumerLabels>,
    pub consumer_lag: Gauges<ConsumerLabels>,
    pub consumer_backlog_age: FloatGauges<ConsumerLabels>,
    pub pool_backlog: Gauges<PoolLabels>,
    pub pool_backlog_age: FloatGauges<PoolLabels>,
    pub dlq_messages: Gauges<SourceLabels>,
    pub tasks: Gauges<TaskLabels>,
    pub goals: Gauges<StateLabels>,
    pub patrol_actions: Gauges<PatrolLabels>,
    pub reviews: Gauges<VerdictLabels>,
    /// Seconds the last refresh took.
    pub refresh_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Fleet {
    /// Forget every labelled value (a consumer deleted, a state emptied)
    /// before a refresh sets them anew.
    pub fn clear(&self) {
        self.stream_messages.clear();
        self.stream_bytes.clear();
        self.stream_first_age.clear();
        self.stream_last_age.clear();
        self.consumer_pending.clear();
        self.consumer_ack_pending.clear();
        self.consumer_redelivered.clear();
        self.consumer_waiting.clear();
        self.consumer_lag.clear();
        self.consumer_backlog_age.clear();
        self.pool_backlog.clear();
        self.pool_backlog_age.clear();
        self.dlq_messages.clear();
        self.tasks.clear();
        self.goals.clear();
        self.patrol_actions.clear();
        self.reviews.clear();
    }
}

/// The HTTP API's requests.
pub struct Http {
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub rate_limited: Family<LimitLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub role: String,
    /// The state a task stayed in: pending | queued | running | review |
    /// rework | blocked
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub role: String,
    /// The state left (`none`: the task was created).
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub role: String,
    /// tokens_per_run | cost_usd_per_run | wall_secs_per_run |
    /// tokens_per_day | cost_usd_per_day | other
    pub quota: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub role: String,
    /// prompt | completion
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// A platform action (`memory.set`, …), `egress`, `model`, or `other`.
    pub action: String,
    /// allowed | denied | failed
    pub outcome: String,
}

type FloatCounter = Counter<f64, AtomicU64>;

/// The bounds of [`History::stage_seconds`]: 10 ms to about 7 hours.
pub const STAGE_BUCKETS: [f64; 20] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
];

/// What the history tables of Postgres (`events`, `usage`, `audit`) gained
/// since this process's first refresh of the fleet's figures: each new row
/// is read once and counted here, so these are counters and histograms of
/// the whole fleet that start at 0 with the process (as any counter does at
/// a restart).
pub struct History {
    /// `colony_task_stage_seconds{role, stage}`: time spent in a state,
    /// observed when the task leaves it.
    pub stage_seconds: Family<StageLabels, Histogram>,
    /// `colony_task_transitions_total{role, from, to}`.
    pub transitions: Family<TransitionLabels, Counter>,
    /// `colony_task_retries_total{role}`: failed attempts queued again.
    pub retries: Family<RoleLabels, Counter>,
    /// `colony_task_takeovers_total{role}`: runs taken over from a lost
    /// worker.
    pub takeovers: Family<RoleLabels, Counter>,
    /// `colony_task_handbacks_total{role}`: runs given back by a worker
    /// shutting down.
    pub handbacks: Family<RoleLabels, Counter>,
    /// `colony_gateway_quota_refusals_total{role, quota}`: runs stopped by a
    /// quota.
    pub quota_refusals: Family<QuotaLabels, Counter>,
    /// `colony_gateway_tokens_total{model, role, kind}`.
    pub tokens: Family<TokenLabels, Counter>,
    /// `colony_gateway_cost_usd_total{model, role}`.
    pub cost_usd: Family<ModelLabels, FloatCounter>,
    /// `colony_gateway_model_calls_total{model, role}`.
    pub model_calls: Family<ModelLabels, Counter>,
    /// `colony_gateway_actions_total{action, outcome}`: what runs asked the
    /// gateway for (egress refusals are `{action="egress",
    /// outcome="denied"}`).
    pub actions: Family<ActionLabels, Counter>,
}

impl Default for History {
    fn default() -> History {
        History {
            stage_seconds: Family::new_with_constructor(|| {
                Histogram::new(STAGE_BUCKETS.iter().copied())
            }),
            transitions: Family::default(),
            retries: Family::default(),
            takeovers: Family::default(),
            handbacks: Family::default(),
            quota_refusals: Family::default(),
            tokens: Family::default(),
            cost_usd: Family::default(),
            model_calls: Family::default(),
            actions: Family::default(),
        }
    }
}

/// One worker's figures, from the status it last wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerFigures {
    pub worker: String,
    pub slots: u64,
    pub running: u64,
    /// Containers handed out to runs, idle ones, and acquires waiting for
    /// room.
    pub active: u64,
    pub warm: u64,
    pub waiting: u64,
    /// (source, acquires): warm, reuse, cold, adopted.
    pub acquires: Vec<(&'static str, u64)>,
    /// (reason, idle containers removed): `cap` (to make room under the
    /// active cap), `idle` (past their idle TTL).
    pub evictions: Vec<(&'static str, u64)>,
    /// Cold starts (create → ready): (upper bound in seconds, how many took
    /// at most that long), cumulative, without +Inf (empty from a worker
    /// that does not report them); their number and total seconds.
    pub cold_start_buckets: Vec<(f64, u64)>,
    pub cold_starts: u64,
    pub cold_start_seconds: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerSourceLabels {
    worker: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerReasonLabels {
    worker: String,
    reason: String,
}

/// The workers' own figures (slots, runs, their container pools), as each
/// worker last wrote them to the registry bucket: set by whoever refreshes
/// the fleet's figures, encoded as they are (the counters are the
/// workers', since each worker started).
#[derive(Debug, Default)]
pub struct Workers(Mutex<Vec<WorkerFigures>>);

impl Workers {
    /// Replace every worker's figures.
    pub fn set(&self, figures: Vec<WorkerFigures>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = figures;
    }
}

impl Collector for Workers {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let list = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let label = |w: &WorkerFigures| WorkerLabels {
            worker: w.worker.clone(),
        };
        type Gauge = (&'static str, &'static str, fn(&WorkerFigures) -> u64);
        let gauges: [Gauge; 5] = [
            ("worker_slots", "Runs a worker may run at once", |w| w.slots),
            ("worker_running", "Runs in flight on a worker", |w| {
                w.running
            }),
            ("worker_pool_active", "Containers handed out to runs", |w| {
                w.active
            }),
            ("worker_pool_warm", "Idle containers ready for a run", |w| {
                w.warm
            }),
            (
                "worker_pool_waiting",
                "Container acquires waiting for room (at the worker's or a role's cap)",
                |w| w.waiting,
            ),
        ];
        for (name, help, value) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for w in &list {
                ConstGauge::new(value(w) as i64).encode(m.encode_family(&label(w))?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "worker_pool_acquires",
            "Containers acquired for runs by source (warm: created ahead of demand, reuse: used by an earlier run, cold: created for this run, adopted: after a restart), since the worker started",
            None,
            MetricType::Counter,
        )?;
        for w in &list {
            for (source, n) in &w.acquires {
                let l = WorkerSourceLabels {
                    worker: w.worker.clone(),
                    source: source.to_string(),
                };
                ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "worker_pool_evictions",
            "Idle containers removed, by reason (cap: to make room under the active cap, idle: past their idle TTL), since the worker started",
            None,
            MetricType::Counter,
        )?;
        for w in &list {
            for (reason, n) in &w.evictions {
                let l = WorkerReasonLabels {
                    worker: w.worker.clone(),
                    reason: reason.to_string(),
                };
                ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "worker_pool_cold_start_seconds",
            "Container cold starts (create, start, agentd answers), since the worker started",
            None,
            MetricType::Histogram,
        )?;
        for w in &list {
            encode_cold_starts(w, m.encode_family(&label(w))?)?;
        }
        Ok(())
    }
}

/// A worker's cumulative cold-start buckets as a histogram (whose encoder
/// takes each bucket's own count).
fn encode_cold_starts(w: &WorkerFigures, mut m: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    let mut buckets = Vec::with_capacity(w.cold_start_buckets.len() + 1);
    let mut below = 0;
    for &(le, n) in &w.cold_start_buckets {
        buckets.push((le, n.saturating_sub(below)));
        below = below.max(n);
    }
    buckets.push((f64::INFINITY, w.cold_starts.saturating_sub(below)));
    m.encode_histogram::<NoLabelSet>(w.cold_start_seconds, w.cold_starts, &buckets, None)
}

/// A family listed in every scrape, even before its first series (a board
/// names it in a query before anything happened; the registry leaves out
/// an empty family).
#[derive(Debug)]
struct Listed<M> {
    name: &'static str,
    help: &'static str,
    metric: M,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Listed<M> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = encoder.encode_descriptor(self.name, self.help, None, self.metric.metric_type())?;
        self.metric.encode(m)
    }
}

fn listed<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    metric: M,
) {
    registry.register_collector(Box::new(Listed { name, help, metric }));
}

/// Every metric of the process.
pub struct Telemetry {
    registry: Registry,
    pub scheduler: Scheduler,
    pub fleet: Fleet,
    pub http: Http,
    pub history: History,
    pub workers: Arc<Workers>,
    /// `colony_nats_api_calls_total{call, outcome}`.
    pub nats_api: Family<CallLabels, Counter>,
}

impl Telemetry {
    /// Count one call of the NATS API.
    pub fn api_call(&self, call: &str, outcome: &str) {
        self.nats_api
            .get_or_create(&CallLabels {
                call: call.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Count one request refused by a rate limit (`by`: peer, key,
    /// nats_tenant).
    pub fn limited(&self, by: &str) {
        self.http
            .rate_limited
            .get_or_create(&LimitLabels { by: by.to_string() })
            .inc();
    }
}

/// The process's metrics.
pub fn get() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| {
        let mut registry = Registry::with_prefix("colony");
        let scheduler = Scheduler {
            fires: Family::default(),
            // 1 ms … about 33 s.
            lateness: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        registry.register(
            "schedule_fires",
            "Fire times decided, by outcome and kind",
            scheduler.fires.clone(),
        );
        registry.register(
            "schedule_fire_lateness_seconds",
            "Due time to task or goal created, of cron fires that started something",
            scheduler.lateness.clone(),
        );
        let fleet = Fleet::default();
        let f = &fleet;
        registry.register(
            "stream_messages",
            "Messages in a stream",
            f.stream_messages.clone(),
        );
        registry.register(
            "stream_bytes",
            "Bytes in a stream",
            f.stream_bytes.clone(),
        );
        registry.register(
            "stream_first_age_seconds",
            "Age of a stream's oldest message",
            f.stream_first_age.clone(),
        );
        registry.register(
            "stream_last_age_seconds",
            "Age of a stream's newest message",
            f.stream_last_age.clone(),
        );
        registry.register(
            "consumer_pending",
            "Messages of a consumer's subjects not yet delivered (num_pending)",
            f.consumer_pending.clone(),
        );
        registry.register(
            "consumer_ack_pending",
            "Messages delivered and not yet acknowledged (num_ack_pending)",
            f.consumer_ack_pending.clone(),
        );
        registry.register(
            "consumer_redelivered",
            "Messages delivered more than once (num_redelivered)",
            f.consumer_redelivered.clone(),
        );
        registry.register(
            "consumer_waiting",
            "Pull requests waiting for messages (num_waiting)",
            f.consumer_waiting.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages not yet acknowledged: pending plus ack pending",
            f.consumer_lag.clone(),
        );
        registry.register(
            "consumer_backlog_age_seconds",
            "Age of a consumer's oldest unacknowledged message (0 when none)",
            f.consumer_backlog_age.clone(),
        );
        registry.register(
            "pool_backlog",
            "Work messages of a pool waiting in the WORK stream, whether or not a worker consumer exists",
            f.pool_backlog.clone(),
        );
        registry.register(
            "pool_backlog_age_seconds",
            "Age of a pool's oldest waiting work message",
            f.pool_backlog_age.clone(),
        );
        registry.register(
            "dlq_messages",
            "Dead letters by source",
            f.dlq_messages.clone(),
        );
        registry.register(
            "tasks",
            "Tasks by state and role",
            f.tasks.clone(),
        );
        registry.register(
            "goals",
            "Goals by state",
            f.goals.clone(),
        );
        registry.register(
            "patrol_actions",
            "The patrol's actions by rule and action, ever",
            f.patrol_actions.clone(),
        );
        registry.register(
            "reviews",
            "Review verdicts, ever",
            f.reviews.clone(),
        );
        registry.register(
            "fleet_refresh_seconds",
            "Seconds the last refresh of the stream, consumer and database figures took",
            f.refresh_seconds.clone(),
        );
        let http = Http {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            rate_limited: Family::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request durations by route and method",
            http.duration.clone(),
        );
        registry.register(
            "http_rate_limited",
            "HTTP requests refused by a rate limit (429), by peer address or key",
            http.rate_limited.clone(),
        );
        let nats_api = Family::<CallLabels, Counter>::default();
        registry.register(
            "nats_api_calls",
            "NATS API calls by call and outcome (ok, or the refusal's HTTP-like status)",
            nats_api.clone(),
        );
        let history = History::default();
        let h = &history;
        listed(
            &mut registry,
            "task_stage_seconds",
            "Time tasks spent in a state (stage), observed as they leave it, from the events table",
            h.stage_seconds.clone(),
        );
        listed(
            &mut registry,
            "task_transitions",
            "Task state transitions by role, state left (none: created) and state entered, from the events table",
            h.transitions.clone(),
        );
        listed(
            &mut registry,
            "task_retries",
            "Failed attempts queued again (running to queued, not a hand-back), from the events table",
            h.retries.clone(),
        );
        listed(
            &mut registry,
            "task_takeovers",
            "Runs taken over from a worker whose heartbeat stopped (running to running), from the events table",
            h.takeovers.clone(),
        );
        listed(
            &mut registry,
            "task_handbacks",
            "Runs handed back uncounted by a worker shutting down, from the events table",
            h.handbacks.clone(),
        );
        listed(
            &mut registry,
            "gateway_quota_refusals",
            "Runs the gateway stopped over a quota (quota_exceeded), from the events table",
            h.quota_refusals.clone(),
        );
        listed(
            &mut registry,
            "gateway_tokens",
            "Model tokens by model, role and kind (prompt, completion), from the usage table",
            h.tokens.clone(),
        );
        listed(
            &mut registry,
            "gateway_cost_usd",
            "Model cost in US dollars by model and role, from the usage table",
            h.cost_usd.clone(),
        );
        listed(
            &mut registry,
            "gateway_model_calls",
            "Model calls by model and role, from the usage table",
            h.model_calls.clone(),
        );
        listed(
            &mut registry,
            "gateway_actions",
            "Actions runs asked the gateway for (platform actions, egress, model), by outcome (allowed, denied, failed), from the audit table",
            h.actions.clone(),
        );
        let workers = Arc::new(Workers::default());
        registry.register_collector(Box::new(workers.clone()));
        // Zero series, so that a board shows 0 before the first event.
        scheduler
            .fires
            .get_or_create(&OutcomeLabels {
                outcome: "fired".into(),
                kind: "cron".into(),
            })
            .inc_by(0);
        for call in ["submit-task", "submit-goal"] {
            nats_api
                .get_or_create(&CallLabels {
                    call: call.into(),
                    outcome: "ok".into(),
                })
                .inc_by(0);
        }
        for by in ["peer", "key", "nats_tenant"] {
            http.rate_limited
                .get_or_create(&LimitLabels { by: by.into() })
                .inc_by(0);
        }
        Telemetry {
            registry,
            scheduler,
            fleet,
            http,
            nats_api,
            history,
            workers,
        }
    })
}

/// The process's metrics in the OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode_text(&mut out, &get().registry);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn fires_and_lateness_are_in_the_text() {
        let s = &super::get().scheduler;
        s.fire("fired", "cron", Some(12.0));
        s.fire("missed", "cron", Some(9000.0));
        let text = super::encode();
        assert!(
            text.contains("colony_schedule_fires_total{outcome=\"fired\",kind=\"cron\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("colony_schedule_fires_total{outcome=\"missed\",kind=\"cron\"} 1"),
            "{text}"
        );
        // Only the fired one is lateness; 12 ms falls in the 16 ms bucket.
        assert!(
            text.contains("colony_schedule_fire_lateness_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("colony_schedule_fire_lateness_seconds_bucket{le=\"0.016\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("colony_schedule_fire_lateness_seconds_bucket{le=\"0.008\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn workers_figures_and_empty_history_families_are_in_the_text() {
        let t = super::get();
        // Listed before anything was counted.
        let text = super::encode();
        for family in [
            "# TYPE colony_gateway_tokens counter",
            "# TYPE colony_task_stage_seconds histogram",
            "# TYPE colony_worker_pool_cold_start_seconds histogram",
        ] {
            assert!(text.contains(family), "{family}: {text}");
        }
        t.workers.set(vec![super::WorkerFigures {
            worker: "w1".into(),
            slots: 2,
            running: 1,
            active: 1,
            warm: 2,
            waiting: 0,
            acquires: vec![("warm", 1), ("reuse", 2), ("cold", 3), ("adopted", 0)],
            evictions: vec![("cap", 1), ("idle", 0)],
            cold_start_buckets: vec![(0.025, 0), (0.05, 1), (0.1, 3)],
            cold_starts: 4,
            cold_start_seconds: 1.5,
        }]);
        t.history
            .stage_seconds
            .get_or_create(&super::StageLabels {
                role: "shell".into(),
                stage: "queued".into(),
            })
            .observe(0.2);
        let text = super::encode();
        for line in [
            "colony_worker_slots{worker=\"w1\"} 2",
            "colony_worker_pool_warm{worker=\"w1\"} 2",
            "colony_worker_pool_acquires_total{worker=\"w1\",source=\"cold\"} 3",
            "colony_worker_pool_evictions_total{worker=\"w1\",reason=\"cap\"} 1",
            "colony_worker_pool_cold_start_seconds_bucket{le=\"0.05\",worker=\"w1\"} 1",
            "colony_worker_pool_cold_start_seconds_bucket{le=\"0.1\",worker=\"w1\"} 3",
            "colony_worker_pool_cold_start_seconds_bucket{le=\"+Inf\",worker=\"w1\"} 4",
            "colony_worker_pool_cold_start_seconds_count{worker=\"w1\"} 4",
            "colony_worker_pool_cold_start_seconds_sum{worker=\"w1\"} 1.5",
            "colony_task_stage_seconds_bucket{le=\"0.25\",role=\"shell\",stage=\"queued\"} 1",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
