//! `POST /v1/chat/completions`: forwarded to the provider with its key,
//! metered, and refused once the run is over quota.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::backend::{AuditOutcome, BackendError, BoxFuture, UsageRecord, MODEL_ACTION};
use crate::reply::{self, error, one_line};
use crate::run::{Charge, DailyUsage, Run};
use crate::{Inner, Price, Shared};

/// How long a streamed answer whose reader went away is still read, so that
/// its usage is counted.
const DRAIN_FOR: Duration = Duration::from_secs(60);
/// Longest SSE line kept while looking for usage.
const MAX_SSE_LINE: usize = 4 * 1024 * 1024;

#[derive(Deserialize, Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Usage {
    #[serde(default)]
    pub(crate) prompt_tokens: u64,
    #[serde(default)]
    pub(crate) completion_tokens: u64,
}

/// The one field of an answer (or a streamed chunk) the gateway reads.
#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

pub(crate) async fn completions(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let started = Instant::now();
    let Some(run) = shared.current() else {
        return reply::no_run();
    };
    if let Some(reason) = run.over_quota() {
        return reply::over_quota(reason);
    }
    let gw = &shared.gw;
    let bytes = match reply::read_body(body, gw.limits.max_request_bytes).await {
        Ok(b) => b,
        Err((status, sentence)) => return error(status, sentence),
    };
    let prepared = match prepare(gw, &bytes) {
        Ok(p) => p,
        Err(sentence) => return error(StatusCode::BAD_REQUEST, sentence),
    };
    // The role's own model, and nothing else.
    if prepared.model != run.ctx.model {
        let sentence = format!(
            "role {} may call only its model {}, not {}",
            run.ctx.role,
            run.ctx.model,
            one_line(&prepared.model, 100)
        );
        run.audit(
            gw,
            MODEL_ACTION,
            Some(one_line(&prepared.model, 100)),
            AuditOutcome::Denied,
            &sentence,
        );
        return error(StatusCode::FORBIDDEN, sentence);
    }
    let price = match gw.price(&prepared.provider_model, &prepared.model) {
        Some(p) => p,
        None if run.ctx.quotas.has_cost() => {
            let sentence = format!(
                "model {} has no price (COLONY_MODEL_PRICES) and role {} has a cost quota, so its calls cannot be metered; the operator must give it a price",
                prepared.provider_model, run.ctx.role
            );
            run.audit(
                gw,
                MODEL_ACTION,
                Some(prepared.provider_model.clone()),
                AuditOutcome::Denied,
                &sentence,
            );
            return error(StatusCode::FORBIDDEN, sentence);
        }
        None => {
            gw.warn_once(format!("price:{}", prepared.provider_model), || {
                format!(
                    "gateway: no price for model {}; its calls are metered at cost 0",
                    prepared.provider_model
                )
            });
            Price::default()
        }
    };
    // A daily quota: one choice per call; the prompt is charged to the day
    // before it is sent, and the completion may be no longer than what is
    // left of the day (every length field clamped, or max_tokens set).
    let daily = run.ctx.quotas.has_daily();
    let (mut charged_tokens, mut charged_cost, mut day) = (0u64, 0.0, None);
    let mut cap = None;
    if daily {
        if prepared.choices > 1 {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "role {} has a daily quota, so a call may ask for one choice, not n={}",
                    run.ctx.role, prepared.choices
                ),
            );
        }
        let tokens = prepared.prompt_tokens;
        let cost = price.cost(tokens, 0);
        let backend = gw.backend.as_ref();
        match run.charge_day(backend, tokens as i64, cost, None).await {
            Charge::Fits(totals, on) => {
                let q = &run.ctx.quotas;
                let by_tokens = q
                    .tokens_per_day
                    .map(|max| max.saturating_sub(totals.tokens));
                let by_cost = q.cost_usd_per_day.and_then(|max| {
                    let left = (max - totals.cost_usd).max(0.0);
                    (price.output_usd_per_mtok > 0.0)
                        .then(|| (left * 1_000_000.0 / price.output_usd_per_mtok) as u64)
                });
                let left = match (by_tokens, by_cost) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if left == Some(0) {
                    let reason = crate::run::crossed_day(
                        q,
                        &crate::run::DailyUsage {
                            tokens: totals.tokens.max(q.tokens_per_day.unwrap_or(0)) + 1,
                            cost_usd: totals.cost_usd,
                        },
                        &run.whose(),
                    )
                    .unwrap_or_else(|| {
                        format!(
                            "quota_exceeded: cost_usd_per_day: nothing of today's budget is left for an answer ({})",
                            run.whose()
                        )
                    });
                    // Not sent: give the prompt's charge back.
                    give_back(gw, &run, tokens, cost, on).await;
                    run.exceed(reason.clone());
                    return reply::over_quota(&reason);
                }
                (charged_tokens, charged_cost, day, cap) = (tokens, cost, Some(on), left);
            }
            Charge::Crossed(reason, on) => {
                // Not sent: give the charge back.
                give_back(gw, &run, tokens, cost, on).await;
                return reply::over_quota(&reason);
            }
            // Nothing was charged: nothing to give back.
            Charge::Failed(reason) => return reply::over_quota(&reason),
        }
    }
    let stream = prepared.stream;
    let (model, provider_model, prompt_tokens) = (
        prepared.model.clone(),
        prepared.provider_model.clone(),
        prepared.prompt_tokens,
    );
    let body = match prepared.body(gw, cap) {
        Ok(b) => b,
        Err(sentence) => return error(StatusCode::BAD_REQUEST, sentence),
    };

    let mut upstream = gw
        .provider
        .post(gw.chat_url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    if let Some(auth) = &gw.auth {
        upstream = upstream.header(AUTHORIZATION, auth.clone());
    }
    if stream {
        upstream = upstream.header(ACCEPT, HeaderValue::from_static("text/event-stream"));
    }
    let resp = match upstream.send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the model provider could not be reached: {}",
                    gw.scrub(&error_chain(&e.without_url()))
                ),
            )
        }
    };
    let status = resp.status();
    if !status.is_success() {
        return provider_refusal(gw, resp).await;
    }

    let call = Call {
        run,
        shared: shared.clone(),
        model,
        provider_model,
        prompt_tokens,
        started,
        price,
        daily,
        day,
        charged_tokens,
        charged_cost,
    };
    let is_sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if is_sse {
        let stream = MeteredStream {
            inner: Some(resp.bytes_stream().boxed()),
            scan: SseScan::default(),
            call: Some(call),
            held: None,
            ending: false,
        };
        let mut out = Response::new(Body::from_stream(stream));
        let headers = out.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return out;
    }

    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let answer = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the model provider's answer broke off: {}",
                    gw.scrub(&error_chain(&e.without_url()))
                ),
            )
        }
    };
    let usage = serde_json::from_slice::<WithUsage>(&answer)
        .ok()
        .and_then(|w| w.usage);
    call.finish(usage, (answer.len() as u64).div_ceil(4), false);
    reply::bytes_with(status, content_type, answer)
}

/// What the gateway needs of the request, and the request itself (its top
/// level parsed once, values raw), to send re-serialised: what the
/// provider receives is exactly what was checked (one `model`, even if the
/// caller sent two).
struct Prepared {
    model: String,
    provider_model: String,
    stream: bool,
    /// Estimated prompt tokens: a token per four characters of the
    /// messages' text and tool calls, and of the tool definitions (what is
    /// charged to the day before the call is sent).
    prompt_tokens: u64,
    /// Choices asked for (`n`).
    choices: u64,
    top: BTreeMap<String, Box<RawValue>>,
}

/// The fields that bound a completion's length.
const MAX_TOKENS_FIELDS: [&str; 2] = ["max_tokens", "max_completion_tokens"];

impl Prepared {
    /// The body to send: the model mapped, a stream asked for its usage,
    /// and, with `cap`, every completion-length field at most `cap` (set
    /// when absent).
    fn body(mut self, gw: &Inner, cap: Option<u64>) -> Result<Bytes, String> {
        if let Some(pm) = gw.models.get(&self.model) {
            self.top.insert(
                "model".into(),
                serde_json::value::to_raw_value(pm).map_err(|e| e.to_string())?,
            );
        }
        if self.stream {
            let mut options = match self.top.get("stream_options") {
                None => serde_json::Map::new(),
                Some(raw) => serde_json::from_str::<
                    Option<serde_json::Map<String, serde_json::Value>>,
                >(raw.get())
                .map_err(|_| {
                    "the field \"stream_options\" of the chat completion request must be an object"
                })?
                .unwrap_or_default(),
            };
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            self.top.insert(
                "stream_options".into(),
                serde_json::value::to_raw_value(&options).map_err(|e| e.to_string())?,
            );
        }
        if let Some(cap) = cap {
            let mut any = false;
            for field in MAX_TOKENS_FIELDS {
                if let Some(raw) = self.top.get(field) {
                    any = true;
                    let asked = serde_json::from_str::<u64>(raw.get()).unwrap_or(u64::MAX);
                    self.top.insert(
                        field.into(),
                        serde_json::value::to_raw_value(&asked.min(cap))
                            .map_err(|e| e.to_string())?,
                    );
                }
            }
            if !any {
                self.top.insert(
                    "max_tokens".into(),
                    serde_json::value::to_raw_value(&cap).map_err(|e| e.to_string())?,
                );
            }
        }
        serde_json::to_vec(&self.top)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }
}

/// Reads the top level of the request once (values stay raw, unparsed).
fn prepare(gw: &Inner, bytes: &[u8]) -> Result<Prepared, String> {
    let top: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(bytes)
        .map_err(|e| format!("the chat completion request is not a JSON object: {e}"))?;
    let model: String = top
        .get("model")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .filter(|m: &String| !m.is_empty())
        .ok_or("the chat completion request names no model (a non-empty string field \"model\")")?;
    let stream = match top.get("stream") {
        None => false,
        Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
            .map_err(|_| {
                "the field \"stream\" of the chat completion request must be true or false"
            })?
            .unwrap_or(false),
    };
    let choices = match top.get("n") {
        None => 1,
        Some(raw) => serde_json::from_str::<Option<u64>>(raw.get())
            .map_err(|_| "the field \"n\" of the chat completion request must be a number")?
            .unwrap_or(1),
    };
    let tools_chars = top.get("tools").map_or(0, |raw| raw.get().chars().count());
    let prompt_tokens = (top
        .get("messages")
        .and_then(|raw| serde_json::from_str::<Vec<Message>>(raw.get()).ok())
        .map(|m| prompt_chars(&m))
        .unwrap_or(bytes.len())
        + tools_chars)
        .div_ceil(4) as u64;
    Ok(Prepared {
        provider_model: gw
            .models
            .get(&model)
            .cloned()
            .unwrap_or_else(|| model.clone()),
        model,
        stream,
        prompt_tokens,
        choices,
        top,
    })
}

/// A chat message, as far as its size goes.
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<serde_json::Value>,
    #[serde(default)]
    tool_calls: Vec<serde_json::Value>,
}

/// Characters of the messages' text (a string, or parts with `text`) and
/// of their tool calls' names and arguments.
fn prompt_chars(messages: &[Message]) -> usize {
    fn text(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.chars().count(),
            serde_json::Value::Array(parts) => {
                parts.iter().map(|p| p.get("text").map_or(0, text)).sum()
            }
            _ => 0,
        }
    }
    messages
        .iter()
        .map(|m| {
            m.content.as_ref().map_or(0, text)
                + m.tool_calls
                    .iter()
                    .filter_map(|c| c.get("function"))
                    .map(|f| f.get("name").map_or(0, text) + f.get("arguments").map_or(0, text))
                    .sum::<usize>()
        })
        .sum()
}

/// A provider's non-2xx answer: 4xx passes with its message in one
/// sentence, anything else is 502.
async fn provider_refusal(gw: &Inner, resp: reqwest::Response) -> Response {
    let status = resp.status();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= 64 * 1024 {
            break;
        }
    }
    let message = gw.scrub(&one_line(&provider_message(&body), 300));
    let code = status.as_u16();
    if status.is_client_error() {
        let sentence = if message.is_empty() {
            format!("the model provider refused the request with {code}")
        } else {
            format!("the model provider refused the request with {code}: {message}")
        };
        error(status, sentence)
    } else {
        let sentence = if message.is_empty() {
            format!("the model provider failed with {code}")
        } else {
            format!("the model provider failed with {code}: {message}")
        };
        error(StatusCode::BAD_GATEWAY, sentence)
    }
}

/// The message of an OpenAI-style error body (`{"error": {"message": …}}`,
/// `{"error": "…"}`, `{"message": …}`, `{"detail": …}`), else its text.
fn provider_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let found = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"));
        if let Some(found) = found {
            return match found.as_str() {
                Some(s) => s.to_string(),
                None => found.to_string(),
            };
        }
    }
    String::from_utf8_lossy(body).into_owned()
}

/// An error and its causes on one line of at most 300 characters.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    one_line(&subjects::text::error_chain(e), 300)
}

impl Inner {
    /// `text` with the provider key (should a provider echo it) cut out.
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if text.contains(key.as_str()) => text.replace(key.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }
}

/// One model call, metered when its answer ends.
struct Call {
    run: Arc<Run>,
    shared: Arc<Shared>,
    model: String,
    provider_model: String,
    /// Estimated prompt tokens (see [`Prepared::prompt_tokens`]).
    prompt_tokens: u64,
    started: Instant,
    price: Price,
    /// The run has a daily quota: the call is charged to the day as it
    /// goes (prompt first, then chunk by chunk), and settled at its end.
    daily: bool,
    /// The day the call's charges go to (the day its prompt was charged
    /// on, even when it ends after midnight).
    day: Option<time::Date>,
    /// What was charged to the day so far (estimates).
    charged_tokens: u64,
    charged_cost: f64,
}

impl Call {
    /// Charges `tokens` more to the day (a streamed chunk's).
    fn charge(
        &self,
        tokens: u64,
        cost: f64,
    ) -> BoxFuture<'static, Result<(DailyUsage, time::Date), BackendError>> {
        let (backend, run, day) = (self.shared.gw.backend.clone(), self.run.clone(), self.day);
        Box::pin(async move { backend.charge_day(&run.ctx, tokens as i64, cost, day).await })
    }

    /// Counts the call. Without usage from the provider the tokens are
    /// estimated (the prompt's characters, and `answer_tokens`: what the
    /// answer carried), so that quotas still hold. With a daily quota, the
    /// day is settled: what was charged as estimates is replaced by what
    /// the call really used.
    fn finish(self, usage: Option<Usage>, answer_tokens: u64, streamed: bool) {
        let gw = &self.shared.gw;
        let (usage, estimated) = match usage {
            Some(u) => (u, false),
            None => {
                gw.warn_once(format!("usage:{}", self.provider_model), || {
                    format!(
                        "gateway: the provider reported no usage for model {}; tokens are estimated from bytes",
                        self.provider_model
                    )
                });
                (
                    Usage {
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: answer_tokens,
                    },
                    true,
                )
            }
        };
        let cost = self
            .price
            .cost(usage.prompt_tokens, usage.completion_tokens);
        self.run
            .meter(usage.prompt_tokens, usage.completion_tokens, cost);
        if self.daily {
            let tokens =
                (usage.prompt_tokens + usage.completion_tokens) as i64 - self.charged_tokens as i64;
            let cost = cost - self.charged_cost;
            let (backend, run, day) = (gw.backend.clone(), self.run.clone(), self.day);
            self.run.writes.spawn(async move {
                run.charge_day(backend.as_ref(), tokens, cost, day).await;
            });
        }
        let ctx = &self.run.ctx;
        self.run.record_usage(
            gw,
            UsageRecord {
                at: SystemTime::now(),
                tenant: ctx.tenant.clone(),
                employee_id: ctx.employee_id,
                task_id: ctx.task_id,
                run_id: ctx.run_id,
                role: ctx.role.clone(),
                model: self.model,
                provider_model: self.provider_model,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cost_usd: cost,
                estimated,
                streamed,
                duration: self.started.elapsed(),
            },
        );
    }
}

/// Gives a prompt's charge back to the day it went to, on a task of its
/// own: a crossing stops the run, and the run's end may abort this handler
/// before an awaited give-back would be written.
async fn give_back(gw: &Inner, run: &Arc<Run>, tokens: u64, cost: f64, day: time::Date) {
    let (backend, run) = (gw.backend.clone(), run.clone());
    let written = tokio::spawn(async move {
        let r = backend
            .charge_day(&run.ctx, -(tokens as i64), -cost, Some(day))
            .await;
        if let Err(e) = r {
            tracing::error!(run = %run.ctx.run_id, "gateway: a refused call's charge was not given back: {e}");
        }
    });
    let _ = written.await;
}

/// Finds the `usage` object in a server-sent-event stream, line by line,
/// across chunk boundaries, without parsing chunks that have none.
#[derive(Default)]
pub(crate) struct SseScan {
    partial: Vec<u8>,
    /// The current line grew past [`MAX_SSE_LINE`]; skip to its end.
    skipping: bool,
    pub(crate) usage: Option<Usage>,
    /// Bytes of `data:` payloads (the estimate's basis without usage).
    pub(crate) data_bytes: u64,
    /// Estimated tokens of what the answer carried so far (its text and
    /// tool-call arguments, a token per four characters): what a chunk is
    /// charged to the day until the call is settled with the real usage.
    pub(crate) tokens: u64,
}

/// The tokens a streamed chunk carries, estimated from its delta's text
/// and tool-call arguments (a token per four characters, at least one for a
/// chunk that carries anything).
fn delta_tokens(data: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        delta: Option<Delta>,
    }
    #[derive(Deserialize)]
    struct Delta {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        tool_calls: Vec<ToolCall>,
    }
    #[derive(Deserialize)]
    struct ToolCall {
        #[serde(default)]
        function: Option<Function>,
    }
    #[derive(Deserialize)]
    struct Function {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        arguments: Option<String>,
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
        // Not the shape we know: charge it by its size.
        return (data.len() as u64).div_ceil(4);
    };
    let chars: usize = chunk
        .choices
        .iter()
        .filter_map(|c| c.delta.as_ref())
        .map(|d| {
            d.content.as_deref().map_or(0, |t| t.chars().count())
                + d.tool_calls
                    .iter()
                    .filter_map(|t| t.function.as_ref())
                    .map(|f| {
                        f.name.as_deref().map_or(0, str::len)
                            + f.arguments.as_deref().map_or(0, |a| a.chars().count())
                    })
                    .sum::<usize>()
        })
        .sum();
    (chars as u64).div_ceil(4)
}

impl SseScan {
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&chunk[..i], &chunk[i + 1..]);
            chunk = rest;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                whole.clear();
                self.partial = whole;
            }
        }
        if !self.skipping && !chunk.is_empty() {
            if self.partial.len() + chunk.len() > MAX_SSE_LINE {
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(chunk);
            }
        }
    }

    /// The stream ended: a last line without its newline still counts.
    pub(crate) fn end(&mut self) {
        if !self.partial.is_empty() && !self.skipping {
            let last = std::mem::take(&mut self.partial);
            self.line(&last);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        self.data_bytes += data.len() as u64;
        if data != b"[DONE]" {
            self.tokens += delta_tokens(data);
        }
        if has_usage_object(data) {
            if let Ok(WithUsage { usage: Some(u) }) = serde_json::from_slice(data) {
                self.usage = Some(u);
            }
        }
    }
}

/// True when `data` holds `"usage"` followed by `:` and an object (not
/// `null`, which OpenAI sends in every chunk but the last).
fn has_usage_object(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut from = 0;
    while let Some(i) = data[from..].windows(KEY.len()).position(|w| w == KEY) {
        let after = &data[from + i + KEY.len()..];
        let mut rest = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        from += i + KEY.len();
    }
    false
}

/// The provider's event stream, passed through chunk by chunk while its
/// usage is picked out. When the reader goes away before the end, the rest
/// is read in the background so that the call is still metered. With a
/// daily quota, each chunk is charged to the day before it is passed on;
/// the chunk that crosses the quota is the last one passed.
struct MeteredStream {
    inner: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    scan: SseScan,
    call: Option<Call>,
    /// A chunk waiting for its charge to be answered, with what it charges.
    held: Option<Held>,
    /// The day's quota was crossed: end after the chunk that crossed it.
    ending: bool,
}

struct Held {
    chunk: Bytes,
    charge: BoxFuture<'static, Result<(DailyUsage, time::Date), BackendError>>,
    tokens: u64,
    cost: f64,
}

impl MeteredStream {
    fn done(&mut self) {
        self.inner = None;
        if let Some(call) = self.call.take() {
            self.scan.end();
            call.finish(self.scan.usage, self.scan.tokens, true);
        }
    }

    /// The answer to a held chunk's charge: counts it, and ends the stream
    /// after this chunk when the day is over its quota.
    fn charged(
        &mut self,
        answer: Result<(DailyUsage, time::Date), BackendError>,
        tokens: u64,
        cost: f64,
    ) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        call.charged_tokens += tokens;
        call.charged_cost += cost;
        let reason = match answer {
            Ok((day, _)) => crate::run::crossed_day(&call.run.ctx.quotas, &day, &call.run.whose()),
            Err(e) => {
                tracing::error!(run = %call.run.ctx.run_id, "gateway: the daily budget could not be charged: {e}");
                Some("quota_exceeded: the daily budget could not be checked (the database did not answer); the run stops rather than spend unmetered".to_string())
            }
        };
        if let Some(reason) = reason {
            call.run.exceed(reason);
            self.ending = true;
        }
    }
}

impl Stream for MeteredStream {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(held) = this.held.as_mut() {
                let answer = match held.charge.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(a) => a,
                };
                let Some(held) = this.held.take() else {
                    return Poll::Ready(None);
                };
                this.charged(answer, held.tokens, held.cost);
                return Poll::Ready(Some(Ok(held.chunk)));
            }
            if this.ending {
                this.done();
                return Poll::Ready(None);
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let before = this.scan.tokens;
                    this.scan.feed(&chunk);
                    let tokens = this.scan.tokens - before;
                    match this.call.as_ref() {
                        Some(call) if call.daily && tokens > 0 => {
                            let cost = call.price.cost(0, tokens);
                            this.held = Some(Held {
                                chunk,
                                charge: call.charge(tokens, cost),
                                tokens,
                                cost,
                            });
                        }
                        _ => return Poll::Ready(Some(Ok(chunk))),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!("gateway: the provider's stream broke off: {e}");
                    this.done();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done();
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        let (Some(mut inner), Some(call)) = (self.inner.take(), self.call.take()) else {
            return;
        };
        let mut scan = std::mem::take(&mut self.scan);
        let run = call.run.clone();
        let drain = async move {
            let _ = tokio::time::timeout(DRAIN_FOR, async {
                while let Some(Ok(chunk)) = inner.next().await {
                    scan.feed(&chunk);
                }
            })
            .await;
            scan.end();
            call.finish(scan.usage, scan.tokens, true);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {
                run.writes.spawn(drain);
            }
            Err(_) => tracing::warn!(
                run = %run.ctx.run_id,
                "gateway: a streamed answer was dropped outside the runtime; its usage is lost"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_found_across_chunk_boundaries_and_null_is_skipped() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\": {\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\r\n\r\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for split in 0..stream.len() {
            let mut scan = SseScan::default();
            scan.feed(&stream[..split]);
            scan.feed(&stream[split..]);
            scan.end();
            assert_eq!(
                scan.usage,
                Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_last_line_without_newline_counts() {
        let mut scan = SseScan::default();
        scan.feed(b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}");
        assert_eq!(scan.usage, None);
        scan.end();
        assert_eq!(
            scan.usage,
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn chunks_are_estimated_from_their_text_and_arguments() {
        assert_eq!(
            delta_tokens(br#"{"choices":[{"delta":{"content":"Hello there"}}]}"#),
            3
        );
        assert_eq!(
            delta_tokens(br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            0
        );
        assert_eq!(
            delta_tokens(br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"shell","arguments":"{\"c"}}]}}]}"#),
            2
        );
        assert_eq!(
            delta_tokens(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#),
            0
        );
        assert_eq!(delta_tokens(b"not json at all"), 4);
    }

    #[test]
    fn usage_detection() {
        assert!(has_usage_object(br#"{"usage" : {"prompt_tokens":1}}"#));
        assert!(!has_usage_object(br#"{"usage":null}"#));
        assert!(!has_usage_object(br#"{"content":"the \"usage\" word"}"#));
        assert!(has_usage_object(br#"{"a":"usage","usage":{}}"#));
    }

    #[test]
    fn provider_messages_are_found_in_the_usual_shapes() {
        assert_eq!(
            provider_message(br#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(provider_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(provider_message(br#"{"detail":"missing"}"#), "missing");
        assert_eq!(provider_message(b"plain text"), "plain text");
    }
}
