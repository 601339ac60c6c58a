//! The provider over real HTTP, as an OpenAI client sees it.

use std::time::{Duration, Instant};

use scripted::{Script, Scripts, Step, ToolCall};
use serde_json::{json, Value};

async fn start(scripts: Scripts) -> (scripted::Provider, reqwest::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let provider = scripted::serve(listener, scripts).await.expect("serve");
    (provider, reqwest::Client::new())
}

async fn post(
    client: &reqwest::Client,
    provider: &scripted::Provider,
    body: Value,
) -> reqwest::Response {
    client
        .post(format!("{}/chat/completions", provider.base_url()))
        .json(&body)
        .send()
        .await
        .expect("send")
}

/// The `data:` payloads of an SSE body.
fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("an event is one data line: {event:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn demo_plays_step_by_step_and_says_it_is_scripted() {
    let (provider, client) = start(Scripts::builtin()).await;
    let mut messages = vec![
        json!({"role": "system", "content": "You are helpful."}),
        json!({"role": "user", "content": "Look around."}),
    ];

    let first: Value = post(
        &client,
        &provider,
        json!({"model": "scripted", "messages": messages}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(first["model"], "scripted:demo");
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    let call = &first["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_0_0");
    assert_eq!(call["function"]["name"], "shell");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("text")).expect("json");
    assert_eq!(args, json!({"command": "uname -a; ls /workspace"}));
    // "You are helpful." + "Look around." = 28 chars → 7 tokens.
    assert_eq!(first["usage"]["prompt_tokens"], 7);

    messages.push(first["choices"][0]["message"].clone());
    messages.push(
        json!({"role": "tool", "tool_call_id": "call_0_0", "content": "Linux box\nnotes.txt"}),
    );
    let second: Value = post(
        &client,
        &provider,
        json!({"model": "scripted", "messages": messages}),
    )
    .await
    .json()
    .await
    .expect("json");
    let call = &second["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_1_0");
    assert_eq!(call["function"]["name"], "action_memory_set");

    messages.push(second["choices"][0]["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": "call_1_0", "content": "saved"}));
    let third: Value = post(
        &client,
        &provider,
        json!({"model": "scripted", "messages": messages}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(third["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        third["choices"][0]["message"]["content"],
        "Here is what the shell said:\nLinux box\nnotes.txt\nI noted that in my memory (saved)."
    );
    assert!(third["choices"][0]["message"].get("tool_calls").is_none());

    messages.push(third["choices"][0]["message"].clone());
    let past: Value = post(
        &client,
        &provider,
        json!({"model": "scripted", "messages": messages}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(
        past["choices"][0]["message"]["content"],
        "script demo has no step 3"
    );
    provider.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn streams_text_tool_calls_and_usage() {
    let mut scripts = Scripts::new();
    scripts.insert(
        "s",
        Script::new(vec![
            Step::tool_calls(vec![
                ToolCall::new(
                    "write_file",
                    json!({"path": "a/b.txt", "content": "hello, world"}),
                ),
                ToolCall::new("shell", json!({"command": "ls"})),
            ]),
            Step::text("All done, {last_tool}!"),
        ]),
    );
    let (provider, client) = start(scripts).await;

    let response = post(
        &client,
        &provider,
        json!({"model": "scripted:s", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "go"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("ascii"),
        "text/event-stream"
    );
    let events = sse_events(&response.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).expect("a JSON chunk"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["model"] == "scripted:s" && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    // Reassemble the tool calls from their fragments, as a client does.
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for chunk in &chunks {
        for fragment in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = fragment["index"].as_u64().expect("index") as usize;
            if calls.len() <= index {
                calls.push(Default::default());
            }
            if let Some(id) = fragment["id"].as_str() {
                calls[index].0 = id.to_owned();
            }
            if let Some(name) = fragment["function"]["name"].as_str() {
                calls[index].1.push_str(name);
            }
            if let Some(args) = fragment["function"]["arguments"].as_str() {
                calls[index].2.push_str(args);
            }
        }
    }
    assert_eq!(
        calls,
        vec![
            (
                "call_0_0".to_owned(),
                "write_file".to_owned(),
                r#"{"content":"hello, world","path":"a/b.txt"}"#.to_owned()
            ),
            (
                "call_0_1".to_owned(),
                "shell".to_owned(),
                r#"{"command":"ls"}"#.to_owned()
            ),
        ]
    );
    let fragments = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"][0]["index"] == 0)
        .count();
    assert!(fragments > 2, "arguments arrive in several fragments");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(finish["usage"], Value::Null);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    // "go" → 1; names + arguments = 10 + 43 + 5 + 16 = 74 chars → 19.
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 19, "total_tokens": 20})
    );

    let response = post(
        &client,
        &provider,
        json!({"model": "scripted:s", "stream": true, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "call_0_0", "function": {"name": "shell", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0_0", "content": "ok"}]}),
    )
    .await;
    let events = sse_events(&response.text().await.expect("body"));
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str::<Value>(event).expect("json"))
        .inspect(|chunk| assert!(chunk.get("usage").is_none(), "no usage unless asked"))
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "All done, ok!");
    let pieces = events
        .iter()
        .filter(|e| e.contains("\"content\":\""))
        .count();
    assert!(pieces >= 3, "text arrives in several deltas: {events:?}");
    provider.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn error_steps_answer_with_their_status_streamed_or_not() {
    let mut scripts = Scripts::new();
    scripts.insert(
        "quota",
        Script::new(vec![Step::error(429, "You exceeded your current quota.")]),
    );
    let (provider, client) = start(scripts).await;
    for stream in [false, true] {
        let response = post(
            &client,
            &provider,
            json!({"model": "scripted:quota", "stream": stream, "messages": []}),
        )
        .await;
        assert_eq!(response.status(), 429);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["message"], "You exceeded your current quota.");
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }
    let response = post(
        &client,
        &provider,
        json!({"model": "scripted:none", "messages": []}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let response = client
        .post(format!("{}/chat/completions", provider.base_url()))
        .body("{")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(body["error"]["message"]
        .as_str()
        .expect("text")
        .starts_with("The request body is not JSON"));
}

#[tokio::test]
async fn delays_hold_the_answer() {
    let mut scripts = Scripts::new();
    scripts.insert("slow", Script::new(vec![Step::text("late").delayed(300)]));
    let (provider, client) = start(scripts).await;
    for stream in [false, true] {
        let started = Instant::now();
        let response = post(
            &client,
            &provider,
            json!({"model": "scripted:slow", "stream": stream, "messages": []}),
        )
        .await;
        let body = response.text().await.expect("body");
        assert!(started.elapsed() >= Duration::from_millis(300), "{stream}");
        assert!(body.contains("late"), "{body}");
    }
}

#[tokio::test]
async fn lists_the_scripts_as_models() {
    let (provider, client) = start(Scripts::builtin()).await;
    let models: Value = client
        .get(format!("{}/models", provider.base_url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    let mut want = vec!["scripted".to_string()];
    want.extend(Scripts::builtin().names().map(|n| format!("scripted:{n}")));
    assert_eq!(ids, want);
    assert!(ids.contains(&"scripted:demo.plan"), "{ids:?}");
    let missing = client
        .get(format!("http://{}/v2/nothing", provider.addr()))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), 404);
}
