//! loadtest: drives no-op `shell` tasks through Colony's whole path against
//! warm containers, and in the same run through the bare floor of the same
//! chain (publish, fetch, one commit, one call into a running container,
//! publish, one commit), and compares the two.
//!
//! Run by `ops/bench`, which gives it a fresh database and nats-server
//! through `COLONY_DATABASE_URL` and `COLONY_NATS_URL`. The last line of
//! stdout is always `colony/floor latency p50 X.XX, throughput Y.YY` when
//! both phases ran; the exit status is non-zero if any task failed or the
//! run did not finish within `--timeout-secs`.

mod colony_phase;
mod floor;
mod gateway_phase;
mod pool_phase;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use stats::Summary;

/// Label on every container this program starts (floor and Colony alike).
pub const BENCH_LABEL_KEY: &str = "colony.bench";
pub const BENCH_LABEL_VALUE: &str = "1";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadtest",
    about = "Colony vs. the bare floor of its chain: p50/p99 latency and throughput of no-op shell tasks"
)]
pub struct Args {
    /// Counted tasks per phase.
    #[arg(long, default_value_t = 2000)]
    pub tasks: usize,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Worker slots, which is also the number of containers used.
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
    /// Tasks run before the counted ones in each phase (not counted).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Port of Colony's HTTP API (default: a free port on 127.0.0.1).
    #[arg(long)]
    pub http_port: Option<u16>,
    /// The whole run (both phases) must finish within this.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// One task must finish within this.
    #[arg(long, default_value_t = 60)]
    pub task_timeout_secs: u64,
    /// Cold starts (and ten times as many warm acquires) measured in the
    /// pool phase, against as many plain `docker run`s; 0 skips the phase.
    #[arg(long, default_value_t = 20)]
    pub pool_samples: usize,
    /// Chat completions sent directly and through the gateway each in the
    /// gateway phase; 0 skips the phase.
    #[arg(long, default_value_t = 500)]
    pub gateway_calls: usize,
}

/// What must be undone however the run ends.
pub struct Cleanup {
    /// Fires Colony's shutdown.
    pub token: CancellationToken,
    /// The in-process `colony::serve`, once started.
    pub serve: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    socket_dir: PathBuf,
}

impl Cleanup {
    async fn finish(&mut self) {
        self.token.cancel();
        if let Some(h) = self.serve.take() {
            match tokio::time::timeout(Duration::from_secs(30), h).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("loadtest: colony stopped with an error: {e:#}"),
                Ok(Err(e)) => eprintln!("loadtest: colony panicked: {e}"),
                Err(_) => eprintln!("loadtest: colony did not stop within 30 s"),
            }
        }
        match remove_bench_containers(&self.socket_dir).await {
            Ok(n) => tracing::info!(removed = n, "bench containers removed"),
            Err(e) => eprintln!(
                "loadtest: could not remove the containers labelled {BENCH_LABEL_KEY}={BENCH_LABEL_VALUE}: {e:#}"
            ),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COLONY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.tasks == 0 || args.concurrency == 0 || args.slots == 0 {
        eprintln!("loadtest: --tasks, --concurrency and --slots must be at least 1");
        return ExitCode::from(2);
    }

    let settings = colony::Settings::from_env();
    let mut cleanup = Cleanup {
        token: CancellationToken::new(),
        serve: None,
        socket_dir: settings.socket_dir.clone(),
    };
    // Leftovers of an earlier run that did not get to clean up.
    match remove_bench_containers(&settings.socket_dir).await {
        Ok(0) => {}
        Ok(n) => eprintln!("loadtest: removed {n} containers left by an earlier run"),
        Err(e) => {
            eprintln!("loadtest: cannot reach Docker: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "loadtest: {} tasks per phase (+{} warm-up), concurrency {}, slots {}",
        args.tasks, args.warmup, args.concurrency, args.slots
    );

    let limit = Duration::from_secs(args.timeout_secs);
    let outcome = tokio::time::timeout(limit, run(&args, settings, &mut cleanup)).await;
    cleanup.finish().await;

    let (floor, colony) = match outcome {
        Err(_) => {
            eprintln!(
                "loadtest: error: the run did not finish within {} s (--timeout-secs); it was stopped",
                args.timeout_secs
            );
            return ExitCode::FAILURE;
        }
        Ok(Err(e)) => {
            eprintln!("loadtest: error: {e:#}");
            return ExitCode::FAILURE;
        }
        Ok(Ok(r)) => r,
    };
    let mut failed = false;
    for s in [&floor, &colony] {
        if s.failed > 0 {
            failed = true;
            println!(
                "{}: {} of {} tasks FAILED; first: {}",
                s.name,
                s.failed,
                s.failed + s.ok,
                s.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    println!(
        "colony/floor latency p50 {:.2}, throughput {:.2}",
        colony.p50_ms / floor.p50_ms,
        colony.tps / floor.tps
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The pool phase, then the task phases (floor first); each prints its
/// lines as soon as it is done.
async fn run(
    args: &Args,
    settings: colony::Settings,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(Summary, Summary)> {
    if args.pool_samples > 0 {
        println!("{}", pool_phase::run(args, &settings).await?);
    }
    if args.gateway_calls > 0 {
        println!("{}", gateway_phase::run(args, &settings).await?);
    }
    let floor = floor::run(args, &settings).await?;
    println!("{floor}");
    if let Some(s) = &floor.stages {
        println!("{s}");
    }
    if floor.ok == 0 {
        bail!(
            "no floor item succeeded; first error: {}",
            floor.first_error.as_deref().unwrap_or("?")
        );
    }
    let colony = colony_phase::run(args, settings, cleanup).await?;
    println!("{colony}");
    if let Some(s) = &colony.stages {
        println!("{s}");
    }
    Ok((floor, colony))
}

/// Remove every container labelled `colony.bench=1`, and its socket directory.
async fn remove_bench_containers(socket_dir: &Path) -> anyhow::Result<usize> {
    let docker = bollard::Docker::connect_with_unix_defaults()
        .context("no Docker engine")?
        .negotiate_version()
        .await
        .context("no Docker engine")?;
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{BENCH_LABEL_KEY}={BENCH_LABEL_VALUE}")],
    )]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .context("cannot list containers")?;
    let mut removed = 0;
    for c in list {
        let Some(id) = c.id else { continue };
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(container = %id, error = %e, "could not remove container"),
        }
        for name in c.names.unwrap_or_default() {
            let name = name.trim_start_matches('/');
            if !name.is_empty() && !name.contains('/') && !name.contains("..") {
                let _ = std::fs::remove_dir_all(socket_dir.join(name));
            }
        }
    }
    Ok(removed)
}
