//! Things going wrong: a worker killed mid-run, a container dying, attempts
//! running out, a graceful shutdown with work in flight.

use colony::Role;
use colony_tests::World;
use subjects::{ShellOutput, TaskState};
use uuid::Uuid;

async fn runs(w: &World, id: Uuid) -> Vec<(i32, String, Option<String>)> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT attempt, state::text, error FROM runs WHERE task_id = $1 ORDER BY started_at",
        &[&id],
    )
    .await
    .expect("runs")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn done_transitions(w: &World, id: Uuid) -> i64 {
    let db = w.db().await.expect("db");
    db.query_one(
        "SELECT count(*) FROM events WHERE task_id = $1 AND to_state = 'done'",
        &[&id],
    )
    .await
    .expect("count")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_is_taken_over_and_the_task_completes_once() {
    let w = World::new().await.expect("world");
    // Ingress in this process; the first worker in its own process, to kill.
    let ingress = w.start(Role::Ingress).await.expect("ingress");
    let mut victim = w
        .spawn_process("worker", &format!("victim-{}", w.id))
        .expect("worker process");
    let id = w
        .submit_shell(
            "sleep 2; echo finished",
            serde_json::json!({"max_attempts": 3}),
        )
        .await
        .expect("submit");
    let running = w.wait_for(id, 60, |t| t.state == TaskState::Running).await;
    victim.kill().expect("kill -9");
    let _ = victim.wait();
    running.expect("the victim claimed the task");

    let mut second = w.settings.clone();
    second.worker_id = Some(format!("rescuer-{}", w.id));
    let rescuer = w
        .start_with(Role::Worker, second)
        .await
        .expect("second worker");
    let task = w.wait_final(id, 90).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let out: ShellOutput =
        serde_json::from_value(task.result.clone().expect("result")).expect("shell output");
    assert_eq!(out.stdout, "finished\n");
    assert_eq!(task.attempt, 2, "the lost attempt counts");
    assert_eq!(
        done_transitions(&w, id).await,
        1,
        "exactly one done transition"
    );
    let r = runs(&w, id).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!((r[0].0, r[0].1.as_str()), (1, "lost"));
    assert!(
        r[0].2
            .as_deref()
            .unwrap_or_default()
            .contains("stopped sending heartbeats"),
        "{r:?}"
    );
    assert_eq!((r[1].0, r[1].1.as_str()), (2, "succeeded"));
    rescuer.stop().await.expect("stop");
    ingress.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_dying_mid_run_fails_the_attempt_and_the_retry_succeeds() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    // The command's first output says it is running inside the container.
    let (_nats, mut output) = w.default_events().await.expect("events");
    let id = w
        .submit_shell(
            "echo started; sleep 5; echo survived",
            serde_json::json!({"max_attempts": 2}),
        )
        .await
        .expect("submit");
    colony_tests::first_output(&mut output, id).await;
    let containers = w.containers();
    assert!(!containers.is_empty(), "the worker started a container");
    for c in &containers {
        let _ = std::process::Command::new("docker")
            .args(["kill", c])
            .output();
    }
    let task = w.wait_final(id, 90).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    assert_eq!(task.attempt, 2);
    let r = runs(&w, id).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].1, "failed");
    assert!(
        r[0].2
            .as_deref()
            .unwrap_or_default()
            .contains("the container died mid-run"),
        "{r:?}"
    );
    assert_eq!(r[1].1, "succeeded");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_out_and_the_task_fails_with_the_reason() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit_shell(
            "sleep 10",
            serde_json::json!({"max_attempts": 2, "timeout_secs": 1}),
        )
        .await
        .expect("submit");
    let task = w.wait_final(id, 90).await.expect("final");
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.attempt, 2);
    let err = task.error.clone().expect("error");
    assert!(err.contains("1-second limit"), "{err}");
    assert!(err.contains("attempt 2 of 2; no attempts left"), "{err}");
    let r = runs(&w, id).await;
    assert_eq!(
        r.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["failed", "failed"]
    );
    // The published result says the same.
    assert_eq!(w.get_task(id).await.expect("get").error, Some(err));
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_work_back_and_the_next_start_finishes_it() {
    let w = World::new().await.expect("world");
    let mut s = w.settings.clone();
    s.drain_timeout_ms = 200;
    let colony = w.start_with(Role::All, s.clone()).await.expect("colony");
    let (_nats, mut events) = w.default_events().await.expect("events");
    let id = w
        .submit_shell(
            "echo first-life; sleep 3; echo second-life",
            serde_json::json!({}),
        )
        .await
        .expect("submit");
    colony_tests::first_output(&mut events, id).await;
    colony.stop().await.expect("graceful stop");
    let db = w.db().await.expect("db");
    let state: String = db
        .query_one("SELECT state::text FROM tasks WHERE id = $1", &[&id])
        .await
        .expect("task")
        .get(0);
    assert_eq!(state, "queued", "handed back, not lost and not failed");
    assert_eq!(runs(&w, id).await[0].1, "handed_back");
    // The container whose run was cut off is discarded, not left for the
    // next start to adopt: whatever the run left in it must not meet the
    // next task (idle containers are adopted; see pool.rs).
    assert!(w.containers().is_empty(), "{:?}", w.containers());

    let colony = w.start_with(Role::All, s).await.expect("restart");
    let task = w.wait_final(id, 90).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    assert_eq!(task.attempt, 1, "a hand-back does not use up an attempt");
    assert_eq!(done_transitions(&w, id).await, 1);
    colony.stop().await.expect("stop");
}
