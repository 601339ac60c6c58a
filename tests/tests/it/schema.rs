//! The database: migrations racing, and the state machine enforced by the store.

use colony_tests::World;
use store::tasks::{Finish, NewTask};
use subjects::TaskState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_migrating_at_once_apply_each_migration_once() {
    let w = World::unmigrated().await.expect("world");
    let a = w.store(2);
    let b = w.store(2);
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.expect("a migrates"), rb.expect("b migrates"));
    let mut applied: Vec<_> = ra.iter().chain(rb.iter()).cloned().collect();
    applied.sort();
    let before = applied.len();
    applied.dedup();
    assert_eq!(
        applied.len(),
        before,
        "no migration applied twice: {ra:?} {rb:?}"
    );
    let db = w.db().await.expect("db");
    let n: i64 = db
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        n as usize,
        applied.len(),
        "every applied migration recorded once"
    );
    assert!(n >= 2, "0001 and 0002 at least: {applied:?}");
    assert!(a.migrate().await.expect("again").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_refuses_illegal_transitions_and_stale_finishes() {
    let w = World::new().await.expect("world");
    let s = w.store(2);
    s.migrate().await.expect("migrate");
    let created = s
        .create_task(&NewTask {
            tenant: "t".into(),
            role: "shell".into(),
            goal_id: None,
            input: serde_json::json!({"command": "true"}),
            max_attempts: 2,
            timeout_secs: 5,
            idempotency_key: None,
            employee_id: None,
            parent: None,
        })
        .await
        .expect("create");
    assert_eq!(created.outbox.len(), 2, "work message and queued event");
    let id = created.task.id;
    let item: subjects::WorkItem =
        serde_json::from_slice(&created.outbox[0].payload).expect("work item");

    let store::tasks::Claim::Claimed { running, .. } = s
        .claim(&item, "w1", std::time::Duration::from_secs(10))
        .await
        .expect("claim")
    else {
        panic!("a queued task is claimed");
    };
    // A second delivery of the same message while w1's heartbeat is fresh.
    assert!(matches!(
        s.claim(&item, "w2", std::time::Duration::from_secs(10))
            .await
            .expect("claim again"),
        store::tasks::Claim::Busy { .. }
    ));
    let done = s
        .finish(
            &running,
            Finish::Done {
                result: serde_json::json!({"ok": true}),
            },
        )
        .await
        .expect("finish")
        .expect("the holder finishes");
    assert_eq!(done.task.state, TaskState::Done);
    // Finishing twice (a redelivered result) changes nothing.
    assert!(s
        .finish(
            &running,
            Finish::Fail {
                error: "late".into()
            }
        )
        .await
        .expect("finish")
        .is_none());
    // A stale message after the task is done is acknowledged and ignored.
    assert!(matches!(
        s.claim(&item, "w2", std::time::Duration::from_secs(10))
            .await
            .expect("claim"),
        store::tasks::Claim::Stale {
            state: TaskState::Done
        }
    ));
    // done → cancelled is illegal and says so.
    let err = s.cancel("t", id, "late cancel").await.expect_err("illegal");
    assert_eq!(err.to_string(), "a task cannot go from done to cancelled");
    let db = w.db().await.expect("db");
    let dones: i64 = db
        .query_one(
            "SELECT count(*) FROM events WHERE task_id = $1 AND to_state = 'done'",
            &[&id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(dones, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_unknown_states_and_the_store_refuses_zero_limits() {
    let w = World::new().await.expect("world");
    let s = w.store(2);
    s.migrate().await.expect("migrate");
    let new = |max_attempts, timeout_secs| NewTask {
        tenant: "t".into(),
        role: "shell".into(),
        goal_id: None,
        input: serde_json::json!({"command": "true"}),
        max_attempts,
        timeout_secs,
        idempotency_key: None,
        employee_id: None,
        parent: None,
    };
    let err = s.create_task(&new(0, 5)).await.expect_err("0 attempts");
    assert_eq!(
        err.to_string(),
        "max_attempts must be between 1 and 2147483647, not 0"
    );
    let err = s
        .create_task(&new(1, u32::MAX))
        .await
        .expect_err("timeout too large");
    assert!(
        err.to_string()
            .starts_with("timeout_secs must be between 1"),
        "{err}"
    );
    let created = s.create_task(&new(1, 5)).await.expect("create");
    let db = w.db().await.expect("db");
    let err = db
        .execute(
            "UPDATE tasks SET state = 'sleeping' WHERE id = $1",
            &[&created.task.id],
        )
        .await
        .expect_err("not a state");
    assert!(
        err.as_db_error().is_some_and(|e| e
            .message()
            .contains("invalid input value for enum task_state")),
        "{err:?}"
    );
    let n: i64 = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "nothing half-written by the refused creates");
}

/// The application role owns its database, is not a superuser, and gets in
/// only with its password (scram-sha-256 over TCP, as ops/lib.sh sets up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_role_is_not_a_superuser_and_needs_its_password() {
    let w = World::new().await.expect("world");
    let db = w.db().await.expect("db");
    let row = db
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, d.datdba = r.oid
             FROM pg_roles r, pg_database d
             WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .expect("role");
    let (superuser, createrole, owns): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    assert!(!superuser, "the application role is not a superuser");
    assert!(!createrole);
    assert!(owns, "it owns its database");
    assert!(
        w.settings.database_password_file.is_some(),
        "ops/test passes the password file (COLONY_DATABASE_PASSWORD_FILE)"
    );
    // Without the password: refused.
    let refused = tokio_postgres::connect(&w.settings.database_url, tokio_postgres::NoTls).await;
    let err = refused.err().expect("no password, no connection");
    let text = store::Error::from(err).to_string();
    assert!(text.contains("password"), "{text}");
    // With a wrong one: refused too.
    let mut cfg: tokio_postgres::Config = w.settings.database_url.parse().expect("url");
    cfg.password("not-the-password");
    assert!(cfg.connect(tokio_postgres::NoTls).await.is_err());
}
