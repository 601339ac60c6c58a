//! What a container sends back is hostile: output Postgres cannot hold,
//! processes left behind for the next task, sockets swapped for symlinks, a
//! compromised agentd writing endless frames. None of it breaks a task it
//! should not break, reaches the host, or stops the worker.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use colony::Role;
use colony_tests::World;
use subjects::{ShellOutput, TaskState};
use tokio::io::AsyncWriteExt;

fn shell(t: &subjects::TaskView) -> ShellOutput {
    serde_json::from_value(t.result.clone().expect("a result")).expect("a shell result")
}

/// The socket directory of the one container this test has.
fn only_container_dir(w: &World) -> PathBuf {
    let ids = w.containers();
    assert_eq!(ids.len(), 1, "one container: {ids:?}");
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.Name}}", &ids[0]])
        .output()
        .expect("docker inspect");
    let name = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('/')
        .to_string();
    w.settings.socket_dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_invalid_utf8_end_done_with_their_bytes_escaped() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit_shell(
            r"printf 'a\000b\377'; printf 'e\000' >&2; exit 3",
            serde_json::json!({"max_attempts": 1}),
        )
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(t.state, TaskState::Done, "{:?}", t.error);
    let out = shell(&t);
    assert_eq!(out.exit_code, 3, "the real exit code");
    assert_eq!(out.stdout, r"a\0b\xff");
    assert!(out.stdout_escaped && out.stderr_escaped);
    assert_eq!(out.stderr, r"e\0");
    assert_eq!(subjects::text::unescape(&out.stdout), b"a\0b\xff");
    assert_eq!(t.attempt, 1, "not retried");

    // Ordinary output carries no marker.
    let id = w
        .submit_shell(r"printf 'back\\slash'", serde_json::json!({}))
        .await
        .expect("submit");
    let out = shell(&w.wait_final(id, 90).await.expect("final"));
    assert_eq!(out.stdout, r"back\slash");
    assert!(!out.stdout_escaped);
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_of_a_task_lives_on_into_the_next_in_the_same_container() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    // Every process's command line, from /proc (no ps needed).
    const SLEEPERS: &str =
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 30[0-2]'";
    // Hidden from the run's process group three ways.
    let id = w
        .submit_shell(
            &format!(
                "setsid sleep 300 & (sleep 301 &) & sh -c 'trap \"\" HUP TERM; exec sleep 302' & sleep 0.3; {SLEEPERS}"
            ),
            serde_json::json!({}),
        )
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(t.state, TaskState::Done, "{:?}", t.error);
    assert_eq!(shell(&t).stdout.trim(), "3", "all three were running");
    let id = w
        .submit_shell(&format!("{SLEEPERS} || true"), serde_json::json!({}))
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(w.containers().len(), 1, "the same container ran both");
    assert_eq!(shell(&t).stdout.trim(), "0", "{:?}", shell(&t));
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_sockets_lead_nowhere_on_the_host() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    // A host socket and a host file the container must never reach.
    let bait_dir = std::env::temp_dir().join(format!("colony-bait-{}", w.id));
    std::fs::create_dir_all(&bait_dir).expect("bait dir");
    let bait_sock = bait_dir.join("bait.sock");
    let bait = tokio::net::UnixListener::bind(&bait_sock).expect("bait socket");
    let bait_file = bait_dir.join("secret");
    std::fs::write(&bait_file, "host secret").expect("bait file");
    std::fs::set_permissions(&bait_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A task swaps both sockets for symlinks to the bait.
    let cmd = format!(
        "cd /run/colony; ln -sf {sock} agent/agent.sock.new && mv -f agent/agent.sock.new agent/agent.sock; \
         echo agent:$?; ln -sf {file} gateway.sock 2>/dev/null; echo gateway:$?; \
         touch planted 2>/dev/null; echo touch:$?; mv agent agent.old 2>/dev/null; echo mv:$?",
        sock = bait_sock.display(),
        file = bait_file.display()
    );
    let id = w
        .submit_shell(&cmd, serde_json::json!({}))
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(t.state, TaskState::Done, "{:?}", t.error);
    let out = shell(&t).stdout;
    assert_eq!(
        out, "agent:0\ngateway:1\ntouch:1\nmv:1\n",
        "agent/ is the container's; gateway.sock and its directory are root's"
    );
    let dir = only_container_dir(&w);
    assert!(
        std::fs::symlink_metadata(dir.join("agent/agent.sock"))
            .expect("swapped")
            .file_type()
            .is_symlink(),
        "the swap happened inside agent/"
    );

    // The next task finds the container's socket swapped: the worker does
    // not follow it, drops the container and runs the task in a new one.
    let id = w
        .submit_shell("echo next", serde_json::json!({}))
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(t.state, TaskState::Done, "{:?}", t.error);
    assert_eq!(shell(&t).stdout, "next\n");
    let reached = tokio::time::timeout(Duration::from_millis(200), bait.accept()).await;
    assert!(reached.is_err(), "the bait socket was connected to");
    let meta = std::fs::metadata(&bait_file).expect("bait file");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "host file untouched"
    );
    assert_eq!(
        std::fs::read_to_string(&bait_file).expect("read"),
        "host secret"
    );
    colony.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(&bait_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_frame_fails_its_run_and_the_worker_stays_up() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit_shell("true", serde_json::json!({}))
        .await
        .expect("submit");
    w.wait_final(id, 90).await.expect("final");

    // Stand in for a compromised agentd: whoever owns the container's
    // agent.sock answers any request with one 20 MB line.
    let dir = only_container_dir(&w);
    let sock = dir.join("agent/agent.sock");
    std::fs::remove_file(&sock).expect("remove agentd's socket");
    let fake = tokio::net::UnixListener::bind(&sock).expect("fake agentd");
    let served = tokio::spawn(async move {
        let mut sent = 0usize;
        while let Ok((mut conn, _)) = fake.accept().await {
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..20 {
                if conn.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            let _ = conn.write_all(b"\n").await;
            if sent >= 20 << 20 {
                break;
            }
        }
        sent
    });
    let id = w
        .submit_shell("echo hi", serde_json::json!({}))
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(t.state, TaskState::Failed);
    let error = t.error.expect("a reason");
    assert!(
        error.contains("longer than 1048576 bytes; the run was stopped"),
        "{error}"
    );
    assert!(!error.contains('\n'));
    served.abort();

    // The worker is still there and takes the next task in a new container.
    let id = w
        .submit_shell("echo after", serde_json::json!({}))
        .await
        .expect("submit");
    let t = w.wait_final(id, 90).await.expect("final");
    assert_eq!(t.state, TaskState::Done, "{:?}", t.error);
    assert_eq!(shell(&t).stdout, "after\n");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_error_names_its_cause() {
    let w = World::new().await.expect("world");
    let mut settings = w.settings.clone();
    settings.database_url = format!("{}_missing", w.settings.database_url);
    let store = colony::store_for(&settings, 1).expect("store");
    let err = store.ping().await.expect_err("no such database");
    let text = err.to_string();
    assert!(
        text.contains("does not exist") && text.contains(&format!("{}_missing", w.db_name)),
        "{text}"
    );
}

/// A secret file that cannot be read stops the process with its name, as a
/// bad flag would, rather than running on without the vault or the provider
/// key; the secret itself is never taken from the command line.
#[test]
fn an_unreadable_secret_file_stops_the_process_with_its_name() {
    let bin = World::colony_bin().expect("colony binary");
    for name in ["COLONY_VAULT_KEY", "COLONY_MODEL_API_KEY"] {
        let out = std::process::Command::new(&bin)
            .arg("worker")
            .env_remove(name)
            .env(format!("{name}_FILE"), "/nonexistent/colony-secret")
            .output()
            .expect("run colony");
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{name}_FILE /nonexistent/colony-secret")),
            "{err}"
        );
    }
    let out = std::process::Command::new(&bin)
        .args(["worker", "--vault-key", "00"])
        .output()
        .expect("run colony");
    assert_eq!(out.status.code(), Some(2), "no flag carries a secret");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vault-key"));
}
