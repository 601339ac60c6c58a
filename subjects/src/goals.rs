//! Goals and the self-organizing loop, on the wire.
//!
//! A person (or a program) submits a [`GoalSubmission`]; a planner employee
//! answers with a [`Plan`] through the `plan.submit` action; the plan's
//! sub-tasks run as tasks of the goal, each reviewed when its role asks for
//! it, the verdict coming through `review.submit` as a [`ReviewVerdict`];
//! a person answers an escalation with a [`GoalDecision`]. Clients see a
//! goal as a [`GoalView`] and follow it as [`GoalEvent`]s; the consumers of
//! the loop (planner, reviewer) tell each other what happened with
//! [`LoopMsg`]s, and whoever must hear of an outcome gets a
//! [`Notification`].
//!
//! What this module does not own: the goal state machine's rules
//! (`store::goal_state`) and the checks a plan must pass
//! (`admission::plan`); only the shapes and the names live here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::TaskState;

/// The states a goal moves through; the rules are in `store::goal_state`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(rename_all = "snake_case")]
pub enum GoalState {
    /// A planner run is making (or remaking) the plan.
    Planning,
    /// The plan is written and waits for a person's approval.
    AwaitingApproval,
    /// Sub-tasks are being worked on.
    Running,
    /// Every sub-task is done; a planner run writes the deliverable.
    Delivering,
    /// A person paused it: nothing new starts; runs in flight finish.
    Paused,
    /// It waits for a person (see [`GoalView::blocked`]).
    Blocked,
    Done,
    Failed,
    Cancelled,
}

impl GoalState {
    pub const ALL: [GoalState; 9] = [
        GoalState::Planning,
        GoalState::AwaitingApproval,
        GoalState::Running,
        GoalState::Delivering,
        GoalState::Paused,
        GoalState::Blocked,
        GoalState::Done,
        GoalState::Failed,
        GoalState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GoalState::Planning => "planning",
            GoalState::AwaitingApproval => "awaiting_approval",
            GoalState::Running => "running",
            GoalState::Delivering => "delivering",
            GoalState::Paused => "paused",
            GoalState::Blocked => "blocked",
            GoalState::Done => "done",
            GoalState::Failed => "failed",
            GoalState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<GoalState> {
        GoalState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            GoalState::Done | GoalState::Failed | GoalState::Cancelled
        )
    }
}

impl std::fmt::Display for GoalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a goal (or one of its sub-tasks) may spend; an absent field is
/// unlimited.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Model tokens over every run of the goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// US dollars over every run of the goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Seconds from the goal's submission to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_secs: Option<u64>,
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_none() && self.cost_usd.is_none() && self.wall_secs.is_none()
    }
}

/// A goal to reach: the body of `POST /v1/goals`, and the payload of a
/// message published to `colony.intake.<tenant>.goal`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GoalSubmission {
    /// Version of this shape; only 1 exists.
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    /// One line: what is wanted.
    pub title: String,
    /// Everything the planner should know.
    #[serde(default)]
    pub description: String,
    /// How a person will judge the result.
    pub acceptance: String,
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
    /// Higher goes first (0–9; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// The planner employee to plan it; one of the tenant's planners
    /// (hired when there is none) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<Uuid>,
    /// Wait for a person's approval of the plan before any sub-task runs.
    #[serde(default)]
    pub require_plan_approval: bool,
    /// A retry with the same key returns the goal the first call created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The body of `202 Accepted` from `POST /v1/goals`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct GoalAccepted {
    pub id: Uuid,
    pub state: GoalState,
    /// False when an earlier submission with the same key created it.
    pub created: bool,
}

/// A plan: the arguments of the `plan.submit` action. It is checked like
/// compiler input before anything runs (unique keys, dependencies that
/// exist and make no cycle, roles that may be planned, acceptance criteria
/// on every sub-task, sizes and budgets that fit the goal's).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// How the plan reaches the goal, in a few sentences.
    #[serde(default)]
    pub summary: String,
    /// Groups of sub-tasks (optional).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<PlanModule>,
    pub subtasks: Vec<PlanSubtask>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanModule {
    /// Unique within the plan: `[A-Za-z0-9_-]`, 1–64 characters.
    pub key: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanSubtask {
    /// Unique within the plan: `[A-Za-z0-9_-]`, 1–64 characters.
    pub key: String,
    pub title: String,
    /// What to do, for the employee who does it.
    pub description: String,
    /// The role that does it (one the planner may plan).
    pub role: String,
    /// How the reviewer (and the person) will judge it: at least one.
    pub acceptance: Vec<String>,
    /// Keys of the sub-tasks that must be done first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The module it belongs to, if the plan has modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// How big it is, 1–5 (default 1): scores are weighted by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u8>,
    /// What it alone may spend; within the goal's budget.
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
}

/// A reviewer's verdict: the arguments of the `review.submit` action.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReviewVerdict {
    /// The sub-task reviewed (the one this review run was given).
    pub task_id: Uuid,
    /// 1 (unusable) to 10 (exemplary).
    pub score: u8,
    /// True: the work is done. An approval needs at least the role's
    /// minimum score; a rejection needs at least one issue.
    pub approve: bool,
    /// What must change, one item each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
    /// The verdict in a few sentences.
    #[serde(default)]
    pub summary: String,
}

/// What a person decides for a goal waiting on them: the body of `POST
/// /v1/goals/{id}/decide`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GoalDecision {
    pub action: DecideAction,
    /// Why, and anything the next run should know (it is given to it).
    #[serde(default)]
    pub note: String,
    /// A new budget for the goal (with `retry` or `approve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecideAction {
    /// Accept the blocked sub-task's work as it is (it becomes done).
    Approve,
    /// Run the blocked sub-task again with fresh attempts and reworks (or
    /// plan again, when the plan was what failed).
    Retry,
    /// Make a new plan for what is not done yet.
    Replan,
    /// Give the goal up: it is cancelled.
    Cancel,
    /// Give the goal up as failed (it could not be done).
    Fail,
}

/// Why a goal waits for a person.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Blocked {
    pub kind: BlockKind,
    /// One sentence.
    pub reason: String,
    /// The sub-task it is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    /// The evidence: every plan error, every review round's issues, ….
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// The planner did not produce a valid plan in its tries.
    PlanRejected,
    /// A sub-task failed for good (attempts exhausted, or not retryable).
    TaskFailed,
    /// A sub-task's work was rejected more often than its role allows.
    ReworksExhausted,
    /// A review could not be had.
    ReviewFailed,
    /// The goal spent its budget.
    Budget,
    /// The patrol gave up recovering a sub-task.
    Stuck,
    /// The deliverable could not be written.
    DeliveryFailed,
}

/// A sub-task as part of a [`GoalView`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SubtaskView {
    pub id: Uuid,
    pub key: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    pub role: String,
    pub state: TaskState,
    pub attempt: u32,
    /// Times a reviewer sent it back.
    pub reworks: u32,
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<Uuid>,
    pub reviews: Vec<ReviewView>,
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// One review round of a sub-task.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReviewView {
    pub score: u8,
    pub approve: bool,
    pub issues: Vec<String>,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer_employee_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

/// How far a goal is, in sub-tasks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: u32,
    pub done: u32,
    pub running: u32,
    pub review: u32,
    pub waiting: u32,
    pub blocked: u32,
}

/// What a goal's runs spent so far.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq)]
pub struct Spend {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// A goal as a client sees it: the body of `GET /v1/goals/{id}`, and what
/// `colony goal submit --wait` prints.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct GoalView {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    pub id: Uuid,
    pub tenant: String,
    pub title: String,
    pub description: String,
    pub acceptance: String,
    pub budget: Budget,
    pub priority: u8,
    pub state: GoalState,
    pub require_plan_approval: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner_id: Option<Uuid>,
    /// The accepted plan.
    pub plan: Option<Plan>,
    pub subtasks: Vec<SubtaskView>,
    pub progress: Progress,
    pub spent: Spend,
    /// Why it waits for a person (state `blocked`).
    pub blocked: Option<Blocked>,
    /// The delivery run's summary and the files of the goal's workspace.
    pub deliverable: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
}

/// Something that happened to a goal: published on
/// `colony.events.<tenant>.<goal>.goal.<kind>` and kept in its history.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct GoalEvent {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    pub tenant: String,
    pub goal_id: Uuid,
    /// `state`, `plan`, `review`, `decision`, `patrol`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<GoalState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<GoalState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

/// What a task is for: the work itself, or one of the runs the loop needs.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A task a person submitted, or a sub-task of a goal's plan.
    #[default]
    Work,
    /// A planner's run making a goal's plan.
    Plan,
    /// A reviewer's run judging a sub-task's work.
    Review,
    /// A planner's run writing a goal's deliverable.
    Deliver,
}

impl TaskKind {
    pub const ALL: [TaskKind; 4] = [
        TaskKind::Work,
        TaskKind::Plan,
        TaskKind::Review,
        TaskKind::Deliver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Work => "work",
            TaskKind::Plan => "plan",
            TaskKind::Review => "review",
            TaskKind::Deliver => "deliver",
        }
    }

    pub fn parse(s: &str) -> Option<TaskKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_work(&self) -> bool {
        *self == TaskKind::Work
    }
}

/// A goal in a list: `GET /v1/goals`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct GoalSummary {
    pub id: Uuid,
    pub title: String,
    pub state: GoalState,
    pub priority: u8,
    pub progress: Progress,
    pub spent: Spend,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
}

/// What one consumer of the loop tells another (internal; on
/// `colony.loop.<consumer>.<kind>`, written with the transition that
/// causes it).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct LoopMsg {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    pub tenant: String,
    pub goal_id: Uuid,
    /// The task it is about (a planning, review or delivery run's task,
    /// or the sub-task to review).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    pub kind: LoopKind,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoopKind {
    /// planner: the goal needs a planning run.
    Plan,
    /// planner: a planning run ended.
    Planned,
    /// planner: every sub-task is done; the deliverable is next.
    Deliver,
    /// planner: the delivery run ended.
    Delivered,
    /// reviewer: a sub-task's work awaits review.
    Review,
    /// reviewer: a review run ended.
    Reviewed,
}

impl LoopKind {
    /// The consumer that handles it.
    pub fn consumer(self) -> &'static str {
        match self {
            LoopKind::Plan | LoopKind::Planned | LoopKind::Deliver | LoopKind::Delivered => {
                crate::consumer::PLANNER
            }
            LoopKind::Review | LoopKind::Reviewed => crate::consumer::REVIEWER,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoopKind::Plan => "plan",
            LoopKind::Planned => "planned",
            LoopKind::Deliver => "deliver",
            LoopKind::Delivered => "delivered",
            LoopKind::Review => "review",
            LoopKind::Reviewed => "reviewed",
        }
    }
}

/// Something a person (or their systems) must hear of: published on
/// `colony.notify.<tenant>.<kind>` and posted to the tenant's webhooks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Notification {
    #[serde(default = "crate::messages_v1")]
    pub v: u32,
    /// Unique: a webhook receiver deduplicates by it.
    pub id: Uuid,
    pub tenant: String,
    pub kind: NotifyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    /// One sentence.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    GoalDone,
    GoalFailed,
    GoalBlocked,
    ReviewRejected,
    PatrolAlert,
}

impl NotifyKind {
    pub const ALL: [NotifyKind; 5] = [
        NotifyKind::GoalDone,
        NotifyKind::GoalFailed,
        NotifyKind::GoalBlocked,
        NotifyKind::ReviewRejected,
        NotifyKind::PatrolAlert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::GoalDone => "goal_done",
            NotifyKind::GoalFailed => "goal_failed",
            NotifyKind::GoalBlocked => "goal_blocked",
            NotifyKind::ReviewRejected => "review_rejected",
            NotifyKind::PatrolAlert => "patrol_alert",
        }
    }

    pub fn parse(s: &str) -> Option<NotifyKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_only_three_are_final() {
        for s in GoalState::ALL {
            assert_eq!(GoalState::parse(s.as_str()), Some(s));
            let json = serde_json::to_value(s).expect("serialise");
            assert_eq!(json, serde_json::json!(s.as_str()));
        }
        let finals: Vec<_> = GoalState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [GoalState::Done, GoalState::Failed, GoalState::Cancelled]
        );
    }

    #[test]
    fn a_plan_refuses_unknown_fields() {
        let plan: Result<Plan, _> = serde_json::from_value(serde_json::json!({
            "subtasks": [{"key": "a", "title": "A", "description": "d", "role": "executor",
                          "acceptance": ["x"], "dependson": ["b"]}]
        }));
        let err = plan.expect_err("typo refused").to_string();
        assert!(err.contains("dependson"), "{err}");
    }

    #[test]
    fn loop_kinds_go_to_their_consumer() {
        assert_eq!(LoopKind::Planned.consumer(), "planner");
        assert_eq!(LoopKind::Reviewed.consumer(), "reviewer");
    }
}
