//! Dead letters on real NATS and Postgres: submissions refused at the NATS
//! door listed with their reasons; replayed (once, under a fresh
//! idempotency key) after the cause is fixed, one at a time and in bulk;
//! one that is still wrong refused again and discarded; every action an
//! audit row; another tenant sees none of it.

use std::path::PathBuf;
use std::time::Duration;

use colony::Role;
use colony_tests::{client_with_key, World};
use futures_util::TryStreamExt;
use serde_json::{json, Value};
use store::Scope;

fn repo_roles() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../roles")
}

async fn call(w: &World, key: &str, post: bool, path: &str, body: Option<Value>) -> (u16, Value) {
    let http = client_with_key(key);
    let url = format!("{}{path}", w.url());
    let mut req = if post { http.post(url) } else { http.get(url) };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_once_and_discarded_with_audit_rows() {
    let w = World::new().await.expect("world");
    let admin = w.key("default", Scope::Admin).await.expect("key");
    let other = w.key("globex", Scope::Admin).await.expect("key");
    // An ingress that knows only the shell role.
    let api = w.start(Role::Ingress).await.expect("ingress");
    let _relay = w.start(Role::Relay).await.expect("relay");
    let nats = w.nats_as("tenant-default").await.expect("tenant client");
    for i in 0..3 {
        let body = json!({"role": "executor", "input": {"prompt": format!("look around {i}")}});
        nats.publish(
            subjects::subject::intake("default"),
            serde_json::to_vec(&body).expect("json").into(),
        )
        .await
        .expect("publish");
    }
    nats.publish(subjects::subject::intake("default"), "not json".into())
        .await
        .expect("publish");
    nats.flush().await.expect("flush");
    let mut entries = Vec::new();
    for _ in 0..100 {
        let (s, v) = call(&w, &admin, false, "/v1/dlq", None).await;
        assert_eq!(s, 200, "{v}");
        entries = v["entries"].as_array().cloned().unwrap_or_default();
        if entries.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert!(entries
        .iter()
        .all(|e| e["source"] == "intake" && e["status"] == "open"));
    let unknown: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("unknown role \"executor\"")
        })
        .collect();
    assert_eq!(unknown.len(), 3, "{entries:?}");
    let garbage = entries
        .iter()
        .find(|e| e["payload"] == "not json")
        .expect("the garbage entry");
    assert!(garbage["reason"]
        .as_str()
        .unwrap_or("")
        .contains("not valid JSON"));
    // Another tenant sees none of them, and cannot act on them.
    let (_, v) = call(&w, &other, false, "/v1/dlq", None).await;
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(0), "{v}");
    let first = unknown[0]["id"].as_u64().expect("id");
    let (s, _) = call(&w, &other, true, &format!("/v1/dlq/{first}/replay"), None).await;
    assert_eq!(s, 404);

    // The cause fixed: an ingress that knows the executor role.
    api.stop().await.expect("stop");
    let mut s2 = w.settings.clone();
    s2.roles_dir = Some(repo_roles());
    let _api = w
        .start_with(Role::Ingress, s2)
        .await
        .expect("ingress with roles");

    let (s, v) = call(&w, &admin, true, &format!("/v1/dlq/{first}/replay"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["idempotency_key"], format!("dlq-replay-{first}"));
    let task = v["task_id"].as_str().expect("a task").to_string();
    let (s, t) = call(&w, &admin, false, &format!("/v1/tasks/{task}"), None).await;
    assert_eq!((s, t["role"].as_str()), (200, Some("executor")), "{t}");
    // Replaying again makes nothing new.
    let (s, again) = call(&w, &admin, true, &format!("/v1/dlq/{first}/replay"), None).await;
    assert_eq!(
        (s, again["task_id"].as_str()),
        (200, Some(task.as_str())),
        "{again}"
    );

    // Still wrong: refused with the sentence, left open, then discarded.
    let g = garbage["id"].as_u64().expect("id");
    let (s, v) = call(&w, &admin, true, &format!("/v1/dlq/{g}/replay"), None).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("not valid JSON"),
        "{v}"
    );
    let (s, v) = call(&w, &admin, true, &format!("/v1/dlq/{g}/discard"), None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("discarded")), "{v}");
    let (s, _) = call(&w, &admin, true, &format!("/v1/dlq/{g}/discard"), None).await;
    assert_eq!(s, 409);
    let (s, v) = call(&w, &admin, true, &format!("/v1/dlq/{g}/replay"), None).await;
    assert_eq!(s, 409, "a discarded one is not replayed: {v}");

    // In bulk: the two open ones left.
    let (s, v) = call(
        &w,
        &admin,
        true,
        "/v1/dlq/replay",
        Some(json!({"source": "intake"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["done"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["refused"].as_array().map(Vec::len), Some(0), "{v}");
    let (_, v) = call(&w, &admin, false, "/v1/dlq?status=open", None).await;
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(0), "{v}");
    let (_, v) = call(&w, &admin, false, "/v1/dlq?status=replayed", None).await;
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(3), "{v}");
    // A status filter and a limit; an unknown status is refused.
    let (_, v) = call(&w, &admin, false, "/v1/dlq?status=discarded&limit=1", None).await;
    assert_eq!(v["entries"][0]["id"], g, "{v}");
    let (s, v) = call(&w, &admin, false, "/v1/dlq?status=lost", None).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(&w, &admin, false, "/v1/dlq?source=nowhere", None).await;
    assert_eq!(s, 400, "{v}");

    // Every action is an audit row.
    let (_, a) = call(&w, &admin, false, "/v1/audit?action=dlq.replay", None).await;
    assert_eq!(a["entries"].as_array().map(Vec::len), Some(3), "{a}");
    let (_, a) = call(&w, &admin, false, "/v1/audit?action=dlq.discard", None).await;
    assert_eq!(a["entries"].as_array().map(Vec::len), Some(1), "{a}");
    // Another tenant floods the dead letters with garbage, more than one
    // window of the walk: this tenant's are still all found, by subject.
    let flood = 12_000;
    let globex = w.nats_as("tenant-globex").await.expect("globex client");
    for i in 0..flood {
        globex
            .publish(
                subjects::subject::intake("globex"),
                format!("garbage {i}").into(),
            )
            .await
            .expect("publish");
    }
    globex.flush().await.expect("flush");
    let js = async_nats::jetstream::new(w.nats_client().await.expect("admin"));
    let dlq = js.get_stream(subjects::stream::DLQ).await.expect("dlq");
    let theirs = subjects::subject::dlq_of(subjects::subject::DLQ_INTAKE, Some("globex"));
    let mut filed = 0;
    for _ in 0..600 {
        let counts: std::collections::HashMap<String, usize> = dlq
            .info_with_subjects(theirs.clone())
            .await
            .expect("info")
            .try_collect()
            .await
            .expect("counts");
        filed = counts.get(&theirs).copied().unwrap_or(0);
        if filed >= flood {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(filed, flood, "globex's garbage filed under its own subject");
    let (s, v) = call(&w, &admin, false, "/v1/dlq?limit=500", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(4), "{v}");
    let (_, v) = call(&w, &other, false, "/v1/dlq?limit=1", None).await;
    assert_eq!(
        v["entries"][0]["payload"],
        format!("garbage {}", flood - 1),
        "{v}"
    );
    println!("dlq: 4 dead letters; 3 replayed (1 alone, 2 in bulk), 1 refused again then discarded; 4 audit rows; 0 seen by another tenant; all 4 still listed behind another tenant's {flood}");
}
