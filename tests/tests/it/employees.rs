//! AI employees on the real services: hiring from the repository's role
//! templates, pausing, resuming and offboarding (history kept, workers told
//! over NATS), tasks naming employees over HTTP and NATS, the audit trail's
//! filters, the write-only credential vault, bounded memory, usage rollups,
//! and a start refused by invalid templates.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use colony::{Role, Settings};
use colony_tests::World;
use futures_util::StreamExt;
use serde_json::{json, Value};
use store::{AuditFilter, NewAudit, NewCredential, NewUsage, Outcome, Store, Vault};
use subjects::{header, stream, subject, TaskView, WorkItem};
use time::OffsetDateTime;
use uuid::Uuid;

const VAULT_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn repo_roles() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../roles")
}

/// Settings of `w` with the repository's templates and, if asked, a vault.
fn settings(w: &World, vault: bool) -> Settings {
    let mut s = w.settings.clone();
    s.roles_dir = Some(repo_roles());
    s.vault_key = vault.then(|| colony::Secret(VAULT_KEY.into()));
    s
}

/// Ingress (with the relay) only: these tests run no container.
async fn start(w: &World, vault: bool) -> colony_tests::Running {
    w.start_with(Role::Ingress, settings(w, vault))
        .await
        .expect("colony")
}

async fn store(w: &World, vault: bool) -> Store {
    let s = w.store(2);
    if vault {
        s.with_vault(Vault::parse(VAULT_KEY).expect("key"))
    } else {
        s
    }
}

/// One HTTP call; returns (status, JSON body or Null).
async fn call(
    w: &World,
    method: &str,
    path: &str,
    body: Option<Value>,
    tenant: Option<&str>,
) -> (u16, Value) {
    let http = w.http();
    let url = format!("{}{path}", w.url());
    let mut req = match method {
        "GET" => http.get(url),
        "POST" => http.post(url),
        "DELETE" => http.delete(url),
        other => panic!("method {other}"),
    };
    if let Some(t) = tenant {
        req = req.header("X-Colony-Tenant", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, v)
}

/// Asserts a refusal: the status and the exact one-sentence error.
fn refused(got: (u16, Value), status: u16, error: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"].as_str(), Some(error), "{}", got.1);
}

async fn hire(w: &World, name: &str, role: &str) -> Uuid {
    let (status, v) = call(
        w,
        "POST",
        "/v1/employees",
        Some(json!({"name": name, "role": role})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{v}");
    Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid")
}

fn task(role: &str, employee: Uuid) -> Value {
    json!({"role": role, "input": {"prompt": "write a haiku"}, "employee_id": employee})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn employees_are_hired_paused_resumed_and_offboarded_with_their_history_kept() {
    let w = World::new().await.expect("world");
    let colony = start(&w, false).await;

    // Hire: 201 with the employee.
    let (status, ada) = call(
        &w,
        "POST",
        "/v1/employees",
        Some(json!({"name": "ada", "role": "executor", "quotas": {"tokens_per_run": 1000}})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{ada}");
    assert_eq!(
        (
            ada["name"].as_str(),
            ada["role"].as_str(),
            ada["state"].as_str(),
            ada["tenant"].as_str()
        ),
        (
            Some("ada"),
            Some("executor"),
            Some("active"),
            Some("default")
        )
    );
    assert!(ada["created_at"].is_string());
    assert!(ada.get("token").is_none(), "employees have no token: {ada}");
    let id = Uuid::parse_str(ada["id"].as_str().expect("id")).expect("uuid");
    let db = w.db().await.expect("db");
    let st = store(&w, false).await;

    // Refusals, in one sentence each, with nothing written.
    let hire_cases: Vec<(Value, u16, String)> = vec![
        (json!({"name": "ada", "role": "planner"}), 409, "an employee named \"ada\" already works for tenant \"default\"; choose another name or offboard that employee first".into()),
        (json!({"name": "bob", "role": "wizard"}), 422, "unknown role \"wizard\"; roles that can be hired: code-reviewer, executor, planner, reviewer".into()),
        (json!({"name": "bob", "role": "shell"}), 422, "role shell is built in and runs commands without a model, so it has no employees; roles that can be hired: code-reviewer, executor, planner, reviewer".into()),
        (json!({"name": "bob", "role": "executor", "quotas": {"cost_usd_per_day": 0}}), 400, "quotas.cost_usd_per_day must be greater than 0; leave it out for the role's quota".into()),
        (json!({"name": "b o b", "role": "executor"}), 400, "employee name \"b o b\" is not valid; use 1-64 letters, digits, '-' or '_'".into()),
    ];
    for (body, status, error) in &hire_cases {
        refused(
            call(&w, "POST", "/v1/employees", Some(body.clone()), None).await,
            *status,
            error,
        );
    }
    let (status, v) = call(
        &w,
        "POST",
        "/v1/employees",
        Some(json!({"name": "bob", "role": "executor", "salary": 1})),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the hire request is not valid: unknown field `salary`"),
        "{v}"
    );
    let n: i64 = db
        .query_one("SELECT count(*) FROM employees", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "no refused hire was written");

    // List and read.
    let pid = hire(&w, "pat", "planner").await;
    let (_, list) = call(&w, "GET", "/v1/employees", None, None).await;
    let names: Vec<&str> = list["employees"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["ada", "pat"]);
    let (_, list) = call(&w, "GET", "/v1/employees?role=planner", None, None).await;
    assert_eq!(list["employees"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["employees"][0]["id"], pid.to_string());
    let (_, list) = call(&w, "GET", "/v1/employees?state=paused", None, None).await;
    assert_eq!(list["employees"], json!([]));
    let (_, list) = call(&w, "GET", "/v1/employees", None, Some("other")).await;
    assert_eq!(
        list["employees"],
        json!([]),
        "tenants do not see each other's employees"
    );
    refused(
        call(&w, "GET", "/v1/employees?state=asleep", None, None).await,
        400,
        "state must be active, paused or offboarded, not \"asleep\"",
    );
    refused(
        call(&w, "GET", "/v1/employees?boss=me", None, None).await,
        400,
        "unknown filter \"boss\"; use role or state",
    );
    let (status, one) = call(&w, "GET", &format!("/v1/employees/{id}"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(one["quotas"], json!({"tokens_per_run": 1000}));
    assert_eq!(
        one["effective_quotas"]["tokens_per_run"], 1000,
        "the override wins"
    );
    assert_eq!(
        one["effective_quotas"]["tokens_per_day"], 2000000,
        "the role's quota otherwise"
    );
    assert_eq!(one["usage"]["calls"], 0);
    assert!(
        one.get("token").is_none(),
        "the token is shown only at hire"
    );
    refused(
        call(
            &w,
            "GET",
            &format!("/v1/employees/{id}"),
            None,
            Some("other"),
        )
        .await,
        404,
        &format!("employee {id} does not exist"),
    );
    refused(
        call(&w, "GET", "/v1/employees/nobody", None, None).await,
        400,
        "\"nobody\" is not an employee id (a UUID)",
    );
    let ghost = Uuid::now_v7();
    refused(
        call(
            &w,
            "POST",
            &format!("/v1/employees/{ghost}/pause"),
            None,
            None,
        )
        .await,
        404,
        &format!("employee {ghost} does not exist"),
    );

    // A task for the employee carries its id to the task, the row and the
    // work message; the wrong role, an unknown employee or another tenant's
    // is refused.
    let (status, accepted) = call(&w, "POST", "/v1/tasks", Some(task("executor", id)), None).await;
    assert_eq!(status, 202, "{accepted}");
    let task_id = Uuid::parse_str(accepted["id"].as_str().expect("id")).expect("uuid");
    let view: TaskView = w.get_task(task_id).await.expect("task");
    assert_eq!(view.employee_id, Some(id));
    let js = jetstream::new(w.nats_client().await.expect("nats"));
    let work = js.get_stream(stream::WORK).await.expect("work stream");
    let msg = work
        .get_last_raw_message_by_subject(&subject::work("executor"))
        .await
        .expect("work message");
    let item: WorkItem = serde_json::from_slice(&msg.payload).expect("work item");
    assert_eq!((item.task_id, item.employee_id), (task_id, Some(id)));
    refused(
        call(&w, "POST", "/v1/tasks", Some(task("planner", id)), None).await,
        422,
        &format!("employee {id} is of role executor, not planner; submit with role executor or pick an employee of role planner"),
    );
    refused(
        call(&w, "POST", "/v1/tasks", Some(task("executor", ghost)), None).await,
        422,
        &format!("employee {ghost} does not exist; hire one with POST /v1/employees or leave employee_id out"),
    );
    refused(
        call(&w, "POST", "/v1/tasks", Some(task("executor", id)), Some("other")).await,
        422,
        &format!("employee {id} does not exist; hire one with POST /v1/employees or leave employee_id out"),
    );
    refused(
        call(
            &w,
            "POST",
            "/v1/tasks",
            Some(json!({"role": "wizard", "input": {}})),
            None,
        )
        .await,
        422,
        "unknown role \"wizard\"; known roles: shell, code-reviewer, executor, planner, reviewer",
    );

    // Pause: its tasks are refused with 409 until it is resumed; pausing
    // twice is harmless.
    let (status, paused) = call(&w, "POST", &format!("/v1/employees/{id}/pause"), None, None).await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    let (status, again) = call(&w, "POST", &format!("/v1/employees/{id}/pause"), None, None).await;
    assert_eq!((status, again["state"].as_str()), (200, Some("paused")));
    refused(
        call(&w, "POST", "/v1/tasks", Some(task("executor", id)), None).await,
        409,
        &format!("employee {id} is paused; resume it with POST /v1/employees/{id}/resume or submit to another employee"),
    );
    let (status, resumed) = call(
        &w,
        "POST",
        &format!("/v1/employees/{id}/resume"),
        None,
        None,
    )
    .await;
    assert_eq!((status, resumed["state"].as_str()), (200, Some("active")));
    let (status, _) = call(&w, "POST", "/v1/tasks", Some(task("executor", id)), None).await;
    assert_eq!(status, 202);

    // History to keep: memory, audit, usage.
    st.memory_set(id, "style", &json!("terse"))
        .await
        .expect("memory");
    st.insert_audit(&NewAudit {
        at: OffsetDateTime::now_utc(),
        tenant: "default".into(),
        employee_id: Some(id),
        task_id: Some(task_id),
        run_id: None,
        action: "memory.set".into(),
        target: Some("style".into()),
        outcome: Outcome::Allowed,
        detail: None,
    })
    .await
    .expect("audit");
    st.insert_usage(&NewUsage {
        at: OffsetDateTime::now_utc(),
        tenant: "default".into(),
        run_id: None,
        task_id: Some(task_id),
        employee_id: Some(id),
        model: "scripted".into(),
        prompt_tokens: 120,
        completion_tokens: 30,
        cost_usd: 0.25,
    })
    .await
    .expect("usage");
    let (_, one) = call(&w, "GET", &format!("/v1/employees/{id}"), None, None).await;
    assert_eq!(
        one["usage"],
        json!({"calls": 1, "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "cost_usd": 0.25})
    );

    // Offboard: the workers are told on core NATS; the employee stays
    // readable, its history stays, and it takes no more work.
    let nats = w.nats_client().await.expect("nats");
    let mut ctl = nats
        .subscribe(subject::ctl_broadcast(subject::CTL_OFFBOARD))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let (status, gone) = call(&w, "DELETE", &format!("/v1/employees/{id}"), None, None).await;
    assert_eq!(
        (status, gone["state"].as_str()),
        (200, Some("offboarded")),
        "{gone}"
    );
    assert!(gone["offboarded_at"].is_string());
    let msg = tokio::time::timeout(Duration::from_secs(10), ctl.next())
        .await
        .expect("an offboard message")
        .expect("subscription open");
    assert_eq!(
        std::str::from_utf8(&msg.payload).expect("utf8"),
        id.to_string()
    );
    let (status, one) = call(&w, "GET", &format!("/v1/employees/{id}"), None, None).await;
    assert_eq!((status, one["state"].as_str()), (200, Some("offboarded")));
    assert_eq!(one["usage"]["calls"], 1);
    let kept: i64 = db
        .query_one("SELECT count(*) FROM tasks WHERE employee_id = $1", &[&id])
        .await
        .expect("tasks")
        .get(0);
    assert_eq!(kept, 2, "both tasks kept");
    assert_eq!(
        st.memory_get(id, "style").await.expect("memory"),
        Some(json!("terse"))
    );
    let mut f = AuditFilter::tenant("default");
    f.employee_id = Some(id);
    assert_eq!(st.query_audit(&f).await.expect("audit").len(), 1);
    refused(
        call(
            &w,
            "POST",
            &format!("/v1/employees/{id}/resume"),
            None,
            None,
        )
        .await,
        409,
        &format!(
            "employee {id} is offboarded, so it cannot become active; hire a new employee instead"
        ),
    );
    refused(
        call(&w, "POST", "/v1/tasks", Some(task("executor", id)), None).await,
        409,
        &format!("employee {id} is offboarded; submit to an active employee"),
    );
    // A repeated DELETE answers the same and tells the workers again.
    let (status, _) = call(&w, "DELETE", &format!("/v1/employees/{id}"), None, None).await;
    assert_eq!(status, 200);
    let again = tokio::time::timeout(Duration::from_secs(10), ctl.next())
        .await
        .expect("again")
        .expect("open");
    assert_eq!(again.payload, msg.payload);
    // The name is free again.
    let new_id = hire(&w, "ada", "executor").await;
    assert_ne!(new_id, id);
    let (_, list) = call(&w, "GET", "/v1/employees?state=offboarded", None, None).await;
    assert_eq!(list["employees"][0]["id"], id.to_string());
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_intake_dead_letters_tasks_for_unusable_employees() {
    let w = World::new().await.expect("world");
    let colony = start(&w, false).await;
    let id = hire(&w, "ada", "executor").await;
    let (status, _) = call(&w, "POST", &format!("/v1/employees/{id}/pause"), None, None).await;
    assert_eq!(status, 200);
    let ghost = Uuid::now_v7();
    let bad = [
        (task("executor", id), format!("employee {id} is paused; resume it with POST /v1/employees/{id}/resume or submit to another employee")),
        (task("planner", id), format!("employee {id} is of role executor, not planner; submit with role executor or pick an employee of role planner")),
        (task("executor", ghost), format!("employee {ghost} does not exist; hire one with POST /v1/employees or leave employee_id out")),
    ];
    let js = jetstream::new(w.nats_client().await.expect("nats"));
    for (body, _) in &bad {
        js.publish(
            subject::intake("default"),
            serde_json::to_vec(body).expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    let consumer = js
        .get_stream(stream::DLQ)
        .await
        .expect("dlq")
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
            .expect("a DLQ entry per bad message")
            .expect("open")
            .expect("message");
        let h = m.headers.clone().expect("headers");
        reasons.push(h.get(header::REASON).expect("reason").as_str().to_string());
    }
    for (_, want) in &bad {
        assert!(reasons.contains(want), "{want:?} not in {reasons:?}");
    }
    let db = w.db().await.expect("db");
    let n: i64 = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "no task from a refused message");
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_queried_with_filters() {
    let w = World::new().await.expect("world");
    let colony = start(&w, false).await;
    let st = store(&w, false).await;
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = OffsetDateTime::parse(
        "2026-03-01T10:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .expect("t0");
    let rows = [
        (ada, "memory.set", Outcome::Allowed, 0, "default"),
        (ada, "task.create", Outcome::Denied, 1, "default"),
        (bob, "memory.set", Outcome::Failed, 2, "default"),
        (bob, "egress", Outcome::Denied, 3, "default"),
        (ada, "memory.get", Outcome::Allowed, 4, "default"),
        (ada, "memory.set", Outcome::Allowed, 5, "other"),
    ];
    for (employee, action, outcome, minutes, tenant) in rows {
        st.insert_audit(&NewAudit {
            at: t0 + time::Duration::minutes(minutes),
            tenant: tenant.into(),
            employee_id: Some(employee),
            task_id: None,
            run_id: None,
            action: action.into(),
            target: Some(format!("target-{minutes}")),
            outcome,
            detail: (outcome != Outcome::Allowed).then(|| format!("why {minutes}")),
        })
        .await
        .expect("audit");
    }
    let targets = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["target"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let cases: Vec<(String, Option<&str>, Vec<&str>)> = vec![
        (
            String::new(),
            None,
            vec!["target-4", "target-3", "target-2", "target-1", "target-0"],
        ),
        (
            format!("?employee={ada}"),
            None,
            vec!["target-4", "target-1", "target-0"],
        ),
        (
            "?action=memory.set".into(),
            None,
            vec!["target-2", "target-0"],
        ),
        ("?outcome=denied".into(), None, vec!["target-3", "target-1"]),
        (
            format!("?employee={bob}&outcome=denied"),
            None,
            vec!["target-3"],
        ),
        (
            "?since=2026-03-01T10:02:00Z".into(),
            None,
            vec!["target-4", "target-3", "target-2"],
        ),
        (
            "?until=2026-03-01T10:01:00Z".into(),
            None,
            vec!["target-1", "target-0"],
        ),
        (
            "?since=2026-03-01T11:01:00%2B01:00&until=2026-03-01T10:03:00Z".into(),
            None,
            vec!["target-3", "target-2", "target-1"],
        ),
        ("?limit=2".into(), None, vec!["target-4", "target-3"]),
        (String::new(), Some("other"), vec!["target-5"]),
        ("?action=note".into(), None, vec![]),
    ];
    for (query, tenant, want) in &cases {
        let (status, v) = call(&w, "GET", &format!("/v1/audit{query}"), None, *tenant).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert_eq!(targets(&v), *want, "{query}");
    }
    let (_, v) = call(
        &w,
        "GET",
        &format!("/v1/audit?employee={bob}&action=egress"),
        None,
        None,
    )
    .await;
    let e = &v["entries"][0];
    assert_eq!(
        (
            e["employee_id"].as_str(),
            e["outcome"].as_str(),
            e["detail"].as_str(),
            e["at"].as_str()
        ),
        (
            Some(bob.to_string().as_str()),
            Some("denied"),
            Some("why 3"),
            Some("2026-03-01T10:03:00Z")
        )
    );
    refused(
        call(&w, "GET", "/v1/audit?outcome=maybe", None, None).await,
        400,
        "outcome must be allowed, denied or failed, not \"maybe\"",
    );
    refused(
        call(&w, "GET", "/v1/audit?since=monday", None, None).await,
        400,
        "since must be an RFC 3339 time such as 2026-01-02T03:04:05Z, not \"monday\"",
    );
    refused(
        call(&w, "GET", "/v1/audit?employee=ada", None, None).await,
        400,
        "employee must be an employee id (a UUID), not \"ada\"",
    );
    refused(
        call(&w, "GET", "/v1/audit?limit=5000", None, None).await,
        400,
        "limit must be a number from 1 to 1000, not \"5000\"",
    );
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_write_only_and_sealed_in_the_database() {
    let w = World::new().await.expect("world");
    let colony = start(&w, true).await;
    let secret = "Bearer ghp_very-secret-value-1234";
    let (status, c) = call(
        &w,
        "POST",
        "/v1/credentials",
        Some(json!({"name": "github", "url_prefix": "https://API.github.com", "header": "Authorization", "value": secret})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(
        c["url_prefix"], "https://api.github.com",
        "scheme and host in lower case"
    );
    assert!(!c.to_string().contains("very-secret"), "{c}");
    let id = Uuid::parse_str(c["id"].as_str().expect("id")).expect("uuid");
    let (status, _) = call(
        &w,
        "POST",
        "/v1/credentials",
        Some(json!({"name": "github-repos", "url_prefix": "https://api.github.com/repos/", "header": "authorization", "value": "Bearer narrower"})),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &w,
        "POST",
        "/v1/credentials",
        Some(json!({"name": "trace", "url_prefix": "https://api.github.com", "header": "X-Trace", "value": "t-1"})),
        None,
    )
    .await;
    assert_eq!(status, 201);

    // No route shows a value.
    let (status, list) = call(&w, "GET", "/v1/credentials", None, None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["credentials"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["github", "github-repos", "trace"]);
    let text = list.to_string();
    assert!(
        !text.contains("very-secret") && !text.contains("narrower") && !text.contains("\"value\""),
        "{text}"
    );
    let (_, other) = call(&w, "GET", "/v1/credentials", None, Some("other")).await;
    assert_eq!(other["credentials"], json!([]));

    // The database holds ciphertext only.
    let db = w.db().await.expect("db");
    let row = db
        .query_one(
            "SELECT ciphertext, nonce, to_jsonb(c)::text FROM credentials c WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    let (sealed, nonce, whole): (Vec<u8>, Vec<u8>, String) = (row.get(0), row.get(1), row.get(2));
    assert_ne!(sealed, secret.as_bytes());
    assert!(!sealed.windows(11).any(|w| w == b"very-secret"));
    assert!(!whole.contains("very-secret"));
    assert_eq!(nonce.len(), 12);

    // The store decrypts for the gateway: per header, the longest prefix.
    let st = store(&w, true).await;
    let got = st
        .credentials_for_url("default", "https://api.github.com/user")
        .await
        .expect("lookup");
    assert_eq!(
        got,
        vec![
            ("Authorization".to_string(), secret.to_string()),
            ("X-Trace".to_string(), "t-1".to_string())
        ]
    );
    let got = st
        .credentials_for_url("default", "https://api.github.com/repos/a/b")
        .await
        .expect("lookup");
    assert_eq!(
        got,
        vec![
            ("authorization".to_string(), "Bearer narrower".to_string()),
            ("X-Trace".to_string(), "t-1".to_string())
        ]
    );
    for url in [
        "https://api.github.com.evil.org/",
        "http://api.github.com/",
        "https://github.com/",
    ] {
        assert_eq!(
            st.credentials_for_url("default", url)
                .await
                .expect("lookup"),
            vec![],
            "{url}"
        );
    }
    assert_eq!(
        st.credentials_for_url("other", "https://api.github.com/user")
            .await
            .expect("lookup"),
        vec![]
    );
    let wrong_key = w.store(1).with_vault(Vault::from_key(&[9u8; 32]));
    let err = wrong_key
        .credentials_for_url("default", "https://api.github.com/user")
        .await
        .expect_err("wrong key");
    assert!(
        err.to_string().ends_with(
            "cannot be decrypted with the configured vault key; was COLONY_VAULT_KEY changed?"
        ),
        "{err}"
    );
    let no_vault = store(&w, false).await;
    assert_eq!(
        no_vault
            .credentials_for_url("default", "https://api.github.com/")
            .await
            .expect_err("no vault")
            .to_string(),
        store::Error::NoVault.to_string()
    );
    let err = no_vault
        .put_credential(&NewCredential {
            tenant: "default".into(),
            name: "x".into(),
            url_prefix: "https://x.org".into(),
            header: "A".into(),
            value: "v".into(),
        })
        .await
        .expect_err("no vault");
    assert!(matches!(err, store::Error::NoVault));

    // Refusals.
    refused(
        call(&w, "POST", "/v1/credentials", Some(json!({"name": "github", "url_prefix": "https://x.org", "header": "A", "value": "v"})), None).await,
        409,
        "a credential named \"github\" already exists; delete it first or choose another name",
    );
    refused(
        call(&w, "POST", "/v1/credentials", Some(json!({"name": "x", "url_prefix": "x.org", "header": "A", "value": "v"})), None).await,
        400,
        "url_prefix \"x.org\" is not an http:// or https:// URL with a host; give the start of the URLs the credential is for",
    );
    let (status, v) = call(
        &w,
        "POST",
        "/v1/credentials",
        Some(json!({"name": "x", "url_prefix": "https://x.org", "header": "A"})),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the credential is not valid: missing field `value`"),
        "{v}"
    );

    // Delete.
    let (status, body) = call(
        &w,
        "DELETE",
        &format!("/v1/credentials/{id}"),
        None,
        Some("other"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            404,
            Some(format!("credential {id} does not exist").as_str())
        ),
        "another tenant's"
    );
    let (status, _) = call(&w, "DELETE", &format!("/v1/credentials/{id}"), None, None).await;
    assert_eq!(status, 204);
    refused(
        call(&w, "DELETE", &format!("/v1/credentials/{id}"), None, None).await,
        404,
        &format!("credential {id} does not exist"),
    );
    refused(
        call(&w, "DELETE", "/v1/credentials/abc", None, None).await,
        400,
        "\"abc\" is not a credential id (a UUID)",
    );
    let got = st
        .credentials_for_url("default", "https://api.github.com/user")
        .await
        .expect("lookup");
    assert_eq!(got, vec![("X-Trace".to_string(), "t-1".to_string())]);
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_vault_key_the_credential_routes_answer_503() {
    let w = World::new().await.expect("world");
    let colony = start(&w, false).await;
    let want = "the credential vault is not configured; start Colony with COLONY_VAULT_KEY set to a 32-byte key (64 hex characters or base64)";
    let body = json!({"name": "x", "url_prefix": "https://x.org", "header": "A", "value": "v"});
    refused(
        call(&w, "POST", "/v1/credentials", Some(body), None).await,
        503,
        want,
    );
    refused(
        call(&w, "GET", "/v1/credentials", None, None).await,
        503,
        want,
    );
    refused(
        call(
            &w,
            "DELETE",
            &format!("/v1/credentials/{}", Uuid::now_v7()),
            None,
            None,
        )
        .await,
        503,
        want,
    );
    let db = w.db().await.expect("db");
    let n: i64 = db
        .query_one("SELECT count(*) FROM credentials", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    colony.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_per_employee() {
    let w = World::new().await.expect("world");
    let st = store(&w, false).await;
    st.migrate().await.expect("migrate");
    let hired = st
        .hire(&store::NewEmployee {
            tenant: "t".into(),
            name: "ada".into(),
            role: "executor".into(),
            quotas: Default::default(),
        })
        .await
        .expect("hire");
    let id = hired.id;
    assert_eq!(st.memory_get(id, "k").await.expect("get"), None);
    st.memory_set(id, "k", &json!({"a": 1})).await.expect("set");
    st.memory_set(id, "k", &json!({"a": 2}))
        .await
        .expect("overwrite");
    st.memory_set(id, &"é".repeat(128), &json!("x".repeat(65_000)))
        .await
        .expect("at the bounds");
    assert_eq!(
        st.memory_get(id, "k").await.expect("get"),
        Some(json!({"a": 2}))
    );
    let all = st.memory_list(id).await.expect("list");
    assert_eq!(
        all.keys().map(|k| k.chars().count()).collect::<Vec<_>>(),
        [1, 128]
    );

    let err = |e: store::Error| e.to_string();
    assert_eq!(
        err(st
            .memory_set(id, &"k".repeat(129), &json!(1))
            .await
            .expect_err("long key")),
        "the memory key is 129 characters, over the 128-character limit; use a shorter key"
    );
    assert_eq!(
        err(st.memory_get(id, "").await.expect_err("empty key")),
        "the memory key is empty; give a key of 1-128 characters"
    );
    assert_eq!(
        err(st.memory_set(id, "big", &json!("x".repeat(70_000))).await.expect_err("big value")),
        "the value for memory key \"big\" is 70002 bytes of JSON, over the 65536-byte limit; store less or split it over several keys"
    );
    let ghost = Uuid::now_v7();
    assert_eq!(
        err(st
            .memory_set(ghost, "k", &json!(1))
            .await
            .expect_err("no employee")),
        format!("employee {ghost} does not exist")
    );
    for i in 0..(store::memory::MAX_KEYS - 2) {
        st.memory_set(id, &format!("n{i}"), &json!(i))
            .await
            .expect("fill");
    }
    assert_eq!(
        err(st.memory_set(id, "one-more", &json!(1)).await.expect_err("full")),
        format!("employee {id} already keeps 256 memory keys; overwrite or delete one before adding \"one-more\"")
    );
    st.memory_set(id, "k", &json!("still writable"))
        .await
        .expect("overwrite when full");
    assert!(st.memory_delete(id, "n0").await.expect("delete"));
    assert!(!st.memory_delete(id, "n0").await.expect("delete again"));
    st.memory_set(id, "one-more", &json!(1))
        .await
        .expect("room again");
    assert_eq!(st.memory_list(id).await.expect("list").len(), 256);
    let n: i64 = w
        .db()
        .await
        .expect("db")
        .query_one("SELECT count(*) FROM memory WHERE key = 'big'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing half-written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rolls_up_per_run_task_and_employee() {
    let w = World::new().await.expect("world");
    let st = store(&w, false).await;
    st.migrate().await.expect("migrate");
    let (emp, other, task1, task2, run1, run2) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let now = OffsetDateTime::now_utc();
    let calls = [
        (
            emp,
            task1,
            run1,
            100,
            10,
            0.5,
            now - time::Duration::hours(30),
        ),
        (
            emp,
            task1,
            run2,
            200,
            20,
            1.0,
            now - time::Duration::hours(2),
        ),
        (
            emp,
            task2,
            run2,
            300,
            30,
            1.5,
            now - time::Duration::minutes(5),
        ),
        (other, task2, run2, 1, 1, 0.25, now),
    ];
    for (employee, task, run, p, c, cost, at) in calls {
        st.insert_usage(&NewUsage {
            at,
            tenant: "t".into(),
            run_id: Some(run),
            task_id: Some(task),
            employee_id: Some(employee),
            model: "scripted".into(),
            prompt_tokens: p,
            completion_tokens: c,
            cost_usd: cost,
        })
        .await
        .expect("usage");
    }
    let e = st.usage_of_employee(emp).await.expect("employee");
    assert_eq!(
        (
            e.calls,
            e.prompt_tokens,
            e.completion_tokens,
            e.total_tokens,
            e.cost_usd
        ),
        (3, 600, 60, 660, 3.0)
    );
    let day = st
        .employee_usage_since(emp, now - time::Duration::hours(24))
        .await
        .expect("since");
    assert_eq!((day.calls, day.total_tokens, day.cost_usd), (2, 550, 2.5));
    let t = st.usage_of_task(task2).await.expect("task");
    assert_eq!((t.calls, t.total_tokens, t.cost_usd), (2, 332, 1.75));
    let r = st.usage_of_run(run1).await.expect("run");
    assert_eq!((r.calls, r.total_tokens), (1, 110));
    assert_eq!(
        st.usage_of_employee(Uuid::now_v7()).await.expect("none"),
        store::UsageTotals::default()
    );
    let err = st
        .insert_usage(&NewUsage {
            at: now,
            tenant: "t".into(),
            run_id: None,
            task_id: None,
            employee_id: Some(emp),
            model: "scripted".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_usd: f64::NAN,
        })
        .await
        .expect_err("NaN cost");
    assert_eq!(
        err.to_string(),
        "cost_usd NaN is not a cost; give a finite number of dollars, 0 or more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_role_templates_or_vault_key_refuse_the_start() {
    let w = World::new().await.expect("world");
    let dir = std::env::temp_dir().join(format!("colony-bad-roles-{}", w.id));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("executor.yaml"),
        "name: executor\nmodel: scripted\nsystem_prompt: go\nquotas: { tokens_per_run: 0 }\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("x.yaml"),
        "name: x\nmodel: scripted\nsystem_prompt: go\ntols: [shell]\n",
    )
    .expect("write");
    let mut s = w.settings.clone();
    s.roles_dir = Some(dir.clone());
    let err = colony::serve(Role::All, s, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    let d = dir.display();
    assert!(
        text.starts_with(&format!(
            "2 role template problem(s) in {d}; fix them or point COLONY_ROLES_DIR elsewhere:\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{d}/executor.yaml: quotas.tokens_per_run: must be greater than 0"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{d}/x.yaml: tols: unknown field, expected one of name, description,"
        )),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // A vault key of the wrong length refuses the start too, without
    // repeating the key.
    let mut s = settings(&w, false);
    s.vault_key = Some(colony::Secret("abcd1234".into()));
    let err = colony::serve(Role::All, s, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("refused");
    assert_eq!(
        format!("{err:#}"),
        "COLONY_VAULT_KEY is not usable: the vault key is 4 bytes of hex; it must be 32 bytes (64 hex characters), e.g. from `openssl rand -hex 32`"
    );
    // The repository's own templates start fine.
    let colony = start(&w, false).await;
    colony.stop().await.expect("clean stop");
}
