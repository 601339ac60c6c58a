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

/// Every metric of the process.
pub struct Telemetry {
    registry: Registry,
    pub scheduler: Scheduler,
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
        Telemetry {
            registry,
            scheduler,
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
