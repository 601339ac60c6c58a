//! `colony goal …`: submit, follow and steer goals over the HTTP API.

use anyhow::Context;
use clap::Subcommand;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::{answer, Client};

#[derive(Subcommand)]
pub enum GoalCommand {
    /// Submit a goal; --wait prints it as JSON once it is final (or waits
    /// for a person).
    Submit {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        /// How a person will judge the result.
        #[arg(long)]
        acceptance: String,
        #[arg(long)]
        budget_usd: Option<f64>,
        #[arg(long)]
        budget_tokens: Option<u64>,
        /// Seconds from submission to the end.
        #[arg(long)]
        budget_secs: Option<u64>,
        /// 0–9, higher first.
        #[arg(long)]
        priority: Option<u8>,
        /// The planner employee (else one of the tenant's, hired if none).
        #[arg(long)]
        planner: Option<String>,
        /// Wait for a person's approval of the plan before anything runs.
        #[arg(long)]
        require_plan_approval: bool,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the goal and print it once it settles.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: Client,
    },
    /// Print a goal: plan, sub-tasks, reviews, progress, spend.
    Get {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Follow a goal live, one line per event, until it is final.
    Watch {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// List goals, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        client: Client,
    },
    /// Cancel a goal and every open task of it.
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        client: Client,
    },
    /// Approve a goal's plan.
    Approve {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Pause a goal (runs in flight finish, nothing new starts).
    Pause {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Resume a paused goal.
    Resume {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Plan again what is not done, with a note for the planner.
    Replan {
        id: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        client: Client,
    },
    /// Answer a goal that waits for a person: approve, retry, replan,
    /// cancel or fail, with a note (and a new budget).
    Decide {
        id: String,
        #[arg(long)]
        action: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        budget_usd: Option<f64>,
        #[arg(long)]
        budget_tokens: Option<u64>,
        #[command(flatten)]
        client: Client,
    },
}

fn budget(usd: Option<f64>, tokens: Option<u64>, secs: Option<u64>) -> Option<Value> {
    let mut b = serde_json::Map::new();
    if let Some(u) = usd {
        b.insert("cost_usd".into(), u.into());
    }
    if let Some(t) = tokens {
        b.insert("tokens".into(), t.into());
    }
    if let Some(s) = secs {
        b.insert("wall_secs".into(), s.into());
    }
    (!b.is_empty()).then_some(Value::Object(b))
}

pub(crate) fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) async fn send(client: &Client, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    answer(
        req.send()
            .await
            .with_context(|| format!("cannot reach Colony at {}", client.url))?,
    )
    .await
}

pub async fn run(command: GoalCommand) -> anyhow::Result<()> {
    match command {
        GoalCommand::Submit {
            title,
            description,
            acceptance,
            budget_usd,
            budget_tokens,
            budget_secs,
            priority,
            planner,
            require_plan_approval,
            idempotency_key,
            wait,
            client,
        } => {
            let mut body = json!({"title": title, "description": description, "acceptance": acceptance,
                                  "require_plan_approval": require_plan_approval});
            if let Some(b) = budget(budget_usd, budget_tokens, budget_secs) {
                body["budget"] = b;
            }
            if let Some(p) = priority {
                body["priority"] = p.into();
            }
            if let Some(p) = planner {
                body["planner"] = p.into();
            }
            let http = client.http(None)?;
            let mut req = http.post(format!("{}/v1/goals", client.url)).json(&body);
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let accepted = send(&client, req).await?;
            let id = accepted["id"]
                .as_str()
                .context("the answer has no goal id")?;
            if !wait {
                return print(&accepted);
            }
            watch(&client, id, false).await
        }
        GoalCommand::Get { id, client } => {
            let http = client.http(None)?;
            print(&send(&client, http.get(format!("{}/v1/goals/{id}", client.url))).await?)
        }
        GoalCommand::Watch { id, client } => watch(&client, &id, true).await,
        GoalCommand::List {
            state,
            limit,
            client,
        } => {
            let http = client.http(None)?;
            let mut q = Vec::new();
            if let Some(s) = state {
                q.push(("state", s));
            }
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            let req = http.get(format!("{}/v1/goals", client.url)).query(&q);
            print(&send(&client, req).await?)
        }
        GoalCommand::Cancel { id, note, client } => {
            act(&client, &id, "cancel", Some(json!({"note": note}))).await
        }
        GoalCommand::Approve { id, client } => act(&client, &id, "approve", None).await,
        GoalCommand::Pause { id, client } => act(&client, &id, "pause", None).await,
        GoalCommand::Resume { id, client } => act(&client, &id, "resume", None).await,
        GoalCommand::Replan { id, note, client } => {
            act(&client, &id, "replan", Some(json!({"note": note}))).await
        }
        GoalCommand::Decide {
            id,
            action,
            note,
            budget_usd,
            budget_tokens,
            client,
        } => {
            let mut body = json!({"action": action, "note": note});
            if let Some(b) = budget(budget_usd, budget_tokens, None) {
                body["budget"] = b;
            }
            act(&client, &id, "decide", Some(body)).await
        }
    }
}

async fn act(client: &Client, id: &str, what: &str, body: Option<Value>) -> anyhow::Result<()> {
    let http = client.http(None)?;
    let mut req = http.post(format!("{}/v1/goals/{id}/{what}", client.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    print(&send(client, req).await?)
}

/// Follow the goal's events until it is final or waits for a person, then
/// print the goal. `lines`: print one line per event on the way (stderr
/// keeps stdout for the JSON).
async fn watch(client: &Client, id: &str, lines: bool) -> anyhow::Result<()> {
    let http = client.http(None)?;
    follow(
        client,
        &http,
        id,
        lines,
        crate::progress::GoalProgress::new(),
    )
    .await
}

async fn follow(
    client: &Client,
    http: &reqwest::Client,
    id: &str,
    lines: bool,
    mut progress: crate::progress::GoalProgress,
) -> anyhow::Result<()> {
    loop {
        let resp = http
            .get(format!("{}/v1/goals/{id}/events", client.url))
            .send()
            .await
            .with_context(|| format!("cannot reach Colony at {}", client.url))?;
        if !resp.status().is_success() {
            answer(resp).await?;
            anyhow::bail!("the event feed was refused");
        }
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut event = String::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end();
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    if event == "end" {
                        progress.finish();
                        return print(&serde_json::from_str(data).unwrap_or(Value::Null));
                    }
                    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    if lines || progress.is_bar() {
                        progress.line(&describe(&event, &v));
                    }
                    if progress.wants_view() {
                        if let Ok(view) =
                            send(client, http.get(format!("{}/v1/goals/{id}", client.url))).await
                        {
                            progress.view(&view);
                        }
                    }
                    // A goal waiting for a person: --wait is done waiting.
                    if !lines && event == "goal" && v["to"] == "blocked" {
                        let view =
                            send(client, http.get(format!("{}/v1/goals/{id}", client.url))).await?;
                        progress.finish();
                        return print(&view);
                    }
                }
            }
        }
        // The feed closed early (a restart): follow again from the start.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// One line for an event of the goal's feed.
fn describe(event: &str, v: &Value) -> String {
    let at = v["at"].as_str().unwrap_or_default();
    match event {
        "goal" => format!(
            "{at} goal {} {}{}",
            v["kind"].as_str().unwrap_or_default(),
            v["to"]
                .as_str()
                .map(|s| format!("→ {s} "))
                .unwrap_or_default(),
            v["reason"].as_str().unwrap_or_default()
        ),
        "task" => {
            let body = &v["body"];
            format!(
                "{at} task {} {} {}",
                v["task_id"].as_str().unwrap_or_default(),
                body["to"].as_str().unwrap_or(event),
                body["reason"].as_str().unwrap_or_default()
            )
        }
        other => format!("{at} {other} {v}"),
    }
}
