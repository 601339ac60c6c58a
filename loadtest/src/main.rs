//! loadtest: drives no-op `shell` tasks through Colony's whole path against
//! warm containers, and in the same run through the bare floor of the same
//! chain (publish, fetch, one commit, one call into a running container,
//! publish, one commit), and compares the two; then goals through the whole
//! loop against plain agent runs of the same machine ([`loop_phase`]).
//!
//! The phases alternate — floor, Colony, ceiling, loop; floor, Colony, … —
//! for `--rounds` rounds, and what is reported is the median of the
//! per-round ratios with their spread: this machine is noisy, and phases
//! run one after the other see different moments of it.
//!
//! Run by `ops/bench`, which gives it a fresh database and nats-server
//! through `COLONY_DATABASE_URL` and `COLONY_NATS_URL`. Stdout ends with
//! `colony/floor latency p50 X.XX, throughput Y.YY`, then (unless
//! `--goals 0`) `loop/ceiling X.XX, wake-up p50 Y.Y ms`, then (unless
//! `--schedules 0`) `schedule lateness p50/p99 …` ([`sched_phase`]); the
//! exit status is
//! non-zero if any task failed or the run did not finish within
//! `--timeout-secs`.

mod colony_phase;
mod floor;
mod gateway_phase;
mod loop_phase;
mod pool_phase;
mod sched_phase;
mod scrape_phase;
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
    /// Counted tasks per phase and round.
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Rounds of alternating phases (at least 1; 3 or more for a median
    /// worth the name).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Goals per loop round (in flight at once); 0 skips the loop phases.
    #[arg(long, default_value_t = 6)]
    pub goals: usize,
    /// Sub-tasks per goal (the second half each depends on one of the
    /// first).
    #[arg(long, default_value_t = 8)]
    pub subtasks: usize,
    /// SSE clients following goals at once at the end; 0 skips them.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
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
    /// The whole run (every phase) must finish within this.
    #[arg(long, default_value_t = 900)]
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
    /// Schedules fired by two scheduler processes in the schedule phase
    /// (after the others); 0 skips the phase.
    #[arg(long, default_value_t = 1000)]
    pub schedules: usize,
    /// Seconds the one-second schedules run.
    #[arg(long, default_value_t = 20)]
    pub schedule_secs: u64,
    /// Extra durable consumers with which one scrape of /metrics is timed;
    /// 0 skips that (the scrape every second during the rounds stays).
    #[arg(long, default_value_t = 100)]
    pub scrape_consumers: usize,
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
    /// Stop the in-process Colony, if it runs.
    async fn stop_colony(&mut self) {
        self.token.cancel();
        if let Some(h) = self.serve.take() {
            match tokio::time::timeout(Duration::from_secs(30), h).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("loadtest: colony stopped with an error: {e:#}"),
                Ok(Err(e)) => eprintln!("loadtest: colony panicked: {e}"),
                Err(_) => eprintln!("loadtest: colony did not stop within 30 s"),
            }
        }
    }

    async fn finish(&mut self) {
        self.stop_colony().await;
        match remove_bench_containers(&self.socket_dir).await {
            Ok(n) => tracing::info!(removed = n, "bench containers removed"),
            Err(e) => eprintln!(
                "loadtest: could not remove the containers labelled {BENCH_LABEL_KEY}: {e:#}"
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
    if args.tasks == 0 || args.concurrency == 0 || args.slots == 0 || args.rounds == 0 {
        eprintln!("loadtest: --tasks, --concurrency, --slots and --rounds must be at least 1");
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
        "loadtest: {} rounds; {} tasks per phase and round (+{} warm-up), concurrency {}, slots {}; loop: {} goals of {} sub-tasks per round, {} watchers",
        args.rounds, args.tasks, args.warmup, args.concurrency, args.slots, args.goals, args.subtasks, args.watchers
    );

    let limit = Duration::from_secs(args.timeout_secs);
    let outcome = tokio::time::timeout(limit, run(&args, settings, &mut cleanup)).await;
    cleanup.finish().await;

    let report = match outcome {
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
    for s in report.floor.iter().chain(&report.colony) {
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
    let latency: Vec<f64> = report
        .floor
        .iter()
        .zip(&report.colony)
        .map(|(f, c)| c.p50_ms / f.p50_ms)
        .collect();
    let throughput: Vec<f64> = report
        .floor
        .iter()
        .zip(&report.colony)
        .map(|(f, c)| c.tps / f.tps)
        .collect();
    println!(
        "rounds: colony/floor latency p50 {}; throughput {}",
        spread(&latency),
        spread(&throughput)
    );
    if !report.loops.is_empty() {
        let ratios: Vec<f64> = report.loops.iter().map(loop_phase::Round::ratio).collect();
        println!("rounds: loop/ceiling {}", spread(&ratios));
        if let Some(w) = &report.watchers {
            println!("{w}");
            failed |= w.errors > 0;
        }
    }
    println!(
        "colony/floor latency p50 {:.2}, throughput {:.2}",
        median(&latency),
        median(&throughput)
    );
    if !report.loops.is_empty() {
        let ratios: Vec<f64> = report.loops.iter().map(loop_phase::Round::ratio).collect();
        let mut wake: Vec<f64> = report
            .loops
            .iter()
            .flat_map(|r| r.wakeups.iter().copied())
            .collect();
        wake.sort_by(f64::total_cmp);
        println!(
            "loop/ceiling {:.2}, wake-up p50 {:.1} ms",
            median(&ratios),
            stats::percentile(&wake, 50.0)
        );
    }
    if let [second, minute, floor] = &report.schedules[..] {
        println!(
            "schedule lateness p50/p99 {:.1}/{:.1} ms (one-second), {:.1}/{:.1} ms (one-minute); floor {:.1}/{:.1} ms",
            second.p50_ms, second.p99_ms, minute.p50_ms, minute.p99_ms, floor.p50_ms, floor.p99_ms
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The median of per-round figures.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// `median M (min–max over N rounds: a, b, c)`.
fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "median {:.2} ({:.2}–{:.2} over {} rounds: {})",
        median(v),
        s.first().copied().unwrap_or(f64::NAN),
        s.last().copied().unwrap_or(f64::NAN),
        v.len(),
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Everything the rounds measured.
struct Report {
    floor: Vec<Summary>,
    colony: Vec<Summary>,
    loops: Vec<loop_phase::Round>,
    watchers: Option<loop_phase::Watchers>,
    schedules: Vec<sched_phase::Lateness>,
}

/// The pool and gateway phases, then `--rounds` rounds of floor, Colony,
/// ceiling and loop; each prints its lines as soon as it is done.
async fn run(
    args: &Args,
    mut settings: colony::Settings,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    if args.pool_samples > 0 {
        println!("{}", pool_phase::run(args, &settings).await?);
    }
    if args.gateway_calls > 0 {
        println!("{}", gateway_phase::run(args, &settings).await?);
    }
    let dir = std::env::temp_dir().join(format!("colony-loadtest-{}", std::process::id()));
    let (roles, scripts) = loop_phase::write_roles_and_scripts(&dir, args)?;
    settings.roles_dir = Some(roles);
    settings.scripts = Some(scripts);
    let result = rounds(args, settings.clone(), cleanup).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = result?;
    if args.schedules > 0 {
        // Colony in process runs a scheduler too: it stops first.
        cleanup.stop_colony().await;
        for l in sched_phase::run(args, &settings).await? {
            println!("{l}");
            report.schedules.push(l);
        }
    }
    Ok(report)
}

async fn rounds(
    args: &Args,
    settings: colony::Settings,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    let floor = floor::Floor::start(args, &settings).await?;
    let colony = match colony_phase::ColonyBench::start(args, settings, cleanup).await {
        Ok(c) => c,
        Err(e) => {
            floor.stop().await;
            return Err(e);
        }
    };
    let mut report = Report {
        floor: Vec::new(),
        colony: Vec::new(),
        loops: Vec::new(),
        watchers: None,
        schedules: Vec::new(),
    };
    // A Prometheus-style scrape every second while the rounds run.
    let scraper = scrape_phase::Scraper::start(&colony, Duration::from_secs(1));
    let measured = async {
        if args.goals > 0 {
            // The loop's roles start their containers and hire their
            // employees once, outside the counted rounds.
            let warm = Args {
                goals: 1,
                ..args.clone()
            };
            loop_phase::ceiling(&colony, &warm).await?;
            loop_phase::round(&colony, &warm, 1.0).await?;
        }
        for r in 1..=args.rounds {
            let f = floor.measure(args).await?;
            println!("round {r} {f}");
            if f.ok == 0 {
                bail!(
                    "no floor item succeeded; first error: {}",
                    f.first_error.as_deref().unwrap_or("?")
                );
            }
            let c = colony.measure(args).await?;
            println!("round {r} {c}");
            if r == args.rounds {
                for s in [&f.stages, &c.stages].into_iter().flatten() {
                    println!("{s}");
                }
            }
            report.floor.push(f);
            report.colony.push(c);
            if args.goals > 0 {
                let ceiling = loop_phase::ceiling(&colony, args).await?;
                println!("round {r} {ceiling}");
                let l = loop_phase::round(&colony, args, ceiling.tps).await?;
                println!("round {r} {l}");
                report.loops.push(l);
            }
        }
        if args.goals > 0 && args.watchers > 0 {
            let w = loop_phase::watchers(&colony, args).await?;
            report.watchers = Some(w);
        }
        println!("{}", scraper.report());
        if args.scrape_consumers > 0 {
            println!(
                "{}",
                scrape_phase::with_consumers(&colony, args.scrape_consumers).await?
            );
        }
        anyhow::Ok(())
    }
    .await;
    floor.stop().await;
    drop(colony);
    measured.map(|()| report)
}

/// Remove every container labelled `colony.bench` (any value), and its
/// socket directory.
async fn remove_bench_containers(socket_dir: &Path) -> anyhow::Result<usize> {
    let docker = bollard::Docker::connect_with_unix_defaults()
        .context("no Docker engine")?
        .negotiate_version()
        .await
        .context("no Docker engine")?;
    let filters = HashMap::from([(
        "label".to_string(),
        // Every value: Colony's, the floor's, the pool phase's.
        vec![BENCH_LABEL_KEY.to_string()],
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
