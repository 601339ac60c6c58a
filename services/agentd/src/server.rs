//! The socket side of agentd: the listener and the protocol per connection.
//!
//! This module owns [`subjects::agent`]'s framing: one request line per
//! connection, `output` frames while a run produces output, exactly one
//! final frame, then close. It watches the client while a run executes and
//! cancels the run (killing its process group) when the client goes away.
//! What a run does is [`crate::run`]'s business.

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subjects::agent::{AgentFrame, AgentRequest, RunRequest};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::run::{self, RunError, Settings};
use crate::{log, VERSION};

/// The longest request line accepted (a command travels inside it).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Output frames queued between a run and a slow client before the run's
/// pipe readers wait (and so, eventually, the run's writers).
const FRAME_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound agent socket.
pub struct Server {
    listener: UnixListener,
    socket: PathBuf,
    settings: Arc<Settings>,
    /// Held by a run from its request to its final frame, sweep included:
    /// a container does one run at a time, and the next one starts only
    /// once nothing of the last is left.
    one_run: Arc<tokio::sync::Mutex<()>>,
}

impl Server {
    /// Replaces a stale socket file at `socket`, binds it and opens it to
    /// every user (the directory is the container's own). Must be called
    /// within the tokio runtime.
    pub fn bind(socket: &Path, settings: Settings) -> io::Result<Server> {
        let context = |what: &str, err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("cannot {what} {}: {err}", socket.display()),
            )
        };
        match fs::remove_file(socket) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(context("remove the stale socket", err)),
        }
        let listener = UnixListener::bind(socket).map_err(|err| context("listen on", err))?;
        fs::set_permissions(socket, fs::Permissions::from_mode(0o666))
            .map_err(|err| context("chmod", err))?;
        Ok(Server {
            listener,
            socket: socket.to_owned(),
            settings: Arc::new(settings),
            one_run: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Serves connections (one task each) until `shutdown` completes, then
    /// removes the socket file. Runs still executing are killed when the
    /// runtime drops their tasks.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(handle(stream, self.settings.clone(), self.one_run.clone()));
                    }
                    Err(err) => {
                        log(format_args!("accept failed: {err}"));
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        let _ = fs::remove_file(&self.socket);
    }
}

/// One connection: read the request line, answer it, close.
async fn handle(stream: UnixStream, settings: Arc<Settings>, one_run: Arc<tokio::sync::Mutex<()>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let line = match read_request_line(&mut reader).await {
        Ok(Some(line)) => line,
        // The client left without asking anything (a probe): nothing to say.
        Ok(None) | Err(RequestError::Io) => return,
        Err(RequestError::TooLong) => {
            let error = RunError::invalid_input(format!(
                "the request line is longer than {MAX_REQUEST_BYTES} bytes."
            ));
            let _ = write_frame(&mut write, &error.into_frame()).await;
            return;
        }
    };
    let frame = match serde_json::from_slice::<AgentRequest>(&line) {
        Ok(AgentRequest::Ping) => AgentFrame::Pong {
            agentd_version: VERSION.to_owned(),
        },
        Ok(AgentRequest::Run(request)) => {
            let _one = one_run.lock().await;
            return serve_run(request, reader, write, &settings).await;
        }
        Err(err) => RunError::invalid_input(format!(
            "the request is not one JSON AgentRequest line ({err})."
        ))
        .into_frame(),
    };
    let _ = write_frame(&mut write, &frame).await;
}

enum RequestError {
    TooLong,
    Io,
}

/// The first line (without its newline; end of stream also ends it), or
/// `None` when the client sent nothing at all.
async fn read_request_line(
    reader: &mut (impl AsyncRead + AsyncBufReadExt + Unpin),
) -> Result<Option<Vec<u8>>, RequestError> {
    let mut line = Vec::new();
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|_| RequestError::Io)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    Ok((!line.is_empty()).then_some(line))
}

/// Executes a run on its own task while forwarding its output frames and
/// watching the client; sends the final frame and logs the run.
async fn serve_run(
    request: RunRequest,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    settings: &Arc<Settings>,
) {
    let started = Instant::now();
    let mut connected = true;
    let outcome = match run::prepare(&request) {
        Err(err) => Err(err),
        Ok(prepared) => {
            let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
            let (cancel_tx, cancel) = oneshot::channel();
            let mut cancel_tx = Some(cancel_tx);
            let settings = settings.clone();
            // Its own task, so the timeout holds even while a write to a slow
            // client is pending here.
            let mut task =
                tokio::spawn(
                    async move { run::execute(prepared, &settings, frames_tx, cancel).await },
                );
            let outcome = loop {
                tokio::select! {
                    biased;
                    Some(frame) = frames.recv() => {
                        if connected && write_frame(&mut write, &frame).await.is_err() {
                            connected = false;
                            cancel_run(&mut cancel_tx);
                        }
                    }
                    () = client_gone(&mut reader), if connected => {
                        connected = false;
                        cancel_run(&mut cancel_tx);
                    }
                    joined = &mut task => break joined.unwrap_or_else(|err| {
                        Err(RunError::internal(format!("the run failed inside agentd: {err}")))
                    }),
                }
            };
            while let Ok(frame) = frames.try_recv() {
                if connected && write_frame(&mut write, &frame).await.is_err() {
                    connected = false;
                }
            }
            outcome
        }
    };

    let mut outcome = outcome;
    if settings.sweep {
        match crate::group::sweep().await {
            Ok(0) => {}
            Ok(rounds) => log(format_args!(
                "run {:?}: killed processes it left behind ({rounds} rounds)",
                request.run_id
            )),
            // The worker removes a container whose run fails internally.
            Err(why) => {
                log(format_args!("run {:?}: {why}", request.run_id));
                outcome = Err(RunError::internal(why.to_owned()));
            }
        }
    }
    let elapsed = started.elapsed().as_millis();
    match &outcome {
        Ok(output) if request.agent.is_some() => log(format_args!(
            "run {:?} stopped ({}) after {} turns in {elapsed} ms",
            request.run_id,
            output.get("stop").unwrap_or(&serde_json::Value::Null),
            output.get("turns").unwrap_or(&serde_json::Value::Null)
        )),
        Ok(output) => log(format_args!(
            "run {:?} exit {} in {elapsed} ms",
            request.run_id,
            output.get("exit_code").unwrap_or(&serde_json::Value::Null)
        )),
        Err(err) => log(format_args!(
            "run {:?} failed ({:?}: {}) in {elapsed} ms",
            request.run_id, err.kind, err.reason
        )),
    }
    if connected {
        let frame = match outcome {
            Ok(output) => AgentFrame::Result { output },
            Err(err) => err.into_frame(),
        };
        let _ = write_frame(&mut write, &frame).await;
    }
}

/// The client is gone: the run kills its process group and ends.
fn cancel_run(cancel: &mut Option<oneshot::Sender<()>>) {
    if let Some(tx) = cancel.take() {
        let _ = tx.send(());
    }
}

/// Completes when the client closes its side or the socket fails; anything
/// it sends after the request line is ignored. Cancel-safe.
async fn client_gone(reader: &mut (impl AsyncRead + Unpin)) {
    let mut sink = [0; 512];
    loop {
        match reader.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write_frame(write: &mut (impl AsyncWrite + Unpin), frame: &AgentFrame) -> io::Result<()> {
    let mut line = serde_json::to_vec(frame)?;
    line.push(b'\n');
    write.write_all(&line).await
}

#[cfg(test)]
mod tests {
    //! Drives a real server on a temporary socket through the protocol.

    use super::*;
    use crate::testutil::{alive, TempDir};
    use serde_json::{json, Value};
    use subjects::agent::RunErrorKind;
    use subjects::{OutputStream, ShellOutput};
    use tokio::io::{AsyncBufReadExt, Lines};
    use tokio::net::unix::OwnedReadHalf;

    /// What the harness tells runs the egress proxy is (nothing listens).
    const PROXY_URL: &str = "http://127.0.0.1:3128";

    struct Harness {
        _dir: TempDir,
        socket: PathBuf,
        workspace: PathBuf,
        stop: Option<oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        async fn start() -> Harness {
            let dir = TempDir::new("server").expect("temp dir");
            let socket = dir.path().join("agent.sock");
            let workspace = dir.path().join("workspace");
            fs::create_dir(&workspace).expect("workspace");
            let settings = Settings {
                workspace: workspace.clone(),
                gateway: dir.path().join("gateway.sock"),
                proxy_url: Some(PROXY_URL.to_owned()),
                sweep: false,
            };
            let server = Server::bind(&socket, settings).expect("bind");
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(server.serve(async move {
                let _ = stopped.await;
            }));
            Harness {
                _dir: dir,
                socket,
                workspace,
                stop: Some(stop),
                server,
            }
        }

        /// Connects and sends `line`; returns the frames to read.
        async fn send(&self, line: &str) -> Conn {
            let stream = UnixStream::connect(&self.socket).await.expect("connect");
            let (read, mut write) = stream.into_split();
            write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .expect("write");
            Conn {
                lines: BufReader::new(read).lines(),
                _write: write,
            }
        }

        /// Sends `line` and collects every frame until the server closes.
        async fn exchange(&self, line: &str) -> Vec<AgentFrame> {
            let mut conn = self.send(line).await;
            let mut frames = Vec::new();
            while let Some(frame) = conn.next().await {
                frames.push(frame);
            }
            frames
        }

        async fn run(&self, command: &str, timeout_ms: u64, max: usize) -> Vec<AgentFrame> {
            self.exchange(&run_line(command, timeout_ms, max, false))
                .await
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            (&mut self.server).await.expect("server task");
            assert!(
                !self.socket.exists(),
                "the socket file is removed on shutdown"
            );
        }
    }

    struct Conn {
        lines: Lines<BufReader<OwnedReadHalf>>,
        _write: tokio::net::unix::OwnedWriteHalf,
    }

    impl Conn {
        async fn next(&mut self) -> Option<AgentFrame> {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
                .await
                .expect("a frame within 20 s")
                .expect("read")?;
            Some(serde_json::from_str(&line).expect("a valid frame"))
        }
    }

    fn run_line(command: &str, timeout_ms: u64, max: usize, fresh: bool) -> String {
        json!({
            "type": "run",
            "run_id": "test",
            "role": "shell",
            "input": {"command": command},
            "timeout_ms": timeout_ms,
            "max_output_bytes": max,
            "fresh_workspace": fresh,
        })
        .to_string()
    }

    /// The final frame's shell output; panics on anything else.
    fn result(frames: &[AgentFrame]) -> ShellOutput {
        match frames.last() {
            Some(AgentFrame::Result { output }) => {
                serde_json::from_value(output.clone()).expect("a ShellOutput")
            }
            other => panic!("expected a result, got {other:?} in {frames:?}"),
        }
    }

    fn error(frames: &[AgentFrame]) -> (RunErrorKind, String) {
        match frames.last() {
            Some(AgentFrame::Error { kind, reason }) => (*kind, reason.clone()),
            other => panic!("expected an error, got {other:?} in {frames:?}"),
        }
    }

    fn streamed(frames: &[AgentFrame], want: OutputStream) -> String {
        frames
            .iter()
            .filter_map(|frame| match frame {
                AgentFrame::Output { stream, data } if *stream == want => Some(data.as_str()),
                _ => None,
            })
            .collect()
    }

    fn pids(text: &str) -> Vec<u32> {
        text.split_whitespace()
            .map(|pid| pid.parse().expect("a pid"))
            .collect()
    }

    /// Waits up to 3 s for every pid in `pids` to be gone.
    async fn assert_gone(pids: &[u32]) {
        for _ in 0..300 {
            if !pids.iter().any(|&pid| alive(pid)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("processes {pids:?} are still running");
    }

    #[tokio::test]
    async fn ping_pongs() {
        let harness = Harness::start().await;
        let frames = harness.exchange(r#"{"type":"ping"}"#).await;
        assert_eq!(
            frames,
            vec![AgentFrame::Pong {
                agentd_version: VERSION.to_owned()
            }]
        );
        harness.stop().await;
    }

    #[tokio::test]
    async fn malformed_requests_are_invalid_input() {
        let harness = Harness::start().await;
        for line in ["not json", r#"{"type":"run"}"#, r#"{"type":"dance"}"#] {
            let frames = harness.exchange(line).await;
            let (kind, reason) = error(&frames);
            assert_eq!(kind, RunErrorKind::InvalidInput, "{line}");
            assert!(reason.starts_with("the request is not one JSON AgentRequest line"));
            assert_eq!(frames.len(), 1);
        }
        let frames = harness
            .exchange(
                &json!({"type":"run","run_id":"x","role":"python","input":{},
                        "timeout_ms":1000,"max_output_bytes":10,"fresh_workspace":false})
                .to_string(),
            )
            .await;
        let (kind, reason) = error(&frames);
        assert_eq!(kind, RunErrorKind::InvalidInput);
        assert!(
            reason.starts_with("agentd has no role \"python\""),
            "{reason}"
        );

        let frames = harness.run("   ", 1000, 10).await;
        assert_eq!(
            error(&frames),
            (
                RunErrorKind::InvalidInput,
                "the shell command is empty.".to_owned()
            )
        );
        harness.stop().await;
    }

    #[tokio::test]
    async fn runs_a_command_and_reports_exit_code_and_output() {
        let harness = Harness::start().await;
        let frames = harness
            .run("echo hi; echo err >&2; exit 3", 10_000, 1024)
            .await;
        assert_eq!(
            result(&frames),
            ShellOutput {
                exit_code: 3,
                stdout: "hi\n".to_owned(),
                stderr: "err\n".to_owned(),
                stdout_truncated: false,
                stderr_truncated: false,
                stdout_escaped: false,
                stderr_escaped: false,
            }
        );
        assert_eq!(streamed(&frames, OutputStream::Stdout), "hi\n");
        assert_eq!(streamed(&frames, OutputStream::Stderr), "err\n");
        harness.stop().await;
    }

    #[tokio::test]
    async fn runs_in_the_workspace_with_a_clean_environment() {
        let harness = Harness::start().await;
        std::env::set_var("AGENTD_TEST_LEAK", "leaked");
        let frames = harness
            .run(
                "pwd; echo \"$HOME|$PATH|$TMPDIR|${AGENTD_TEST_LEAK:-}\"; read x || echo eof; \
                 echo \"$HTTP_PROXY|$HTTPS_PROXY|$http_proxy|$https_proxy\"",
                10_000,
                4096,
            )
            .await;
        let output = result(&frames);
        let ws = harness.workspace.display();
        let proxy = PROXY_URL;
        assert_eq!(
            output.stdout,
            format!("{ws}\n{ws}|/bin:/usr/bin|/tmp|\neof\n{proxy}|{proxy}|{proxy}|{proxy}\n")
        );
        harness.stop().await;
    }

    #[tokio::test]
    async fn bounds_large_output() {
        let harness = Harness::start().await;
        let frames = harness
            .run(
                "yes abcdefg | head -c 1048576; yes e | head -c 3000 >&2",
                20_000,
                1024,
            )
            .await;
        let output = result(&frames);
        assert_eq!(output.exit_code, 0);
        assert!(output.stdout_truncated && output.stderr_truncated);
        let kept = "abcdefg\n".repeat(128);
        assert_eq!(
            output.stdout,
            format!("{kept}\n[… {} bytes truncated]", 1048576 - 1024)
        );
        assert!(output.stderr.ends_with("\n[… 1976 bytes truncated]"));
        assert_eq!(streamed(&frames, OutputStream::Stdout), kept);
        assert_eq!(streamed(&frames, OutputStream::Stderr).len(), 1024);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_timeout_kills_the_process_group() {
        let harness = Harness::start().await;
        let started = Instant::now();
        let frames = harness.run("sleep 30 & echo $$ $!; wait", 500, 1024).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            error(&frames),
            (
                RunErrorKind::Timeout,
                "the command ran longer than its 0.5-second limit and was killed".to_owned()
            )
        );
        let pids = pids(&streamed(&frames, OutputStream::Stdout));
        assert_eq!(pids.len(), 2);
        assert_gone(&pids).await;
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_disconnect_cancels_the_run() {
        let harness = Harness::start().await;
        let mut conn = harness
            .send(&run_line(
                "sleep 30 & echo $$ $!; wait",
                60_000,
                1024,
                false,
            ))
            .await;
        let Some(AgentFrame::Output { data, .. }) = conn.next().await else {
            panic!("expected the pids as output");
        };
        let pids = pids(&data);
        assert!(pids.iter().all(|&pid| alive(pid)));

        // Another connection is served meanwhile.
        let pong = harness.exchange(r#"{"type":"ping"}"#).await;
        assert!(matches!(pong.as_slice(), [AgentFrame::Pong { .. }]));

        drop(conn);
        assert_gone(&pids).await;
        harness.stop().await;
    }

    #[tokio::test]
    async fn background_jobs_do_not_hold_the_run() {
        let harness = Harness::start().await;
        let started = Instant::now();
        let frames = harness
            .run(
                "sleep 30 & echo $!; sleep 30 >/dev/null 2>&1 &",
                20_000,
                1024,
            )
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let output = result(&frames);
        assert_eq!(output.exit_code, 0);
        assert_gone(&pids(&output.stdout)).await;
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_signal_is_reported_as_128_plus_signal() {
        let harness = Harness::start().await;
        let frames = harness.run("kill -TERM $$", 10_000, 1024).await;
        assert_eq!(result(&frames).exit_code, 128 + libc::SIGTERM);
        harness.stop().await;
    }

    #[tokio::test]
    async fn fresh_workspace_wipes_files() {
        let harness = Harness::start().await;
        let frames = harness
            .run(
                "mkdir -p d/e && touch d/e/f .hidden top && ls -A",
                10_000,
                1024,
            )
            .await;
        assert_eq!(result(&frames).stdout, ".hidden\nd\ntop\n");

        let frames = harness.run("ls -A", 10_000, 1024).await;
        assert_eq!(
            result(&frames).stdout,
            ".hidden\nd\ntop\n",
            "kept without fresh_workspace"
        );

        let frames = harness
            .exchange(&run_line("ls -A; pwd", 10_000, 1024, true))
            .await;
        let output = result(&frames);
        assert_eq!(output.stdout, format!("{}\n", harness.workspace.display()));
        assert!(harness.workspace.is_dir());
        harness.stop().await;
    }

    #[tokio::test]
    async fn an_empty_connection_is_closed_quietly() {
        let harness = Harness::start().await;
        let stream = UnixStream::connect(&harness.socket).await.expect("connect");
        let (read, write) = stream.into_split();
        drop(write);
        let mut rest = String::new();
        BufReader::new(read)
            .read_to_string(&mut rest)
            .await
            .expect("read");
        assert_eq!(rest, "");
        harness.stop().await;
    }

    #[test]
    fn run_frames_round_trip() {
        // The final frame carries a ShellOutput as JSON, as workers expect.
        let frame = AgentFrame::Result {
            output: serde_json::to_value(ShellOutput {
                exit_code: 0,
                stdout: String::new(),
                stderr: String::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                stdout_escaped: false,
                stderr_escaped: false,
            })
            .expect("encode"),
        };
        let text = serde_json::to_string(&frame).expect("encode");
        let value: Value = serde_json::from_str(&text).expect("decode");
        assert_eq!(value["type"], "result");
        assert_eq!(value["output"]["exit_code"], 0);
    }
}
