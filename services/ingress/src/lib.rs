//! Ingress: where tasks enter Colony.
//!
//! Two doors, one set of rules ([`admission`]): the HTTP API ([`http`]) and a
//! JetStream consumer on `colony.intake.*` ([`intake`]) so that any NATS
//! client can submit by publishing the same JSON. A valid submission becomes
//! a task row and its work message in one commit (the outbox); an invalid
//! one is refused with one sentence — as a 4xx body over HTTP, or as the
//! reason header of a `colony.dlq.intake.<tenant>` entry over NATS. Nothing is dropped
//! without a trace.
//!
//! The HTTP API also manages the AI workforce: hiring, pausing and
//! offboarding employees of the loaded role templates, reading the audit
//! trail, and writing credentials into the vault (write-only: no route ever
//! returns a credential's value).

pub mod api;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod watch;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay::Relay;
use store::Store;
use tokio_util::sync::CancellationToken;

pub use admission::Rules;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A JetStream call failed; `what` says which.
    #[error("JetStream: {what}")]
    Nats {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    #[error("the intake consumer stopped")]
    IntakeEnded,
    #[error("the NATS API's subscriptions ended")]
    ApiEnded,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub rules: Rules,
    /// The role templates employees can be hired for.
    pub roles: roles::Roles,
    /// The tenant an operator key acts for without an `X-Colony-Tenant`
    /// header.
    pub default_tenant: String,
    /// Longest `?wait=` a client may ask for.
    pub max_wait: Duration,
    /// Rate limits per peer address and per API key.
    pub limits: http::auth::Limits,
    /// A listener bound already (else `http_addr` is bound).
    pub listener: SharedListener,
    /// Where webhooks may point (the agent egress's address rules).
    pub webhook_addresses: gateway::AddressPolicy,
    /// `GET /metrics` reads the streams, consumers and Postgres at most
    /// this often.
    pub metrics_ttl: Duration,
    /// The dashboard's files from disk instead of the built-in copies.
    pub ui_dir: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            rules: Rules::default(),
            roles: roles::Roles::empty(),
            default_tenant: subjects::DEFAULT_TENANT.to_string(),
            max_wait: Duration::from_secs(120),
            limits: http::auth::Limits::default(),
            listener: SharedListener::default(),
            webhook_addresses: gateway::AddressPolicy::default(),
            metrics_ttl: Duration::from_secs(5),
            ui_dir: None,
        }
    }
}

/// A listener bound by whoever starts the ingress (a test, handed the port
/// it bound instead of one picked, dropped and bound again); taken by the
/// first ingress that runs.
#[derive(Clone, Default)]
pub struct SharedListener(Arc<Mutex<Option<std::net::TcpListener>>>);

impl SharedListener {
    pub fn new(listener: std::net::TcpListener) -> SharedListener {
        SharedListener(Arc::new(Mutex::new(Some(listener))))
    }

    fn take(&self) -> Option<std::net::TcpListener> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for SharedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedListener")
    }
}

/// Serve HTTP and consume the intake until `shutdown`. If the intake
/// consumer ends first (it cannot go on), the whole process is asked to
/// stop: an HTTP API that accepts work the intake no longer takes would hide
/// the failure.
pub async fn run(
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    relay: Relay,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listen_err = |source| Error::Listen {
        addr: cfg.http_addr,
        source,
    };
    let listener = match cfg.listener.take() {
        Some(l) => {
            l.set_nonblocking(true).map_err(listen_err)?;
            tokio::net::TcpListener::from_std(l).map_err(listen_err)?
        }
        None => tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .map_err(listen_err)?,
    };
    let mut intake = tokio::spawn(intake::run(
        cfg.rules.clone(),
        store.clone(),
        nats.clone(),
        relay.clone(),
        shutdown.clone(),
    ));
    let state = http::AppState::new(cfg.clone(), store, nats, relay);
    http::auth::spawn_tidying(state.gate(), shutdown.clone());
    let api = tokio::spawn({
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            if let Err(e) = api::serve(state, shutdown.clone()).await {
                tracing::error!(error = %e, "the NATS API stopped; stopping");
                shutdown.cancel();
            }
        }
    });
    let app = http::router(state);
    tracing::info!(addr = %listener.local_addr().map_err(Error::Serve)?, "HTTP API listening");
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
    .into_future();
    tokio::pin!(served);
    let (served, intake) = tokio::select! {
        served = &mut served => {
            shutdown.cancel();
            (served, intake.await)
        }
        ended = &mut intake => {
            if !shutdown.is_cancelled() {
                tracing::error!("the intake consumer stopped; stopping");
                shutdown.cancel();
            }
            (served.await, ended)
        }
    };
    let _ = api.await;
    match intake {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            tracing::error!(error = %e, "the intake consumer panicked");
            return Err(Error::IntakeEnded);
        }
    }
    served.map_err(Error::Serve)
}
