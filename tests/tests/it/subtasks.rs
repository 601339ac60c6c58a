//! One way to create a task: an agent's `task.create` goes through the same
//! admission as HTTP and NATS, with the same sentences, plus what only a
//! sub-task needs: its parent's role must list its role in `may_create`,
//! and sub-tasks nest and fan out only so far.

use colony::Role;
use colony_tests::World;
use serde_json::{json, Value};
use subjects::TaskState;
use uuid::Uuid;

fn role(name: &str, may_create: &str) -> String {
    format!(
        "name: {name}
model: scripted
system_prompt: You create work for others.
tools: [shell]
allowed_actions: [task.create]
may_create: [{may_create}]
max_turns: 12
"
    )
}

/// (outcome, detail) of every task.create audit row of `task`, oldest first.
async fn creations(w: &World, task: Uuid) -> Vec<(String, String)> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT outcome::text, coalesce(detail, '') FROM audit WHERE task_id = $1 AND action = 'task.create' ORDER BY id",
        &[&task],
    )
    .await
    .expect("audit")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_create_is_refused_with_the_sentence_http_gives() {
    let mut w = World::new().await.expect("world");
    let cases = [
        // (args, what the HTTP door answers for the same body, or None for
        // what only the agent door refuses)
        (json!({"role": "shell", "input": {"command": "id"}}), None),
        (
            json!({"role": "worker", "input": {"prompt": " "}}),
            Some(400),
        ),
        (
            json!({"role": "worker", "input": {"prompt": "x"}, "max_attempts": 99}),
            Some(400),
        ),
        (
            json!({"role": "worker", "input": {"prompt": "x"}, "timeout_secs": 0}),
            Some(400),
        ),
        (
            json!({"role": "worker", "input": {"command": "ls"}}),
            Some(400),
        ),
        (
            json!({"role": "wizard", "input": {"prompt": "x"}}),
            Some(422),
        ),
        (
            json!({"role": "worker", "input": {"prompt": "a\u{0}b"}}),
            Some(400),
        ),
        (
            json!({"role": "worker", "input": {"prompt": "x"}, "surprise": 1}),
            Some(400),
        ),
        (
            json!({"role": "worker", "input": {"prompt": "the real one"}}),
            Some(202),
        ),
    ];
    let mut steps: Vec<Value> = cases
        .iter()
        .map(|(args, _)| json!({"tool_calls": [{"name": "action_task_create", "arguments": args}]}))
        .collect();
    steps.push(json!({"text": "done"}));
    let scripts = json!({"scripts": {"create": steps}});
    w.use_roles(
        &[
            ("boss", &role("boss", "worker")),
            ("worker", &role("worker", "")),
        ],
        &scripts.to_string(),
    )
    .expect("roles");
    // Only the boss runs: the sub-task stays queued for nobody.
    w.settings.pools = vec!["boss".into()];
    let colony = w.start(Role::All).await.expect("colony");
    let id = w
        .submit(json!({"role": "boss", "input": {"prompt": "[script:create] hand out work"}}))
        .await
        .expect("submit");
    let task = w.wait_final(id, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);

    let audit = creations(&w, id).await;
    assert_eq!(audit.len(), cases.len(), "{audit:#?}");
    let mut same = 0;
    for ((args, http_status), (outcome, detail)) in cases.iter().zip(&audit) {
        match http_status {
            None => {
                assert_eq!(outcome, "denied", "{args}");
                assert_eq!(
                    detail,
                    "role boss may not create tasks of role shell; the roles it may create (may_create): worker"
                );
            }
            Some(202) => assert_eq!(outcome, "allowed", "{args}: {detail}"),
            Some(status) => {
                assert_eq!(outcome, "failed", "{args}: {detail}");
                // The HTTP door, given the same submission, says the same.
                let (s, v) = w.post_task(&args.to_string(), None).await.expect("post");
                assert_eq!(s, *status, "{args}: {v}");
                let http = v["error"].as_str().expect("error");
                // serde's position suffix differs between bytes and values.
                let cut = |t: &str| t.split(" at line ").next().unwrap_or(t).to_string();
                assert_eq!(cut(detail), cut(http), "{args}");
                same += 1;
            }
        }
    }
    println!(
        "task.create: {same} refusals with the HTTP sentence, 1 refused by may_create, 1 created"
    );
    // The one created is a sub-task of the run's task, in its tenant.
    let db = w.db().await.expect("db");
    let rows = db
        .query(
            "SELECT role, tenant, depth, input->>'prompt' FROM tasks WHERE parent_id = $1",
            &[&id],
        )
        .await
        .expect("children");
    assert_eq!(rows.len(), 1);
    let (r, t, d, p): (String, String, i32, String) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
    );
    assert_eq!(
        (r.as_str(), t.as_str(), d, p.as_str()),
        ("worker", "default", 1, "the real one")
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_tasks_nest_and_fan_out_only_so_far() {
    let mut w = World::new().await.expect("world");
    // A chain: each run creates one more of its own role; and a fan: one
    // run creates five.
    let fan: Vec<Value> = (1..=5)
        .map(|i| json!({"tool_calls": [{"name": "action_task_create", "arguments": {"role": "leaf", "input": {"prompt": format!("part {i}")}}}]}))
        .chain(std::iter::once(json!({"text": "fanned out"})))
        .collect();
    let scripts = json!({
        "default": "chain",
        "scripts": {
            "chain": [
                {"tool_calls": [{"name": "action_task_create", "arguments": {"role": "chain", "input": {"prompt": "go deeper"}}}]},
                {"text": "{last_tool}"}
            ],
            "fan": fan
        }
    });
    w.use_roles(
        &[
            ("chain", &role("chain", "chain")),
            ("fanner", &role("fanner", "leaf")),
            ("leaf", &role("leaf", "")),
        ],
        &scripts.to_string(),
    )
    .expect("roles");
    w.settings.max_task_depth = 2;
    w.settings.max_subtasks = 3;
    w.settings.pools = vec!["chain".into(), "fanner".into()];
    let colony = w.start(Role::All).await.expect("colony");

    let root = w
        .submit(json!({"role": "chain", "input": {"prompt": "go deeper"}}))
        .await
        .expect("submit");
    // Depth 0 → 1 → 2, and the run at depth 2 is refused a child.
    let db = w.db().await.expect("db");
    let mut deepest = None;
    for _ in 0..600 {
        let row = db
            .query_opt(
                "SELECT id FROM tasks WHERE role = 'chain' AND depth = 2 AND state IN ('done', 'failed')",
                &[],
            )
            .await
            .expect("query");
        if let Some(r) = row {
            deepest = Some(r.get::<_, Uuid>(0));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deepest = deepest.expect("the chain reached depth 2");
    let audit = creations(&w, deepest).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "failed");
    assert!(
        audit[0].1.ends_with("is 2 levels below the task a person submitted, and sub-tasks may go 2 levels deep at most; do the work in this task instead"),
        "{}",
        audit[0].1
    );
    let n: i64 = db
        .query_one("SELECT count(*) FROM tasks WHERE role = 'chain'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 3, "0, 1 and 2 levels deep, nothing further");
    let _ = root;

    let fanner = w
        .submit(json!({"role": "fanner", "input": {"prompt": "[script:fan] split it"}}))
        .await
        .expect("submit");
    let task = w.wait_final(fanner, 120).await.expect("final");
    assert_eq!(task.state, TaskState::Done, "{:?}", task.error);
    let audit = creations(&w, fanner).await;
    let outcomes: Vec<&str> = audit.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        outcomes,
        ["allowed", "allowed", "allowed", "failed", "failed"],
        "{audit:?}"
    );
    assert!(
        audit[3].1.ends_with(
            "has created 3 sub-tasks, the most one task may create; finish with the ones it has"
        ),
        "{}",
        audit[3].1
    );
    let children: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks WHERE parent_id = $1",
            &[&fanner],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(children, 3);
    colony.stop().await.expect("stop");
}
