//! The OpenAI chat-completions format, as far as agentd speaks it: the
//! request body, a whole answer, and a streamed answer assembled from its
//! server-sent events (text deltas and tool-call fragments).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use subjects::agent::TokenUsage;

/// The most text plus tool-call arguments accepted in one answer.
pub const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    /// The function name exactly as the model wrote it.
    pub name: String,
    /// The model's JSON arguments text (not checked here).
    pub arguments: String,
}

/// One model answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    /// Tokens as reported (zero when the answer carried no usage).
    pub usage: TokenUsage,
}

impl Reply {
    /// The assistant message to append to the conversation.
    pub fn message(&self) -> Value {
        let mut message = json!({
            "role": "assistant",
            "content": if self.text.is_empty() { Value::Null } else { Value::from(self.text.as_str()) },
        });
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self
                .tool_calls
                .iter()
                .map(|call| {
                    json!({"id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": call.arguments}})
                })
                .collect();
        }
        message
    }
}

/// The request body.
pub fn request(model: &str, messages: &[Value], tools: &[Value], stream: bool) -> Value {
    let mut body = json!({"model": model, "messages": messages, "stream": stream});
    if !tools.is_empty() {
        body["tools"] = Value::from(tools.to_vec());
    }
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// A tool message answering `call_id`.
pub fn tool_message(call_id: &str, content: &str) -> Value {
    json!({"role": "tool", "tool_call_id": call_id, "content": content})
}

fn usage(value: Option<&Value>) -> TokenUsage {
    let count = |name: &str| {
        value
            .and_then(|usage| usage.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    TokenUsage {
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
    }
}

/// An id for a call the model left without one.
fn fallback_id(turn: u32, index: usize) -> String {
    format!("call_agentd_{turn}_{index}")
}

/// A whole (non-streamed) answer: `choices[0].message` and `usage`.
pub fn parse_completion(body: &[u8], turn: u32) -> Result<Reply, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| format!("the model's answer is not JSON: {err}."))?;
    let message = value
        .pointer("/choices/0/message")
        .ok_or("the model's answer has no choices[0].message.")?;
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let tool_calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(index, call)| {
                    let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str);
                    ToolCall {
                        id: text("/id")
                            .filter(|id| !id.is_empty())
                            .map_or_else(|| fallback_id(turn, index), str::to_owned),
                        name: text("/function/name").unwrap_or_default().to_owned(),
                        arguments: text("/function/arguments").unwrap_or_default().to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Reply {
        text,
        tool_calls,
        usage: usage(value.get("usage")),
    })
}

/// Assembles a streamed answer from the raw bytes of its event stream.
#[derive(Debug, Default)]
pub struct Stream {
    turn: u32,
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The `data` lines of the event being read.
    data: Vec<String>,
    text: String,
    calls: BTreeMap<u64, ToolCall>,
    usage: TokenUsage,
    size: usize,
    done: bool,
}

impl Stream {
    pub fn new(turn: u32) -> Stream {
        Stream {
            turn,
            ..Stream::default()
        }
    }

    /// Whether `data: [DONE]` arrived.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds bytes; returns the text deltas they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut deltas = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_done(&line, &mut deltas)?;
        }
        Ok(deltas)
    }

    fn line_done(&mut self, line: &[u8], deltas: &mut Vec<String>) -> Result<(), String> {
        if line.is_empty() {
            return self.event_done(deltas);
        }
        if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            self.data.push(String::from_utf8_lossy(data).into_owned());
        }
        // Comments (`:`), `event:`, `id:` and `retry:` lines carry nothing here.
        Ok(())
    }

    fn event_done(&mut self, deltas: &mut Vec<String>) -> Result<(), String> {
        if self.data.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.data).join("\n");
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if self.done {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(&data)
            .map_err(|err| format!("the model's stream sent an event that is not JSON: {err}."))?;
        if let Some(error) = chunk.get("error") {
            let sentence = error
                .as_str()
                .or_else(|| error.get("message").and_then(Value::as_str))
                .unwrap_or("the model's stream reported an error without a message.");
            return Err(sentence.to_owned());
        }
        if let Some(found) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.usage = usage(Some(found));
        }
        let Some(delta) = chunk.pointer("/choices/0/delta") else {
            return Ok(());
        };
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                self.grow(text.len())?;
                self.text.push_str(text);
                deltas.push(text.to_owned());
            }
        }
        for fragment in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let position = self.calls.len() as u64;
            let index = fragment
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position);
            let text = |pointer: &str| fragment.pointer(pointer).and_then(Value::as_str);
            let grow = text("/function/name").map_or(0, str::len)
                + text("/function/arguments").map_or(0, str::len);
            self.grow(grow)?;
            let turn = self.turn;
            let call = self.calls.entry(index).or_insert_with(|| ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
            if let Some(id) = text("/id").filter(|id| !id.is_empty()) {
                call.id = id.to_owned();
            }
            if let Some(name) = text("/function/name") {
                call.name.push_str(name);
            }
            if let Some(arguments) = text("/function/arguments") {
                call.arguments.push_str(arguments);
            }
            if call.id.is_empty() {
                call.id = fallback_id(turn, index as usize);
            }
        }
        Ok(())
    }

    fn grow(&mut self, by: usize) -> Result<(), String> {
        self.size += by;
        if self.size > MAX_REPLY_BYTES {
            return Err(format!(
                "the model's answer is longer than {MAX_REPLY_BYTES} bytes."
            ));
        }
        Ok(())
    }

    /// The assembled answer, once the stream has ended.
    pub fn finish(mut self) -> Result<(Reply, Vec<String>), String> {
        let mut deltas = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut deltas)?;
        }
        self.event_done(&mut deltas)?;
        Ok((
            Reply {
                text: self.text,
                tool_calls: self.calls.into_values().collect(),
                usage: self.usage,
            },
            deltas,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stream: &mut Stream, text: &str, split: usize) -> Vec<String> {
        text.as_bytes()
            .chunks(split)
            .flat_map(|piece| stream.push(piece).expect("valid"))
            .collect()
    }

    #[test]
    fn assembles_text_and_tool_calls_across_any_split() {
        let body = concat!(
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Let me \"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"look.\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"shell\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"comm\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"name\":\"read_file\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"and\\\":\\\"ls\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17}}\n\n",
            "data: [DONE]\n\n",
        );
        for split in [1, 3, 7, body.len()] {
            let mut stream = Stream::new(2);
            let deltas = feed(&mut stream, body, split);
            assert!(stream.done());
            let (reply, rest) = stream.finish().expect("complete");
            assert!(rest.is_empty());
            assert_eq!(deltas, ["Let me ", "look."], "split {split}");
            assert_eq!(reply.text, "Let me look.");
            assert_eq!(
                reply.tool_calls,
                vec![
                    ToolCall {
                        id: "c1".to_owned(),
                        name: "shell".to_owned(),
                        arguments: r#"{"command":"ls"}"#.to_owned()
                    },
                    ToolCall {
                        id: "call_agentd_2_1".to_owned(),
                        name: "read_file".to_owned(),
                        arguments: "{}".to_owned()
                    },
                ]
            );
            assert_eq!(
                reply.usage,
                TokenUsage {
                    prompt_tokens: 12,
                    completion_tokens: 5
                }
            );
        }
    }

    #[test]
    fn a_stream_without_a_final_blank_line_still_ends() {
        let mut stream = Stream::new(0);
        stream
            .push(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}")
            .expect("valid");
        let (reply, deltas) = stream.finish().expect("complete");
        assert_eq!(deltas, ["hi"]);
        assert_eq!(reply.text, "hi");
    }

    #[test]
    fn an_error_event_fails_the_stream() {
        let mut stream = Stream::new(0);
        let err = stream
            .push(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n")
            .expect_err("an error");
        assert_eq!(err, "overloaded");
        let mut stream = Stream::new(0);
        assert!(stream.push(b"data: {nope\n\n").is_err());
    }

    #[test]
    fn parses_a_whole_answer() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"x","type":"function","function":{"name":"write_file","arguments":"{}"}},
                          {"type":"function","function":{"name":"shell","arguments":"{}"}}]}}],
            "usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let reply = parse_completion(body, 5).expect("valid");
        assert_eq!(reply.text, "");
        assert_eq!(reply.tool_calls[0].id, "x");
        assert_eq!(reply.tool_calls[1].id, "call_agentd_5_1");
        assert_eq!(reply.usage.completion_tokens, 4);
        assert_eq!(
            reply.message()["tool_calls"][1]["function"]["name"],
            "shell"
        );
        assert_eq!(reply.message()["content"], Value::Null);
        assert!(parse_completion(b"{}", 0).is_err());
        assert!(parse_completion(b"<html>", 0).is_err());
    }

    #[test]
    fn the_request_asks_for_usage_when_streaming() {
        let messages = [json!({"role": "user", "content": "hi"})];
        let body = request("m", &messages, &[], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("tools").is_none());
        let body = request("m", &messages, &[json!({"type": "function"})], false);
        assert!(body.get("stream_options").is_none());
        assert_eq!(body["tools"][0]["type"], "function");
    }
}
