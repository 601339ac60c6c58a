//! The patrol on real NATS, Postgres and Docker: a run lost with its worker
//! recovered and done once, a looping agent stopped with the evidence, an
//! unserved pool alerted, and of two patrols one acting at a time.

use std::time::Duration;

use colony::Role;
use colony_tests::World;
use futures_util::StreamExt;
use serde_json::json;
use subjects::goals::{Notification, NotifyKind};
use subjects::TaskState;
use uuid::Uuid;

/// (rule, action, holder, reason, evidence) of the patrol's steps about
/// `task`, oldest first.
async fn steps(w: &World, task: Uuid) -> Vec<(String, String, String, String, serde_json::Value)> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT rule, action, holder, reason, coalesce(evidence, 'null') FROM patrol_actions WHERE task_id = $1 ORDER BY id",
        &[&task],
    )
    .await
    .expect("patrol actions")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn quick_patrol(w: &mut World) {
    w.settings.patrol_interval_ms = 200;
    w.settings.patrol_stale_secs = 2;
    w.settings.patrol_loop_repeats = 4;
    w.settings.patrol_unclaimed_secs = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_lost_with_its_worker_is_requeued_by_the_patrol_and_done_once() {
    let mut w = World::new().await.expect("world");
    quick_patrol(&mut w);
    // JetStream would redeliver only after a minute: the patrol is what
    // recovers the run here.
    w.settings.ack_wait_ms = 60_000;
    let mut parts = Vec::new();
    for role in [Role::Ingress, Role::Relay, Role::Patrol] {
        parts.push(w.start(role).await.expect("start"));
    }
    let mut first = w
        .spawn_process("worker", &format!("lost-{}", w.id))
        .expect("worker");
    let id = w
        .submit_shell("sleep 2; echo recovered", json!({}))
        .await
        .expect("submit");
    w.wait_for(id, 60, |t| t.state == TaskState::Running)
        .await
        .expect("running");
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let mut second = w
        .spawn_process("worker", &format!("rescuer-{}", w.id))
        .expect("worker");
    let t = w.wait_final(id, 60).await;
    let _ = second.kill();
    let _ = second.wait();
    let t = t.expect("final");
    assert_eq!(t.state, TaskState::Done, "{:?}", t.error);
    assert!(t.result.as_ref().expect("result")["stdout"]
        .as_str()
        .unwrap_or("")
        .contains("recovered"));
    let db = w.db().await.expect("db");
    let runs: Vec<(String, String)> = db
        .query(
            "SELECT worker_id, state::text FROM runs WHERE task_id = $1 ORDER BY started_at",
            &[&id],
        )
        .await
        .expect("runs")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs[0].0.starts_with("lost-") && runs[0].1 == "failed",
        "{runs:?}"
    );
    assert!(
        runs[1].0.starts_with("rescuer-") && runs[1].1 == "succeeded",
        "{runs:?}"
    );
    let done: i64 = db
        .query_one(
            "SELECT count(*) FROM events WHERE task_id = $1 AND to_state = 'done'",
            &[&id],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(done, 1, "done once");
    let s = steps(&w, id).await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].0.as_str(), s[0].1.as_str()),
        ("stale_heartbeat", "requeue")
    );
    assert!(s[0].3.contains("stopped heartbeating"), "{}", s[0].3);
    println!(
        "patrol: lost run requeued ({}), done once by {}",
        s[0].3, runs[1].0
    );
    for p in parts {
        p.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_agent_is_stopped_as_stuck_with_the_evidence() {
    let mut w = World::new().await.expect("world");
    quick_patrol(&mut w);
    w.use_roles(
        &[(
            "looper",
            "name: looper
model: scripted
system_prompt: You think out loud.
tools: [shell]
allowed_actions: []
limits: { memory_mb: 256, cpus: 1.0, pids: 128, timeout_secs: 120 }
max_turns: 100
",
        )],
        r#"{"scripts": {}}"#,
    )
    .expect("roles");
    let colony = w.start(Role::All).await.expect("start");
    let id = w
        .submit(json!({"role": "looper", "input": {"prompt": "[script:looping.work] think"}, "max_attempts": 3}))
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    let error = t.error.clone().unwrap_or_default();
    assert!(
        error.contains("the same tool call returned the same result 4 times"),
        "{error}"
    );
    assert!(error.contains("echo still thinking"), "{error}");
    let s = steps(&w, id).await;
    let kinds: Vec<(&str, &str)> = s.iter().map(|x| (x.0.as_str(), x.1.as_str())).collect();
    assert_eq!(
        kinds,
        [("looping", "requeue"), ("looping", "escalate")],
        "{s:?}"
    );
    assert_eq!(s[0].4["repeats"], 4);
    assert!(s[0].4["call"]
        .as_str()
        .unwrap_or("")
        .contains("still thinking"));
    // Both attempts were stopped and ended; the second for good.
    let db = w.db().await.expect("db");
    let runs: i64 = db
        .query_one(
            "SELECT count(*) FROM runs WHERE task_id = $1 AND state <> 'running'",
            &[&id],
        )
        .await
        .expect("runs")
        .get(0);
    assert_eq!(runs, 2, "two attempts, both ended");
    println!("patrol: looping agent stopped twice, then failed: {error}");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_pool_is_alerted_once_and_of_two_patrols_one_acts() {
    let mut w = World::new().await.expect("world");
    quick_patrol(&mut w);
    w.use_roles(
        &[(
            "lonely",
            "name: lonely
model: scripted
system_prompt: Nobody serves me.
tools: [shell]
max_turns: 3
",
        )],
        r#"{"scripts": {}}"#,
    )
    .expect("roles");
    // The worker serves only shell; two patrols watch.
    let mut s = w.settings.clone();
    s.pools = vec!["shell".into()];
    let colony = w.start_with(Role::All, s).await.expect("start");
    let mut other = w.settings.clone();
    other.worker_id = Some(format!("second-{}", w.id));
    let second = w.start_with(Role::Patrol, other).await.expect("patrol");
    let tenant = w.nats_as("tenant-default").await.expect("tenant client");
    let mut alerts = tenant
        .subscribe(subjects::subject::notify(
            "default",
            NotifyKind::PatrolAlert,
        ))
        .await
        .expect("subscribe");
    tenant.flush().await.expect("flush");

    let first = w
        .submit(json!({"role": "lonely", "input": {"prompt": "anyone?"}}))
        .await
        .expect("submit");
    let n: Notification = tokio::time::timeout(Duration::from_secs(30), alerts.next())
        .await
        .expect("an alert in time")
        .map(|m| serde_json::from_slice(&m.payload).expect("a notification"))
        .expect("a message");
    assert_eq!(n.task_id, Some(first));
    assert!(n.summary.contains("no worker claimed it"), "{}", n.summary);
    assert!(n.summary.contains("lonely"), "{}", n.summary);
    // Sweeps go on; the alert is not raised again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s1 = steps(&w, first).await;
    assert_eq!(s1.len(), 1, "once: {s1:?}");
    let acting = s1[0].2.clone();

    // The acting patrol stops: the other takes the lease over and acts.
    let (keep, stop) = if acting.starts_with("second-") {
        (colony, second)
    } else {
        (second, colony)
    };
    stop.stop().await.expect("stop");
    let later = w
        .submit(json!({"role": "lonely", "input": {"prompt": "still nobody?"}}))
        .await;
    // With `colony all` stopped, submit over the store instead of HTTP.
    let later = match later {
        Ok(id) => id,
        Err(_) => {
            let store = w.store(1);
            let rules = admission::Rules {
                roles: vec!["shell".into(), "lonely".into()],
                ..admission::Rules::default()
            };
            let new = rules
                .check(
                    json!({"role": "lonely", "input": {"prompt": "still nobody?"}})
                        .to_string()
                        .as_bytes(),
                    "default",
                    None,
                )
                .expect("valid");
            admission::admit(&store, &rules, new, None)
                .await
                .map_err(|_| ())
                .expect("admitted")
                .task
                .id
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let s2 = loop {
        let s2 = steps(&w, later).await;
        if !s2.is_empty() || std::time::Instant::now() > deadline {
            break s2;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s2.len(), 1, "{s2:?}");
    assert_ne!(
        s2[0].2, acting,
        "the other patrol acted once the first was gone"
    );
    let holders: i64 = w
        .db()
        .await
        .expect("db")
        .query_one("SELECT count(DISTINCT holder) FROM patrol_actions", &[])
        .await
        .expect("holders")
        .get(0);
    assert_eq!(holders, 2);
    println!(
        "patrol: unserved pool alerted once by {acting}; after it stopped, {} acted",
        s2[0].2
    );
    keep.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_storms_and_growing_dead_letters_are_alerted() {
    let mut w = World::new().await.expect("world");
    quick_patrol(&mut w);
    w.settings.patrol_storm_runs = 4;
    w.settings.patrol_dlq_growth = 3;
    let colony = w.start(Role::All).await.expect("start");
    // The patrol's first look at the dead letters is its baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let id = w
        .submit_shell("sleep 5", json!({"max_attempts": 5, "timeout_secs": 1}))
        .await
        .expect("submit");
    let t = w.wait_final(id, 60).await.expect("final");
    assert_eq!(t.state, TaskState::Failed);
    let tenant = w.nats_as("tenant-default").await.expect("tenant client");
    let js = async_nats::jetstream::new(tenant);
    for i in 0..3 {
        js.publish(
            subjects::subject::intake("default"),
            format!("not json {i}").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    let db = w.db().await.expect("db");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let rules: Vec<(String, String)> = db
            .query(
                "SELECT rule, reason FROM patrol_actions WHERE action = 'alert' ORDER BY id",
                &[],
            )
            .await
            .expect("alerts")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let has = |r: &str| rules.iter().any(|(x, _)| x == r);
        if (has("redelivery_storm") && has("dlq_growth")) || std::time::Instant::now() > deadline {
            break rules;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let storm: Vec<&String> = rules
        .iter()
        .filter(|(r, _)| r == "redelivery_storm")
        .map(|(_, why)| why)
        .collect();
    assert!(!storm.is_empty(), "{rules:?}");
    assert!(storm[0].contains(&id.to_string()), "{storm:?}");
    let dlq: Vec<&String> = rules
        .iter()
        .filter(|(r, _)| r == "dlq_growth")
        .map(|(_, why)| why)
        .collect();
    assert_eq!(dlq.len(), 1, "{rules:?}");
    assert!(dlq[0].contains("grew from 0 to 3"), "{dlq:?}");
    colony.stop().await.expect("stop");
}
