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
}
