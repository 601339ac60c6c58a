//! The self-organizing loop end to end on real NATS, Postgres and Docker,
//! with the scripted provider's planner, executor and reviewer scripts: a
//! goal planned, its sub-tasks run in dependency order in the goal's shared
//! workspace, reviewed, sent back, escalated to a person and delivered.

use colony::Role;
use colony_tests::World;
use serde_json::{json, Value};
use subjects::goals::{BlockKind, GoalState, GoalView};
use subjects::TaskState;
use uuid::Uuid;

fn roles(max_reworks: u32, review: bool) -> Vec<(&'static str, String)> {
    let limits = "limits: { memory_mb: 256, cpus: 1.0, pids: 128, timeout_secs: 60 }";
    vec![
        (
            "planner",
            format!(
                "name: planner
description: plans goals
model: scripted
system_prompt: You plan goals.
tools: [read_file]
allowed_actions: [plan.submit, note]
may_create: [executor]
{limits}
max_turns: 10
"
            ),
        ),
        (
            "executor",
            format!(
                "name: executor
description: does one sub-task in the goal's workspace
model: scripted
system_prompt: You do the work.
tools: [shell, read_file, write_file]
allowed_actions: [note, review.submit]
review: {{ required: {review}, reviewer_role: reviewer, min_score: 7, max_reworks: {max_reworks} }}
{limits}
max_turns: 10
"
            ),
        ),
        (
            "reviewer",
            format!(
                "name: reviewer
description: checks work against its acceptance criteria
model: scripted
system_prompt: You review.
tools: [shell, read_file]
allowed_actions: [review.submit]
{limits}
max_turns: 10
"
            ),
        ),
    ]
}

pub(crate) fn use_roles(w: &mut World, max_reworks: u32, review: bool, scripts: Value) {
    let roles = roles(max_reworks, review);
    let refs: Vec<(&str, &str)> = roles.iter().map(|(n, y)| (*n, y.as_str())).collect();
    w.use_roles(&refs, &scripts.to_string()).expect("roles");
    w.settings.worker_slots = 4;
}

/// Every state change of the goal's work sub-tasks, in commit order:
/// (event id, sub-task key, to-state).
async fn work_history(w: &World, goal: Uuid) -> Vec<(i64, String, String)> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT e.id, t.subtask_key, e.to_state::text FROM events e JOIN tasks t ON t.id = e.task_id
         WHERE t.goal_id = $1 AND t.kind = 'work' ORDER BY e.id",
        &[&goal],
    )
    .await
    .expect("events")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The goal's own events: (kind, to-state, reason, detail).
async fn goal_events(
    w: &World,
    goal: Uuid,
) -> Vec<(String, Option<String>, Option<String>, Option<Value>)> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT kind, to_state::text, reason, detail FROM goal_events WHERE goal_id = $1 ORDER BY id",
        &[&goal],
    )
    .await
    .expect("goal events")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// The errors of each refused plan of the goal, oldest first.
async fn refused_plans(w: &World, goal: Uuid) -> Vec<Vec<String>> {
    goal_events(w, goal)
        .await
        .into_iter()
        .filter(|(k, _, r, _)| {
            k == "plan" && r.as_deref().is_some_and(|r| r.starts_with("plan refused"))
        })
        .map(|(_, _, _, d)| serde_json::from_value(d.unwrap_or_default()).unwrap_or_default())
        .collect()
}

/// Final, or waiting for a person.
fn settled(g: &GoalView) -> bool {
    g.state.is_final() || g.state == GoalState::Blocked
}

fn subtask<'a>(g: &'a GoalView, key: &str) -> &'a subjects::goals::SubtaskView {
    g.subtasks
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no sub-task {key} in {:?}", g.subtasks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_is_planned_run_in_dependency_order_reviewed_reworked_and_delivered() {
    let mut w = World::new().await.expect("world");
    use_roles(&mut w, 3, true, json!({"scripts": {}}));
    let colony = w.start(Role::All).await.expect("start");
    let id = w
        .submit_goal(json!({
            "title": "Landing page for the bakery",
            "description": "A one-page site. [script:strict]",
            "acceptance": "page.md holds every section with its text",
            "budget": {"tokens": 2000000, "cost_usd": 5.0}
        }))
        .await
        .expect("submit");
    let g = w.wait_goal(id, 180, settled).await.expect("goal");
    assert_eq!(g.state, GoalState::Done, "{g:?}");

    // The plan as the planner submitted it, every sub-task done after one
    // rework: the strict reviewer rejects each first round.
    let plan = g.plan.as_ref().expect("a plan");
    assert_eq!(plan.subtasks.len(), 3);
    assert_eq!(g.progress.total, 3);
    assert_eq!(g.progress.done, 3);
    for key in ["outline", "copy", "page"] {
        let s = subtask(&g, key);
        assert_eq!(s.state, TaskState::Done, "{s:?}");
        assert_eq!(s.reworks, 1, "{key}: one rework");
        assert_eq!(s.reviews.len(), 2, "{key}: {:?}", s.reviews);
        assert!(!s.reviews[0].approve && s.reviews[0].score == 4);
        assert_eq!(s.reviews[0].issues.len(), 2);
        assert!(s.reviews[1].approve && s.reviews[1].score == 8);
        assert_ne!(
            s.reviews[1].reviewer_employee_id, s.employee_id,
            "nobody reviews their own work"
        );
    }
    assert_eq!(subtask(&g, "page").depends_on, ["copy", "outline"]);

    // No dependent started before its dependencies were done.
    let history = work_history(&w, id).await;
    let first = |key: &str, to: &str| {
        history
            .iter()
            .find(|(_, k, s)| k == key && s == to)
            .map(|(i, _, _)| *i)
            .unwrap_or_else(|| panic!("{key} never {to}: {history:?}"))
    };
    let page_running = first("page", "running");
    for dep in ["outline", "copy"] {
        let done = history
            .iter()
            .filter(|(_, k, s)| k == dep && s == "done")
            .map(|(i, _, _)| *i)
            .max()
            .expect("done");
        assert!(
            done < page_running,
            "page ran (event {page_running}) before {dep} was done (event {done}): {history:?}"
        );
    }
    // The rework went through review and back.
    let page: Vec<&str> = history
        .iter()
        .filter(|(_, k, _)| k == "page")
        .map(|(_, _, s)| s.as_str())
        .collect();
    assert_eq!(
        page,
        [
            "pending", "queued", "running", "review", "rework", "queued", "running", "review",
            "done"
        ]
    );

    // The shared workspace: the dependent saw its dependencies' files, and
    // the deliverable lists them all.
    let page_result = subtask(&g, "page").result.clone().expect("result");
    let files: Vec<&str> = page_result["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(files, ["copy.md", "outline.md", "page.md"]);
    let deliverable = g.deliverable.clone().expect("deliverable");
    assert!(deliverable["summary"]
        .as_str()
        .expect("summary")
        .contains("Every sub-task is done"));
    assert_eq!(deliverable["files"].as_array().expect("files").len(), 3);
    assert!(g.spent.tokens > 0, "{:?}", g.spent);

    // The goal's events tell the story in order.
    let states: Vec<String> = goal_events(&w, id)
        .await
        .into_iter()
        .filter_map(|(k, to, _, _)| if k == "state" { to } else { None })
        .collect();
    assert_eq!(states, ["running", "delivering", "done"]);

    // A watcher that comes late gets the history, then the end.
    let body = w
        .http()
        .get(format!("{}/v1/goals/{id}/events", w.url()))
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("body");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.last(), Some(&"end"), "{body}");
    assert!(events.iter().filter(|e| **e == "task").count() >= 9 * 3);
    assert!(events.contains(&"goal"));

    // Scores: approvals earned, rejections cost, never the other way.
    let db = w.db().await.expect("db");
    let rows = db
        .query(
            "SELECT s.delta, r.verdict::text FROM score_events s JOIN reviews r ON r.id = s.review_id
             WHERE r.task_id IN (SELECT id FROM tasks WHERE goal_id = $1)",
            &[&id],
        )
        .await
        .expect("scores");
    assert_eq!(rows.len(), 6, "one ledger row per verdict");
    for r in &rows {
        let (delta, verdict): (i32, String) = (r.get(0), r.get(1));
        match verdict.as_str() {
            "approved" => assert!(delta >= 0, "an approval cost {delta}"),
            _ => assert!(delta <= 0, "a rejection earned {delta}"),
        }
    }
    let board: Value = w
        .http()
        .get(format!("{}/v1/leaderboard?role=executor", w.url()))
        .send()
        .await
        .expect("leaderboard")
        .json()
        .await
        .expect("json");
    let top = &board.as_array().expect("a list")[0];
    assert_eq!(top["role"], "executor");
    assert_eq!(top["approved"], 3);
    assert_eq!(top["rejected"], 3);
    println!(
        "goal: 3 sub-tasks, 6 reviews, 3 reworks, {} tokens; page ran at event {page_running}",
        g.spent.tokens
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_plan_is_refused_with_every_error_and_the_fixed_one_accepted() {
    let mut w = World::new().await.expect("world");
    use_roles(&mut w, 3, true, json!({"scripts": {}}));
    let colony = w.start(Role::All).await.expect("start");
    let id = w
        .submit_goal(json!({
            "title": "Plan it twice",
            "description": "[script:replan]",
            "acceptance": "a valid plan",
            "require_plan_approval": true
        }))
        .await
        .expect("submit");
    let g = w
        .wait_goal(id, 60, |g| g.state != GoalState::Planning)
        .await
        .expect("planned");
    assert_eq!(g.state, GoalState::AwaitingApproval, "{:?}", g.blocked);
    assert_eq!(g.plan.as_ref().map(|p| p.subtasks.len()), Some(3));
    // Nothing runs before a person approves.
    assert!(
        g.subtasks.iter().all(|s| s.state == TaskState::Pending),
        "{:?}",
        g.subtasks
    );
    let refused = refused_plans(&w, id).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let errors = refused[0].join("\n");
    for says in [
        "the dependencies make a cycle: a → b → a",
        "depends on nowhere, which the plan does not have",
        "role \"wizard\" may not be planned",
        "sub-task e has no acceptance criteria",
    ] {
        assert!(errors.contains(says), "{says:?} missing from {errors}");
    }
    // The planner's run got the same list as the action's answer, audited.
    let db = w.db().await.expect("db");
    let audited: Vec<String> = db
        .query(
            "SELECT coalesce(detail, '') FROM audit WHERE action = 'plan.submit' ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(audited[0].contains("a → b → a"), "{audited:?}");

    // A person asks for another plan: the open sub-tasks are cancelled and
    // the new plan may use their keys again.
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/replan", w.url()))
        .json(&json!({"note": "plan it again"}))
        .send()
        .await
        .expect("replan");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let g = w
        .wait_goal(id, 60, |g| {
            g.state == GoalState::AwaitingApproval && g.subtasks.len() == 6
        })
        .await
        .expect("planned again");
    let cancelled = g
        .subtasks
        .iter()
        .filter(|s| s.state == TaskState::Cancelled)
        .count();
    let pending: Vec<&str> = g
        .subtasks
        .iter()
        .filter(|s| s.state == TaskState::Pending)
        .map(|s| s.key.as_str())
        .collect();
    assert_eq!(cancelled, 3, "{:?}", g.subtasks);
    assert_eq!(pending.len(), 3, "the same keys again: {pending:?}");
    // A person cancels it: the goal and its open tasks are cancelled.
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/cancel", w.url()))
        .json(&json!({"note": "changed my mind"}))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 200);
    let g: GoalView = r.json().await.expect("view");
    assert_eq!(g.state, GoalState::Cancelled);
    assert!(
        g.subtasks.iter().all(|s| s.state == TaskState::Cancelled),
        "{:?}",
        g.subtasks
    );
    // A final goal takes no more actions.
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/approve", w.url()))
        .send()
        .await
        .expect("approve");
    assert_eq!(r.status(), 409);
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_that_never_gets_it_right_blocks_the_goal_with_the_reasons() {
    let mut w = World::new().await.expect("world");
    use_roles(&mut w, 3, true, json!({"scripts": {}}));
    let colony = w.start(Role::All).await.expect("start");
    // Over NATS, as the tenant's own client: the same rules as HTTP.
    let tenant = w.nats_as("tenant-default").await.expect("tenant client");
    let js = async_nats::jetstream::new(tenant);
    js.publish(
        subjects::subject::intake_goal("default"),
        json!({"title": "Never right", "description": "[script:stubborn]", "acceptance": "a valid plan",
               "idempotency_key": "stubborn-1"})
        .to_string()
        .into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let store = w.store(1);
    let id = loop {
        let list = store.list_goals("default", None, 10).await.expect("list");
        if let Some(g) = list.first() {
            break g.id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let g = w
        .wait_goal(id, 60, |g| g.state != GoalState::Planning)
        .await
        .expect("blocked");
    assert_eq!(g.state, GoalState::Blocked);
    let blocked = g.blocked.expect("why");
    assert_eq!(blocked.kind, BlockKind::PlanRejected);
    assert!(
        blocked.reason.contains("refused 3 times"),
        "{}",
        blocked.reason
    );
    assert!(
        blocked.details.iter().any(|d| d.contains("cycle")),
        "{:?}",
        blocked.details
    );
    assert!(g.plan.is_none() && g.subtasks.is_empty());
    let refusals = refused_plans(&w, id).await.len();
    assert_eq!(refusals, 3, "two re-asks after the first refusal");
    println!(
        "stubborn planner: {refusals} refused plans, then blocked: {}",
        blocked.reason
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rework_cap_escalates_to_a_person_whose_decision_resumes_the_goal() {
    let mut w = World::new().await.expect("world");
    let plan = json!({"subtasks": [{"key": "only", "title": "The only sub-task", "role": "executor",
        "description": "Write only.md.", "acceptance": ["only.md exists"]}]});
    let reviewed = "{field:\"task_id\": \"}";
    use_roles(
        &mut w,
        1,
        true,
        json!({"scripts": {
            "capped.plan": [
                {"tool_calls": [{"name": "action_plan_submit", "arguments": plan}]},
                {"text": "planned: {last_tool}"}
            ],
            "capped.work": [
                // A work run is no review run: refused, audited.
                {"tool_calls": [{"name": "action_review_submit", "arguments": {"task_id": Uuid::nil(), "score": 10, "approve": true}}]},
                {"tool_calls": [{"name": "write_file", "arguments": {"path": "only.md", "content": "only\n"}}]},
                {"text": "wrote only.md"}
            ],
            "capped.review": [
                // A verdict for a task this run was not given: refused.
                {"tool_calls": [{"name": "action_review_submit", "arguments": {"task_id": Uuid::now_v7(), "score": 9, "approve": true}}]},
                {"tool_calls": [{"name": "action_review_submit", "arguments": {"task_id": reviewed, "score": 3, "approve": false, "issues": ["only.md is too short"]}}]},
                {"text": "rejected: {last_tool}"}
            ]
        }}),
    );
    let colony = w.start(Role::All).await.expect("start");
    let id = w
        .submit_goal(
            json!({"title": "Capped", "description": "[script:capped]", "acceptance": "only.md"}),
        )
        .await
        .expect("submit");
    let g = w.wait_goal(id, 120, settled).await.expect("escalated");
    assert_eq!(g.state, GoalState::Blocked, "{g:?}");
    let blocked = g.blocked.clone().expect("why");
    assert_eq!(blocked.kind, BlockKind::ReworksExhausted, "{blocked:?}");
    let only = subtask(&g, "only");
    assert_eq!(only.reviews.len(), 2, "the first round and one rework");
    assert!(only.reviews.iter().all(|r| !r.approve));
    assert_eq!(
        blocked
            .details
            .iter()
            .filter(|d| d.contains("only.md is too short"))
            .count(),
        2,
        "every round's issues: {:?}",
        blocked.details
    );

    // The refused verdicts are in the audit trail, with why; none failed.
    let db = w.db().await.expect("db");
    let failed: i64 = db
        .query_one("SELECT count(*) FROM audit WHERE outcome = 'failed'", &[])
        .await
        .expect("audit")
        .get(0);
    assert_eq!(failed, 0);
    let denied: Vec<String> = db
        .query(
            "SELECT coalesce(detail, '') FROM audit WHERE action = 'review.submit' AND outcome = 'denied' ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        denied
            .iter()
            .any(|d| d.contains("a work run, not a review run")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|d| d.contains("only for the task a run was given")),
        "{denied:?}"
    );

    // A person approves the work anyway: the sub-task is done, the goal
    // delivered.
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/decide", w.url()))
        .json(&json!({"action": "approve", "note": "good enough"}))
        .send()
        .await
        .expect("decide");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let g = w
        .wait_goal(id, 60, |g| g.state.is_final())
        .await
        .expect("done");
    assert_eq!(g.state, GoalState::Done, "{g:?}");
    assert_eq!(subtask(&g, "only").state, TaskState::Done);

    // A review run by the employee who did the work is refused, whatever
    // it says: made up here on the finished goal's rows (a live one is
    // never dispatched that way).
    let row = db
        .query_one(
            "SELECT r.id, w.id, w.employee_id, split_part(r.idempotency_key, ':', 3)::int
             FROM tasks r JOIN tasks w ON w.id = r.reviews_task_id
             WHERE r.goal_id = $1 AND r.kind = 'review' LIMIT 1",
            &[&id],
        )
        .await
        .expect("a review");
    let (review, work, worker, round): (Uuid, Uuid, Option<Uuid>, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let run = Uuid::now_v7();
    db.batch_execute(&format!(
        "UPDATE tasks SET state = 'review', reworks = {round} WHERE id = '{work}';
         UPDATE tasks SET state = 'running', employee_id = '{}' WHERE id = '{review}';
         INSERT INTO runs (id, task_id, attempt, worker_id, state, started_at)
              VALUES ('{run}', '{review}', 9, 'test', 'running', now());",
        worker.expect("an employee")
    ))
    .await
    .expect("made up");
    let refused = w
        .store(1)
        .submit_verdict(
            &store::plans::RunRef {
                tenant: "default".into(),
                task_id: review,
                run_id: run,
                employee_id: worker,
            },
            &subjects::goals::ReviewVerdict {
                task_id: work,
                score: 10,
                approve: true,
                issues: vec![],
                summary: "my own work is great".into(),
            },
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(&refused, store::Error::Refused { status: 403, reason } if reason.contains("nobody reviews their own work")),
        "{refused}"
    );
    // Nor may a review run of an earlier round judge the rework after it.
    db.execute(
        "UPDATE tasks SET reworks = reworks + 1 WHERE id = $1",
        &[&work],
    )
    .await
    .expect("a round later");
    let stale = w
        .store(1)
        .submit_verdict(
            &store::plans::RunRef {
                tenant: "default".into(),
                task_id: review,
                run_id: run,
                employee_id: Some(Uuid::now_v7()),
            },
            &subjects::goals::ReviewVerdict {
                task_id: work,
                score: 2,
                approve: false,
                issues: vec!["judged unseen".into()],
                summary: String::new(),
            },
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(&stale, store::Error::Refused { status: 403, reason } if reason.contains("an earlier round")),
        "{stale}"
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goals_refuse_bad_input_with_one_sentence() {
    let w = World::new().await.expect("world");
    let colony = w.start(Role::Ingress).await.expect("start");
    let cases = [
        (json!({"title": "t"}), 400, "missing field `acceptance`"),
        (
            json!({"title": "", "acceptance": "a"}),
            400,
            "title must be",
        ),
        (
            json!({"title": "t", "acceptance": "a", "budget": {"tokens": 0}}),
            400,
            "budget.tokens is 0",
        ),
        (
            json!({"title": "t", "acceptance": "a", "priority": 12}),
            400,
            "priority is 12",
        ),
        (
            json!({"title": "t", "acceptance": "a", "planner": Uuid::now_v7()}),
            422,
            "is not one of this tenant's employees",
        ),
    ];
    for (body, status, says) in cases {
        let r = w
            .http()
            .post(format!("{}/v1/goals", w.url()))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), status, "{body}");
        let v: Value = r.json().await.expect("json");
        assert!(
            v["error"].as_str().expect("error").contains(says),
            "{body}: {v}"
        );
    }
    for (path, says) in [
        ("/v1/goals?state=sleeping", "not a goal state"),
        ("/v1/goals?limit=0", "limit is 0"),
        ("/v1/goals/not-a-uuid", "is not a goal id"),
    ] {
        let r = w
            .http()
            .get(format!("{}{path}", w.url()))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.expect("json");
        assert!(
            v["error"].as_str().expect("error").contains(says),
            "{path}: {v}"
        );
    }
    let missing = Uuid::now_v7();
    let r = w
        .http()
        .post(format!("{}/v1/goals/{missing}/decide", w.url()))
        .json(&json!({"action": "shrug"}))
        .send()
        .await
        .expect("decide");
    assert_eq!(r.status(), 400);
    // Nothing was half-written.
    assert!(w
        .store(1)
        .list_goals("default", None, 10)
        .await
        .expect("list")
        .is_empty());
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_whose_spend_crosses_its_budget_stops_and_waits_for_a_person() {
    let mut w = World::new().await.expect("world");
    use_roles(&mut w, 3, false, json!({"scripts": {}}));
    let colony = w.start(Role::All).await.expect("start");
    // The planning run alone spends a few thousand tokens.
    let id = w
        .submit_goal(json!({"title": "Thrifty", "description": "Do it cheaply.",
            "acceptance": "page.md", "budget": {"tokens": 1500}}))
        .await
        .expect("submit");
    let g = w.wait_goal(id, 60, settled).await.expect("blocked");
    assert_eq!(g.state, GoalState::Blocked, "{g:?}");
    let blocked = g.blocked.clone().expect("why");
    assert_eq!(blocked.kind, BlockKind::Budget, "{blocked:?}");
    assert!(g.spent.tokens >= 1500, "{:?}", g.spent);
    assert!(
        blocked.reason.contains("reaching its budget"),
        "{}",
        blocked.reason
    );
    // Nothing starts once it waits (runs already in flight finish within
    // their role's per-run quota).
    let db = w.db().await.expect("db");
    let after: i64 = db
        .query_one(
            "SELECT count(*) FROM runs r JOIN tasks t ON t.id = r.task_id WHERE t.goal_id = $1
               AND r.started_at > (SELECT at FROM goal_events WHERE goal_id = $1 AND to_state = 'blocked' LIMIT 1)",
            &[&id],
        )
        .await
        .expect("runs")
        .get(0);
    assert_eq!(after, 0, "no run started past the budget");
    // Crossed while planning (no sub-tasks yet) or while the first two ran:
    // either way the dependent has not started.
    if let Some(page) = g.subtasks.iter().find(|s| s.key == "page") {
        assert_eq!(
            page.state,
            TaskState::Pending,
            "the dependent waits: {page:?}"
        );
    }
    // Retrying without more money is refused with why.
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/decide", w.url()))
        .json(&json!({"action": "retry"}))
        .send()
        .await
        .expect("decide");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("decide with a larger budget"),
        "{v}"
    );
    // A person raises the budget: the goal goes on to done.
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/decide", w.url()))
        .json(&json!({"action": "retry", "note": "worth it", "budget": {"tokens": 5000000}}))
        .send()
        .await
        .expect("decide");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let g = w.wait_goal(id, 120, settled).await.expect("done");
    assert_eq!(g.state, GoalState::Done, "{g:?}");
    println!(
        "budget: blocked at {} of 1500 tokens, done at {} after a raise",
        blocked.reason, g.spent.tokens
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_ready_sub_tasks_and_three_worker_processes_run_each_exactly_once() {
    const N: usize = 100;
    let mut w = World::new().await.expect("world");
    let subtasks: Vec<Value> = (0..N)
        .map(|i| {
            json!({"key": format!("s{i:03}"), "title": format!("part {i}"), "role": "executor",
                   "description": "Say done.", "acceptance": ["it says done"]})
        })
        .collect();
    let dir = {
        use_roles(
            &mut w,
            3,
            false,
            json!({"scripts": {
                "many.plan": [
                    {"tool_calls": [{"name": "action_plan_submit", "arguments": {"subtasks": subtasks}}]},
                    {"text": "planned"}
                ],
                "many.work": [{"text": "done with {field:Your sub-task (}"}]
            }}),
        );
        w.settings.roles_dir.clone().expect("roles dir")
    };
    w.settings.goal_max_subtasks = N as u32;
    // Everything but the workers in this process; three worker processes.
    let mut parts = Vec::new();
    for role in [Role::Ingress, Role::Relay, Role::Planner, Role::Reviewer] {
        parts.push(w.start(role).await.expect("start"));
    }
    let scripts = w.settings.scripts.clone().expect("scripts");
    let env = [
        ("COLONY_ROLES_DIR", dir.to_str().expect("utf-8")),
        ("COLONY_SCRIPTS", scripts.to_str().expect("utf-8")),
        ("COLONY_GOAL_MAX_SUBTASKS", "100"),
        ("COLONY_WORKER_SLOTS", "4"),
        // The race is between claims, not recoveries: on a loaded machine
        // the harness's 1 s stale limit would let a slow worker's run be
        // taken over (a second run, by design).
        ("COLONY_STALE_AFTER_MS", "15000"),
        ("COLONY_ACK_WAIT_MS", "30000"),
    ];
    let mut workers: Vec<std::process::Child> = (0..3)
        .map(|i| {
            w.spawn_process_env("worker", &format!("race-{}-{i}", w.id), &env)
                .expect("worker")
        })
        .collect();
    let id = w
        .submit_goal(
            json!({"title": "Many", "description": "[script:many]", "acceptance": "all done"}),
        )
        .await
        .expect("submit");
    let g = w.wait_goal(id, 300, settled).await;
    for p in &mut workers {
        let _ = p.kill();
        let _ = p.wait();
    }
    let g = g.expect("goal");
    assert_eq!(g.state, GoalState::Done, "{:?}", g.blocked);
    assert_eq!(g.progress.done as usize, N);

    let db = w.db().await.expect("db");
    let rows = db
        .query(
            "SELECT t.subtask_key,
                    (SELECT count(*) FROM runs r WHERE r.task_id = t.id),
                    (SELECT count(*) FROM events e WHERE e.task_id = t.id AND e.to_state = 'running'),
                    (SELECT count(*) FROM events e WHERE e.task_id = t.id AND e.to_state = 'done')
             FROM tasks t WHERE t.goal_id = $1 AND t.kind = 'work' ORDER BY t.subtask_key",
            &[&id],
        )
        .await
        .expect("counts");
    assert_eq!(rows.len(), N);
    for r in &rows {
        let (key, runs, running, done): (String, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!(
            (runs, running, done),
            (1, 1, 1),
            "{key}: runs, running, done"
        );
    }
    let by_worker: Vec<(String, i64)> = db
        .query(
            "SELECT r.worker_id, count(*) FROM runs r JOIN tasks t ON t.id = r.task_id
             WHERE t.goal_id = $1 AND t.kind = 'work' GROUP BY 1 ORDER BY 1",
            &[&id],
        )
        .await
        .expect("by worker")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(by_worker.len() >= 2, "the work was shared: {by_worker:?}");
    println!("race: {N} sub-tasks, each claimed and done once; runs by worker: {by_worker:?}");
    for p in parts {
        p.stop().await.expect("stop");
    }
}

/// `colony goal …` as a person runs it; (stdout, stderr) of a success.
async fn cli(w: &World, args: &[&str]) -> (String, String) {
    let (ok, stdout, stderr) = w.cli("goal", args).await;
    assert!(ok, "colony goal: {stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_a_goal_waits_for_it_then_watches_and_lists_it() {
    let mut w = World::new().await.expect("world");
    use_roles(&mut w, 3, true, json!({"scripts": {}}));
    let colony = w.start(Role::All).await.expect("start");
    let (out, _) = cli(
        &w,
        &[
            "submit",
            "--title",
            "Landing page for the bakery",
            "--description",
            "Sections, copy, page.",
            "--acceptance",
            "page.md holds every section",
            "--budget-usd",
            "2",
            "--wait",
        ],
    )
    .await;
    let g: GoalView = serde_json::from_str(&out).expect("the goal as JSON");
    assert_eq!(g.state, GoalState::Done, "{out}");
    assert_eq!(g.subtasks.len(), 3);
    assert!(g
        .subtasks
        .iter()
        .all(|s| s.reviews.len() == 1 && s.reviews[0].approve));
    assert!(g.deliverable.is_some());
    let (out, lines) = cli(&w, &["watch", &g.id.to_string()]).await;
    let again: GoalView = serde_json::from_str(&out).expect("the final view");
    assert_eq!(again.id, g.id);
    assert!(
        lines.lines().any(|l| l.contains("goal state → done")),
        "{lines}"
    );
    assert!(
        lines.lines().filter(|l| l.contains(" task ")).count() >= 12,
        "{lines}"
    );
    let (out, _) = cli(&w, &["list", "--state", "done"]).await;
    let list: Vec<Value> = serde_json::from_str(&out).expect("a list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["progress"]["done"], 3);

    // On a terminal (a pty from script(1)), --wait draws the live bar:
    // sub-tasks done of total, the state and the spend.
    let bin = World::colony_bin().expect("colony binary");
    let command = format!(
        "{} goal submit --title 'On a terminal' --acceptance 'page.md' --wait",
        bin.display()
    );
    let (url, key) = (w.url(), w.operator_key.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env("COLONY_URL", url)
            .env("COLONY_API_KEY", key)
            .env("NO_PROXY", "127.0.0.1")
            .env("TERM", "xterm")
            .output()
    })
    .await
    .expect("join")
    .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("sub-tasks ·"),
        "no progress bar on a terminal: {text}"
    );
    assert!(text.contains("\"state\": \"done\""), "{text}");
    colony.stop().await.expect("stop");
}

fn volume_exists(goal: Uuid) -> bool {
    std::process::Command::new("docker")
        .args(["volume", "inspect", &runtime::spec::goal_volume(goal)])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_goals_workspace_stays_for_its_retention_then_goes() {
    let mut w = World::new().await.expect("world");
    use_roles(&mut w, 3, false, json!({"scripts": {}}));
    w.settings.goal_retention_secs = 3600;
    let colony = w.start(Role::All).await.expect("start");
    let id = w
        .submit_goal(json!({"title": "Keep my files", "acceptance": "page.md"}))
        .await
        .expect("submit");
    let g = w.wait_goal(id, 120, settled).await.expect("done");
    assert_eq!(g.state, GoalState::Done, "{g:?}");
    assert!(volume_exists(id), "the workspace outlives the goal's end");
    // An hour later (the goal's end moved back, not the clock): it goes.
    let db = w.db().await.expect("db");
    db.execute(
        "UPDATE goals SET updated_at = now() - interval '2 hours' WHERE id = $1",
        &[&id],
    )
    .await
    .expect("age it");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while volume_exists(id) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(!volume_exists(id), "removed after its retention");
    let removed: Option<time::OffsetDateTime> = db
        .query_one(
            "SELECT workspace_removed_at FROM goals WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row")
        .get(0);
    assert!(removed.is_some());
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_goal_starts_nothing_until_it_is_resumed() {
    let mut w = World::new().await.expect("world");
    use_roles(&mut w, 3, true, json!({"scripts": {}}));
    let colony = w.start(Role::All).await.expect("start");
    let id = w
        .submit_goal(
            json!({"title": "Pause me", "description": "[script:strict]", "acceptance": "page.md"}),
        )
        .await
        .expect("submit");
    w.wait_goal(id, 60, |g| g.state == GoalState::Running)
        .await
        .expect("running");
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/pause", w.url()))
        .send()
        .await
        .expect("pause");
    assert_eq!(r.status(), 200);
    // What was running finishes; nothing new starts while it is paused.
    let db = w.db().await.expect("db");
    let settled_at = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let running: i64 = db
            .query_one(
                "SELECT count(*) FROM tasks WHERE goal_id = $1 AND state IN ('running', 'queued')",
                &[&id],
            )
            .await
            .expect("count")
            .get(0);
        if running == 0 || std::time::Instant::now() > settled_at {
            assert_eq!(running, 0, "runs in flight end, queued ones wait");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let started_after: i64 = db
        .query_one(
            "SELECT count(*) FROM runs r JOIN tasks t ON t.id = r.task_id WHERE t.goal_id = $1
               AND r.started_at > (SELECT max(at) FROM goal_events WHERE goal_id = $1 AND to_state = 'paused')",
            &[&id],
        )
        .await
        .expect("runs")
        .get(0);
    assert_eq!(started_after, 0, "no run started while paused");
    let g = w.get_goal(id).await.expect("goal");
    assert_eq!(g.state, GoalState::Paused);
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/resume", w.url()))
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status(), 200);
    let g = w.wait_goal(id, 120, settled).await.expect("done");
    assert_eq!(g.state, GoalState::Done, "{g:?}");
    assert!(
        g.subtasks.iter().all(|s| s.reworks == 1),
        "{:?}",
        g.subtasks
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_past_its_wall_clock_budget_waits_for_a_person() {
    let mut w = World::new().await.expect("world");
    // Reviewed and reworked, the goal takes a few seconds: past its one.
    use_roles(&mut w, 3, true, json!({"scripts": {}}));
    w.settings.patrol_interval_ms = 200;
    let colony = w.start(Role::All).await.expect("start");
    let id = w
        .submit_goal(
            json!({"title": "In a hurry", "description": "[script:strict]",
                            "acceptance": "page.md", "budget": {"wall_secs": 1}}),
        )
        .await
        .expect("submit");
    let g = w.wait_goal(id, 60, settled).await.expect("blocked");
    assert_eq!(g.state, GoalState::Blocked, "{g:?}");
    let blocked = g.blocked.clone().expect("why");
    assert_eq!(blocked.kind, BlockKind::Budget);
    assert!(
        blocked.reason.contains("past its wall-clock budget of 1 s"),
        "{}",
        blocked.reason
    );
    // More time, and it goes on to done.
    let r = w
        .http()
        .post(format!("{}/v1/goals/{id}/decide", w.url()))
        .json(&json!({"action": "retry", "budget": {"wall_secs": 600}}))
        .send()
        .await
        .expect("decide");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let g = w.wait_goal(id, 120, settled).await.expect("done");
    assert_eq!(g.state, GoalState::Done, "{g:?}");
    colony.stop().await.expect("stop");
}
