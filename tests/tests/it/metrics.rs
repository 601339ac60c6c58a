//! `GET /metrics` on real NATS, Postgres and Docker, parsed by Prometheus's
//! own Python parser (`prometheus_client`): a pool's backlog and its
//! consumer's pending count and backlog age grow while no worker serves
//! it, and fall back to 0 once one does; stage durations, retries and
//! hand-backs counted from the events table, each worker's container pool
//! from its status, and the gateway's tokens, quota and egress refusals.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use colony::Role;
use colony_tests::World;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use subjects::TaskState;
use uuid::Uuid;

/// The samples of a scrape as Python's `prometheus_client` parses them:
/// `name{label="v",…}` (labels sorted) → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let python = std::env::var("COLONY_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.colony/pyenv/bin/python");
        if std::path::Path::new(venv).exists() {
            venv.to_string()
        } else {
            "python3".to_string()
        }
    });
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (ops/test installs .colony/pyenv)"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the scrape does not parse as OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: HashMap<String, Value> = serde_json::from_slice(&out.stdout).expect("json");
    v.into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap_or(f64::NAN)))
        .collect()
}

async fn scrape(w: &World) -> HashMap<String, f64> {
    parse(&scrape_text(w).await)
}

/// The text of a scrape, checked for its content type.
async fn scrape_text(w: &World) -> String {
    let resp = w
        .http()
        .get(format!("{}/metrics", w.url()))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    resp.text().await.expect("text")
}

const SHELL: &str = r#"consumer="worker-shell",pool="shell",stream="WORK""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_the_backlog_moves_with_the_workers() {
    let mut w = World::new().await.expect("world");
    w.settings.metrics_ttl_ms = 100;
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let _relay = w.start(Role::Relay).await.expect("relay");

    // A worker makes the pool's consumer and runs one task, then stops.
    let worker = w.start(Role::Worker).await.expect("worker");
    let first = w.submit_shell("true", json!({})).await.expect("submit");
    assert_eq!(
        w.wait_final(first, 60).await.expect("final").state,
        TaskState::Done
    );
    worker.stop().await.expect("stop");

    // Work with no worker: the backlog grows and ages.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            w.submit_shell(&format!("echo {i}"), json!({}))
                .await
                .expect("submit"),
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = scrape(&w).await;
    let get = |m: &HashMap<String, f64>, k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no {k} in {:?}", m.keys().collect::<Vec<_>>()))
    };
    assert_eq!(get(&m, &format!("colony_consumer_pending{{{SHELL}}}")), 5.0);
    assert_eq!(get(&m, &format!("colony_consumer_lag{{{SHELL}}}")), 5.0);
    let age = get(
        &m,
        &format!("colony_consumer_backlog_age_seconds{{{SHELL}}}"),
    );
    assert!((1.0..60.0).contains(&age), "backlog age {age}");
    assert_eq!(get(&m, "colony_pool_backlog{pool=\"shell\"}"), 5.0);
    assert!(get(&m, "colony_pool_backlog_age_seconds{pool=\"shell\"}") >= 1.0);
    assert_eq!(
        get(&m, "colony_tasks{role=\"shell\",state=\"queued\"}"),
        5.0
    );
    assert_eq!(get(&m, "colony_tasks{role=\"shell\",state=\"done\"}"), 1.0);
    assert!(get(&m, "colony_stream_messages{stream=\"WORK\"}") >= 5.0);
    // The HTTP API counted its own requests by route pattern.
    assert!(
        get(
            &m,
            "colony_http_requests_total{method=\"POST\",route=\"/v1/tasks\",status=\"202\"}"
        ) >= 6.0
    );
    assert!(
        m.keys().all(|k| !k.contains("/v1/tasks/0")),
        "raw paths are not labels"
    );

    // A worker again: everything drains.
    let worker = w.start(Role::Worker).await.expect("worker");
    for id in &ids {
        assert_eq!(
            w.wait_final(*id, 60).await.expect("final").state,
            TaskState::Done
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = scrape(&w).await;
    assert_eq!(get(&m, &format!("colony_consumer_pending{{{SHELL}}}")), 0.0);
    assert_eq!(
        get(
            &m,
            &format!("colony_consumer_backlog_age_seconds{{{SHELL}}}")
        ),
        0.0
    );
    assert_eq!(
        m.get("colony_pool_backlog{pool=\"shell\"}")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(get(&m, "colony_tasks{role=\"shell\",state=\"done\"}"), 6.0);
    println!(
        "metrics: backlog 5 aged {age:.1} s with no worker, 0 with one; {} samples, refresh {:.1} ms",
        m.len(),
        get(&m, "colony_fleet_refresh_seconds{}") * 1000.0
    );
    worker.stop().await.expect("stop");
}

/// The metric families a scrape declares (`# TYPE <name> …`).
fn families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `colony_…` name in a PromQL expression, as its family's name
/// (without `_total`, `_bucket`, `_sum`, `_count`).
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("colony_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_board_is_valid_and_names_only_metrics_a_scrape_has() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("ops/grafana/colony.json")).expect("the board"),
    )
    .expect("the board is JSON");
    assert_eq!(board["uid"], "colony");
    let panels = board["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "ids are unique: {p}"
        );
        let grid = &p["gridPos"];
        let (x, w) = (
            grid["x"].as_u64().expect("x"),
            grid["w"].as_u64().expect("w"),
        );
        assert!(
            x + w <= 24 && grid["h"].as_u64().is_some(),
            "on the grid: {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "colony-prometheus", "{p}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            exprs.push(t["expr"].as_str().expect("an expression").to_string());
        }
    }
    // The provisioning points at the same data source.
    let ds =
        std::fs::read_to_string(root.join("ops/grafana/provisioning/datasources/prometheus.yml"))
            .expect("datasource");
    assert!(ds.contains("uid: colony-prometheus"));

    // A live scrape of a Colony that has run a task.
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w.submit_shell("true", json!({})).await.expect("submit");
    assert_eq!(
        w.wait_final(id, 60).await.expect("final").state,
        TaskState::Done
    );
    let text = w.metrics_text().await.expect("scrape");
    let have = families(&text);
    let mut named = std::collections::BTreeSet::new();
    for e in &exprs {
        for n in names_in(e) {
            assert!(
                have.contains(&n),
                "the board queries {n}, which no scrape has: {e}"
            );
            named.insert(n);
        }
    }
    println!(
        "grafana: {} panels, {} queries naming {} metric families, all in a live scrape of {}",
        panels.len(),
        exprs.len(),
        named.len(),
        have.len()
    );
    colony.stop().await.expect("stop");
}

/// The sum of the samples named `name` whose labels include each of
/// `labels` (`k="v"`); 0 when there is none.
fn total(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.split_once('{').is_some_and(|(n, rest)| {
                let have: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                n == name && labels.iter().all(|l| have.contains(l))
            })
        })
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until `ready` holds (within `secs`).
async fn scrape_until(
    w: &World,
    secs: u64,
    what: &str,
    ready: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = scrape(w).await;
        if ready(&m) {
            return m;
        }
        if Instant::now() > deadline {
            let mut keys: Vec<_> = m
                .iter()
                .filter(|(k, _)| {
                    ["colony_task_", "colony_worker_", "colony_gateway_"]
                        .iter()
                        .any(|p| k.starts_with(p))
                        && !k.contains("_bucket")
                })
                .collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            panic!("{what}: not within {secs} s: {keys:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SHELL_ROLE: &str = r#"role="shell""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_durations_retries_hand_backs_and_the_pool_are_counted() {
    let mut w = World::new().await.expect("world");
    w.settings.metrics_ttl_ms = 100;
    w.settings.drain_timeout_ms = 200;
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let _relay = w.start(Role::Relay).await.expect("relay");
    // The first scrape places the history's tails at the tables' ends:
    // what follows is counted.
    let before = scrape(&w).await;
    let at_start = |m: &HashMap<String, f64>, name: &str, labels: &[&str]| {
        total(m, name, labels) - total(&before, name, labels)
    };
    let worker = w.start(Role::Worker).await.expect("worker");
    let worker_id = w.settings.worker_id.clone().expect("worker id");

    // Four tasks done, one that times out, is retried and fails.
    let n = 4;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            w.submit_shell(&format!("echo {i}"), json!({}))
                .await
                .expect("submit"),
        );
    }
    let slow = w
        .submit_shell("sleep 10", json!({"max_attempts": 2, "timeout_secs": 1}))
        .await
        .expect("submit");
    for id in &ids {
        assert_eq!(
            w.wait_final(*id, 60).await.expect("final").state,
            TaskState::Done
        );
    }
    assert_eq!(
        w.wait_final(slow, 60).await.expect("final").state,
        TaskState::Failed
    );
    let m = scrape_until(&w, 30, "stages of the finished tasks", |m| {
        at_start(
            m,
            "colony_task_stage_seconds_count",
            &[SHELL_ROLE, r#"stage="running""#],
        ) >= (n + 2) as f64
            && at_start(m, "colony_task_retries_total", &[SHELL_ROLE]) >= 1.0
    })
    .await;
    // Every run waited in the queue first, and left running.
    let stage = |m: &HashMap<String, f64>, s: &str| {
        at_start(
            m,
            "colony_task_stage_seconds_count",
            &[SHELL_ROLE, &format!(r#"stage="{s}""#)],
        )
    };
    assert_eq!(stage(&m, "queued"), (n + 2) as f64);
    assert_eq!(stage(&m, "running"), (n + 2) as f64);
    assert_eq!(
        at_start(
            &m,
            "colony_task_transitions_total",
            &[SHELL_ROLE, r#"from="queued""#, r#"to="running""#]
        ),
        (n + 2) as f64
    );
    assert_eq!(
        at_start(
            &m,
            "colony_task_transitions_total",
            &[SHELL_ROLE, r#"from="running""#, r#"to="done""#]
        ),
        n as f64
    );
    assert_eq!(
        at_start(&m, "colony_task_retries_total", &[SHELL_ROLE]),
        1.0
    );
    // The timed-out run stayed at least its second in running: its
    // duration is past the 1 s bucket's bound.
    let le1 = r#"colony_task_stage_seconds_bucket{le="1.0",role="shell",stage="running"}"#;
    assert!(m.contains_key(le1), "{le1}");
    let le1 = m[le1] - before.get(le1).copied().unwrap_or(0.0);
    assert!(le1 <= n as f64, "{le1}");
    assert_eq!(
        m.get(r#"colony_task_takeovers_total{role="shell"}"#),
        Some(&0.0),
        "shown as 0"
    );

    // The pool: every run acquired one container, by source, as the
    // worker's status says once it caught up with the runs.
    let db = w.db().await.expect("db");
    let runs: i64 = db
        .query_one(
            "SELECT count(*) FROM runs WHERE worker_id = $1",
            &[&worker_id],
        )
        .await
        .expect("runs")
        .get(0);
    assert_eq!(runs, n as i64 + 2);
    let me = format!(r#"worker="{worker_id}""#);
    let m = scrape_until(&w, 30, "acquires adding up to the runs", |m| {
        total(m, "colony_worker_pool_acquires_total", &[&me]) == runs as f64
            && total(m, "colony_worker_pool_active", &[&me]) == 0.0
    })
    .await;
    let cold = total(
        &m,
        "colony_worker_pool_acquires_total",
        &[&me, r#"source="cold""#],
    );
    let reused = total(
        &m,
        "colony_worker_pool_acquires_total",
        &[&me, r#"source="reuse""#],
    );
    assert!(cold >= 1.0, "{cold}");
    assert_eq!(
        cold + reused
            + total(
                &m,
                "colony_worker_pool_acquires_total",
                &[&me, r#"source="warm""#]
            ),
        runs as f64,
        "no prewarm, no adoption: cold or reused"
    );
    let starts = total(&m, "colony_worker_pool_cold_start_seconds_count", &[&me]);
    assert!(starts >= 1.0, "{starts}");
    assert_eq!(
        total(
            &m,
            "colony_worker_pool_cold_start_seconds_bucket",
            &[&me, r#"le="+Inf""#]
        ),
        starts
    );
    assert!(total(&m, "colony_worker_pool_cold_start_seconds_sum", &[&me]) > 0.0);
    assert_eq!(
        total(&m, "colony_worker_slots", &[&me]),
        w.settings.worker_slots as f64
    );
    assert!(m.contains_key(&format!(
        r#"colony_worker_pool_evictions_total{{reason="cap",{me}}}"#
    )));

    // A hand-back: a run in flight when its worker shuts down.
    let (_nats, mut events) = w.default_events().await.expect("events");
    let held = w
        .submit_shell("echo started; sleep 30", json!({}))
        .await
        .expect("submit");
    colony_tests::first_output(&mut events, held).await;
    worker.stop().await.expect("graceful stop");
    w.wait_for(held, 30, |t| t.state == TaskState::Queued)
        .await
        .expect("handed back");
    let (http, url) = (w.http(), w.url());
    let cancel = |id: Uuid| {
        let (http, url) = (&http, &url);
        async move {
            let r = http
                .post(format!("{url}/v1/tasks/{id}/cancel"))
                .send()
                .await
                .expect("cancel");
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    cancel(held).await;
    let m = scrape_until(&w, 30, "the hand-back", |m| {
        at_start(m, "colony_task_handbacks_total", &[SHELL_ROLE]) >= 1.0
    })
    .await;
    assert_eq!(
        at_start(&m, "colony_task_handbacks_total", &[SHELL_ROLE]),
        1.0
    );
    assert_eq!(
        at_start(&m, "colony_task_retries_total", &[SHELL_ROLE]),
        1.0,
        "a hand-back is no retry"
    );

    // The cost of a refresh that reads more than 1 000 events: 600 tasks
    // queued and cancelled (no worker runs them), then one scrape.
    let tasks = 600;
    let transitions = |m: &HashMap<String, f64>| total(m, "colony_task_transitions_total", &[]);
    // The store's read on its own, placed at the tables' ends now.
    let store = w.store(1);
    let (_, tails) = store
        .fleet_history(Default::default())
        .await
        .expect("placed");
    let made: Vec<Uuid> = futures_util::stream::iter(0..tasks)
        .map(|i| {
            let (http, url) = (&http, &url);
            async move {
                let r = http
                    .post(format!("{url}/v1/tasks"))
                    .json(&json!({"role": "shell", "input": {"command": format!("echo {i}")}}))
                    .send()
                    .await?;
                let v: Value = r.error_for_status()?.json().await?;
                Ok::<_, reqwest::Error>(
                    Uuid::parse_str(v["id"].as_str().expect("an id")).expect("a uuid"),
                )
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .expect("submit");
    futures_util::stream::iter(made)
        .for_each_concurrent(16, cancel)
        .await;
    let started = Instant::now();
    let (history, _) = store.fleet_history(tails).await.expect("history");
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(history.transitions.len(), 2 * tasks);
    let idle_refresh_ms = total(&m, "colony_fleet_refresh_seconds", &[]) * 1e3;
    let started = Instant::now();
    let text = scrape_text(&w).await;
    let scrape_ms = started.elapsed().as_secs_f64() * 1e3;
    let after = parse(&text);
    let read = transitions(&after) - transitions(&m);
    let refresh_ms = total(&after, "colony_fleet_refresh_seconds", &[]) * 1e3;
    let m = scrape_until(&w, 30, "the cancelled tasks", |m| {
        at_start(
            m,
            "colony_task_transitions_total",
            &[SHELL_ROLE, r#"from="queued""#, r#"to="cancelled""#],
        ) >= (tasks + 1) as f64
    })
    .await;
    assert_eq!(
        at_start(
            &m,
            "colony_task_transitions_total",
            &[SHELL_ROLE, r#"from="none""#, r#"to="queued""#]
        ),
        (n + 2 + tasks) as f64
    );
    assert_eq!(
        at_start(
            &m,
            "colony_task_stage_seconds_count",
            &[SHELL_ROLE, r#"stage="queued""#]
        ),
        // Every run's wait, the hand-back's and the retry's included, and
        // every cancelled task's.
        (n + 2 + 2 + tasks) as f64
    );
    assert!(
        read >= 1000.0,
        "one refresh read {read} transitions of {tasks} tasks' 1 200"
    );
    println!(
        "metrics history: {n} done, 1 retried, 1 handed back; {runs} runs = acquires ({cold} cold, {reused} reused), {starts} cold starts; \
         one refresh read {read} events of {tasks} tasks queued and cancelled: the store's read {read_ms:.1} ms, \
         the refresh {refresh_ms:.1} ms (one with no new rows {idle_refresh_ms:.1} ms), the scrape {scrape_ms:.1} ms"
    );
}

/// An event id that never commits (its transaction rolled back) is waited
/// for, then passed; rows after it are counted once, and a read whose
/// tails are not kept (a refresh that failed before counting) reads the
/// same rows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_event_id_is_waited_for_then_passed_and_nothing_is_lost() {
    let w = World::new().await.expect("world");
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let store = w.store(1);
    let (_, placed) = store
        .fleet_history(Default::default())
        .await
        .expect("placed");
    // The id a rolled-back transaction took.
    let db = w.db().await.expect("db");
    db.query_one("SELECT nextval('events_id_seq')", &[])
        .await
        .expect("burn an id");
    // A task made and cancelled: two events past the hole.
    let id = w.submit_shell("true", json!({})).await.expect("submit");
    let r = w
        .http()
        .post(format!("{}/v1/tasks/{id}/cancel", w.url()))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 200);
    let (h, waiting) = store.fleet_history(placed.clone()).await.expect("read");
    assert!(h.transitions.is_empty(), "the hole is waited for: {h:?}");
    // Not kept (as if the refresh failed): the same read again, the same.
    let (again, _) = store.fleet_history(placed).await.expect("read");
    assert_eq!(again, h);
    tokio::time::sleep(store::fleet::SETTLE + Duration::from_millis(500)).await;
    let (h, passed) = store.fleet_history(waiting).await.expect("read");
    let states: Vec<(Option<String>, String)> = h
        .transitions
        .iter()
        .map(|t| (t.from.clone(), t.to.clone()))
        .collect();
    assert_eq!(
        states,
        vec![
            (None, "queued".to_string()),
            (Some("queued".to_string()), "cancelled".to_string())
        ]
    );
    let (h, _) = store.fleet_history(passed).await.expect("read");
    assert!(h.transitions.is_empty(), "each row once: {h:?}");
}

/// A role of the scripted model provider (see agents.rs).
fn role_yaml(name: &str, egress: &str, quotas: &str) -> String {
    format!(
        "name: {name}
description: a role for the metrics tests
model: scripted
system_prompt: You are a test employee.
tools: [shell]
allowed_actions: []
egress: [{egress}]
limits: {{ memory_mb: 256, cpus: 1.0, pids: 128, timeout_secs: 60 }}
quotas: {{ {quotas} }}
max_turns: 10
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_tokens_quota_and_egress_refusals_are_counted() {
    let mut w = World::new().await.expect("world");
    w.settings.metrics_ttl_ms = 100;
    let scripts = json!({"scripts": {
        "net": [
            {"tool_calls": [{"name": "shell", "arguments": {"command": "wget -q -O - http://203.0.113.7/ 2>&1; echo denied=$?"}}]},
            {"text": "{tool:shell}"}
        ],
        "brief": [
            {"text": "ok"}
        ]
    }});
    w.use_roles(
        &[
            ("netter", &role_yaml("netter", "", "")),
            // A brief run spends about 300 tokens.
            ("thrifty", &role_yaml("thrifty", "", "tokens_per_run: 20")),
        ],
        &scripts.to_string(),
    )
    .expect("roles");
    let colony = w.start(Role::All).await.expect("colony");
    let before = scrape(&w).await;
    let at_start = |m: &HashMap<String, f64>, name: &str, labels: &[&str]| {
        total(m, name, labels) - total(&before, name, labels)
    };
    let net = w
        .submit(json!({"role": "netter", "input": {"prompt": "[script:net] try the network"}}))
        .await
        .expect("submit");
    let thrifty = w
        .submit(json!({"role": "thrifty", "input": {"prompt": "[script:brief] go"}}))
        .await
        .expect("submit");
    let task = w.wait_final(net, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let task = w.wait_final(thrifty, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Failed);
    let quota = [r#"role="thrifty""#, r#"quota="tokens_per_run""#];
    let egress = [r#"action="egress""#, r#"outcome="denied""#];
    let m = scrape_until(&w, 30, "the gateway's refusals", |m| {
        at_start(m, "colony_gateway_quota_refusals_total", &quota) >= 1.0
            && at_start(m, "colony_gateway_actions_total", &egress) >= 1.0
    })
    .await;
    assert_eq!(
        at_start(&m, "colony_gateway_quota_refusals_total", &quota),
        1.0
    );
    // Both model calls of the netter's run, and their tokens.
    let netter = [r#"role="netter""#];
    assert_eq!(
        at_start(&m, "colony_gateway_model_calls_total", &netter),
        2.0
    );
    let prompt = at_start(
        &m,
        "colony_gateway_tokens_total",
        &[r#"role="netter""#, r#"kind="prompt""#],
    );
    assert!(prompt > 0.0, "{prompt}");
    // The same as the usage table says.
    let db = w.db().await.expect("db");
    let (calls, tokens): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT count(*), coalesce(sum(prompt_tokens), 0)::bigint FROM usage WHERE task_id = $1",
                &[&net],
            )
            .await
            .expect("usage");
        (r.get(0), r.get(1))
    };
    assert_eq!((calls as f64, tokens as f64), (2.0, prompt));
    assert!(
        at_start(
            &m,
            "colony_gateway_model_calls_total",
            &[r#"role="thrifty""#]
        ) >= 1.0
    );
    println!(
        "metrics gateway: {calls} calls and {tokens} prompt tokens of the netter counted, 1 quota refusal, {} egress refusals",
        at_start(&m, "colony_gateway_actions_total", &egress)
    );
    colony.stop().await.expect("stop");
}
