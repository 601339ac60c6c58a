//! What the operations views answer: who a key is, a tenant's overview,
//! the streams and consumers, a page of tasks, and the dead-letter browser.
//! The dashboard at `/` reads exactly these; so can any client.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::TaskView;

/// `GET /v1/whoami`: the caller's tenant and scope.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct WhoAmI {
    pub tenant: String,
    /// `read`, `submit`, `admin` or `operator`, in rising order.
    pub scope: String,
    pub key_id: Uuid,
}

/// Tasks finished in one minute.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MinuteCount {
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub minute: OffsetDateTime,
    pub done: i64,
    pub failed: i64,
}

/// `GET /v1/overview`: one tenant's figures, from Postgres.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Overview {
    pub tenant: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    /// Tasks by state (every state, 0 when none).
    pub tasks: BTreeMap<String, i64>,
    /// Goals by state (every state, 0 when none).
    pub goals: BTreeMap<String, i64>,
    /// Goals blocked on a person's decision.
    pub waiting_for_person: i64,
    pub done_last_minute: i64,
    pub failed_last_hour: i64,
    /// Model spend since midnight UTC.
    pub spend_today_usd: f64,
    pub tokens_today: i64,
    pub employees: i64,
    pub schedules: i64,
    /// Finished tasks per minute, the last 60 minutes, oldest first (every
    /// minute present).
    pub throughput: Vec<MinuteCount>,
}

/// A consumer's figures.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ConsumerView {
    pub name: String,
    /// The pool a worker consumer serves (empty for the others).
    pub pool: String,
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    pub waiting: u64,
    /// pending + ack pending.
    pub lag: u64,
    /// Age of the oldest message it has not finished with (0 when none).
    pub backlog_age_secs: f64,
}

/// A stream's figures and its consumers'.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct StreamView {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_age_secs: f64,
    pub last_age_secs: f64,
    pub consumers: Vec<ConsumerView>,
}

/// Work waiting in one pool.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct PoolBacklog {
    pub pool: String,
    pub backlog: u64,
    pub oldest_age_secs: f64,
}

/// `GET /v1/streams` (operator keys): JetStream as the metrics see it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct Streams {
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub at: Option<OffsetDateTime>,
    pub streams: Vec<StreamView>,
    pub pools: Vec<PoolBacklog>,
    /// Dead letters by source.
    pub dlq: BTreeMap<String, u64>,
}

/// `GET /v1/tasks`: a page of the tenant's tasks, newest first.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    /// The last task's id: pass it as `before` for the next page; absent on
    /// the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One dead letter as `GET /v1/dlq` lists it: where it came from, why,
/// what it held, and what was done with it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DlqEntry {
    /// `intake`, `work` or `loop`.
    pub source: String,
    /// The subject it was first published on.
    pub subject: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    pub headers: BTreeMap<String, String>,
    /// The payload as JSON when it is JSON, else as text.
    pub payload: Value,
    /// Its id and status (`open` until replayed or discarded).
    #[serde(flatten)]
    pub outcome: DlqOutcome,
}

/// `GET /v1/dlq`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DlqList {
    pub entries: Vec<DlqEntry>,
}

/// What a replay or discard made of one dead letter.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DlqOutcome {
    /// Its sequence in the DLQ stream.
    pub id: u64,
    /// `open`, `replayed` or `discarded`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A dead letter a bulk action could not act on, and why.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DlqRefused {
    pub id: u64,
    pub error: String,
}

/// What `POST /v1/dlq/replay` or `/v1/dlq/discard` did.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DlqBulk {
    pub done: Vec<DlqOutcome>,
    pub refused: Vec<DlqRefused>,
}

/// The body of the NATS API's `tasks.get` and `goals.get` calls.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ById {
    pub id: Uuid,
}
