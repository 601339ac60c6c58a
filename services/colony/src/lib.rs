//! What the `colony` binary runs: the settings every role shares, and
//! [`serve`], which connects to NATS and Postgres, makes sure the streams and
//! the schema exist, starts the outbox relay, and runs one role or all of
//! them until the shutdown token fires.
//!
//! It is a library so that tests start exactly what production starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use clap::Args;
use tokio_util::sync::CancellationToken;

pub mod nats_auth;

/// Settings shared by every role: defaults → `COLONY_*` environment → flags.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    #[arg(long, env = "COLONY_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Directory of NATS passwords, one file per user (`colony-worker.password`,
    /// …; see `colony nats-config`): each process connects as the user of
    /// its kind. Unset: connect without a user (a server without
    /// authorization).
    #[arg(long, env = "COLONY_NATS_CREDENTIALS")]
    pub nats_credentials: Option<PathBuf>,
    #[arg(
        long,
        env = "COLONY_DATABASE_URL",
        default_value = "postgres://colony@127.0.0.1:54329/colony"
    )]
    pub database_url: String,
    /// A file holding the database password (never put it in the URL or
    /// on the command line); `ops/up` writes `.colony/pg.password`.
    #[arg(long, env = "COLONY_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,

    #[arg(long, env = "COLONY_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,
    #[arg(long, env = "COLONY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// A listener bound already by whoever starts Colony in-process (a
    /// test); the first ingress takes it instead of binding `http_addr`.
    #[arg(skip)]
    pub http_listener: ingress::SharedListener,
    #[arg(long, env = "COLONY_AGENT_IMAGE", default_value = "colony/agentd:dev")]
    pub agent_image: String,
    /// Host directory for per-container socket directories: it and every
    /// directory above it must be root's and closed to others.
    #[arg(long, env = "COLONY_SOCKET_DIR", default_value = "/run/colony/sockets")]
    pub socket_dir: PathBuf,
    /// Stable across restarts, so that a restarted worker adopts its containers.
    #[arg(long, env = "COLONY_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Comma-separated pools (roles) the worker serves (default: `shell`
    /// and every loaded role template).
    #[arg(long, env = "COLONY_POOLS", value_delimiter = ',')]
    pub pools: Vec<String>,
    #[arg(long, env = "COLONY_WORKER_SLOTS", default_value_t = 4)]
    pub worker_slots: usize,
    #[arg(long, env = "COLONY_ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    #[arg(long, env = "COLONY_HEARTBEAT_MS", default_value_t = 2_000)]
    pub heartbeat_ms: u64,
    #[arg(long, env = "COLONY_STALE_AFTER_MS", default_value_t = 10_000)]
    pub stale_after_ms: u64,
    #[arg(long, env = "COLONY_RETRY_MIN_MS", default_value_t = 1_000)]
    pub retry_min_ms: u64,
    #[arg(long, env = "COLONY_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Containers started per pool when the worker starts.
    #[arg(long, env = "COLONY_PREWARM", default_value_t = 1)]
    pub prewarm: usize,
    /// Idle containers kept per pool (default: the worker's slots).
    #[arg(long, env = "COLONY_MAX_IDLE")]
    pub max_idle: Option<usize>,
    /// Containers (busy and idle) one worker may have at once; at the cap the
    /// oldest idle one is evicted to make room.
    #[arg(long, env = "COLONY_MAX_CONTAINERS", default_value_t = 16)]
    pub max_containers: usize,
    /// Idle containers unused this long are removed (beyond the warm minimum).
    #[arg(long, env = "COLONY_IDLE_TTL_SECS", default_value_t = 600)]
    pub idle_ttl_secs: u64,
    /// Container leases in NATS KV expire this long after a worker stops
    /// renewing them; then its containers are orphans any worker may remove.
    #[arg(long, env = "COLONY_LEASE_TTL_MS", default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// Extra container labels, `key=value,key=value`.
    #[arg(long, env = "COLONY_CONTAINER_LABELS", value_delimiter = ',')]
    pub container_labels: Vec<String>,
    #[arg(long, env = "COLONY_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Levels of sub-tasks (an agent's `task.create`) below a task a person
    /// submitted.
    #[arg(long, env = "COLONY_MAX_TASK_DEPTH", default_value_t = 3)]
    pub max_task_depth: u32,
    /// Sub-tasks one task may create.
    #[arg(long, env = "COLONY_MAX_SUBTASKS", default_value_t = 50)]
    pub max_subtasks: u32,
    /// HTTP requests a second one client address may make, before any key
    /// is looked up (bursts up to twice this).
    #[arg(long, env = "COLONY_RATE_PER_PEER", default_value_t = 2000)]
    pub rate_per_peer: u32,
    /// HTTP requests a second one API key may make (bursts up to twice
    /// this).
    #[arg(long, env = "COLONY_RATE_PER_KEY", default_value_t = 1000)]
    pub rate_per_key: u32,
    /// Directory of role templates (`<role>.yaml`); default `roles` when
    /// that directory exists, else only the built-in shell role is known.
    #[arg(long, env = "COLONY_ROLES_DIR")]
    pub roles_dir: Option<PathBuf>,
    /// Key of the credential vault: 32 bytes as 64 hex characters or base64
    /// (`openssl rand -hex 32`), from `COLONY_VAULT_KEY` or the file
    /// `COLONY_VAULT_KEY_FILE` names — never a flag, so it is never on a
    /// command line. Without it the credential API answers 503.
    #[arg(skip = secret_from_env("COLONY_VAULT_KEY"))]
    pub vault_key: Option<Secret>,
    /// Base URL of an OpenAI-compatible provider (`https://api.openai.com/v1`,
    /// a vLLM or Ollama server, …). Unset: agent runs use the scripted
    /// provider Colony starts in-process, and every answer says so.
    #[arg(long, env = "COLONY_MODEL_BASE_URL")]
    pub model_base_url: Option<String>,
    /// The provider's API key, from `COLONY_MODEL_API_KEY` or the file
    /// `COLONY_MODEL_API_KEY_FILE` names (never a flag): only the worker's
    /// gateway holds it.
    #[arg(skip = secret_from_env("COLONY_MODEL_API_KEY"))]
    pub model_api_key: Option<Secret>,
    /// Role model name → provider model, `name=provider-model,…`.
    #[arg(long, env = "COLONY_MODEL_MAP", value_delimiter = ',')]
    pub model_map: Vec<String>,
    /// Prices per million tokens, `model=input/output,…` in USD (e.g.
    /// `gpt-4o-mini=0.15/0.6`); a model without a price costs 0.
    #[arg(long, env = "COLONY_MODEL_PRICES", value_delimiter = ',')]
    pub model_prices: Vec<String>,
    /// Private address ranges (CIDRs, `10.0.0.0/8,127.0.0.1/32`) that agent
    /// egress may reach when a role's allowlist names them. Unset: public
    /// addresses only. Link-local and metadata addresses stay closed.
    #[arg(long, env = "COLONY_EGRESS_ALLOW_PRIVATE", value_delimiter = ',')]
    pub egress_allow_private: Vec<String>,
    /// Extra scripts (JSON) for the in-process scripted provider, added to
    /// its built-in ones (demo, echo, tools, slow, broken).
    #[arg(long, env = "COLONY_SCRIPTS")]
    pub scripts: Option<PathBuf>,
    /// The role that plans goals and writes their deliverables; it may plan
    /// the roles its `may_create` lists.
    #[arg(long, env = "COLONY_PLANNER_ROLE", default_value = "planner")]
    pub planner_role: String,
    /// Sub-tasks one goal's plan may have.
    #[arg(long, env = "COLONY_GOAL_MAX_SUBTASKS", default_value_t = 50)]
    pub goal_max_subtasks: u32,
    /// Times a refused plan goes back to the planner before the goal waits
    /// for a person.
    #[arg(long, env = "COLONY_PLAN_RETRIES", default_value_t = 2)]
    pub plan_retries: u32,
    /// Attempts of a goal's sub-task before it waits for a person.
    #[arg(long, env = "COLONY_SUBTASK_ATTEMPTS", default_value_t = 3)]
    pub subtask_attempts: u32,
    /// A final goal's shared workspace is removed this long after its end.
    #[arg(long, env = "COLONY_GOAL_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub goal_retention_secs: u64,
    /// The patrol sweeps this often.
    #[arg(long, env = "COLONY_PATROL_INTERVAL_MS", default_value_t = 2000)]
    pub patrol_interval_ms: u64,
    /// A running task whose worker has not heartbeat for this long is
    /// requeued by the patrol.
    #[arg(long, env = "COLONY_PATROL_STALE_SECS", default_value_t = 30)]
    pub patrol_stale_secs: u64,
    /// The same tool call with the same result this many times in a row
    /// stops a run as stuck.
    #[arg(long, env = "COLONY_PATROL_LOOP_REPEATS", default_value_t = 5)]
    pub patrol_loop_repeats: u32,
    /// A run with no new output for this long is stopped as stuck.
    #[arg(long, env = "COLONY_PATROL_SILENT_SECS", default_value_t = 300)]
    pub patrol_silent_secs: u64,
    /// A task queued and unclaimed for this long raises an alert.
    #[arg(long, env = "COLONY_PATROL_UNCLAIMED_SECS", default_value_t = 60)]
    pub patrol_unclaimed_secs: u64,
    /// A running goal where nothing changed for this long raises an alert.
    #[arg(long, env = "COLONY_PATROL_GOAL_IDLE_SECS", default_value_t = 900)]
    pub patrol_goal_idle_secs: u64,
    /// One task started this many times within ten minutes raises an alert.
    #[arg(long, env = "COLONY_PATROL_STORM_RUNS", default_value_t = 5)]
    pub patrol_storm_runs: u32,
    /// The dead-letter stream growing by this many messages raises an alert.
    #[arg(long, env = "COLONY_PATROL_DLQ_GROWTH", default_value_t = 10)]
    pub patrol_dlq_growth: u64,
    /// `GET /metrics` reads the streams, the consumers and Postgres at
    /// most this often (scrapes between are served from what it read).
    #[arg(long, env = "COLONY_METRICS_TTL_MS", default_value_t = 5000)]
    pub metrics_ttl_ms: u64,
    /// Serve the dashboard's files from this directory, read at every
    /// request, instead of the copies built into the binary (for working
    /// on the dashboard without rebuilding).
    #[arg(long, env = "COLONY_UI_DIR")]
    pub ui_dir: Option<std::path::PathBuf>,
    /// Loops of one scheduler deciding due schedules at once (each a
    /// transaction of up to 100).
    #[arg(long, env = "COLONY_SCHEDULER_CONCURRENCY", default_value_t = 4)]
    pub scheduler_concurrency: usize,
}

/// A secret from the environment: `NAME`, else the contents of the file
/// `NAME_FILE` names (trimmed). Secrets are never flags.
pub fn secret_from_env(name: &str) -> Option<Secret> {
    if let Some(v) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
        return Some(Secret(v));
    }
    let path = std::env::var_os(format!("{name}_FILE"))?;
    match std::fs::read_to_string(&path) {
        Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
        Ok(_) => None,
        Err(e) => {
            // Like a bad flag: running on without the secret (the vault off,
            // no provider key) would hide the mistake.
            eprintln!(
                "colony: cannot read {name}_FILE {}: {e}",
                std::path::Path::new(&path).display()
            );
            std::process::exit(2)
        }
    }
}

/// A setting that must not be printed: `Debug` shows `***`, and it is
/// parsed only after the command line so that no error echoes it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl Settings {
    /// The settings with only defaults and the environment applied.
    pub fn from_env() -> Settings {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            s: Settings,
        }
        <Only as clap::Parser>::parse_from(["colony"]).s
    }

    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let host: String = host
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            format!("worker-{}", if host.is_empty() { "local" } else { &host })
        })
    }

    /// The settings without secrets, for logs.
    pub fn redacted(&self) -> String {
        let db = store::redact_url(&self.database_url);
        format!(
            "nats={} database={db} http={} image={} sockets={} worker={} pools={:?} slots={} roles={} vault={} model={} egress_private={:?}",
            self.nats_url,
            self.http_addr,
            self.agent_image,
            self.socket_dir.display(),
            self.worker_id(),
            self.pools,
            self.worker_slots,
            self.roles_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("roles"))
                .display(),
            if self.vault_key.is_some() { "set" } else { "unset" },
            self.model_base_url.as_deref().unwrap_or("scripted (in-process)"),
            self.egress_allow_private
        )
    }

    /// The role templates of `roles_dir`: every problem of every template
    /// refuses the start, each on its own line.
    pub fn load_roles(&self) -> anyhow::Result<roles::Roles> {
        let dir = match &self.roles_dir {
            Some(dir) => dir.clone(),
            None if std::path::Path::new("roles").is_dir() => PathBuf::from("roles"),
            None => {
                tracing::warn!("no ./roles directory and no COLONY_ROLES_DIR: only the built-in shell role is known");
                return Ok(roles::Roles::empty());
            }
        };
        let loaded = roles::Roles::load_dir(&dir).map_err(|errors| {
            anyhow::anyhow!(
                "{} role template problem(s) in {}; fix them or point COLONY_ROLES_DIR elsewhere:\n{}",
                errors.len(),
                dir.display(),
                roles::report(&errors)
            )
        })?;
        tracing::info!(dir = %dir.display(), roles = ?loaded.names().collect::<Vec<_>>(), "role templates loaded");
        Ok(loaded)
    }

    fn labels(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.container_labels
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("container label {l:?} is not key=value"))
            })
            .collect()
    }

    /// The pools a worker serves: as configured, or `shell` and every role.
    pub fn pools(&self, roles: &roles::Roles) -> Vec<String> {
        let mut pools: Vec<String> = self
            .pools
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect();
        if pools.is_empty() {
            pools.push(roles::SHELL.to_string());
            pools.extend(roles.names().map(str::to_string));
        }
        pools
    }

    /// The private ranges agent egress and webhooks may reach.
    pub fn allow_private(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.egress_allow_private
            .iter()
            .filter(|c| !c.is_empty())
            .map(|cidr| {
                cidr.trim()
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| cidr.trim().parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "COLONY_EGRESS_ALLOW_PRIVATE entry {cidr:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address"
                        )
                    })
            })
            .collect()
    }

    /// The gateway's provider and prices; `base_url` is the provider to
    /// use (the configured one, or the in-process scripted one).
    pub fn gateway_config(&self, base_url: String) -> anyhow::Result<gateway::GatewayConfig> {
        let mut c = gateway::GatewayConfig::default();
        c.provider.base_url = base_url;
        c.provider.api_key = self.model_api_key.as_ref().map(|k| k.0.clone());
        c.allow_private = self.allow_private()?;
        for m in self.model_map.iter().filter(|m| !m.is_empty()) {
            let (from, to) = m.split_once('=').with_context(|| {
                format!("COLONY_MODEL_MAP entry {m:?} is not name=provider-model")
            })?;
            c.provider.models.insert(from.to_string(), to.to_string());
        }
        for p in self.model_prices.iter().filter(|p| !p.is_empty()) {
            let parsed = p.split_once('=').and_then(|(model, price)| {
                let (i, o) = price.split_once('/')?;
                Some((model, i.parse::<f64>().ok()?, o.parse::<f64>().ok()?))
            });
            let Some((model, input, output)) = parsed.filter(|(_, i, o)| *i >= 0.0 && *o >= 0.0)
            else {
                anyhow::bail!(
                    "COLONY_MODEL_PRICES entry {p:?} is not model=input/output in USD per million tokens"
                );
            };
            c.prices.insert(
                model.to_string(),
                gateway::Price {
                    input_usd_per_mtok: input,
                    output_usd_per_mtok: output,
                },
            );
        }
        Ok(c)
    }

    pub fn worker_config(
        &self,
        roles: &roles::Roles,
        model_base_url: String,
    ) -> anyhow::Result<worker::Config> {
        let mut rt = runtime::Config::new(
            self.agent_image.clone(),
            self.socket_dir.clone(),
            self.worker_id(),
        );
        rt.labels = self.labels()?;
        rt.max_idle = self.max_idle.unwrap_or(self.worker_slots).max(1);
        rt.max_active = self.max_containers.max(self.worker_slots).max(1);
        rt.idle_ttl = Duration::from_secs(self.idle_ttl_secs.max(1));
        rt.ready_timeout = Duration::from_secs(15);
        let rt_ready = rt.ready_timeout;
        let mut w = worker::Config::new(self.worker_id(), rt);
        w.pools = self.pools(roles);
        w.roles = std::sync::Arc::new(roles.clone());
        w.gateway = self.gateway_config(model_base_url)?;
        w.admission = self.admission_rules(roles);
        w.loop_roles = std::sync::Arc::new(self.loop_roles(roles));
        w.goal_retention = std::time::Duration::from_secs(self.goal_retention_secs);
        w.slots = self.worker_slots.max(1);
        w.ack_wait = Duration::from_millis(self.ack_wait_ms);
        w.heartbeat_interval = Duration::from_millis(self.heartbeat_ms);
        w.stale_after = Duration::from_millis(self.stale_after_ms);
        w.retry_min_delay = Duration::from_millis(self.retry_min_ms);
        w.drain_timeout = Duration::from_millis(self.drain_timeout_ms);
        w.prewarm = self.prewarm;
        // A lease must outlive a container's start, which may take up to
        // the ready timeout before the first renewal.
        w.lease_ttl = Duration::from_millis(self.lease_ttl_ms).max(rt_ready * 2);
        Ok(w)
    }

    /// The roles and limits of the goal loop.
    pub fn loop_roles(&self, roles: &roles::Roles) -> store::plans::LoopRoles {
        store::plans::LoopRoles::from_roles(
            roles,
            &self.planner_role,
            store::plans::LoopLimits {
                max_subtasks: self.goal_max_subtasks.max(1),
                max_plan_rejections: self.plan_retries,
                max_attempts: self.subtask_attempts.clamp(1, 10),
                ..store::plans::LoopLimits::default()
            },
        )
    }

    /// The rules every task is admitted by, at every door.
    pub fn admission_rules(&self, roles: &roles::Roles) -> admission::Rules {
        admission::Rules {
            roles: roles.known(),
            max_body_bytes: self.max_body_bytes,
            max_depth: self.max_task_depth,
            max_children: self.max_subtasks,
            ..admission::Rules::default()
        }
    }

    pub fn ingress_config(&self, roles: &roles::Roles) -> ingress::Config {
        let mut c = ingress::Config {
            http_addr: self.http_addr,
            listener: self.http_listener.clone(),
            roles: roles.clone(),
            rules: self.admission_rules(roles),
            metrics_ttl: Duration::from_millis(self.metrics_ttl_ms),
            ui_dir: self.ui_dir.clone(),
            ..Default::default()
        };
        let rate = |per_second: u32| ingress::http::auth::Rate {
            per_second: per_second.max(1),
            burst: per_second.max(1).saturating_mul(2),
        };
        c.limits = ingress::http::auth::Limits {
            per_peer: rate(self.rate_per_peer),
            per_key: rate(self.rate_per_key),
        };
        // Checked when the process starts (`serve`).
        c.webhook_addresses = gateway::AddressPolicy::new(self.allow_private().unwrap_or_default());
        c
    }
}

/// Which role(s) a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    All,
    Ingress,
    Worker,
    Relay,
    Planner,
    Reviewer,
    Patrol,
    Notifier,
    Scheduler,
}

/// Connect to NATS as the user of `kind` (with its password from
/// `COLONY_NATS_CREDENTIALS` and its own inbox), retrying for a while (the
/// server may be starting too).
pub async fn connect_nats(
    s: &Settings,
    kind: subjects::auth::Kind,
) -> anyhow::Result<async_nats::Client> {
    let url = s.nats_url.clone();
    let login = match &s.nats_credentials {
        Some(dir) => Some((kind.user(), nats_auth::read_password(dir, kind.user())?)),
        None => None,
    };
    (|| {
        let mut opts = async_nats::ConnectOptions::new().name(kind.user());
        if let Some((user, password)) = &login {
            opts = async_nats::ConnectOptions::with_user_and_password(
                user.to_string(),
                password.clone(),
            )
            .name(kind.user())
            .custom_inbox_prefix(subjects::auth::inbox_prefix(user));
        }
        opts.connect(url.clone())
    })
    .retry(ExponentialBuilder::default().with_max_times(8))
    .await
    .with_context(|| format!("cannot connect to NATS at {url} as {}", kind.user()))
}

/// Connect, prepare streams and schema, and run `role` until `shutdown`.
pub async fn serve(role: Role, s: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(role = ?role, config = %s.redacted(), "starting");
    let roles = s.load_roles()?;
    let vault = s
        .vault_key
        .as_ref()
        .map(|k| store::Vault::parse(&k.0))
        .transpose()
        .context("COLONY_VAULT_KEY is not usable")?;
    use subjects::auth::Kind;
    s.allow_private()?;
    // Each part of the process talks to NATS as its own user: the relay
    // (which every role runs) publishes what the outbox holds.
    let nats = connect_nats(&s, Kind::Relay).await?;
    let js = async_nats::jetstream::new(nats.clone());
    subjects::nats::ensure(&js, &subjects::nats::StreamSettings::default())
        .await
        .context("cannot create the JetStream streams")?;
    let mut store = store_for(&s, s.db_pool)?;
    if let Some(vault) = vault {
        store = store.with_vault(vault);
    }
    let applied = (|| store.migrate())
        .retry(ExponentialBuilder::default().with_max_times(8))
        .when(|e| matches!(e, store::Error::Pool(_)))
        .await
        .with_context(|| format!("cannot migrate the database at {}", s.redacted()))?;
    if !applied.is_empty() {
        tracing::info!(?applied, "migrations applied");
    }

    let (relay, relay_task) = relay::spawn(store.clone(), js.clone());
    // Every part of the process is a service of this set: the first one to
    // fail (or to end before the shutdown) stops the others.
    let mut services = tokio::task::JoinSet::new();
    {
        let (store, js, token) = (store.clone(), js.clone(), shutdown.clone());
        services.spawn(async move {
            relay::run_poller(relay::Config::default(), store, js, token.clone()).await;
            anyhow::ensure!(token.is_cancelled(), "the outbox poller stopped");
            Ok(())
        });
    }
    if matches!(role, Role::All | Role::Ingress) {
        let (cfg, store, nats, relay, token) = (
            s.ingress_config(&roles),
            store.clone(),
            connect_nats(&s, Kind::Ingress).await?,
            relay.clone(),
            shutdown.clone(),
        );
        services.spawn(async move {
            ingress::run(cfg, store, nats, relay, token)
                .await
                .context("ingress")
        });
    }
    if matches!(role, Role::All | Role::Notifier) {
        let cfg = notifier::Config {
            addresses: gateway::AddressPolicy::new(s.allow_private()?),
            ..notifier::Config::default()
        };
        let (store, nats, token) = (
            store.clone(),
            connect_nats(&s, Kind::Notifier).await?,
            shutdown.clone(),
        );
        services.spawn(async move {
            notifier::run(cfg, store, nats, token.clone())
                .await
                .context("notifier")?;
            anyhow::ensure!(token.is_cancelled(), "the notifier stopped");
            Ok(())
        });
    }
    if matches!(role, Role::All | Role::Patrol) {
        let mut cfg = patrol::Config::new(format!(
            "{}-{}",
            s.worker_id.clone().unwrap_or_else(|| "patrol".into()),
            uuid::Uuid::now_v7().simple()
        ));
        cfg.interval = std::time::Duration::from_millis(s.patrol_interval_ms.max(100));
        cfg.lease_ttl = (cfg.interval * 5).max(std::time::Duration::from_secs(2));
        cfg.stale_after = std::time::Duration::from_secs(s.patrol_stale_secs.max(1));
        cfg.loop_repeats = s.patrol_loop_repeats.max(2);
        cfg.silent_after = std::time::Duration::from_secs(s.patrol_silent_secs.max(1));
        cfg.unclaimed_after = std::time::Duration::from_secs(s.patrol_unclaimed_secs.max(1));
        cfg.goal_idle_after = std::time::Duration::from_secs(s.patrol_goal_idle_secs.max(1));
        cfg.storm_runs = s.patrol_storm_runs.max(2);
        cfg.dlq_growth = s.patrol_dlq_growth.max(1);
        let (store, nats, relay, token) = (
            store.clone(),
            connect_nats(&s, Kind::Patrol).await?,
            relay.clone(),
            shutdown.clone(),
        );
        services.spawn(async move {
            patrol::run(cfg, store, nats, relay, token.clone())
                .await
                .context("patrol")?;
            anyhow::ensure!(token.is_cancelled(), "the patrol stopped");
            Ok(())
        });
    }
    if matches!(role, Role::All | Role::Scheduler) {
        let cfg = scheduler::run::Config {
            concurrency: s.scheduler_concurrency.max(1),
            ..scheduler::run::Config::default()
        };
        let rules = scheduler::spec::Rules::new(s.admission_rules(&roles), store.clone());
        let (nats, relay, token) = (
            connect_nats(&s, Kind::Scheduler).await?,
            relay.clone(),
            shutdown.clone(),
        );
        services.spawn(async move {
            scheduler::run::run(cfg, rules, nats, relay, token.clone()).await;
            anyhow::ensure!(token.is_cancelled(), "the scheduler stopped");
            Ok(())
        });
    }
    if matches!(role, Role::All | Role::Planner | Role::Reviewer) {
        let loop_roles = std::sync::Arc::new(s.loop_roles(&roles));
        if roles.get(&s.planner_role).is_none() {
            tracing::warn!(planner = %s.planner_role, "no template for the planner role: goals cannot be planned until roles/{}.yaml exists", s.planner_role);
        }
        if matches!(role, Role::All | Role::Planner) {
            let (cfg, store, nats, relay, token) = (
                planner::Config::new(loop_roles.clone()),
                store.clone(),
                connect_nats(&s, Kind::Planner).await?,
                relay.clone(),
                shutdown.clone(),
            );
            services.spawn(async move {
                planner::run(cfg, store, nats, relay, token.clone())
                    .await
                    .context("planner")?;
                anyhow::ensure!(token.is_cancelled(), "the planner stopped");
                Ok(())
            });
        }
        if matches!(role, Role::All | Role::Reviewer) {
            let (cfg, store, nats, relay, token) = (
                reviewer::Config::new(loop_roles),
                store.clone(),
                connect_nats(&s, Kind::Reviewer).await?,
                relay.clone(),
                shutdown.clone(),
            );
            services.spawn(async move {
                reviewer::run(cfg, store, nats, relay, token.clone())
                    .await
                    .context("reviewer")?;
                anyhow::ensure!(token.is_cancelled(), "the reviewer stopped");
                Ok(())
            });
        }
    }
    if s.model_api_key.is_some() && s.model_base_url.is_none() {
        anyhow::bail!(
            "COLONY_MODEL_API_KEY is set but COLONY_MODEL_BASE_URL is not; set the provider's base URL, or unset the key to use the scripted provider"
        );
    }
    // Without a configured provider, agent runs talk to the scripted one.
    let mut scripted = None;
    if matches!(role, Role::All | Role::Worker) {
        let base_url = match &s.model_base_url {
            Some(url) => url.clone(),
            None => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("cannot bind the scripted provider")?;
                let mut scripts = scripted::Scripts::builtin();
                if let Some(path) = &s.scripts {
                    let text = std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read COLONY_SCRIPTS {}", path.display())
                    })?;
                    let extra = scripted::Scripts::from_json(&text).with_context(|| {
                        format!("COLONY_SCRIPTS {} is not a script file", path.display())
                    })?;
                    scripts = scripts.with(extra);
                }
                let provider = scripted::serve(listener, scripts)
                    .await
                    .context("cannot start the scripted provider")?;
                let url = provider.base_url();
                tracing::warn!(%url, "no COLONY_MODEL_BASE_URL: agent runs use the SCRIPTED provider (a test double; every answer's model is scripted:<script>; it costs nothing)");
                scripted = Some(provider);
                url
            }
        };
        let mut worker_cfg = s.worker_config(&roles, base_url)?;
        if scripted.is_some() {
            // The scripted provider is free: a role with a cost quota may
            // call it (a model without a price is refused under one).
            for model in roles.iter().map(|r| r.model.clone()) {
                worker_cfg.gateway.prices.entry(model).or_default();
            }
        }
        let (cfg, store, nats, relay, token) = (
            worker_cfg,
            store.clone(),
            connect_nats(&s, Kind::Worker).await?,
            relay.clone(),
            shutdown.clone(),
        );
        services.spawn(async move {
            worker::run(cfg, store, nats, relay, token)
                .await
                .context("worker")
        });
    }
    drop(relay);

    let mut result = Ok(());
    while let Some(done) = services.join_next().await {
        let r = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = r {
            tracing::error!(error = format!("{e:#}"), "a service stopped");
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    // The relay ends once every service has dropped its handle, after
    // publishing what it was given.
    if tokio::time::timeout(Duration::from_secs(10), relay_task)
        .await
        .is_err()
    {
        tracing::warn!("relay did not finish in 10 s; its rows stay in the outbox");
    }
    // Bounded: with NATS gone, a flush would wait for ever.
    let _ = tokio::time::timeout(Duration::from_secs(5), nats.flush()).await;
    // Dropping the scripted provider aborts it, calls in flight included.
    drop(scripted);
    tracing::info!("stopped");
    result
}

/// Fire `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}

/// Apply migrations and exit.
pub async fn migrate(s: &Settings) -> anyhow::Result<Vec<&'static str>> {
    let store = store_for(s, 2)?;
    Ok(store.migrate().await?)
}

/// A store for the configured database, with the password from
/// `COLONY_DATABASE_PASSWORD_FILE` when one is set.
pub fn store_for(s: &Settings, pool: usize) -> anyhow::Result<store::Store> {
    let password = match &s.database_password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "cannot read the database password file {} (COLONY_DATABASE_PASSWORD_FILE)",
                        path.display()
                    )
                })?
                .trim()
                .to_string(),
        ),
        // Or the password itself from the environment (a container's env
        // file); never from the command line.
        None => std::env::var("COLONY_DATABASE_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    Ok(store::Store::connect_with(
        &s.database_url,
        password.as_deref(),
        pool,
    )?)
}

/// Writes `secret` to `path` (mode 0600, parent directories made), through
/// a temporary file renamed into place, so the file never holds half a
/// secret and is never readable by others.
pub fn write_secret_file(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
