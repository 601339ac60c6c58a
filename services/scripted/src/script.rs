//! Scripts: what the provider answers, step by step.
//!
//! A [`Script`] is a list of [`Step`]s; the reply to a request is the step
//! whose index is the number of assistant messages already in the request,
//! so the provider keeps no state between calls. [`Scripts`] names a set of
//! scripts and, optionally, the one used when a request names none.
//!
//! The JSON form (see [`Scripts::from_json`]):
//!
//! ```json
//! {
//!   "default": "greet",
//!   "scripts": {
//!     "greet": [
//!       {"tool_calls": [{"name": "shell", "arguments": {"command": "ls"}}]},
//!       {"text": "The workspace holds: {last_tool}", "delay_ms": 200},
//!       {"status": 429, "error": "You exceeded your current quota."}
//!     ]
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The name of [`Scripts::builtin`]'s default script.
pub const DEFAULT_SCRIPT: &str = "demo";

/// One reply of a script.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StepDef", into = "StepDef")]
pub struct Step {
    /// Milliseconds to wait before replying (for a streamed reply: after the
    /// first chunk, before the content).
    pub delay_ms: u64,
    pub reply: Reply,
}

/// What a step answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A `200` assistant message: text, tool calls, or both (at least one).
    ///
    /// The text may hold placeholders, replaced from the request:
    /// `{prompt}` (the last user message without its `[script:<name>]`
    /// marker), `{last_tool}` (the content of the last `tool` message) and
    /// `{tool:<name>}` (the content of the last `tool` message answering a
    /// call of the function `<name>`); a placeholder with nothing to refer to
    /// becomes empty.
    Message {
        text: Option<String>,
        tool_calls: Vec<ToolCall>,
    },
    /// An HTTP error (4xx/5xx) with an OpenAI-style error body carrying
    /// `message`.
    Error { status: u16, message: String },
}

/// A function call the scripted model asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The function name, as the client offered it.
    pub name: String,
    /// A JSON object (or any JSON value) is sent serialized; a JSON string is
    /// sent verbatim as the arguments text (so a script can send arguments
    /// that are not valid JSON).
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl ToolCall {
    pub fn new(name: impl Into<String>, arguments: Value) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments,
        }
    }

    /// The `arguments` text put on the wire.
    pub fn arguments_text(&self) -> String {
        match &self.arguments {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }
}

impl Step {
    /// A final text answer.
    pub fn text(text: impl Into<String>) -> Step {
        Step {
            delay_ms: 0,
            reply: Reply::Message {
                text: Some(text.into()),
                tool_calls: Vec::new(),
            },
        }
    }

    /// A turn asking for `calls`.
    pub fn tool_calls(calls: Vec<ToolCall>) -> Step {
        Step {
            delay_ms: 0,
            reply: Reply::Message {
                text: None,
                tool_calls: calls,
            },
        }
    }

    /// An HTTP error answer.
    pub fn error(status: u16, message: impl Into<String>) -> Step {
        Step {
            delay_ms: 0,
            reply: Reply::Error {
                status,
                message: message.into(),
            },
        }
    }

    /// The same step, answered after `delay_ms` milliseconds.
    pub fn delayed(mut self, delay_ms: u64) -> Step {
        self.delay_ms = delay_ms;
        self
    }
}

/// The JSON shape of a step.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    delay_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TryFrom<StepDef> for Step {
    type Error = String;

    fn try_from(def: StepDef) -> Result<Step, String> {
        let failing = def.status.is_some() || def.error.is_some();
        let reply = if failing {
            if def.text.is_some() || def.tool_calls.is_some() {
                return Err(
                    "a step answers either an error (status/error) or a message (text/tool_calls), not both"
                        .to_owned(),
                );
            }
            let status = def.status.unwrap_or(500);
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "an error step's status must be 400-599, not {status}"
                ));
            }
            Reply::Error {
                status,
                message: def
                    .error
                    .unwrap_or_else(|| format!("the scripted provider failed with {status}.")),
            }
        } else {
            let tool_calls = def.tool_calls.unwrap_or_default();
            if def.text.is_none() && tool_calls.is_empty() {
                return Err(
                    "a step needs \"text\", \"tool_calls\" (non-empty) or \"status\"/\"error\""
                        .to_owned(),
                );
            }
            if let Some(call) = tool_calls.iter().find(|call| call.name.is_empty()) {
                return Err(format!("a tool call has an empty name: {call:?}"));
            }
            Reply::Message {
                text: def.text,
                tool_calls,
            }
        };
        Ok(Step {
            delay_ms: def.delay_ms,
            reply,
        })
    }
}

impl From<Step> for StepDef {
    fn from(step: Step) -> StepDef {
        let mut def = StepDef {
            text: None,
            tool_calls: None,
            status: None,
            error: None,
            delay_ms: step.delay_ms,
        };
        match step.reply {
            Reply::Message { text, tool_calls } => {
                def.text = text;
                def.tool_calls = (!tool_calls.is_empty()).then_some(tool_calls);
            }
            Reply::Error { status, message } => {
                def.status = Some(status);
                def.error = Some(message);
            }
        }
        def
    }
}

/// A list of steps — in JSON, just the array of steps — or a choice of
/// another script by what the request's first user message contains: in
/// JSON `{"cases": [{"when": "<text>", "script": "<name>"}], "otherwise":
/// "<name>"}` (the first case whose text the message contains wins).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "ScriptDef")]
pub struct Script {
    pub steps: Vec<Step>,
    pub cases: Vec<Case>,
    pub otherwise: Option<String>,
}

/// One case of a choosing script.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub when: String,
    pub script: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ScriptDef {
    Steps(Vec<Step>),
    Cases { cases: Vec<Case>, otherwise: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesDef {
    cases: Vec<Case>,
    otherwise: String,
}

impl TryFrom<Value> for Script {
    type Error = String;

    /// An array is a script of steps, an object a choosing script; each
    /// refused with what is wrong in it.
    fn try_from(v: Value) -> Result<Script, String> {
        if v.is_array() {
            let steps: Vec<Step> = serde_json::from_value(v).map_err(|e| e.to_string())?;
            Ok(Script::new(steps))
        } else {
            let c: CasesDef = serde_json::from_value(v).map_err(|e| {
                format!("a script is an array of steps or {{\"cases\", \"otherwise\"}}: {e}")
            })?;
            Ok(Script::choose(c.cases, c.otherwise))
        }
    }
}

impl From<Script> for ScriptDef {
    fn from(s: Script) -> ScriptDef {
        match s.otherwise {
            Some(otherwise) => ScriptDef::Cases {
                cases: s.cases,
                otherwise,
            },
            None => ScriptDef::Steps(s.steps),
        }
    }
}

impl Script {
    pub fn new(steps: Vec<Step>) -> Script {
        Script {
            steps,
            cases: Vec::new(),
            otherwise: None,
        }
    }

    /// A script that plays another: the first of `cases` whose `when` the
    /// first user message contains, else `otherwise`.
    pub fn choose(cases: Vec<Case>, otherwise: impl Into<String>) -> Script {
        Script {
            steps: Vec::new(),
            cases,
            otherwise: Some(otherwise.into()),
        }
    }

    /// The script a choosing script plays for `first_user` (`None` for a
    /// script of steps).
    pub fn chosen(&self, first_user: &str) -> Option<&str> {
        let otherwise = self.otherwise.as_deref()?;
        Some(
            self.cases
                .iter()
                .find(|c| first_user.contains(&c.when))
                .map_or(otherwise, |c| c.script.as_str()),
        )
    }
}

/// Named scripts, and which one answers a request that names none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<String>,
    scripts: BTreeMap<String, Script>,
}

/// Why a scripts file was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptError(String);

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScriptError {}

impl Scripts {
    /// No scripts and no default.
    pub fn new() -> Scripts {
        Scripts::default()
    }

    /// Parses the JSON form `{"default"?: "<name>", "scripts": {"<name>":
    /// [step, …]}}`. A step is one of `{"text": "…"}`, `{"tool_calls":
    /// [{"name": "…", "arguments": {…}}], "text"?: "…"}` or `{"status":
    /// 429, "error": "…"}`, each with an optional `"delay_ms"`.
    pub fn from_json(text: &str) -> Result<Scripts, ScriptError> {
        let scripts: Scripts = serde_json::from_str(text)
            .map_err(|err| ScriptError(format!("the scripts are not valid: {err}")))?;
        scripts.check()?;
        Ok(scripts)
    }

    /// The built-in scripts (default [`DEFAULT_SCRIPT`]):
    /// - `demo`: runs `uname -a; ls /workspace` with `shell`, saves a note
    ///   with `action_memory_set` (agentd's function name for the
    ///   `action.memory.set` tool), then answers quoting the shell's result;
    /// - `echo`: answers the prompt back;
    /// - `tools`: `write_file`, `read_file`, `shell`, then answers quoting
    ///   what the file and the shell gave back;
    /// - `slow`: answers after 30 seconds (for cancel and timeout tests);
    /// - `broken`: fails with HTTP 500.
    ///
    /// And the runs of a goal (see `turn::phase`), played as
    /// `<name>.<phase>` (a goal with no marker plays `demo.<phase>`):
    /// - `demo.plan`: a valid plan of three executor sub-tasks, the third
    ///   depending on the first two; `demo.work`: writes `<key>.md` into the
    ///   goal's workspace and reports what it holds; `demo.review`: looks
    ///   at the workspace and approves with 8; `demo.deliver`: says what
    ///   was built (the run's output lists the workspace's files);
    /// - `replan.plan`: an invalid plan (a cycle, a missing dependency, an
    ///   unknown role, no acceptance), then the valid one;
    /// - `stubborn.plan`: nothing but invalid plans;
    /// - `strict.review`: rejects the first round with two issues, approves
    ///   the next; `harsh.review`: rejects every round;
    /// - `wrong.review`: submits a verdict for a task it was not given;
    /// - `looping.work`: the same shell call, again and again.
    pub fn builtin() -> Scripts {
        let mut scripts = Scripts::new();
        scripts.insert(
            "demo",
            Script::new(vec![
                Step::tool_calls(vec![ToolCall::new(
                    "shell",
                    json!({"command": "uname -a; ls /workspace"}),
                )]),
                Step::tool_calls(vec![ToolCall::new(
                    "action_memory_set",
                    json!({"key": "demo", "value": "I looked at the system and the workspace."}),
                )]),
                Step::text(
                    "Here is what the shell said:\n{tool:shell}\nI noted that in my memory ({last_tool}).",
                ),
            ]),
        );
        scripts.insert("echo", Script::new(vec![Step::text("{prompt}")]));
        scripts.insert(
            "tools",
            Script::new(vec![
                Step::tool_calls(vec![ToolCall::new(
                    "write_file",
                    json!({"path": "notes/hello.txt", "content": "hello from the scripted model\n"}),
                )]),
                Step::tool_calls(vec![ToolCall::new(
                    "read_file",
                    json!({"path": "notes/hello.txt"}),
                )]),
                Step::tool_calls(vec![ToolCall::new(
                    "shell",
                    json!({"command": "wc -c < notes/hello.txt"}),
                )]),
                Step::text("The file says: {tool:read_file}\nIts size, says the shell: {last_tool}"),
            ]),
        );
        scripts.insert(
            "slow",
            Script::new(vec![Step::text("That took a while.").delayed(30_000)]),
        );
        scripts.insert(
            "broken",
            Script::new(vec![Step::error(
                500,
                "The scripted provider is broken on purpose.",
            )]),
        );
        loop_scripts(&mut scripts);
        scripts.default = Some(DEFAULT_SCRIPT.to_owned());
        scripts
    }

    /// Adds (or replaces) a script.
    pub fn insert(&mut self, name: impl Into<String>, script: Script) -> &mut Scripts {
        self.scripts.insert(name.into(), script);
        self
    }

    /// Chooses the script a request naming none gets; `None` makes such a
    /// request fail with 404.
    pub fn set_default(&mut self, name: Option<&str>) -> Result<&mut Scripts, ScriptError> {
        if let Some(name) = name {
            if !self.scripts.contains_key(name) {
                return Err(ScriptError(format!("there is no script named {name:?}")));
            }
        }
        self.default = name.map(str::to_owned);
        Ok(self)
    }

    /// `self` plus every script of `other` (replacing same-named ones);
    /// `other`'s default wins when it has one.
    pub fn with(mut self, other: Scripts) -> Scripts {
        self.scripts.extend(other.scripts);
        if other.default.is_some() {
            self.default = other.default;
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&Script> {
        self.scripts.get(name)
    }

    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.scripts.keys().map(String::as_str)
    }

    fn check(&self) -> Result<(), ScriptError> {
        if let Some(name) = &self.default {
            if !self.scripts.contains_key(name) {
                return Err(ScriptError(format!(
                    "the default script {name:?} is not among the scripts"
                )));
            }
        }
        for (name, script) in &self.scripts {
            let targets = script
                .cases
                .iter()
                .map(|c| &c.script)
                .chain(script.otherwise.as_ref());
            for target in targets {
                if !self.scripts.contains_key(target) {
                    return Err(ScriptError(format!(
                        "script {name:?} chooses {target:?}, which is not among the scripts"
                    )));
                }
            }
        }
        if let Some(name) = self.scripts.keys().find(|name| !valid_name(name)) {
            return Err(ScriptError(format!(
                "the script name {name:?} is not valid (use letters, digits, '-', '_' and '.')"
            )));
        }
        Ok(())
    }
}

/// The plan `demo.plan` submits.
pub fn demo_plan() -> Value {
    json!({
        "summary": "Outline the page and write its copy, then build the page from both.",
        "modules": [{"key": "site", "title": "The site"}],
        "subtasks": [
            {"key": "outline", "title": "Outline the page", "role": "executor", "module": "site", "size": 1,
             "description": "Write outline.md: the sections of the page, one per line.",
             "acceptance": ["outline.md lists the sections of the page"]},
            {"key": "copy", "title": "Write the copy", "role": "executor", "module": "site", "size": 2,
             "description": "Write copy.md: the text of each section.",
             "acceptance": ["copy.md has text for every section"]},
            {"key": "page", "title": "Build the page", "role": "executor", "module": "site", "size": 3,
             "description": "Build page.md from outline.md and copy.md.",
             "acceptance": ["page.md holds every section with its text"],
             "depends_on": ["outline", "copy"]}
        ]
    })
}

/// A plan with every kind of error the plan check names.
pub fn invalid_plan() -> Value {
    json!({
        "summary": "A plan with mistakes.",
        "subtasks": [
            {"key": "a", "title": "A", "description": "a", "role": "executor", "acceptance": ["a"], "depends_on": ["b"]},
            {"key": "b", "title": "B", "description": "b", "role": "executor", "acceptance": ["b"], "depends_on": ["a"]},
            {"key": "c", "title": "C", "description": "c", "role": "executor", "acceptance": ["c"], "depends_on": ["nowhere"]},
            {"key": "d", "title": "D", "description": "d", "role": "wizard", "acceptance": ["d"]},
            {"key": "e", "title": "E", "description": "e", "role": "executor", "acceptance": []}
        ]
    })
}

fn submit_plan(plan: Value) -> Step {
    Step::tool_calls(vec![ToolCall::new("action_plan_submit", plan)])
}

/// The task id a review prompt asks the verdict for.
const REVIEWED_TASK: &str = "{field:\"task_id\": \"}";
/// The key of the sub-task a work prompt is about.
const SUBTASK_KEY: &str = "{field:Your sub-task (}";

fn verdict(score: u8, approve: bool, issues: &[&str], summary: &str) -> Step {
    Step::tool_calls(vec![ToolCall::new(
        "action_review_submit",
        json!({"task_id": REVIEWED_TASK, "score": score, "approve": approve,
               "issues": issues, "summary": summary}),
    )])
}

fn look_around() -> Step {
    Step::tool_calls(vec![ToolCall::new(
        "shell",
        json!({"command": "ls -la /workspace"}),
    )])
}

fn loop_scripts(scripts: &mut Scripts) {
    scripts.insert(
        "demo.plan",
        Script::new(vec![
            submit_plan(demo_plan()),
            Step::text("I submitted the plan: {last_tool}"),
        ]),
    );
    scripts.insert(
        "demo.work",
        Script::new(vec![
            Step::tool_calls(vec![ToolCall::new(
                "write_file",
                json!({"path": format!("{SUBTASK_KEY}.md"),
                       "content": format!("# {SUBTASK_KEY}\n\nWritten by the scripted model.\n")}),
            )]),
            look_around(),
            Step::text(format!(
                "I wrote {SUBTASK_KEY}.md and checked the workspace:\n{{tool:shell}}"
            )),
        ]),
    );
    scripts.insert(
        "demo.review",
        Script::new(vec![
            look_around(),
            verdict(8, true, &[], "Every criterion is met."),
            Step::text("I approved the work: {last_tool}"),
        ]),
    );
    scripts.insert(
        "demo.deliver",
        Script::new(vec![Step::text(
            "Every sub-task is done: the outline, the copy and the page built from both are in the goal's workspace.",
        )]),
    );
    scripts.insert(
        "replan.plan",
        Script::new(vec![
            submit_plan(invalid_plan()),
            submit_plan(demo_plan()),
            Step::text("I fixed the plan: {last_tool}"),
        ]),
    );
    scripts.insert(
        "stubborn.plan",
        Script::new(vec![
            submit_plan(invalid_plan()),
            submit_plan(invalid_plan()),
            submit_plan(invalid_plan()),
            submit_plan(invalid_plan()),
            Step::text("I could not make a valid plan: {last_tool}"),
        ]),
    );
    let reject = |s: &mut Scripts, name: &str| {
        s.insert(
            name,
            Script::new(vec![
                look_around(),
                verdict(
                    4,
                    false,
                    &[
                        "The page has no contact section.",
                        "The headings skip a level.",
                    ],
                    "Two criteria are not met.",
                ),
                Step::text("I sent the work back: {last_tool}"),
            ]),
        );
    };
    reject(scripts, "harsh.review");
    reject(scripts, "strict.reject");
    scripts.insert(
        "strict.review",
        Script::choose(
            vec![Case {
                when: "Earlier review rounds".to_owned(),
                script: "demo.review".to_owned(),
            }],
            "strict.reject",
        ),
    );
    scripts.insert(
        "wrong.review",
        Script::new(vec![
            Step::tool_calls(vec![ToolCall::new(
                "action_review_submit",
                json!({"task_id": "00000000-0000-7000-8000-000000000001", "score": 9, "approve": true}),
            )]),
            verdict(8, true, &[], "Every criterion is met."),
            Step::text("Reviewed: {last_tool}"),
        ]),
    );
    scripts.insert(
        "looping.work",
        Script::new(
            (0..60)
                .map(|_| {
                    Step::tool_calls(vec![ToolCall::new(
                        "shell",
                        json!({"command": "echo still thinking"}),
                    )])
                    .delayed(200)
                })
                .collect(),
        ),
    );
}

/// A script name fits in `scripted:<name>` and `[script:<name>]`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_step() {
        let scripts = Scripts::from_json(
            r#"{"default": "s", "scripts": {"s": [
                {"text": "hi", "delay_ms": 5},
                {"tool_calls": [{"name": "shell", "arguments": {"command": "ls"}}]},
                {"text": "let me look", "tool_calls": [{"name": "read_file", "arguments": "{not json"}]},
                {"status": 429, "error": "slow down"},
                {"error": "boom"}
            ]}}"#,
        )
        .expect("valid");
        assert_eq!(scripts.default_name(), Some("s"));
        let steps = &scripts.get("s").expect("s").steps;
        assert_eq!(steps[0], Step::text("hi").delayed(5));
        assert_eq!(
            steps[1],
            Step::tool_calls(vec![ToolCall::new("shell", json!({"command": "ls"}))])
        );
        let Reply::Message { text, tool_calls } = &steps[2].reply else {
            panic!("a message");
        };
        assert_eq!(text.as_deref(), Some("let me look"));
        assert_eq!(tool_calls[0].arguments_text(), "{not json");
        assert_eq!(steps[3], Step::error(429, "slow down"));
        assert_eq!(
            steps[4].reply,
            Reply::Error {
                status: 500,
                message: "boom".to_owned()
            }
        );
    }

    #[test]
    fn round_trips_through_json() {
        let builtin = Scripts::builtin();
        let text = serde_json::to_string(&builtin).expect("encode");
        assert_eq!(Scripts::from_json(&text), Ok(builtin));
    }

    #[test]
    fn refuses_bad_scripts() {
        for (text, want) in [
            (r#"{"scripts": {"s": [{}]}}"#, "a step needs"),
            (
                r#"{"scripts": {"s": [{"tool_calls": []}]}}"#,
                "a step needs",
            ),
            (
                r#"{"scripts": {"s": [{"text": "x", "status": 500}]}}"#,
                "either an error",
            ),
            (r#"{"scripts": {"s": [{"status": 200}]}}"#, "400-599"),
            (r#"{"scripts": {"s": [{"txt": "x"}]}}"#, "unknown field"),
            (
                r#"{"default": "t", "scripts": {"s": []}}"#,
                "default script",
            ),
            (r#"{"scripts": {"a b": []}}"#, "not valid"),
            (
                r#"{"scripts": {"s": [{"tool_calls": [{"name": ""}]}]}}"#,
                "empty name",
            ),
        ] {
            let err = Scripts::from_json(text).expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn builtin_has_the_documented_scripts() {
        let builtin = Scripts::builtin();
        assert_eq!(
            builtin.names().collect::<Vec<_>>(),
            [
                "broken",
                "demo",
                "demo.deliver",
                "demo.plan",
                "demo.review",
                "demo.work",
                "echo",
                "harsh.review",
                "looping.work",
                "replan.plan",
                "slow",
                "strict.reject",
                "strict.review",
                "stubborn.plan",
                "tools",
                "wrong.review"
            ]
        );
        assert_eq!(builtin.default_name(), Some(DEFAULT_SCRIPT));
        let names: Vec<String> = builtin
            .get("tools")
            .expect("tools")
            .steps
            .iter()
            .flat_map(|step| match &step.reply {
                Reply::Message { tool_calls, .. } => {
                    tool_calls.iter().map(|call| call.name.clone()).collect()
                }
                Reply::Error { .. } => Vec::new(),
            })
            .collect();
        assert_eq!(names, ["write_file", "read_file", "shell"]);
    }

    #[test]
    fn with_adds_and_overrides() {
        let mut extra = Scripts::new();
        extra.insert("echo", Script::new(vec![Step::text("not an echo")]));
        extra.insert("new", Script::new(vec![Step::text("new")]));
        extra.set_default(Some("new")).expect("exists");
        let merged = Scripts::builtin().with(extra);
        assert_eq!(merged.default_name(), Some("new"));
        assert_eq!(
            merged.get("echo").expect("echo").steps[0],
            Step::text("not an echo")
        );
        assert!(merged.get("demo").is_some());
        assert!(Scripts::new().set_default(Some("none")).is_err());
    }
}
