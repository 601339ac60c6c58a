//! One run: checking a [`RunRequest`] against its role, then executing it.
//!
//! This module owns the role table (`shell`, and an agent run for any role
//! when the request carries an [`subjects::agent::AgentSpec`]) and what every
//! run shares: agentd's [`Settings`], the [`Cancel`] signal, the [`RunError`]
//! answer and emptying the workspace first. How a role actually runs is its
//! own module's business ([`crate::shell`], [`crate::agent`]).

use std::path::PathBuf;

use serde_json::Value;
use subjects::agent::{AgentFrame, RunErrorKind, RunRequest};
use tokio::sync::{mpsc, oneshot};

use crate::{agent, shell, workspace};

/// What every run needs of agentd's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The directory runs work in.
    pub workspace: PathBuf,
    /// The worker's gateway socket (model calls, actions, fetches).
    pub gateway: PathBuf,
    /// The egress proxy's URL (`http://127.0.0.1:3128`), given to every
    /// process as `HTTP_PROXY` and friends; `None` when the proxy is off.
    pub proxy_url: Option<String>,
    /// After every run, kill every other process agentd may signal (see
    /// [`crate::group::sweep`]): set only inside a container.
    pub sweep: bool,
}

/// The run's cancel signal: fires when the client's side sends on (or drops)
/// the paired sender, and stays fired.
#[derive(Debug)]
pub struct Cancel {
    signal: oneshot::Receiver<()>,
    fired: bool,
}

impl Cancel {
    pub fn new(signal: oneshot::Receiver<()>) -> Cancel {
        Cancel {
            signal,
            fired: false,
        }
    }

    /// Completes once the run is cancelled (at once if it already is).
    /// Cancel-safe.
    pub async fn fired(&mut self) {
        if !self.fired {
            let _ = (&mut self.signal).await;
            self.fired = true;
        }
    }
}

/// Why a run produced no result; sent as an [`AgentFrame::Error`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunError {
    pub kind: RunErrorKind,
    pub reason: String,
}

impl RunError {
    pub fn invalid_input(reason: impl Into<String>) -> RunError {
        RunError {
            kind: RunErrorKind::InvalidInput,
            reason: reason.into(),
        }
    }

    pub fn internal(reason: impl Into<String>) -> RunError {
        RunError {
            kind: RunErrorKind::Internal,
            reason: reason.into(),
        }
    }

    pub fn timeout(reason: impl Into<String>) -> RunError {
        RunError {
            kind: RunErrorKind::Timeout,
            reason: reason.into(),
        }
    }

    pub fn gateway(reason: impl Into<String>) -> RunError {
        RunError {
            kind: RunErrorKind::Gateway,
            reason: reason.into(),
        }
    }

    pub fn into_frame(self) -> AgentFrame {
        AgentFrame::Error {
            kind: self.kind,
            reason: self.reason,
        }
    }
}

/// A request that passed validation and is ready to execute.
#[derive(Debug)]
pub struct Prepared {
    role: Role,
    fresh_workspace: bool,
}

#[derive(Debug)]
enum Role {
    Shell(shell::Shell),
    Agent(Box<agent::Agent>),
}

/// Checks `request` without side effects: a known role (any role with an
/// agent spec), input that fits it, a usable timeout.
pub fn prepare(request: &RunRequest) -> Result<Prepared, RunError> {
    if request.timeout_ms == 0 {
        return Err(RunError::invalid_input(
            "timeout_ms must be at least 1 millisecond.",
        ));
    }
    let role = match (&request.agent, request.role.as_str()) {
        (Some(spec), _) => Role::Agent(Box::new(agent::Agent::new(
            spec,
            &request.input,
            request.timeout_ms,
            request.max_output_bytes,
        )?)),
        (None, shell::ROLE) => Role::Shell(shell::Shell::new(
            &request.input,
            request.timeout_ms,
            request.max_output_bytes,
        )?),
        (None, other) => {
            return Err(RunError::invalid_input(format!(
                "agentd has no role {other:?}; the roles it runs are: {} (and any role with an agent spec).",
                shell::ROLE
            )))
        }
    };
    Ok(Prepared {
        role,
        fresh_workspace: request.fresh_workspace,
    })
}

/// Executes a prepared run in the workspace, streaming bounded output and
/// event frames to `frames`. Sending on (or dropping) `cancel` stops the
/// run: its processes are killed and its gateway calls aborted.
pub async fn execute(
    prepared: Prepared,
    settings: &Settings,
    frames: mpsc::Sender<AgentFrame>,
    cancel: oneshot::Receiver<()>,
) -> Result<Value, RunError> {
    let mut cancel = Cancel::new(cancel);
    if prepared.fresh_workspace {
        workspace::empty(&settings.workspace).map_err(|err| {
            RunError::internal(format!(
                "agentd could not empty the workspace {}: {err}",
                settings.workspace.display()
            ))
        })?;
    }
    let output = match prepared.role {
        Role::Shell(shell) => serde_json::to_value(shell.run(settings, frames, &mut cancel).await?),
        Role::Agent(agent) => serde_json::to_value(agent.run(settings, frames, &mut cancel).await?),
    };
    output.map_err(|err| RunError::internal(format!("agentd could not encode the output: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(role: &str, input: Value, timeout_ms: u64) -> RunRequest {
        RunRequest {
            v: 1,
            run_id: "r1".to_owned(),
            role: role.to_owned(),
            input,
            timeout_ms,
            max_output_bytes: 1024,
            fresh_workspace: false,
            agent: None,
        }
    }

    fn invalid_reason(request: &RunRequest) -> String {
        match prepare(request) {
            Err(RunError {
                kind: RunErrorKind::InvalidInput,
                reason,
            }) => reason,
            other => panic!("expected invalid_input, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_shell_command() {
        assert!(prepare(&request("shell", json!({"command": "true"}), 1000)).is_ok());
    }

    #[test]
    fn rejects_an_unknown_role() {
        let reason = invalid_reason(&request("python", json!({"command": "true"}), 1000));
        assert_eq!(
            reason,
            "agentd has no role \"python\"; the roles it runs are: shell (and any role with an agent spec)."
        );
    }

    #[test]
    fn rejects_a_zero_timeout() {
        let reason = invalid_reason(&request("shell", json!({"command": "true"}), 0));
        assert!(reason.contains("timeout_ms"), "{reason}");
    }

    #[test]
    fn rejects_input_that_is_not_shell_input() {
        for input in [
            json!("echo hi"),
            json!({}),
            json!({"command": 5}),
            json!({"command": "true", "cwd": "/"}),
        ] {
            let reason = invalid_reason(&request("shell", input.clone(), 1000));
            assert!(
                reason.starts_with("the shell role's input must be"),
                "{input}: {reason}"
            );
        }
    }

    #[test]
    fn rejects_an_empty_command() {
        for command in ["", "  \n\t"] {
            let reason = invalid_reason(&request("shell", json!({ "command": command }), 1000));
            assert_eq!(reason, "the shell command is empty.");
        }
    }

    #[test]
    fn rejects_a_nul_byte() {
        let reason = invalid_reason(&request("shell", json!({"command": "a\u{0}b"}), 1000));
        assert!(reason.contains("NUL"), "{reason}");
    }
}
