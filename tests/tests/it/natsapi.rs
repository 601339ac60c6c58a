//! The NATS API on real NATS, Postgres and Docker: a Python client
//! (`tests/python/nats_client.py`, nats-py) that knows Colony only by its
//! published schemas submits a task and a goal by request–reply, follows
//! the task to its result on its own subjects, and is refused another
//! tenant's subjects and the discovery subjects; the admin user discovers
//! the service with the services protocol.

use std::time::Duration;

use colony::Role;
use colony_tests::World;
use futures_util::StreamExt;
use serde_json::Value;

fn python() -> String {
    std::env::var("COLONY_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.colony/pyenv/bin/python").to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_submits_and_gets_its_result_over_nats_only() {
    let w = World::new().await.expect("world");
    let _colony = w.start(Role::All).await.expect("colony");
    w.wait_healthy().await.expect("healthy");

    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let user = subjects::auth::tenant_user("acme");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(root.join("tests/python/nats_client.py"))
        .env("NATS_URL", &w.nats.url)
        .env("NATS_USER", &user)
        .env(
            "NATS_PASSWORD_FILE",
            colony::nats_auth::password_file(&w.nats.credentials, &user),
        )
        .env("TENANT", "acme")
        .env("OTHER_TENANT", "globex")
        .env("SCHEMA_DIR", root.join("subjects/schema"))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the client ends within 180 s")
        .unwrap_or_else(|e| panic!("{}: {e} (ops/test installs .colony/pyenv)", python()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nats_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("json");
    assert_eq!(seen["task"]["state"], "done", "{seen}");
    assert_eq!(seen["refusals"].as_object().map(|r| r.len()), Some(7));
    println!("nats api: {seen}");

    // What the client did is in Postgres, as acme's and nobody else's.
    let task: uuid::Uuid = seen["task"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let db = w.db().await.expect("db");
    let rows = db
        .query(
            "SELECT tenant, state::text FROM tasks WHERE id = $1 OR idempotency_key LIKE 'py-%'",
            &[&task],
        )
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1, "one task for two submissions with one key");
    assert_eq!(rows[0].get::<_, String>(0), "acme");
    let goal: uuid::Uuid = seen["goal"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let tenant: String = db
        .query_one("SELECT tenant FROM goals WHERE id = $1", &[&goal])
        .await
        .expect("goal")
        .get(0);
    assert_eq!(tenant, "acme");

    // The admin user finds the service with the services protocol.
    let admin = w.nats_client().await.expect("admin");
    let info = admin
        .request(
            subjects::subject::service_verb("INFO", subjects::subject::API_SERVICE),
            "".into(),
        )
        .await
        .expect("info");
    let info: Value = serde_json::from_slice(&info.payload).expect("json");
    assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
    let mut subjects_seen: Vec<String> = info["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["name"].as_str().unwrap_or(""),
                e["subject"].as_str().unwrap_or("")
            )
        })
        .collect();
    subjects_seen.sort();
    assert_eq!(
        subjects_seen,
        [
            "cancel-task colony.api.*.tasks.cancel",
            "get-goal colony.api.*.goals.get",
            "get-task colony.api.*.tasks.get",
            "submit-goal colony.api.*.goals.submit",
            "submit-task colony.api.*.tasks.submit",
        ]
    );
    let stats = admin
        .request(
            subjects::subject::service_verb("STATS", subjects::subject::API_SERVICE),
            "".into(),
        )
        .await
        .expect("stats");
    let stats: Value = serde_json::from_slice(&stats.payload).expect("json");
    let requests: u64 = stats["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["num_requests"].as_u64().unwrap_or(0))
        .sum();
    // Every call the client made, and nothing else.
    assert_eq!(Some(requests), seen["calls"].as_u64(), "{stats}");

    // A call naming a reply subject that is not the caller's inbox is not
    // answered: the ingress publishes nowhere the caller chooses.
    let acme = w.nats_as(&user).await.expect("acme");
    // Three subjects acme may not publish on: globex's intake, an event
    // of globex's and globex's inbox.
    let globex_inbox = subjects::auth::inbox_prefix(&subjects::auth::tenant_user("globex"));
    let hostiles = [
        subjects::subject::intake("globex"),
        subjects::subject::events("globex", None, task, subjects::subject::EVENT_STATE),
        format!("{globex_inbox}.x"),
    ];
    let mut watch = futures_util::stream::select_all([
        admin
            .subscribe(subjects::subject::intake("globex"))
            .await
            .expect("watch"),
        admin
            .subscribe(subjects::subject::events_of_tenant("globex"))
            .await
            .expect("watch"),
        admin
            .subscribe(format!("{globex_inbox}.>"))
            .await
            .expect("watch"),
    ]);
    admin.flush().await.expect("flush");
    let body = serde_json::to_vec(&serde_json::json!({"id": task})).expect("json");
    for hostile in hostiles {
        acme.publish_with_reply(
            subjects::subject::api("acme", subjects::subject::API_GET_TASK),
            hostile,
            body.clone().into(),
        )
        .await
        .expect("publish");
    }
    // The positive control: the same call with acme's own inbox is answered.
    let answer = acme
        .request(
            subjects::subject::api("acme", subjects::subject::API_GET_TASK),
            body.into(),
        )
        .await
        .expect("answered on acme's inbox");
    assert!(String::from_utf8_lossy(&answer.payload).contains(&task.to_string()));
    let mut leaked = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        leaked.push(m.subject.to_string());
    }
    assert!(leaked.is_empty(), "the ingress answered on {leaked:?}");

    // And the calls are counted on /metrics.
    let text = w.metrics_text().await.expect("scrape");
    assert!(
        text.contains("colony_nats_api_calls_total{call=\"submit-task\",outcome=\"ok\"} 3"),
        "{}",
        text.lines()
            .filter(|l| l.contains("nats_api"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
