//! The happy paths: a task submitted over HTTP or NATS comes back from a real
//! container, once, with its history and its events.

use std::time::Duration;

use async_nats::jetstream;
use colony::Role;
use colony_tests::World;
use futures_util::StreamExt;
use subjects::{stream, subject, ShellOutput, TaskState, TaskSubmission, TaskView};
use uuid::Uuid;

fn shell_output(t: &TaskView) -> ShellOutput {
    serde_json::from_value(t.result.clone().expect("a result")).expect("a shell result")
}

async fn transitions(w: &World, id: Uuid) -> Vec<(Option<String>, String)> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT from_state, to_state FROM events WHERE task_id = $1 ORDER BY id",
        &[&id],
    )
    .await
    .expect("events")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_submission_runs_in_a_container_and_publishes_the_result() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit_shell("echo hi; uname -s; id -u", serde_json::json!({}))
        .await
        .expect("submit");

    // The waiting GET returns once the task is final.
    let resp = w
        .http()
        .get(format!("{}/v1/tasks/{id}?wait=60", w.url()))
        .send()
        .await
        .expect("get");
    let task: TaskView = resp.json().await.expect("task json");
    assert_eq!(task.state, TaskState::Done, "{task:?}");
    let out = shell_output(&task);
    assert_eq!(out.exit_code, 0);
    assert_eq!(
        out.stdout, "hi\nLinux\n65534\n",
        "ran as nobody inside Linux"
    );
    assert_eq!(task.attempt, 1);

    let steps = transitions(&w, id).await;
    let want: Vec<(Option<String>, String)> = vec![
        (None, "queued".into()),
        (Some("queued".into()), "running".into()),
        (Some("running".into()), "done".into()),
    ];
    assert_eq!(steps, want);

    // The result is on colony.results.<task>.
    let js = jetstream::new(w.nats_client().await.expect("nats"));
    let results = js.get_stream(stream::RESULTS).await.expect("stream");
    let msg = results
        .get_last_raw_message_by_subject(&subject::result("default", id))
        .await
        .expect("result message");
    let published: TaskView = serde_json::from_slice(&msg.payload).expect("TaskView");
    assert_eq!(published.state, TaskState::Done);
    assert_eq!(shell_output(&published).stdout, out.stdout);

    // Outbox drained (published rows are deleted in batches, a few ms later).
    let db = w.db().await.expect("db");
    let mut left = -1i64;
    for _ in 0..100 {
        left = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .expect("count")
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "every outbox row was published and deleted");
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_intake_submission_runs_and_a_repeated_msg_id_is_one_task() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let js = jetstream::new(w.nats_client().await.expect("nats"));
    let sub = TaskSubmission {
        v: 1,
        role: "shell".into(),
        input: serde_json::json!({"command": "echo from-nats"}),
        goal_id: None,
        max_attempts: None,
        timeout_secs: None,
        idempotency_key: None,
        employee_id: None,
    };
    let payload = serde_json::to_vec(&sub).expect("json");
    for _ in 0..2 {
        let mut h = async_nats::HeaderMap::new();
        h.insert(subjects::header::MSG_ID, "order-42");
        js.publish_with_headers(subject::intake("acme"), h, payload.clone().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let db = w.db().await.expect("db");
    let mut id = None;
    for _ in 0..200 {
        if let Some(row) = db
            .query_opt(
                "SELECT id FROM tasks WHERE tenant = 'acme' AND idempotency_key = 'order-42'",
                &[],
            )
            .await
            .expect("query")
        {
            id = Some(row.get::<_, Uuid>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = id.expect("the intake created a task");
    let task = w.wait_final(id, 60).await.expect("final");
    assert_eq!(task.state, TaskState::Done);
    assert_eq!(shell_output(&task).stdout, "from-nats\n");
    // A second publish with a new msg id but the same key in the body is
    // deduplicated by Postgres rather than by the server.
    let mut again = sub.clone();
    again.idempotency_key = Some("order-42".into());
    js.publish(
        subject::intake("acme"),
        serde_json::to_vec(&again).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    // The fact to wait on: the intake consumer has taken and acknowledged
    // every message (INTAKE is a work queue: nothing left in it).
    let intake = js.get_stream(stream::INTAKE).await.expect("intake stream");
    let mut drained = false;
    for _ in 0..200 {
        let info = intake.get_info().await.expect("stream info");
        if info.state.messages == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(drained, "the intake took the second message");
    let n: i64 = db
        .query_one("SELECT count(*) FROM tasks WHERE tenant = 'acme'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "one task for one idempotency key");
    let runs: i64 = db
        .query_one("SELECT count(*) FROM runs", &[])
        .await
        .expect("runs")
        .get(0);
    assert_eq!(runs, 1);
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twice_is_one_task_and_one_run() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let body = r#"{"role":"shell","input":{"command":"echo once"}}"#;
    let (s1, a) = w.post_task(body, Some("key-1")).await.expect("first");
    let (s2, b) = w.post_task(body, Some("key-1")).await.expect("second");
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(a["id"], b["id"]);
    assert_eq!(
        (a["created"].as_bool(), b["created"].as_bool()),
        (Some(true), Some(false))
    );
    let id = Uuid::parse_str(a["id"].as_str().expect("id")).expect("uuid");
    w.wait_final(id, 60).await.expect("final");
    // Retried after it finished: still the same task, no new run.
    let (s3, c) = w.post_task(body, Some("key-1")).await.expect("third");
    assert_eq!(
        (s3, &c["id"], &c["state"]),
        (200, &a["id"], &serde_json::json!("done"))
    );
    // The same key for a different task is a conflict, not a silent reuse.
    let (s4, d) = w
        .post_task(
            r#"{"role":"shell","input":{"command":"echo other"}}"#,
            Some("key-1"),
        )
        .await
        .expect("fourth");
    assert_eq!(s4, 409);
    assert!(d["error"]
        .as_str()
        .expect("error")
        .contains("already used for a different task"));
    let db = w.db().await.expect("db");
    let tasks: i64 = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .expect("q")
        .get(0);
    let runs: i64 = db
        .query_one("SELECT count(*) FROM runs", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!((tasks, runs), (1, 1));
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_as_sse_until_the_task_is_final() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit_shell("echo line-a; echo line-b >&2", serde_json::json!({}))
        .await
        .expect("submit");
    let resp = w
        .http()
        .get(format!("{}/v1/tasks/{id}/events", w.url()))
        .send()
        .await
        .expect("sse");
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    let mut stream = resp.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the feed ends by itself once the task is final: {body}"
    );
    assert!(body.contains("event: state"), "{body}");
    assert!(body.contains(r#""to":"queued""#), "{body}");
    assert!(body.contains(r#""to":"running""#), "{body}");
    assert!(body.contains(r#""to":"done""#), "{body}");
    assert!(body.contains("event: output"), "{body}");
    assert!(body.contains("line-a"), "{body}");
    assert!(body.contains("line-b"), "{body}");
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_stops_it_and_the_worker_goes_on() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit_shell("sleep 30; echo never", serde_json::json!({}))
        .await
        .expect("submit");
    w.wait_for(id, 60, |t| t.state == TaskState::Running)
        .await
        .expect("running");
    let resp = w
        .http()
        .post(format!("{}/v1/tasks/{id}/cancel", w.url()))
        .send()
        .await
        .expect("cancel");
    assert_eq!(resp.status(), 200);
    let task: TaskView = resp.json().await.expect("json");
    assert_eq!(task.state, TaskState::Cancelled);
    // Cancelling again is an illegal transition, told in one sentence.
    let again = w
        .http()
        .post(format!("{}/v1/tasks/{id}/cancel", w.url()))
        .send()
        .await
        .expect("cancel again");
    assert_eq!(again.status(), 409);
    let err: serde_json::Value = again.json().await.expect("json");
    assert_eq!(
        err["error"],
        "the task is cancelled; a task cannot go from cancelled to cancelled"
    );
    // The slot is free again well before the 30 s sleep would end.
    let next = w
        .submit_shell("echo next", serde_json::json!({}))
        .await
        .expect("submit");
    let t = w.wait_final(next, 20).await.expect("next final");
    assert_eq!(t.state, TaskState::Done);
    let db = w.db().await.expect("db");
    let run_state: String = db
        .query_one("SELECT state::text FROM runs WHERE task_id = $1", &[&id])
        .await
        .expect("run")
        .get(0);
    assert_eq!(run_state, "cancelled");
    assert_eq!(
        w.get_task(id).await.expect("get").state,
        TaskState::Cancelled
    );
    colony.stop().await.expect("clean stop");
}
