//! What workers report about themselves for operators: one entry per worker
//! in the [`crate::kv::WORKERS`] bucket, refreshed while the worker lives
//! and gone with the bucket's age limit when it does not.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct WorkerStatus {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    pub worker_id: String,
    /// The pools (roles) it pulls work for.
    pub pools: Vec<String>,
    pub slots: usize,
    /// Runs in flight.
    pub running: usize,
    pub pool: PoolStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

/// A worker's container pool.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct PoolStatus {
    /// Containers handed out to runs right now.
    pub active: usize,
    /// Idle containers ready for a run.
    pub warm: usize,
    /// Acquires waiting for room (at the worker's or a role's cap).
    #[serde(default)]
    pub waiting: usize,
    /// Acquires served by a container created ahead of demand.
    pub acquire_warm: u64,
    /// Acquires served by a container an earlier run used.
    pub acquire_reuse: u64,
    /// Acquires that had to create a container.
    pub acquire_cold: u64,
    /// Acquires served by a container adopted after a restart.
    pub acquire_adopted: u64,
    /// Idle containers removed to make room under the active cap.
    pub evicted: u64,
    /// Idle containers removed after their idle TTL.
    pub reaped: u64,
    /// Cold starts measured (create → agentd answers), and their spread over
    /// the most recent ones.
    pub cold_starts: u64,
    pub cold_start_p50_ms: f64,
    pub cold_start_p99_ms: f64,
    pub cold_start_max_ms: f64,
    /// The cold-start histogram's bucket bounds in ms (`COLD_START_LE_MS`;
    /// empty from a worker older than the histogram).
    #[serde(default)]
    pub cold_start_le_ms: Vec<f64>,
    /// Cold starts since the worker started that took at most the bound
    /// of the same index, cumulative as Prometheus's buckets (the +Inf
    /// bucket is `cold_starts`).
    #[serde(default)]
    pub cold_start_buckets: Vec<u64>,
    /// The total time of those cold starts.
    #[serde(default)]
    pub cold_start_sum_ms: f64,
}

/// The upper bounds of the cold-start histogram's buckets, in ms (the
/// last bucket, +Inf, is `cold_starts`).
pub const COLD_START_LE_MS: [f64; 12] = [
    25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0, 12800.0, 25600.0, 51200.0,
];

impl PoolStatus {
    /// Count one cold start of `ms` (in `cold_starts` and the histogram).
    pub fn observe_cold_start(&mut self, ms: f64) {
        self.cold_starts += 1;
        if self.cold_start_le_ms.is_empty() {
            self.cold_start_le_ms = COLD_START_LE_MS.to_vec();
            self.cold_start_buckets = vec![0; COLD_START_LE_MS.len()];
        }
        for (le, n) in self
            .cold_start_le_ms
            .iter()
            .zip(self.cold_start_buckets.iter_mut())
        {
            if ms <= *le {
                *n += 1;
            }
        }
        self.cold_start_sum_ms += ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_starts_fill_cumulative_buckets() {
        let mut p = PoolStatus::default();
        for ms in [10.0, 60.0, 60.0, 90_000.0] {
            p.observe_cold_start(ms);
        }
        assert_eq!(p.cold_starts, 4);
        assert_eq!(p.cold_start_le_ms, COLD_START_LE_MS.to_vec());
        // ≤ 25: 1; ≤ 50: 1; ≤ 100 and above: 3; the 90 s one only in +Inf.
        assert_eq!(&p.cold_start_buckets[..3], &[1, 1, 3]);
        assert_eq!(*p.cold_start_buckets.last().unwrap(), 3);
        assert_eq!(p.cold_start_sum_ms, 90_130.0);
    }

    #[test]
    fn a_status_without_the_histogram_still_parses() {
        let old = r#"{"v":1,"worker_id":"w","pools":["shell"],"slots":2,"running":0,
            "pool":{"active":0,"warm":1,"acquire_warm":0,"acquire_reuse":0,"acquire_cold":1,
            "acquire_adopted":0,"evicted":0,"reaped":0,"cold_starts":1,"cold_start_p50_ms":300.0,
            "cold_start_p99_ms":300.0,"cold_start_max_ms":300.0},"at":"2025-01-01T00:00:00Z"}"#;
        let s: WorkerStatus = serde_json::from_str(old).expect("an old status");
        assert!(s.pool.cold_start_buckets.is_empty());
        assert_eq!(s.pool.cold_start_sum_ms, 0.0);
    }
}
