//! `colony`: run a role (or all of them), or talk to a running Colony.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use colony::{Role, Settings};
use tokio_util::sync::CancellationToken;

mod goal_cli;
mod progress;
mod schedule_cli;

#[derive(Parser)]
#[command(
    name = "colony",
    version,
    about = "Colony: a fleet of AI employees on NATS, Postgres and Docker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process.
    All(Run),
    /// Run the HTTP API and the NATS intake.
    Ingress(Run),
    /// Run a worker.
    Worker(Run),
    /// Run only the outbox relay's poller.
    Relay(Run),
    /// Run the planner consumer (goals' planning and delivery runs).
    Planner(Run),
    /// Run the reviewer consumer (review runs of sub-tasks' work).
    Reviewer(Run),
    /// Run the patrol (finds stuck work and recovers it; one acts at a time).
    Patrol(Run),
    /// Run the notifier (posts notifications to the tenants' webhooks).
    Notifier(Run),
    /// Run the scheduler (fires the schedules; any number may run).
    Scheduler(Run),
    /// Apply database migrations and exit.
    Migrate(Run),
    /// Submit a task over HTTP and print it.
    Submit {
        #[arg(long)]
        role: String,
        /// The role's input as JSON.
        #[arg(long)]
        input: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long)]
        timeout_secs: Option<u32>,
        /// The employee (of that role) to give the task to.
        #[arg(long)]
        employee: Option<String>,
        /// Wait until the task is final and print it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: Client,
    },
    /// Print a task; --wait holds until it is final.
    Get {
        id: String,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: Client,
    },
    /// Cancel a task that is not final.
    Cancel {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Write the nats-server configuration with Colony's users: a password
    /// file per user under --credentials (made when missing), and --out
    /// (the --server-config text, then every user with only its subjects).
    NatsConfig {
        /// Directory of password files (COLONY_NATS_CREDENTIALS for the
        /// processes).
        #[arg(long, env = "COLONY_NATS_CREDENTIALS")]
        credentials: std::path::PathBuf,
        /// The server settings to start from (ops/nats.conf).
        #[arg(long)]
        server_config: Option<std::path::PathBuf>,
        /// Add a tenant's client user (repeatable); tenants with a password
        /// file already are kept.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Goals: submit, get, watch, list, and steer them (cancel, approve,
    /// pause, resume, replan, decide).
    Goal {
        #[command(subcommand)]
        command: goal_cli::GoalCommand,
    },
    /// Schedules: recurring tasks and goals on cron expressions (create,
    /// list, get, update, delete, pause, resume, trigger, backfill, fires).
    Schedule {
        #[command(subcommand)]
        command: schedule_cli::ScheduleCommand,
    },
    /// API keys: make, list and revoke them.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

// Parsed once from the command line: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key for a tenant (over HTTP, with an admin or operator key);
    /// prints it once.
    Create {
        /// The tenant (with an operator key; an admin key makes keys of its
        /// own tenant only).
        #[arg(long)]
        tenant: Option<String>,
        /// read, submit or admin.
        #[arg(long)]
        scope: String,
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        client: Client,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        client: Client,
    },
    /// Revoke a key by id.
    Revoke {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        client: Client,
    },
    /// Make an operator key straight in Postgres (no HTTP, no other key
    /// needed) and write it to a file (mode 0600) unless one is there.
    Operator {
        /// Where the key goes; an existing non-empty file is kept.
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(clap::Args)]
struct Run {
    #[command(flatten)]
    settings: Settings,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "COLONY_LOG", default_value = "info")]
    log: String,
}

#[derive(clap::Args)]
pub(crate) struct Client {
    #[arg(long, env = "COLONY_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// The API key; unset: the key in COLONY_API_KEY_FILE, else in
    /// ./.colony/operator.key (which ops/up writes).
    #[arg(long = "api-key", env = "COLONY_API_KEY", hide_env_values = true)]
    api_key: Option<colony::Secret>,
    #[arg(long = "api-key-file", env = "COLONY_API_KEY_FILE")]
    api_key_file: Option<std::path::PathBuf>,
}

impl Client {
    /// An HTTP client that sends the key, and the base URL.
    pub(crate) fn http(&self, tenant: Option<&str>) -> anyhow::Result<reqwest::Client> {
        let key = match (&self.api_key, &self.api_key_file) {
            (Some(k), _) => k.0.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API key file {}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => {
                let default = std::path::Path::new(".colony/operator.key");
                std::fs::read_to_string(default)
                    .map(|k| k.trim().to_string())
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "no API key: set COLONY_API_KEY (or COLONY_API_KEY_FILE), or run from the directory where ops/up wrote .colony/operator.key"
                        )
                    })?
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key holds characters a header cannot carry")?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        if let Some(t) = tenant {
            headers.insert(
                "x-colony-tenant",
                reqwest::header::HeaderValue::from_str(t)
                    .context("the tenant holds characters a header cannot carry")?,
            );
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (role, run) = match cli.command {
        Command::All(r) => (Role::All, r),
        Command::Ingress(r) => (Role::Ingress, r),
        Command::Worker(r) => (Role::Worker, r),
        Command::Relay(r) => (Role::Relay, r),
        Command::Planner(r) => (Role::Planner, r),
        Command::Reviewer(r) => (Role::Reviewer, r),
        Command::Patrol(r) => (Role::Patrol, r),
        Command::Notifier(r) => (Role::Notifier, r),
        Command::Scheduler(r) => (Role::Scheduler, r),
        Command::Migrate(r) => {
            init_logs(&r.log);
            let applied = colony::migrate(&r.settings).await?;
            println!(
                "migrations applied: {}",
                if applied.is_empty() {
                    "none (up to date)".to_string()
                } else {
                    applied.join(", ")
                }
            );
            return Ok(());
        }
        Command::Submit {
            role,
            input,
            idempotency_key,
            max_attempts,
            timeout_secs,
            employee,
            wait,
            client,
        } => {
            let input: serde_json::Value =
                serde_json::from_str(&input).context("--input is not valid JSON")?;
            let mut body = serde_json::json!({"role": role, "input": input});
            if let Some(n) = max_attempts {
                body["max_attempts"] = n.into();
            }
            if let Some(n) = timeout_secs {
                body["timeout_secs"] = n.into();
            }
            if let Some(e) = employee {
                body["employee_id"] = e.into();
            }
            let http = client.http(None)?;
            let mut req = http.post(format!("{}/v1/tasks", client.url)).json(&body);
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let accepted = answer(
                req.send()
                    .await
                    .with_context(|| format!("cannot reach Colony at {}", client.url))?,
            )
            .await?;
            let id = accepted["id"]
                .as_str()
                .context("the answer has no task id")?
                .to_string();
            return print_task(&http, &client.url, &id, wait).await;
        }
        Command::Get { id, wait, client } => {
            return print_task(&client.http(None)?, &client.url, &id, wait).await;
        }
        Command::Keys { command } => return keys(command).await,
        Command::Goal { command } => return goal_cli::run(command).await,
        Command::Schedule { command } => return schedule_cli::run(command).await,
        Command::NatsConfig {
            credentials,
            server_config,
            tenants,
            out,
        } => {
            let all = colony::nats_auth::write_config(
                &credentials,
                server_config.as_deref(),
                &tenants,
                &out,
            )?;
            eprintln!(
                "{} written: {} process users and tenants {:?}; passwords in {}",
                out.display(),
                subjects::auth::Kind::ALL.len(),
                all,
                credentials.display()
            );
            return Ok(());
        }
        Command::Cancel { id, client } => {
            let resp = client
                .http(None)?
                .post(format!("{}/v1/tasks/{id}/cancel", client.url))
                .send()
                .await
                .with_context(|| format!("cannot reach Colony at {}", client.url))?;
            println!("{}", serde_json::to_string_pretty(&answer(resp).await?)?);
            return Ok(());
        }
    };
    init_logs(&run.log);
    let token = CancellationToken::new();
    colony::cancel_on_signals(token.clone());
    colony::serve(role, run.settings, token).await
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let show = |v: serde_json::Value| -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(())
    };
    match command {
        KeysCommand::Create {
            tenant,
            scope,
            name,
            client,
        } => {
            let resp = client
                .http(tenant.as_deref())?
                .post(format!("{}/v1/keys", client.url))
                .json(&serde_json::json!({"name": name, "scope": scope}))
                .send()
                .await
                .with_context(|| format!("cannot reach Colony at {}", client.url))?;
            show(answer(resp).await?)
        }
        KeysCommand::List { tenant, client } => {
            let resp = client
                .http(tenant.as_deref())?
                .get(format!("{}/v1/keys", client.url))
                .send()
                .await
                .with_context(|| format!("cannot reach Colony at {}", client.url))?;
            show(answer(resp).await?)
        }
        KeysCommand::Revoke { id, tenant, client } => {
            let resp = client
                .http(tenant.as_deref())?
                .delete(format!("{}/v1/keys/{id}", client.url))
                .send()
                .await
                .with_context(|| format!("cannot reach Colony at {}", client.url))?;
            show(answer(resp).await?)
        }
        KeysCommand::Operator { out, settings } => {
            match std::fs::read_to_string(&out) {
                Ok(k) if !k.trim().is_empty() => {
                    eprintln!("{} holds a key already; kept", out.display());
                    return Ok(());
                }
                _ => {}
            }
            let store = colony::store_for(&settings, 2)?;
            store
                .migrate()
                .await
                .context("cannot migrate the database")?;
            let created = store
                .create_key(
                    "default",
                    "operator (colony keys operator)",
                    store::Scope::Operator,
                )
                .await?;
            colony::write_secret_file(&out, &created.secret)?;
            eprintln!(
                "operator key {} written to {} (mode 0600)",
                created.key.prefix,
                out.display()
            );
            Ok(())
        }
    }
}

fn init_logs(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) async fn answer(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("Colony's answer is not JSON")?;
    if !status.is_success() {
        bail!(
            "{} ({status})",
            body["error"].as_str().unwrap_or("request refused")
        );
    }
    Ok(body)
}

async fn print_task(http: &reqwest::Client, url: &str, id: &str, wait: bool) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(24 * 3600);
    let spinner = if wait {
        progress::task_spinner(id)
    } else {
        None
    };
    loop {
        // Short waits, so that the spinner shows the state as it moves.
        let q = match (wait, &spinner) {
            (false, _) => "",
            (true, Some(_)) => "?wait=2",
            (true, None) => "?wait=60",
        };
        let task = answer(http.get(format!("{url}/v1/tasks/{id}{q}")).send().await?).await?;
        let state = task["state"].as_str().unwrap_or_default();
        let final_state = matches!(state, "done" | "failed" | "cancelled");
        if let Some(s) = &spinner {
            s.set_message(format!(
                "task {id}: {state}, attempt {}",
                task["attempt"].as_u64().unwrap_or(1)
            ));
        }
        if !wait || final_state || std::time::Instant::now() > deadline {
            if let Some(s) = &spinner {
                s.finish_and_clear();
            }
            let out = serde_json::json!({
                "id": task["id"], "state": task["state"], "attempt": task["attempt"],
                "result": task["result"], "error": task["error"],
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
    }
}
