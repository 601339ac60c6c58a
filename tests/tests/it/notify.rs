//! Notifications: on NATS, and posted to a tenant's webhooks — signed,
//! retried with backoff, every attempt logged — never to an address inside
//! the host's networks unless the operator opened it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use colony::Role;
use colony_tests::World;
use serde_json::{json, Value};
use subjects::goals::GoalState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VAULT_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// One request as the receiver saw it: (headers in lower case, body).
type Seen = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

/// A webhook receiver on 127.0.0.1: answers 500 to the first request and
/// 204 to the rest, keeping each request.
async fn receiver() -> (u16, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, length) = loop {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
                    .collect();
                let n = {
                    let mut s = keep.lock().expect("seen");
                    s.push((headers, buf[head_end..head_end + length].to_vec()));
                    s.len()
                };
                let answer: &[u8] = if n == 1 {
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
                };
                let _ = sock.write_all(answer).await;
            });
        }
    });
    (port, seen)
}

async fn post(w: &World, path: &str, body: Value) -> (u16, Value) {
    let r = w
        .http()
        .post(format!("{}{path}", w.url()))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goals_end_is_posted_to_its_webhook_signed_retried_and_logged() {
    let mut w = World::new().await.expect("world");
    w.settings.vault_key = Some(colony::Secret(VAULT_KEY.into()));
    w.settings.egress_allow_private = vec!["127.0.0.1/32".into()];
    let roles = [
        ("planner", "name: planner\nmodel: scripted\nsystem_prompt: plan\ntools: [read_file]\nallowed_actions: [plan.submit]\nmay_create: [executor]\nmax_turns: 6\n"),
        ("executor", "name: executor\nmodel: scripted\nsystem_prompt: work\ntools: [read_file, write_file, shell]\nallowed_actions: [note]\nmax_turns: 6\n"),
    ];
    w.use_roles(&roles, r#"{"scripts": {}}"#).expect("roles");
    let colony = w.start(Role::All).await.expect("start");
    let (port, seen) = receiver().await;

    // Inside the host's networks only what the operator opened.
    for (url, says) in [
        (
            "http://169.254.169.254/latest/meta-data",
            "link-local or cloud metadata",
        ),
        ("http://10.1.2.3/hook", "private (RFC 1918) address"),
        ("http://[::1]:9/hook", "loopback"),
        ("ftp://example.org/", "http:// or https://"),
    ] {
        let (status, v) = post(&w, "/v1/webhooks", json!({"url": url})).await;
        assert_eq!(status, 400, "{url}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(says),
            "{url}: {v}"
        );
    }
    let (status, v) = post(
        &w,
        "/v1/webhooks",
        json!({"url": "http://127.0.0.1:1/", "kinds": ["goal_finished"]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("is not a notification kind"),
        "{v}"
    );

    let (status, hook) = post(
        &w,
        "/v1/webhooks",
        json!({"url": format!("http://127.0.0.1:{port}/colony"), "kinds": ["goal_done"]}),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"]
        .as_str()
        .expect("the secret, once")
        .to_string();
    let hook_id = hook["id"].as_str().expect("id").to_string();
    let listed = w
        .http()
        .get(format!("{}/v1/webhooks", w.url()))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("body");
    assert!(
        listed.contains(&hook_id) && !listed.contains(&secret),
        "{listed}"
    );

    let tenant = w.nats_as("tenant-default").await.expect("tenant client");
    let mut on_nats = tenant
        .subscribe(subjects::subject::notify_of_tenant("default"))
        .await
        .expect("subscribe");
    tenant.flush().await.expect("flush");
    let goal = w
        .submit_goal(json!({"title": "Notify me", "acceptance": "done"}))
        .await
        .expect("goal");
    let g = w
        .wait_goal(goal, 120, |g| g.state.is_final())
        .await
        .expect("done");
    assert_eq!(g.state, GoalState::Done);
    let n: subjects::goals::Notification = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            let m = on_nats.next().await.expect("a message");
            let n: subjects::goals::Notification =
                serde_json::from_slice(&m.payload).expect("a notification");
            if n.kind == subjects::goals::NotifyKind::GoalDone {
                return n;
            }
        }
    })
    .await
    .expect("goal_done on NATS");
    assert_eq!(n.goal_id, Some(goal));

    // The webhook: refused once (500), delivered on the retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let log = loop {
        let v: Value = w
            .http()
            .get(format!("{}/v1/webhooks/{hook_id}/deliveries", w.url()))
            .send()
            .await
            .expect("deliveries")
            .json()
            .await
            .expect("json");
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        if list.iter().any(|d| d["outcome"] == "delivered") || std::time::Instant::now() > deadline
        {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let outcomes: Vec<(&str, i64, i64)> = log
        .iter()
        .rev()
        .map(|d| {
            (
                d["outcome"].as_str().unwrap_or(""),
                d["attempt"].as_i64().unwrap_or(0),
                d["status"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [("retrying", 1, 500), ("delivered", 2, 204)],
        "{log:?}"
    );
    let requests = seen.lock().expect("seen").clone();
    assert_eq!(requests.len(), 2, "only goal_done, twice");
    for (headers, body) in &requests {
        let h = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(h("x-colony-event"), "goal_done");
        assert_eq!(h("x-colony-delivery"), n.id.to_string());
        let ts: u64 = h("x-colony-timestamp").parse().expect("a timestamp");
        assert_eq!(
            h("x-colony-signature"),
            notifier::signature(secret.as_bytes(), ts, body),
            "the signature checks out"
        );
        let posted: subjects::goals::Notification =
            serde_json::from_slice(body).expect("the notification");
        assert_eq!(posted.id, n.id);
    }
    println!("webhook: {outcomes:?}; both requests signed");
    colony.stop().await.expect("stop");
}
