//! The protocol on a container's `agent.sock` (worker → agentd).
//!
//! Newline-delimited JSON over one unix-socket connection per request. The
//! worker writes one [`AgentRequest`] line; agentd answers with zero or more
//! [`AgentFrame::Output`] lines and exactly one final frame (`pong`, `result`
//! or `error`), then closes. Closing the connection before the final frame
//! cancels the run: agentd kills the run's whole process group.
//!
//! Why not HTTP: one request and a stream of frames is all this needs, and the
//! static agentd stays small (tokio and serde only).
//!
//! The other direction (agentd → worker) is `gateway.sock`: an HTTP/1.1
//! server the worker runs for each container (see [`crate::gateway`]). An
//! agent run ([`RunRequest::agent`] set) calls the model, the platform
//! actions and the outside world only through it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::OutputStream;

/// Directory, inside the container, holding the two sockets. The worker
/// bind-mounts a per-container host directory here. That directory is
/// root's and not writable from inside, so `gateway.sock` (the worker's)
/// cannot be replaced by anything the container runs; agentd's own socket
/// lives in the one subdirectory the container may write, [`AGENT_SUBDIR`].
pub const SOCKET_DIR: &str = "/run/colony";
/// The container's writable subdirectory of [`SOCKET_DIR`], holding
/// [`AGENT_SOCKET`].
pub const AGENT_SUBDIR: &str = "agent";
/// File name of agentd's socket within [`SOCKET_DIR`]/[`AGENT_SUBDIR`].
pub const AGENT_SOCKET: &str = "agent.sock";
/// File name of the worker's gateway socket within [`SOCKET_DIR`].
pub const GATEWAY_SOCKET: &str = "gateway.sock";
/// Where agentd offers an HTTP(S) proxy inside the container (loopback only;
/// the container has no other network). Each connection is piped, byte for
/// byte, to `gateway.sock`, which is itself a forward proxy that allows only
/// the role's egress allowlist. agentd sets `HTTP_PROXY`/`HTTPS_PROXY` (and
/// the lower-case forms) to `http://` + this for every process it starts.
pub const PROXY_ADDR: &str = "127.0.0.1:3128";
/// The writable directory a run works in.
pub const WORKSPACE: &str = "/workspace";

// One request per connection, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentRequest {
    /// Readiness check; answered with [`AgentFrame::Pong`].
    Ping,
    Run(RunRequest),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct RunRequest {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    pub run_id: String,
    pub role: String,
    pub input: Value,
    /// agentd kills the run's process group after this long.
    pub timeout_ms: u64,
    /// Bytes kept of each of stdout and stderr; the rest is counted and dropped.
    pub max_output_bytes: usize,
    /// Empty `/workspace` before the run (a container reused across tasks
    /// must not leak one task's files into the next).
    pub fresh_workspace: bool,
    /// Set for an AI employee's run: agentd runs the model loop with these
    /// settings; `input` is then an [`AgentInput`]. Absent for `shell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

/// How agentd runs one model-driven task.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// Model name sent to the gateway (which maps it to the provider).
    pub model: String,
    /// The role's system prompt; memory is appended to it by agentd.
    pub system_prompt: String,
    /// Tools offered to the model, by name: `shell`, `read_file`,
    /// `write_file`, `http_fetch`, and `action.<name>` for each platform
    /// action the role allows (e.g. `action.memory.set`). Unknown names are
    /// refused with [`RunErrorKind::InvalidInput`].
    pub tools: Vec<String>,
    /// Model calls at most; the run ends with [`AgentStop::MaxTurns`] after.
    pub max_turns: u32,
    /// Bytes of a tool's result given back to the model (the rest is cut and
    /// the cut is marked).
    pub max_tool_output_bytes: usize,
    /// The employee's memory at dispatch (key → value), shown to the model.
    #[serde(default)]
    pub memory: std::collections::BTreeMap<String, Value>,
    /// Ask the gateway for a streamed completion (message deltas arrive as
    /// [`AgentEvent::MessageDelta`] while the model writes).
    #[serde(default)]
    pub stream: bool,
}

/// The input of an agent run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AgentInput {
    /// What the employee is asked to do.
    pub prompt: String,
}

/// The `output` of a finished agent run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AgentOutput {
    /// The model's last message.
    pub message: String,
    /// Model calls made.
    pub turns: u32,
    pub stop: AgentStop,
    /// Tokens over the whole run, as the gateway reported them.
    pub usage: TokenUsage,
    /// The files in `/workspace` when the run ended (at most
    /// [`MAX_LISTED_FILES`], paths relative to it): what a goal's
    /// deliverable points to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<WorkspaceFile>,
}

/// The most files an [`AgentOutput`] lists.
pub const MAX_LISTED_FILES: usize = 200;

/// One regular file of the workspace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceFile {
    pub path: String,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AgentStop {
    /// The model answered without asking for a tool.
    Done,
    /// `max_turns` model calls were made.
    MaxTurns,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Something that happened during an agent run, streamed to the worker as
/// it happens (the worker publishes it on `colony.events.*`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Text the model wrote (a delta when streaming, else the whole message).
    MessageDelta { text: String },
    /// The model asked for a tool; `arguments` is the model's JSON string.
    ToolCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// What the tool gave back (bounded by `max_tool_output_bytes`).
    ToolResult {
        call_id: String,
        name: String,
        ok: bool,
        output: String,
    },
    /// Tokens of one model call.
    Usage(TokenUsage),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    Pong {
        agentd_version: String,
    },
    /// A chunk of output as it happens (already bounded by agentd).
    Output {
        stream: OutputStream,
        data: String,
    },
    /// A step of an agent run as it happens.
    Event {
        event: AgentEvent,
    },
    /// The run finished; `output` is the role's result (a
    /// [`crate::ShellOutput`] for `shell`).
    Result {
        output: Value,
    },
    /// The run could not finish.
    Error {
        kind: RunErrorKind,
        reason: String,
    },
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunErrorKind {
    /// The run exceeded its `timeout_ms`.
    Timeout,
    /// The input does not fit the role (retrying will not help).
    InvalidInput,
    /// agentd itself failed (spawn error, I/O).
    Internal,
    /// The gateway refused or failed a model call (quota crossed, provider
    /// down); `reason` has its one sentence.
    Gateway,
}
