//! One request → one reply, with no state: which script, which step, the
//! text with its placeholders filled in, and the token counts.

use serde_json::Value;

use crate::script::{Reply, Script, Scripts, ToolCall};

/// The prefix of a `model` naming a script (`scripted:<name>`).
pub const MODEL_PREFIX: &str = "scripted:";
/// The model name that picks the default script.
pub const MODEL: &str = "scripted";
const MARKER_OPEN: &str = "[script:";

/// What the provider needs of a chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: bool,
    pub include_usage: bool,
    /// The characters of the request's `tools` (compact JSON), which a
    /// provider counts as prompt tokens too.
    pub tools_chars: usize,
}

/// One message of the conversation, reduced to what scripts look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    /// The text content (text parts joined; empty for `null`).
    pub content: String,
    /// `(id, function name, arguments)` of an assistant's tool calls.
    pub tool_calls: Vec<(String, String, String)>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

/// A refused request: the HTTP status and the sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            message: message.into(),
        }
    }
}

/// Parses the request body leniently: only `model`, `messages`, `stream`
/// and `stream_options.include_usage` matter; other fields are ignored.
pub fn parse(body: &[u8]) -> Result<Request, Refusal> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| Refusal::bad(format!("The request body is not JSON: {err}.")))?;
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::bad("The request needs a string \"model\"."))?
        .to_owned();
    let messages = value
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Refusal::bad("The request needs an array \"messages\"."))?
        .iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    let stream = value
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = value
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tools_chars = value
        .get("tools")
        .map_or(0, |tools| tools.to_string().chars().count());
    Ok(Request {
        model,
        messages,
        stream,
        include_usage,
        tools_chars,
    })
}

fn message(value: &Value) -> Result<Message, Refusal> {
    let role = value
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::bad("Every message needs a string \"role\"."))?
        .to_owned();
    let tool_calls = value
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|call| {
                    let text = |pointer: &str| {
                        call.pointer(pointer)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    (
                        text("/id"),
                        text("/function/name"),
                        text("/function/arguments"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Message {
        role,
        content: content_text(value.get("content")),
        tool_calls,
        tool_call_id: value
            .get("tool_call_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// A message's content as text: a string, or the `text` of its parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The script a request names: `model` = `scripted:<name>`, else a
/// `[script:<name>]` marker in the first user message; `None` means the
/// default.
pub fn script_name(request: &Request) -> Option<String> {
    if let Some(name) = request.model.strip_prefix(MODEL_PREFIX) {
        return Some(name.to_owned());
    }
    let first_user = request.messages.iter().find(|m| m.role == "user")?;
    marker(&first_user.content).map(|(name, _)| name.to_owned())
}

/// The first `[script:<name>]` in `text`: the name and the marker's byte range.
fn marker(text: &str) -> Option<(&str, std::ops::Range<usize>)> {
    let start = text.find(MARKER_OPEN)?;
    let name_start = start + MARKER_OPEN.len();
    let len = text[name_start..].find(']')?;
    let name = &text[name_start..name_start + len];
    (!name.is_empty()).then_some((name, start..name_start + len + 1))
}

/// Which step answers: the number of assistant messages already sent.
pub fn step_index(request: &Request) -> usize {
    request
        .messages
        .iter()
        .filter(|m| m.role == "assistant")
        .count()
}

/// The reply chosen for a request, placeholders filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The script's name (the response's `model` is `scripted:<name>`).
    pub script: String,
    pub step: usize,
    pub delay_ms: u64,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Message {
        text: Option<String>,
        /// `(id, name, arguments text)`.
        tool_calls: Vec<(String, String, String)>,
        usage: Usage,
    },
    Error {
        status: u16,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Which run of a goal a request belongs to, from the first line of its
/// first user message (the briefs `store::briefs` writes): `plan`,
/// `work`, `review` or `deliver`; `None` for a run outside a goal.
pub fn phase(request: &Request) -> Option<&'static str> {
    let first = first_user(request).trim_start();
    [
        ("Plan this goal", "plan"),
        ("You are working on one sub-task of a goal", "work"),
        ("Review one sub-task's work", "review"),
        ("Every sub-task of this goal is done", "deliver"),
    ]
    .into_iter()
    .find(|(opening, _)| first.starts_with(opening))
    .map(|(_, phase)| phase)
}

fn first_user(request: &Request) -> &str {
    request
        .messages
        .iter()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str())
}

/// The script that answers: the named one (or the default) for this run's
/// phase — `<name>.<phase>` when it exists, else `<name>`, else the
/// default's `<default>.<phase>` — then, for a choosing script, the one it
/// chooses.
fn resolve<'a>(scripts: &'a Scripts, request: &Request) -> Result<(String, &'a Script), Refusal> {
    let default = scripts.default_name();
    let named = script_name(request);
    let Some(name) = named.as_deref().or(default) else {
        return Err(Refusal {
            status: 404,
            message: format!(
                "There is no default script; name one with model \"{MODEL_PREFIX}<name>\" or a [script:<name>] marker."
            ),
        });
    };
    let phase = phase(request);
    let mut chosen = phase
        .map(|p| format!("{name}.{p}"))
        .into_iter()
        .chain([name.to_owned()])
        .chain(phase.zip(default).map(|(p, d)| format!("{d}.{p}")))
        .find(|n| scripts.get(n).is_some())
        .ok_or_else(|| Refusal {
            status: 404,
            message: format!(
                "The model {:?} does not exist: there is no script named {name:?} (scripts: {}).",
                format!("{MODEL_PREFIX}{name}"),
                scripts.names().collect::<Vec<_>>().join(", ")
            ),
        })?;
    // Choosing scripts are checked to name scripts that exist; a bound on
    // the chain keeps a cycle of them from looping.
    for _ in 0..8 {
        let script = scripts.get(&chosen).expect("found above");
        match script.chosen(first_user(request)) {
            None => return Ok((chosen, script)),
            Some(next) => chosen = next.to_owned(),
        }
    }
    Err(Refusal {
        status: 500,
        message: format!("The script {chosen:?} chooses in a cycle."),
    })
}

/// Plays `request` against `scripts`.
pub fn play(scripts: &Scripts, request: &Request) -> Result<Turn, Refusal> {
    let (name, script) = resolve(scripts, request)?;
    let step = step_index(request);
    let (delay_ms, text, calls) = match script.steps.get(step) {
        None => (
            0,
            Some(format!("script {name} has no step {step}")),
            &[][..],
        ),
        Some(found) => match &found.reply {
            Reply::Error { status, message } => {
                return Ok(Turn {
                    script: name,
                    step,
                    delay_ms: found.delay_ms,
                    answer: Answer::Error {
                        status: *status,
                        message: message.clone(),
                    },
                })
            }
            Reply::Message { text, tool_calls } => (
                found.delay_ms,
                text.as_deref().map(|text| fill(text, request)),
                tool_calls.as_slice(),
            ),
        },
    };
    let tool_calls: Vec<(String, String, String)> = calls
        .iter()
        .enumerate()
        .map(|(i, call): (usize, &ToolCall)| {
            (
                format!("call_{step}_{i}"),
                call.name.clone(),
                match &call.arguments {
                    Value::String(text) => text.clone(),
                    args => fill_value(args, request).to_string(),
                },
            )
        })
        .collect();
    let completion_chars = text.as_deref().map_or(0, char_count)
        + tool_calls
            .iter()
            .map(|(_, name, args)| char_count(name) + char_count(args))
            .sum::<usize>();
    let usage = Usage {
        prompt_tokens: tokens(prompt_chars(request)),
        completion_tokens: tokens(completion_chars),
    };
    Ok(Turn {
        script: name,
        step,
        delay_ms,
        answer: Answer::Message {
            text,
            tool_calls,
            usage,
        },
    })
}

fn char_count(text: &str) -> usize {
    text.chars().count()
}

/// Characters of the offered tools and of every message's content and tool
/// calls (name + arguments).
fn prompt_chars(request: &Request) -> usize {
    request.tools_chars
        + request
            .messages
            .iter()
            .map(|m| {
                char_count(&m.content)
                    + m.tool_calls
                        .iter()
                        .map(|(_, name, args)| char_count(name) + char_count(args))
                        .sum::<usize>()
            })
            .sum::<usize>()
}

/// One token per four characters, rounded up.
fn tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Replaces `{prompt}`, `{last_tool}` and `{tool:<name>}` in `text`.
fn fill(text: &str, request: &Request) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            out.push_str(after);
            return out;
        };
        let key = &after[1..close];
        match placeholder(key, request) {
            Some(value) => {
                out.push_str(&value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `value` with the placeholders of every string in it filled in.
fn fill_value(value: &Value, request: &Request) -> Value {
    match value {
        Value::String(text) => Value::String(fill(text, request)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill_value(v, request)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_value(v, request)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `{field:<prefix>}`: what follows the first `<prefix>` in the first user
/// message, up to a space, a quote, a bracket or a comma.
fn field(prefix: &str, request: &Request) -> Option<String> {
    let text = first_user(request);
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | ',' | ']' | '}'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

fn placeholder(key: &str, request: &Request) -> Option<String> {
    if let Some(prefix) = key.strip_prefix("field:") {
        return Some(field(prefix, request).unwrap_or_default());
    }
    let value = match key {
        "prompt" => request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| match marker(&m.content) {
                Some((_, range)) => {
                    let mut text = m.content.clone();
                    text.replace_range(range, "");
                    text.trim().to_owned()
                }
                None => m.content.trim().to_owned(),
            }),
        "last_tool" => request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "tool")
            .map(|m| m.content.clone()),
        _ => {
            let function = key.strip_prefix("tool:")?;
            let ids: Vec<&str> = request
                .messages
                .iter()
                .flat_map(|m| m.tool_calls.iter())
                .filter(|(_, name, _)| name == function)
                .map(|(id, _, _)| id.as_str())
                .collect();
            request
                .messages
                .iter()
                .rev()
                .find(|m| {
                    m.role == "tool"
                        && m.tool_call_id
                            .as_deref()
                            .is_some_and(|id| ids.contains(&id))
                })
                .map(|m| m.content.clone())
        }
    };
    Some(value.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{Script, Step};
    use serde_json::json;

    fn request(value: Value) -> Request {
        parse(value.to_string().as_bytes()).expect("a valid request")
    }

    fn scripts() -> Scripts {
        let mut scripts = Scripts::builtin();
        scripts.insert(
            "two",
            Script::new(vec![
                Step::tool_calls(vec![
                    ToolCall::new("shell", json!({"command": "ls"})),
                    ToolCall::new("read_file", json!({"path": "a"})),
                ]),
                Step::text("shell: {tool:shell} | file: {tool:read_file} | last: {last_tool} | {unknown} {"),
            ]),
        );
        scripts
    }

    fn text_of(turn: &Turn) -> &str {
        match &turn.answer {
            Answer::Message { text, .. } => text.as_deref().unwrap_or(""),
            Answer::Error { .. } => panic!("an error: {turn:?}"),
        }
    }

    #[test]
    fn the_model_or_a_marker_picks_the_script() {
        let scripts = scripts();
        let by_model = request(json!({"model": "scripted:echo",
            "messages": [{"role": "user", "content": "[script:two] hello"}]}));
        assert_eq!(play(&scripts, &by_model).expect("turn").script, "echo");
        let by_marker = request(json!({"model": "gpt-4o",
            "messages": [{"role": "system", "content": "[script:demo]"},
                         {"role": "user", "content": "please [script:echo] hello"}]}));
        let turn = play(&scripts, &by_marker).expect("turn");
        assert_eq!(turn.script, "echo");
        assert_eq!(text_of(&turn), "please  hello");
        let default = request(json!({"model": "scripted",
            "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(play(&scripts, &default).expect("turn").script, "demo");
    }

    fn user(content: &str) -> Request {
        request(json!({"model": "scripted", "messages": [{"role": "user", "content": content}]}))
    }

    fn calls_of(turn: &Turn) -> Vec<(String, Value)> {
        match &turn.answer {
            Answer::Message { tool_calls, .. } => tool_calls
                .iter()
                .map(|(_, n, a)| (n.clone(), serde_json::from_str(a).expect("json args")))
                .collect(),
            Answer::Error { .. } => panic!("an error: {turn:?}"),
        }
    }

    #[test]
    fn a_goals_runs_play_their_phase_of_the_named_script() {
        let scripts = scripts();
        for (prompt, want) in [
            ("Plan this goal for a team of AI employees.\n", "demo.plan"),
            ("Plan this goal. [script:replan]", "replan.plan"),
            ("Plan this goal. [script:strict]", "demo.plan"),
            (
                "You are working on one sub-task of a goal.\n\nYour sub-task (outline): x",
                "demo.work",
            ),
            (
                "Review one sub-task's work against its acceptance criteria.",
                "strict.reject",
            ),
            (
                "Review one sub-task's work\nEarlier review rounds:\n",
                "demo.review",
            ),
            ("Every sub-task of this goal is done. [script:echo]", "echo"),
            ("Every sub-task of this goal is done.", "demo.deliver"),
            ("Anything else", "demo"),
        ] {
            let prompt = if want.starts_with("strict") || prompt.contains("Earlier") {
                format!("{prompt} [script:strict]")
            } else {
                prompt.to_string()
            };
            assert_eq!(
                play(&scripts, &user(&prompt)).expect("turn").script,
                want,
                "{prompt}"
            );
        }
        // Outside a goal, an unknown name is still a 404.
        assert_eq!(
            play(&scripts, &user("hi [script:strict]"))
                .expect_err("404")
                .status,
            404
        );
    }

    #[test]
    fn field_placeholders_fill_tool_arguments_from_the_prompt() {
        let scripts = scripts();
        let work = play(
            &scripts,
            &user("You are working on one sub-task of a goal.\n\nYour sub-task (copy): Write"),
        )
        .expect("turn");
        let calls = calls_of(&work);
        assert_eq!(calls[0].0, "write_file");
        assert_eq!(calls[0].1["path"], "copy.md");
        let id = "0190a4f2-0000-7000-8000-00000000abcd";
        let review = request(json!({"model": "scripted", "messages": [
            {"role": "user", "content": format!("Review one sub-task's work. Submit {{\"task_id\": \"{id}\", \"score\": 1-10}}")},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "a.md"}
        ]}));
        let calls = calls_of(&play(&scripts, &review).expect("turn"));
        assert_eq!(calls[0].0, "action_review_submit");
        assert_eq!(calls[0].1["task_id"], id);
        assert_eq!(calls[0].1["approve"], true);
    }

    #[test]
    fn choosing_scripts_must_name_scripts_that_exist() {
        let err = Scripts::from_json(
            r#"{"scripts": {"c": {"cases": [{"when": "x", "script": "gone"}], "otherwise": "c"}}}"#,
        )
        .expect_err("refused");
        assert!(err.to_string().contains("\"gone\""), "{err}");
        let err = Scripts::from_json(r#"{"scripts": {"c": {"cases": [], "else": "c"}}}"#)
            .expect_err("refused");
        assert!(err.to_string().contains("unknown field `else`"), "{err}");
        let cyclic = Scripts::from_json(r#"{"scripts": {"c": {"cases": [], "otherwise": "c"}}}"#)
            .expect("valid");
        assert_eq!(
            play(
                &cyclic,
                &request(json!({"model": "scripted:c", "messages": []}))
            )
            .expect_err("cycle")
            .status,
            500
        );
    }

    #[test]
    fn unknown_scripts_and_a_missing_default_are_404() {
        let unknown = request(json!({"model": "scripted:nope", "messages": []}));
        let refusal = play(&scripts(), &unknown).expect_err("404");
        assert_eq!(refusal.status, 404);
        assert!(refusal.message.contains("\"nope\""), "{}", refusal.message);
        let unnamed = request(json!({"model": "scripted", "messages": []}));
        assert_eq!(
            play(&Scripts::new(), &unnamed).expect_err("404").status,
            404
        );
    }

    #[test]
    fn the_step_is_the_number_of_assistant_messages() {
        let scripts = scripts();
        let first = request(json!({"model": "scripted:two",
            "messages": [{"role": "user", "content": "go"}]}));
        let turn = play(&scripts, &first).expect("turn");
        assert_eq!(turn.step, 0);
        let Answer::Message {
            text, tool_calls, ..
        } = &turn.answer
        else {
            panic!("a message");
        };
        assert_eq!(text, &None);
        assert_eq!(
            tool_calls,
            &vec![
                (
                    "call_0_0".to_owned(),
                    "shell".to_owned(),
                    r#"{"command":"ls"}"#.to_owned()
                ),
                (
                    "call_0_1".to_owned(),
                    "read_file".to_owned(),
                    r#"{"path":"a"}"#.to_owned()
                ),
            ]
        );

        let second = request(json!({"model": "scripted:two", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0_0", "type": "function", "function": {"name": "shell", "arguments": "{}"}},
                {"id": "call_0_1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0_0", "content": "exit 0"},
            {"role": "tool", "tool_call_id": "call_0_1", "content": [{"type": "text", "text": "file text"}]}
        ]}));
        let turn = play(&scripts, &second).expect("turn");
        assert_eq!(turn.step, 1);
        assert_eq!(
            text_of(&turn),
            "shell: exit 0 | file: file text | last: file text | {unknown} {"
        );

        let mut third = second.clone();
        third.messages.push(Message {
            role: "assistant".to_owned(),
            content: "done".to_owned(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
        assert_eq!(
            text_of(&play(&scripts, &third).expect("turn")),
            "script two has no step 2"
        );
    }

    #[test]
    fn usage_counts_characters_over_four_rounded_up() {
        let scripts = scripts();
        // 5 + 3 chars of content + "shell" + "{}" = 15 chars → 4 tokens.
        let req = request(json!({"model": "scripted:echo", "messages": [
            {"role": "system", "content": "héllo"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "x", "function": {"name": "shell", "arguments": "{}"}}]},
            {"role": "user", "content": "abc"}]}));
        let Answer::Message { usage, text, .. } = play(&scripts, &req).expect("turn").answer else {
            panic!("a message");
        };
        // echo is past its only step here (one assistant message).
        assert_eq!(text.as_deref(), Some("script echo has no step 1"));
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 4,
                completion_tokens: 7 // 25 chars
            }
        );
    }

    #[test]
    fn offered_tools_count_as_prompt_tokens() {
        let scripts = scripts();
        let tools = json!([{"type": "function", "function": {"name": "shell"}}]);
        let chars = tools.to_string().chars().count();
        let req = request(json!({"model": "scripted:echo", "tools": tools,
            "messages": [{"role": "user", "content": "abcd"}]}));
        let Answer::Message { usage, .. } = play(&scripts, &req).expect("turn").answer else {
            panic!("a message");
        };
        assert_eq!(usage.prompt_tokens, (chars + 4).div_ceil(4) as u64);
    }

    #[test]
    fn error_steps_keep_their_status() {
        let mut scripts = Scripts::new();
        scripts.insert("q", Script::new(vec![Step::error(429, "quota").delayed(7)]));
        let req = request(json!({"model": "scripted:q", "messages": []}));
        let turn = play(&scripts, &req).expect("turn");
        assert_eq!(turn.delay_ms, 7);
        assert_eq!(
            turn.answer,
            Answer::Error {
                status: 429,
                message: "quota".to_owned()
            }
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        for body in [
            "nope",
            r#"{"messages": []}"#,
            r#"{"model": "scripted"}"#,
            r#"{"model": "scripted", "messages": [{"content": "x"}]}"#,
        ] {
            assert_eq!(
                parse(body.as_bytes()).expect_err(body).status,
                400,
                "{body}"
            );
        }
        let req = parse(
            br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true},"temperature":0}"#,
        )
        .expect("valid");
        assert!(req.stream && req.include_usage);
    }
}
