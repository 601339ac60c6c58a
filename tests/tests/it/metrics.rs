//! `GET /metrics` on real NATS, Postgres and Docker, parsed by Prometheus's
//! own Python parser (`prometheus_client`): a pool's backlog and its
//! consumer's pending count and backlog age grow while no worker serves
//! it, and fall back to 0 once one does.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use colony::Role;
use colony_tests::World;
use serde_json::{json, Value};
use subjects::TaskState;

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
    parse(&resp.text().await.expect("text"))
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
    let text = w
        .http()
        .get(format!("{}/metrics", w.url()))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
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
