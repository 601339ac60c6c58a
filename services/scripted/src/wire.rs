//! The OpenAI wire format: completion objects, streamed chunks, errors and
//! the model list.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::script::Scripts;
use crate::turn::{Answer, Turn, Usage, MODEL, MODEL_PREFIX};

/// Characters of tool-call arguments per streamed fragment.
const ARGUMENT_PIECE: usize = 8;

/// An OpenAI-style error answer.
pub fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (status, axum::Json(body)).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn id(turn: &Turn) -> String {
    format!("chatcmpl-scripted-{}-{}", turn.script, turn.step)
}

fn model(turn: &Turn) -> String {
    format!("{MODEL_PREFIX}{}", turn.script)
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

fn finish_reason(tool_calls: &[(String, String, String)]) -> &'static str {
    if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

/// The JSON object of a non-streamed answer.
pub fn completion_json(turn: &Turn) -> Option<Value> {
    let Answer::Message {
        text,
        tool_calls,
        usage,
    } = &turn.answer
    else {
        return None;
    };
    let mut message = json!({"role": "assistant", "content": text, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = tool_calls
            .iter()
            .map(|(id, name, arguments)| {
                json!({"id": id, "type": "function",
                       "function": {"name": name, "arguments": arguments}})
            })
            .collect();
    }
    Some(json!({
        "id": id(turn),
        "object": "chat.completion",
        "created": now(),
        "model": model(turn),
        "system_fingerprint": "scripted",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(tool_calls),
        }],
        "usage": usage_json(*usage),
    }))
}

/// A non-streamed answer (or the step's error).
pub fn completion(turn: &Turn) -> Response {
    match (&turn.answer, completion_json(turn)) {
        (_, Some(body)) => axum::Json(body).into_response(),
        (Answer::Error { status, message }, None) => error(*status, message),
        (Answer::Message { .. }, None) => error(500, "The scripted provider lost its answer."),
    }
}

/// The streamed chunks of an answer: the first one (the role) and the rest,
/// each without its `data: ` framing.
pub fn chunks(turn: &Turn, include_usage: bool) -> (Value, Vec<Value>) {
    let id = id(turn);
    let model = model(turn);
    let created = now();
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "scripted",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let Answer::Message {
        text,
        tool_calls,
        usage,
    } = &turn.answer
    else {
        return (first, Vec::new());
    };
    let mut rest = Vec::new();
    for piece in text
        .as_deref()
        .unwrap_or("")
        .split_inclusive(char::is_whitespace)
    {
        rest.push(chunk(json!({"content": piece}), None));
    }
    for (index, (call_id, name, arguments)) in tool_calls.iter().enumerate() {
        rest.push(chunk(
            json!({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        for piece in pieces(arguments, ARGUMENT_PIECE) {
            rest.push(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                None,
            ));
        }
    }
    rest.push(chunk(json!({}), Some(finish_reason(tool_calls))));
    if include_usage {
        rest.push(json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "scripted",
            "choices": [],
            "usage": usage_json(*usage),
        }));
    }
    (first, rest)
}

/// `text` in pieces of at most `size` characters.
fn pieces(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (count, (at, _)) in text.char_indices().enumerate() {
        if count > 0 && count % size == 0 {
            out.push(&text[start..at]);
            start = at;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// A streamed answer: the role chunk at once, then (after the step's delay)
/// the content, the tool calls, the finish chunk, the usage chunk when
/// asked for, and `data: [DONE]`.
pub fn stream(turn: Turn, include_usage: bool) -> Response {
    let (first, rest) = chunks(&turn, include_usage);
    let delay = Duration::from_millis(turn.delay_ms);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if tx.send(event(&first.to_string())).await.is_err() {
            return;
        }
        if !delay.is_zero() {
            // Stop waiting as soon as the client is gone.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = tx.closed() => return,
            }
        }
        for chunk in rest {
            if tx.send(event(&chunk.to_string())).await.is_err() {
                return;
            }
        }
        let _ = tx.send(event("[DONE]")).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let next = rx.recv().await?;
        Some((Ok::<_, Infallible>(next), rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /v1/models`: `scripted` and `scripted:<name>` for every script.
pub fn models(scripts: &Scripts) -> Value {
    let entry =
        |id: String| json!({"id": id, "object": "model", "created": 0, "owned_by": "scripted"});
    let mut data = Vec::new();
    if scripts.default_name().is_some() {
        data.push(entry(MODEL.to_owned()));
    }
    data.extend(
        scripts
            .names()
            .map(|name| entry(format!("{MODEL_PREFIX}{name}"))),
    );
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_respect_characters() {
        assert_eq!(pieces("", 3), Vec::<&str>::new());
        assert_eq!(pieces("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(pieces("€€€€", 2), ["€€", "€€"]);
    }
}
