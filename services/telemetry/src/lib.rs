//! Colony's metrics: one registry per process ([`get`]), which the HTTP API
//! serves at `GET /metrics` ([`encode`]), in the OpenMetrics text format of
//! `prometheus-client`.
//!
//! Each part of a process records what it does here as it does it: the
//! scheduler its fires ([`Scheduler`]).

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode as encode_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    /// peer | key
    pub by: String,
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

/// Every metric of the process.
pub struct Telemetry {
    registry: Registry,
    pub scheduler: Scheduler,
    pub fleet: Fleet,
    pub http: Http,
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
        // Zero series, so that a board shows 0 before the first event.
        scheduler
            .fires
            .get_or_create(&OutcomeLabels {
                outcome: "fired".into(),
                kind: "cron".into(),
            })
            .inc_by(0);
        for by in ["peer", "key"] {
            http.rate_limited
                .get_or_create(&LimitLabels { by: by.into() })
                .inc_by(0);
        }
        Telemetry {
            registry,
            scheduler,
            fleet,
            http,
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
}
