//! The schedule phase: fire lateness (due time → task created) of
//! `--schedules` schedules decided by two `colony scheduler` processes,
//! against the floor of a fire: a timer of the same process count waking
//! at each due time and committing one row.
//!
//! Two runs: every schedule on a one-second cron for `--schedule-secs`
//! seconds, then every schedule on a one-minute cron for two minute
//! boundaries. Every fire time must have exactly one fire row and one
//! task; nothing may be missed or skipped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use serde_json::json;
use subjects::schedules::{Overlap, ScheduleSpec};
use time::OffsetDateTime;

use crate::floor::pg_pool;
use crate::stats::percentile;
use crate::Args;

/// What one run measured.
pub struct Lateness {
    pub name: String,
    pub fires: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for Lateness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} fires, lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.name, self.fires, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

fn lateness(name: String, mut ms: Vec<f64>) -> Lateness {
    ms.sort_by(f64::total_cmp);
    Lateness {
        name,
        fires: ms.len(),
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    }
}

struct Schedulers(Vec<Child>);

impl Drop for Schedulers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_schedulers(n: usize) -> anyhow::Result<Schedulers> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("colony"))
        .filter(|b| b.exists())
        .context("no colony binary next to loadtest (ops/bench builds both)")?;
    let mut out = Schedulers(Vec::new());
    for i in 0..n {
        out.0.push(
            Command::new(&bin)
                .arg("scheduler")
                .env("COLONY_WORKER_ID", format!("bench-scheduler-{i}"))
                .env("COLONY_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start colony scheduler")?,
        );
    }
    Ok(out)
}

/// Runs the phase; the in-process Colony must be stopped (its scheduler
/// would be a third).
pub async fn run(args: &Args, settings: &colony::Settings) -> anyhow::Result<Vec<Lateness>> {
    let store = colony::store_for(settings, 8)?;
    store.migrate().await?;
    let pool = pg_pool(settings, 16)?;
    let rules = settings.admission_rules(&roles::Roles::empty());
    let _schedulers = spawn_schedulers(2)?;
    let mut out = Vec::new();
    let n = args.schedules;
    let secs = args.schedule_secs.max(5);
    out.push(
        one(
            &store,
            &pool,
            &rules,
            n,
            "* * * * * *",
            secs,
            Duration::from_secs(1),
            &format!("{n} one-second schedules, {secs} s"),
        )
        .await?,
    );
    out.push(
        one(
            &store,
            &pool,
            &rules,
            n,
            "0 * * * * *",
            2,
            Duration::from_secs(60),
            &format!("{n} one-minute schedules, 2 minutes"),
        )
        .await?,
    );
    out.push(floor(&pool, n, secs).await?);
    Ok(out)
}

/// `n` schedules on `cron` measured over `count` fire times `step` apart.
#[allow(clippy::too_many_arguments)]
async fn one(
    store: &store::Store,
    pool: &Pool,
    rules: &admission::Rules,
    n: usize,
    cron: &str,
    count: u64,
    step: Duration,
    name: &str,
) -> anyhow::Result<Lateness> {
    let now = OffsetDateTime::now_utc();
    // Start at the next step boundary at least 3 s away (the schedulers
    // and the schedules are ready by then).
    let step_s = step.as_secs() as i64;
    let start_unix = (now.unix_timestamp() + 3 + step_s - 1) / step_s * step_s;
    let start = OffsetDateTime::from_unix_timestamp(start_unix)?;
    let end = start + time::Duration::seconds(step_s * count as i64 - 1);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    for i in 0..n {
        let spec = ScheduleSpec {
            name: format!("bench {tag} {i}"),
            cron: cron.to_string(),
            timezone: "UTC".into(),
            task: Some(json!({"role": "shell", "input": {"command": "true"}})),
            goal: None,
            overlap: Overlap::Allow,
            catchup_window: None,
            catchup: Default::default(),
            jitter: None,
            start_at: Some(start),
            end_at: Some(end),
            paused: false,
        };
        let tenant = format!("bench-{}", &tag[..12]);
        let c = scheduler::spec::check(&spec, &tenant, rules, now).map_err(anyhow::Error::msg)?;
        let mut new = c.new;
        new.next_fire_at = scheduler::spec::first_after(&c.schedule, now, new.start_at, new.end_at);
        store.create_schedule(&new).await?;
    }
    let wait = (end - OffsetDateTime::now_utc()).unsigned_abs() + Duration::from_secs(5);
    tokio::time::sleep(wait).await;
    let (fires, late, bad) = fires_of(pool, &format!("bench {tag} %")).await?;
    let want = n * count as usize;
    if fires != want || bad > 0 {
        bail!("{name}: {fires} fire rows of {want} expected, {bad} not fired (missed, skipped or failed)");
    }
    Ok(lateness(name.to_string(), late))
}

/// The floor: two timers (as many as schedulers), each waking for half of
/// `n` due times a second and committing one row per fire, `secs` seconds.
async fn floor(pool: &Pool, n: usize, secs: u64) -> anyhow::Result<Lateness> {
    pool.get()
        .await?
        .batch_execute(
            "DROP TABLE IF EXISTS bench_floor_fires;
             CREATE TABLE bench_floor_fires (n bigint NOT NULL, due timestamptz NOT NULL, at timestamptz NOT NULL,
                                             PRIMARY KEY (n, due))",
        )
        .await
        .context("floor: cannot make its table")?;
    let now = OffsetDateTime::now_utc();
    let start = OffsetDateTime::from_unix_timestamp(now.unix_timestamp() + 2)?;
    let mut handles = Vec::new();
    for part in 0..2usize {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let mut late = Vec::new();
            for s in 0..secs as i64 {
                let due = start + time::Duration::seconds(s);
                let left = (due - OffsetDateTime::now_utc()).unsigned_abs();
                if due > OffsetDateTime::now_utc() {
                    tokio::time::sleep(left).await;
                }
                let fires = futures_util::stream::iter((0..n).filter(|i| i % 2 == part))
                    .map(|i| {
                        let pool = pool.clone();
                        async move { floor_fire(&pool, i as i64, due).await }
                    })
                    .buffer_unordered(8)
                    .collect::<Vec<_>>()
                    .await;
                for f in fires {
                    late.push(f?);
                }
            }
            anyhow::Ok(late)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    Ok(lateness(
        format!("floor (a timer and one committed row per fire, {n} a second, {secs} s)"),
        all,
    ))
}

/// One fire of the floor: a committed row; returns its lateness.
async fn floor_fire(pool: &Pool, n: i64, due: OffsetDateTime) -> anyhow::Result<f64> {
    let db = pool.get().await?;
    let stmt = db
        .prepare_cached("INSERT INTO bench_floor_fires (n, due, at) VALUES ($1, $2, now()) ON CONFLICT DO NOTHING")
        .await?;
    db.execute(&stmt, &[&n, &due]).await?;
    Ok((OffsetDateTime::now_utc() - due).as_seconds_f64() * 1e3)
}

/// (fire rows, lateness of the fired ones, rows not fired) of the
/// schedules named like `pattern`.
async fn fires_of(pool: &Pool, pattern: &str) -> anyhow::Result<(usize, Vec<f64>, usize)> {
    let db = pool.get().await?;
    let rows = db
        .query(
            "SELECT f.outcome, f.lateness_ms FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id
             WHERE s.name LIKE $1",
            &[&pattern],
        )
        .await?;
    let mut late = Vec::new();
    let mut bad = 0;
    for r in &rows {
        match (r.get::<_, &str>(0), r.get::<_, Option<f64>>(1)) {
            ("fired", Some(l)) => late.push(l),
            _ => bad += 1,
        }
    }
    let tasks: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks t JOIN schedule_fires f ON f.task_id = t.id
             JOIN schedules s ON s.id = f.schedule_id WHERE s.name LIKE $1",
            &[&pattern],
        )
        .await?
        .get(0);
    if tasks as usize != late.len() {
        bail!("{} fired rows but {tasks} tasks", late.len());
    }
    Ok((rows.len(), late, bad))
}
