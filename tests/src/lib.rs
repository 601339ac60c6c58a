//! The harness the cross-service tests share.
//!
//! Every test gets its own world: a nats-server spawned on an ephemeral port
//! with its own store directory, its own Postgres database, and containers
//! labelled with its id. Dropping the [`World`] stops the server, drops the
//! database and removes the containers, even when the test failed.
//!
//! Colony itself runs in-process through `colony::serve`, the same entry
//! point the binary uses, or as a separate `colony` process when a test must
//! kill it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use colony::{Role, Settings};
use subjects::TaskView;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Waits (up to a minute) for the first output event of task `id` on
/// `events` (a subscription to the events subjects): its command runs in a
/// container.
pub async fn first_output(events: &mut async_nats::Subscriber, id: Uuid) {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("output within a minute")
            .expect("a message");
        if msg.subject.ends_with(".output") && msg.subject.contains(&id.to_string()) {
            return;
        }
    }
}

/// An HTTP client that sends `key` as its bearer key.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("a header value");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// A nats-server of the test's own, on ports it picked itself (read back
/// from its ports file, so no port is picked here, dropped and reused).
pub struct Nats {
    child: Child,
    dir: PathBuf,
    pub url: String,
    /// Its HTTP monitor (`/varz`, `/jsz`, …).
    pub monitor_url: String,
    /// The users' password files (COLONY_NATS_CREDENTIALS).
    pub credentials: PathBuf,
}

#[derive(serde::Deserialize)]
struct PortsFile {
    nats: Vec<String>,
    monitoring: Vec<String>,
}

/// Tenants every test's server has a client user for.
pub const TEST_TENANTS: [&str; 3] = ["default", "acme", "globex"];

impl Nats {
    /// A server run, as ops/up runs it, from `ops/nats.conf` plus the users
    /// of `colony nats-config`: every Colony process kind and the
    /// [`TEST_TENANTS`], each with only its subjects. Their passwords are in
    /// [`Nats::credentials`].
    pub fn start(id: &str) -> Result<Nats> {
        let bin = std::env::var("COLONY_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let dir = std::env::temp_dir().join(format!("colony-test-nats-{id}"));
        let ports_dir = dir.join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let credentials = dir.join("credentials");
        let conf = dir.join("nats.conf");
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/nats.conf");
        colony::nats_auth::write_config(
            &credentials,
            Some(&base),
            &TEST_TENANTS.map(String::from),
            &conf,
        )?;
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-sd"])
            .arg(dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start {bin} (set COLONY_NATS_SERVER; ops/test does)")
            })?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let ports = loop {
            let found = std::fs::read_dir(&ports_dir)?
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))
                .and_then(|e| std::fs::read(e.path()).ok())
                .and_then(|b| serde_json::from_slice::<PortsFile>(&b).ok());
            if let Some(p) = found {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("nats-server exited at start: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("nats-server wrote no ports file within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let url = ports.nats.first().context("no client port")?.clone();
        let monitor_url = ports.monitoring.first().context("no monitor port")?.clone();
        Ok(Nats {
            child,
            dir,
            url,
            monitor_url,
            credentials,
        })
    }
}

impl Nats {
    /// Kill the server now (what a client sees when NATS goes away).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn admin_url() -> String {
    std::env::var("COLONY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://colony@127.0.0.1:54329/postgres".into())
}

/// The database password file ops/test passes on (COLONY_DATABASE_PASSWORD_FILE).
fn password_file() -> Option<PathBuf> {
    std::env::var_os("COLONY_DATABASE_PASSWORD_FILE").map(PathBuf::from)
}

/// A connection to `url` with the test password, if there is one.
async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    if let Some(path) = password_file() {
        let pw = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        cfg.password(pw.trim());
    }
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn admin_exec(sql: String) -> Result<()> {
    let client = pg_connect(&admin_url()).await.with_context(|| {
        format!(
            "cannot reach the test Postgres at {} (ops/test starts it)",
            admin_url()
        )
    })?;
    client.batch_execute(&sql).await?;
    Ok(())
}

/// One test's isolated services, and Colony's settings pointing at them.
pub struct World {
    pub id: String,
    pub nats: Nats,
    pub db_name: String,
    pub settings: Settings,
    /// An operator key (every tenant; `default` unless `X-Colony-Tenant`
    /// says otherwise), which [`World::http`] sends.
    pub operator_key: String,
}

impl World {
    /// A world whose database is migrated, with an operator key.
    pub async fn new() -> Result<World> {
        World::create(true).await
    }

    /// A world whose database is empty (no schema, no key yet).
    pub async fn unmigrated() -> Result<World> {
        World::create(false).await
    }

    async fn create(migrate: bool) -> Result<World> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("COLONY_LOG").unwrap_or_else(|_| "info".into()))
            .with_test_writer()
            .try_init();
        let id = Uuid::new_v4().simple().to_string()[..12].to_string();
        let nats = Nats::start(&id)?;
        let db_name = format!("test_{id}");
        admin_exec(format!("CREATE DATABASE {db_name}")).await?;
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let mut settings = Settings::from_env();
        settings.nats_url = nats.url.clone();
        settings.nats_credentials = Some(nats.credentials.clone());
        settings.database_password_file = password_file();
        settings.database_url = format!("{base}/{db_name}");
        // The HTTP API gets the listener bound here: no port is picked,
        // dropped and bound again.
        let http = TcpListener::bind("127.0.0.1:0")?;
        settings.http_addr = http.local_addr()?;
        settings.http_listener = ingress::SharedListener::new(http);
        settings.worker_id = Some(format!("test-{id}"));
        settings.container_labels = vec![format!("colony.test={id}")];
        settings.worker_slots = 2;
        settings.prewarm = 0;
        settings.ack_wait_ms = 2_000;
        settings.heartbeat_ms = 250;
        settings.stale_after_ms = 1_000;
        settings.retry_min_ms = 100;
        settings.drain_timeout_ms = 2_000;
        settings.db_pool = 8;
        // The schema is there before Colony starts (its own migrate then
        // finds nothing to do), so that keys can be made up front.
        let operator_key = if migrate {
            let store = colony::store_for(&settings, 1)?;
            store.migrate().await?;
            store
                .create_key("default", "test operator", store::Scope::Operator)
                .await?
                .secret
        } else {
            String::new()
        };
        Ok(World {
            id,
            nats,
            db_name,
            settings,
            operator_key,
        })
    }

    /// An HTTP client that sends the operator key.
    pub fn http(&self) -> reqwest::Client {
        client_with_key(&self.operator_key)
    }

    /// A new key of `tenant` with `scope`; returns its secret.
    pub async fn key(&self, tenant: &str, scope: store::Scope) -> Result<String> {
        let store = self.store(1);
        Ok(store
            .create_key(tenant, &format!("test {scope}"), scope)
            .await?
            .secret)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.settings.http_addr)
    }

    /// A subscription to every event of the `default` tenant's tasks,
    /// already in place on the server (and the client that holds it).
    pub async fn default_events(&self) -> Result<(async_nats::Client, async_nats::Subscriber)> {
        let nats = self.nats_client().await?;
        let events = nats
            .subscribe(subjects::subject::events_of_tenant(
                subjects::DEFAULT_TENANT,
            ))
            .await?;
        nats.flush().await?;
        Ok((nats, events))
    }

    /// The text of `GET /metrics`, with the operator key.
    pub async fn metrics_text(&self) -> Result<String> {
        Ok(self
            .http()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Start `role` in-process with these settings.
    pub async fn start(&self, role: Role) -> Result<Running> {
        self.start_with(role, self.settings.clone()).await
    }

    pub async fn start_with(&self, role: Role, settings: Settings) -> Result<Running> {
        let token = CancellationToken::new();
        let task = tokio::spawn(colony::serve(role, settings, token.clone()));
        let running = Running { token, task };
        if matches!(role, Role::All | Role::Ingress) {
            self.wait_healthy().await?;
        }
        Ok(running)
    }

    pub async fn wait_healthy(&self) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.url())).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("Colony did not become healthy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn db(&self) -> Result<tokio_postgres::Client> {
        pg_connect(&self.settings.database_url).await
    }

    /// A store on this world's database (with its password).
    pub fn store(&self, pool: usize) -> store::Store {
        colony::store_for(&self.settings, pool).expect("a store")
    }

    /// A NATS client as the operator's admin user (no limits).
    pub async fn nats_client(&self) -> Result<async_nats::Client> {
        self.nats_as(subjects::auth::Kind::Admin.user()).await
    }

    /// A NATS client as `user` (a process kind's, or `tenant-<t>`), with
    /// its password and its own inbox prefix, as a real client would.
    pub async fn nats_as(&self, user: &str) -> Result<async_nats::Client> {
        let password = colony::nats_auth::read_password(&self.nats.credentials, user)?;
        Ok(
            async_nats::ConnectOptions::with_user_and_password(user.into(), password)
                .custom_inbox_prefix(subjects::auth::inbox_prefix(user))
                .connect(&self.nats.url)
                .await?,
        )
    }

    /// POST a JSON body to /v1/tasks; returns (status, body).
    pub async fn post_task(
        &self,
        body: &str,
        key: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut req = self
            .http()
            .post(format!("{}/v1/tasks", self.url()))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    /// Submit a shell command and return the task id.
    pub async fn submit_shell(&self, command: &str, extra: serde_json::Value) -> Result<Uuid> {
        let mut body = serde_json::json!({"role": "shell", "input": {"command": command}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, v) = self.post_task(&body.to_string(), None).await?;
        if status != 202 {
            bail!("submit answered {status}: {v}");
        }
        Ok(Uuid::parse_str(v["id"].as_str().context("no id")?)?)
    }

    pub async fn get_task(&self, id: Uuid) -> Result<TaskView> {
        let resp = self
            .http()
            .get(format!("{}/v1/tasks/{id}", self.url()))
            .send()
            .await?;
        Ok(resp.json().await?)
    }

    /// Poll Postgres until `pred` holds for the task (bounded).
    pub async fn wait_for(
        &self,
        id: Uuid,
        secs: u64,
        pred: impl Fn(&TaskView) -> bool,
    ) -> Result<TaskView> {
        let store = self.store(1);
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(t) = store.get_task(id).await? {
                if pred(&t.view) {
                    return Ok(t.view);
                }
                if Instant::now() > deadline {
                    bail!(
                        "task {id} is {} after {secs} s: {:?}",
                        t.view.state,
                        t.view.error
                    );
                }
            } else if Instant::now() > deadline {
                bail!("task {id} never appeared");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submit a goal over HTTP with the operator key; returns its id.
    pub async fn submit_goal(&self, body: serde_json::Value) -> Result<Uuid> {
        let resp = self
            .http()
            .post(format!("{}/v1/goals", self.url()))
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp.json().await?;
        if status != 202 {
            bail!("goal submit answered {status}: {v}");
        }
        Ok(Uuid::parse_str(v["id"].as_str().context("no id")?)?)
    }

    /// `GET /v1/goals/{id}` with the operator key.
    pub async fn get_goal(&self, id: Uuid) -> Result<subjects::goals::GoalView> {
        let resp = self
            .http()
            .get(format!("{}/v1/goals/{id}", self.url()))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        if status != 200 {
            bail!("GET goal {id} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// The goal once `pred` holds (polled), or an error with its state.
    pub async fn wait_goal(
        &self,
        id: Uuid,
        secs: u64,
        pred: impl Fn(&subjects::goals::GoalView) -> bool,
    ) -> Result<subjects::goals::GoalView> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let g = self.get_goal(id).await?;
            if pred(&g) {
                return Ok(g);
            }
            if Instant::now() > deadline {
                bail!(
                    "goal {id} is {} after {secs} s: blocked {:?}, progress {:?}, sub-tasks {:?}",
                    g.state,
                    g.blocked,
                    g.progress,
                    g.subtasks
                        .iter()
                        .map(|s| (s.key.as_str(), s.state, s.error.as_deref()))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_final(&self, id: Uuid, secs: u64) -> Result<TaskView> {
        self.wait_for(id, secs, |t| t.state.is_final()).await
    }

    /// Ids of the containers this test created.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("label=colony.test={}", self.id),
            ])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The path of the `colony` binary next to this test's target directory.
    pub fn colony_bin() -> Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(|d| d.parent())
            .context("test binary has no target dir")?;
        let bin = dir.join("colony");
        if !bin.exists() {
            bail!(
                "{} is missing; run `cargo build -p colony` first (ops/test does)",
                bin.display()
            );
        }
        Ok(bin)
    }

    /// `colony <command> <args…>` as a person runs it, with the operator
    /// key against this world's API: (success, stdout, stderr).
    pub async fn cli(&self, command: &str, args: &[&str]) -> (bool, String, String) {
        let bin = Self::colony_bin().expect("colony binary");
        let (url, key) = (self.url(), self.operator_key.clone());
        let command = command.to_string();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .arg(command)
                .args(&args)
                .env("COLONY_URL", url)
                .env("COLONY_API_KEY", key)
                .env("NO_PROXY", "127.0.0.1")
                .output()
        })
        .await
        .expect("join")
        .expect("run colony");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run `colony <role>` as a separate process with these settings.
    pub fn spawn_process(&self, role: &str, worker_id: &str) -> Result<Child> {
        self.spawn_process_env(role, worker_id, &[])
    }

    /// As [`World::spawn_process`], with extra environment (it wins).
    pub fn spawn_process_env(
        &self,
        role: &str,
        worker_id: &str,
        env: &[(&str, &str)],
    ) -> Result<Child> {
        let s = &self.settings;
        Ok(Command::new(Self::colony_bin()?)
            .arg(role)
            .env("COLONY_NATS_URL", &s.nats_url)
            .env("COLONY_NATS_CREDENTIALS", &self.nats.credentials)
            .env("COLONY_DATABASE_URL", &s.database_url)
            .envs(
                s.database_password_file
                    .iter()
                    .map(|p| ("COLONY_DATABASE_PASSWORD_FILE", p.as_os_str())),
            )
            .env("COLONY_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("COLONY_WORKER_ID", worker_id)
            .env("COLONY_CONTAINER_LABELS", s.container_labels.join(","))
            .env("COLONY_WORKER_SLOTS", s.worker_slots.to_string())
            .env("COLONY_ACK_WAIT_MS", s.ack_wait_ms.to_string())
            .env("COLONY_HEARTBEAT_MS", s.heartbeat_ms.to_string())
            .env("COLONY_STALE_AFTER_MS", s.stale_after_ms.to_string())
            .env("COLONY_RETRY_MIN_MS", s.retry_min_ms.to_string())
            .env("COLONY_PREWARM", "0")
            .env("COLONY_SOCKET_DIR", &s.socket_dir)
            .env("COLONY_AGENT_IMAGE", &s.agent_image)
            .env("COLONY_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()?)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", &c]).output();
        }
        // Employee workspaces this test's workers made.
        if let Ok(out) = Command::new("docker")
            .args([
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("label=colony.test={}", self.id),
            ])
            .output()
        {
            for v in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("docker")
                    .args(["volume", "rm", "-f", v])
                    .output();
            }
        }
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("colony-test-{}", self.id)));
        let name = self.db_name.clone();
        // Drop runs outside any runtime's async context: use a thread with
        // its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(admin_exec(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )));
            }
        })
        .join();
    }
}

impl World {
    /// Give this world its own role templates and scripted-provider scripts
    /// (written under a directory removed with the world's temp files).
    pub fn use_roles(&mut self, roles: &[(&str, &str)], scripts_json: &str) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("colony-test-{}", self.id));
        let roles_dir = dir.join("roles");
        std::fs::create_dir_all(&roles_dir)?;
        for (name, yaml) in roles {
            std::fs::write(roles_dir.join(format!("{name}.yaml")), yaml)?;
        }
        let scripts = dir.join("scripts.json");
        std::fs::write(&scripts, scripts_json)?;
        self.settings.roles_dir = Some(roles_dir);
        self.settings.scripts = Some(scripts);
        Ok(dir)
    }

    /// Hire an employee over HTTP; returns its id.
    pub async fn hire(&self, name: &str, role: &str) -> Result<Uuid> {
        let resp = self
            .http()
            .post(format!("{}/v1/employees", self.url()))
            .json(&serde_json::json!({"name": name, "role": role}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp.json().await?;
        if status != 201 {
            bail!("hire answered {status}: {v}");
        }
        Ok(Uuid::parse_str(v["id"].as_str().context("no id")?)?)
    }

    /// Submit a task body over HTTP; returns its id.
    pub async fn submit(&self, body: serde_json::Value) -> Result<Uuid> {
        let (status, v) = self.post_task(&body.to_string(), None).await?;
        if status != 202 {
            bail!("submit answered {status}: {v}");
        }
        Ok(Uuid::parse_str(v["id"].as_str().context("no id")?)?)
    }

    /// Remove an employee's workspace volume (tests clean up after
    /// themselves; offboarding does it in production).
    pub fn remove_workspace(&self, employee: Uuid) {
        let _ = Command::new("docker")
            .args([
                "volume",
                "rm",
                "-f",
                &runtime::spec::workspace_volume(employee),
            ])
            .output();
    }

    /// `docker inspect` of every container this test created, as text.
    pub fn inspect_all(&self) -> String {
        let ids = self.containers();
        if ids.is_empty() {
            return String::new();
        }
        Command::new("docker")
            .arg("inspect")
            .args(&ids)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// Colony running in-process.
pub struct Running {
    pub token: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Graceful shutdown, as on SIGTERM; returns serve's result.
    pub async fn stop(self) -> Result<()> {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("Colony did not stop within 30 s")??
    }
}
