//! What the gateway needs stored or looked up, as one object-safe trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::run::RunContext;

/// A boxed future, as the [`Backend`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The `action` of audit records about the network (fetch and proxy).
pub const EGRESS_ACTION: &str = "egress";

/// The `action` of audit records of refused model calls (a model the role
/// may not call, or one without a price under a cost quota).
pub const MODEL_ACTION: &str = "model";

/// Why a backend call failed. The sentence of every kind but
/// [`Internal`](BackendError::Internal) goes to the caller as is; an internal
/// one is logged and audited, and the caller gets a generic sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The arguments do not make sense (unknown role, bad input): 422.
    #[error("{0}")]
    Invalid(String),
    /// What the arguments point to does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// Not in this state (e.g. reviewing a task that is not in review): 409.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed: 500.
    #[error("{0}")]
    Internal(String),
    /// Refused for good with the status and sentence any other door of
    /// the platform would give (a sub-task that admission refuses); a 403
    /// is audited as denied.
    #[error("{reason}")]
    Refused { status: u16, reason: String },
}

/// Where the gateway keeps and finds things. The worker implements it over
/// Postgres; the gateway only calls it (from many tasks at once).
pub trait Backend: Send + Sync + 'static {
    /// The value under `key` in the employee's memory.
    fn memory_get<'a>(
        &'a self,
        employee_id: Uuid,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, BackendError>>;

    /// Stores `value` under `key` in the employee's memory (replacing it).
    fn memory_set<'a>(
        &'a self,
        employee_id: Uuid,
        key: &'a str,
        value: Value,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The employee's whole memory.
    fn memory_list(
        &self,
        employee_id: Uuid,
    ) -> BoxFuture<'_, Result<BTreeMap<String, Value>, BackendError>>;

    /// Keeps a note with the run's task history.
    fn note<'a>(
        &'a self,
        run: &'a RunContext,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Creates a sub-task of `parent.task_id` in `parent.tenant` from the
    /// action's args (a task submission, checked by the backend exactly as
    /// any other door checks one); answers what the caller should see (at
    /// least `{"id": …}`).
    fn create_task<'a>(
        &'a self,
        parent: &'a RunContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, BackendError>>;

    /// Applies `reviewer`'s verdict on the sub-task its review run was
    /// given; answers what the caller should see. A verdict on another
    /// task, or on one's own work, is [`BackendError::Refused`] with 403.
    fn submit_review<'a>(
        &'a self,
        reviewer: &'a RunContext,
        verdict: subjects::goals::ReviewVerdict,
    ) -> BoxFuture<'a, Result<Value, BackendError>>;

    /// Checks `planner`'s plan for its goal and writes it, or refuses it
    /// with every error (as [`BackendError::Refused`] with 422); answers
    /// what the caller should see.
    fn submit_plan<'a>(
        &'a self,
        planner: &'a RunContext,
        plan: subjects::goals::Plan,
    ) -> BoxFuture<'a, Result<Value, BackendError>>;

    fn audit(&self, record: AuditRecord) -> BoxFuture<'_, Result<(), BackendError>>;

    fn record_usage(&self, record: UsageRecord) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Adds `tokens` and `cost_usd` (negative to give some back) to today's
    /// (UTC) spend of the run's employee — or, for a run without one, of the
    /// run's role in its tenant — and answers the day's totals after the
    /// change. One atomic statement: parallel runs, in any process, each see
    /// the others' spend, so the daily quotas hold across them.
    ///
    /// `day` is the (UTC) day to charge: `None` for today, or the day an
    /// earlier charge of the same call went to (a call settled after
    /// midnight corrects the day it was reserved on). Answers that day's
    /// totals and the day.
    fn charge_day<'a>(
        &'a self,
        run: &'a RunContext,
        tokens: i64,
        cost_usd: f64,
        day: Option<time::Date>,
    ) -> BoxFuture<'a, Result<(crate::DailyUsage, time::Date), BackendError>>;

    /// Vault credentials of `tenant` for `url` (e.g. those whose URL prefix
    /// matches), as header name and value. They are added to the outbound
    /// request and never shown to the container.
    fn credentials_for<'a>(
        &'a self,
        tenant: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, BackendError>>;
}

/// Whether a request was let through.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Allowed, and done.
    Allowed,
    /// Refused: not allowed to the role, unknown, over quota, or a host
    /// outside the allowlist.
    Denied,
    /// Allowed, but it did not work (bad arguments, storage, network).
    Failed,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Allowed => "allowed",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// One line of an employee's audit trail: one action or network request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuditRecord {
    pub at: SystemTime,
    pub tenant: String,
    pub employee_id: Option<Uuid>,
    pub task_id: Uuid,
    pub run_id: Uuid,
    pub role: String,
    /// The action's name (`memory.set`, `task.create`, …), or
    /// [`EGRESS_ACTION`].
    pub action: String,
    /// What it acted on: the memory key, the created or reviewed task id,
    /// `host:port` for egress.
    pub target: Option<String>,
    pub outcome: AuditOutcome,
    /// One line: what happened, or why not.
    pub detail: String,
}

/// One answered model call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UsageRecord {
    pub at: SystemTime,
    pub tenant: String,
    pub employee_id: Option<Uuid>,
    pub task_id: Uuid,
    pub run_id: Uuid,
    pub role: String,
    /// The model the run asked for.
    pub model: String,
    /// The model the provider was asked for (after the mapping).
    pub provider_model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// The provider reported no usage; the tokens are estimated from the
    /// bytes sent and received (about four per token).
    pub estimated: bool,
    pub streamed: bool,
    /// From the request's arrival to the answer's end.
    pub duration: Duration,
}
