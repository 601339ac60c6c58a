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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::OutputStream;

/// Directory, inside the container, holding `agent.sock` (and, later,
/// `gateway.sock`). The worker bind-mounts a per-container host directory here.
pub const SOCKET_DIR: &str = "/run/colony";
/// File name of agentd's socket within [`SOCKET_DIR`].
pub const AGENT_SOCKET: &str = "agent.sock";
/// The writable directory a run works in.
pub const WORKSPACE: &str = "/workspace";

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
}
