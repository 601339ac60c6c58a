//! Agent runs end to end on the host: agentd's server on a temporary
//! agent.sock, a test gateway on a temporary gateway.sock forwarding model
//! calls to the scripted provider, and agentd's egress proxy on a free port.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use scripted::{Script, Scripts, Step, ToolCall};
use serde_json::{json, Value};
use subjects::agent::{
    AgentEvent, AgentFrame, AgentOutput, AgentSpec, AgentStop, RunErrorKind, TokenUsage,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::run::Settings;
use crate::server::Server;
use crate::testutil::{alive, GatewayOptions, TempDir, TestGateway};

/// A generous bound for "a cancelled run stops within about a second".
const CANCEL_BOUND: Duration = Duration::from_secs(2);

struct Rig {
    dir: TempDir,
    workspace: PathBuf,
    agent_socket: PathBuf,
    proxy: SocketAddr,
    gateway: Option<TestGateway>,
    _stop: oneshot::Sender<()>,
}

impl Rig {
    /// agentd with the test gateway serving `scripts`.
    async fn start(scripts: Scripts, options: GatewayOptions) -> Rig {
        let dir = TempDir::new("agent").expect("temp dir");
        let gateway = TestGateway::start(&dir.path().join("gateway.sock"), scripts, options).await;
        Rig::with_gateway(dir, Some(gateway)).await
    }

    /// agentd whose gateway socket is whatever the test puts at
    /// `dir/gateway.sock` (nothing, or its own listener).
    async fn with_gateway(dir: TempDir, gateway: Option<TestGateway>) -> Rig {
        let workspace = dir.path().join("workspace");
        fs::create_dir(&workspace).expect("workspace");
        let gateway_socket = dir.path().join("gateway.sock");
        let listener = crate::proxy::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("proxy");
        let proxy = listener.local_addr().expect("addr");
        tokio::spawn(crate::proxy::serve(
            listener,
            gateway_socket.as_path().into(),
        ));
        let agent_socket = dir.path().join("agent.sock");
        let server = Server::bind(
            &agent_socket,
            Settings {
                workspace: workspace.clone(),
                gateway: gateway_socket,
                proxy_url: Some(format!("http://{proxy}")),
                sweep: false,
            },
        )
        .expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Rig {
            dir,
            workspace,
            agent_socket,
            proxy,
            gateway,
            _stop: stop,
        }
    }

    fn gateway(&self) -> &TestGateway {
        self.gateway.as_ref().expect("a test gateway")
    }

    async fn send(&self, spec: &AgentSpec, prompt: &str, timeout_ms: u64) -> Conn {
        let line = json!({
            "type": "run",
            "run_id": "agent-test",
            "role": "researcher",
            "input": {"prompt": prompt},
            "timeout_ms": timeout_ms,
            "max_output_bytes": 65536,
            "fresh_workspace": false,
            "agent": spec,
        });
        let stream = UnixStream::connect(&self.agent_socket)
            .await
            .expect("connect");
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

    /// Runs to the end and returns every frame.
    async fn run(&self, spec: &AgentSpec, prompt: &str) -> Vec<AgentFrame> {
        let mut conn = self.send(spec, prompt, 30_000).await;
        let mut frames = Vec::new();
        while let Some(frame) = conn.next().await {
            frames.push(frame);
        }
        frames
    }
}

struct Conn {
    lines: Lines<BufReader<OwnedReadHalf>>,
    _write: OwnedWriteHalf,
}

impl Conn {
    async fn next(&mut self) -> Option<AgentFrame> {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("a frame within 30 s")
            .expect("read")?;
        Some(serde_json::from_str(&line).expect("a valid frame"))
    }
}

fn spec(model: &str, tools: &[&str]) -> AgentSpec {
    AgentSpec {
        model: model.to_owned(),
        system_prompt: "You are a careful employee.".to_owned(),
        tools: tools.iter().map(|tool| (*tool).to_owned()).collect(),
        max_turns: 8,
        max_tool_output_bytes: 4096,
        memory: BTreeMap::new(),
        stream: false,
    }
}

fn scripts(name: &str, steps: Vec<Step>) -> Scripts {
    let mut scripts = Scripts::new();
    scripts.insert(name, Script::new(steps));
    scripts
}

fn events(frames: &[AgentFrame]) -> Vec<AgentEvent> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            AgentFrame::Event { event } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

/// `(name, ok, output)` of every tool result.
fn tool_results(frames: &[AgentFrame]) -> Vec<(String, bool, String)> {
    events(frames)
        .into_iter()
        .filter_map(|event| match event {
            AgentEvent::ToolResult {
                name, ok, output, ..
            } => Some((name, ok, output)),
            _ => None,
        })
        .collect()
}

fn deltas(frames: &[AgentFrame]) -> Vec<String> {
    events(frames)
        .into_iter()
        .filter_map(|event| match event {
            AgentEvent::MessageDelta { text } => Some(text),
            _ => None,
        })
        .collect()
}

fn usages(frames: &[AgentFrame]) -> Vec<TokenUsage> {
    events(frames)
        .into_iter()
        .filter_map(|event| match event {
            AgentEvent::Usage(usage) => Some(usage),
            _ => None,
        })
        .collect()
}

fn output(frames: &[AgentFrame]) -> AgentOutput {
    match frames.last() {
        Some(AgentFrame::Result { output }) => {
            serde_json::from_value(output.clone()).expect("an AgentOutput")
        }
        other => panic!("expected a result, got {other:?} in {frames:#?}"),
    }
}

fn error(frames: &[AgentFrame]) -> (RunErrorKind, String) {
    match frames.last() {
        Some(AgentFrame::Error { kind, reason }) => (*kind, reason.clone()),
        other => panic!("expected an error, got {other:?} in {frames:#?}"),
    }
}

fn total(usages: &[TokenUsage]) -> TokenUsage {
    usages
        .iter()
        .fold(TokenUsage::default(), |sum, usage| TokenUsage {
            prompt_tokens: sum.prompt_tokens + usage.prompt_tokens,
            completion_tokens: sum.completion_tokens + usage.completion_tokens,
        })
}

#[tokio::test]
async fn the_demo_runs_a_shell_command_and_saves_to_memory() {
    let rig = Rig::start(Scripts::builtin(), GatewayOptions::default()).await;
    let mut spec = spec("scripted", &["shell", "action.memory.set"]);
    spec.memory = BTreeMap::from([("city".to_owned(), json!("Lyon"))]);
    let frames = rig.run(&spec, "Look around.").await;

    let uname = std::process::Command::new("uname")
        .arg("-a")
        .output()
        .expect("uname");
    let uname = String::from_utf8(uname.stdout).expect("utf8");
    let events = events(&frames);
    let AgentEvent::ToolCall {
        call_id,
        name,
        arguments,
    } = &events[1]
    else {
        panic!("the first turn's usage, then a tool call: {events:#?}");
    };
    assert_eq!((call_id.as_str(), name.as_str()), ("call_0_0", "shell"));
    assert_eq!(
        serde_json::from_str::<Value>(arguments).expect("json"),
        json!({"command": "uname -a; ls /workspace"})
    );
    let results = tool_results(&frames);
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].0, "shell");
    assert!(results[0].2.starts_with("exit code: "), "{}", results[0].2);
    assert!(results[0].2.contains(uname.trim()), "{}", results[0].2);
    assert_eq!(
        results[1],
        (
            "action.memory.set".to_owned(),
            true,
            "saved demo".to_owned()
        )
    );
    assert_eq!(
        rig.gateway().seen(|seen| seen.memory.clone()),
        BTreeMap::from([(
            "demo".to_owned(),
            json!("I looked at the system and the workspace.")
        )])
    );

    let output = output(&frames);
    assert_eq!(output.stop, AgentStop::Done);
    assert_eq!(output.turns, 3);
    assert_eq!(
        output.message,
        format!(
            "Here is what the shell said:\n{}\nI noted that in my memory (saved demo).",
            results[0].2
        )
    );
    assert_eq!(
        deltas(&frames),
        std::slice::from_ref(&output.message),
        "one whole message when not streaming"
    );
    let usages = usages(&frames);
    assert_eq!(usages.len(), 3);
    assert!(usages
        .iter()
        .all(|usage| usage.prompt_tokens > 0 && usage.completion_tokens > 0));
    assert_eq!(output.usage, total(&usages));

    let chats = rig.gateway().seen(|seen| seen.chats.clone());
    assert_eq!(chats.len(), 3);
    let first = &chats[0];
    assert_eq!(first["model"], "scripted");
    assert_eq!(first["stream"], false);
    assert_eq!(
        first["messages"][0]["content"],
        "You are a careful employee.\n\nYour memory:\n{\n  \"city\": \"Lyon\"\n}"
    );
    assert_eq!(
        first["messages"][1],
        json!({"role": "user", "content": "Look around."})
    );
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|tool| tool["function"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(offered, ["shell", "action_memory_set"]);
    assert_eq!(
        first["tools"][0]["function"]["parameters"]["required"],
        json!(["command"])
    );
    let last = chats[2]["messages"].as_array().expect("messages");
    assert_eq!(last.len(), 6, "system, user, then assistant + tool twice");
    assert_eq!(
        last[3],
        json!({"role": "tool", "tool_call_id": "call_0_0", "content": results[0].2})
    );
    assert_eq!(
        last[4]["tool_calls"][0]["function"]["name"],
        "action_memory_set"
    );
}

#[tokio::test]
async fn the_tools_script_streams_and_really_writes_the_file() {
    let rig = Rig::start(Scripts::builtin(), GatewayOptions::default()).await;
    let mut spec = spec("scripted:tools", &["write_file", "read_file", "shell"]);
    spec.stream = true;
    let frames = rig.run(&spec, "Write a note.").await;

    let written = fs::read_to_string(rig.workspace.join("notes/hello.txt")).expect("written");
    assert_eq!(written, "hello from the scripted model\n");
    let results = tool_results(&frames);
    assert_eq!(
        results,
        vec![
            (
                "write_file".to_owned(),
                true,
                "wrote 30 bytes to notes/hello.txt".to_owned()
            ),
            ("read_file".to_owned(), true, written.clone()),
            (
                "shell".to_owned(),
                true,
                "exit code: 0\nstdout:\n30\n".to_owned()
            ),
        ]
    );
    let calls: Vec<(String, Value)> = events(&frames)
        .into_iter()
        .filter_map(|event| match event {
            AgentEvent::ToolCall {
                name, arguments, ..
            } => Some((
                name,
                serde_json::from_str(&arguments).expect("assembled JSON"),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls[0],
        (
            "write_file".to_owned(),
            json!({"path": "notes/hello.txt", "content": "hello from the scripted model\n"})
        )
    );

    let output = output(&frames);
    assert_eq!(output.stop, AgentStop::Done);
    assert_eq!(output.turns, 4);
    assert_eq!(
        output.message,
        "The file says: hello from the scripted model\n\nIts size, says the shell: exit code: 0\nstdout:\n30\n"
    );
    let deltas = deltas(&frames);
    assert!(
        deltas.len() > 5,
        "the message arrives in pieces: {deltas:?}"
    );
    assert_eq!(deltas.concat(), output.message);
    let usages = usages(&frames);
    assert_eq!(usages.len(), 4);
    assert!(
        usages.iter().all(|usage| usage.prompt_tokens > 0),
        "{usages:?}"
    );
    assert_eq!(output.usage, total(&usages));
    let chats = rig.gateway().seen(|seen| seen.chats.clone());
    assert_eq!(chats[0]["stream"], true);
    assert_eq!(chats[0]["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn max_turns_ends_the_run() {
    let rig = Rig::start(Scripts::builtin(), GatewayOptions::default()).await;
    let mut spec = spec("scripted:demo", &["shell", "action.memory.set"]);
    spec.max_turns = 2;
    let frames = rig.run(&spec, "Look around.").await;
    let output = output(&frames);
    assert_eq!(output.stop, AgentStop::MaxTurns);
    assert_eq!(output.turns, 2);
    assert_eq!(rig.gateway().seen(|seen| seen.chats.len()), 2);
    // The last turn's tool calls still ran.
    assert_eq!(tool_results(&frames).len(), 2);
    assert!(rig.gateway().seen(|seen| seen.memory.contains_key("demo")));
}

#[tokio::test]
async fn unknown_tools_in_the_spec_are_invalid_input() {
    let rig = Rig::start(Scripts::builtin(), GatewayOptions::default()).await;
    let frames = rig
        .run(
            &spec("scripted", &["shell", "teleport", "action.fly"]),
            "Go.",
        )
        .await;
    let (kind, reason) = error(&frames);
    assert_eq!(kind, RunErrorKind::InvalidInput);
    assert!(
        reason.starts_with(
            "the agent spec offers tools agentd does not have: \"teleport\", \"action.fly\";"
        ),
        "{reason}"
    );
    assert_eq!(frames.len(), 1);
    assert_eq!(rig.gateway().seen(|seen| seen.chats.len()), 0);
}

#[tokio::test]
async fn a_tool_the_model_was_not_offered_is_refused_to_the_model() {
    let rig = Rig::start(Scripts::builtin(), GatewayOptions::default()).await;
    let frames = rig
        .run(&spec("scripted:demo", &["action.memory.set"]), "Go.")
        .await;
    let results = tool_results(&frames);
    assert_eq!(
        results[0],
        (
            "shell".to_owned(),
            false,
            "there is no tool named \"shell\"; the tools offered are: action_memory_set."
                .to_owned()
        )
    );
    assert!(results[1].1, "the next call still runs");
    let output = output(&frames);
    assert_eq!((output.stop, output.turns), (AgentStop::Done, 3));
    assert!(
        output.message.contains("there is no tool named"),
        "{}",
        output.message
    );
}

#[tokio::test]
async fn an_action_the_role_does_not_offer_is_still_asked_of_the_gateway_which_denies_it() {
    let steps = vec![
        Step::tool_calls(vec![ToolCall::new(
            "action_review_submit",
            json!({"task_id": "00000000-0000-0000-0000-000000000000", "score": 9, "verdict": "approved", "comments": "x"}),
        )]),
        Step::text("after: {last_tool}"),
    ];
    let mut scripts = Scripts::new();
    scripts.insert("deny", Script::new(steps));
    let rig = Rig::start(scripts, GatewayOptions::default()).await;
    let frames = rig
        .run(&spec("scripted:deny", &["action.memory.set"]), "Go.")
        .await;
    let results = tool_results(&frames);
    assert_eq!(results[0].0, "action.review.submit");
    assert!(!results[0].1, "denied: {:?}", results[0]);
    assert!(
        rig.gateway()
            .seen(|seen| seen.denied.iter().any(|a| a == "review.submit")),
        "the gateway saw (and refused) the call"
    );
}

#[tokio::test]
async fn paths_outside_the_workspace_are_refused() {
    let steps = vec![
        Step::tool_calls(vec![
            ToolCall::new(
                "write_file",
                json!({"path": "../escape.txt", "content": "x"}),
            ),
            ToolCall::new("read_file", json!({"path": "/etc/hostname"})),
            ToolCall::new("read_file", json!({"path": "etc/passwd"})),
            ToolCall::new(
                "write_file",
                json!({"path": "etc/new-file", "content": "x"}),
            ),
            ToolCall::new(
                "write_file",
                json!({"path": "inside.txt", "content": "fine"}),
            ),
            ToolCall::new("write_file", json!({"path": "notes.txt"})),
        ]),
        Step::text("done: {last_tool}"),
    ];
    let rig = Rig::start(scripts("paths", steps), GatewayOptions::default()).await;
    std::os::unix::fs::symlink("/etc", rig.workspace.join("etc")).expect("symlink");
    let frames = rig
        .run(&spec("scripted:paths", &["read_file", "write_file"]), "Go.")
        .await;
    let results = tool_results(&frames);
    let refused: Vec<(bool, &str)> = results
        .iter()
        .map(|(_, ok, output)| (*ok, output.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            (false, "the path \"../escape.txt\" leaves the workspace."),
            (
                false,
                format!(
                "the path \"/etc/hostname\" is outside the workspace; use a path relative to {}.",
                rig.workspace.display()
            )
                .as_str()
            ),
            (
                false,
                "the path \"etc/passwd\" leads outside the workspace through a symlink."
            ),
            (
                false,
                "the path \"etc/new-file\" leads outside the workspace through a symlink."
            ),
            (true, "wrote 4 bytes to inside.txt"),
            (
                false,
                "the arguments of write_file do not fit its parameters: missing field `content`."
            ),
        ]
    );
    assert!(!rig.dir.path().join("escape.txt").exists());
    assert!(!std::path::Path::new("/etc/new-file").exists());
    assert_eq!(
        fs::read_to_string(rig.workspace.join("inside.txt")).expect("read"),
        "fine"
    );
    assert_eq!(output(&frames).stop, AgentStop::Done);
}

#[tokio::test]
async fn gateway_refusals_reach_the_model_as_tool_results() {
    let steps = vec![
        Step::tool_calls(vec![
            ToolCall::new("action_note", json!({"text": "hello"})),
            ToolCall::new(
                "http_fetch",
                json!({"url": "https://docs.example/page", "headers": {"accept": "text/plain"}}),
            ),
            ToolCall::new("http_fetch", json!({"url": "https://forbidden.example/"})),
            ToolCall::new("action.memory.get", json!({"key": "nothing"})),
        ]),
        Step::text("{tool:action_note}"),
    ];
    let rig = Rig::start(scripts("gw", steps), GatewayOptions::default()).await;
    let frames = rig
        .run(
            &spec(
                "scripted:gw",
                &["action.note", "http_fetch", "action.memory.get"],
            ),
            "Go.",
        )
        .await;
    let results = tool_results(&frames);
    assert_eq!(
        results,
        vec![
            (
                "action.note".to_owned(),
                false,
                "the role does not allow the action note.".to_owned()
            ),
            (
                "http_fetch".to_owned(),
                true,
                "HTTP 200\ncontent-type: text/plain\n\nhello from https://docs.example/page"
                    .to_owned()
            ),
            (
                "http_fetch".to_owned(),
                false,
                "the host forbidden.example is not in the role's egress allowlist.".to_owned()
            ),
            ("action.memory.get".to_owned(), true, "null".to_owned()),
        ]
    );
    let fetches = rig.gateway().seen(|seen| seen.fetches.clone());
    assert_eq!(fetches[0].url, "https://docs.example/page");
    assert_eq!(
        fetches[0].headers,
        vec![("accept".to_owned(), "text/plain".to_owned())]
    );
    assert_eq!(fetches[0].method, None);
    assert_eq!(
        output(&frames).message,
        "the role does not allow the action note."
    );
}

#[tokio::test]
async fn a_provider_429_fails_the_run_with_the_gateways_sentence() {
    for stream in [false, true] {
        let steps = vec![Step::error(
            429,
            "You exceeded your current quota, please check your plan.",
        )];
        let rig = Rig::start(scripts("quota", steps), GatewayOptions::default()).await;
        let mut spec = spec("scripted:quota", &[]);
        spec.stream = stream;
        let frames = rig.run(&spec, "Go.").await;
        assert_eq!(
            error(&frames),
            (
                RunErrorKind::Gateway,
                "You exceeded your current quota, please check your plan.".to_owned()
            ),
            "stream {stream}"
        );
    }
}

#[tokio::test]
async fn the_gateways_own_quota_stops_the_run_mid_way() {
    let options = GatewayOptions {
        quota_calls: Some(1),
        ..GatewayOptions::default()
    };
    let rig = Rig::start(Scripts::builtin(), options).await;
    let frames = rig
        .run(&spec("scripted", &["shell", "action.memory.set"]), "Go.")
        .await;
    assert_eq!(tool_results(&frames).len(), 1, "the first turn ran");
    assert_eq!(
        error(&frames),
        (
            RunErrorKind::Gateway,
            crate::testutil::QUOTA_SENTENCE.to_owned()
        )
    );
}

#[tokio::test]
async fn a_missing_gateway_is_a_gateway_error() {
    let rig = Rig::with_gateway(TempDir::new("agent").expect("temp"), None).await;
    let frames = rig.run(&spec("scripted", &[]), "Go.").await;
    let (kind, reason) = error(&frames);
    assert_eq!(kind, RunErrorKind::Gateway);
    assert!(
        reason.starts_with(&format!(
            "agentd could not reach the gateway at {}",
            rig.dir.path().join("gateway.sock").display()
        )),
        "{reason}"
    );
}

#[tokio::test]
async fn closing_agent_sock_aborts_the_model_call() {
    let dir = TempDir::new("agent").expect("temp");
    // A gateway that takes the call and never answers; it reports when
    // agentd's side of the connection closes.
    let listener = UnixListener::bind(dir.path().join("gateway.sock")).expect("bind");
    let (got_call, call_arrived) = oneshot::channel::<()>();
    let (closed_tx, closed) = oneshot::channel::<Instant>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the request arrives");
            head.extend_from_slice(&buf[..n]);
        }
        let _ = got_call.send(());
        // Drain the body and wait for the end of the connection.
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        let _ = closed_tx.send(Instant::now());
    });
    let rig = Rig::with_gateway(dir, None).await;
    let conn = rig.send(&spec("scripted", &[]), "Go.", 60_000).await;
    tokio::time::timeout(Duration::from_secs(10), call_arrived)
        .await
        .expect("the model call within 10 s")
        .expect("the call");
    let dropped = Instant::now();
    drop(conn);
    let closed_at = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("agentd closes the gateway call")
        .expect("closed");
    let took = closed_at.duration_since(dropped);
    assert!(took < CANCEL_BOUND, "the call was aborted after {took:?}");
}

#[tokio::test]
async fn closing_agent_sock_kills_the_tool_process_group() {
    let steps = vec![
        Step::tool_calls(vec![ToolCall::new(
            "shell",
            json!({"command": "sleep 30 & echo $! > bg.pid; echo $$ > sh.pid; wait"}),
        )]),
        Step::text("finished"),
    ];
    let rig = Rig::start(scripts("hang", steps), GatewayOptions::default()).await;
    let conn = rig
        .send(&spec("scripted:hang", &["shell"]), "Go.", 60_000)
        .await;
    let read_pid = |name: &str| -> Option<u32> {
        fs::read_to_string(rig.workspace.join(name))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    };
    let mut pids = None;
    for _ in 0..1000 {
        if let (Some(bg), Some(sh)) = (read_pid("bg.pid"), read_pid("sh.pid")) {
            pids = Some([bg, sh]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pids = pids.expect("the shell tool started within 10 s");
    assert!(pids.iter().all(|&pid| alive(pid)));
    let dropped = Instant::now();
    drop(conn);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            dropped.elapsed() < CANCEL_BOUND,
            "{pids:?} still run after {:?}",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rig.gateway().seen(|seen| seen.chats.len()),
        1,
        "no model call after cancel"
    );
}

#[tokio::test]
async fn the_run_timeout_stops_a_slow_model_and_a_slow_tool() {
    let mut all = Scripts::builtin();
    all.insert(
        "sleepy",
        Script::new(vec![Step::tool_calls(vec![ToolCall::new(
            "shell",
            json!({"command": "echo $$ > sh.pid; sleep 30"}),
        )])]),
    );
    let rig = Rig::start(all, GatewayOptions::default()).await;
    for (model, stream) in [
        ("scripted:slow", false),
        ("scripted:slow", true),
        ("scripted:sleepy", false),
    ] {
        let mut spec = spec(model, &["shell"]);
        spec.stream = stream;
        let started = Instant::now();
        let mut conn = rig.send(&spec, "Go.", 500).await;
        let mut frames = Vec::new();
        while let Some(frame) = conn.next().await {
            frames.push(frame);
        }
        assert_eq!(
            error(&frames),
            (
                RunErrorKind::Timeout,
                "the agent run ran longer than its 0.5-second limit and was stopped".to_owned()
            ),
            "{model}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{model}");
    }
    let pid: u32 = fs::read_to_string(rig.workspace.join("sh.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(!alive(pid), "the timed-out tool's shell is gone");
}

#[tokio::test]
async fn tool_output_is_bounded_and_the_cut_marked() {
    let steps = vec![
        Step::tool_calls(vec![ToolCall::new(
            "shell",
            json!({"command": "yes abc | head -c 5000"}),
        )]),
        Step::text("ok"),
    ];
    let rig = Rig::start(scripts("big", steps), GatewayOptions::default()).await;
    let mut spec = spec("scripted:big", &["shell"]);
    spec.max_tool_output_bytes = 100;
    let frames = rig.run(&spec, "Go.").await;
    let results = tool_results(&frames);
    let text = &results[0].2;
    let full = format!("exit code: 0\nstdout:\n{}", "abc\n".repeat(1250));
    assert_eq!(
        text,
        &format!("{}\n[… {} bytes truncated]", &full[..100], full.len() - 100)
    );
    let chats = rig.gateway().seen(|seen| seen.chats.clone());
    assert_eq!(
        chats[1]["messages"][3]["content"],
        Value::from(text.as_str()),
        "the model sees the same"
    );
}

#[tokio::test]
async fn processes_get_the_egress_proxy_and_it_reaches_the_gateway() {
    let steps = vec![
        Step::tool_calls(vec![ToolCall::new(
            "shell",
            json!({"command": "echo \"$HTTP_PROXY $HTTPS_PROXY $http_proxy $https_proxy\""}),
        )]),
        Step::text("{last_tool}"),
    ];
    let rig = Rig::start(scripts("env", steps), GatewayOptions::default()).await;
    let frames = rig.run(&spec("scripted:env", &["shell"]), "Go.").await;
    let url = format!("http://{}", rig.proxy);
    assert_eq!(
        output(&frames).message,
        format!("exit code: 0\nstdout:\n{url} {url} {url} {url}\n")
    );

    let mut client = TcpStream::connect(rig.proxy).await.expect("connect");
    client
        .write_all(b"GET http://example.com/hello HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("proxied GET http://example.com/hello"),
        "{answer}"
    );
    assert_eq!(
        rig.gateway().seen(|seen| seen.proxied.clone()),
        ["GET http://example.com/hello"]
    );
}
