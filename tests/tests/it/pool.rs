//! The container pool on a real engine: leases in NATS KV, adoption after
//! SIGKILL and SIGTERM, orphan removal, the active cap with eviction, idle
//! reaping, employee workspaces that outlive containers, and the metrics.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use colony_tests::World;
use runtime::lease::{Holder, LeaseError, Leases};
use runtime::{Runtime, Source, Want};
use subjects::agent::{AgentFrame, AgentRequest, RunRequest};
use subjects::{TaskState, VERSION};

/// Container ids of this test whose `colony.worker` label is `worker`.
fn containers_of(w: &World, worker: &str) -> BTreeSet<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=colony.test={}", w.id),
            "--filter",
            &format!("label={}={worker}", subjects::label::WORKER),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Poll until `pred` holds (bounded), returning the last value seen.
async fn until<T>(secs: u64, mut get: impl FnMut() -> T, pred: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = get();
        if pred(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runtime_config(w: &World, worker: &str) -> runtime::Config {
    let mut cfg = runtime::Config::new(
        w.settings.agent_image.clone(),
        w.settings.socket_dir.clone(),
        worker.to_string(),
    );
    cfg.labels = [("colony.test".to_string(), w.id.clone())].into();
    cfg
}

async fn leases(w: &World, worker: &str) -> Leases {
    let js = async_nats::jetstream::new(w.nats_client().await.expect("nats"));
    Leases::open(&js, worker, Duration::from_secs(15))
        .await
        .expect("lease bucket")
}

fn container_name(id: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Name}}", id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('/')
        .to_string()
}

/// Leave a container behind for a worker that no longer exists: created
/// under its id, its lease gone as if it had run out.
async fn orphan(w: &World) -> String {
    let ghost = format!("ghost-{}", w.id);
    let l = leases(w, &ghost).await;
    let rt = Runtime::connect_with(runtime_config(w, &ghost), Some(l.clone()))
        .await
        .expect("ghost runtime");
    rt.prewarm(&Want::role("shell"), 1).await.expect("prewarm");
    let ids = containers_of(w, &ghost);
    assert_eq!(ids.len(), 1);
    let id = ids.into_iter().next().expect("one");
    l.drop_lease(&container_name(&id)).await;
    id
}

async fn restart_adopts(signal: &str) {
    let w = World::new().await.expect("world");
    let worker = format!("pooled-{}", w.id);
    let env = [("COLONY_PREWARM", "2"), ("COLONY_LEASE_TTL_MS", "30000")];
    let mut first = w
        .spawn_process_env("worker", &worker, &env)
        .expect("worker process");
    let before = until(60, || containers_of(&w, &worker), |s| s.len() == 2).await;
    assert_eq!(before.len(), 2, "two warm containers");
    let l = leases(&w, "observer").await;
    for id in &before {
        assert_eq!(
            l.holder(&container_name(id)).await.expect("lease"),
            Holder::Other(worker.clone()),
            "each container is leased to its worker"
        );
    }

    let ghost = orphan(&w).await;
    match signal {
        "KILL" => first.kill().expect("kill -9"),
        _ => {
            let st = Command::new("kill")
                .args([&format!("-{signal}"), &first.id().to_string()])
                .status()
                .expect("kill");
            assert!(st.success());
        }
    }
    let status = first.wait().expect("wait");
    if signal == "TERM" {
        assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    }
    assert_eq!(
        containers_of(&w, &worker),
        before,
        "the containers outlive their worker"
    );

    // The same worker comes back: it takes its containers back (within the
    // lease TTL after SIGKILL, its own leases are still there) and removes
    // the orphan.
    let mut second = w
        .spawn_process_env("worker", &worker, &env)
        .expect("restarted worker");
    let ghost_gone = until(
        60,
        || {
            Command::new("docker")
                .args(["inspect", &ghost])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(false)
        },
        |gone| *gone,
    )
    .await;
    assert!(ghost_gone, "the orphan was removed");
    assert_eq!(
        containers_of(&w, &worker),
        before,
        "the restarted worker adopted both containers instead of creating new ones"
    );

    // And uses them.
    let ingress = w.start(colony::Role::Ingress).await.expect("ingress");
    let id = w
        .submit_shell("echo adopted", serde_json::json!({}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 60).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    assert_eq!(containers_of(&w, &worker), before);
    let _ = second.kill();
    let _ = second.wait();
    ingress.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_a_worker_adopts_its_containers_and_removes_orphans() {
    restart_adopts("KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_a_worker_adopts_its_containers_and_removes_orphans() {
    restart_adopts("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_drive_one_container() {
    let w = World::new().await.expect("world");
    let a = leases(&w, "worker-a").await;
    let rt_a = Runtime::connect_with(runtime_config(&w, "worker-a"), Some(a))
        .await
        .expect("runtime a");
    rt_a.prewarm(&Want::role("shell"), 1)
        .await
        .expect("prewarm");
    let id = containers_of(&w, "worker-a")
        .into_iter()
        .next()
        .expect("a's container");
    let name = container_name(&id);

    // B cannot take A's lease, and B's adoption leaves A's container alone.
    let b = leases(&w, "worker-b").await;
    match b.take(&name).await {
        Err(LeaseError::Held { holder, .. }) => assert_eq!(holder, "worker-a"),
        other => panic!("B took A's lease: {other:?}"),
    }
    let rt_b = Runtime::connect_with(runtime_config(&w, "worker-b"), Some(b.clone()))
        .await
        .expect("runtime b");
    let (adopted, removed) = rt_b.adopt().await.expect("adopt");
    assert_eq!(
        (adopted, removed),
        (0, 0),
        "a live worker's container is not B's"
    );
    assert_eq!(containers_of(&w, "worker-a").len(), 1);
    assert_eq!(
        b.holder(&name).await.expect("holder"),
        Holder::Other("worker-a".into())
    );

    // A lets go (the container is removed); only then is the name free.
    let c = rt_a.acquire(&Want::role("shell")).await.expect("acquire");
    rt_a.discard(&c).await;
    assert_eq!(b.holder(&name).await.expect("holder"), Holder::Nobody);
    b.take(&name).await.expect("free now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_caps_evicts_the_oldest_idle_reaps_and_counts() {
    let w = World::new().await.expect("world");
    let mut cfg = runtime_config(&w, &format!("cap-{}", w.id));
    cfg.max_active = 2;
    // Anything idle is past its TTL at once: reaping needs no waiting.
    cfg.idle_ttl = Duration::ZERO;
    let rt = Runtime::connect(cfg).await.expect("runtime");

    let shell = Want::role("shell");
    let other = Want::role("other");
    let a = rt.acquire(&shell).await.expect("a");
    assert_eq!(a.source, Source::Cold);
    rt.release(a).await;
    let a = rt.acquire(&shell).await.expect("a again");
    assert_eq!(
        a.source,
        Source::Reuse,
        "the idle container of the same config is reused"
    );
    let b = rt.acquire(&other).await.expect("b");
    assert_eq!(
        b.source,
        Source::Cold,
        "another role never reuses a shell container"
    );

    // At the cap with nothing idle, an acquire waits for a release…
    let waiting = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let employee = Want {
                employee: Some(uuid::Uuid::new_v4()),
                ..Want::role("shell")
            };
            rt.acquire(&employee).await
        })
    };
    wait_until_waiting(&rt, 1).await;
    assert!(
        !waiting.is_finished(),
        "no room until something is released"
    );
    assert_eq!(w.containers().len(), 2);
    // …and a release makes room: the oldest idle container (a) is evicted.
    let a_id = a.id.clone();
    rt.release(a).await;
    let c = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting acquire finishes")
        .expect("join")
        .expect("acquired");
    assert_eq!(c.source, Source::Cold);
    let ids: BTreeSet<String> = w.containers().into_iter().collect();
    assert_eq!(ids.len(), 2, "still at most max_active containers");
    assert!(!ids.contains(&a_id), "the idle one was evicted");

    let m = rt.metrics();
    assert_eq!((m.active, m.warm), (2, 0));
    assert_eq!((m.acquire_cold, m.acquire_reuse, m.evicted), (3, 1, 1));
    assert_eq!(m.cold_starts, 3);
    assert!(m.cold_start_p50_ms > 0.0 && m.cold_start_p50_ms <= m.cold_start_max_ms);

    // Idle past the TTL: reaped, except each role's warm minimum.
    rt.release(b).await;
    rt.release(c).await;
    assert_eq!(
        rt.reap_idle(|_| 1).await,
        0,
        "one of each role is the warm minimum"
    );
    assert_eq!(rt.idle_count(), 2);
    assert_eq!(rt.reap_idle(|_| 0).await, 2);
    let m = rt.metrics();
    assert_eq!((m.active, m.warm, m.reaped), (0, 0, 2));
    assert!(w.containers().is_empty(), "reaped containers are removed");
}

fn run_in(command: &str) -> AgentRequest {
    AgentRequest::Run(RunRequest {
        v: VERSION,
        run_id: uuid::Uuid::new_v4().to_string(),
        role: "shell".into(),
        input: serde_json::json!({ "command": command }),
        timeout_ms: 10_000,
        max_output_bytes: 4096,
        fresh_workspace: false,
        agent: None,
    })
}

async fn stdout_of(c: &runtime::Container, command: &str) -> String {
    match runtime::agent::call(&c.agent_socket, &run_in(command), None)
        .await
        .expect("call")
    {
        AgentFrame::Result { output } => output["stdout"].as_str().unwrap_or_default().to_string(),
        other => panic!("unexpected frame {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_employee_workspace_outlives_its_containers_until_offboarding() {
    let w = World::new().await.expect("world");
    let rt = Runtime::connect(runtime_config(&w, &format!("ws-{}", w.id)))
        .await
        .expect("runtime");
    let employee = uuid::Uuid::new_v4();
    let want = Want {
        employee: Some(employee),
        ..Want::role("shell")
    };
    let c = rt.acquire(&want).await.expect("first container");
    let labels = Command::new("docker")
        .args([
            "volume",
            "inspect",
            "-f",
            "{{json .Labels}}",
            &runtime::spec::workspace_volume(employee),
        ])
        .output()
        .expect("docker volume inspect");
    let labels = String::from_utf8_lossy(&labels.stdout).to_string();
    assert!(
        labels.contains(&format!("\"colony.test\":\"{}\"", w.id))
            && labels.contains(&employee.to_string()),
        "the workspace volume carries the labels: {labels}"
    );
    assert_eq!(
        stdout_of(&c, "echo kept > notes.txt; cat notes.txt").await,
        "kept\n"
    );
    rt.discard(&c).await;

    let c2 = rt.acquire(&want).await.expect("second container");
    assert_ne!(c2.id, c.id, "a new container");
    assert_eq!(
        stdout_of(&c2, "cat notes.txt; id -u").await,
        "kept\n65534\n"
    );
    // Another employee's container does not see it.
    let stranger = Want {
        employee: Some(uuid::Uuid::new_v4()),
        ..Want::role("shell")
    };
    let s = rt.acquire(&stranger).await.expect("stranger");
    assert_eq!(stdout_of(&s, "ls -A").await, "");
    rt.discard(&s).await;
    rt.remove_workspace(stranger.employee.expect("id"))
        .await
        .expect("rm");

    rt.release(c2).await;
    assert_eq!(rt.offboard(employee).await, 1, "its idle container goes");
    rt.remove_workspace(employee).await.expect("volume removed");
    let inspect = Command::new("docker")
        .args([
            "volume",
            "inspect",
            &runtime::spec::workspace_volume(employee),
        ])
        .output()
        .expect("docker volume inspect");
    assert!(!inspect.status.success(), "the workspace volume is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_each_workers_runs_and_pool_in_the_registry() {
    let w = World::new().await.expect("world");
    let colony = w.start(colony::Role::All).await.expect("colony");
    let id = w
        .submit_shell("echo counted", serde_json::json!({}))
        .await
        .expect("submit");
    assert_eq!(
        w.wait_final(id, 60).await.expect("final").state,
        TaskState::Done
    );
    let worker = w.settings.worker_id.clone().expect("worker id");
    // The status is written every few seconds; wait for one after the run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let list: Vec<subjects::status::WorkerStatus> = w
            .http()
            .get(format!("{}/v1/workers", w.url()))
            .send()
            .await
            .expect("GET /v1/workers")
            .json()
            .await
            .expect("a list of worker statuses");
        let mine = list.into_iter().find(|s| s.worker_id == worker);
        // A status written after the container went back to the pool.
        if let Some(s) = mine.filter(|s| {
            s.pool.acquire_cold + s.pool.acquire_warm >= 1 && s.pool.active == 0 && s.running == 0
        }) {
            break s;
        }
        assert!(Instant::now() < deadline, "no status with the run counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.pools.iter().any(|p| p == "shell"));
    assert_eq!(status.slots, w.settings.worker_slots);
    assert_eq!(status.pool.active, 0);
    assert_eq!(status.pool.warm, 1, "the container went back to the pool");
    assert_eq!(status.pool.cold_starts, 1);
    assert!(status.pool.cold_start_p50_ms > 0.0);
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_cap_holds_back_only_that_role() {
    let w = World::new().await.expect("world");
    let mut cfg = runtime_config(&w, &format!("rolecap-{}", w.id));
    cfg.max_active = 10;
    let rt = Runtime::connect(cfg).await.expect("runtime");
    let capped = |employee| Want {
        employee: Some(employee),
        role_max_active: Some(1),
        ..Want::role("capped")
    };
    let first = uuid::Uuid::new_v4();
    let a = rt.acquire(&capped(first)).await.expect("first of the role");
    let second = uuid::Uuid::new_v4();
    let waiting = {
        let rt = rt.clone();
        let want = capped(second);
        tokio::spawn(async move { rt.acquire(&want).await })
    };
    // Another role is not held back by that role's cap.
    let other = rt.acquire(&Want::role("free")).await.expect("another role");
    wait_until_waiting(&rt, 1).await;
    assert!(!waiting.is_finished(), "the role is at its cap of 1");
    assert_eq!(w.containers().len(), 2);

    let a_id = a.id.clone();
    rt.release(a).await;
    let b = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting acquire finishes")
        .expect("join")
        .expect("acquired");
    assert_eq!(b.employee, Some(second));
    let ids: BTreeSet<String> = w.containers().into_iter().collect();
    assert!(!ids.contains(&a_id), "the role's idle container made room");
    assert_eq!(ids.len(), 2);
    assert_eq!(rt.metrics().evicted, 1);
    rt.discard(&b).await;
    rt.discard(&other).await;
    for e in [first, second] {
        rt.remove_workspace(e).await.expect("volume");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_abandoned_mid_start_leaves_its_container_to_the_pool() {
    let w = World::new().await.expect("world");
    let mut cfg = runtime_config(&w, &format!("abandon-{}", w.id));
    cfg.max_active = 1;
    let rt = Runtime::connect(cfg).await.expect("runtime");
    let want = Want::role("shell");
    let abandoned = {
        let (rt, want) = (rt.clone(), want.clone());
        tokio::spawn(async move { rt.acquire(&want).await })
    };
    // A start takes well over 20 ms; the run is cancelled meanwhile.
    tokio::time::sleep(Duration::from_millis(20)).await;
    abandoned.abort();
    let _ = abandoned.await;
    let idle = until(60, || rt.idle_count(), |n| *n == 1).await;
    assert_eq!(
        idle, 1,
        "the container finished starting and went back to the pool"
    );
    // The room it had reserved is free again: the next acquire does not wait.
    let c = tokio::time::timeout(Duration::from_secs(60), rt.acquire(&want))
        .await
        .expect("no wait at the cap of 1")
        .expect("acquired");
    assert_eq!(w.containers(), vec![c.id.clone()], "one container, reused");
    rt.discard(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_with_the_same_id_on_one_host_refuses_to_start() {
    let w = World::new().await.expect("world");
    let first = w.start(colony::Role::All).await.expect("colony");
    let second = w
        .start_with(colony::Role::Worker, w.settings.clone())
        .await
        .expect("spawned");
    let err = tokio::time::timeout(Duration::from_secs(60), second.task)
        .await
        .expect("the second worker stops by itself")
        .expect("join")
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("another worker on this host runs as") && text.contains("COLONY_WORKER_ID"),
        "{text}"
    );
    // The first one is unaffected.
    let id = w
        .submit_shell("echo still here", serde_json::json!({}))
        .await
        .expect("submit");
    assert_eq!(
        w.wait_final(id, 60).await.expect("final").state,
        TaskState::Done
    );
    first.stop().await.expect("stop");
    // And once it is gone, the id is free again.
    let again = w
        .start(colony::Role::All)
        .await
        .expect("restart with the same id");
    again.stop().await.expect("stop");
}

/// Waits (bounded) until `n` acquires are parked waiting for room: the fact
/// that they found none.
async fn wait_until_waiting(rt: &Runtime, n: usize) {
    for _ in 0..600 {
        if rt.metrics().waiting == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} acquires waiting, not {n}", rt.metrics().waiting);
}
