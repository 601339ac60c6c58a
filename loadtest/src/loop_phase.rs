//! The loop phase: goals through the whole loop (a planning run, executor
//! runs in dependency order, a review run for each, a delivery run), in
//! containers through the real path, against the ceiling of the same
//! machine: plain agent runs of the same roles with as many model turns.
//! Each sub-task costs two runs (its work and its review), so the ceiling
//! in sub-tasks per second is the plain runs per second halved; the
//! planning and delivery runs are the loop's own overhead and count
//! against it.
//!
//! Also measured: the wake-up latency from a dependency's `done` to its
//! dependent's `running` (both stamped by Colony as it commits them), each
//! goal's latency, and 1,000 clients following goals over SSE.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::colony_phase::ColonyBench;

/// Links of the chain whose wake-ups are measured with nothing else running.
const CHAIN: usize = 6;
use crate::stats::{percentile, Summary};
use crate::Args;

/// Role templates and scripts of the loop: no daily quotas (the bench runs
/// more than a day's worth of an employee's), one turn per step.
pub fn write_roles_and_scripts(dir: &Path, args: &Args) -> anyhow::Result<(PathBuf, PathBuf)> {
    let roles = dir.join("roles");
    std::fs::create_dir_all(&roles).context("cannot make the bench's roles directory")?;
    // Room for the containers of every goal in flight (a goal's runs mount
    // its own workspace, so its containers are its own).
    let pool = "pool: { warm: 0, max_active: 16 }";
    let limits = "limits: { memory_mb: 256, cpus: 1.0, pids: 128, timeout_secs: 120 }";
    let files = [
        (
            "planner",
            format!(
                "name: planner\ndescription: plans goals\nmodel: scripted\nsystem_prompt: You plan.\n\
                 tools: [read_file]\nallowed_actions: [plan.submit, note]\nmay_create: [executor]\n\
                 {limits}\nmax_turns: 6\n{pool}\n"
            ),
        ),
        (
            "executor",
            format!(
                "name: executor\ndescription: does one sub-task\nmodel: scripted\nsystem_prompt: You work.\n\
                 tools: [read_file, write_file]\nallowed_actions: [note]\n\
                 review: {{ required: true, reviewer_role: reviewer }}\n{limits}\nmax_turns: 6\n{pool}\n"
            ),
        ),
        (
            "reviewer",
            format!(
                "name: reviewer\ndescription: reviews one sub-task\nmodel: scripted\nsystem_prompt: You review.\n\
                 tools: [read_file]\nallowed_actions: [review.submit, note]\n{limits}\nmax_turns: 6\n{pool}\n"
            ),
        ),
    ];
    for (name, yaml) in files {
        std::fs::write(roles.join(format!("{name}.yaml")), yaml)
            .with_context(|| format!("cannot write the bench role {name}"))?;
    }
    let k = args.subtasks.max(1);
    let half = k.div_ceil(2);
    let subtasks: Vec<Value> = (0..k)
        .map(|i| {
            let mut s = json!({"key": format!("s{i}"), "title": format!("part {i}"), "role": "executor",
                               "description": "Write your part.", "acceptance": ["the part is written"]});
            if i >= half {
                s["depends_on"] = json!([format!("s{}", i - half)]);
            }
            s
        })
        .collect();
    let key = "{field:Your sub-task (}";
    let task = "{field:\"task_id\": \"}";
    let scripts = json!({"scripts": {
        "bench.plan": [
            {"tool_calls": [{"name": "action_plan_submit", "arguments": {"subtasks": subtasks}}]},
            {"text": "planned"}
        ],
        "bench.work": [
            {"tool_calls": [{"name": "write_file", "arguments": {"path": format!("{key}.md"), "content": "a part\n"}}]},
            {"text": format!("wrote {key}.md")}
        ],
        "bench.review": [
            {"tool_calls": [{"name": "action_review_submit", "arguments": {"task_id": task, "score": 8, "approve": true}}]},
            {"text": "approved"}
        ],
        "bench.deliver": [{"text": "every part is written"}],
        // The ceiling's review-sized run: one action call, then the answer.
        "bench.check": [
            {"tool_calls": [{"name": "action_note", "arguments": {"text": "checked"}}]},
            {"text": "checked"}
        ]
    }});
    // A chain s0 → s1 → … for the wake-up latency, run alone.
    let chain: Vec<Value> = (0..CHAIN)
        .map(|i| {
            let mut s = json!({"key": format!("c{i}"), "title": format!("link {i}"), "role": "executor",
                               "description": "Write your link.", "acceptance": ["the link is written"]});
            if i > 0 {
                s["depends_on"] = json!([format!("c{}", i - 1)]);
            }
            s
        })
        .collect();
    let mut scripts = scripts;
    for phase in ["work", "review", "deliver"] {
        scripts["scripts"][format!("chain.{phase}")] =
            scripts["scripts"][format!("bench.{phase}")].clone();
    }
    scripts["scripts"]["chain.plan"] = json!([
        {"tool_calls": [{"name": "action_plan_submit", "arguments": {"subtasks": chain}}]},
        {"text": "planned"}
    ]);
    let path = dir.join("scripts.json");
    std::fs::write(&path, scripts.to_string()).context("cannot write the bench's scripts")?;
    Ok((roles, path))
}

/// One round of the loop against its ceiling.
#[derive(Clone, Debug)]
pub struct Round {
    pub subtasks: usize,
    pub secs: f64,
    pub subtasks_per_s: f64,
    pub ceiling_runs_per_s: f64,
    /// Wake-up latencies of the chain run alone this round, ms.
    pub wakeups: Vec<f64>,
    /// Wake-up latencies inside the round's goals (behind the other goals'
    /// runs for a worker slot), ms.
    pub busy_wakeups: Vec<f64>,
    /// Goal latencies (submission → done), ms.
    pub goals: Vec<f64>,
}

impl Round {
    pub fn ratio(&self) -> f64 {
        self.subtasks_per_s / (self.ceiling_runs_per_s / 2.0)
    }
}

impl std::fmt::Display for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut w = self.wakeups.clone();
        w.sort_by(f64::total_cmp);
        let mut b = self.busy_wakeups.clone();
        b.sort_by(f64::total_cmp);
        let mut g = self.goals.clone();
        g.sort_by(f64::total_cmp);
        write!(
            f,
            "loop: {} sub-tasks in {:.2} s = {:.2} sub-tasks/s; ceiling {:.2} runs/s = {:.2} sub-tasks/s; loop/ceiling {:.2}; wake-up alone p50 {:.1} ms, p99 {:.1} ms ({} links); in the busy round p50 {:.0} ms, p99 {:.0} ms ({} dependents); goal p50 {:.0} ms",
            self.subtasks,
            self.secs,
            self.subtasks_per_s,
            self.ceiling_runs_per_s,
            self.ceiling_runs_per_s / 2.0,
            self.ratio(),
            percentile(&w, 50.0),
            percentile(&w, 99.0),
            w.len(),
            percentile(&b, 50.0),
            percentile(&b, 99.0),
            b.len(),
            percentile(&g, 50.0)
        )
    }
}

/// The ceiling: `2 × goals × subtasks` plain agent runs, half executor
/// runs of the work script and half reviewer runs of a review-sized one.
pub async fn ceiling(bench: &ColonyBench, args: &Args) -> anyhow::Result<Summary> {
    let n = 2 * args.goals * args.subtasks;
    let bodies = [
        json!({"role": "executor", "input": {"prompt": "[script:bench.work] Your sub-task (plain): write it."}}),
        json!({"role": "reviewer", "input": {"prompt": "[script:bench.check] Check it."}}),
    ];
    let s = bench
        .run_tasks(
            "ceiling",
            &bodies,
            n,
            args.slots * 2,
            Duration::from_secs(args.task_timeout_secs),
        )
        .await?;
    if s.failed > 0 {
        bail!(
            "ceiling: {} of {} runs failed; first: {}",
            s.failed,
            n,
            s.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(s)
}

/// Submit `n` goals of goal script `script` at once.
async fn submit_goals(
    bench: &ColonyBench,
    n: usize,
    what: &str,
    script: &str,
) -> anyhow::Result<Vec<uuid::Uuid>> {
    let (http, base) = bench.http();
    let posts = (0..n).map(|i| {
        let http = http.clone();
        let url = format!("{base}/v1/goals");
        let description = format!("[script:{script}]");
        async move {
            let r = http
                .post(url)
                .json(
                    &json!({"title": format!("{what} {i}"), "description": description,
                              "acceptance": "every part is written"}),
                )
                .send()
                .await?;
            let status = r.status();
            let v: Value = r.json().await?;
            if !status.is_success() {
                bail!("POST /v1/goals answered {status}: {v}");
            }
            Ok(uuid::Uuid::parse_str(v["id"].as_str().unwrap_or_default())?)
        }
    });
    futures_util::future::join_all(posts)
        .await
        .into_iter()
        .collect()
}

async fn wait_done(
    db: &deadpool_postgres::Object,
    ids: &[uuid::Uuid],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'done'),
                        count(*) FILTER (WHERE state IN ('failed', 'cancelled', 'blocked')),
                        min(state::text) FILTER (WHERE state IN ('failed', 'cancelled', 'blocked'))
                 FROM goals WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        let (done, stuck, why): (i64, i64, Option<String>) = (row.get(0), row.get(1), row.get(2));
        if stuck > 0 {
            bail!(
                "{stuck} goal(s) ended {} instead of done",
                why.unwrap_or_default()
            );
        }
        if done as usize == ids.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} goals done after {} s",
                done,
                ids.len(),
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One loop round: `args.goals` goals of `args.subtasks` sub-tasks each.
pub async fn round(bench: &ColonyBench, args: &Args, ceiling_tps: f64) -> anyhow::Result<Round> {
    let pool = crate::floor::pg_pool(&bench.settings, 2)?;
    let db = pool.get().await?;
    let ids = submit_goals(bench, args.goals, "bench goal", "bench").await?;
    wait_done(&db, &ids, Duration::from_secs(args.task_timeout_secs * 4)).await?;
    // From Colony's own stamps: each taken as its transaction was written.
    let row = db
        .query_one(
            "SELECT extract(epoch FROM max(e.at) - min(g.created_at))::float8
             FROM goals g JOIN goal_events e ON e.goal_id = g.id AND e.to_state = 'done'
             WHERE g.id = ANY($1)",
            &[&ids],
        )
        .await?;
    let secs: f64 = row.get(0);
    let goals: Vec<f64> = db
        .query(
            "SELECT extract(epoch FROM e.at - g.created_at)::float8 * 1000
             FROM goals g JOIN goal_events e ON e.goal_id = g.id AND e.to_state = 'done'
             WHERE g.id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let busy_wakeups = wakeups(&db, &ids).await?;
    // The chain, alone: what the wake-up costs when a worker slot is free.
    let chain = submit_goals(bench, 1, "chain goal", "chain").await?;
    wait_done(&db, &chain, Duration::from_secs(args.task_timeout_secs * 4)).await?;
    let idle_wakeups = wakeups(&db, &chain).await?;
    let subtasks = args.goals * args.subtasks;
    Ok(Round {
        subtasks,
        secs,
        subtasks_per_s: subtasks as f64 / secs.max(1e-9),
        ceiling_runs_per_s: ceiling_tps,
        wakeups: idle_wakeups,
        busy_wakeups,
        goals,
    })
}

/// Each dependent's wake-up, ms: its first `running` after the last of its
/// dependencies' `done` (both stamped by Colony as it commits them).
async fn wakeups(db: &deadpool_postgres::Object, ids: &[uuid::Uuid]) -> anyhow::Result<Vec<f64>> {
    Ok(db
        .query(
            "SELECT extract(epoch FROM
                      (SELECT min(e.at) FROM events e WHERE e.task_id = t.id AND e.to_state = 'running')
                    - (SELECT max(e2.at) FROM task_deps d JOIN events e2
                         ON e2.task_id = d.depends_on AND e2.to_state = 'done' WHERE d.task_id = t.id)
                    )::float8 * 1000
             FROM tasks t
             WHERE t.goal_id = ANY($1) AND t.kind = 'work'
               AND EXISTS (SELECT 1 FROM task_deps d WHERE d.task_id = t.id)",
            &[&ids],
        )
        .await?
        .iter()
        .filter_map(|r| r.get::<_, Option<f64>>(0))
        .collect())
}

/// What the watchers saw.
pub struct Watchers {
    pub clients: usize,
    pub goals: usize,
    pub ended: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub secs: f64,
}

impl std::fmt::Display for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "watchers: {} SSE clients on {} goals, {} followed theirs to the end, {} errors{} ({:.2} s)",
            self.clients,
            self.goals,
            self.ended,
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default(),
            self.secs
        )
    }
}

/// `args.watchers` clients, each on its own connection, follow the goals
/// of one more round from submission to `end`.
pub async fn watchers(bench: &ColonyBench, args: &Args) -> anyhow::Result<Watchers> {
    let started = Instant::now();
    let ids = submit_goals(bench, args.goals, "watched goal", "bench").await?;
    let (_, base) = bench.http();
    let key = bench.key().to_string();
    let limit = Duration::from_secs(args.task_timeout_secs * 4);
    let clients = (0..args.watchers).map(|i| {
        let url = format!("{base}/v1/goals/{}/events", ids[i % ids.len()]);
        let key = key.clone();
        async move {
            // One connection per client, as a thousand browsers would.
            let http = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| e.to_string())?;
            let resp = http
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("answered {}", resp.status()));
            }
            let mut body = resp.bytes_stream();
            let mut tail = Vec::new();
            let read = tokio::time::timeout(limit, async {
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| format!("read: {e}"))?;
                    tail.extend_from_slice(&chunk);
                    if tail.windows(10).any(|w| w == b"event: end") {
                        return Ok(());
                    }
                    if tail.len() > 64 {
                        tail.drain(..tail.len() - 64);
                    }
                }
                Err("the feed closed before its end".to_string())
            })
            .await;
            read.unwrap_or_else(|_| Err("no end in time".to_string()))
        }
    });
    let results = futures_util::future::join_all(clients).await;
    let pool = crate::floor::pg_pool(&bench.settings, 1)?;
    wait_done(&pool.get().await?, &ids, limit).await?;
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    Ok(Watchers {
        clients: args.watchers,
        goals: ids.len(),
        ended: results.iter().filter(|r| r.is_ok()).count(),
        errors: errors.len(),
        first_error: errors.first().map(|e| e.to_string()),
        secs: started.elapsed().as_secs_f64(),
    })
}
