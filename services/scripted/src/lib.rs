//! A scripted OpenAI-compatible provider.
//!
//! No model API is reachable from Colony's test machines, so tests and the
//! offline demo talk to this server instead. It is a test double for the
//! model and says so: every response's `model` is `scripted:<script>`.
//!
//! It serves `POST /v1/chat/completions` (JSON, or server-sent events when
//! the request has `"stream": true`, with a final usage chunk when
//! `stream_options.include_usage` is true) and `GET /v1/models`. It keeps
//! no state: the request's `model` (`scripted` for the default script,
//! `scripted:<name>` for a named one) or a `[script:<name>]` marker in the
//! first user message picks the [`Script`], and the number of assistant
//! messages already in the request picks its [`Step`]. Past a script's end
//! the answer is the text `script <name> has no step <n>`.
//!
//! Usage is deterministic: `prompt_tokens` is the characters of every
//! request message (content, tool-call names and arguments) and of the
//! `tools` it offers (as compact JSON) over four,
//! rounded up; `completion_tokens` the same for the reply.

mod script;
mod turn;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use script::{Reply, Script, ScriptError, Scripts, Step, ToolCall, DEFAULT_SCRIPT};
pub use turn::{MODEL, MODEL_PREFIX};

/// The largest request body accepted (long conversations are large).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The provider's routes, for callers that run their own server loop.
pub fn router(scripts: Scripts) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(scripts))
}

/// Serves [`router`] on `listener` in a background task until the returned
/// [`Provider`] is shut down or dropped.
pub async fn serve(listener: TcpListener, scripts: Scripts) -> io::Result<Provider> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router(scripts))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Provider {
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}

/// A running provider; dropping it aborts the server.
#[derive(Debug)]
pub struct Provider {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Provider {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, `http://<addr>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops accepting, lets open responses finish, and returns how the
    /// server ended.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server ends (it only ends on its own on an error).
    pub async fn wait(mut self) -> io::Result<()> {
        match self.task.take() {
            Some(task) => task.await.map_err(|err| {
                io::Error::other(format!("the scripted provider panicked: {err}"))
            })?,
            None => Ok(()),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn chat_completions(State(scripts): State<Arc<Scripts>>, body: Bytes) -> Response {
    let request = match turn::parse(&body) {
        Ok(request) => request,
        Err(refusal) => return wire::error(refusal.status, &refusal.message),
    };
    let turn = match turn::play(&scripts, &request) {
        Ok(turn) => turn,
        Err(refusal) => return wire::error(refusal.status, &refusal.message),
    };
    // An error is never streamed: it is the HTTP status of the answer.
    if request.stream && matches!(turn.answer, turn::Answer::Message { .. }) {
        return wire::stream(turn, request.include_usage);
    }
    if turn.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(turn.delay_ms)).await;
    }
    wire::completion(&turn)
}

async fn models(State(scripts): State<Arc<Scripts>>) -> Response {
    axum::Json(wire::models(&scripts)).into_response()
}

async fn not_found() -> Response {
    wire::error(
        StatusCode::NOT_FOUND.as_u16(),
        "The scripted provider serves only POST /v1/chat/completions and GET /v1/models.",
    )
}
