//! The floor: the bare chain Colony's path is made of, with nothing else.
//!
//! Per item: the driver publishes a work message (and awaits its PubAck) →
//! one of S consumers pulls it → one Postgres commit (INSERT) → one call into
//! a running container (the same `shell` run request Colony's worker sends)
//! → publish a result message (await its PubAck) → one commit (UPDATE) → ack.
//! Latency is publish start → final commit done.
//!
//! Its own streams (`FLOOR_WORK`, `FLOOR_RESULTS`), consumer and table, so it
//! shares nothing with Colony but the servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    stream::{Config as StreamConfig, RetentionPolicy, StorageType},
};
use async_nats::HeaderMap;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subjects::agent::{AgentFrame, AgentRequest, RunRequest};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::stats::{Sample, Summary};
use crate::{Args, BENCH_LABEL_KEY};

const WORK_STREAM: &str = "FLOOR_WORK";
const RESULT_STREAM: &str = "FLOOR_RESULTS";
const WORK_SUBJECT: &str = "bench.floor.work";
const RESULT_PREFIX: &str = "bench.floor.results";
const CONSUMER: &str = "floor";
const ROLE: &str = "shell";

/// The work message.
#[derive(Serialize, Deserialize)]
struct Item {
    id: Uuid,
    input: Value,
}

/// When each step of an item ended, as seen by its consumer.
struct Steps {
    received: Instant,
    inserted: Instant,
    called: Instant,
    published: Instant,
    updated: Instant,
}

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Result<Steps, String>>>>>;

const STAGES: [&str; 6] = [
    "publish+ack",
    "ack→fetched",
    "insert",
    "agent call",
    "publish result",
    "update",
];

/// Everything a consumer needs.
#[derive(Clone)]
struct Ctx {
    js: jetstream::Context,
    pool: Pool,
    waiters: Waiters,
}

/// The floor's streams, table, containers and consumers, ready for rounds.
pub struct Floor {
    ctx: Ctx,
    js: jetstream::Context,
    rt: std::sync::Arc<runtime::Runtime>,
    stop: CancellationToken,
    consumers: JoinSet<runtime::Container>,
}

impl Floor {
    /// Streams, a table, `args.slots` containers with a consumer each, and
    /// the warm-up items.
    pub async fn start(args: &Args, settings: &colony::Settings) -> anyhow::Result<Floor> {
        let nats = colony::connect_nats(settings, subjects::auth::Kind::Admin).await?;
        let js = jetstream::new(nats.clone());
        let consumer = prepare_streams(&js).await?;
        let pool = pg_pool(settings, settings.db_pool)?;
        prepare_table(&pool).await?;

        let mut cfg = runtime::Config::new(
            settings.agent_image.clone(),
            settings.socket_dir.clone(),
            "loadtest-floor".to_string(),
        );
        // Not Colony's label value: Colony's worker runs alongside in the
        // same process and would take these for orphans of its own.
        cfg.labels = [(BENCH_LABEL_KEY.to_string(), "floor".to_string())].into();
        cfg.max_idle = args.slots;
        cfg.max_active = args.slots;
        cfg.ready_timeout = Duration::from_secs(15);
        let rt = runtime::Runtime::connect(cfg)
            .await
            .context("floor: cannot reach Docker")?;
        let started = Instant::now();
        let want = runtime::Want::role(ROLE);
        let acquired =
            futures_util::future::join_all((0..args.slots).map(|_| rt.acquire(&want))).await;
        let mut containers = Vec::new();
        let mut error = None;
        for a in acquired {
            match a {
                Ok(c) => containers.push(c),
                Err(e) => error = Some(e),
            }
        }
        if let Some(e) = error {
            for c in &containers {
                rt.discard(c).await;
            }
            return Err(e).context("floor: cannot start a container");
        }
        eprintln!(
            "loadtest: floor: {} containers ready in {:.2} s",
            containers.len(),
            started.elapsed().as_secs_f64()
        );

        let ctx = Ctx {
            js: js.clone(),
            pool: pool.clone(),
            waiters: Arc::new(Mutex::new(HashMap::new())),
        };
        let stop = CancellationToken::new();
        let mut consumers = JoinSet::new();
        for c in containers {
            consumers.spawn(consume(ctx.clone(), consumer.clone(), c, stop.clone()));
        }
        let floor = Floor {
            ctx,
            js,
            rt,
            stop,
            consumers,
        };
        let item_timeout = Duration::from_secs(args.task_timeout_secs);
        let warm = drive(&floor.ctx, args.warmup, args.concurrency, item_timeout).await;
        match warm {
            Ok(w) => {
                if let Some((Err(e), _)) = w.iter().find(|s| s.0.is_err()) {
                    let e = e.clone();
                    floor.stop().await;
                    bail!("floor: a warm-up item failed: {e}");
                }
            }
            Err(e) => {
                floor.stop().await;
                return Err(e);
            }
        }
        Ok(floor)
    }

    /// `args.tasks` counted items.
    pub async fn measure(&self, args: &Args) -> anyhow::Result<Summary> {
        let item_timeout = Duration::from_secs(args.task_timeout_secs);
        let measured = drive(&self.ctx, args.tasks, args.concurrency, item_timeout).await?;
        let (samples, stages): (Vec<Sample>, Vec<Vec<f64>>) = measured.into_iter().unzip();
        let stages: Vec<Vec<f64>> = stages.into_iter().filter(|s| !s.is_empty()).collect();
        let mut summary = Summary::of("floor", &samples);
        summary.stages = crate::stats::stage_line("floor stages", &STAGES, &stages);
        Ok(summary)
    }

    /// Stop the consumers, remove the containers and the streams.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let mut back = Vec::new();
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(r) = self.consumers.join_next().await {
                if let Ok(c) = r {
                    back.push(c);
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!("floor consumers did not stop within 10 s");
        }
        for c in &back {
            self.rt.discard(c).await;
        }
        for s in [WORK_STREAM, RESULT_STREAM] {
            let _ = self.js.delete_stream(s).await;
        }
    }
}

async fn prepare_streams(js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
    for s in [WORK_STREAM, RESULT_STREAM] {
        let _ = js.delete_stream(s).await;
    }
    // The same shapes as Colony's WORK and RESULTS streams.
    let base = |name: &str, subject: String| StreamConfig {
        name: name.to_string(),
        subjects: vec![subject],
        storage: StorageType::File,
        num_replicas: 1,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let work = js
        .create_stream(StreamConfig {
            retention: RetentionPolicy::WorkQueue,
            ..base(WORK_STREAM, WORK_SUBJECT.to_string())
        })
        .await
        .context("floor: cannot create its work stream")?;
    js.create_stream(StreamConfig {
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(3600),
        max_messages_per_subject: 1,
        ..base(RESULT_STREAM, format!("{RESULT_PREFIX}.>"))
    })
    .await
    .context("floor: cannot create its result stream")?;
    work.create_consumer(pull::Config {
        durable_name: Some(CONSUMER.to_string()),
        filter_subject: WORK_SUBJECT.to_string(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    })
    .await
    .context("floor: cannot create its consumer")
}

/// A pool on the bench database, with the same password Colony uses.
pub fn pg_pool(settings: &colony::Settings, size: usize) -> anyhow::Result<Pool> {
    let url = &settings.database_url;
    let mut pg: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("the database URL {url:?} is not valid"))?;
    if let Some(path) = &settings.database_password_file {
        let pw = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        pg.password(pw.trim());
    }
    let mgr = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("cannot build the connection pool")
}

async fn prepare_table(pool: &Pool) -> anyhow::Result<()> {
    let db = pool.get().await.context("floor: no database connection")?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS floor_items (
            id uuid PRIMARY KEY,
            state text NOT NULL,
            result jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        TRUNCATE floor_items;",
    )
    .await
    .context("floor: cannot prepare the floor_items table")?;
    Ok(())
}

/// Keep `concurrency` items in flight until `n` are finished.
async fn drive(
    ctx: &Ctx,
    n: usize,
    concurrency: usize,
    item_timeout: Duration,
) -> anyhow::Result<Vec<(Sample, Vec<f64>)>> {
    crate::stats::keep_in_flight(n, concurrency, "floor item", || {
        let ctx = ctx.clone();
        async move { one(&ctx, item_timeout).await }
    })
    .await
}

async fn one(ctx: &Ctx, item_timeout: Duration) -> (Sample, Vec<f64>) {
    let id = Uuid::now_v7();
    let (tx, rx) = oneshot::channel();
    ctx.waiters.lock().expect("waiters").insert(id, tx);
    let payload = serde_json::to_vec(&Item {
        id,
        input: json!({"command": "true"}),
    })
    .expect("items serialise");
    let mut headers = HeaderMap::new();
    headers.insert(subjects::header::MSG_ID, id.to_string().as_str());
    let start = Instant::now();
    let published = async {
        ctx.js
            .publish_with_headers(WORK_SUBJECT, headers, payload.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let acked = Instant::now();
    if let Err(e) = published {
        ctx.waiters.lock().expect("waiters").remove(&id);
        return (Err(format!("publish failed: {e}")), Vec::new());
    }
    match tokio::time::timeout(item_timeout, rx).await {
        Ok(Ok(Ok(s))) => {
            let ms = |a: Instant, b: Instant| {
                if b >= a {
                    (b - a).as_secs_f64() * 1e3
                } else {
                    -((a - b).as_secs_f64() * 1e3)
                }
            };
            let stages = vec![
                ms(start, acked),
                ms(acked, s.received),
                ms(s.received, s.inserted),
                ms(s.inserted, s.called),
                ms(s.called, s.published),
                ms(s.published, s.updated),
            ];
            (Ok((start, s.updated)), stages)
        }
        Ok(Ok(Err(e))) => (Err(e), Vec::new()),
        Ok(Err(_)) => (
            Err(format!("item {id}: its consumer went away")),
            Vec::new(),
        ),
        Err(_) => {
            ctx.waiters.lock().expect("waiters").remove(&id);
            (
                Err(format!(
                    "item {id}: not finished within {} s",
                    item_timeout.as_secs()
                )),
                Vec::new(),
            )
        }
    }
}

/// One slot: pull a message, process it with this slot's container, repeat.
async fn consume(
    ctx: Ctx,
    consumer: PullConsumer,
    container: runtime::Container,
    stop: CancellationToken,
) -> runtime::Container {
    'pull: while !stop.is_cancelled() {
        let batch = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            b = consumer.batch().max_messages(1).expires(Duration::from_secs(1)).messages() => b,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "floor: pull request failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break 'pull,
                n = batch.next() => n,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "floor: pull batch ended");
                    break;
                }
                Some(Ok(msg)) => {
                    let received = Instant::now();
                    let item: Result<Item, _> = serde_json::from_slice(&msg.payload);
                    match item {
                        Ok(item) => {
                            let id = item.id;
                            let r = process(&ctx, &container, item, received).await;
                            let waiter = ctx.waiters.lock().expect("waiters").remove(&id);
                            if let Some(w) = waiter {
                                let _ = w.send(r.map_err(|e| format!("item {id}: {e:#}")));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "floor: bad work message"),
                    }
                    if let Err(e) = msg.ack().await {
                        tracing::warn!(error = %e, "floor: ack failed");
                    }
                }
            }
        }
    }
    container
}

/// The chain: commit, run, publish, commit. Returns when the last commit is done.
async fn process(
    ctx: &Ctx,
    c: &runtime::Container,
    item: Item,
    received: Instant,
) -> anyhow::Result<Steps> {
    {
        let db = ctx.pool.get().await?;
        let st = db
            .prepare_cached("INSERT INTO floor_items (id, state) VALUES ($1, 'running')")
            .await?;
        db.execute(&st, &[&item.id]).await?;
    }
    let inserted = Instant::now();

    let req = AgentRequest::Run(RunRequest {
        v: subjects::VERSION,
        run_id: Uuid::new_v4().to_string(),
        role: ROLE.to_string(),
        input: item.input,
        timeout_ms: 10_000,
        max_output_bytes: 64 * 1024,
        fresh_workspace: true,
        agent: None,
    });
    let frame = tokio::time::timeout(
        Duration::from_secs(15),
        runtime::agent::call(&c.agent_socket, &req, None),
    )
    .await
    .context("no answer from agentd within 15 s")??;
    let output = match frame {
        AgentFrame::Result { output } => output,
        other => bail!("agentd answered {other:?}"),
    };
    if output.get("exit_code").and_then(Value::as_i64) != Some(0) {
        bail!("the command did not exit 0: {output}");
    }
    let called = Instant::now();

    let payload = serde_json::to_vec(&json!({"id": item.id, "state": "done", "result": output}))
        .expect("results serialise");
    let mut headers = HeaderMap::new();
    headers.insert(
        subjects::header::MSG_ID,
        format!("{}-result", item.id).as_str(),
    );
    ctx.js
        .publish_with_headers(
            format!("{RESULT_PREFIX}.{}", item.id),
            headers,
            payload.into(),
        )
        .await?
        .await?;
    let published = Instant::now();

    let db = ctx.pool.get().await?;
    let st = db
        .prepare_cached(
            "UPDATE floor_items SET state = 'done', result = $2, updated_at = now() WHERE id = $1",
        )
        .await?;
    let n = db.execute(&st, &[&item.id, &output]).await?;
    let updated = Instant::now();
    if n != 1 {
        bail!("the floor_items row is missing");
    }
    Ok(Steps {
        received,
        inserted,
        called,
        published,
        updated,
    })
}
