//! Bad input: a clear one-sentence refusal over HTTP, a DLQ entry with the
//! reason over NATS; nothing half-written, nothing lost, nothing crashed.

use std::time::Duration;

use async_nats::jetstream;
use colony::Role;
use colony_tests::World;
use futures_util::StreamExt;
use subjects::{header, stream, subject, TaskState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_bad_requests_in_one_sentence() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let big = format!(
        r#"{{"role":"shell","input":{{"command":"echo {}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "the submission is not valid JSON"),
        (
            r#"{"role":"wizard","input":{}}"#.into(),
            422,
            "unknown role \"wizard\"; known roles: shell",
        ),
        (
            r#"{"role":"shell","input":{"command":""}}"#.into(),
            400,
            "input.command is empty",
        ),
        (
            r#"{"role":"shell","input":{"command":"x"},"max_attempts":99}"#.into(),
            400,
            "max_attempts is 99",
        ),
        (big, 413, "over the 262144-byte limit"),
    ];
    for (body, status, needle) in &cases {
        let (got, v) = w.post_task(body, None).await.expect("post");
        let err = v["error"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "{needle}: {v}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        assert!(!err.contains('\n'));
    }
    let http = w.http();
    let r = http
        .get(format!("{}/v1/tasks/not-a-uuid", w.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{}/v1/tasks/{}", w.url(), uuid::Uuid::nil()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        v["error"],
        format!("task {} does not exist", uuid::Uuid::nil())
    );
    let r = http
        .get(format!(
            "{}/v1/tasks/{}?wait=abc",
            w.url(),
            uuid::Uuid::nil()
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);

    // Nothing was written, and Colony still works.
    let db = w.db().await.expect("db");
    let n: i64 = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    let id = w
        .submit_shell("echo still-fine", serde_json::json!({}))
        .await
        .expect("submit");
    assert_eq!(
        w.wait_final(id, 60).await.expect("final").state,
        TaskState::Done
    );
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_intake_dead_letters_bad_messages_with_the_reason() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let js = jetstream::new(w.nats_client().await.expect("nats"));
    let big = format!(
        r#"{{"role":"shell","input":{{"command":"echo {}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    let bad: Vec<(String, &str)> = vec![
        ("{not json".into(), "the submission is not valid JSON"),
        (
            r#"{"role":"wizard","input":{}}"#.into(),
            "unknown role \"wizard\"",
        ),
        (
            r#"{"role":"shell","input":{"cmd":"ls"}}"#.into(),
            "the input of role shell must be",
        ),
        (big, "over the 262144-byte limit"),
    ];
    for (body, _) in &bad {
        js.publish(subject::intake("acme"), body.clone().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let dlq = js.get_stream(stream::DLQ).await.expect("dlq stream");
    let consumer = dlq
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject::dlq(subject::DLQ_INTAKE),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = consumer.messages().await.expect("messages");
    let mut reasons = Vec::new();
    while reasons.len() < bad.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), msgs.next())
            .await
            .expect("a DLQ entry for every bad message")
            .expect("stream open")
            .expect("message");
        let h = m.headers.clone().expect("headers");
        assert_eq!(
            h.get(header::ORIGINAL_SUBJECT)
                .map(|v| v.as_str().to_string()),
            Some(subject::intake("acme"))
        );
        reasons.push(
            h.get(header::REASON)
                .expect("reason header")
                .as_str()
                .to_string(),
        );
    }
    for (_, needle) in &bad {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no DLQ reason contains {needle:?}: {reasons:?}"
        );
    }
    // The intake stream is empty: every message was acted on.
    let mut intake = js.get_stream(stream::INTAKE).await.expect("intake");
    let mut left = u64::MAX;
    for _ in 0..100 {
        left = intake.info().await.expect("info").state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0);
    let db = w.db().await.expect("db");
    let n: i64 = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "no task from a bad message");
    colony.stop().await.expect("clean stop");
}
