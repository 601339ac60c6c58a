//! One run: checking a [`RunRequest`] against its role, then executing it.
//!
//! This module owns the role table (only `shell` today) and what every role
//! shares: the [`RunError`] answer and emptying the workspace first. How a
//! role actually runs is its own module's business ([`crate::shell`]).

use std::path::Path;

use serde_json::Value;
use subjects::agent::{AgentFrame, RunErrorKind, RunRequest};
use tokio::sync::{mpsc, oneshot};

use crate::{shell, workspace};

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
}

/// Checks `request` without side effects: a known role, input that fits it,
/// a usable timeout.
pub fn prepare(request: &RunRequest) -> Result<Prepared, RunError> {
    if request.timeout_ms == 0 {
        return Err(RunError::invalid_input(
            "timeout_ms must be at least 1 millisecond.",
        ));
    }
    let role = match request.role.as_str() {
        shell::ROLE => Role::Shell(shell::Shell::new(
            &request.input,
            request.timeout_ms,
            request.max_output_bytes,
        )?),
        other => {
            return Err(RunError::invalid_input(format!(
                "agentd has no role {other:?}; the roles it runs are: {}.",
                shell::ROLE
            )))
        }
    };
    Ok(Prepared {
        role,
        fresh_workspace: request.fresh_workspace,
    })
}

/// Executes a prepared run in `workspace`, streaming bounded output frames
/// to `frames`. Sending on (or dropping) `cancel` kills the run.
pub async fn execute(
    prepared: Prepared,
    workspace: &Path,
    frames: mpsc::Sender<AgentFrame>,
    cancel: oneshot::Receiver<()>,
) -> Result<Value, RunError> {
    if prepared.fresh_workspace {
        workspace::empty(workspace).map_err(|err| {
            RunError::internal(format!(
                "agentd could not empty the workspace {}: {err}",
                workspace.display()
            ))
        })?;
    }
    match prepared.role {
        Role::Shell(shell) => {
            let output = shell.run(workspace, frames, cancel).await?;
            serde_json::to_value(output).map_err(|err| {
                RunError::internal(format!("agentd could not encode the shell output: {err}"))
            })
        }
    }
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
            "agentd has no role \"python\"; the roles it runs are: shell."
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
