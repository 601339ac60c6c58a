//! Message types carried on Colony's subjects and its HTTP API.
//!
//! Every type here is serialised as JSON with a `v` field. Readers accept the
//! versions they know and reject the rest with a reason; writers always write
//! [`crate::VERSION`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// The states a task moves through. The rules for moving between them are in
/// `store::state`; only the names are part of the wire contract.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its dependencies.
    Pending,
    /// An outbox row (and so a work message) exists for it.
    Queued,
    /// A worker holds it and a run is in progress.
    Running,
    /// Its work awaits a reviewer's verdict.
    Review,
    /// A reviewer sent it back; it will be queued again.
    Rework,
    /// Stuck (heartbeat lost, timed out); patrol decides what follows.
    Blocked,
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 9] = [
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Review,
        TaskState::Rework,
        TaskState::Blocked,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Review => "review",
            TaskState::Rework => "rework",
            TaskState::Blocked => "blocked",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A final state has no way out.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to run a task: the body of `POST /v1/tasks`, and the payload of
/// a message published to `colony.intake.<tenant>`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSubmission {
    /// Version of this shape; only 1 exists.
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    /// The role that does the work, e.g. `shell`.
    pub role: String,
    /// The role's input; for `shell`, `{"command": "..."}`.
    pub input: Value,
    /// The goal this task belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<Uuid>,
    /// How many attempts before the task fails (1–10; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wall-time limit of one attempt in seconds (1–3600; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// A retry with the same key returns the task the first call created.
    /// Over HTTP the `Idempotency-Key` header takes precedence; over NATS the
    /// `Nats-Msg-Id` header is used when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The employee (a hired instance of `role`) who does the work; it must
    /// be active and of that role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<Uuid>,
}

/// The input of the built-in `shell` role.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShellInput {
    /// Run with `/bin/sh -c` in `/workspace`.
    pub command: String,
}

/// What the `shell` role returns.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ShellOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// True when `stdout` was cut at the output limit (its text then ends
    /// with a `[… N bytes truncated]` marker).
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// True when `stdout` held NUL or bytes that are not UTF-8 and is
    /// therefore escaped (see [`crate::text`]: `\\`, `\0`, `\xHH`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_escaped: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_escaped: bool,
}

/// What the outbox relay publishes to `colony.work.<pool>` for a queued task.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct WorkItem {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    pub task_id: Uuid,
    /// The outbox row (and message id) that queued this attempt. A worker acts on a message
    /// only while it is the task's current dispatch; an older one is stale.
    pub dispatch_id: Uuid,
    pub attempt: u32,
    pub role: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<Uuid>,
    pub input: Value,
    pub timeout_secs: u32,
    /// The employee doing the work, for a task submitted to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<Uuid>,
}

/// A task as a client sees it: the body of `GET /v1/tasks/{id}` and of the
/// message on `colony.results.<task>`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TaskView {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    pub id: Uuid,
    pub tenant: String,
    pub role: String,
    pub state: TaskState,
    /// The current (or last) attempt, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<Uuid>,
    pub input: Value,
    /// The role's output once the task is done (for `shell`, a [`ShellOutput`]).
    pub result: Option<Value>,
    /// Why the task failed or was cancelled, or why the last attempt failed.
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
    /// The employee doing the work, for a task submitted to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<Uuid>,
    /// What a goal's task is for: its work, its plan, a review of another
    /// task, or the goal's deliverable (`work` is left out).
    #[serde(default, skip_serializing_if = "crate::goals::TaskKind::is_work")]
    pub kind: crate::goals::TaskKind,
}

/// Published on `colony.events.<tenant>.<goal>.<task>.<kind>`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Event {
    /// 2 (see [`crate::EVENT_VERSION`]).
    #[serde(default = "crate::event_v")]
    pub v: u32,
    /// The tenant of the task.
    pub tenant: String,
    pub task_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<Uuid>,
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// The task moved from one state to another.
    State {
        from: Option<TaskState>,
        to: TaskState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A chunk of a run's output as it happened.
    Output { stream: OutputStream, data: String },
    /// A step of an agent run as it happened.
    Agent { event: crate::agent::AgentEvent },
}

impl EventBody {
    /// The last token of the event's subject.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::State { .. } => crate::subject::EVENT_STATE,
            EventBody::Output { .. } => crate::subject::EVENT_OUTPUT,
            EventBody::Agent { .. } => crate::subject::EVENT_AGENT,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The body of every 4xx/5xx answer of the HTTP API.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ApiError {
    /// One sentence: what was wrong and what to do.
    pub error: String,
}

/// The body of `202 Accepted` from `POST /v1/tasks`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TaskAccepted {
    pub id: Uuid,
    pub state: TaskState,
    /// False when an earlier submission with the same idempotency key
    /// created this task.
    pub created: bool,
}
