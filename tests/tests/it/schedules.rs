//! Schedules on real NATS, Postgres and Docker: two schedulers firing one
//! schedule every second for a minute, one SIGKILLed half way (each fire
//! once, none missing), a
//! scheduler SIGKILLed across fire times (caught up or missed per the
//! policy, then backfilled), the four overlap policies against tasks that
//! outlast the interval, DST days in America/New_York, pause/resume,
//! trigger, end_at, the CLI, and bad input.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use colony::Role;
use colony_tests::World;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// One fire row: (fire_at, kind, outcome, task_id, reason, lateness_ms).
type Fire = (
    OffsetDateTime,
    String,
    String,
    Option<Uuid>,
    Option<String>,
    Option<f64>,
);

async fn create(w: &World, body: Value) -> Value {
    let resp = w
        .http()
        .post(format!("{}/v1/schedules", w.url()))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("json");
    assert_eq!(status, 201, "{v}");
    v
}

fn id(v: &Value) -> Uuid {
    Uuid::parse_str(v["id"].as_str().expect("an id")).expect("a uuid")
}

async fn post(w: &World, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = w.http().post(format!("{}{path}", w.url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(w: &World, path: &str) -> (u16, Value) {
    let resp = w
        .http()
        .get(format!("{}{path}", w.url()))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every fire row of `schedule`, oldest first.
async fn fires(w: &World, schedule: Uuid) -> Vec<Fire> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT fire_at, kind, outcome, task_id, reason, lateness_ms FROM schedule_fires
         WHERE schedule_id = $1 ORDER BY fire_at",
        &[&schedule],
    )
    .await
    .expect("fires")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

fn count(fires: &[Fire], outcome: &str) -> usize {
    fires.iter().filter(|f| f.2 == outcome).count()
}

/// Every second from the first fire to the last has exactly one row.
fn assert_every_second(fires: &[Fire]) {
    for pair in fires.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            time::Duration::SECOND,
            "a fire time is missing or extra between {} and {}",
            pair[0].0,
            pair[1].0
        );
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rfc(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format")
}

async fn pause(w: &World, schedule: Uuid) {
    let (s, v) = post(w, &format!("/v1/schedules/{schedule}/pause"), None).await;
    assert_eq!(s, 200, "{v}");
}

/// Tasks the schedule's template made, by their command.
async fn task_commands(w: &World) -> HashMap<Uuid, String> {
    let db = w.db().await.expect("db");
    db.query("SELECT id, input->>'command' FROM tasks", &[])
        .await
        .expect("tasks")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_fire_every_second_for_a_minute_each_fire_once() {
    let w = World::new().await.expect("world");
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let _relay = w.start(Role::Relay).await.expect("relay");
    let mut a = w
        .spawn_process("scheduler", "sched-a")
        .expect("scheduler a");
    let mut b = w
        .spawn_process("scheduler", "sched-b")
        .expect("scheduler b");
    let s = create(
        &w,
        json!({"name": "every second", "cron": "* * * * * *", "overlap": "allow",
               "task": {"role": "shell", "input": {"command": "echo {{fire_at}}"}}}),
    )
    .await;
    let sid = id(&s);
    // Half way, one of them dies: the other goes on without a gap.
    tokio::time::sleep(Duration::from_secs(30)).await;
    a.kill().expect("SIGKILL");
    let _ = a.wait();
    tokio::time::sleep(Duration::from_secs(31)).await;
    pause(&w, sid).await;
    let _ = b.kill();
    let _ = b.wait();
    let all = fires(&w, sid).await;
    let fired: Vec<&Fire> = all.iter().filter(|f| f.2 == "fired").collect();
    assert!(fired.len() >= 55, "{} fires in a minute", fired.len());
    // Fired up to the pause, then skipped as paused: no gap, none twice.
    assert_every_second(&all);
    let first_skip = all.iter().position(|f| f.2 != "fired").unwrap_or(all.len());
    assert_eq!(
        first_skip,
        fired.len(),
        "every fire before the pause started its task"
    );
    assert!(all[first_skip..]
        .iter()
        .all(|f| f.2 == "skipped" && f.4.as_deref() == Some("the schedule is paused")));
    // One task per fire, and it is the one for that fire time.
    let tasks = task_commands(&w).await;
    assert_eq!(tasks.len(), fired.len(), "tasks made: one per fire");
    for f in &fired {
        let task = f.3.expect("a fired row names its task");
        assert_eq!(tasks.get(&task), Some(&format!("echo {}", rfc(f.0))));
    }
    let mut late: Vec<f64> = fired.iter().filter_map(|f| f.5).collect();
    late.sort_by(f64::total_cmp);
    println!(
        "two schedulers (one SIGKILLed at 30 s), 1 schedule every second: {} fires in a row, each once; lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        fired.len(),
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late.last().copied().unwrap_or(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scheduler_catches_up_inside_the_window_records_misses_and_backfills() {
    let w = World::new().await.expect("world");
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let _relay = w.start(Role::Relay).await.expect("relay");
    let task = json!({"role": "shell", "input": {"command": "echo {{fire_at}}"}});
    let mut sched = w.spawn_process("scheduler", "sched-1").expect("scheduler");
    let all_sched = id(&create(
        &w,
        json!({"name": "catch up all", "cron": "* * * * * *", "overlap": "allow",
               "catchup_window": "3s", "catchup": "all", "task": task}),
    )
    .await);
    let latest_sched = id(&create(
        &w,
        json!({"name": "catch up latest", "cron": "* * * * * *", "overlap": "allow",
               "catchup_window": 3, "catchup": "latest", "task": task}),
    )
    .await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sched.kill().expect("SIGKILL");
    let _ = sched.wait();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut sched = w.spawn_process("scheduler", "sched-2").expect("scheduler");
    tokio::time::sleep(Duration::from_secs(4)).await;
    pause(&w, all_sched).await;
    pause(&w, latest_sched).await;
    let _ = sched.kill();
    let _ = sched.wait();

    for (schedule, policy) in [(all_sched, "all"), (latest_sched, "latest")] {
        let f = fires(&w, schedule).await;
        assert_every_second(&f);
        let outcomes: Vec<&str> = f.iter().map(|x| x.2.as_str()).collect();
        // fired… (before the kill), missed… (older than 3 s at the
        // restart), then the window's fires, then fired… again.
        let first_miss = outcomes
            .iter()
            .position(|o| *o == "missed")
            .expect("missed fires");
        let after_miss = first_miss
            + outcomes[first_miss..]
                .iter()
                .take_while(|o| **o == "missed")
                .count();
        let missed = after_miss - first_miss;
        assert!(missed >= 4, "{policy}: {missed} missed of {outcomes:?}");
        assert!(
            outcomes[..first_miss].iter().all(|o| *o == "fired"),
            "{outcomes:?}"
        );
        for m in &f[first_miss..after_miss] {
            assert!(m.5.expect("lateness") > 3000.0, "{m:?}");
            assert!(
                m.4.as_deref()
                    .unwrap_or("")
                    .contains("outside the catch-up window of 3 s"),
                "{m:?}"
            );
        }
        // The fires inside the window when the scheduler came back, then
        // the ones on time.
        let after = &f[after_miss..];
        let paused =
            |x: &Fire| x.2 == "skipped" && x.4.as_deref() == Some("the schedule is paused");
        let window = match policy {
            "all" => {
                // Each ran, the oldest of them seconds late.
                assert!(
                    after.iter().all(|x| x.2 == "fired" || paused(x)),
                    "{outcomes:?}"
                );
                after
                    .iter()
                    .filter(|x| x.5.is_some_and(|l| l > 500.0))
                    .count()
            }
            _ => {
                // The earlier ones coalesced into the latest.
                let coalesced = after
                    .iter()
                    .take_while(|x| {
                        x.2 == "skipped" && x.4.as_deref().unwrap_or("").starts_with("coalesced")
                    })
                    .count();
                assert_eq!(after[coalesced].2, "fired", "{outcomes:?}");
                assert!(
                    after[coalesced + 1..]
                        .iter()
                        .all(|x| x.2 == "fired" || paused(x)),
                    "{outcomes:?}"
                );
                coalesced + 1
            }
        };
        assert!(window >= 2, "{policy}: nothing caught up: {outcomes:?}");
        println!(
            "catch-up {policy}: {} fired before the kill, {missed} missed, {window} inside the window, then {} on time",
            first_miss,
            count(after, "fired") - if policy == "all" { window } else { 1 }
        );
        // Nothing doubled: one task per fired row.
        let fired_tasks: BTreeSet<Uuid> = f.iter().filter_map(|x| x.3).collect();
        assert_eq!(fired_tasks.len(), count(&f, "fired"));
    }

    // A backfill over the missed span starts each missed fire once; a
    // second backfill of the same span starts nothing.
    let f = fires(&w, all_sched).await;
    let missed: Vec<OffsetDateTime> = f.iter().filter(|x| x.2 == "missed").map(|x| x.0).collect();
    let (from, to) = (
        missed[0],
        *missed.last().expect("one") + time::Duration::SECOND,
    );
    let body = json!({"from": rfc(from), "to": rfc(to)});
    let (s, v) = post(
        &w,
        &format!("/v1/schedules/{all_sched}/backfill"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let started = v["fires"].as_array().expect("fires");
    assert_eq!(started.len(), missed.len(), "{v}");
    assert!(started
        .iter()
        .all(|x| x["kind"] == "backfill" && x["outcome"] == "fired" && x["task_id"].is_string()));
    let (s, v) = post(
        &w,
        &format!("/v1/schedules/{all_sched}/backfill"),
        Some(body),
    )
    .await;
    assert_eq!(
        (s, v["fires"].as_array().map(Vec::len)),
        (202, Some(0)),
        "{v}"
    );
    let after = fires(&w, all_sched).await;
    assert_eq!(count(&after, "missed"), 0);
    assert_eq!(
        after.len(),
        f.len(),
        "a backfill adds no fire time, it starts the missed ones"
    );
    let tasks = task_commands(&w).await;
    for x in after.iter().filter(|x| x.2 == "fired") {
        assert_eq!(
            tasks.get(&x.3.expect("task")),
            Some(&format!("echo {}", rfc(x.0)))
        );
    }
}

/// (created, final state, final at) of a task.
async fn task_span(w: &World, task: Uuid) -> (OffsetDateTime, String, Option<OffsetDateTime>) {
    let db = w.db().await.expect("db");
    let r = db
        .query_one(
            "SELECT t.created_at, t.state::text,
                    (SELECT max(at) FROM events e WHERE e.task_id = t.id AND e.to_state IN ('done', 'failed', 'cancelled'))
             FROM tasks t WHERE t.id = $1",
            &[&task],
        )
        .await
        .expect("task");
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_overlap_policy_against_tasks_that_outlast_the_interval() {
    let mut w = World::new().await.expect("world");
    w.settings.worker_slots = 8;
    let colony = w.start(Role::All).await.expect("colony");
    let mut ids = Vec::new();
    for policy in ["allow", "skip", "buffer_one", "cancel_previous"] {
        let s = create(
            &w,
            json!({"name": policy, "cron": "*/2 * * * * *", "overlap": policy,
                   "task": {"role": "shell", "input": {"command": "sleep 3.5; echo {{fire_at}}"}}}),
        )
        .await;
        ids.push((policy, id(&s)));
    }
    tokio::time::sleep(Duration::from_secs(13)).await;
    for (_, s) in &ids {
        pause(&w, *s).await;
    }
    // Let what runs finish (a buffered fire may still start).
    tokio::time::sleep(Duration::from_secs(9)).await;
    for (policy, s) in &ids {
        let f = fires(&w, *s).await;
        let fired: Vec<&Fire> = f.iter().filter(|x| x.2 == "fired").collect();
        let mut spans = Vec::new();
        for x in &fired {
            spans.push(task_span(&w, x.3.expect("task")).await);
        }
        let summary: Vec<String> = f.iter().map(|x| x.2.clone()).collect();
        println!("overlap {policy}: {}", summary.join(" "));
        for x in f.iter().filter(|x| x.2 != "fired") {
            println!("  {} {}: {}", x.0, x.2, x.4.as_deref().unwrap_or(""));
        }
        let overlapping = spans
            .windows(2)
            .filter(|p| p[0].2.is_none_or(|end| end > p[1].0))
            .count();
        match *policy {
            "allow" => {
                assert!(fired.len() >= 5, "{summary:?}");
                assert!(
                    f.iter().all(|x| x.2 == "fired" || x.4.as_deref() == Some("the schedule is paused")),
                    "{summary:?}"
                );
                assert!(overlapping >= 3, "allow runs overlap: {overlapping}");
                assert!(spans.iter().all(|s| s.1 == "done"), "{spans:?}");
            }
            "skip" => {
                assert!(fired.len() >= 2, "{summary:?}");
                assert_eq!(overlapping, 0, "skip never overlaps");
                let skipped: Vec<&Fire> = f
                    .iter()
                    .filter(|x| {
                        x.2 == "skipped" && x.4.as_deref() != Some("the schedule is paused")
                    })
                    .collect();
                assert!(skipped.len() >= 2, "{summary:?}");
                assert!(skipped.iter().all(|x| x
                    .4
                    .as_deref()
                    .unwrap_or("")
                    .ends_with("was still running (overlap: skip)")));
                assert!(spans.iter().all(|s| s.1 == "done"), "{spans:?}");
            }
            "buffer_one" => {
                assert_eq!(overlapping, 0, "buffer_one never overlaps");
                let waited: Vec<&&Fire> = fired
                    .iter()
                    .filter(|x| x.4.as_deref().unwrap_or("").contains("overlap: buffer_one"))
                    .collect();
                assert!(!waited.is_empty(), "{summary:?}");
                // A buffered fire starts once the one before has ended.
                for (i, x) in fired.iter().enumerate().skip(1) {
                    if x.4.as_deref().unwrap_or("").contains("overlap: buffer_one") {
                        let prev_end = spans[i - 1].2.expect("the previous one ended");
                        assert!(
                            spans[i].0 >= prev_end,
                            "{x:?} started before its predecessor ended"
                        );
                    }
                }
                assert!(
                    f.iter().any(|x| x.2 == "skipped"
                        && x.4.as_deref().unwrap_or("").contains("already waits")),
                    "{summary:?}"
                );
                // A buffered fire of a paused schedule waits for the resume.
                assert!(count(&f, "buffered") <= 1, "{summary:?}");
            }
            _ => {
                assert!(fired.len() >= 5, "{summary:?}");
                // Each fire ended the one before: all but the last cancelled.
                let (last, earlier) = spans.split_last().expect("one");
                assert!(earlier.iter().all(|s| s.1 == "cancelled"), "{spans:?}");
                assert_ne!(last.1, "cancelled");
                assert_eq!(
                    overlapping, 0,
                    "the previous one ended before the next started"
                );
                let db = w.db().await.expect("db");
                let cancelled_by: i64 = db
                    .query_one(
                        "SELECT count(*) FROM tasks WHERE state = 'cancelled' AND error LIKE '%cancel_previous%'",
                        &[],
                    )
                    .await
                    .expect("count")
                    .get(0);
                assert_eq!(cancelled_by as usize, earlier.len());
            }
        }
    }
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dst_days_in_new_york_fire_once_by_the_policy() {
    let w = World::new().await.expect("world");
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let _relay = w.start(Role::Relay).await.expect("relay");
    let task = json!({"role": "shell", "input": {"command": "echo {{fire_at_local}}"}});
    // Paused, so only the backfills below start anything.
    let daily = id(&create(
        &w,
        json!({"name": "02:30 daily", "cron": "30 2 * * *", "timezone": "America/New_York", "paused": true, "task": task}),
    )
    .await);
    let one_thirty = id(&create(
        &w,
        json!({"name": "01:30 daily", "cron": "30 1 * * *", "timezone": "America/New_York", "paused": true, "task": task}),
    )
    .await);
    let half_hourly = id(&create(
        &w,
        json!({"name": "half-hourly", "cron": "*/30 * * * *", "timezone": "America/New_York", "paused": true, "task": task}),
    )
    .await);
    let backfill = |s: Uuid, from: &str, to: &str| {
        let w = &w;
        let body = json!({"from": from, "to": to});
        async move {
            let (st, v) = post(w, &format!("/v1/schedules/{s}/backfill"), Some(body)).await;
            assert_eq!(st, 202, "{v}");
            let tasks = task_commands(w).await;
            v["fires"]
                .as_array()
                .expect("fires")
                .iter()
                .map(|f| {
                    let task = Uuid::parse_str(f["task_id"].as_str().expect("task")).expect("uuid");
                    (
                        f["fire_at"].as_str().expect("time").to_string(),
                        tasks[&task].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    // Spring forward (2026-03-08, 02:00 EST → 03:00 EDT): 02:30 does not
    // exist and fires once, at 03:00 EDT.
    let spring = backfill(daily, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z").await;
    assert_eq!(
        spring,
        [
            (
                "2026-03-07T07:30:00Z".to_string(),
                "echo 2026-03-07T02:30:00-05:00".to_string()
            ),
            (
                "2026-03-08T07:00:00Z".to_string(),
                "echo 2026-03-08T03:00:00-04:00".to_string()
            ),
            (
                "2026-03-09T06:30:00Z".to_string(),
                "echo 2026-03-09T02:30:00-04:00".to_string()
            ),
        ]
    );
    // Fall back (2026-11-01, 02:00 EDT → 01:00 EST): 01:30 happens twice
    // and fires once, at the first.
    let fall = backfill(one_thirty, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z").await;
    assert_eq!(
        fall,
        [
            (
                "2026-10-31T05:30:00Z".to_string(),
                "echo 2026-10-31T01:30:00-04:00".to_string()
            ),
            (
                "2026-11-01T05:30:00Z".to_string(),
                "echo 2026-11-01T01:30:00-04:00".to_string()
            ),
            (
                "2026-11-02T06:30:00Z".to_string(),
                "echo 2026-11-02T01:30:00-05:00".to_string()
            ),
        ]
    );
    // A half-hourly schedule keeps real time: both passes of the
    // repeated hour fire.
    let both = backfill(half_hourly, "2026-11-01T04:45:00Z", "2026-11-01T07:00:00Z").await;
    let locals: Vec<&str> = both
        .iter()
        .map(|(_, c)| c.trim_start_matches("echo "))
        .collect();
    assert_eq!(
        locals,
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T01:30:00-05:00",
        ]
    );
    // The next fires around next spring's change, in the zone and in UTC.
    let (s, v) = post(
        &w,
        "/v1/schedules",
        Some(json!({
        "name": "spring 2027", "cron": "30 2 * * *", "timezone": "America/New_York",
        "start_at": "2027-03-13T00:00:00Z", "task": task})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let next: Vec<(&str, &str)> = v["next_fires"]
        .as_array()
        .expect("next fires")
        .iter()
        .take(3)
        .map(|n| {
            (
                n["local"].as_str().expect("local"),
                n["utc"].as_str().expect("utc"),
            )
        })
        .collect();
    assert_eq!(
        next,
        [
            ("2027-03-13T02:30:00-05:00", "2027-03-13T07:30:00Z"),
            ("2027-03-14T03:00:00-04:00", "2027-03-14T07:00:00Z"),
            ("2027-03-15T02:30:00-04:00", "2027-03-15T06:30:00Z"),
        ]
    );
    assert_eq!(v["next_fires"].as_array().map(Vec::len), Some(10));
}

async fn colony_cli(w: &World, args: &[&str]) -> (bool, String, String) {
    w.cli("schedule", args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_trigger_end_at_and_the_cli() {
    let w = World::new().await.expect("world");
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let _relay = w.start(Role::Relay).await.expect("relay");
    let _sched = w.start(Role::Scheduler).await.expect("scheduler");
    // Made with the CLI.
    let (ok, out, err) = colony_cli(
        &w,
        &[
            "create",
            "--name",
            "ticker",
            "--cron",
            "* * * * * *",
            "--overlap",
            "allow",
            "--task",
            r#"{"role": "shell", "input": {"command": "echo tick"}}"#,
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    let sid = id(&serde_json::from_str(&out).expect("the schedule as JSON"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ok, out, err) = colony_cli(&w, &["pause", &sid.to_string()]).await;
    assert!(ok && out.contains("\"paused\": true"), "{out}{err}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, v) = post(&w, &format!("/v1/schedules/{sid}/resume"), None).await;
    assert_eq!((s, v["paused"].as_bool()), (200, Some(false)), "{v}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    pause(&w, sid).await;
    let f = fires(&w, sid).await;
    assert_every_second(&f);
    let outcomes: Vec<&str> = f.iter().map(|x| x.2.as_str()).collect();
    // fired…, skipped (paused)…, fired…, skipped (paused)…
    let runs: Vec<(&str, usize)> = outcomes.iter().fold(Vec::new(), |mut acc, o| {
        match acc.last_mut() {
            Some((last, n)) if last == o => *n += 1,
            _ => acc.push((o, 1)),
        }
        acc
    });
    assert!(runs.len() >= 3, "{outcomes:?}");
    assert_eq!(runs[0].0, "fired");
    assert_eq!(runs[1].0, "skipped");
    assert!(runs[1].1 >= 2, "{outcomes:?}");
    assert_eq!(runs[2].0, "fired");
    assert!(f
        .iter()
        .filter(|x| x.2 == "skipped")
        .all(|x| x.4.as_deref() == Some("the schedule is paused")));
    // The same decisions in the process's metrics.
    let text = w.metrics_text().await.expect("scrape");
    let counter = |outcome: &str| -> u64 {
        let prefix = format!("colony_schedule_fires_total{{outcome=\"{outcome}\",kind=\"cron\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(counter("fired") >= count(&f, "fired") as u64, "{text}");
    assert!(counter("skipped") >= count(&f, "skipped") as u64, "{text}");
    assert!(
        text.contains("colony_schedule_fire_lateness_seconds_count"),
        "{text}"
    );
    let (ok, out, err) = colony_cli(&w, &["fires", &sid.to_string(), "--outcome", "skipped"]).await;
    assert!(ok && out.contains("the schedule is paused"), "{out}{err}");

    // Trigger now: its own fire, even while paused.
    let (s, v) = post(&w, &format!("/v1/schedules/{sid}/trigger"), None).await;
    assert_eq!(s, 202, "{v}");
    let fire = &v["fires"][0];
    assert_eq!(
        (fire["kind"].as_str(), fire["outcome"].as_str()),
        (Some("trigger"), Some("fired")),
        "{v}"
    );
    let task = Uuid::parse_str(fire["task_id"].as_str().expect("task")).expect("uuid");
    assert_eq!(
        w.get_task(task).await.expect("task").input["command"],
        "echo tick"
    );
    let (s, v) = get(
        &w,
        &format!("/v1/schedules/{sid}/fires?outcome=fired&limit=1"),
    )
    .await;
    assert_eq!(
        (s, v["fires"][0]["kind"].as_str()),
        (200, Some("trigger")),
        "{v}"
    );

    // end_at: no fire after it, and nothing left to show.
    let end = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let end = end.replace_nanosecond(0).expect("whole second");
    let ending = id(&create(
        &w,
        json!({"name": "ends soon", "cron": "* * * * * *", "overlap": "allow", "end_at": rfc(end),
               "task": {"role": "shell", "input": {"command": "echo last"}}}),
    )
    .await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let f = fires(&w, ending).await;
    assert!((2..=4).contains(&f.len()), "{f:?}");
    assert!(f.iter().all(|x| x.0 <= end && x.2 == "fired"), "{f:?}");
    let (s, v) = get(&w, &format!("/v1/schedules/{ending}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["next_fires"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["stats"]["fired"].as_u64(), Some(f.len() as u64), "{v}");

    // A PATCH keeps the schedule's pace; a DELETE ends it.
    let (ok, out, err) = colony_cli(
        &w,
        &[
            "update",
            &sid.to_string(),
            "--set",
            r#"{"cron": "0 7 * * *", "timezone": "Europe/Berlin"}"#,
        ],
    )
    .await;
    assert!(ok && out.contains("Europe/Berlin"), "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["next_fires"][0]["local"]
            .as_str()
            .expect("next")
            .ends_with("T07:00:00+01:00"),
        "{v}"
    );
    let (ok, out, err) = colony_cli(&w, &["delete", &sid.to_string()]).await;
    assert!(ok, "{out}{err}");
    let (s, _) = get(&w, &format!("/v1/schedules/{sid}")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_with_one_sentence_each() {
    let w = World::new().await.expect("world");
    let _api = w.start(Role::Ingress).await.expect("ingress");
    let task = json!({"role": "shell", "input": {"command": "true"}});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"name": "a", "cron": "61 * * * *", "task": task}),
            "is not valid",
        ),
        (
            json!({"name": "a", "cron": "* * *", "task": task}),
            "it has 3 fields",
        ),
        (
            json!({"name": "a", "cron": "@fortnightly", "task": task}),
            "use @yearly",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "timezone": "Mars/Olympus", "task": task}),
            "is not an IANA zone",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "catchup_window": "30d", "task": task}),
            "use 1 s to 7 days",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "catchup_window": "soon", "task": task}),
            "not a length of time",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "jitter": "2h", "task": task}),
            "jitter is 7200 s",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *"}),
            "exactly one of task",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "task": task, "goal": {"title": "t", "acceptance": "a"}}),
            "exactly one of task",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "task": {"role": "nobody", "input": {}}}),
            "template is not admissible: unknown role",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "goal": {"title": "t"}}),
            "template is not admissible",
        ),
        (
            json!({"name": "", "cron": "0 7 * * *", "task": task}),
            "name must be",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "overlap": "sometimes", "task": task}),
            "unknown variant",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "task": task, "start_at": "2027-01-02T00:00:00Z", "end_at": "2027-01-01T00:00:00Z"}),
            "end_at must be after start_at",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "task": task, "color": "blue"}),
            "unknown field",
        ),
        (
            json!({"name": "a", "cron": "0 0 30 2 *", "task": task}),
            "has no fire time left",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "end_at": "2026-01-01T00:00:00Z", "task": task}),
            "has no fire time left",
        ),
        (
            json!({"name": "a", "cron": "0 7 * * *", "catchup_window": "500ms", "task": task}),
            "catchup_window is 500 ms",
        ),
    ];
    for (body, says) in &cases {
        let (s, v) = post(&w, "/v1/schedules", Some(body.clone())).await;
        let e = v["error"].as_str().unwrap_or("");
        assert_eq!(s, 400, "{body} → {v}");
        assert!(e.contains(says), "{body} → {e:?} should say {says:?}");
        let sentences = e
            .split(". ")
            .skip(1)
            .filter(|rest| rest.starts_with(char::is_uppercase))
            .count();
        assert!(sentences == 0 && !e.contains('\n'), "one sentence: {e}");
    }
    // Nothing was half-made.
    let (s, v) = get(&w, "/v1/schedules").await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(0)), "{v}");
    // A name is unique per tenant; a backfill needs a past range of a
    // bounded size.
    let s1 = create(
        &w,
        json!({"name": "dup", "cron": "* * * * *", "task": task}),
    )
    .await;
    let (s, v) = post(
        &w,
        "/v1/schedules",
        Some(json!({"name": "dup", "cron": "* * * * *", "task": task})),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    let sid = id(&s1);
    for (body, says) in [
        (
            json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            "to must be after from",
        ),
        (
            json!({"from": "2026-01-01T00:00:00Z", "to": "2099-01-01T00:00:00Z"}),
            "covers the past",
        ),
        (
            json!({"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}),
            "more than 1000 fire times",
        ),
        (
            json!({"from": "2024-01-01T00:00:00Z", "to": "2024-01-02T00:00:00Z"}),
            "older than the 400 days",
        ),
        (
            json!({"from": "yesterday", "to": "2026-01-01T00:00:00Z"}),
            "not a valid",
        ),
    ] {
        let (s, v) = post(
            &w,
            &format!("/v1/schedules/{sid}/backfill"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 400, "{body} → {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(says),
            "{body} → {v}"
        );
    }
    let (s, v) = get(&w, &format!("/v1/schedules/{sid}/fires?outcome=late")).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = w
        .http()
        .patch(format!("{}/v1/schedules/{sid}", w.url()))
        .json(&json!({"timezone": "Nowhere/Land"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .expect("patch");
    let v: Value = v.json().await.expect("json");
    assert_eq!(s, 400, "{v}");
    // Unchanged by the refused PATCH.
    let (_, v) = get(&w, &format!("/v1/schedules/{sid}")).await;
    assert_eq!(v["timezone"], "UTC");
}
