//! Containers for runs: the hardened spec, the pool, and agentd's socket.
//!
//! A worker asks [`Runtime::acquire`] for a container that fits a [`Want`]
//! (role, employee, image, limits). The pool hands back an idle one with the
//! same config hash (image id, role, employee and limits all match) or
//! creates one with bollard, hardened by default (see [`spec`]), and waits
//! until agentd answers on its socket. After a run the worker gives the
//! container back with [`Runtime::release`], or throws it away with
//! [`Runtime::discard`] when the run went wrong.
//!
//! The pool is bounded: at most `max_active` containers exist per worker
//! (busy and idle); at the cap, the oldest idle container of another
//! configuration is evicted to make room, and if none is idle `acquire`
//! waits for a release. [`Runtime::reap_idle`] removes containers idle for
//! longer than `idle_ttl`, keeping each role's warm minimum.
//!
//! Containers carry labels (`colony.role`, `colony.agent`, `colony.worker`,
//! `colony.config-hash`, `colony.employee`) and, when the runtime has
//! [`lease::Leases`], a lease in NATS KV. A restarted worker adopts its
//! containers and removes orphans ([`Runtime::adopt`]).

pub mod agent;
pub mod lease;
pub mod sockets;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use subjects::agent::SOCKET_DIR;

pub use spec::{GoalMount, Limits};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Docker engine is not reachable: {0}")]
    Engine(bollard::errors::Error),
    #[error("the agent image {image:?} is missing; build it with ops/build-agentd-image")]
    ImageMissing { image: String },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("container {name} did not get ready within {secs} s: {detail}")]
    NotReady {
        name: String,
        secs: u64,
        detail: String,
    },
    #[error("container lease")]
    Lease(#[from] lease::LeaseError),
    #[error("employee {0} was offboarded")]
    Offboarded(uuid::Uuid),
    #[error("the container start was interrupted")]
    Interrupted,
    #[error("cannot prepare the socket directory {path}: {source}")]
    SocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct Config {
    /// The agent image (tag or id) when a [`Want`] names none.
    pub image: String,
    /// Host directory holding one socket directory per container.
    pub socket_dir: PathBuf,
    /// Written into `colony.worker`; adoption looks for it.
    pub worker_id: String,
    /// Extra labels on every container (tests mark theirs); adoption and
    /// orphan removal only look at containers that carry them all.
    pub labels: BTreeMap<String, String>,
    /// Limits when a [`Want`] names none.
    pub limits: Limits,
    /// Idle containers kept per configuration.
    pub max_idle: usize,
    /// Containers (busy and idle) this worker may have at once.
    pub max_active: usize,
    /// Idle containers unused for longer than this are removed by
    /// [`Runtime::reap_idle`] (beyond each role's warm minimum).
    pub idle_ttl: Duration,
    /// How long a new container may take to answer on its socket.
    pub ready_timeout: Duration,
}

impl Config {
    pub fn new(image: String, socket_dir: PathBuf, worker_id: String) -> Config {
        Config {
            image,
            socket_dir,
            worker_id,
            labels: BTreeMap::new(),
            limits: Limits::default(),
            max_idle: 4,
            max_active: 16,
            idle_ttl: Duration::from_secs(600),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// What a run needs from a container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Want {
    pub role: String,
    /// An employee's containers are its own: they mount its workspace
    /// volume and are never shared with another employee.
    pub employee: Option<uuid::Uuid>,
    /// The image, when not the runtime's default.
    pub image: Option<String>,
    /// The limits, when not the runtime's default.
    pub limits: Option<Limits>,
    /// Containers of this role (busy and idle, every configuration) this
    /// worker may have at once, below the worker's own `max_active`.
    pub role_max_active: Option<usize>,
    /// Containers are never shared across tenants: whatever a run leaves
    /// behind outside `/workspace` (in `/tmp`, a detached process) stays
    /// within its tenant.
    pub tenant: Option<String>,
    /// A goal's run mounts the goal's workspace (instead of the
    /// employee's), read-only unless it does the goal's work.
    pub goal: Option<GoalMount>,
}

impl Want {
    /// A container of `role` with the runtime's defaults.
    pub fn role(role: &str) -> Want {
        Want {
            role: role.to_string(),
            employee: None,
            image: None,
            limits: None,
            role_max_active: None,
            tenant: None,
            goal: None,
        }
    }
}

/// A container this worker holds.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub role: String,
    pub employee: Option<uuid::Uuid>,
    /// The goal whose workspace it mounts.
    pub goal: Option<uuid::Uuid>,
    pub config_hash: String,
    /// Host path of its `agent.sock`.
    pub agent_socket: PathBuf,
    /// Host path of its `gateway.sock` (served by the worker).
    pub gateway_socket: PathBuf,
    /// How this acquire obtained it (for logs and metrics).
    pub source: Source,
    /// How it came into this pool.
    origin: Origin,
    /// Runs it was handed out for.
    uses: u32,
    idle_since: Instant,
}

/// How an acquire was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Created ahead of demand and not used before.
    Warm,
    /// Used by an earlier run of the same configuration.
    Reuse,
    /// Created for this acquire.
    Cold,
    /// Found running after a restart and not used since.
    Adopted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Prewarmed,
    Created,
    Adopted,
}

/// What became of a container whose connection broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.running {
            return f.write_str("the container is still running");
        }
        write!(f, "the container exited")?;
        if let Some(code) = self.exit_code {
            write!(f, " with code {code}")?;
        }
        if self.oom_killed {
            write!(f, " (killed for exceeding its memory limit)")?;
        }
        Ok(())
    }
}

/// A snapshot of the pool, for operators (it is on the wire in each
/// worker's status entry).
pub use subjects::status::PoolStatus as PoolMetrics;

/// Cold-start samples kept for the percentiles.
const COLD_SAMPLES: usize = 1024;

#[derive(Default)]
struct Pool {
    idle: HashMap<String, Vec<Container>>,
    /// Containers handed out and not yet given back.
    busy: HashMap<String, Container>,
    /// Containers being created, by role (they count against the caps).
    creating: HashMap<String, usize>,
    /// Employees whose containers go away instead of back to the pool.
    offboarded: std::collections::HashSet<uuid::Uuid>,
    m: PoolMetrics,
    cold: std::collections::VecDeque<f64>,
}

impl Pool {
    fn total(&self) -> usize {
        self.idle.values().map(Vec::len).sum::<usize>()
            + self.busy.len()
            + self.creating.values().sum::<usize>()
    }

    fn of_role(&self, role: &str) -> usize {
        self.idle
            .values()
            .flatten()
            .filter(|c| c.role == role)
            .count()
            + self.busy.values().filter(|c| c.role == role).count()
            + self.creating.get(role).copied().unwrap_or(0)
    }

    fn reserve(&mut self, role: &str) {
        *self.creating.entry(role.to_string()).or_default() += 1;
    }

    fn unreserve(&mut self, role: &str) {
        if let Some(n) = self.creating.get_mut(role) {
            *n = n.saturating_sub(1);
        }
    }
}

pub struct Runtime {
    docker: Docker,
    cfg: Config,
    default_image_id: String,
    image_ids: Mutex<HashMap<String, String>>,
    pool: Mutex<Pool>,
    /// Signalled whenever a container is given back or removed.
    freed: tokio::sync::Notify,
    /// Acquires waiting for room right now.
    waiting: std::sync::atomic::AtomicUsize,
    leases: Option<lease::Leases>,
}

/// Counts an acquire as waiting while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub use subjects::label;

impl Runtime {
    /// Connect to the local engine and check that the agent image exists.
    pub async fn connect(cfg: Config) -> Result<Arc<Runtime>> {
        Self::connect_with(cfg, None).await
    }

    /// As [`Runtime::connect`], with container leases in NATS KV.
    pub async fn connect_with(cfg: Config, leases: Option<lease::Leases>) -> Result<Arc<Runtime>> {
        // DOCKER_HOST (a socket proxy, say) when set, else the local socket.
        let docker = Docker::connect_with_defaults()
            .map_err(Error::Engine)?
            .negotiate_version()
            .await
            .map_err(Error::Engine)?;
        let default_image_id = image_id(&docker, &cfg.image).await?;
        sockets::check_root(&cfg.socket_dir).map_err(|source| Error::SocketDir {
            path: cfg.socket_dir.clone(),
            source,
        })?;
        Ok(Arc::new(Runtime {
            docker,
            image_ids: Mutex::new(HashMap::from([(
                cfg.image.clone(),
                default_image_id.clone(),
            )])),
            default_image_id,
            cfg,
            pool: Mutex::new(Pool::default()),
            freed: tokio::sync::Notify::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            leases,
        }))
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The hash that decides whether a container may be reused for `role`
    /// with the default image and limits.
    pub fn config_hash(&self, role: &str) -> String {
        spec::config_hash(
            &self.default_image_id,
            role,
            None,
            None,
            None,
            &self.cfg.limits,
        )
    }

    async fn resolve(&self, want: &Want) -> Result<(String, Limits, String)> {
        let image = want.image.clone().unwrap_or_else(|| self.cfg.image.clone());
        let cached = self
            .image_ids
            .lock()
            .expect("image cache lock")
            .get(&image)
            .cloned();
        let image_id = match cached {
            Some(id) => id,
            None => {
                let id = image_id(&self.docker, &image).await?;
                self.image_ids
                    .lock()
                    .expect("image cache lock")
                    .insert(image.clone(), id.clone());
                id
            }
        };
        let limits = want
            .limits
            .clone()
            .unwrap_or_else(|| self.cfg.limits.clone());
        let hash = spec::config_hash(
            &image_id,
            &want.role,
            want.employee,
            want.tenant.as_deref(),
            want.goal.as_ref(),
            &limits,
        );
        Ok((image_id, limits, hash))
    }

    /// An idle container that fits `want`, or a new one. At the
    /// `max_active` cap the oldest idle container of another configuration
    /// is removed to make room; with none idle, this waits for a release.
    ///
    /// Dropping the returned future (a cancelled run) is safe: a container
    /// being created is finished on its own task and goes back to the pool,
    /// and the room it reserved is accounted for either way.
    pub async fn acquire(self: &Arc<Self>, want: &Want) -> Result<Container> {
        if let Some(e) = want.employee {
            if self.pool.lock().expect("pool lock").offboarded.contains(&e) {
                return Err(Error::Offboarded(e));
            }
        }
        let (image_id, limits, hash) = self.resolve(want).await?;
        loop {
            let notified = self.freed.notified();
            let next = self.take_or_reserve(&hash, want);
            let evict = match next {
                Next::Taken(c) => return Ok(c),
                Next::Wait => {
                    let _waiting = Waiting::new(&self.waiting);
                    notified.await;
                    continue;
                }
                Next::Create { evict } => evict,
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (rt, want) = (self.clone(), want.clone());
            let (image_id, limits, hash) = (image_id.clone(), limits.clone(), hash.clone());
            tokio::spawn(async move {
                if let Some(old) = evict {
                    tracing::info!(container = %old.name, role = %old.role, "evicting the oldest idle container to make room");
                    rt.remove_container(&old).await;
                }
                let created = rt.create(&want, &image_id, &limits, hash).await;
                let result = {
                    let mut p = rt.pool.lock().expect("pool lock");
                    p.unreserve(&want.role);
                    created.map(|mut c| {
                        c.uses = 1;
                        p.m.acquire_cold += 1;
                        p.busy.insert(c.name.clone(), c.clone());
                        c
                    })
                };
                if result.is_err() {
                    rt.freed.notify_waiters();
                }
                // Nobody is waiting any more (the run was cancelled): the
                // container is as good as any idle one.
                if let Err(Ok(c)) = tx.send(result) {
                    rt.release(c).await;
                }
            });
            return rx.await.unwrap_or(Err(Error::Interrupted));
        }
    }

    /// Under the pool lock: an idle container of `hash`, or room reserved
    /// for a new one (evicting the oldest idle one at a cap: of the role at
    /// the role's cap, of any role at the worker's), or wait.
    fn take_or_reserve(&self, hash: &str, want: &Want) -> Next {
        let mut p = self.pool.lock().expect("pool lock");
        if let Some(mut c) = p.idle.get_mut(hash).and_then(Vec::pop) {
            c.source = match (c.origin, c.uses) {
                (_, n) if n > 0 => Source::Reuse,
                (Origin::Adopted, _) => Source::Adopted,
                (Origin::Prewarmed, _) => Source::Warm,
                (Origin::Created, _) => Source::Reuse,
            };
            c.uses += 1;
            match c.source {
                Source::Warm => p.m.acquire_warm += 1,
                Source::Reuse => p.m.acquire_reuse += 1,
                Source::Adopted => p.m.acquire_adopted += 1,
                Source::Cold => p.m.acquire_cold += 1,
            }
            p.busy.insert(c.name.clone(), c.clone());
            return Next::Taken(c);
        }
        let role_full = want
            .role_max_active
            .is_some_and(|cap| p.of_role(&want.role) >= cap);
        if !role_full && p.total() < self.cfg.max_active {
            p.reserve(&want.role);
            return Next::Create { evict: None };
        }
        let evict = if role_full {
            oldest_idle(&mut p.idle, |c| c.role == want.role)
        } else {
            oldest_idle(&mut p.idle, |_| true)
        };
        match evict {
            Some(old) => {
                p.m.evicted += 1;
                p.reserve(&want.role);
                Next::Create { evict: Some(old) }
            }
            None => Next::Wait,
        }
    }

    /// Create `n` containers that fit `want` ahead of demand (as far as
    /// `max_active` allows).
    pub async fn prewarm(&self, want: &Want, n: usize) -> Result<()> {
        let (image_id, limits, hash) = self.resolve(want).await?;
        for _ in 0..n {
            {
                let mut p = self.pool.lock().expect("pool lock");
                let role_full = want
                    .role_max_active
                    .is_some_and(|cap| p.of_role(&want.role) >= cap);
                if role_full || p.total() >= self.cfg.max_active {
                    return Ok(());
                }
                p.reserve(&want.role);
            }
            let created = self.create(want, &image_id, &limits, hash.clone()).await;
            {
                let mut p = self.pool.lock().expect("pool lock");
                p.unreserve(&want.role);
                if let Ok(c) = &created {
                    let mut c = c.clone();
                    c.origin = Origin::Prewarmed;
                    p.idle.entry(c.config_hash.clone()).or_default().push(c);
                }
            }
            self.freed.notify_waiters();
            created?;
        }
        Ok(())
    }

    /// Give a healthy container back to the pool.
    pub async fn release(&self, mut c: Container) {
        let surplus = {
            let mut p = self.pool.lock().expect("pool lock");
            p.busy.remove(&c.name);
            let gone = c.employee.is_some_and(|e| p.offboarded.contains(&e));
            let list = p.idle.entry(c.config_hash.clone()).or_default();
            if !gone && list.len() < self.cfg.max_idle {
                c.idle_since = Instant::now();
                list.push(c);
                None
            } else {
                Some(c)
            }
        };
        if let Some(c) = surplus {
            self.remove_container(&c).await;
            self.workspace_after_offboarding(&c).await;
        }
        self.freed.notify_waiters();
    }

    /// When the last container of an offboarded employee is gone, its
    /// workspace volume goes too.
    async fn workspace_after_offboarding(&self, c: &Container) {
        let Some(e) = c.employee else { return };
        let last = {
            let p = self.pool.lock().expect("pool lock");
            p.offboarded.contains(&e)
                && !p.busy.values().any(|b| b.employee == Some(e))
                && !p.idle.values().flatten().any(|i| i.employee == Some(e))
        };
        if last {
            if let Err(err) = self.remove_workspace(e).await {
                tracing::warn!(employee = %e, error = %err, "could not remove an offboarded employee's workspace");
            }
        }
    }

    /// Remove a container (its socket directory and lease too) for good.
    pub async fn discard(&self, c: &Container) {
        self.pool.lock().expect("pool lock").busy.remove(&c.name);
        self.remove_container(c).await;
        self.workspace_after_offboarding(c).await;
        self.freed.notify_waiters();
    }

    async fn remove_container(&self, c: &Container) {
        self.remove(&c.id, &c.name).await;
    }

    async fn remove(&self, id: &str, name: &str) {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await {
            if !matches!(
                e,
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                }
            ) {
                tracing::warn!(container = %name, error = %e, "could not remove container");
            }
        }
        let _ = std::fs::remove_dir_all(self.cfg.socket_dir.join(name));
        if let Some(l) = &self.leases {
            l.drop_lease(name).await;
        }
    }

    /// How a container is doing (after its connection broke).
    pub async fn exit_of(&self, c: &Container) -> Option<Exit> {
        let info = self
            .docker
            .inspect_container(&c.id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let st = info.state?;
        Some(Exit {
            running: st.running.unwrap_or(false),
            exit_code: st.exit_code,
            oom_killed: st.oom_killed.unwrap_or(false),
        })
    }

    /// After a container's connection broke: its state once the engine has
    /// caught up (a killed container's socket closes before the engine marks
    /// it exited), waiting at most a second.
    pub async fn exit_after_break(&self, c: &Container) -> Option<Exit> {
        let mut last = None;
        for _ in 0..20 {
            last = self.exit_of(c).await;
            match &last {
                Some(exit) if exit.running => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => break,
            }
        }
        last
    }

    async fn create(
        &self,
        want: &Want,
        image_id: &str,
        limits: &Limits,
        hash: String,
    ) -> Result<Container> {
        let started = Instant::now();
        let role = &want.role;
        let name = format!(
            "colony-{role}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        if let Some(l) = &self.leases {
            l.take(&name).await?;
        }
        let dir = self.cfg.socket_dir.join(&name);
        let paths = match sockets::prepare_container_dir(&dir) {
            Ok(p) => p,
            Err(source) => {
                self.remove("", &name).await;
                return Err(Error::SocketDir { path: dir, source });
            }
        };
        let mut labels: HashMap<String, String> = self.cfg.labels.clone().into_iter().collect();
        labels.insert(label::MANAGED.into(), "true".into());
        labels.insert(label::ROLE.into(), role.clone());
        labels.insert(label::AGENT.into(), "agentd".into());
        labels.insert(label::WORKER.into(), self.cfg.worker_id.clone());
        labels.insert(label::CONFIG_HASH.into(), hash.clone());
        if let Some(e) = want.employee {
            labels.insert(label::EMPLOYEE.into(), e.to_string());
        }
        if let Some(g) = &want.goal {
            labels.insert(label::GOAL.into(), g.goal.to_string());
        }
        // A goal's run works in the goal's workspace, any other employee
        // run in the employee's own.
        let volume = match (&want.goal, want.employee) {
            (Some(g), _) => Some((
                spec::goal_volume(g.goal),
                g.read_only,
                (label::GOAL, g.goal.to_string()),
            )),
            (None, Some(e)) => Some((
                spec::workspace_volume(e),
                false,
                (label::EMPLOYEE, e.to_string()),
            )),
            (None, None) => None,
        };
        if let Some((volume, _, (owner_label, owner))) = &volume {
            // Made here (not by the bind) so that it carries the labels;
            // creating an existing volume returns it unchanged.
            let mut vl: HashMap<String, String> = self.cfg.labels.clone().into_iter().collect();
            vl.insert(label::MANAGED.into(), "true".into());
            vl.insert(owner_label.to_string(), owner.clone());
            let req = bollard::models::VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(vl),
                ..Default::default()
            };
            if let Err(e) = self.docker.create_volume(req).await {
                self.remove("", &name).await;
                return Err(e.into());
            }
        }
        let body = spec::container_body(
            image_id,
            &dir,
            labels,
            limits,
            volume.as_ref().map(|(v, ro, _)| (v.as_str(), *ro)),
        );
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = match self.docker.create_container(Some(opts), body).await {
            Ok(r) => r.id,
            Err(e) => {
                self.remove("", &name).await;
                return Err(e.into());
            }
        };
        let c = Container {
            id: id.clone(),
            name: name.clone(),
            role: role.clone(),
            employee: want.employee,
            goal: want.goal.map(|g| g.goal),
            config_hash: hash,
            agent_socket: paths.agent,
            gateway_socket: paths.gateway,
            source: Source::Cold,
            origin: Origin::Created,
            uses: 0,
            idle_since: Instant::now(),
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            self.remove_container(&c).await;
            return Err(e.into());
        }
        if let Err(e) = self.wait_ready(&c).await {
            self.remove_container(&c).await;
            return Err(e);
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        {
            let mut p = self.pool.lock().expect("pool lock");
            p.m.observe_cold_start(ms);
            if p.cold.len() == COLD_SAMPLES {
                p.cold.pop_front();
            }
            p.cold.push_back(ms);
        }
        tracing::debug!(container = %name, role = %role, ms, "container ready");
        Ok(c)
    }

    async fn wait_ready(&self, c: &Container) -> Result<()> {
        let deadline = Instant::now() + self.cfg.ready_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if agent::ping(&c.agent_socket).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let detail = match self.exit_of(c).await {
                    Some(exit) => exit.to_string(),
                    None => "the container is gone".into(),
                };
                return Err(Error::NotReady {
                    name: c.name.clone(),
                    secs: self.cfg.ready_timeout.as_secs(),
                    detail,
                });
            }
            tokio::time::sleep(pause).await;
            // agentd answers within tens of ms of the start: poll finely.
            pause = (pause * 2).min(Duration::from_millis(4));
        }
    }

    /// After a restart: take back this worker's containers that still run
    /// a current configuration and answer (they become idle), and remove the
    /// rest together with orphans — containers of workers whose leases ran
    /// out. Only containers carrying every label in `Config::labels` are
    /// looked at. Returns (adopted, removed).
    pub async fn adopt(&self) -> Result<(usize, usize)> {
        let mut wanted = vec![format!("{}=true", label::MANAGED)];
        wanted.extend(self.cfg.labels.iter().map(|(k, v)| format!("{k}={v}")));
        if self.leases.is_none() {
            // Without leases nobody can tell a dead worker's containers from
            // a live one's: look only at this worker's own.
            wanted.push(format!("{}={}", label::WORKER, self.cfg.worker_id));
        }
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let (mut adopted, mut removed) = (0, 0);
        for s in list {
            let Some(id) = s.id else { continue };
            let labels = s.labels.unwrap_or_default();
            let name = s
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| id.clone());
            let mine = labels.get(label::WORKER) == Some(&self.cfg.worker_id);
            let holder = match &self.leases {
                Some(l) => match l.holder(&name).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "cannot read its lease; leaving it alone");
                        continue;
                    }
                },
                None => lease::Holder::Me,
            };
            match (&holder, mine) {
                // Another worker drives it (or took it over): not ours.
                (lease::Holder::Other(_), _) => continue,
                // A live worker's container whose lease is being renewed.
                (lease::Holder::Me, false) => continue,
                // Ours, or an orphan.
                _ => {}
            }
            if !mine {
                tracing::info!(container = %name, worker = ?labels.get(label::WORKER), "removing an orphan (its worker's lease ran out)");
                self.remove(&id, &name).await;
                removed += 1;
                continue;
            }
            let role = labels.get(label::ROLE).cloned().unwrap_or_default();
            let hash = labels.get(label::CONFIG_HASH).cloned().unwrap_or_default();
            let employee = labels
                .get(label::EMPLOYEE)
                .and_then(|e| uuid::Uuid::parse_str(e).ok());
            let goal = labels
                .get(label::GOAL)
                .and_then(|g| uuid::Uuid::parse_str(g).ok());
            let paths = sockets::SocketPaths::of(self.cfg.socket_dir.join(&name));
            let c = Container {
                id: id.clone(),
                name: name.clone(),
                role: role.clone(),
                employee,
                goal,
                config_hash: hash.clone(),
                agent_socket: paths.agent,
                gateway_socket: paths.gateway,
                source: Source::Adopted,
                origin: Origin::Adopted,
                uses: 0,
                idle_since: Instant::now(),
            };
            let usable = s.state.as_ref().map(|st| st.to_string()) == Some("running".into())
                && !role.is_empty()
                && agent::ping(&c.agent_socket).await
                && match &self.leases {
                    Some(l) => l.take(&name).await.is_ok(),
                    None => true,
                };
            let kept = usable && {
                let mut p = self.pool.lock().expect("pool lock");
                let room = p.total() < self.cfg.max_active;
                let list = p.idle.entry(hash).or_default();
                let room = room && list.len() < self.cfg.max_idle;
                if room {
                    list.push(c.clone());
                }
                room
            };
            if kept {
                adopted += 1;
            } else {
                self.remove(&id, &name).await;
                removed += 1;
            }
        }
        Ok((adopted, removed))
    }

    /// Keep the leases of every container this worker holds alive; drop
    /// from the pool (without removing) any another worker holds now.
    pub async fn refresh_leases(&self) {
        let Some(l) = &self.leases else { return };
        let names: Vec<String> = {
            let p = self.pool.lock().expect("pool lock");
            p.idle
                .values()
                .flatten()
                .map(|c| c.name.clone())
                .chain(p.busy.keys().cloned())
                .collect()
        };
        let lost = l.refresh(&names).await;
        if !lost.is_empty() {
            tracing::warn!(containers = ?lost, "leases taken by another worker; letting those containers go");
            let mut p = self.pool.lock().expect("pool lock");
            for list in p.idle.values_mut() {
                list.retain(|c| !lost.contains(&c.name));
            }
        }
    }

    /// Remove idle containers unused for longer than `idle_ttl`, keeping at
    /// least `keep(role)` idle containers of each role. Returns how many went.
    pub async fn reap_idle(&self, keep: impl Fn(&str) -> usize) -> usize {
        let old: Vec<Container> = {
            let mut p = self.pool.lock().expect("pool lock");
            let mut per_role: HashMap<String, usize> = HashMap::new();
            for c in p.idle.values().flatten() {
                *per_role.entry(c.role.clone()).or_default() += 1;
            }
            let mut old = Vec::new();
            let ttl = self.cfg.idle_ttl;
            for list in p.idle.values_mut() {
                // Oldest first (so the freshest stay as the warm minimum),
                // which is also the LIFO order `acquire` pops from.
                list.sort_by_key(|c| std::cmp::Reverse(c.idle_since.elapsed()));
                let mut i = 0;
                while i < list.len() {
                    let c = &list[i];
                    let left = per_role.get(&c.role).copied().unwrap_or(0);
                    if c.idle_since.elapsed() >= ttl && left > keep(&c.role) {
                        *per_role.get_mut(&c.role).expect("counted") -= 1;
                        old.push(list.remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            p.m.reaped += old.len() as u64;
            old
        };
        for c in &old {
            self.remove_container(c).await;
        }
        if !old.is_empty() {
            self.freed.notify_waiters();
        }
        old.len()
    }

    /// An employee was let go: remove its idle containers and its workspace
    /// volume now; its busy ones go when their runs end.
    pub async fn offboard(&self, employee: uuid::Uuid) -> usize {
        let idle: Vec<Container> = {
            let mut p = self.pool.lock().expect("pool lock");
            p.offboarded.insert(employee);
            let mut out = Vec::new();
            for list in p.idle.values_mut() {
                let (theirs, rest): (Vec<_>, Vec<_>) =
                    list.drain(..).partition(|c| c.employee == Some(employee));
                *list = rest;
                out.extend(theirs);
            }
            out
        };
        for c in &idle {
            self.remove_container(c).await;
        }
        self.freed.notify_waiters();
        idle.len()
    }

    /// A goal is past its retention: remove this worker's idle containers
    /// that mount its workspace, then the workspace. `Ok(false)` while a
    /// container (a run in flight, or another worker's idle one) still
    /// mounts it: the volume stays until a later try.
    pub async fn retire_goal(&self, goal: uuid::Uuid) -> Result<bool> {
        let idle: Vec<Container> = {
            let mut p = self.pool.lock().expect("pool lock");
            let mut out = Vec::new();
            for list in p.idle.values_mut() {
                let (theirs, rest): (Vec<_>, Vec<_>) =
                    list.drain(..).partition(|c| c.goal == Some(goal));
                *list = rest;
                out.extend(theirs);
            }
            out
        };
        for c in &idle {
            self.remove_container(c).await;
        }
        if !idle.is_empty() {
            self.freed.notify_waiters();
        }
        let name = spec::goal_volume(goal);
        match self
            .docker
            .remove_volume(
                &name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove an employee's workspace volume (after its containers are gone).
    pub async fn remove_workspace(&self, employee: uuid::Uuid) -> Result<()> {
        let name = spec::workspace_volume(employee);
        match self
            .docker
            .remove_volume(
                &name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove every idle container (shutdown of a pool that is not coming back).
    pub async fn drain_idle(&self) -> usize {
        let all: Vec<Container> = {
            let mut p = self.pool.lock().expect("pool lock");
            p.idle.drain().flat_map(|(_, v)| v).collect()
        };
        for c in &all {
            self.remove_container(c).await;
        }
        all.len()
    }

    /// Idle containers right now.
    pub fn idle_count(&self) -> usize {
        self.pool
            .lock()
            .expect("pool lock")
            .idle
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Idle containers of `role` right now.
    pub fn idle_of(&self, role: &str) -> usize {
        self.pool
            .lock()
            .expect("pool lock")
            .idle
            .values()
            .flatten()
            .filter(|c| c.role == role)
            .count()
    }

    pub fn metrics(&self) -> PoolMetrics {
        let p = self.pool.lock().expect("pool lock");
        let mut m = p.m.clone();
        m.active = p.busy.len();
        m.warm = p.idle.values().map(Vec::len).sum();
        m.waiting = self.waiting.load(std::sync::atomic::Ordering::Relaxed);
        let mut cold: Vec<f64> = p.cold.iter().copied().collect();
        cold.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if cold.is_empty() {
                return 0.0;
            }
            let i = ((q * cold.len() as f64).ceil() as usize).clamp(1, cold.len()) - 1;
            cold[i]
        };
        m.cold_start_p50_ms = rank(0.50);
        m.cold_start_p99_ms = rank(0.99);
        m.cold_start_max_ms = cold.last().copied().unwrap_or(0.0);
        m
    }
}

enum Next {
    Taken(Container),
    Create { evict: Option<Container> },
    Wait,
}

/// Take the idle container that has waited longest among those `eligible`.
fn oldest_idle(
    idle: &mut HashMap<String, Vec<Container>>,
    eligible: impl Fn(&Container) -> bool,
) -> Option<Container> {
    let (hash, i) = idle
        .iter()
        .flat_map(|(h, list)| list.iter().enumerate().map(move |(i, c)| (h, i, c)))
        .filter(|(_, _, c)| eligible(c))
        .max_by_key(|(_, _, c)| c.idle_since.elapsed())
        .map(|(h, i, _)| (h.clone(), i))?;
    idle.get_mut(&hash).map(|list| list.remove(i))
}

async fn image_id(docker: &Docker, image: &str) -> Result<String> {
    match docker.inspect_image(image).await {
        Ok(img) => Ok(img.id.unwrap_or_else(|| image.to_string())),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(Error::ImageMissing {
            image: image.to_string(),
        }),
        Err(e) => Err(Error::Engine(e)),
    }
}

/// Where a container's sockets are mounted inside it.
pub const CONTAINER_SOCKET_DIR: &str = SOCKET_DIR;
