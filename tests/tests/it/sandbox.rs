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
    let health = reqwest::get(format!("{}/healthz", w.url()))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    colony.stop().await.expect("stop");
}
