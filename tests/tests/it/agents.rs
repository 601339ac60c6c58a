//! AI employees end to end on real NATS, Postgres and Docker, with the
//! scripted model provider (the one test double): tools in the sandbox,
//! memory, deny-by-default actions with an audit trail, metering and quotas,
//! egress through the gateway's allowlist, and secrets that never enter the
//! container.

use std::sync::{Arc, Mutex};

use colony::{Role, Secret};
use colony_tests::World;
use serde_json::{json, Value};
use subjects::agent::AgentOutput;
use subjects::{stream, subject, TaskState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn role_yaml(name: &str, actions: &str, egress: &str, quotas: &str) -> String {
    format!(
        "name: {name}
description: a role for the integration tests
model: scripted
system_prompt: You are a test employee.
tools: [shell, read_file, write_file, http_fetch]
allowed_actions: [{actions}]
egress: [{egress}]
limits: {{ memory_mb: 256, cpus: 1.0, pids: 128, timeout_secs: 60 }}
quotas: {{ {quotas} }}
max_turns: 10
"
    )
}

/// A plain HTTP server on 127.0.0.1 that answers every request with
/// `hello from the allowed host` and keeps each request's head.
async fn allowed_host() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .expect("heads")
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let body = "hello from the allowed host";
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, heads)
}

fn output(task: &subjects::TaskView) -> AgentOutput {
    serde_json::from_value(task.result.clone().expect("a result")).expect("an AgentOutput")
}

async fn audit(w: &World, employee: Uuid) -> Vec<Value> {
    let v: Value = w
        .http()
        .get(format!("{}/v1/audit?employee={employee}", w.url()))
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    v.as_array()
        .cloned()
        .or_else(|| v["entries"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_employee_works_with_tools_keeps_its_workspace_and_memory_and_is_audited() {
    let mut w = World::new().await.expect("world");
    let scripts = json!({"scripts": {
        "work": [
            {"tool_calls": [{"name": "write_file", "arguments": {"path": "notes.txt", "content": "remember me\n"}}]},
            {"tool_calls": [{"name": "shell", "arguments": {"command": "cat notes.txt; id -u"}}]},
            {"tool_calls": [{"name": "action_memory_set", "arguments": {"key": "last", "value": "wrote notes.txt"}}]},
            {"tool_calls": [{"name": "action_review_submit", "arguments": {"task_id": Uuid::nil(), "score": 9, "verdict": "approved", "comments": "self-praise"}}]},
            {"text": "done: {tool:shell}"}
        ],
        "recall": [
            {"tool_calls": [{"name": "shell", "arguments": {"command": "cat notes.txt"}}]},
            {"text": "I found: {tool:shell}"}
        ]
    }});
    w.use_roles(
        &[(
            "tester",
            &role_yaml(
                "tester",
                "memory.get, memory.set, memory.list, note",
                "",
                "",
            ),
        )],
        &scripts.to_string(),
    )
    .expect("roles");
    let colony = w.start(Role::All).await.expect("colony");
    let ada = w.hire("ada", "tester").await.expect("hire");

    let id = w
        .submit(json!({"role": "tester", "employee_id": ada, "input": {"prompt": "[script:work] take notes"}}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let out = output(&task);
    assert!(out.message.contains("remember me"), "{}", out.message);
    assert!(
        out.message.contains("65534"),
        "the tool ran as nobody: {}",
        out.message
    );
    assert_eq!(out.turns, 5);
    assert!(out.usage.prompt_tokens > 0 && out.usage.completion_tokens > 0);

    // Memory written through the allowed action; the denied one audited.
    let store = w.store(1);
    assert_eq!(
        store.memory_get(ada, "last").await.expect("memory"),
        Some(json!("wrote notes.txt"))
    );
    let memory: Value = w
        .http()
        .get(format!("{}/v1/employees/{ada}/memory", w.url()))
        .send()
        .await
        .expect("GET memory")
        .json()
        .await
        .expect("json");
    assert_eq!(memory, json!({"last": "wrote notes.txt"}));
    let trail = audit(&w, ada).await;
    let has = |action: &str, outcome: &str| {
        trail
            .iter()
            .any(|e| e["action"] == action && e["outcome"] == outcome)
    };
    assert!(has("memory.set", "allowed"), "{trail:#?}");
    assert!(
        has("review.submit", "denied"),
        "deny by default: {trail:#?}"
    );
    let usage = store.usage_of_task(id).await.expect("usage");
    assert_eq!(usage.calls, 5, "every model call is metered");
    assert!(usage.total_tokens > 0);

    // The run's steps are on the events stream.
    let js = async_nats::jetstream::new(w.nats_client().await.expect("nats"));
    let events = js.get_stream(stream::EVENTS).await.expect("events");
    let last = events
        .get_last_raw_message_by_subject(&subject::events(
            "default",
            None,
            id,
            subject::EVENT_AGENT,
        ))
        .await
        .expect("an agent event");
    let ev: subjects::Event = serde_json::from_slice(&last.payload).expect("event");
    assert!(matches!(ev.body, subjects::EventBody::Agent { .. }));

    // The next task of the same employee finds the workspace it left.
    let id = w
        .submit(json!({"role": "tester", "employee_id": ada, "input": {"prompt": "[script:recall] what did you write?"}}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    assert!(
        output(&task).message.contains("remember me"),
        "{}",
        output(&task).message
    );

    // Offboarding removes its containers and its workspace; history stays.
    let resp = w
        .http()
        .delete(format!("{}/v1/employees/{ada}", w.url()))
        .send()
        .await
        .expect("offboard");
    assert!(resp.status().is_success(), "{}", resp.status());
    let theirs = || {
        std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=colony.employee={ada}"),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !theirs().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        theirs(),
        "",
        "the offboarded employee's containers are gone"
    );
    let volume_left = || {
        std::process::Command::new("docker")
            .args(["volume", "inspect", &runtime::spec::workspace_volume(ada)])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(true)
    };
    while volume_left() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!volume_left(), "its workspace volume is gone");
    assert_eq!(
        store.memory_get(ada, "last").await.expect("memory"),
        Some(json!("wrote notes.txt")),
        "its history is kept"
    );
    colony.stop().await.expect("stop");
    w.remove_workspace(ada);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_container_and_the_vault_credential_reaches_the_host() {
    let (port, heads) = allowed_host().await;
    let mut w = World::new().await.expect("world");
    let scripts = json!({"scripts": {
        "leak": [
            {"tool_calls": [{"name": "shell", "arguments": {"command":
                "env; tr '\\0' '\\n' < /proc/1/environ; ls -la /run/colony; grep -rs SECRET /etc /tmp /workspace /run/colony; echo END"}}]},
            {"tool_calls": [{"name": "http_fetch", "arguments": {"url": format!("http://127.0.0.1:{port}/data")}}]},
            {"text": "shell: {tool:shell} fetch: {tool:http_fetch}"}
        ]
    }});
    w.use_roles(
        &[(
            "tester",
            &role_yaml("tester", "", &format!("\"127.0.0.1:{port}\""), ""),
        )],
        "{\"scripts\": {}}",
    )
    .expect("roles");
    w.settings.egress_allow_private = vec!["127.0.0.1/32".into()];
    // A configured provider (a key needs one): the scripted server, outside
    // Colony, playing the `leak` script.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let provider = scripted::serve(
        listener,
        scripted::Scripts::from_json(&scripts.to_string()).expect("scripts"),
    )
    .await
    .expect("provider");
    let model_key = "sk-colony-test-SECRET-model-1234";
    let vault_value = "vault-SECRET-5678";
    w.settings.model_base_url = Some(provider.base_url());
    w.settings.model_api_key = Some(Secret(model_key.into()));
    w.settings.vault_key = Some(Secret("ab".repeat(32)));
    let colony = w.start(Role::All).await.expect("colony");
    let resp = w
        .http()
        .post(format!("{}/v1/credentials", w.url()))
        .json(
            &json!({"name": "host-key", "url_prefix": format!("http://127.0.0.1:{port}/"),
                      "header": "X-Api-Key", "value": vault_value}),
        )
        .send()
        .await
        .expect("credential");
    assert_eq!(resp.status().as_u16(), 201);

    let id = w
        .submit(json!({"role": "tester", "input": {"prompt": "[script:leak] look around"}}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let message = output(&task).message;
    assert!(message.contains("END"), "the shell ran: {message}");
    assert!(
        message.contains("hello from the allowed host"),
        "the fetch went through: {message}"
    );
    for secret in [model_key, vault_value] {
        assert!(
            !message.contains(secret),
            "{secret} leaked into the run: {message}"
        );
        let inspect = w.inspect_all();
        assert!(!inspect.is_empty());
        assert!(!inspect.contains(secret), "{secret} is in docker inspect");
    }
    let heads = heads.lock().expect("heads").clone();
    assert!(
        heads.iter().any(|h| h
            .to_ascii_lowercase()
            .contains(&format!("x-api-key: {vault_value}").to_ascii_lowercase())),
        "the gateway attached the vault credential outside the container: {heads:?}"
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_goes_only_through_the_allowlist() {
    let (port, _) = allowed_host().await;
    let mut w = World::new().await.expect("world");
    let command = format!(
        "wget -q -O - http://127.0.0.1:{port}/ok; echo allowed=$?; \
         wget -q -O - http://203.0.113.7/ 2>&1; echo denied=$?; \
         wget -q -O - http://169.254.169.254/latest/meta-data/ 2>&1; echo metadata=$?; \
         wget -q -Y off -O - http://203.0.113.7/ 2>&1; echo raw=$?; \
         nslookup example.com 2>&1; echo dns=$?"
    );
    let scripts = json!({"scripts": {
        "net": [
            {"tool_calls": [{"name": "shell", "arguments": {"command": command}}]},
            {"text": "{tool:shell}"}
        ]
    }});
    w.use_roles(
        &[(
            "tester",
            &role_yaml(
                "tester",
                "",
                &format!("\"127.0.0.1:{port}\", \"169.254.169.254\""),
                "",
            ),
        )],
        &scripts.to_string(),
    )
    .expect("roles");
    w.settings.egress_allow_private = vec!["127.0.0.1/32".into()];
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit(json!({"role": "tester", "input": {"prompt": "[script:net] try the network"}}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let m = output(&task).message;
    assert!(m.contains("hello from the allowed host"), "{m}");
    assert!(m.contains("allowed=0"), "{m}");
    for refused in ["denied=", "metadata=", "raw=", "dns="] {
        let code = m
            .split(refused)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?");
        assert_ne!(code, "0", "{refused} should have failed: {m}");
    }
    // The allowed request's bytes are metered on the run.
    let db = w.db().await.expect("db");
    let row = db
        .query_one(
            "SELECT egress_bytes_in, egress_bytes_out FROM runs WHERE task_id = $1",
            &[&id],
        )
        .await
        .expect("run");
    let (bytes_in, bytes_out): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    assert!(
        bytes_in.unwrap_or(0) >= "hello from the allowed host".len() as i64,
        "{bytes_in:?}"
    );
    assert!(bytes_out.is_some(), "{bytes_out:?}");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossed_quota_stops_the_run_in_flight_and_fails_the_task_with_the_figures() {
    let mut w = World::new().await.expect("world");
    let scripts = json!({"scripts": {
        "spin": [
            {"tool_calls": [{"name": "shell", "arguments": {"command": "echo one"}}]},
            {"tool_calls": [{"name": "shell", "arguments": {"command": "echo two"}}]},
            {"tool_calls": [{"name": "shell", "arguments": {"command": "echo three"}}]},
            {"text": "should not get here"}
        ],
        "dawdle": [
            {"text": "late", "delay_ms": 30000}
        ],
        "brief": [
            {"text": "ok"}
        ]
    }});
    w.use_roles(
        &[
            (
                "thrifty",
                &role_yaml("thrifty", "", "", "tokens_per_run: 20"),
            ),
            ("hasty", &role_yaml("hasty", "", "", "wall_secs_per_run: 1")),
            // A brief run spends about 320 tokens, most of them the prompt
            // with the tools the agent offers.
            ("daily", &role_yaml("daily", "", "", "tokens_per_day: 500")),
        ],
        &scripts.to_string(),
    )
    .expect("roles");
    let colony = w.start(Role::All).await.expect("colony");

    let id = w
        .submit(
            json!({"role": "thrifty", "input": {"prompt": "[script:spin] go"}, "max_attempts": 3}),
        )
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Failed);
    let error = task.error.clone().unwrap_or_default();
    assert!(error.contains("quota_exceeded"), "{error}");
    assert!(error.contains("tokens_per_run"), "{error}");
    assert_eq!(task.attempt, 1, "a quota is not retried");
    let store = w.store(1);
    let usage = store.usage_of_task(id).await.expect("usage");
    assert!(
        usage.calls <= 2,
        "the run stopped right after the crossing call: {usage:?}"
    );

    // A run stuck in a model call is stopped by the wall-time quota.
    let id = w
        .submit(json!({"role": "hasty", "input": {"prompt": "[script:dawdle] go"}}))
        .await
        .expect("submit");
    let task = w
        .wait_final(id, 25)
        .await
        .expect("final well before the 30 s answer");
    assert_eq!(task.state, TaskState::Failed);
    let error = task.error.clone().unwrap_or_default();
    assert!(error.contains("wall_secs_per_run"), "{error}");

    // A role's day: the first short run fits, the second one crosses the
    // daily total its predecessor began.
    let brief = json!({"role": "daily", "input": {"prompt": "[script:brief] hi"}});
    let first = w.submit(brief.clone()).await.expect("submit");
    let task = w.wait_final(first, 60).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let spent = store
        .usage_of_task(first)
        .await
        .expect("usage")
        .total_tokens;
    assert!(
        spent <= 500 && 2 * spent > 500,
        "one run fits the day, two do not: {spent}"
    );
    let second = w.submit(brief).await.expect("submit");
    let task = w.wait_final(second, 60).await.expect("final");
    assert_eq!(task.state, TaskState::Failed);
    let error = task.error.clone().unwrap_or_default();
    assert!(error.contains("tokens_per_day"), "{error}");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_provider_replaces_the_scripted_one_and_employee_quotas_override_the_role() {
    // Any OpenAI-compatible server: here one of the test's own, outside
    // Colony, which only knows the script `ext`.
    let ext = scripted::Scripts::from_json(
        &json!({"default": "ext", "scripts": {"ext": [{"text": "from the external provider"}]}})
            .to_string(),
    )
    .expect("scripts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let provider = scripted::serve(listener, ext).await.expect("provider");
    let mut w = World::new().await.expect("world");
    w.use_roles(
        &[("open", &role_yaml("open", "", "", ""))],
        "{\"scripts\": {}}",
    )
    .expect("roles");
    w.settings.model_base_url = Some(provider.base_url());
    w.settings.model_api_key = Some(Secret("sk-external-test".into()));
    w.settings.model_map = vec!["scripted=scripted:ext".into()];
    let colony = w.start(Role::All).await.expect("colony");

    let id = w
        .submit(json!({"role": "open", "input": {"prompt": "hello"}}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    assert_eq!(output(&task).message, "from the external provider");

    // The role has no quota; this employee has one of its own.
    let resp = w
        .http()
        .post(format!("{}/v1/employees", w.url()))
        .json(&json!({"name": "frugal", "role": "open", "quotas": {"tokens_per_run": 5}}))
        .send()
        .await
        .expect("hire");
    assert_eq!(resp.status().as_u16(), 201);
    let frugal: Value = resp.json().await.expect("json");
    let frugal = Uuid::parse_str(frugal["id"].as_str().expect("id")).expect("uuid");
    let id = w
        .submit(json!({"role": "open", "employee_id": frugal, "input": {"prompt": "hello"}}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    let error = task.error.clone().unwrap_or_default();
    // The one answer crossed the employee's quota: even though the run had
    // nothing left to do, the task fails on the quota, with the figures.
    assert!(
        task.state == TaskState::Failed && error.contains("tokens_per_run"),
        "{:?} {error}",
        task.state
    );
    colony.stop().await.expect("stop");
    w.remove_workspace(frugal);
    provider.shutdown().await.expect("provider stops");
}

/// Six runs at once against one daily budget of 1000 tokens. Alone, each
/// run would spend about 770 (320 of prompt, 450 of answer); charged to one ledger in Postgres as they stream,
/// together they stop at the budget, each overshooting it by at most the
/// chunk that crossed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_runs_share_one_daily_budget_and_overshoot_it_by_a_chunk_each_at_most() {
    let mut w = World::new().await.expect("world");
    let long = "spend ".repeat(300);
    let scripts = json!({"scripts": {"spend": [{"text": long}]}});
    w.use_roles(
        &[(
            "spender",
            &format!(
                "{}pool: {{ warm: 0, max_active: 6 }}\n",
                role_yaml("spender", "", "", "tokens_per_day: 1000")
            ),
        )],
        &scripts.to_string(),
    )
    .expect("roles");
    w.settings.worker_slots = 6;
    let colony = w.start(Role::All).await.expect("colony");
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            w.submit(
                json!({"role": "spender", "input": {"prompt": format!("[script:spend] go {i}")}}),
            )
            .await
            .expect("submit"),
        );
    }
    let mut stopped = 0;
    for id in &ids {
        let t = w.wait_final(*id, 120).await.expect("final");
        if t.state == TaskState::Failed {
            let e = t.error.clone().unwrap_or_default();
            assert!(e.contains("tokens_per_day"), "{e}");
            stopped += 1;
        }
    }
    let db = w.db().await.expect("db");
    let day: i64 = db
        .query_one(
            "SELECT tokens FROM day_budgets WHERE tenant = 'default' AND subject = 'role:spender'",
            &[],
        )
        .await
        .expect("the day's row")
        .get(0);
    // A chunk is one "spend " (6 characters, 2 tokens).
    let bound = 1000 + 6 * 2;
    println!("daily budget: 6 parallel runs spent {day} of 1000 tokens ({stopped} stopped by the quota; bound {bound})");
    assert!(day <= bound, "{day} tokens spent against a 1000-token day");
    assert!(
        stopped >= 5,
        "at most one run fits the day: {stopped} stopped"
    );
    // What the usage history says agrees with the ledger.
    let used: i64 = db
        .query_one(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint FROM usage",
            &[],
        )
        .await
        .expect("usage")
        .get(0);
    assert!(used <= bound, "usage rows: {used}");
    colony.stop().await.expect("stop");
}
