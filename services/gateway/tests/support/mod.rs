#![allow(clippy::unwrap_used)] // test support: a panic is how a test fails
//! What the gateway tests share: an in-memory [`Backend`] (our own
//! interface, implemented here the way the worker implements it over
//! Postgres), an OpenAI-compatible upstream on 127.0.0.1, a TCP echo server,
//! and an HTTP/1.1 client on the unix socket.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use gateway::{
    AuditOutcome, AuditRecord, Backend, BackendError, BoxFuture, ContainerGateway, DailyUsage,
    Gateway, GatewayConfig, Price, ProviderConfig, Quotas, RunContext, TaskSubmission, UsageRecord,
};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::Notify;
use uuid::Uuid;

pub const KEY: &str = "sk-test-SECRET-0123456789";
pub const ROLE_MODEL: &str = "worker-model";
pub const PROVIDER_MODEL: &str = "provider-model";
pub const PROMPT_TOKENS: u64 = 900;
pub const COMPLETION_TOKENS: u64 = 334;
/// 900 × 2 / 1e6 + 334 × 8 / 1e6.
pub const CALL_COST: f64 = 0.004472;

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

// ------------------------------------------------------------------ backend

/// Our Backend, in memory.
#[derive(Default)]
pub struct MemBackend {
    pub memory: Mutex<BTreeMap<(Uuid, String), Value>>,
    pub notes: Mutex<Vec<(Uuid, String)>>,
    /// (parent task, submission, created id)
    pub tasks: Mutex<Vec<(Uuid, TaskSubmission, Uuid)>>,
    pub reviews: Mutex<Vec<(Uuid, subjects::goals::ReviewVerdict)>>,
    pub plans: Mutex<Vec<(Uuid, subjects::goals::Plan)>>,
    pub audits: Mutex<Vec<AuditRecord>>,
    pub usage: Mutex<Vec<UsageRecord>>,
    /// (tenant, URL prefix, header, value)
    pub vault: Mutex<Vec<(String, String, String, String)>>,
    /// Today's spend, by employee (or `role:<name>`).
    pub day: Mutex<BTreeMap<String, DailyUsage>>,
}

impl MemBackend {
    pub fn audits_of(&self, action: &str) -> Vec<AuditRecord> {
        lock(&self.audits)
            .iter()
            .filter(|a| a.action == action)
            .cloned()
            .collect()
    }
}

fn day_subject(run: &RunContext) -> String {
    match run.employee_id {
        Some(e) => e.to_string(),
        None => format!("role:{}", run.role),
    }
}

impl MemBackend {
    /// Sets today's spend of `run`'s employee (or role), as if earlier runs
    /// had spent it.
    pub fn spent_today(&self, run: &RunContext, day: DailyUsage) {
        lock(&self.day).insert(day_subject(run), day);
    }

    pub fn today(&self, run: &RunContext) -> DailyUsage {
        lock(&self.day)
            .get(&day_subject(run))
            .copied()
            .unwrap_or_default()
    }
}

impl Backend for MemBackend {
    fn charge_day<'a>(
        &'a self,
        run: &'a RunContext,
        tokens: i64,
        cost_usd: f64,
        day: Option<time::Date>,
    ) -> BoxFuture<'a, Result<(DailyUsage, time::Date), BackendError>> {
        Box::pin(async move {
            let mut days = lock(&self.day);
            let d = days.entry(day_subject(run)).or_default();
            d.tokens = (d.tokens as i64 + tokens).max(0) as u64;
            d.cost_usd += cost_usd;
            Ok((*d, day.unwrap_or(time::Date::MIN)))
        })
    }

    fn memory_get<'a>(
        &'a self,
        employee_id: Uuid,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, BackendError>> {
        Box::pin(async move {
            Ok(lock(&self.memory)
                .get(&(employee_id, key.to_string()))
                .cloned())
        })
    }

    fn memory_set<'a>(
        &'a self,
        employee_id: Uuid,
        key: &'a str,
        value: Value,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            lock(&self.memory).insert((employee_id, key.to_string()), value);
            Ok(())
        })
    }

    fn memory_list(
        &self,
        employee_id: Uuid,
    ) -> BoxFuture<'_, Result<BTreeMap<String, Value>, BackendError>> {
        Box::pin(async move {
            Ok(lock(&self.memory)
                .iter()
                .filter(|((e, _), _)| *e == employee_id)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect())
        })
    }

    fn note<'a>(
        &'a self,
        run: &'a RunContext,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            lock(&self.notes).push((run.task_id, text.to_string()));
            Ok(())
        })
    }

    fn create_task<'a>(
        &'a self,
        parent: &'a RunContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let task: TaskSubmission =
                serde_json::from_value(args).map_err(|e| BackendError::Refused {
                    status: 400,
                    reason: format!("the submission is not a valid task submission: {e}"),
                })?;
            if task.role == "no-such-role" {
                return Err(BackendError::Invalid(format!(
                    "there is no role {}",
                    task.role
                )));
            }
            let id = Uuid::new_v4();
            lock(&self.tasks).push((parent.task_id, task, id));
            Ok(json!({"id": id.to_string(), "state": "queued"}))
        })
    }

    fn submit_review<'a>(
        &'a self,
        reviewer: &'a RunContext,
        review: subjects::goals::ReviewVerdict,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let task = review.task_id;
            lock(&self.reviews).push((reviewer.run_id, review));
            Ok(json!({"task_id": task.to_string(), "recorded": true}))
        })
    }

    fn submit_plan<'a>(
        &'a self,
        planner: &'a RunContext,
        plan: subjects::goals::Plan,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            if plan.subtasks.is_empty() {
                return Err(BackendError::Refused {
                    status: 422,
                    reason: "the plan has no sub-tasks".into(),
                });
            }
            let n = plan.subtasks.len();
            lock(&self.plans).push((planner.run_id, plan));
            Ok(json!({"accepted": true, "subtasks": n}))
        })
    }

    fn audit(&self, record: AuditRecord) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            lock(&self.audits).push(record);
            Ok(())
        })
    }

    fn record_usage(&self, record: UsageRecord) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            lock(&self.usage).push(record);
            Ok(())
        })
    }

    fn credentials_for<'a>(
        &'a self,
        tenant: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, BackendError>> {
        Box::pin(async move {
            Ok(lock(&self.vault)
                .iter()
                .filter(|(t, prefix, _, _)| t == tenant && url.starts_with(prefix.as_str()))
                .map(|(_, _, h, v)| (h.clone(), v.clone()))
                .collect())
        })
    }
}

// ------------------------------------------------------------------ upstream

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
pub struct UpstreamState {
    pub seen: Mutex<Vec<Seen>>,
    /// Released by the test in the middle of a "gated" stream.
    pub gate: Notify,
}

/// An OpenAI-compatible provider plus a few plain HTTP pages, on 127.0.0.1.
/// Models: `fail-400` answers 400 with a message echoing the key, `fail-500`
/// answers 500, `gated` streams its first chunk then waits for the gate,
/// `no-usage` reports no usage; any other answers "Hello" with 900/334
/// tokens.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let state = Arc::new(UpstreamState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(upstream_chat))
            .route("/big", any(big))
            .route("/echo-secret", any(echo_secret))
            .fallback(page)
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

async fn record(state: &UpstreamState, req: Request<Body>) -> Seen {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    lock(&state.seen).push(seen.clone());
    seen
}

fn usage_json() -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS
    })
}

fn chunk(model: &str, content: &str) -> String {
    let c = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
        "usage": null
    });
    format!("data: {c}\n\n")
}

async fn upstream_chat(State(state): State<Arc<UpstreamState>>, req: Request<Body>) -> Response {
    let seen = record(&state, req).await;
    let body = seen.json();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    match model.as_str() {
        "fail-400" => return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {
                "message": format!("The model `fail-400` does not exist.\nYour key {KEY} is fine."),
                "type": "invalid_request_error"
            }})),
        )
            .into_response(),
        "fail-500" => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded\n\n").into_response()
        }
        _ => {}
    }
    if body["stream"] == json!(true) {
        let include_usage = body["stream_options"]["include_usage"] == json!(true);
        let gated = model == "gated";
        let state = state.clone();
        let stream = async_stream(model, include_usage, gated, state);
        let mut resp = Response::new(Body::from_stream(stream));
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            "text/event-stream".parse().unwrap(),
        );
        return resp;
    }
    let mut answer = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
    });
    if model != "no-usage" {
        answer["usage"] = usage_json();
    }
    axum::Json(answer).into_response()
}

/// The SSE chunks, the second half held back for `gated` until the test
/// releases it.
fn async_stream(
    model: String,
    include_usage: bool,
    gated: bool,
    state: Arc<UpstreamState>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let first = chunk(&model, "Hel");
    let mut rest = chunk(&model, "lo");
    if include_usage {
        let u = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                       "choices": [], "usage": usage_json()});
        rest.push_str(&format!("data: {u}\n\n"));
    }
    rest.push_str("data: [DONE]\n\n");
    futures_util::stream::iter([0u8, 1]).then(move |i| {
        let first = first.clone();
        let rest = rest.clone();
        let state = state.clone();
        async move {
            if i == 0 {
                Ok(Bytes::from(first))
            } else {
                if gated {
                    state.gate.notified().await;
                }
                Ok(Bytes::from(rest))
            }
        }
    })
}

async fn big(State(state): State<Arc<UpstreamState>>, req: Request<Body>) -> Response {
    record(&state, req).await;
    "x".repeat(300 * 1024).into_response()
}

/// A careless remote that echoes the credential it was sent.
async fn echo_secret(State(state): State<Arc<UpstreamState>>, req: Request<Body>) -> Response {
    let seen = record(&state, req).await;
    let key = seen.header("x-api-key").unwrap_or_default();
    ([("x-echo", key.clone())], format!("you sent {key}")).into_response()
}

async fn page(State(state): State<Arc<UpstreamState>>, req: Request<Body>) -> Response {
    let seen = record(&state, req).await;
    (
        [("x-upstream", "yes")],
        format!("page {} {}", seen.method, seen.path),
    )
        .into_response()
}

/// A TCP server that echoes what it reads.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

// ------------------------------------------------------------------ gateway

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Setup {
    pub dir: TempDir,
    pub backend: Arc<MemBackend>,
    pub upstream: Upstream,
    pub gateway: Gateway,
    pub container: ContainerGateway,
}

impl Setup {
    /// The operator has opened 127.0.0.0/8 (the test servers' home) to
    /// egress.
    pub async fn new() -> Setup {
        let upstream = Upstream::start().await;
        let base = upstream.base_url();
        Setup::with(upstream, base, vec!["127.0.0.0/8".parse().unwrap()]).await
    }

    /// Egress to public addresses only, as without
    /// COLONY_EGRESS_ALLOW_PRIVATE.
    pub async fn closed() -> Setup {
        let upstream = Upstream::start().await;
        let base = upstream.base_url();
        Setup::with(upstream, base, Vec::new()).await
    }

    pub async fn with_base_url(upstream: Upstream, base_url: String) -> Setup {
        Setup::with(upstream, base_url, vec!["127.0.0.0/8".parse().unwrap()]).await
    }

    pub async fn with(
        upstream: Upstream,
        base_url: String,
        allow_private: Vec<ipnet::IpNet>,
    ) -> Setup {
        let dir = temp_dir();
        let backend = Arc::new(MemBackend::default());
        let gateway = Gateway::new(
            GatewayConfig {
                provider: ProviderConfig {
                    base_url,
                    api_key: Some(KEY.into()),
                    models: [(ROLE_MODEL.to_string(), PROVIDER_MODEL.to_string())].into(),
                },
                prices: [(
                    PROVIDER_MODEL.to_string(),
                    Price {
                        input_usd_per_mtok: 2.0,
                        output_usd_per_mtok: 8.0,
                    },
                )]
                .into(),
                allow_private,
                ..GatewayConfig::default()
            },
            backend.clone(),
        )
        .unwrap();
        let container = gateway.serve(dir.0.join("gateway.sock")).unwrap();
        Setup {
            dir,
            backend,
            upstream,
            gateway,
            container,
        }
    }

    pub fn sock(&self) -> PathBuf {
        self.container.socket_path().to_path_buf()
    }

    /// A run of role `coder` for an employee, allowed memory.* and
    /// task.create, with the upstream's 127.0.0.1:port in its allowlist.
    pub fn ctx(&self) -> RunContext {
        RunContext {
            task_id: Uuid::new_v4(),
            run_id: Uuid::new_v4(),
            employee_id: Some(Uuid::new_v4()),
            tenant: "t1".into(),
            role: "coder".into(),
            model: ROLE_MODEL.into(),
            allowed_actions: BTreeSet::from([
                "memory.get".to_string(),
                "memory.set".to_string(),
                "memory.list".to_string(),
                "task.create".to_string(),
                "review.submit".to_string(),
                "plan.submit".to_string(),
            ]),
            egress: vec![
                format!("127.0.0.1:{}", self.upstream.addr.port()),
                "*.example.org".into(),
            ],
            quotas: Quotas::default(),
        }
    }

    /// [`Setup::ctx`] for a run whose role's model is `model`.
    pub fn ctx_model(&self, model: &str) -> RunContext {
        RunContext {
            model: model.into(),
            ..self.ctx()
        }
    }
}

pub fn temp_dir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("colony-gw-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

// ------------------------------------------------------------------ client

/// Sends one request on a fresh connection to the socket.
pub async fn send(sock: &Path, req: Request<Body>) -> hyper::Response<hyper::body::Incoming> {
    let stream = UnixStream::connect(sock).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.unwrap()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The one sentence of an error answer.
    pub fn error(&self) -> String {
        let v = self.json();
        let obj = v.as_object().expect("an object");
        assert_eq!(obj.len(), 1, "only `error`: {v}");
        let e = obj["error"]
            .as_str()
            .expect("error is a string")
            .to_string();
        assert!(!e.is_empty() && !e.contains('\n'), "one sentence: {e:?}");
        e
    }
    /// Every header and the body, as text (to look for secrets).
    pub fn everything(&self) -> String {
        let mut out = String::new();
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        out.push_str(&self.text());
        out
    }
}

pub async fn call(
    sock: &Path,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "gateway");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let resp = send(sock, b.body(Body::from(body.into())).unwrap()).await;
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(Body::new(body), usize::MAX)
        .await
        .unwrap();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn post_json(sock: &Path, path: &str, body: &Value) -> Answer {
    call(
        sock,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}]
    })
}

pub async fn chat(sock: &Path, model: &str) -> Answer {
    post_json(sock, "/v1/chat/completions", &chat_body(model, false)).await
}

pub async fn action(sock: &Path, name: &str, args: Value) -> Answer {
    post_json(
        sock,
        &format!("/v1/actions/{name}"),
        &json!({ "args": args }),
    )
    .await
}

/// Opens a raw connection and sends `CONNECT target`; answers the status
/// line and headers, and the stream (a tunnel when the status is 200).
pub async fn connect(sock: &Path, target: &str) -> (String, String, UnixStream) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("an answer to CONNECT")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-answer: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8(body).unwrap(), s)
}

/// Waits until `check` holds (background writes land a moment after the
/// answer), up to 5 s.
pub async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

pub fn outcome_of(records: &[AuditRecord]) -> Vec<AuditOutcome> {
    records.iter().map(|r| r.outcome).collect()
}
