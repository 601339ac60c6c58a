//! `colony`: run a role (or all of them), or talk to a running Colony.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use colony::{Role, Settings};
use tokio_util::sync::CancellationToken;

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
struct Client {
    #[arg(long, env = "COLONY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (role, run) = match cli.command {
        Command::All(r) => (Role::All, r),
        Command::Ingress(r) => (Role::Ingress, r),
        Command::Worker(r) => (Role::Worker, r),
        Command::Relay(r) => (Role::Relay, r),
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
            let http = reqwest::Client::new();
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
            return print_task(&reqwest::Client::new(), &client.url, &id, wait).await;
        }
        Command::Cancel { id, client } => {
            let resp = reqwest::Client::new()
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

fn init_logs(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
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
    loop {
        let q = if wait { "?wait=60" } else { "" };
        let task = answer(http.get(format!("{url}/v1/tasks/{id}{q}")).send().await?).await?;
        let state = task["state"].as_str().unwrap_or_default();
        let final_state = matches!(state, "done" | "failed" | "cancelled");
        if !wait || final_state || std::time::Instant::now() > deadline {
            let out = serde_json::json!({
                "id": task["id"], "state": task["state"], "attempt": task["attempt"],
                "result": task["result"], "error": task["error"],
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
    }
}
