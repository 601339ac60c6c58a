//! The tools an agent run can offer the model: their names, their JSON
//! Schema definitions, and the arguments each one takes.
//!
//! A tool has a contract name (`shell`, `action.memory.set`, as in
//! [`subjects::agent::AgentSpec::tools`]) and a function name the model sees.
//! OpenAI-compatible APIs allow only `[A-Za-z0-9_-]` in function names, so a
//! dot becomes an underscore (`action_memory_set`); a call naming either
//! form is accepted. Running the tools is [`crate::agent`]'s business.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use subjects::gateway::action;

const ACTION_PREFIX: &str = "action.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Shell,
    ReadFile,
    WriteFile,
    HttpFetch,
    /// A platform action, by its name in [`action::ALL`].
    Action(&'static str),
}

impl Tool {
    /// The tool a contract name stands for.
    pub fn parse(name: &str) -> Option<Tool> {
        Some(match name {
            "shell" => Tool::Shell,
            "read_file" => Tool::ReadFile,
            "write_file" => Tool::WriteFile,
            "http_fetch" => Tool::HttpFetch,
            _ => {
                let wanted = name.strip_prefix(ACTION_PREFIX)?;
                Tool::Action(action::ALL.iter().copied().find(|known| *known == wanted)?)
            }
        })
    }

    /// A platform action named by either spelling (`action.memory.set` or
    /// `action_memory_set`), offered or not: the gateway is where actions
    /// are allowed or denied, and audited either way.
    pub fn platform_action(called: &str) -> Option<Tool> {
        action::ALL
            .iter()
            .copied()
            .map(Tool::Action)
            .find(|tool| tool.function() == called || tool.name() == called)
    }

    /// The contract name (`action.memory.set`).
    pub fn name(self) -> String {
        match self {
            Tool::Shell => "shell".to_owned(),
            Tool::ReadFile => "read_file".to_owned(),
            Tool::WriteFile => "write_file".to_owned(),
            Tool::HttpFetch => "http_fetch".to_owned(),
            Tool::Action(name) => format!("{ACTION_PREFIX}{name}"),
        }
    }

    /// The function name offered to the model (`action_memory_set`).
    pub fn function(self) -> String {
        self.name().replace('.', "_")
    }

    fn description(self) -> String {
        match self {
            Tool::Shell => "Run a command with /bin/sh -c in the workspace; answers the exit code, stdout and stderr.".to_owned(),
            Tool::ReadFile => "Read a text file; the path is relative to the workspace.".to_owned(),
            Tool::WriteFile => "Write a text file (replacing it, creating directories); the path is relative to the workspace.".to_owned(),
            Tool::HttpFetch => "Make an HTTP request to an allowed host; answers the status, headers and body.".to_owned(),
            Tool::Action(name) => {
                let what = match name {
                    action::MEMORY_GET => "Read a value from your memory",
                    action::MEMORY_SET => "Save a value in your memory (kept across tasks)",
                    action::MEMORY_LIST => "List the keys in your memory",
                    action::NOTE => "Leave a note on the task",
                    action::TASK_CREATE => "Create a sub-task",
                    action::REVIEW_SUBMIT => "Submit your verdict on the sub-task you were given to review",
                    action::PLAN_SUBMIT => "Submit the goal's plan (it is checked at once; a refusal lists every error to fix)",
                    _ => "Run a platform action",
                };
                format!("{what} (platform action {name}).")
            }
        }
    }

    fn parameters(self) -> Value {
        let object = |properties: Value, required: &[&str]| json!({"type": "object", "properties": properties, "required": required});
        match self {
            Tool::Shell => object(
                json!({"command": {"type": "string", "description": "The shell command."}}),
                &["command"],
            ),
            Tool::ReadFile => object(json!({"path": {"type": "string"}}), &["path"]),
            Tool::WriteFile => object(
                json!({"path": {"type": "string"}, "content": {"type": "string"}}),
                &["path", "content"],
            ),
            Tool::HttpFetch => object(
                json!({
                    "url": {"type": "string", "description": "http:// or https:// URL."},
                    "method": {"type": "string", "description": "GET when absent."},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body": {"type": "string"}
                }),
                &["url"],
            ),
            Tool::Action(action::MEMORY_GET) => {
                object(json!({"key": {"type": "string"}}), &["key"])
            }
            Tool::Action(action::MEMORY_SET) => object(
                json!({"key": {"type": "string"}, "value": {"description": "Any JSON value."}}),
                &["key", "value"],
            ),
            Tool::Action(action::MEMORY_LIST) => object(json!({}), &[]),
            Tool::Action(action::NOTE) => object(json!({"text": {"type": "string"}}), &["text"]),
            Tool::Action(action::PLAN_SUBMIT) => {
                serde_json::to_value(schemars::schema_for!(subjects::goals::Plan))
                    .unwrap_or_else(|_| json!({"type": "object"}))
            }
            Tool::Action(action::REVIEW_SUBMIT) => {
                serde_json::to_value(schemars::schema_for!(subjects::goals::ReviewVerdict))
                    .unwrap_or_else(|_| json!({"type": "object"}))
            }
            Tool::Action(_) => json!({"type": "object", "additionalProperties": true}),
        }
    }

    /// The OpenAI `tools[]` entry.
    pub fn definition(self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.function(),
                "description": self.description(),
                "parameters": self.parameters(),
            }
        })
    }
}

/// The tools of one run, in the order the spec named them (duplicates once).
#[derive(Debug, Clone, PartialEq)]
pub struct Toolbox(Vec<Tool>);

impl Toolbox {
    /// The tools `names` ask for, or the sentence refusing unknown ones.
    pub fn new(names: &[String]) -> Result<Toolbox, String> {
        let mut tools = Vec::new();
        let mut unknown = Vec::new();
        for name in names {
            match Tool::parse(name) {
                Some(tool) if !tools.contains(&tool) => tools.push(tool),
                Some(_) => {}
                None => unknown.push(format!("{name:?}")),
            }
        }
        if unknown.is_empty() {
            return Ok(Toolbox(tools));
        }
        Err(format!(
            "the agent spec offers tools agentd does not have: {}; it has shell, read_file, write_file, http_fetch and action.<name> for {}.",
            unknown.join(", "),
            action::ALL.join(", ")
        ))
    }

    /// The offered tool a call names (by function or contract name).
    pub fn find(&self, called: &str) -> Option<Tool> {
        self.0
            .iter()
            .copied()
            .find(|tool| tool.function() == called || tool.name() == called)
    }

    pub fn definitions(&self) -> Vec<Value> {
        self.0.iter().map(|tool| tool.definition()).collect()
    }

    /// The function names offered, for a refusal sentence.
    pub fn offered(&self) -> String {
        if self.0.is_empty() {
            return "none".to_owned();
        }
        self.0
            .iter()
            .map(|tool| tool.function())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Deserialize)]
pub struct ShellArgs {
    pub command: String,
}

#[derive(Debug, Deserialize)]
pub struct ReadArgs {
    pub path: String,
}

#[derive(Debug, Deserialize)]
pub struct WriteArgs {
    pub path: String,
    pub content: String,
}

#[derive(Debug, Deserialize)]
pub struct FetchArgs {
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

/// The model's arguments text as JSON (empty text is `{}`).
pub fn json_arguments(tool: Tool, text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(text).map_err(|err| {
        format!(
            "the arguments of {} are not valid JSON: {err}.",
            tool.function()
        )
    })
}

/// The model's arguments text as `T`.
pub fn arguments<T: DeserializeOwned>(tool: Tool, text: &str) -> Result<T, String> {
    let value = json_arguments(tool, text)?;
    T::deserialize(value).map_err(|err| {
        format!(
            "the arguments of {} do not fit its parameters: {err}.",
            tool.function()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn knows_the_contract_names() {
        let toolbox = Toolbox::new(&names(&[
            "shell",
            "read_file",
            "write_file",
            "http_fetch",
            "action.memory.set",
            "shell",
        ]))
        .expect("known");
        assert_eq!(
            toolbox.definitions().len(),
            5,
            "duplicates are offered once"
        );
        assert_eq!(
            toolbox.find("action_memory_set"),
            Some(Tool::Action("memory.set"))
        );
        assert_eq!(
            toolbox.find("action.memory.set"),
            Some(Tool::Action("memory.set"))
        );
        assert_eq!(toolbox.find("action_note"), None);
        assert_eq!(
            toolbox.offered(),
            "shell, read_file, write_file, http_fetch, action_memory_set"
        );
        for action in action::ALL {
            assert!(
                Tool::parse(&format!("action.{action}")).is_some(),
                "{action}"
            );
        }
    }

    #[test]
    fn refuses_unknown_names() {
        let err = Toolbox::new(&names(&["shell", "browser", "action.launch", "action."]))
            .expect_err("unknown");
        assert!(
            err.starts_with(
                "the agent spec offers tools agentd does not have: \"browser\", \"action.launch\", \"action.\";"
            ),
            "{err}"
        );
    }

    #[test]
    fn definitions_are_openai_functions_with_valid_names() {
        for name in ["shell", "read_file", "write_file", "http_fetch"]
            .into_iter()
            .map(str::to_owned)
            .chain(action::ALL.iter().map(|a| format!("action.{a}")))
        {
            let definition = Tool::parse(&name).expect("known").definition();
            assert_eq!(definition["type"], "function");
            let function = definition["function"]["name"].as_str().expect("name");
            assert!(
                !function.is_empty()
                    && function.len() <= 64
                    && function
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{function}"
            );
            assert_eq!(definition["function"]["parameters"]["type"], "object");
        }
    }

    #[test]
    fn arguments_are_checked() {
        let args: WriteArgs = arguments(
            Tool::WriteFile,
            r#"{"path": "a", "content": "b", "extra": 1}"#,
        )
        .expect("fits");
        assert_eq!((args.path.as_str(), args.content.as_str()), ("a", "b"));
        let err = arguments::<ShellArgs>(Tool::Shell, "{").expect_err("not JSON");
        assert!(
            err.starts_with("the arguments of shell are not valid JSON"),
            "{err}"
        );
        let err = arguments::<ShellArgs>(Tool::Shell, "{}").expect_err("missing");
        assert!(
            err.starts_with("the arguments of shell do not fit"),
            "{err}"
        );
        assert_eq!(
            json_arguments(Tool::Action("memory.list"), " ").expect("empty is {}"),
            json!({})
        );
    }
}
