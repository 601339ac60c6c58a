//! Colony's whole path, in process: `colony::serve(Role::All)` on a tokio
//! task, tasks submitted over HTTP, results taken from the RESULTS subjects.
//!
//! Latency is POST start → the task's result message received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};
use subjects::{TaskAccepted, TaskState, TaskView};
use tokio::sync::oneshot;

use crate::stats::{Sample, Summary};
use crate::{Args, Cleanup, BENCH_LABEL_KEY, BENCH_LABEL_VALUE};

/// When the result arrived (monotonic and wall clock), and what it said.
type Verdict = (Instant, SystemTime, Result<(), String>);

/// A finished task's wall-clock ends, for the stage breakdown.
struct Trace {
    id: uuid::Uuid,
    submitted: SystemTime,
    seen: SystemTime,
}

const STAGES: [&str; 4] = [
    "POST→row insert",
    "insert→claim (commit, relay, fetch)",
    "claim→finish (claim commit, run)",
    "finish→result seen (commit, relay)",
];

/// A task's result, or the driver waiting for it (the result may arrive
/// before the POST's answer does).
enum Slot {
    Waiting(oneshot::Sender<Verdict>),
    Arrived(Verdict),
}

type Board = Arc<Mutex<HashMap<uuid::Uuid, Slot>>>;

#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    base: String,
    board: Board,
    key: String,
}

/// Colony running in process for the rounds of the bench, with an API key.
pub struct ColonyBench {
    ctx: Ctx,
    pub settings: colony::Settings,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for ColonyBench {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl ColonyBench {
    /// Start `colony::serve(Role::All)` and run the warm-up tasks.
    pub async fn start(
        args: &Args,
        mut settings: colony::Settings,
        cleanup: &mut Cleanup,
    ) -> anyhow::Result<ColonyBench> {
        let port = match args.http_port {
            Some(p) => p,
            None => free_port()?,
        };
        settings.http_addr = SocketAddr::from(([127, 0, 0, 1], port));
        settings.worker_slots = args.slots;
        settings.prewarm = args.slots;
        settings.max_idle = Some(args.slots);
        // The loop's goals each need containers of their own.
        settings.max_containers = settings.max_containers.max(32);
        settings.worker_id = Some("loadtest-colony".to_string());
        // Every scrape reads the streams and Postgres: the worst case of
        // the scrape the rounds run under.
        settings.metrics_ttl_ms = 0;
        settings.container_labels = vec![format!("{BENCH_LABEL_KEY}={BENCH_LABEL_VALUE}")];

        // Listen for results before anything can finish.
        let nats = colony::connect_nats(&settings, subjects::auth::Kind::Admin).await?;
        let mut results = nats
            .subscribe(subjects::subject::results_all())
            .await
            .context("cannot subscribe to the result subjects")?;
        nats.flush().await.context("NATS flush")?;
        let board: Board = Arc::new(Mutex::new(HashMap::new()));
        let listener = {
            let board = board.clone();
            tokio::spawn(async move {
                while let Some(msg) = results.next().await {
                    let (at, wall) = (Instant::now(), SystemTime::now());
                    let view: TaskView = match serde_json::from_slice(&msg.payload) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(subject = %msg.subject, error = %e, "result is not a TaskView");
                            continue;
                        }
                    };
                    if !view.state.is_final() {
                        continue;
                    }
                    let verdict = (at, wall, judge(&view));
                    let mut b = board.lock().expect("board");
                    match b.remove(&view.id) {
                        Some(Slot::Waiting(tx)) => {
                            let _ = tx.send(verdict);
                        }
                        // A duplicate: keep the first.
                        Some(arrived @ Slot::Arrived(_)) => {
                            b.insert(view.id, arrived);
                        }
                        None => {
                            b.insert(view.id, Slot::Arrived(verdict));
                        }
                    }
                }
            })
        };

        let token = cleanup.token.clone();
        let started = Instant::now();
        cleanup.serve = Some(tokio::spawn(colony::serve(
            colony::Role::All,
            settings.clone(),
            token,
        )));

        // The API needs a key: an operator key of the bench's own database.
        let store = colony::store_for(&settings, 1)?;
        store
            .migrate()
            .await
            .context("cannot migrate the bench database")?;
        let key = store
            .create_key("default", "loadtest", store::Scope::Operator)
            .await
            .context("cannot make an API key for the bench")?
            .secret;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("the key is not a header value")?,
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .pool_max_idle_per_host(args.concurrency.max(1) * 2)
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let base = format!("http://{}", settings.http_addr);
        wait_healthy(&http, &base, cleanup).await?;
        eprintln!(
            "loadtest: colony: healthy on {base} after {:.2} s",
            started.elapsed().as_secs_f64()
        );

        let ctx = Ctx {
            http,
            base,
            board,
            key,
        };
        let item_timeout = Duration::from_secs(args.task_timeout_secs);
        let warm_started = Instant::now();
        let warm = drive(
            &ctx,
            &shell_task(),
            args.warmup,
            args.concurrency,
            item_timeout,
        )
        .await?;
        if let Some((Err(e), _)) = warm.iter().find(|s| s.0.is_err()) {
            bail!("colony: a warm-up task failed: {e}");
        }
        eprintln!(
            "loadtest: colony: {} warm-up tasks in {:.2} s",
            warm.len(),
            warm_started.elapsed().as_secs_f64()
        );
        Ok(ColonyBench {
            ctx,
            settings,
            listener,
        })
    }

    /// The HTTP client (with the key) and the API's base URL.
    pub fn http(&self) -> (&reqwest::Client, &str) {
        (&self.ctx.http, &self.ctx.base)
    }

    /// The operator key the bench's requests carry.
    pub fn key(&self) -> &str {
        &self.ctx.key
    }

    /// `args.tasks` no-op shell tasks through the whole path.
    pub async fn measure(&self, args: &Args) -> anyhow::Result<Summary> {
        let item_timeout = Duration::from_secs(args.task_timeout_secs);
        let measured = drive(
            &self.ctx,
            &shell_task(),
            args.tasks,
            args.concurrency,
            item_timeout,
        )
        .await?;
        let (samples, traces): (Vec<Sample>, Vec<Option<Trace>>) = measured.into_iter().unzip();
        let mut summary = Summary::of("colony", &samples);
        let traces: Vec<Trace> = traces.into_iter().flatten().collect();
        summary.stages = match stages(&self.settings, &traces).await {
            Ok(rows) => crate::stats::stage_line("colony stages", &STAGES, &rows),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "no stage breakdown");
                None
            }
        };
        Ok(summary)
    }

    /// `n` tasks of `bodies` (taken in turn), `concurrency` in flight;
    /// each judged done when its final state is done (and a shell task's
    /// exit code 0).
    pub async fn run_tasks(
        &self,
        name: &'static str,
        bodies: &[Value],
        n: usize,
        concurrency: usize,
        item_timeout: Duration,
    ) -> anyhow::Result<Summary> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let samples = crate::stats::keep_in_flight(n, concurrency, name, || {
            let ctx = self.ctx.clone();
            let body = bodies
                [next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % bodies.len()]
            .clone();
            async move { one(&ctx, &body, item_timeout).await.0 }
        })
        .await?;
        Ok(Summary::of(name, &samples))
    }
}

fn shell_task() -> Value {
    json!({"role": "shell", "input": {"command": "true"}})
}

/// Stage durations (ms) of each traced task, from the timestamps Colony
/// stored (`tasks.created_at`, `runs.started_at`, `runs.finished_at`: each
/// taken just before its statement) and the two ends seen here. Best effort:
/// it reads the store's tables, whose shape is the store's business.
async fn stages(settings: &colony::Settings, traces: &[Trace]) -> anyhow::Result<Vec<Vec<f64>>> {
    let pool = crate::floor::pg_pool(settings, 1)?;
    let db = pool.get().await?;
    let ids: Vec<uuid::Uuid> = traces.iter().map(|t| t.id).collect();
    let rows = db
        .query(
            "SELECT t.id, t.created_at, r.started_at, r.finished_at
             FROM tasks t JOIN runs r ON r.task_id = t.id AND r.attempt = t.attempt
             WHERE t.id = ANY($1) AND r.finished_at IS NOT NULL",
            &[&ids],
        )
        .await
        .context("cannot read the task timestamps")?;
    let mut at: HashMap<uuid::Uuid, [SystemTime; 3]> = HashMap::with_capacity(rows.len());
    for r in rows {
        at.insert(r.try_get(0)?, [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?]);
    }
    let ms = |a: SystemTime, b: SystemTime| match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    };
    Ok(traces
        .iter()
        .filter_map(|t| {
            let [created, claimed, finished] = at.get(&t.id)?;
            Some(vec![
                ms(t.submitted, *created),
                ms(*created, *claimed),
                ms(*claimed, *finished),
                ms(*finished, t.seen),
            ])
        })
        .collect())
}

/// Done (a shell task: with exit code 0), or why not.
fn judge(view: &TaskView) -> Result<(), String> {
    let code = view
        .result
        .as_ref()
        .and_then(|r| r.get("exit_code"))
        .and_then(Value::as_i64);
    if view.state == TaskState::Done && code.is_none_or(|c| c == 0) {
        return Ok(());
    }
    Err(format!(
        "task {} ended {} (attempt {}): error {:?}, result {}",
        view.id,
        view.state,
        view.attempt,
        view.error,
        view.result.clone().unwrap_or(Value::Null)
    ))
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

async fn wait_healthy(
    http: &reqwest::Client,
    base: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<()> {
    let url = format!("{base}/healthz");
    // 600 × ~100 ms: about a minute.
    for _ in 0..600 {
        if cleanup.serve.as_ref().is_some_and(|h| h.is_finished()) {
            let h = cleanup.serve.take().expect("serve handle");
            return match h.await {
                Ok(Ok(())) => bail!("colony stopped before it was healthy"),
                Ok(Err(e)) => Err(e.context("colony failed to start")),
                Err(e) => Err(anyhow::Error::from(e).context("colony panicked while starting")),
            };
        }
        let ok = http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("colony did not answer 200 on {url} within about a minute")
}

/// Keep `concurrency` items in flight until `n` are finished.
async fn drive(
    ctx: &Ctx,
    body: &Value,
    n: usize,
    concurrency: usize,
    item_timeout: Duration,
) -> anyhow::Result<Vec<(Sample, Option<Trace>)>> {
    crate::stats::keep_in_flight(n, concurrency, "colony task", || {
        let (ctx, body) = (ctx.clone(), body.clone());
        async move { one(&ctx, &body, item_timeout).await }
    })
    .await
}

async fn one(ctx: &Ctx, body: &Value, item_timeout: Duration) -> (Sample, Option<Trace>) {
    let (start, submitted) = (Instant::now(), SystemTime::now());
    let (id, verdict) = match submit(ctx, body, item_timeout).await {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    match verdict {
        (end, seen, Ok(())) => (
            Ok((start, end)),
            Some(Trace {
                id,
                submitted,
                seen,
            }),
        ),
        (_, _, Err(e)) => (Err(e), None),
    }
}

/// POST one task and wait for its result.
async fn submit(
    ctx: &Ctx,
    body: &Value,
    item_timeout: Duration,
) -> Result<(uuid::Uuid, Verdict), String> {
    let resp = ctx
        .http
        .post(format!("{}/v1/tasks", ctx.base))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("POST /v1/tasks: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("POST /v1/tasks answered {status}: {body:.300}"));
    }
    let accepted: TaskAccepted = resp
        .json()
        .await
        .map_err(|e| format!("POST /v1/tasks: unexpected body: {e}"))?;
    let id = accepted.id;
    let rx = {
        let mut b = ctx.board.lock().expect("board");
        match b.remove(&id) {
            Some(Slot::Arrived(v)) => return Ok((id, v)),
            Some(Slot::Waiting(_)) => return Err(format!("task {id} was submitted twice")),
            None => {
                let (tx, rx) = oneshot::channel();
                b.insert(id, Slot::Waiting(tx));
                rx
            }
        }
    };
    match tokio::time::timeout(item_timeout, rx).await {
        Ok(Ok(v)) => Ok((id, v)),
        Ok(Err(_)) => Err(format!("task {id}: the result listener stopped")),
        Err(_) => {
            ctx.board.lock().expect("board").remove(&id);
            Err(format!(
                "task {id}: no result within {} s",
                item_timeout.as_secs()
            ))
        }
    }
}
