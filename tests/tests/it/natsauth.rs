//! NATS with users and permissions: every user is refused, by the server,
//! the subjects outside its permissions; no one connects without a
//! password; and what an outsider with a NATS connection could forge (a
//! result, a cancel, an offboard) changes nothing, because Colony answers
//! from Postgres and checks control commands against it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerError};
use colony::Role;
use colony_tests::World;
use futures_util::StreamExt;
use serde_json::json;
use subjects::auth::{tenant_user, Kind};
use subjects::{subject, TaskState};
use uuid::Uuid;

/// A client as `user` that records what the server refuses it.
async fn client(w: &World, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let refused = Arc::new(Mutex::new(Vec::new()));
    let seen = refused.clone();
    let password = colony::nats_auth::read_password(&w.nats.credentials, user).expect("password");
    let c = ConnectOptions::with_user_and_password(user.into(), password)
        .custom_inbox_prefix(subjects::auth::inbox_prefix(user))
        .event_callback(move |e| {
            let seen = seen.clone();
            async move {
                if let Event::ServerError(ServerError::Other(m)) = e {
                    seen.lock().expect("refused").push(m);
                }
            }
        })
        .connect(&w.nats.url)
        .await
        .expect("connect");
    (c, refused)
}

/// Waits (bounded) until the server has refused `n` things of `refused`.
async fn refusals(refused: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let got = refused.lock().expect("refused").clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    refused.lock().expect("refused").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_is_refused_what_is_not_its_own() {
    let w = World::new().await.expect("world");
    let id = Uuid::now_v7();
    // (user, subjects it may not publish to, subjects it may not subscribe to)
    let cases: Vec<(String, Vec<String>, Vec<String>)> = vec![
        (
            tenant_user("acme"),
            vec![
                subject::intake("globex"),
                subject::result("acme", id),
                subject::events("acme", None, id, "state"),
                subject::work("shell"),
                subject::ctl_broadcast(subject::CTL_OFFBOARD),
                "$KV.colony_leases.x".into(),
                "$JS.API.STREAM.INFO.WORK".into(),
            ],
            vec![
                subject::results_of_tenant("globex"),
                subject::events_of_tenant("globex"),
                subject::results_all(),
                subject::work_all(),
                subject::ctl_any(),
                "_INBOX_tenant-globex.>".into(),
                ">".into(),
            ],
        ),
        (
            Kind::Worker.user().into(),
            vec![
                subject::ctl_broadcast(subject::CTL_OFFBOARD),
                subject::result("acme", id),
                subject::intake("acme"),
                "$JS.API.STREAM.DELETE.WORK".into(),
            ],
            vec![subject::results_all(), subject::intake_all()],
        ),
        (
            Kind::Ingress.user().into(),
            vec![
                subject::result("acme", id),
                subject::work("shell"),
                "$KV.colony_leases.x".into(),
                "$JS.API.STREAM.PURGE.EVENTS".into(),
            ],
            vec![subject::ctl_any(), subject::work_all()],
        ),
        (
            Kind::Relay.user().into(),
            vec![
                subject::ctl_broadcast(subject::CTL_CANCEL),
                "$KV.colony_leases.x".into(),
            ],
            vec![subject::results_all(), subject::events_all()],
        ),
    ];
    let mut refused_total = 0;
    for (user, publishes, subscribes) in &cases {
        let (c, refused) = client(&w, user).await;
        for s in publishes {
            c.publish(s.clone(), "forged".into()).await.expect("send");
        }
        let mut subs = Vec::new();
        for s in subscribes {
            subs.push(c.subscribe(s.clone()).await.expect("send"));
        }
        c.flush().await.expect("flush");
        let want = publishes.len() + subscribes.len();
        let got = refusals(&refused, want).await;
        assert_eq!(got.len(), want, "{user}: {got:#?}");
        assert!(
            got.iter()
                .all(|m| m.to_lowercase().contains("permissions violation")),
            "{user}: {got:#?}"
        );
        refused_total += got.len();
    }
    // What each may do, it can: a tenant submits to its own intake.
    let admin = async_nats::jetstream::new(w.nats_client().await.expect("admin"));
    subjects::nats::ensure(&admin, &subjects::nats::StreamSettings::default())
        .await
        .expect("streams");
    let (acme, refused) = client(&w, &tenant_user("acme")).await;
    let js = async_nats::jetstream::new(acme);
    let ack = js
        .publish(
            subject::intake("acme"),
            r#"{"role":"shell","input":{"command":"true"}}"#.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("the stream acknowledges acme's own submission");
    assert_eq!(ack.stream, "INTAKE");
    assert!(refused.lock().expect("refused").is_empty());

    // Nobody without the password.
    let anonymous = ConnectOptions::new().connect(&w.nats.url).await;
    let wrong = ConnectOptions::with_user_and_password(Kind::Worker.user().into(), "guess".into())
        .connect(&w.nats.url)
        .await;
    assert!(
        anonymous.is_err() && wrong.is_err(),
        "no password, no connection"
    );
    println!("nats: {refused_total} refusals by the server across {} users; anonymous and wrong-password connections refused", cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_cancels_and_offboards_change_nothing() {
    let mut w = World::new().await.expect("world");
    w.use_roles(
        &[(
            "helper",
            "name: helper\nmodel: scripted\nsystem_prompt: help\ntools: [shell]\nmax_turns: 3\n",
        )],
        r#"{"scripts": {"hi": [{"text": "hi"}]}}"#,
    )
    .expect("roles");
    let colony = w.start(Role::All).await.expect("colony");
    // Whoever could publish anything (the operator's admin user here).
    let forger = w.nats_client().await.expect("nats");

    // A forged result for a running task: ?wait answers from Postgres.
    let id = w
        .submit_shell("sleep 3; echo real", json!({"max_attempts": 1}))
        .await
        .expect("submit");
    w.wait_for(id, 30, |t| t.state == TaskState::Running)
        .await
        .expect("running");
    let mut fake = w.get_task(id).await.expect("task");
    fake.state = TaskState::Done;
    fake.result = Some(json!({"exit_code": 0, "stdout": "forged\n", "stderr": ""}));
    forger
        .publish(
            subject::result("default", id),
            serde_json::to_vec(&fake).expect("json").into(),
        )
        .await
        .expect("publish");
    // And a forged cancel of it.
    forger
        .publish(
            subject::ctl_broadcast(subject::CTL_CANCEL),
            id.to_string().into(),
        )
        .await
        .expect("publish");
    forger.flush().await.expect("flush");
    let resp = w
        .http()
        .get(format!("{}/v1/tasks/{id}?wait=1", w.url()))
        .send()
        .await
        .expect("get");
    let seen: subjects::TaskView = resp.json().await.expect("task");
    assert_eq!(seen.state, TaskState::Running, "not the forged view");
    let done = w.wait_final(id, 60).await.expect("final");
    assert_eq!(
        done.state,
        TaskState::Done,
        "the forged cancel stopped nothing: {:?}",
        done.error
    );
    let out: subjects::ShellOutput =
        serde_json::from_value(done.result.expect("result")).expect("shell output");
    assert_eq!(out.stdout, "real\n");

    // A forged offboard: the employee's container stays. To know the
    // worker has dealt with it, a real offboard (of bob) follows on the same
    // subject, which the worker handles in order: once bob's container is
    // gone, the forged command for ada was seen before it.
    let ada = w.hire("ada", "helper").await.expect("hire");
    let bob = w.hire("bob", "helper").await.expect("hire");
    for e in [ada, bob] {
        let t = w
            .submit(
                json!({"role": "helper", "employee_id": e, "input": {"prompt": "[script:hi] hi"}}),
            )
            .await
            .expect("submit");
        assert_eq!(
            w.wait_final(t, 60).await.expect("final").state,
            TaskState::Done
        );
    }
    let containers_of = |e: Uuid| {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=colony.employee={e}"),
            ])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!((containers_of(ada), containers_of(bob)), (1, 1));
    forger
        .publish(
            subject::ctl_broadcast(subject::CTL_OFFBOARD),
            ada.to_string().into(),
        )
        .await
        .expect("publish");
    forger.flush().await.expect("flush");
    let resp = w
        .http()
        .delete(format!("{}/v1/employees/{bob}", w.url()))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 200);
    let mut gone = false;
    for _ in 0..100 {
        if containers_of(bob) == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a real offboard removes the container");
    assert_eq!(containers_of(ada), 1, "a forged offboard removed nothing");
    w.remove_workspace(bob);
    w.remove_workspace(ada);
    colony.stop().await.expect("stop");
}

/// A tenant's client can follow its own results live over NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_client_follows_its_own_results() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let (acme, refused) = client(&w, &tenant_user("acme")).await;
    let mut results = acme
        .subscribe(subject::results_of_tenant("acme"))
        .await
        .expect("subscribe");
    acme.flush().await.expect("flush");
    let js = async_nats::jetstream::new(acme.clone());
    js.publish(
        subject::intake("acme"),
        r#"{"role":"shell","input":{"command":"echo from acme"}}"#.into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let msg = tokio::time::timeout(Duration::from_secs(60), results.next())
        .await
        .expect("a result within a minute")
        .expect("a message");
    let view: subjects::TaskView = serde_json::from_slice(&msg.payload).expect("task view");
    assert_eq!(
        (view.tenant.as_str(), view.state),
        ("acme", TaskState::Done)
    );
    assert!(refused.lock().expect("refused").is_empty());
    colony.stop().await.expect("stop");
}
