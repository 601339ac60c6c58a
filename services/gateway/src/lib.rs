//! The worker's side of a container's `gateway.sock` (see
//! [`subjects::gateway`]).
//!
//! One [`Gateway`] per worker holds what every container shares: the model
//! provider (its URL, its key, the model mapping), the price table, the
//! outbound HTTP clients and the [`Backend`] that stores memory, notes,
//! tasks, reviews, audit records, usage and vault credentials.
//! [`Gateway::serve`] binds one container's socket and answers HTTP/1.1 on
//! it: model calls, platform actions, `http_fetch`, and a forward proxy
//! (`CONNECT` and absolute-form requests) limited to the role's egress
//! allowlist.
//!
//! A container does one run at a time: [`ContainerGateway::begin_run`] says
//! whose run it is ([`RunContext`]) and returns the [`RunMeter`] that counts
//! its tokens and cost and fires [`RunMeter::exceeded`] when a quota is
//! crossed. Between runs every request is refused with 409.
//!
//! Secrets stay here: the provider key and vault credentials are added to
//! outbound requests by the gateway and never appear in an answer, a log
//! line or an error sentence.

mod actions;
mod backend;
mod chat;
mod egress;
mod reply;
mod run;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use uuid::Uuid;

pub use backend::{
    AuditOutcome, AuditRecord, Backend, BackendError, BoxFuture, UsageRecord, EGRESS_ACTION,
    MODEL_ACTION,
};
pub use egress::{AddressPolicy, NotPublic};
pub use run::{DailyUsage, Quotas, RunContext, RunMeter, RunTotals};
pub use subjects::TaskSubmission;

use run::Run;

/// The model provider: any OpenAI-compatible chat-completions API.
#[derive(Clone, Default)]
pub struct ProviderConfig {
    /// Base URL up to and including the API version, e.g.
    /// `https://api.openai.com/v1`, `https://api.moonshot.ai/v1`,
    /// `http://127.0.0.1:11434/v1` (Ollama); `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`; never logged, never sent into a
    /// container.
    pub api_key: Option<String>,
    /// Role model name → provider model name; a name not listed is sent as is.
    pub models: HashMap<String, String>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .finish()
    }
}

/// What a model costs, in US dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Price {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl Price {
    /// The cost of one call.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_usd_per_mtok
            + completion_tokens as f64 * self.output_usd_per_mtok)
            / 1_000_000.0
    }
}

/// Bounds of what one container may ask of the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Body bytes of a `/v1/fetch` answer kept (the rest is cut and
    /// `truncated` is set).
    pub fetch_max_bytes: usize,
    /// Largest request body (a chat completion with a long conversation).
    pub max_request_bytes: usize,
    /// Connections served at once per container; more wait in the backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fetch_max_bytes: 256 * 1024,
            max_request_bytes: 16 * 1024 * 1024,
            max_connections: 256,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    pub provider: ProviderConfig,
    /// Provider model name (or role model name) → price. A model missing here
    /// costs 0 (with a warning, once per model).
    pub prices: HashMap<String, Price>,
    pub limits: Limits,
    /// Private ranges egress may reach (the operator's
    /// `COLONY_EGRESS_ALLOW_PRIVATE`); empty: public addresses only.
    pub allow_private: Vec<ipnet::IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    #[error("gateway socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What every container of one worker shares. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("chat_url", &self.inner.chat_url.as_str())
            .field("api_key", &self.inner.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) chat_url: reqwest::Url,
    /// `Bearer <key>`, marked sensitive.
    pub(crate) auth: Option<axum::http::HeaderValue>,
    /// The key itself, only to scrub it out of provider error messages.
    pub(crate) api_key: Option<String>,
    pub(crate) models: HashMap<String, String>,
    pub(crate) prices: HashMap<String, Price>,
    /// Models already warned about (no price, no usage reported).
    warned: Mutex<HashSet<String>>,
    pub(crate) provider: reqwest::Client,
    pub(crate) egress: reqwest::Client,
    pub(crate) limits: Limits,
    /// Where egress may connect.
    pub(crate) addresses: Arc<egress::AddressPolicy>,
}

impl Inner {
    /// Logs `message` once per `key` over the gateway's life.
    pub(crate) fn warn_once(&self, key: String, message: impl FnOnce() -> String) {
        let first = run::lock(&self.warned).insert(key);
        if first {
            tracing::warn!("{}", message());
        }
    }

    /// The price of a call: by provider model, then by the role's name for it.
    /// The price of a call: by provider model, then by the role's name for
    /// it; `None` when neither has one.
    pub(crate) fn price(&self, provider_model: &str, model: &str) -> Option<Price> {
        self.prices
            .get(provider_model)
            .or_else(|| self.prices.get(model))
            .copied()
    }
}

impl Gateway {
    /// Builds the outbound clients. Fails on a base URL that does not parse
    /// or a key that cannot be a header value.
    pub fn new(config: GatewayConfig, backend: Arc<dyn Backend>) -> Result<Gateway, GatewayError> {
        let base = config.provider.base_url.trim_end_matches('/');
        let chat_url = reqwest::Url::parse(&format!("{base}/chat/completions"))
            .map_err(|e| GatewayError::Config(format!("provider base_url {base:?}: {e}")))?;
        if !matches!(chat_url.scheme(), "http" | "https") {
            return Err(GatewayError::Config(format!(
                "provider base_url {base:?} must be http or https"
            )));
        }
        let auth = match config.provider.api_key.as_deref() {
            None | Some("") => None,
            Some(key) => {
                let mut v =
                    axum::http::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                        GatewayError::Config(
                            "the provider api_key holds characters a header cannot carry".into(),
                        )
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let provider = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(600))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| GatewayError::Config(format!("provider client: {e}")))?;
        let addresses = Arc::new(egress::AddressPolicy::new(config.allow_private.clone()));
        let egress = reqwest::Client::builder()
            .no_proxy()
            // A redirect would leave the allowlist (and carry vault headers
            // along); the container gets the 3xx and asks again.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(egress::GuardedResolver(addresses.clone())))
            .build()
            .map_err(|e| GatewayError::Config(format!("egress client: {e}")))?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                backend,
                chat_url,
                auth,
                api_key: config.provider.api_key.filter(|k| !k.is_empty()),
                models: config.provider.models,
                prices: config.prices,
                warned: Mutex::new(HashSet::new()),
                provider,
                egress,
                limits: config.limits,
                addresses,
            }),
        })
    }

    /// Serves one container's `gateway.sock` at `socket_path` (whose
    /// directory must exist). A stale socket file there is replaced; the new
    /// one is mode 0666 so the container's uid 65534 can connect. Must be
    /// called within a tokio runtime.
    pub fn serve(&self, socket_path: impl AsRef<Path>) -> Result<ContainerGateway, GatewayError> {
        let path = socket_path.as_ref().to_path_buf();
        let err = |source| GatewayError::Socket {
            path: path.clone(),
            source,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() || meta.file_type().is_file() => {
                std::fs::remove_file(&path).map_err(err)?
            }
            Ok(_) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
        let identity = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();

        let shared = Arc::new(Shared {
            gw: self.inner.clone(),
            slot: Mutex::new(None),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let router = router(shared.clone());
        let limit = Arc::new(Semaphore::new(self.inner.limits.max_connections.max(1)));
        let accept = shared.clone();
        shared.tasks.spawn(async move {
            accept_loop(accept, listener, router, limit).await;
        });
        tracing::debug!(path = %path.display(), "gateway: serving");
        Ok(ContainerGateway {
            shared,
            path,
            identity,
        })
    }
}

/// State of one container's gateway, shared by its connections.
pub(crate) struct Shared {
    pub(crate) gw: Arc<Inner>,
    slot: Mutex<Option<Arc<Run>>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl Shared {
    /// The run in progress, if any.
    pub(crate) fn current(&self) -> Option<Arc<Run>> {
        run::lock(&self.slot).clone()
    }

    /// Ends `run` if it is still the current one.
    pub(crate) fn end(&self, run: &Arc<Run>) {
        let mut slot = run::lock(&self.slot);
        if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, run)) {
            *slot = None;
        }
    }
}

/// One container's gateway: the server on its `gateway.sock`. Dropping it
/// (or [`close`](ContainerGateway::close)) stops the server, ends open
/// connections and tunnels, and removes the socket file.
pub struct ContainerGateway {
    shared: Arc<Shared>,
    path: PathBuf,
    /// (dev, inode) of the socket this gateway bound, so that dropping it
    /// never removes a newer gateway's socket at the same path.
    identity: Option<(u64, u64)>,
}

impl fmt::Debug for ContainerGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerGateway")
            .field("path", &self.path)
            .field("run", &self.current_run())
            .finish()
    }
}

impl ContainerGateway {
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Starts a run: from now on requests act as `ctx`'s employee, within
    /// its role. A container does one run at a time; beginning a run while
    /// another is in progress ends that one (its meter keeps its totals).
    /// Must be called within a tokio runtime (the wall-time quota is a timer).
    pub fn begin_run(&self, ctx: RunContext) -> RunMeter {
        let run = Run::new(ctx);
        let previous = run::lock(&self.shared.slot).replace(run.clone());
        if let Some(prev) = previous {
            tracing::warn!(
                previous = %prev.ctx.run_id,
                next = %run.ctx.run_id,
                "gateway: a run began while another was in progress; the previous one is ended"
            );
            prev.end();
        }
        RunMeter::start(run, self.shared.clone())
    }

    /// The id of the run in progress.
    pub fn current_run(&self) -> Option<Uuid> {
        self.shared.current().map(|r| r.ctx.run_id)
    }

    /// Stops the server and waits (up to 5 s) for its connections to end,
    /// then removes the socket file.
    pub async fn close(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tasks.wait()).await;
    }
}

impl Drop for ContainerGateway {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        if let Some(run) = run::lock(&self.shared.slot).take() {
            run.end();
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.identity)
            .unwrap_or(false);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), "gateway: could not remove the socket: {e}");
            }
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(subjects::gateway::CHAT_COMPLETIONS, post(chat::completions))
        .route(
            &format!("{}{{name}}", subjects::gateway::ACTIONS),
            post(actions::action),
        )
        .route(subjects::gateway::FETCH, post(egress::fetch))
        .fallback(reply::unknown_route)
        .method_not_allowed_fallback(reply::wrong_method)
        .with_state(shared)
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: UnixListener,
    router: Router,
    limit: Arc<Semaphore>,
) {
    loop {
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off a little.
                    tracing::warn!("gateway: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn_shared = shared.clone();
        let router = router.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            let svc_shared = conn_shared.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = svc_shared.clone();
                let router = router.clone();
                async move { Ok::<_, Infallible>(dispatch(shared, router, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                served = conn => {
                    if let Err(e) = served {
                        tracing::debug!("gateway: connection ended: {e}");
                    }
                }
                _ = conn_shared.shutdown.cancelled() => {}
            }
        });
    }
}

/// `CONNECT` and absolute-form requests are proxy requests; everything else
/// goes to the router.
async fn dispatch(
    shared: Arc<Shared>,
    mut router: Router,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return egress::connect(shared, req).await;
    }
    if req.uri().scheme().is_some() {
        return egress::forward(shared, req).await;
    }
    match router.call(req.map(Body::new)).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}
