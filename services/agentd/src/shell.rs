//! The `shell` role: `/bin/sh -c <command>` in the workspace.
//!
//! This module owns the life of one shell process group: spawning it with a
//! clean environment in its own group, reading stdout and stderr
//! concurrently into bounded [`Capture`]s while streaming what is kept,
//! enforcing the timeout, honouring cancellation, and making sure nothing of
//! the group outlives the run (background jobs included). The agent's
//! `shell` tool runs its commands through the same [`execute`].

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use subjects::agent::AgentFrame;
use subjects::{OutputStream, ShellInput, ShellOutput};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::group::{self, Pgid};
use crate::output::{Capture, Utf8Chunks};
use crate::run::{Cancel, RunError, Settings};

/// The role's name in [`subjects::agent::RunRequest::role`].
pub const ROLE: &str = "shell";

const SHELL: &str = "/bin/sh";
const PATH: &str = "/bin:/usr/bin";
const TMPDIR: &str = "/tmp";
/// Set to the egress proxy's URL for every process agentd starts.
pub const PROXY_VARIABLES: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];
/// Bytes read from a pipe at a time (and so the largest `output` frame).
const READ_CHUNK: usize = 16 * 1024;
/// How long to keep reading the pipes once the group is dead: a process
/// that escaped the group may still hold them open.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A validated shell run.
#[derive(Debug)]
pub struct Shell {
    command: String,
    timeout: Duration,
    max_output_bytes: usize,
}

/// One command to run: what, where, and within which bounds.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub command: &'a str,
    pub workspace: &'a Path,
    /// `HTTP_PROXY` and friends, when agentd runs its egress proxy.
    pub proxy_url: Option<&'a str>,
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr.
    pub max_output_bytes: usize,
}

/// Why a command produced no [`ShellOutput`].
#[derive(Debug)]
pub enum Failure {
    /// It ran past its timeout; its group is dead.
    TimedOut,
    /// The run was cancelled; its group is dead.
    Cancelled,
    /// agentd itself failed (spawn or wait); the sentence says how.
    Internal(String),
}

/// How the shell's wait ended.
enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
    WaitFailed(std::io::Error),
}

impl Shell {
    /// Validates `input` as a [`ShellInput`] with a non-empty command.
    pub fn new(input: &Value, timeout_ms: u64, max_output_bytes: usize) -> Result<Shell, RunError> {
        let input = ShellInput::deserialize(input).map_err(|err| {
            RunError::invalid_input(format!(
                "the shell role's input must be {{\"command\": \"<text>\"}} and nothing else: {err}."
            ))
        })?;
        check_command(&input.command).map_err(RunError::invalid_input)?;
        Ok(Shell {
            command: input.command,
            timeout: Duration::from_millis(timeout_ms),
            max_output_bytes,
        })
    }

    /// Runs the command in the workspace until it exits, times out or
    /// `cancel` fires, streaming its output as frames; the whole process
    /// group is dead when this returns.
    pub async fn run(
        self,
        settings: &Settings,
        frames: mpsc::Sender<AgentFrame>,
        cancel: &mut Cancel,
    ) -> Result<ShellOutput, RunError> {
        let command = Command {
            command: &self.command,
            workspace: &settings.workspace,
            proxy_url: settings.proxy_url.as_deref(),
            timeout: self.timeout,
            max_output_bytes: self.max_output_bytes,
        };
        execute(command, Some(&frames), cancel)
            .await
            .map_err(|failure| match failure {
                Failure::TimedOut => RunError::timeout(format!(
                    "the command ran longer than its {}-second limit and was killed",
                    self.timeout.as_secs_f64()
                )),
                Failure::Cancelled => RunError::internal(CANCELLED),
                Failure::Internal(reason) => RunError::internal(reason),
            })
    }
}

/// What a cancelled run reports (nobody is left to read it but the log).
pub const CANCELLED: &str = "the client disconnected, so the run was cancelled";

/// Why `command` cannot be run, if it cannot.
pub fn check_command(command: &str) -> Result<(), &'static str> {
    if command.trim().is_empty() {
        return Err("the shell command is empty.");
    }
    if command.contains('\0') {
        return Err("the shell command contains a NUL byte, which no shell can run.");
    }
    Ok(())
}

/// Runs `/bin/sh -c` with a clean environment in its own process group until
/// it exits, times out or `cancel` fires. Output is captured (bounded) and,
/// when `frames` is given, streamed as `output` frames. The whole process
/// group is dead when this returns.
pub async fn execute(
    spec: Command<'_>,
    frames: Option<&mpsc::Sender<AgentFrame>>,
    cancel: &mut Cancel,
) -> Result<ShellOutput, Failure> {
    let mut command = tokio::process::Command::new(SHELL);
    command
        .arg("-c")
        .arg(spec.command)
        .current_dir(spec.workspace)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", spec.workspace)
        .env("TMPDIR", TMPDIR);
    if let Some(url) = spec.proxy_url {
        for name in PROXY_VARIABLES {
            command.env(name, url);
        }
    }
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| {
            Failure::Internal(format!(
                "agentd could not start {SHELL} in {}: {err}",
                spec.workspace.display()
            ))
        })?;
    let (Some(pgid), Some(stdout), Some(stderr)) = (
        Pgid::of_leader(child.id()),
        child.stdout.take(),
        child.stderr.take(),
    ) else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(Failure::Internal(
            "agentd started the shell but lost its process id or pipes".to_owned(),
        ));
    };
    let mut guard = group::Guard::new(pgid);

    let mut out = Capture::new(spec.max_output_bytes);
    let mut err = Capture::new(spec.max_output_bytes);
    let ending = {
        let readers = async {
            tokio::join!(
                drain(stdout, OutputStream::Stdout, &mut out, frames),
                drain(stderr, OutputStream::Stderr, &mut err, frames),
            )
        };
        tokio::pin!(readers);
        let deadline = tokio::time::sleep(spec.timeout);
        tokio::pin!(deadline);
        let mut drained = false;

        let ending = loop {
            tokio::select! {
                status = child.wait() => break match status {
                    Ok(status) => Ending::Exited(status),
                    Err(err) => Ending::WaitFailed(err),
                },
                () = &mut deadline => break Ending::TimedOut,
                () = cancel.fired() => break Ending::Cancelled,
                _ = &mut readers, if !drained => drained = true,
            }
        };

        if !matches!(ending, Ending::Exited(_)) {
            group::kill(pgid);
            let _ = child.wait().await;
        }
        // The leader is reaped; now its background jobs (or a fork bomb).
        if group::kill_until_gone(pgid).await {
            guard.disarm();
        }
        if !drained {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut readers).await;
        }
        ending
    };
    drop(guard);

    match ending {
        Ending::Exited(status) => {
            let (out, err) = (out.finish(), err.finish());
            Ok(ShellOutput {
                exit_code: exit_code(status),
                stdout: out.text,
                stderr: err.text,
                stdout_truncated: out.truncated,
                stderr_truncated: err.truncated,
                stdout_escaped: out.escaped,
                stderr_escaped: err.escaped,
            })
        }
        Ending::TimedOut => Err(Failure::TimedOut),
        Ending::Cancelled => Err(Failure::Cancelled),
        Ending::WaitFailed(err) => Err(Failure::Internal(format!(
            "agentd could not wait for the shell: {err}"
        ))),
    }
}

/// The shell's exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Reads `pipe` to its end into `capture`, streaming the kept part. Keeps
/// draining (and counting) past the limit so the writer never blocks on a
/// full pipe; a gone receiver only stops the streaming.
async fn drain(
    mut pipe: impl AsyncRead + Unpin,
    stream: OutputStream,
    capture: &mut Capture,
    frames: Option<&mpsc::Sender<AgentFrame>>,
) {
    let mut buf = vec![0; READ_CHUNK];
    let mut text = Utf8Chunks::default();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let kept = capture.push(&buf[..n]);
        if !kept.is_empty() {
            send(frames, stream, text.push(kept)).await;
        }
    }
    send(frames, stream, text.finish()).await;
}

async fn send(frames: Option<&mpsc::Sender<AgentFrame>>, stream: OutputStream, data: String) {
    let Some(frames) = frames else {
        return;
    };
    if !data.is_empty() {
        let _ = frames.send(AgentFrame::Output { stream, data }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }
}
