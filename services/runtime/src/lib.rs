//! Containers for runs: the hardened spec, the pool, and agentd's socket.
//!
//! A worker asks [`Runtime::acquire`] for a container of a role. The pool
//! hands back an idle one created from the same image and configuration (the
//! config hash matches) or creates one with bollard, hardened by default (see
//! [`spec`]), and waits until agentd answers on its socket. After a run the
//! worker gives the container back with [`Runtime::release`], or throws it
//! away with [`Runtime::discard`] when the run went wrong.
//!
//! Containers carry labels (`colony.role`, `colony.agent`, `colony.worker`,
//! `colony.config-hash`) so that a restarted worker adopts its idle
//! containers and removes what it cannot use ([`Runtime::adopt`]).
//!
//! Not here: leases across workers and warm-pool sizing per role (they come
//! with roles and employees).

pub mod agent;
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
use subjects::agent::{AGENT_SOCKET, SOCKET_DIR};

pub use spec::Limits;

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
    #[error("cannot prepare the socket directory {path}: {source}")]
    SocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct Config {
    /// The agent image (tag or id).
    pub image: String,
    /// Host directory holding one socket directory per container.
    pub socket_dir: PathBuf,
    /// Written into `colony.worker`; adoption looks for it.
    pub worker_id: String,
    /// Extra labels on every container (tests mark theirs).
    pub labels: BTreeMap<String, String>,
    pub limits: Limits,
    /// Idle containers kept per role and configuration.
    pub max_idle: usize,
    /// How long a new container may take to answer on its socket.
    pub ready_timeout: Duration,
}

/// A container this worker holds.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub role: String,
    pub config_hash: String,
    /// Host path of its `agent.sock`.
    pub agent_socket: PathBuf,
    /// How it was obtained (for logs and metrics).
    pub source: Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Warm,
    Cold,
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

pub struct Runtime {
    docker: Docker,
    cfg: Config,
    image_id: String,
    idle: Mutex<HashMap<String, Vec<Container>>>,
}

pub use subjects::label;

impl Runtime {
    /// Connect to the local engine and check that the agent image exists.
    pub async fn connect(cfg: Config) -> Result<Arc<Runtime>> {
        let docker = Docker::connect_with_unix_defaults()
            .map_err(Error::Engine)?
            .negotiate_version()
            .await
            .map_err(Error::Engine)?;
        let image_id = match docker.inspect_image(&cfg.image).await {
            Ok(img) => img.id.unwrap_or_else(|| cfg.image.clone()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(Error::ImageMissing {
                    image: cfg.image.clone(),
                })
            }
            Err(e) => return Err(Error::Engine(e)),
        };
        std::fs::create_dir_all(&cfg.socket_dir).map_err(|source| Error::SocketDir {
            path: cfg.socket_dir.clone(),
            source,
        })?;
        Ok(Arc::new(Runtime {
            docker,
            cfg,
            image_id,
            idle: Mutex::new(HashMap::new()),
        }))
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The hash that decides whether a container may be reused for `role`.
    pub fn config_hash(&self, role: &str) -> String {
        spec::config_hash(&self.image_id, role, &self.cfg.limits)
    }

    /// An idle container of `role` with the current configuration, or a new one.
    pub async fn acquire(&self, role: &str) -> Result<Container> {
        let hash = self.config_hash(role);
        let warm = self
            .idle
            .lock()
            .expect("idle pool lock")
            .get_mut(&hash)
            .and_then(Vec::pop);
        if let Some(mut c) = warm {
            c.source = Source::Warm;
            return Ok(c);
        }
        self.create(role, hash).await
    }

    /// Create `n` containers of `role` ahead of demand.
    pub async fn prewarm(&self, role: &str, n: usize) -> Result<()> {
        for _ in 0..n {
            let c = self.create(role, self.config_hash(role)).await?;
            self.release(c).await;
        }
        Ok(())
    }

    /// Give a healthy container back to the pool.
    pub async fn release(&self, c: Container) {
        let surplus = {
            let mut idle = self.idle.lock().expect("idle pool lock");
            let list = idle.entry(c.config_hash.clone()).or_default();
            if list.len() < self.cfg.max_idle {
                list.push(c);
                None
            } else {
                Some(c)
            }
        };
        if let Some(c) = surplus {
            self.discard(&c).await;
        }
    }

    /// Remove a container (and its socket directory) for good.
    pub async fn discard(&self, c: &Container) {
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

    async fn create(&self, role: &str, hash: String) -> Result<Container> {
        let started = Instant::now();
        let name = format!(
            "colony-{role}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let dir = self.cfg.socket_dir.join(&name);
        spec::prepare_socket_dir(&dir).map_err(|source| Error::SocketDir {
            path: dir.clone(),
            source,
        })?;
        let mut labels: HashMap<String, String> = self.cfg.labels.clone().into_iter().collect();
        labels.insert(label::MANAGED.into(), "true".into());
        labels.insert(label::ROLE.into(), role.into());
        labels.insert(label::AGENT.into(), "agentd".into());
        labels.insert(label::WORKER.into(), self.cfg.worker_id.clone());
        labels.insert(label::CONFIG_HASH.into(), hash.clone());
        let body = spec::container_body(&self.image_id, &dir, labels, &self.cfg.limits);
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self.docker.create_container(Some(opts), body).await;
        let id = match created {
            Ok(r) => r.id,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let c = Container {
            id: id.clone(),
            name: name.clone(),
            role: role.to_string(),
            config_hash: hash,
            agent_socket: dir.join(AGENT_SOCKET),
            source: Source::Cold,
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            self.discard(&c).await;
            return Err(e.into());
        }
        if let Err(e) = self.wait_ready(&c).await {
            self.discard(&c).await;
            return Err(e);
        }
        tracing::debug!(container = %name, role, ms = started.elapsed().as_millis() as u64, "container ready");
        Ok(c)
    }

    async fn wait_ready(&self, c: &Container) -> Result<()> {
        let deadline = Instant::now() + self.cfg.ready_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if c.agent_socket.exists() && agent::ping(&c.agent_socket).await {
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
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Containers labelled with this worker's id: keep the running ones
    /// whose configuration still matches and whose agentd answers (they
    /// become idle), remove the rest. Returns (adopted, removed).
    pub async fn adopt(&self) -> Result<(usize, usize)> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", label::WORKER, self.cfg.worker_id)],
        )]);
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
            let role = labels.get(label::ROLE).cloned().unwrap_or_default();
            let hash = labels.get(label::CONFIG_HASH).cloned().unwrap_or_default();
            let c = Container {
                id: id.clone(),
                name: name.clone(),
                role: role.clone(),
                config_hash: hash.clone(),
                agent_socket: self.cfg.socket_dir.join(&name).join(AGENT_SOCKET),
                source: Source::Adopted,
            };
            let usable = s.state.as_ref().map(|st| st.to_string()) == Some("running".into())
                && !role.is_empty()
                && hash == self.config_hash(&role)
                && agent::ping(&c.agent_socket).await;
            let kept = usable && {
                let mut idle = self.idle.lock().expect("idle pool lock");
                let list = idle.entry(hash).or_default();
                let room = list.len() < self.cfg.max_idle;
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

    /// Remove every idle container (shutdown of a pool that is not coming back).
    pub async fn drain_idle(&self) -> usize {
        let all: Vec<Container> = {
            let mut idle = self.idle.lock().expect("idle pool lock");
            idle.drain().flat_map(|(_, v)| v).collect()
        };
        for c in &all {
            self.discard(c).await;
        }
        all.len()
    }

    /// Idle containers right now.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .expect("idle pool lock")
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Where a container's sockets are mounted inside it.
pub const CONTAINER_SOCKET_DIR: &str = SOCKET_DIR;
