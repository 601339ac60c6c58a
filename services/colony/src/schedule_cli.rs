//! `colony schedule …`: recurring tasks and goals over the HTTP API.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::goal_cli::{print, send};
use crate::Client;

// Parsed once from the command line: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Make a schedule: a cron expression in a zone that starts a task
    /// (--task) or a goal (--goal), or the whole request from --file.
    Create {
        #[arg(long)]
        name: Option<String>,
        /// 5 fields (min hour day month weekday), 6 with seconds first, or
        /// @hourly, @daily, @weekly, @monthly, @yearly.
        #[arg(long)]
        cron: Option<String>,
        /// IANA zone (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// What POST /v1/tasks takes, as JSON; strings may hold
        /// {{fire_at}}, {{fire_at_local}}, {{fire_date}}, {{schedule_name}}.
        #[arg(long)]
        task: Option<String>,
        /// What POST /v1/goals takes, as JSON.
        #[arg(long)]
        goal: Option<String>,
        /// allow | skip | buffer_one | cancel_previous
        #[arg(long)]
        overlap: Option<String>,
        /// How late a fire may still start (e.g. 10m).
        #[arg(long)]
        catchup_window: Option<String>,
        /// all | latest
        #[arg(long)]
        catchup: Option<String>,
        /// Bound of the schedule's own fixed offset (e.g. 30s).
        #[arg(long)]
        jitter: Option<String>,
        #[arg(long)]
        start_at: Option<String>,
        #[arg(long)]
        end_at: Option<String>,
        #[arg(long)]
        paused: bool,
        /// A JSON file with the whole request (flags given add to it).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: Client,
    },
    /// List the schedules.
    List {
        #[command(flatten)]
        client: Client,
    },
    /// Print a schedule with its next 10 fire times and its fire counts.
    Get {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Change fields of a schedule: --set '{"cron": "0 8 * * *"}'.
    Update {
        id: String,
        #[arg(long)]
        set: String,
        #[command(flatten)]
        client: Client,
    },
    /// Delete a schedule (what it started stays).
    Delete {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    Pause {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    Resume {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Fire now (the overlap policy applies).
    Trigger {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Run every fire time in [--from, --to) that started nothing yet.
    Backfill {
        id: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        client: Client,
    },
    /// A schedule's fires, newest first.
    Fires {
        id: String,
        /// fired | skipped | missed | buffered | failed
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        client: Client,
    },
}

fn json_arg(raw: &str, what: &str) -> anyhow::Result<Value> {
    serde_json::from_str(raw).with_context(|| format!("--{what} is not valid JSON"))
}

pub async fn run(command: ScheduleCommand) -> anyhow::Result<()> {
    let url = |c: &Client, rest: &str| format!("{}/v1/schedules{rest}", c.url);
    match command {
        ScheduleCommand::Create {
            name,
            cron,
            timezone,
            task,
            goal,
            overlap,
            catchup_window,
            catchup,
            jitter,
            start_at,
            end_at,
            paused,
            file,
            client,
        } => {
            let mut body = match &file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not valid JSON", path.display()))?
                }
                None => json!({}),
            };
            let fields = body
                .as_object_mut()
                .context("the --file request must be a JSON object")?;
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    fields.insert(k.to_string(), v);
                }
            };
            set("name", name.map(Value::from));
            set("cron", cron.map(Value::from));
            set("timezone", timezone.map(Value::from));
            set(
                "task",
                task.as_deref().map(|t| json_arg(t, "task")).transpose()?,
            );
            set(
                "goal",
                goal.as_deref().map(|g| json_arg(g, "goal")).transpose()?,
            );
            set("overlap", overlap.map(Value::from));
            set("catchup_window", catchup_window.map(Value::from));
            set("catchup", catchup.map(Value::from));
            set("jitter", jitter.map(Value::from));
            set("start_at", start_at.map(Value::from));
            set("end_at", end_at.map(Value::from));
            set("paused", paused.then_some(Value::Bool(true)));
            let http = client.http(None)?;
            print(&send(&client, http.post(url(&client, "")).json(&body)).await?)
        }
        ScheduleCommand::List { client } => {
            let http = client.http(None)?;
            let list = send(&client, http.get(url(&client, ""))).await?;
            for s in list.as_array().into_iter().flatten() {
                let next = s["next_fires"][0]["local"].as_str().unwrap_or("none");
                println!(
                    "{}  {:<24} {:<16} {:<20} {}  next {next}",
                    s["id"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or(""),
                    s["cron"].as_str().unwrap_or(""),
                    s["timezone"].as_str().unwrap_or(""),
                    if s["paused"] == true {
                        "paused"
                    } else {
                        "active"
                    },
                );
            }
            Ok(())
        }
        ScheduleCommand::Get { id, client } => {
            let http = client.http(None)?;
            print(&send(&client, http.get(url(&client, &format!("/{id}")))).await?)
        }
        ScheduleCommand::Update { id, set, client } => {
            let http = client.http(None)?;
            let body = json_arg(&set, "set")?;
            print(
                &send(
                    &client,
                    http.patch(url(&client, &format!("/{id}"))).json(&body),
                )
                .await?,
            )
        }
        ScheduleCommand::Delete { id, client } => {
            let http = client.http(None)?;
            let resp = http
                .delete(url(&client, &format!("/{id}")))
                .send()
                .await
                .with_context(|| format!("cannot reach Colony at {}", client.url))?;
            if resp.status().is_success() {
                println!("deleted {id}");
                Ok(())
            } else {
                crate::answer(resp).await.map(|_| ())
            }
        }
        ScheduleCommand::Pause { id, client } => act(&client, &id, "pause", None).await,
        ScheduleCommand::Resume { id, client } => act(&client, &id, "resume", None).await,
        ScheduleCommand::Trigger { id, client } => act(&client, &id, "trigger", None).await,
        ScheduleCommand::Backfill {
            id,
            from,
            to,
            client,
        } => {
            act(
                &client,
                &id,
                "backfill",
                Some(json!({"from": from, "to": to})),
            )
            .await
        }
        ScheduleCommand::Fires {
            id,
            outcome,
            limit,
            client,
        } => {
            let http = client.http(None)?;
            let mut q = Vec::new();
            if let Some(o) = outcome {
                q.push(("outcome", o));
            }
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            let fires = send(
                &client,
                http.get(url(&client, &format!("/{id}/fires"))).query(&q),
            )
            .await?;
            for f in fires["fires"].as_array().into_iter().flatten() {
                let what = f["task_id"]
                    .as_str()
                    .map(|t| format!("task {t}"))
                    .or_else(|| f["goal_id"].as_str().map(|g| format!("goal {g}")))
                    .unwrap_or_default();
                let late = f["lateness_ms"]
                    .as_f64()
                    .map(|l| format!("{l:.1} ms late"))
                    .unwrap_or_default();
                println!(
                    "{}  {:<8} {:<8} {what} {late} {}",
                    f["fire_at"].as_str().unwrap_or(""),
                    f["kind"].as_str().unwrap_or(""),
                    f["outcome"].as_str().unwrap_or(""),
                    f["reason"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
    }
}

async fn act(client: &Client, id: &str, what: &str, body: Option<Value>) -> anyhow::Result<()> {
    let http = client.http(None)?;
    let mut req = http.post(format!("{}/v1/schedules/{id}/{what}", client.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    print(&send(client, req).await?)
}
