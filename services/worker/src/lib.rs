//! The stateless worker.
//!
//! A worker pulls work messages from its pools' consumers on WORK with a
//! fixed number of slots, claims each task with a guarded transition (a
//! redelivered or stale message changes nothing), runs it in a container from
//! the pool, and finishes it with one more guarded transition whose outbox
//! rows carry the result. While a run is in flight the worker keeps the
//! message alive with progress acks and the task row alive with a heartbeat;
//! a worker that dies stops both, so its message is redelivered after
//! `ack_wait` and whoever gets it takes the task over once the heartbeat is
//! stale. See [`run`] for one message's life.
//!
//! Shutdown (the token): stop pulling, let runs finish for `drain_timeout`,
//! then hand the rest back (the task goes back to `queued`, the message is
//! Nak'ed) and leave the containers running for the next start to adopt.
//!
//! State the worker keeps is only what is in flight; everything else is in
//! Postgres, NATS and the container labels.

mod backend;
mod exec;

pub use backend::StoreBackend;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;
use relay::Relay;
use store::Store;
use subjects::{stream, subject};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Why a worker could not start (or go on).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// A JetStream call failed; `what` says which.
    #[error("JetStream: {what}")]
    Nats {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the gateway could not be set up")]
    Gateway(#[from] gateway::GatewayError),
    #[error("cannot lock {path} for this worker id")]
    Lock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another worker on this host runs as {0:?}; give each worker its own COLONY_WORKER_ID"
    )]
    WorkerIdTaken(String),
    /// A loop the worker cannot do without ended.
    #[error("the worker's {0} loop stopped; the worker stops with it")]
    LoopEnded(&'static str),
}

impl Error {
    fn nats(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Nats {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub worker_id: String,
    /// The pools (roles) this worker serves.
    pub pools: Vec<String>,
    /// Runs in flight at once.
    pub slots: usize,
    /// Redelivery delay of an unacknowledged message; progress acks are sent
    /// at a third of it.
    pub ack_wait: Duration,
    pub heartbeat_interval: Duration,
    /// A running task whose heartbeat is older than this may be taken over.
    pub stale_after: Duration,
    /// Past this many deliveries a message is dead-lettered.
    pub max_deliver: i64,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Bytes kept of each of stdout and stderr.
    pub max_output_bytes: usize,
    /// Largest result (as JSON) stored; a larger one is cut (see
    /// `exec::capped`).
    pub max_result_bytes: usize,
    /// On shutdown, how long runs may go on before they are handed back.
    pub drain_timeout: Duration,
    /// Containers created per pool at start (the warm minimum idle reaping
    /// keeps).
    pub prewarm: usize,
    /// Container leases expire this long after their last renewal.
    pub lease_ttl: Duration,
    /// Role templates (the built-in `shell` needs none).
    pub roles: Arc<roles::Roles>,
    /// The model provider, prices and bounds of the gateway agent runs use.
    pub gateway: gateway::GatewayConfig,
    /// How sub-tasks an agent creates are admitted (the same rules as
    /// every other door).
    pub admission: admission::Rules,
    /// The roles and limits of the goal loop (what a plan may hold, who
    /// reviews).
    pub loop_roles: Arc<store::plans::LoopRoles>,
    /// A final goal's workspace is removed this long after its end.
    pub goal_retention: Duration,
    /// How often the worker writes its status (runs, pool metrics) to the
    /// worker registry; an entry not refreshed for 3× this disappears.
    pub status_interval: Duration,
    pub runtime: runtime::Config,
}

impl Config {
    pub fn new(worker_id: String, runtime: runtime::Config) -> Config {
        Config {
            worker_id,
            pools: vec!["shell".to_string()],
            slots: 4,
            ack_wait: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(2),
            stale_after: Duration::from_secs(10),
            max_deliver: 100,
            retry_min_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            max_output_bytes: 64 * 1024,
            max_result_bytes: 1024 * 1024,
            drain_timeout: Duration::from_secs(10),
            prewarm: 1,
            lease_ttl: Duration::from_secs(15),
            status_interval: Duration::from_secs(5),
            roles: Arc::new(roles::Roles::empty()),
            gateway: gateway::GatewayConfig::default(),
            admission: admission::Rules::default(),
            loop_roles: Arc::new(store::plans::LoopRoles::from_roles(
                &roles::Roles::empty(),
                "planner",
                store::plans::LoopLimits::default(),
            )),
            goal_retention: Duration::from_secs(7 * 24 * 3600),
            runtime,
        }
    }
}

/// What every run of this worker shares.
pub(crate) struct Shared {
    pub cfg: Config,
    pub store: Store,
    pub js: jetstream::Context,
    /// Core NATS, for what needs no acknowledgement.
    pub nats: async_nats::Client,
    pub relay: Relay,
    pub runtime: Arc<runtime::Runtime>,
    /// Serves each agent run's gateway.sock.
    pub gateway: gateway::Gateway,
    /// Task id → the token that cancels its run, and the run's attempt.
    pub inflight: Mutex<HashMap<Uuid, (CancellationToken, u32)>>,
    /// Cancelled at the end of the drain period: hand back what is left.
    pub hand_back: CancellationToken,
    /// The worker's scope (see [`run`]): cancelled when the worker ends.
    pub scope: CancellationToken,
}

/// A run's place in the in-flight set (heartbeats, cancels), taken out
/// however the run ends: finished, failed, panicked or dropped.
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    id: Uuid,
    attempt: u32,
    pub(crate) cancel: CancellationToken,
}

impl InFlight {
    pub(crate) fn enter(shared: &Arc<Shared>, id: Uuid, attempt: u32) -> InFlight {
        let cancel = shared.scope.child_token();
        shared
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (cancel.clone(), attempt));
        InFlight {
            shared: shared.clone(),
            id,
            attempt,
            cancel,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A later attempt of the same task on this worker keeps its entry.
        if map.get(&self.id).is_some_and(|(_, a)| *a == self.attempt) {
            map.remove(&self.id);
        }
    }
}

/// Goals final for longer than their retention: their workspaces go
/// (with this worker's idle containers that mount them). A workspace still
/// mounted elsewhere stays for a later try.
async fn retire_goals(shared: &Shared) {
    let goals = match shared
        .store
        .goals_to_retire(shared.cfg.goal_retention)
        .await
    {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list goals past their retention");
            return;
        }
    };
    for goal in goals {
        match shared.runtime.retire_goal(goal).await {
            Ok(true) => {
                if let Err(e) = shared.store.workspace_retired(goal).await {
                    tracing::warn!(goal = %goal, error = %e, "cannot mark a goal's workspace removed");
                } else {
                    tracing::info!(goal = %goal, "goal workspace removed (past its retention)");
                }
            }
            Ok(false) => tracing::debug!(goal = %goal, "goal workspace still mounted; later"),
            Err(e) => tracing::warn!(goal = %goal, error = %e, "cannot remove a goal's workspace"),
        }
    }
}

/// Run a worker until `shutdown`.
pub async fn run(
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    relay: Relay,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Two processes with one worker id on one host would each take the
    // other's containers for their own; the second one refuses to start.
    let _instance = claim_worker_id(&cfg)?;
    let js = jetstream::new(nats.clone());
    let leases = runtime::lease::Leases::open(&js, &cfg.worker_id, cfg.lease_ttl)
        .await
        .map_err(|e| Error::nats("the container lease bucket", e))?;
    let runtime = runtime::Runtime::connect_with(cfg.runtime.clone(), Some(leases)).await?;
    match runtime.adopt().await {
        Ok((adopted, removed)) => {
            tracing::info!(adopted, removed, "containers from an earlier run")
        }
        Err(e) => tracing::warn!(error = %e, "could not list earlier containers"),
    }
    for pool in &cfg.pools {
        // Containers are per tenant; the warm ones are for the default one.
        let want = match cfg.roles.get(pool) {
            Some(role) => exec::role_want(role, subjects::DEFAULT_TENANT, None),
            None => runtime::Want {
                tenant: Some(subjects::DEFAULT_TENANT.to_string()),
                ..runtime::Want::role(pool)
            },
        };
        let warm = warm_minimum(&cfg, pool);
        if let Err(e) = runtime
            .prewarm(&want, warm.saturating_sub(runtime.idle_of(pool)))
            .await
        {
            tracing::warn!(pool, error = %e, "prewarm failed; containers will be created on demand");
        }
    }
    let backend = backend::StoreBackend {
        store: store.clone(),
        relay: relay.downgrade(),
        roles: cfg.roles.clone(),
        admission: cfg.admission.clone(),
        loop_roles: cfg.loop_roles.clone(),
    };
    let gateway = gateway::Gateway::new(cfg.gateway.clone(), Arc::new(backend))?;
    // The worker's scope: every token and loop it makes hangs from it, and
    // it is cancelled however `run` ends (a drop guard). It is not a child
    // of `shutdown`: the drain outlives the shutdown signal (heartbeats go
    // on while runs finish), and ends with the scope.
    let scope = CancellationToken::new();
    let _scope_guard = scope.clone().drop_guard();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        gateway,
        store,
        js: js.clone(),
        nats: nats.clone(),
        relay,
        runtime,
        inflight: Mutex::new(HashMap::new()),
        hand_back: scope.child_token(),
        scope: scope.clone(),
    });

    let work = js
        .get_stream(stream::WORK)
        .await
        .map_err(|e| Error::nats(format!("stream {}", stream::WORK), e))?;
    let mut consumers = Vec::new();
    for pool in &cfg.pools {
        let c: PullConsumer = work
            .create_consumer(subjects::nats::worker_consumer(pool, cfg.ack_wait))
            .await
            .map_err(|e| Error::nats(format!("the consumer of pool {pool}"), e))?;
        consumers.push(c);
    }

    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(cfg.slots));
    // Control commands: subscribed before any work is taken, so that a
    // cancel always has someone listening.
    let commands = control_subscriptions(&nats, &cfg.worker_id).await?;
    // The loops the worker cannot do without: if one ends before the scope
    // does, the worker stops (and the process with it), rather than running
    // on without heartbeats, leases or cancels.
    let mut loops: JoinSet<&'static str> = JoinSet::new();
    {
        let shared = shared.clone();
        loops.spawn(async move {
            heartbeats(shared).await;
            "heartbeat"
        });
    }
    {
        let shared = shared.clone();
        loops.spawn(async move {
            upkeep(shared).await;
            "lease and idle upkeep"
        });
    }
    {
        let shared = shared.clone();
        loops.spawn(async move {
            control(shared, commands).await;
            "control"
        });
    }
    let registry = match registry(&js, cfg.status_interval).await {
        Ok(kv) => Some(kv),
        Err(e) => {
            tracing::warn!(error = %e, "no worker registry; status is not reported");
            None
        }
    };
    if let Some(kv) = &registry {
        let (shared, kv) = (shared.clone(), kv.clone());
        loops.spawn(async move {
            report(shared, kv).await;
            "status report"
        });
    }
    let pulls: Vec<_> = consumers
        .into_iter()
        .zip(cfg.pools.clone())
        .map(|(c, pool)| {
            // A role's own container cap bounds what its pool may hold, so
            // runs waiting for that role's containers never sit on the
            // worker's shared slots.
            let room = cfg
                .roles
                .get(&pool)
                .map(|r| (r.pool.max_active as usize).max(1))
                .unwrap_or(cfg.slots)
                .min(cfg.slots);
            tokio::spawn(pull(
                shared.clone(),
                c,
                room,
                slots.clone(),
                tracker.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    tracing::info!(worker = %cfg.worker_id, pools = ?cfg.pools, slots = cfg.slots, "worker started");

    let all_pulls = async {
        for p in pulls {
            let _ = p.await;
        }
    };
    tokio::pin!(all_pulls);
    let failed = tokio::select! {
        () = &mut all_pulls => None,
        ended = loops.join_next() => {
            let name = match ended {
                Some(Ok(name)) => name,
                Some(Err(_)) | None => "background",
            };
            tracing::error!(worker = %cfg.worker_id, "the {name} loop stopped; stopping the worker");
            shutdown.cancel();
            all_pulls.await;
            Some(name)
        }
    };
    tracker.close();
    if tokio::time::timeout(cfg.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        let left = shared.inflight.lock().expect("inflight lock").len();
        tracing::info!(runs = left, "drain timeout: handing back unfinished runs");
        shared.hand_back.cancel();
        tracker.wait().await;
    }
    scope.cancel();
    loops.shutdown().await;
    if let Some(kv) = &registry {
        let _ = kv.purge(&cfg.worker_id).await;
    }
    tracing::info!(worker = %cfg.worker_id, idle_containers = shared.runtime.idle_count(), "worker stopped; containers left for adoption");
    match failed {
        Some(name) => Err(Error::LoopEnded(name)),
        None => Ok(()),
    }
}

/// Pull messages for one pool, one task per message.
///
/// A pool fetches only while it has room of its own (`slots`, or fewer when
/// its role caps its containers lower), and
/// a fetched message then waits for one of the worker's `slots` shared by
/// every pool, with progress acks meanwhile. So an idle pool's outstanding
/// pull never holds a slot another pool's work could use, and at most
/// `slots` messages per pool wait here instead of on the server.
async fn pull(
    shared: Arc<Shared>,
    consumer: PullConsumer,
    room: usize,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let room = Arc::new(Semaphore::new(room.max(1)));
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = room.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while let Ok(p) = room.clone().try_acquire_owned() {
            permits.push(p);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pull request failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                // Messages already sent to us but not read are redelivered
                // after ack_wait; nothing else is held.
                _ = shutdown.cancelled() => return,
                n = batch.next() => n,
            };
            match next {
                None => break,
                Some(Ok(msg)) => {
                    let Some(pool_permit) = permits.pop() else {
                        // More messages than asked for: hand it straight back.
                        let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
                        continue;
                    };
                    let (shared, slots, shutdown) =
                        (shared.clone(), slots.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        let Some(slot) = wait_for_slot(&shared, &slots, &msg, &shutdown).await
                        else {
                            let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
                            return;
                        };
                        exec::handle(shared, msg).await;
                        drop((slot, pool_permit));
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pull batch ended");
                    break;
                }
            }
        }
    }
}

/// Ticks every `period`, the first one `period` from now. (Awaiting the
/// immediate first tick of `tokio::time::interval` instead costs up to a
/// millisecond: the timer wheel's resolution, on every task.)
pub(crate) fn progress_ticks(period: Duration) -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + period, period)
}

/// One of the worker's slots for `msg`, keeping the message alive while it
/// waits; `None` when the worker is shutting down first.
async fn wait_for_slot(
    shared: &Shared,
    slots: &Arc<Semaphore>,
    msg: &jetstream::Message,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(p) = slots.clone().try_acquire_owned() {
        return Some(p);
    }
    let mut progress = progress_ticks(shared.cfg.ack_wait / 3);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            p = slots.clone().acquire_owned() => return p.ok(),
            _ = progress.tick() => { let _ = msg.ack_with(jetstream::AckKind::Progress).await; }
        }
    }
}

/// Keep the rows of running tasks fresh.
async fn heartbeats(shared: Arc<Shared>) {
    let stop = shared.scope.clone();
    let mut tick = tokio::time::interval(shared.cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids: Vec<Uuid> = shared
            .inflight
            .lock()
            .expect("inflight lock")
            .keys()
            .copied()
            .collect();
        if let Err(e) = shared.store.heartbeat(&shared.cfg.worker_id, &ids).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}

/// Hold an exclusive lock on `<socket_dir>/.worker-<id>.lock` while this
/// worker runs (the kernel drops it when the process ends, however it ends).
fn claim_worker_id(cfg: &Config) -> Result<std::fs::File, Error> {
    let dir = &cfg.runtime.socket_dir;
    let path = dir.join(format!(".worker-{}.lock", cfg.worker_id));
    let file = std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        })
        .map_err(|source| Error::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::WorkerIdTaken(cfg.worker_id.clone())),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Lock { path, source }),
    }
}

/// The worker registry bucket (created on first use).
async fn registry(
    js: &jetstream::Context,
    interval: Duration,
) -> Result<jetstream::kv::Store, String> {
    if let Ok(kv) = js.get_key_value(subjects::kv::WORKERS).await {
        return Ok(kv);
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: subjects::kv::WORKERS.to_string(),
        description: "Colony workers: worker id → status".into(),
        history: 1,
        max_age: interval * 3,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// Write this worker's status to the registry until the worker ends.
async fn report(shared: Arc<Shared>, kv: jetstream::kv::Store) {
    let stop = shared.scope.clone();
    let mut tick = tokio::time::interval(shared.cfg.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = subjects::status::WorkerStatus {
            v: subjects::VERSION,
            worker_id: shared.cfg.worker_id.clone(),
            pools: shared.cfg.pools.clone(),
            slots: shared.cfg.slots,
            running: shared.inflight.lock().expect("inflight lock").len(),
            pool: shared.runtime.metrics(),
            at: time::OffsetDateTime::now_utc(),
        };
        let body = serde_json::to_vec(&status).expect("status serialises");
        if let Err(e) = kv.put(&shared.cfg.worker_id, body.into()).await {
            tracing::debug!(error = %e, "status not written");
        }
    }
}

/// Idle containers kept for `pool`: its role template's `pool.warm`, or
/// `prewarm` for a pool without one (`shell`).
fn warm_minimum(cfg: &Config, pool: &str) -> usize {
    cfg.roles
        .get(pool)
        .map(|r| r.pool.warm as usize)
        .unwrap_or(cfg.prewarm)
}

/// Keep container leases alive and reap idle containers past their TTL.
async fn upkeep(shared: Arc<Shared>) {
    let stop = shared.scope.clone();
    let every = (shared.cfg.lease_ttl / 3).min(shared.cfg.runtime.idle_ttl / 2);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.runtime.refresh_leases().await;
        let cfg = &shared.cfg;
        let reaped = shared
            .runtime
            .reap_idle(|role| {
                if cfg.pools.iter().any(|p| p == role) {
                    warm_minimum(cfg, role)
                } else {
                    0
                }
            })
            .await;
        if reaped > 0 {
            tracing::info!(reaped, "removed containers idle past their TTL");
        }
        retire_goals(&shared).await;
    }
}

/// This worker's control subjects and the broadcast ones.
type Commands = futures_util::stream::Select<
    futures_util::stream::Select<async_nats::Subscriber, async_nats::Subscriber>,
    async_nats::Subscriber,
>;

async fn control_subscriptions(
    nats: &async_nats::Client,
    worker_id: &str,
) -> Result<Commands, Error> {
    let sub = |s: String| async move {
        nats.subscribe(s.clone())
            .await
            .map_err(|e| Error::nats(format!("subscribing to {s}"), e))
    };
    let mine = sub(subject::ctl_all(worker_id)).await?;
    let all = sub(subject::ctl_broadcast(subject::CTL_CANCEL)).await?;
    let offboard = sub(subject::ctl_broadcast(subject::CTL_OFFBOARD)).await?;
    Ok(futures_util::stream::select(
        futures_util::stream::select(mine, all),
        offboard,
    ))
}

/// Cancel and offboard commands for this worker (and broadcast ones), over
/// core NATS; each checked against Postgres before anything is done.
async fn control(shared: Arc<Shared>, mut msgs: Commands) {
    let stop = shared.scope.clone();
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            m = msgs.next() => match m { Some(m) => m, None => return },
        };
        let Some(id) = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|s| Uuid::parse_str(s.trim()).ok())
        else {
            tracing::warn!(subject = %msg.subject, "control command without an id");
            continue;
        };
        // Anyone on NATS could send these: act only on what Postgres says.
        if msg.subject.ends_with(subject::CTL_OFFBOARD) {
            match shared.store.employee(id).await {
                Ok(Some(e)) if e.state == store::EmployeeState::Offboarded => {}
                Ok(_) => {
                    tracing::warn!(employee = %id, "an offboard command for an employee who is not offboarded; ignored");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(employee = %id, error = %e, "cannot check an offboard command; ignored (idle containers are reaped)");
                    continue;
                }
            }
            let removed = shared.runtime.offboard(id).await;
            if let Err(e) = shared.runtime.remove_workspace(id).await {
                tracing::debug!(employee = %id, error = %e, "workspace volume not removed (a run may still use it)");
            }
            tracing::info!(employee = %id, removed, "employee offboarded: containers removed");
            continue;
        }
        if !msg.subject.ends_with(subject::CTL_CANCEL) {
            continue;
        }
        let entry = shared
            .inflight
            .lock()
            .expect("inflight lock")
            .get(&id)
            .cloned();
        let Some((token, attempt)) = entry else {
            continue;
        };
        // Postgres decides: a run stops when its task is no longer this
        // run's (cancelled, or taken from it by the patrol); a forged
        // command changes nothing.
        match shared.store.get_task(id).await {
            Ok(Some(t))
                if t.view.state != subjects::TaskState::Running
                    || t.view.attempt != attempt
                    || t.worker_id.as_deref() != Some(shared.cfg.worker_id.as_str()) =>
            {
                tracing::info!(task = %id, state = %t.view.state, "stopping run: the task is no longer this run's");
                token.cancel();
            }
            Ok(_) => {
                tracing::warn!(task = %id, "a cancel command for a task this run still holds; ignored")
            }
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "cannot check a cancel command; the run goes on (its result is dropped if the task was cancelled)")
            }
        }
    }
}
