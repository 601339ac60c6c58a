//! An agent run: the model loop of an AI employee.
//!
//! Each turn sends the conversation to the gateway's chat completions,
//! streams what the model writes as [`AgentEvent::MessageDelta`]s, runs the
//! tool calls it asks for, appends their results, and asks again, until the
//! model answers without a tool call ([`AgentStop::Done`]) or `max_turns`
//! calls were made ([`AgentStop::MaxTurns`]). The whole run is bounded by its
//! timeout and stops at once on cancel: a tool's process group is killed and
//! an in-flight gateway call is dropped with its connection.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use subjects::agent::{
    AgentEvent, AgentFrame, AgentInput, AgentOutput, AgentSpec, AgentStop, TokenUsage,
};
use subjects::gateway::{
    ActionRequest, ActionResponse, FetchRequest, FetchResponse, ACTIONS, CHAT_COMPLETIONS, FETCH,
};
use subjects::ShellOutput;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::chat::{self, Reply, ToolCall, MAX_REPLY_BYTES};
use crate::files;
use crate::gateway::{Call, CallError, Gateway};
use crate::output::bound_text;
use crate::run::{Cancel, RunError, Settings};
use crate::shell::{self, Failure};
use crate::tools::{self, FetchArgs, ReadArgs, ShellArgs, Tool, Toolbox, WriteArgs};

/// The most of a fetch or action answer read from the gateway.
const MAX_TOOL_ANSWER_BYTES: usize = 16 * 1024 * 1024;
const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

/// A validated agent run.
#[derive(Debug)]
pub struct Agent {
    model: String,
    system: String,
    prompt: String,
    toolbox: Toolbox,
    max_turns: u32,
    max_tool_output_bytes: usize,
    /// Bytes kept of each of a shell tool's stdout and stderr (the text given
    /// back is then cut to `max_tool_output_bytes`).
    max_output_bytes: usize,
    stream: bool,
    timeout: Duration,
}

impl Agent {
    /// Checks the spec and the input ([`AgentInput`]).
    pub fn new(
        spec: &AgentSpec,
        input: &Value,
        timeout_ms: u64,
        max_output_bytes: usize,
    ) -> Result<Agent, RunError> {
        let input = AgentInput::deserialize(input).map_err(|err| {
            RunError::invalid_input(format!(
                "the input of an agent run must be {{\"prompt\": \"<text>\"}}: {err}."
            ))
        })?;
        if input.prompt.trim().is_empty() {
            return Err(RunError::invalid_input("the prompt is empty."));
        }
        if spec.model.trim().is_empty() {
            return Err(RunError::invalid_input("the agent spec names no model."));
        }
        if spec.max_turns == 0 {
            return Err(RunError::invalid_input("max_turns must be at least 1."));
        }
        let toolbox = Toolbox::new(&spec.tools).map_err(RunError::invalid_input)?;
        Ok(Agent {
            model: spec.model.clone(),
            system: system_message(&spec.system_prompt, &spec.memory),
            prompt: input.prompt,
            toolbox,
            max_turns: spec.max_turns,
            max_tool_output_bytes: spec.max_tool_output_bytes,
            max_output_bytes,
            stream: spec.stream,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// Runs the loop, sending [`AgentFrame::Event`]s to `frames`.
    pub async fn run(
        self,
        settings: &Settings,
        frames: mpsc::Sender<AgentFrame>,
        cancel: &mut Cancel,
    ) -> Result<AgentOutput, RunError> {
        let mut session = Session {
            definitions: self.toolbox.definitions(),
            agent: &self,
            settings,
            gateway: Gateway::new(&settings.gateway),
            frames,
            bounds: Bounds {
                deadline: Instant::now() + self.timeout,
                limit: self.timeout,
            },
            cancel,
        };
        session.run().await
    }
}

/// The system prompt with the employee's memory appended as JSON.
fn system_message(prompt: &str, memory: &std::collections::BTreeMap<String, Value>) -> String {
    if memory.is_empty() {
        return prompt.to_owned();
    }
    let memory = serde_json::to_string_pretty(memory).unwrap_or_else(|_| "{}".to_owned());
    if prompt.trim().is_empty() {
        format!("Your memory:\n{memory}")
    } else {
        format!("{}\n\nYour memory:\n{memory}", prompt.trim_end())
    }
}

/// When the run must end.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    deadline: Instant,
    limit: Duration,
}

impl Bounds {
    fn timed_out(self) -> RunError {
        RunError::timeout(format!(
            "the agent run ran longer than its {}-second limit and was stopped",
            self.limit.as_secs_f64()
        ))
    }

    fn remaining(self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Awaits `work` unless the run is cancelled or out of time first (then
/// `work` is dropped, which aborts a gateway call).
async fn bounded<F: Future>(
    bounds: Bounds,
    cancel: &mut Cancel,
    work: F,
) -> Result<F::Output, RunError> {
    tokio::select! {
        biased;
        () = cancel.fired() => Err(RunError::internal(shell::CANCELLED)),
        () = tokio::time::sleep_until(bounds.deadline) => Err(bounds.timed_out()),
        output = work => Ok(output),
    }
}

struct Session<'a> {
    agent: &'a Agent,
    definitions: Vec<Value>,
    settings: &'a Settings,
    gateway: Gateway,
    frames: mpsc::Sender<AgentFrame>,
    bounds: Bounds,
    cancel: &'a mut Cancel,
}

impl Session<'_> {
    async fn run(&mut self) -> Result<AgentOutput, RunError> {
        let mut messages = Vec::new();
        if !self.agent.system.is_empty() {
            messages.push(json!({"role": "system", "content": self.agent.system}));
        }
        messages.push(json!({"role": "user", "content": self.agent.prompt}));
        let mut usage = TokenUsage::default();
        let mut turns = 0;
        loop {
            turns += 1;
            let reply = self.chat(&messages, turns).await?;
            usage.prompt_tokens += reply.usage.prompt_tokens;
            usage.completion_tokens += reply.usage.completion_tokens;
            self.emit(AgentEvent::Usage(reply.usage)).await?;
            messages.push(reply.message());
            if reply.tool_calls.is_empty() {
                return Ok(AgentOutput {
                    message: reply.text,
                    turns,
                    stop: AgentStop::Done,
                    usage,
                    files: self.files(),
                });
            }
            for call in &reply.tool_calls {
                let output = self.tool(call).await?;
                messages.push(chat::tool_message(&call.id, &output));
            }
            if turns >= self.agent.max_turns {
                return Ok(AgentOutput {
                    message: reply.text,
                    turns,
                    stop: AgentStop::MaxTurns,
                    usage,
                    files: self.files(),
                });
            }
        }
    }

    /// What the workspace holds at the end of the run.
    fn files(&self) -> Vec<subjects::agent::WorkspaceFile> {
        crate::workspace::list(&self.settings.workspace, subjects::agent::MAX_LISTED_FILES)
    }

    /// Sends an event; a client that stops reading holds the run up only
    /// until its timeout. (A gone client is noticed by the server, which
    /// cancels the run.)
    async fn emit(&mut self, event: AgentEvent) -> Result<(), RunError> {
        let frame = AgentFrame::Event { event };
        let _ = bounded(self.bounds, self.cancel, self.frames.send(frame)).await?;
        Ok(())
    }

    /// One model call; a refusal or a broken answer fails the run with
    /// [`subjects::agent::RunErrorKind::Gateway`].
    async fn chat(&mut self, messages: &[Value], turn: u32) -> Result<Reply, RunError> {
        let agent = self.agent;
        let body = chat::request(&agent.model, messages, &self.definitions, agent.stream);
        let accept = if agent.stream { EVENT_STREAM } else { JSON };
        let call = bounded(
            self.bounds,
            self.cancel,
            self.gateway.post_json(CHAT_COMPLETIONS, &body, accept),
        )
        .await?;
        let mut call = call.map_err(|err| RunError::gateway(err.reason()))?;
        if !call.content_type.starts_with(EVENT_STREAM) {
            let body = bounded(self.bounds, self.cancel, call.read(MAX_REPLY_BYTES))
                .await?
                .map_err(|err| RunError::gateway(err.reason()))?;
            let reply = chat::parse_completion(&body, turn).map_err(RunError::gateway)?;
            if !reply.text.is_empty() {
                self.emit(AgentEvent::MessageDelta {
                    text: reply.text.clone(),
                })
                .await?;
            }
            return Ok(reply);
        }
        let mut stream = chat::Stream::new(turn);
        while !stream.done() {
            let chunk = bounded(self.bounds, self.cancel, call.chunk())
                .await?
                .map_err(|err| RunError::gateway(err.reason()))?;
            let Some(chunk) = chunk else {
                break;
            };
            for text in stream.push(&chunk).map_err(RunError::gateway)? {
                self.emit(AgentEvent::MessageDelta { text }).await?;
            }
        }
        let (reply, rest) = stream.finish().map_err(RunError::gateway)?;
        for text in rest {
            self.emit(AgentEvent::MessageDelta { text }).await?;
        }
        Ok(reply)
    }

    /// Runs one tool call (announcing it and its result) and returns what the
    /// model is told. Only the run's end (timeout, cancel) is an error.
    async fn tool(&mut self, call: &ToolCall) -> Result<String, RunError> {
        // An action the role does not offer still goes to the gateway,
        // which denies it and writes the denial to the audit trail.
        let tool = self
            .agent
            .toolbox
            .find(&call.name)
            .or_else(|| Tool::platform_action(&call.name));
        let name = tool.map_or_else(|| call.name.clone(), Tool::name);
        self.emit(AgentEvent::ToolCall {
            call_id: call.id.clone(),
            name: name.clone(),
            arguments: call.arguments.clone(),
        })
        .await?;
        let (ok, output) = match tool {
            None => (
                false,
                format!(
                    "there is no tool named {:?}; the tools offered are: {}.",
                    call.name,
                    self.agent.toolbox.offered()
                ),
            ),
            Some(tool) => match self.run_tool(tool, &call.arguments).await? {
                Ok(output) => (true, output),
                Err(refusal) => (false, refusal),
            },
        };
        let output = bound_text(output, self.agent.max_tool_output_bytes);
        self.emit(AgentEvent::ToolResult {
            call_id: call.id.clone(),
            name,
            ok,
            output: output.clone(),
        })
        .await?;
        Ok(output)
    }

    /// `Ok(Ok(text))` when the tool worked, `Ok(Err(sentence))` when it
    /// failed or was refused.
    async fn run_tool(
        &mut self,
        tool: Tool,
        arguments: &str,
    ) -> Result<Result<String, String>, RunError> {
        let workspace = &self.settings.workspace;
        let max = self.agent.max_tool_output_bytes;
        Ok(match tool {
            Tool::Shell => match tools::arguments::<ShellArgs>(tool, arguments) {
                Ok(args) => self.shell(&args.command).await?,
                Err(refusal) => Err(refusal),
            },
            Tool::ReadFile => tools::arguments::<ReadArgs>(tool, arguments)
                .and_then(|args| files::read(workspace, &args.path, max)),
            Tool::WriteFile => tools::arguments::<WriteArgs>(tool, arguments)
                .and_then(|args| files::write(workspace, &args.path, &args.content)),
            Tool::HttpFetch => match tools::arguments::<FetchArgs>(tool, arguments) {
                Ok(args) => self.fetch(args).await?,
                Err(refusal) => Err(refusal),
            },
            Tool::Action(name) => match tools::json_arguments(tool, arguments) {
                Ok(args) => self.action(name, args).await?,
                Err(refusal) => Err(refusal),
            },
        })
    }

    /// The `shell` tool: the shell role's machinery, bounded by what is left
    /// of the run's time.
    async fn shell(&mut self, command: &str) -> Result<Result<String, String>, RunError> {
        if let Err(refusal) = shell::check_command(command) {
            return Ok(Err(refusal.to_owned()));
        }
        let spec = shell::Command {
            command,
            workspace: &self.settings.workspace,
            proxy_url: self.settings.proxy_url.as_deref(),
            timeout: self.bounds.remaining(),
            max_output_bytes: self.agent.max_output_bytes,
        };
        match shell::execute(spec, None, self.cancel).await {
            Ok(output) => {
                let text = shell_text(&output);
                Ok(if output.exit_code == 0 {
                    Ok(text)
                } else {
                    Err(text)
                })
            }
            Err(Failure::TimedOut) => Err(self.bounds.timed_out()),
            Err(Failure::Cancelled) => Err(RunError::internal(shell::CANCELLED)),
            Err(Failure::Internal(reason)) => Ok(Err(reason)),
        }
    }

    /// A gateway call for a tool: the 2xx body, or the gateway's sentence.
    async fn gateway_tool(
        &mut self,
        path: &str,
        body: &Value,
    ) -> Result<Result<Vec<u8>, String>, RunError> {
        let gateway = &self.gateway;
        let answer = async {
            let mut call: Call = gateway.post_json(path, body, JSON).await?;
            call.read(MAX_TOOL_ANSWER_BYTES).await
        };
        Ok(bounded(self.bounds, self.cancel, answer)
            .await?
            .map(|body| body.to_vec())
            .map_err(|err: CallError| err.reason().to_owned()))
    }

    async fn fetch(&mut self, args: FetchArgs) -> Result<Result<String, String>, RunError> {
        let request = FetchRequest {
            url: args.url,
            method: args.method,
            headers: args.headers.into_iter().collect(),
            body: args.body,
        };
        let body = match serde_json::to_value(&request) {
            Ok(body) => body,
            Err(err) => return Ok(Err(format!("agentd could not encode the fetch: {err}."))),
        };
        Ok(self.gateway_tool(FETCH, &body).await?.and_then(|answer| {
            serde_json::from_slice::<FetchResponse>(&answer)
                .map(|response| fetch_text(&response))
                .map_err(|err| {
                    format!("the gateway's answer to the fetch is not a FetchResponse: {err}.")
                })
        }))
    }

    async fn action(
        &mut self,
        name: &str,
        args: Value,
    ) -> Result<Result<String, String>, RunError> {
        let body = json!(ActionRequest { args });
        let path = format!("{ACTIONS}{name}");
        Ok(self.gateway_tool(&path, &body).await?.and_then(|answer| {
            serde_json::from_slice::<ActionResponse>(&answer)
                .map(|response| match response.result {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
                .map_err(|err| {
                    format!("the gateway's answer to {name} is not an ActionResponse: {err}.")
                })
        }))
    }
}

/// What the model is told of a shell command.
fn shell_text(output: &ShellOutput) -> String {
    let mut text = format!("exit code: {}", output.exit_code);
    for (label, stream) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        if !stream.is_empty() {
            text.push_str(&format!("\n{label}:\n{stream}"));
        }
    }
    text
}

/// What the model is told of a fetch.
fn fetch_text(response: &FetchResponse) -> String {
    let mut text = format!("HTTP {}\n", response.status);
    for (name, value) in &response.headers {
        text.push_str(&format!("{name}: {value}\n"));
    }
    text.push('\n');
    text.push_str(&response.body);
    if response.truncated {
        text.push_str("\n[… the gateway cut the body]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(tools: &[&str]) -> AgentSpec {
        AgentSpec {
            model: "scripted".to_owned(),
            system_prompt: "Be brief.".to_owned(),
            tools: tools.iter().map(|tool| (*tool).to_owned()).collect(),
            max_turns: 4,
            max_tool_output_bytes: 1000,
            memory: BTreeMap::new(),
            stream: false,
        }
    }

    fn refusal(spec: &AgentSpec, input: Value) -> String {
        match Agent::new(spec, &input, 1000, 1000) {
            Err(err) => {
                assert_eq!(err.kind, subjects::agent::RunErrorKind::InvalidInput);
                err.reason
            }
            Ok(agent) => panic!("accepted {agent:?}"),
        }
    }

    #[test]
    fn checks_the_spec_and_the_input() {
        let prompt = json!({"prompt": "hi"});
        assert!(Agent::new(&spec(&["shell"]), &prompt, 1000, 10).is_ok());
        assert!(refusal(&spec(&["shell"]), json!({"command": "ls"}))
            .starts_with("the input of an agent run"));
        assert_eq!(
            refusal(&spec(&[]), json!({"prompt": " "})),
            "the prompt is empty."
        );
        let mut no_turns = spec(&[]);
        no_turns.max_turns = 0;
        assert_eq!(
            refusal(&no_turns, prompt.clone()),
            "max_turns must be at least 1."
        );
        let mut no_model = spec(&[]);
        no_model.model = String::new();
        assert_eq!(
            refusal(&no_model, prompt.clone()),
            "the agent spec names no model."
        );
        assert!(refusal(&spec(&["teleport"]), prompt).contains("\"teleport\""));
    }

    #[test]
    fn memory_is_appended_to_the_system_prompt() {
        assert_eq!(system_message("Be brief.", &BTreeMap::new()), "Be brief.");
        let memory = BTreeMap::from([("city".to_owned(), json!("Lyon"))]);
        assert_eq!(
            system_message("Be brief.\n", &memory),
            "Be brief.\n\nYour memory:\n{\n  \"city\": \"Lyon\"\n}"
        );
        assert_eq!(
            system_message("", &memory),
            "Your memory:\n{\n  \"city\": \"Lyon\"\n}"
        );
    }

    #[test]
    fn tool_texts_show_what_happened() {
        let output = ShellOutput {
            exit_code: 1,
            stdout: "out\n".to_owned(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_escaped: false,
            stderr_escaped: false,
        };
        assert_eq!(shell_text(&output), "exit code: 1\nstdout:\nout\n");
        let response = FetchResponse {
            status: 404,
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            body: "gone".to_owned(),
            truncated: true,
        };
        assert_eq!(
            fetch_text(&response),
            "HTTP 404\ncontent-type: text/plain\n\ngone\n[… the gateway cut the body]"
        );
    }
}
