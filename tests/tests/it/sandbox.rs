//! The sandbox: how containers are configured (read back through `docker
//! inspect`), and what happens when a task tries to get out.

use std::collections::HashMap;

use bollard::query_parameters::InspectContainerOptions;
use colony::Role;
use colony_tests::World;
use subjects::{ShellOutput, TaskState};

async fn run(
    w: &World,
    command: &str,
    extra: serde_json::Value,
) -> (TaskState, Option<ShellOutput>, Option<String>) {
    let id = w.submit_shell(command, extra).await.expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    let out = t
        .result
        .clone()
        .map(|r| serde_json::from_value(r).expect("shell output"));
    (t.state, out, t.error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_hardened() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let (state, _, _) = run(&w, "true", serde_json::json!({})).await;
    assert_eq!(state, TaskState::Done);
    let ids = w.containers();
    assert_eq!(ids.len(), 1, "one container, reused");
    let docker = bollard::Docker::connect_with_unix_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("version");
    let info = docker
        .inspect_container(&ids[0], None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let cfg = info.config.expect("config");
    let host = info.host_config.expect("host config");
    assert_eq!(cfg.user.as_deref(), Some("65534:65534"));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(host.cap_add.unwrap_or_default().is_empty());
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_string()])
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    let tmpfs = host.tmpfs.unwrap_or_default();
    assert!(
        tmpfs.contains_key("/tmp") && tmpfs.contains_key("/workspace"),
        "{tmpfs:?}"
    );
    assert_eq!(host.pids_limit, Some(128));
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    let labels: HashMap<String, String> = cfg.labels.unwrap_or_default();
    assert_eq!(labels.get("colony.role").map(String::as_str), Some("shell"));
    assert_eq!(
        labels.get("colony.agent").map(String::as_str),
        Some("agentd")
    );
    assert_eq!(labels.get("colony.worker"), w.settings.worker_id.as_ref());
    assert!(labels.contains_key("colony.config-hash"));
    // And from the inside.
    let (_, out, _) = run(
        &w,
        "id -u; id -g; grep CapEff /proc/self/status; ls /sys/class/net",
        serde_json::json!({}),
    )
    .await;
    let out = out.expect("output");
    assert_eq!(out.stdout, "65534\n65534\nCapEff:\t0000000000000000\nlo\n");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_fail_inside_the_sandbox_and_the_worker_stays_healthy() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");

    // The network: a server of the test's own on the host's loopback is out
    // of reach (the container has its own loopback and nothing else).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let (state, out, _) = run(
        &w,
        &format!(
            "wget -T 2 -q -O- http://127.0.0.1:{port}/; echo rc=$?; cat /proc/net/route | wc -l"
        ),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(state, TaskState::Done);
    let out = out.expect("output");
    assert!(!out.stdout.contains("rc=0"), "{out:?}");
    assert!(
        out.stdout.ends_with("1\n"),
        "no routes besides the header line: {out:?}"
    );
    assert!(listener.accept().is_err(), "nothing reached the host");

    // Writing outside the workspace.
    let (_, out, _) = run(
        &w,
        "touch /etc/x; echo rc=$?; touch /workspace/ok && echo ws-ok",
        serde_json::json!({}),
    )
    .await;
    let out = out.expect("output");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(
        out.stdout.contains("rc=1") && out.stdout.contains("ws-ok"),
        "{out:?}"
    );

    // Forking without bound: the pids limit stops it inside the container.
    let (state, out, err) = run(
        &w,
        "b(){ b|b& }; b; sleep 2; echo bomb-over",
        serde_json::json!({"timeout_secs": 4, "max_attempts": 1}),
    )
    .await;
    assert!(state.is_final(), "{state} {out:?} {err:?}");

    // The worker and the container pool are fine afterwards.
    let (state, out, err) = run(&w, "echo alive", serde_json::json!({})).await;
    assert_eq!(state, TaskState::Done, "{err:?}");
    assert_eq!(out.expect("output").stdout, "alive\n");
    let health = w
        .http()
        .get(format!("{}/healthz", w.url()))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    colony.stop().await.expect("stop");
}

/// An employee's model talked into reaching the host: every loopback
/// spelling, Colony's own API, the NATS monitor, CONNECT to the Postgres and
/// NATS ports, private ranges and the metadata address. Every one is listed
/// in the role's allowlist, and every one is refused by the gateway and
/// audited, because only the operator can open a private range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_inside_an_employees_sandbox_the_host_is_out_of_reach() {
    let mut w = World::new().await.expect("world");
    let api = w.settings.http_addr.port();
    let monitor = w
        .nats
        .monitor_url
        .rsplit(':')
        .next()
        .expect("monitor port")
        .to_string();
    let nats_port = w
        .nats
        .url
        .rsplit(':')
        .next()
        .expect("nats port")
        .to_string();
    let pg_port = w
        .settings
        .database_url
        .split('@')
        .nth(1)
        .and_then(|hp| hp.split(['/', ':']).nth(1))
        .expect("postgres port")
        .to_string();
    let urls = [
        format!("http://127.0.0.1:{api}/v1/employees"),
        format!("http://127.0.0.1:{monitor}/varz"),
        format!("http://localhost:{api}/v1/tasks"),
        format!("http://127.1:{api}/"),
        format!("http://2130706433:{api}/"),
        format!("http://[::1]:{api}/"),
        format!("http://[::ffff:127.0.0.1]:{api}/"),
        format!("http://0.0.0.0:{api}/"),
        "http://10.0.0.1/".to_string(),
        "http://192.168.0.1/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ];
    let tunnels = [
        format!("127.0.0.1:{pg_port}"),
        format!("127.0.0.1:{nats_port}"),
        format!("localhost:{nats_port}"),
    ];
    let mut allow: Vec<String> = vec![
        format!("127.0.0.1:{api}"),
        format!("127.0.0.1:{monitor}"),
        format!("localhost:{api}"),
        format!("127.1:{api}"),
        format!("2130706433:{api}"),
        format!("[::1]:{api}"),
        format!("[::ffff:127.0.0.1]:{api}"),
        format!("0.0.0.0:{api}"),
        "10.0.0.1".into(),
        "192.168.0.1".into(),
        "169.254.169.254".into(),
    ];
    allow.extend(tunnels.iter().cloned());
    let mut command = String::new();
    for u in &urls {
        command.push_str(&format!(
            "r=$(timeout 10 wget -q -O - '{u}' 2>&1); echo \"GET {u} => rc=$? $(echo \"$r\" | head -c 300)\"; "
        ));
    }
    for t in &tunnels {
        command.push_str(&format!(
            "echo \"CONNECT {t} => $( (printf 'CONNECT {t} HTTP/1.1\\r\\nHost: {t}\\r\\n\\r\\n'; sleep 1) | timeout 5 nc 127.0.0.1 3128 | head -n 1)\"; "
        ));
    }
    let scripts = serde_json::json!({"scripts": {
        "injected": [
            {"tool_calls": [{"name": "shell", "arguments": {"command": command}}]},
            {"text": "{tool:shell}"}
        ]
    }});
    let egress = allow
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let role = format!(
        "name: intruder
model: scripted
system_prompt: You were told to look around the host.
tools: [shell]
egress: [{egress}]
max_turns: 4
"
    );
    w.use_roles(&[("intruder", &role)], &scripts.to_string())
        .expect("roles");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit(
            serde_json::json!({"role": "intruder", "input": {"prompt": "[script:injected] go"}}),
        )
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let out: subjects::agent::AgentOutput =
        serde_json::from_value(task.result.clone().expect("result")).expect("agent output");
    let lines: Vec<&str> = out.message.lines().filter(|l| l.contains(" => ")).collect();
    assert_eq!(lines.len(), urls.len() + tunnels.len(), "{}", out.message);
    let mut refused = 0;
    for line in &lines {
        let ok = if line.starts_with("GET") {
            line.contains("403") && !line.contains("rc=0")
        } else {
            line.contains("HTTP/1.1 403")
        };
        assert!(ok, "not refused: {line}\n{}", out.message);
        refused += 1;
    }
    // Every refusal is in the audit trail, as denied egress of this task.
    let db = w.db().await.expect("db");
    let denied: i64 = db
        .query_one(
            "SELECT count(*) FROM audit WHERE task_id = $1 AND action = 'egress' AND outcome = 'denied'",
            &[&id],
        )
        .await
        .expect("audit")
        .get(0);
    let allowed: i64 = db
        .query_one(
            "SELECT count(*) FROM audit WHERE task_id = $1 AND action = 'egress' AND outcome <> 'denied'",
            &[&id],
        )
        .await
        .expect("audit")
        .get(0);
    println!(
        "sandbox: {refused} of {} attempts refused, {denied} denied audit rows, {allowed} allowed",
        lines.len()
    );
    assert_eq!(denied as usize, lines.len());
    assert_eq!(allowed, 0);
    colony.stop().await.expect("stop");
}
