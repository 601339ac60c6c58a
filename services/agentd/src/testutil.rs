//! Test helpers: unique temporary directories, and whether a pid still runs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> io::Result<TempDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("agentd-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = crate::workspace::empty(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Whether `pid` is a live process (a zombie waiting for its reaper counts
/// as dead: it runs nothing and holds nothing open).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

pub use gateway::{GatewayOptions, TestGateway, QUOTA_SENTENCE};

/// A gateway for tests, on a temporary unix socket: chat completions are
/// forwarded to a [`scripted`] provider (the one allowed test double, for the
/// model), actions work on an in-memory map, fetches answer from here, and
/// anything else is taken as a proxied request and answered with its line.
mod gateway {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use axum::body::{Body, Bytes};
    use axum::extract::{Path as UrlPath, Request, State};
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};
    use subjects::gateway::{ActionRequest, FetchRequest, FetchResponse};

    /// What the gateway allows and how it behaves.
    #[derive(Debug, Clone)]
    pub struct GatewayOptions {
        /// Actions the role allows; others get 403.
        pub allowed_actions: Vec<&'static str>,
        /// Chat calls answered before the quota answers 429.
        pub quota_calls: Option<usize>,
    }

    impl Default for GatewayOptions {
        fn default() -> GatewayOptions {
            GatewayOptions {
                allowed_actions: vec!["memory.set", "memory.get"],
                quota_calls: None,
            }
        }
    }

    /// The sentence of the gateway's quota refusal.
    pub const QUOTA_SENTENCE: &str = "the employee's token quota of 100 tokens is used up.";

    /// What the gateway saw.
    #[derive(Default)]
    pub struct Seen {
        pub chats: Vec<Value>,
        pub actions: Vec<(String, Value)>,
        /// Actions asked for and refused.
        pub denied: Vec<String>,
        pub memory: BTreeMap<String, Value>,
        pub fetches: Vec<FetchRequest>,
        pub proxied: Vec<String>,
    }

    struct Shared {
        options: GatewayOptions,
        provider_url: String,
        client: reqwest::Client,
        seen: Mutex<Seen>,
    }

    pub struct TestGateway {
        shared: Arc<Shared>,
        _provider: scripted::Provider,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestGateway {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestGateway {
        pub async fn start(
            socket: &Path,
            scripts: scripted::Scripts,
            options: GatewayOptions,
        ) -> TestGateway {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind provider");
            let provider = scripted::serve(listener, scripts).await.expect("provider");
            let shared = Arc::new(Shared {
                options,
                provider_url: provider.base_url(),
                client: reqwest::Client::new(),
                seen: Mutex::new(Seen::default()),
            });
            let router = Router::new()
                .route(subjects::gateway::CHAT_COMPLETIONS, post(chat))
                .route(
                    &format!("{}{{name}}", subjects::gateway::ACTIONS),
                    post(action),
                )
                .route(subjects::gateway::FETCH, post(fetch))
                .fallback(proxied)
                .with_state(shared.clone());
            let listener = tokio::net::UnixListener::bind(socket).expect("bind gateway");
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            TestGateway {
                shared,
                _provider: provider,
                task,
            }
        }

        /// Runs `f` on what the gateway saw so far.
        pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
            f(&self.shared.seen.lock().expect("lock"))
        }
    }

    fn refuse(status: StatusCode, sentence: String) -> Response {
        (status, Json(json!({ "error": sentence }))).into_response()
    }

    async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
        let request: Value = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(err) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {err}."),
                )
            }
        };
        let calls = {
            let mut seen = shared.seen.lock().expect("lock");
            seen.chats.push(request);
            seen.chats.len()
        };
        if shared
            .options
            .quota_calls
            .is_some_and(|quota| calls > quota)
        {
            return refuse(StatusCode::TOO_MANY_REQUESTS, QUOTA_SENTENCE.to_owned());
        }
        let upstream = shared
            .client
            .post(format!("{}/chat/completions", shared.provider_url))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(err) => {
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    format!("the model provider is unreachable: {err}."),
                )
            }
        };
        let status = upstream.status();
        if !status.is_success() {
            // Pass the provider's sentence on in the gateway's own shape.
            let body: Value = upstream.json().await.unwrap_or_default();
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("the provider gave no reason")
                .to_owned();
            return refuse(
                StatusCode::from_u16(status.as_u16()).expect("status"),
                message,
            );
        }
        let content_type = upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let mut response = Body::from_stream(upstream.bytes_stream()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            content_type.parse().expect("a header value"),
        );
        response
    }

    async fn action(
        State(shared): State<Arc<Shared>>,
        UrlPath(name): UrlPath<String>,
        Json(request): Json<ActionRequest>,
    ) -> Response {
        if !shared.options.allowed_actions.contains(&name.as_str()) {
            shared.seen.lock().expect("lock").denied.push(name.clone());
            return refuse(
                StatusCode::FORBIDDEN,
                format!("the role does not allow the action {name}."),
            );
        }
        let mut seen = shared.seen.lock().expect("lock");
        seen.actions.push((name.clone(), request.args.clone()));
        let key = request
            .args
            .get("key")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let result = match (name.as_str(), key) {
            ("memory.set", Some(key)) => {
                let value = request.args.get("value").cloned().unwrap_or(Value::Null);
                seen.memory.insert(key.clone(), value);
                json!(format!("saved {key}"))
            }
            ("memory.get", Some(key)) => seen.memory.get(&key).cloned().unwrap_or(Value::Null),
            (action, _) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the arguments do not fit {action}."),
                );
            }
        };
        Json(json!({ "result": result })).into_response()
    }

    async fn fetch(
        State(shared): State<Arc<Shared>>,
        Json(request): Json<FetchRequest>,
    ) -> Response {
        shared
            .seen
            .lock()
            .expect("lock")
            .fetches
            .push(request.clone());
        if request.url.contains("forbidden.example") {
            return refuse(
                StatusCode::FORBIDDEN,
                "the host forbidden.example is not in the role's egress allowlist.".to_owned(),
            );
        }
        Json(FetchResponse {
            status: 200,
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            body: format!("hello from {}", request.url),
            truncated: false,
        })
        .into_response()
    }

    /// A request that came through agentd's proxy (absolute-form URI).
    async fn proxied(State(shared): State<Arc<Shared>>, request: Request) -> Response {
        let line = format!("{} {}", request.method(), request.uri());
        shared.seen.lock().expect("lock").proxied.push(line.clone());
        format!("proxied {line}").into_response()
    }
}
