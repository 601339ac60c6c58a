//! The operations views the dashboard reads (`/v1/whoami`, `/v1/overview`,
//! `/v1/streams`, `/v1/tasks` search, `/v1/feed`) and the dashboard's own
//! files, on real NATS, Postgres and Docker.

use std::time::Duration;

use colony::Role;
use colony_tests::{client_with_key, World};
use futures_util::StreamExt;
use serde_json::{json, Value};
use store::Scope;
use subjects::ops::{Overview, Streams, TaskPage, WhoAmI};
use subjects::TaskState;
use uuid::Uuid;

async fn get<T: serde::de::DeserializeOwned>(c: &reqwest::Client, url: &str) -> T {
    let r = c.get(url).send().await.expect("get");
    let status = r.status();
    let text = r.text().await.expect("body");
    assert_eq!(status, 200, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

async fn refused(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.expect("get");
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json");
    (status, v["error"].as_str().unwrap_or("").to_string())
}

/// The data frames of an SSE response read for `within`, as (event, data).
async fn frames(
    resp: reqwest::Response,
    within: Duration,
    stop: impl Fn(&str) -> bool,
) -> Vec<(String, Value)> {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut event = String::from("message");
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            let done = stop(&data);
            out.push((
                event,
                serde_json::from_str(&data).unwrap_or(Value::String(data)),
            ));
            if done {
                return out;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_views_answer_for_the_tenant_alone() {
    let mut w = World::new().await.expect("world");
    w.settings.metrics_ttl_ms = 100;
    let _colony = w.start(Role::All).await.expect("colony");
    w.wait_healthy().await.expect("healthy");
    let acme = client_with_key(&w.key("acme", Scope::Submit).await.expect("key"));
    let acme_read = client_with_key(&w.key("acme", Scope::Read).await.expect("key"));
    let globex = client_with_key(&w.key("globex", Scope::Admin).await.expect("key"));
    let url = w.url();

    // The dashboard's files: open, with a policy that loads nothing else.
    let page = reqwest::Client::new()
        .get(format!("{url}/"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.expect("html").contains("app.js"));
    for (path, want, kind) in [
        ("/ui/app.js", 200, "text/javascript"),
        ("/ui/app.css", 200, "text/css"),
        ("/ui/index.html", 404, "application/json"),
        ("/ui/secrets.txt", 404, "application/json"),
        ("/ui/..%2fCargo.toml", 404, "application/json"),
    ] {
        let r = reqwest::Client::new()
            .get(format!("{url}{path}"))
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status().as_u16(), want, "{path}");
        let got = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(got.starts_with(kind), "{path}: {got}");
    }

    // Who a key is.
    let me: WhoAmI = get(&acme_read, &format!("{url}/v1/whoami")).await;
    assert_eq!((me.tenant.as_str(), me.scope.as_str()), ("acme", "read"));

    // The tenant's feed, listening before anything runs; globex's too.
    let acme_feed = acme_read
        .get(format!("{url}/v1/feed"))
        .send()
        .await
        .expect("feed");
    assert_eq!(acme_feed.status(), 200);
    assert!(acme_feed.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let globex_feed = globex
        .get(format!("{url}/v1/feed"))
        .send()
        .await
        .expect("feed");
    assert_eq!(globex_feed.status(), 200);

    // One task of globex, and three of acme run to done; one has a marker
    // in its input.
    let r = globex
        .post(format!("{url}/v1/tasks"))
        .json(&json!({"role": "shell", "input": {"command": "echo globex"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status(), 202);
    let theirs: Value = r.json().await.expect("json");
    let theirs = theirs["id"].as_str().expect("id").to_string();
    let mut ids = Vec::new();
    for cmd in ["echo one", "echo two", "echo needle-50%_x"] {
        let r = acme
            .post(format!("{url}/v1/tasks"))
            .json(&json!({"role": "shell", "input": {"command": cmd}}))
            .send()
            .await
            .expect("submit");
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.expect("json");
        ids.push(v["id"].as_str().expect("id").parse::<Uuid>().expect("uuid"));
    }
    for id in &ids {
        assert_eq!(
            w.wait_final(*id, 60).await.expect("final").state,
            TaskState::Done
        );
    }
    let last = ids[2].to_string();
    let seen = frames(acme_feed, Duration::from_secs(30), |d| {
        d.contains(&last) && d.contains("\"done\"")
    })
    .await;
    let task_events = seen.iter().filter(|(e, _)| e == "task").count();
    assert!(
        seen.iter()
            .any(|(e, v)| e == "task" && v["task_id"] == last.as_str()),
        "acme's feed shows its task: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, v)| v["tenant"] == "acme"),
        "acme's feed shows another tenant's events: {seen:?}"
    );
    // globex's feed shows its own task (it works) and nothing of acme's.
    let globex_saw = frames(globex_feed, Duration::from_secs(30), |d| {
        d.contains(&theirs) && d.contains("\"done\"")
    })
    .await;
    assert!(
        globex_saw
            .iter()
            .any(|(_, v)| v["task_id"] == theirs.as_str()),
        "globex's feed shows its task: {globex_saw:?}"
    );
    assert!(
        globex_saw.iter().all(|(_, v)| v["tenant"] == "globex"),
        "globex's feed shows acme's events: {globex_saw:?}"
    );

    // The overview counts acme's, and globex's its own.
    let o: Overview = get(&acme_read, &format!("{url}/v1/overview")).await;
    assert_eq!(o.tasks["done"], 3, "{o:?}");
    assert_eq!(o.tasks.len(), TaskState::ALL.len());
    assert!((0..=3).contains(&o.done_last_minute), "{o:?}");
    assert_eq!(o.throughput.len(), 60);
    assert_eq!(o.throughput.iter().map(|m| m.done).sum::<i64>(), 3);
    let g: Overview = get(&globex, &format!("{url}/v1/overview")).await;
    assert_eq!(g.tasks.values().sum::<i64>(), 1, "{g:?}");

    // Task search: by state, by text (taken literally), by pages.
    let page: TaskPage = get(&acme_read, &format!("{url}/v1/tasks?state=done")).await;
    assert_eq!(page.tasks.len(), 3);
    assert!(page
        .tasks
        .windows(2)
        .all(|p| p[0].created_at >= p[1].created_at));
    let found: TaskPage = get(&acme_read, &format!("{url}/v1/tasks?q=NEEDLE-50%25_")).await;
    assert_eq!(
        found.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    let none: TaskPage = get(&acme_read, &format!("{url}/v1/tasks?q=needle-5_%25")).await;
    assert!(none.tasks.is_empty(), "a % in q is literal");
    let by_id: TaskPage = get(&acme_read, &format!("{url}/v1/tasks?q={}", ids[0])).await;
    assert_eq!(by_id.tasks[0].id, ids[0]);
    let first: TaskPage = get(&acme_read, &format!("{url}/v1/tasks?limit=2")).await;
    assert_eq!(first.tasks.len(), 2);
    let next = first.next.clone().expect("a next page");
    let second: TaskPage = get(&acme_read, &format!("{url}/v1/tasks?limit=2&before={next}")).await;
    assert_eq!(second.tasks.len(), 1);
    let mut all: Vec<Uuid> = first
        .tasks
        .iter()
        .chain(&second.tasks)
        .map(|t| t.id)
        .collect();
    all.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(all, want, "the pages cover every task once");
    let listed: TaskPage = get(&globex, &format!("{url}/v1/tasks")).await;
    assert_eq!(
        listed
            .tasks
            .iter()
            .map(|t| t.id.to_string())
            .collect::<Vec<_>>(),
        vec![theirs.clone()],
        "globex's search shows its one task"
    );
    for (q, says) in [
        ("state=sleeping", "is not one of"),
        ("limit=0", "from 1 to 200"),
        ("limit=201", "from 1 to 200"),
        ("before=yesterday", "the query takes"),
        ("goal_id=nope", "the query takes"),
        ("colour=red", "the query takes"),
        ("q=a%00b", "control characters"),
        ("role=%00", "control characters"),
    ] {
        let (status, error) = refused(&acme_read, &format!("{url}/v1/tasks?{q}")).await;
        assert_eq!(status, 400, "{q}: {error}");
        assert!(error.contains(says), "{q}: {error}");
    }

    // Streams and consumers: operator keys only.
    let (status, _) = refused(&globex, &format!("{url}/v1/streams")).await;
    assert_eq!(status, 403);
    let s: Streams = get(&w.http(), &format!("{url}/v1/streams")).await;
    let work = s.streams.iter().find(|s| s.name == "WORK").expect("WORK");
    let shell = work
        .consumers
        .iter()
        .find(|c| c.pool == "shell")
        .expect("the shell pool's consumer");
    assert_eq!(shell.lag, shell.pending + shell.ack_pending);
    assert!(s.pools.iter().any(|p| p.pool == "shell"));
    assert_eq!(s.dlq.len(), 3, "every source, 0 when empty: {:?}", s.dlq);
    println!(
        "ops views: feed showed {task_events} task events of acme and none to globex; {} streams, {} consumers",
        s.streams.len(),
        s.streams.iter().map(|s| s.consumers.len()).sum::<usize>()
    );
}

/// `tests/browser/`, where the browser test and its `node_modules` live.
fn browser_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The dashboard in headless Chromium (`tests/browser/dashboard.mjs`,
/// driven by playwright-core): a read-only key sees no buttons; the
/// overview's numbers move as tasks run; a goal's graph opens and its plan
/// is approved from the page; the feed shows events; a dead letter is
/// replayed from the page and its task seen done. Screenshots are saved
/// under `target/dashboard-screenshots/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let mut w = World::new().await.expect("world");
    crate::goals::use_roles(&mut w, 3, false, json!({"scripts": {}}));
    let admin = w.key("default", Scope::Admin).await.expect("key");
    let read = w.key("default", Scope::Read).await.expect("key");

    // A dead letter whose cause is then fixed: a submission over NATS
    // larger than a first ingress allows.
    let mut small = w.settings.clone();
    small.max_body_bytes = 300;
    let first = w.start_with(Role::Ingress, small).await.expect("ingress");
    let nats = w.nats_as("tenant-default").await.expect("tenant client");
    let command = format!("echo replayed {}", "x".repeat(400));
    nats.publish(
        subjects::subject::intake("default"),
        serde_json::to_vec(&json!({"role": "shell", "input": {"command": command}}))
            .expect("json")
            .into(),
    )
    .await
    .expect("publish");
    nats.flush().await.expect("flush");
    let admin_http = client_with_key(&admin);
    let mut dlq_id = None;
    for _ in 0..100 {
        let v: Value = get(&admin_http, &format!("{}/v1/dlq", w.url())).await;
        if let Some(id) = v["entries"][0]["id"].as_u64() {
            dlq_id = Some(id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dlq_id = dlq_id.expect("a dead letter");
    first.stop().await.expect("stop");

    let _colony = w.start(Role::All).await.expect("colony");
    w.wait_healthy().await.expect("healthy");
    let goal = w
        .submit_goal(json!({
            "title": "Landing page for the bakery",
            "description": "A one-page site.",
            "acceptance": "page.md holds every section with its text",
            "require_plan_approval": true
        }))
        .await
        .expect("goal");
    let g = w
        .wait_goal(goal, 90, |g| g.plan.is_some() || g.state.is_final())
        .await
        .expect("planned");
    assert_eq!(g.plan.as_ref().map(|p| p.subtasks.len()), Some(3), "{g:?}");

    let shots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: ops/test installs it (npm ci)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("dashboard.mjs")
        .current_dir(&dir)
        .env("COLONY_URL", w.url())
        .env("COLONY_ADMIN_KEY", &admin)
        .env("COLONY_READ_KEY", &read)
        .env("COLONY_OPERATOR_KEY", &w.operator_key)
        .env("COLONY_GOAL_ID", goal.to_string())
        .env("COLONY_DLQ_ID", dlq_id.to_string())
        .env("SCREENSHOT_DIR", &shots)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(400), cmd.output())
        .await
        .expect("the browser test ends within 400 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dashboard.mjs failed:\n{stdout}\n{stderr}"
    );
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON result line in:\n{stdout}"));
    println!("dashboard: {result}");

    // What the page did is in Postgres: the dead letter became a task that
    // ran to done.
    let v: Value = get(&admin_http, &format!("{}/v1/dlq", w.url())).await;
    let entry = v["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["id"] == dlq_id))
        .cloned()
        .expect("the entry");
    assert_eq!(entry["status"], "replayed", "{entry}");
    let task: Uuid = entry["task_id"]
        .as_str()
        .expect("task")
        .parse()
        .expect("uuid");
    assert_eq!(w.get_task(task).await.expect("task").state, TaskState::Done);
    // The plan was approved from the page.
    let g = w.get_goal(goal).await.expect("goal");
    assert_ne!(
        g.state,
        subjects::goals::GoalState::AwaitingApproval,
        "the page's Approve did not reach the goal"
    );
    assert_eq!(
        result["steps"]["pages"]["hostile_input_shown_as_text"], true,
        "{result}"
    );
    let shots_taken = std::fs::read_dir(&shots)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
                .count()
        })
        .unwrap_or(0);
    assert!(
        shots_taken >= 5,
        "{shots_taken} screenshots in {}",
        shots.display()
    );
}
