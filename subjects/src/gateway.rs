//! The protocol on a container's `gateway.sock` (agentd → worker).
//!
//! HTTP/1.1 over the unix socket. The worker runs one gateway per container
//! and knows which run the container is doing, so a request carries no
//! identity of its own: whatever can reach the socket acts as that run's
//! employee, and only within that role's permissions.
//!
//! Routes (origin-form):
//! - `POST` [`CHAT_COMPLETIONS`]: OpenAI-compatible chat completions,
//!   streamed or not. The gateway adds the provider's key, meters the tokens
//!   and cost, and stops the run when a quota is crossed (answering 429 with
//!   an [`ApiError`](crate::ApiError) whose sentence names the quota).
//! - `POST` [`ACTIONS`]`{name}`: a platform action with an
//!   [`ActionRequest`] body, answered with an [`ActionResponse`]; 403 with a
//!   one-sentence [`ApiError`](crate::ApiError) when the role does not allow
//!   it (deny by default). Allowed or not, every call is audited.
//! - `POST` [`FETCH`]: the `http_fetch` tool. The gateway makes the request
//!   itself when the host is in the role's egress allowlist, attaching any
//!   vault credential whose URL prefix matches; the credential never enters
//!   the container.
//!
//! Proxy requests (`CONNECT host:port`, or an absolute-form `GET http://…`)
//! arrive through agentd's loopback proxy ([`crate::agent::PROXY_ADDR`]) and
//! are tunnelled only to hosts in the allowlist; anything else gets 403 with
//! one sentence naming the host.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";

/// Ports an egress allowlist entry without one allows.
pub const EGRESS_DEFAULT_PORTS: [u16; 2] = [80, 443];

/// An egress allowlist entry (`host`, `*.suffix`, `[v6]`, each with an
/// optional `:port`) as its host and port; an IPv6 address without brackets
/// has no port. `None` when the port is not 1-65535 or the brackets are
/// broken.
pub fn split_egress_entry(entry: &str) -> Option<(&str, Option<u16>)> {
    let e = entry.trim();
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    if let Some(rest) = e.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            None if after.is_empty() => Some((host, None)),
            Some(p) => Some((host, Some(port(p)?))),
            None => None,
        };
    }
    match e.matches(':').count() {
        0 => Some((e, None)),
        1 => {
            let (h, p) = e.split_once(':')?;
            Some((h, Some(port(p)?)))
        }
        _ => Some((e, None)),
    }
}
/// Prefix of the action routes; the action's name follows.
pub const ACTIONS: &str = "/v1/actions/";
pub const FETCH: &str = "/v1/fetch";

/// Platform actions a role may allow (its `allowed_actions`).
pub mod action {
    pub const MEMORY_GET: &str = "memory.get";
    pub const MEMORY_SET: &str = "memory.set";
    pub const MEMORY_LIST: &str = "memory.list";
    /// Leave a note on the task (kept with its history).
    pub const NOTE: &str = "note";
    /// Create a sub-task (for planners).
    pub const TASK_CREATE: &str = "task.create";
    /// Submit the verdict on the sub-task a review run was given (for
    /// reviewers; the args are a `goals::ReviewVerdict`).
    pub const REVIEW_SUBMIT: &str = "review.submit";
    /// Submit a goal's plan (for planners; the args are a `goals::Plan`).
    pub const PLAN_SUBMIT: &str = "plan.submit";
    /// Every action name the platform knows.
    pub const ALL: &[&str] = &[
        MEMORY_GET,
        MEMORY_SET,
        MEMORY_LIST,
        NOTE,
        TASK_CREATE,
        REVIEW_SUBMIT,
        PLAN_SUBMIT,
    ];
}

/// Body of `POST /v1/actions/{name}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ActionRequest {
    /// The action's arguments, e.g. `{"key": "k", "value": …}` for
    /// `memory.set`, `{"key": "k"}` for `memory.get`, `{"text": …}` for `note`.
    #[serde(default)]
    pub args: Value,
}

/// Answer of an action that ran.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ActionResponse {
    pub result: Value,
}

/// Body of `POST /v1/fetch`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FetchRequest {
    /// `http://` or `https://` URL; its host must be in the allowlist.
    pub url: String,
    /// `GET` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Answer of `POST /v1/fetch` (the remote's status, whatever it is).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FetchResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8), bounded; `truncated` says when cut.
    pub body: String,
    pub truncated: bool,
}
