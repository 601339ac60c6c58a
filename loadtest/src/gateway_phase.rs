//! The gateway's overhead per LLM call: the same chat completion sent to
//! the scripted provider directly (TCP) and through a container gateway on
//! its unix socket, alternating, one new connection per call as agentd
//! makes them. The gateway adds the key, meters the call and writes its
//! usage row through the real Postgres backend.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::pool_phase::Spread;
use crate::Args;

pub struct GatewayReport {
    pub direct: Spread,
    pub via: Spread,
}

impl std::fmt::Display for GatewayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gateway: provider direct p50 {:.3} ms, p99 {:.3} ms; through the gateway p50 {:.3} ms, p99 {:.3} ms ({} calls each); overhead p50 {:.3} ms",
            self.direct.p50,
            self.direct.p99,
            self.via.p50,
            self.via.p99,
            self.direct.n,
            self.via.p50 - self.direct.p50
        )
    }
}

pub async fn run(args: &Args, settings: &colony::Settings) -> anyhow::Result<GatewayReport> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let provider = scripted::serve(listener, scripted::Scripts::builtin())
        .await
        .context("gateway phase: scripted provider")?;
    let provider_addr = provider.addr();

    let store = colony::store_for(settings, 4)?;
    let backend = worker::StoreBackend {
        store,
        relay: relay::spawn(
            colony::store_for(settings, 1)?,
            async_nats::jetstream::new(
                colony::connect_nats(settings, subjects::auth::Kind::Admin).await?,
            ),
        )
        .0
        .downgrade(),
        roles: Arc::new(roles::Roles::empty()),
        admission: admission::Rules::default(),
        loop_roles: Arc::new(settings.loop_roles(&roles::Roles::empty())),
    };
    let mut config = gateway::GatewayConfig::default();
    config.provider.base_url = provider.base_url();
    config.provider.api_key = Some("loadtest-key".into());
    let gw = gateway::Gateway::new(config, Arc::new(backend))?;
    let dir = tempdir()?;
    let socket = dir.join("gateway.sock");
    let cg = gw.serve(&socket)?;
    let meter = cg.begin_run(gateway::RunContext {
        task_id: uuid::Uuid::now_v7(),
        run_id: uuid::Uuid::now_v7(),
        employee_id: None,
        tenant: "loadtest".into(),
        role: "bench".into(),
        model: "scripted:echo".into(),
        allowed_actions: Default::default(),
        egress: Vec::new(),
        quotas: Default::default(),
    });

    let body = Bytes::from(
        serde_json::json!({
            "model": "scripted:echo",
            "messages": [
                {"role": "system", "content": "You are a benchmark."},
                {"role": "user", "content": "Say this back: the quick brown fox jumps over the lazy dog."}
            ]
        })
        .to_string(),
    );
    let n = args.gateway_calls;
    let (mut direct, mut via) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 20 {
        let t = Instant::now();
        let io = tokio::net::TcpStream::connect(provider_addr).await?;
        post(io, "/v1/chat/completions", body.clone()).await?;
        let d = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let io = tokio::net::UnixStream::connect(&socket).await?;
        post(io, subjects::gateway::CHAT_COMPLETIONS, body.clone()).await?;
        let v = t.elapsed().as_secs_f64() * 1e3;
        // The first 20 of each warm up both paths.
        if i >= 20 {
            direct.push(d);
            via.push(v);
        }
    }
    let totals = meter.finish().await;
    cg.close().await;
    let _ = provider.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    if totals.calls != (n + 20) as u64 {
        bail!(
            "gateway phase: {} calls were metered, not {}",
            totals.calls,
            n + 20
        );
    }
    Ok(GatewayReport {
        direct: Spread::of(direct),
        via: Spread::of(via),
    })
}

/// POST `body` on a fresh HTTP/1.1 connection and read the whole answer.
async fn post<I>(io: I, path: &str, body: Bytes) -> anyhow::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::post(path)
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    if !status.is_success() {
        bail!(
            "gateway phase: {path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(())
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "colony-bench-gw-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    std::fs::create_dir_all(&dir)?;
    set_private(&dir)?;
    Ok(dir)
}

fn set_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
