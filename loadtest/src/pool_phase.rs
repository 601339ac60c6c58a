//! The container pool: cold start and warm acquire, against a plain `docker
//! run` of the same image measured in the same run.
//!
//! - Floor: create + start a container of the agent image with no options at
//!   all, running `/bin/true`, until the engine says it started (what
//!   `docker run -d image /bin/true` waits for, without the CLI's own
//!   start-up); the same with only `network_mode: none` added, which
//!   Colony's containers need; and the same on a bridge network, which is
//!   what `docker run` gets by default on a standard engine (this machine's
//!   engine runs with `--bridge=none`, so its default makes no endpoint).
//! - Colony cold start: `Runtime::acquire` with nothing idle — create the
//!   hardened container, start it, wait until agentd answers a ping.
//! - Warm acquire: `Runtime::acquire` with an idle container of the same
//!   configuration (then `release`, so the next acquire is warm again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptions,
};
use futures_util::StreamExt;

use crate::stats::percentile;
use crate::{Args, BENCH_LABEL_KEY, BENCH_LABEL_VALUE};

/// p50 and p99 of samples in ms.
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(mut ms: Vec<f64>) -> Spread {
        ms.sort_by(f64::total_cmp);
        Spread {
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            n: ms.len(),
        }
    }
}

pub struct PoolReport {
    pub floor: Spread,
    /// The same plain run with only `network_mode: none` added.
    pub floor_none: Spread,
    /// The same plain run on a bridge network (a standard engine's default;
    /// this machine's engine runs without its default bridge).
    pub floor_bridge: Spread,
    pub cold: Spread,
    pub warm: Spread,
}

impl std::fmt::Display for PoolReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pool: docker run -d floor p50 {:.1} ms, p99 {:.1} ms ({} runs); with network none p50 {:.1} ms, p99 {:.1} ms; on a bridge network p50 {:.1} ms, p99 {:.1} ms",
            self.floor.p50,
            self.floor.p99,
            self.floor.n,
            self.floor_none.p50,
            self.floor_none.p99,
            self.floor_bridge.p50,
            self.floor_bridge.p99,
        )?;
        writeln!(
            f,
            "pool: colony cold start p50 {:.1} ms, p99 {:.1} ms ({}); cold/floor p50 {:.2} (plain), {:.2} (network none), {:.2} (bridge)",
            self.cold.p50,
            self.cold.p99,
            self.cold.n,
            self.cold.p50 / self.floor.p50,
            self.cold.p50 / self.floor_none.p50,
            self.cold.p50 / self.floor_bridge.p50
        )?;
        write!(
            f,
            "pool: warm acquire p50 {:.3} ms, p99 {:.3} ms ({} acquires)",
            self.warm.p50, self.warm.p99, self.warm.n
        )
    }
}

pub async fn run(args: &Args, settings: &colony::Settings) -> anyhow::Result<PoolReport> {
    let n = args.pool_samples;
    let mut cfg = runtime::Config::new(
        settings.agent_image.clone(),
        settings.socket_dir.clone(),
        "loadtest-pool".to_string(),
    );
    cfg.labels = [(BENCH_LABEL_KEY.to_string(), BENCH_LABEL_VALUE.to_string())].into();
    cfg.max_idle = 1;
    cfg.max_active = 2;
    cfg.ready_timeout = Duration::from_secs(30);
    let rt = runtime::Runtime::connect(cfg)
        .await
        .context("pool: cannot reach Docker")?;
    let docker = rt.docker().clone();

    // One unmeasured round of each, so that neither side pays for a cold
    // image cache.
    let bridge = format!(
        "colony-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: bridge.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                BENCH_LABEL_KEY.to_string(),
                BENCH_LABEL_VALUE.to_string(),
            )])),
            ..Default::default()
        })
        .await
        .context("pool: cannot create a bridge network for the floor")?;
    let measured = measure(&rt, &docker, &settings.agent_image, &bridge, n).await;
    if let Err(e) = docker.remove_network(&bridge).await {
        tracing::warn!(network = %bridge, error = %e, "could not remove the bench network");
    }
    measured
}

async fn measure(
    rt: &std::sync::Arc<runtime::Runtime>,
    docker: &bollard::Docker,
    image: &str,
    bridge: &str,
    n: usize,
) -> anyhow::Result<PoolReport> {
    for net in [Net::Default, Net::None, Net::Named(bridge)] {
        docker_run(docker, image, net).await?;
    }
    let want = runtime::Want::role("bench-pool");
    let c = rt.acquire(&want).await.context("pool: first acquire")?;
    rt.discard(&c).await;

    let mut floor = Vec::with_capacity(n);
    let mut floor_none = Vec::with_capacity(n);
    let mut floor_bridge = Vec::with_capacity(n);
    let mut cold = Vec::with_capacity(n);
    for _ in 0..n {
        floor.push(docker_run(docker, image, Net::Default).await?);
        floor_none.push(docker_run(docker, image, Net::None).await?);
        floor_bridge.push(docker_run(docker, image, Net::Named(bridge)).await?);
        let started = Instant::now();
        let c = rt.acquire(&want).await.context("pool: cold acquire")?;
        cold.push(started.elapsed().as_secs_f64() * 1e3);
        if c.source != runtime::Source::Cold {
            bail!("pool: expected a cold start, got {:?}", c.source);
        }
        rt.discard(&c).await;
    }

    let c = rt.acquire(&want).await.context("pool: warm-up acquire")?;
    rt.release(c).await;
    let mut warm = Vec::with_capacity(n * 10);
    for _ in 0..n * 10 {
        let started = Instant::now();
        let c = rt.acquire(&want).await.context("pool: warm acquire")?;
        warm.push(started.elapsed().as_secs_f64() * 1e3);
        if c.source == runtime::Source::Cold {
            bail!("pool: a warm acquire created a container");
        }
        rt.release(c).await;
    }
    rt.drain_idle().await;
    Ok(PoolReport {
        floor: Spread::of(floor),
        floor_none: Spread::of(floor_none),
        floor_bridge: Spread::of(floor_bridge),
        cold: Spread::of(cold),
        warm: Spread::of(warm),
    })
}

/// The network a floor container runs on.
#[derive(Clone, Copy)]
enum Net<'a> {
    /// The engine's default (no option given).
    Default,
    None,
    Named(&'a str),
}

/// Create and start a plain container of `image` running `/bin/true` on
/// `net`; returns the ms from create until started, then waits for it to
/// exit and removes it.
async fn docker_run(docker: &bollard::Docker, image: &str, net: Net<'_>) -> anyhow::Result<f64> {
    let name = format!(
        "colony-bench-floor-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["/bin/true".to_string()]),
        labels: Some(HashMap::from([(
            BENCH_LABEL_KEY.to_string(),
            BENCH_LABEL_VALUE.to_string(),
        )])),
        host_config: match net {
            Net::Default => None,
            Net::None => Some("none"),
            Net::Named(name) => Some(name),
        }
        .map(|mode| bollard::models::HostConfig {
            network_mode: Some(mode.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = Instant::now();
    let id = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await
        .context("pool floor: create")?
        .id;
    docker
        .start_container(&id, None)
        .await
        .context("pool floor: start")?;
    // `docker run -d`: done once the engine has started the process.
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
    // A non-zero exit is an Err from wait_container; /bin/true exits 0.
    let exited = tokio::time::timeout(Duration::from_secs(30), wait.next()).await;
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    match exited {
        Ok(Some(Ok(_))) => Ok(ms),
        Ok(Some(Err(e))) => bail!("pool floor: the plain container failed: {e}"),
        Ok(None) => bail!("pool floor: no exit status"),
        Err(_) => bail!("pool floor: the plain container did not exit within 30 s"),
    }
}
