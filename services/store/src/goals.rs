//! Goals: created, read, listed, followed, and moved by people (pause,
//! resume, approve, replan, cancel, decide).
//!
//! Every change to a goal or its tasks runs in a [`LoopTx`]: it locks the
//! goal's row first (then any task rows: always in that order, so two
//! changes of one goal never deadlock), asks the state machines
//! ([`crate::goal_state`], [`crate::state`]) before each write, writes the
//! history rows, and gathers the outbox rows that announce the change, all
//! committed together. The dependency graph ([`crate::graph`]), planning
//! and delivery ([`crate::plans`]) and reviews ([`crate::verdicts`]) are
//! built on it.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use subjects::goals::{
    BlockKind, Blocked, Budget, DecideAction, GoalDecision, GoalEvent, GoalState, GoalSummary,
    GoalView, LoopKind, LoopMsg, Notification, NotifyKind, Plan, Progress, ReviewView, Spend,
    SubtaskView, TaskKind,
};
use subjects::{subject, TaskState, TaskView};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::tasks::{
    event_msg, insert_history, insert_outbox, result_msg, row_to_task, state_event, work_msg,
    TaskRow, COLS,
};
use crate::{goal_state, state, Error, OutboxMsg, Result, Store};

/// The columns of a goal row, in [`row_to_goal`]'s order.
pub(crate) const GOAL_COLS: &str = "id, tenant, title, description, acceptance, budget, priority, planner_id, \
     require_plan_approval, state::text, plan, plan_task_id, plan_rejections, plan_errors, plan_note, \
     blocked, deliver_task_id, deliverable, spent_tokens, spent_cost_usd, created_at, updated_at";

/// A goal as stored.
#[derive(Clone, Debug)]
pub struct GoalRow {
    pub id: Uuid,
    pub tenant: String,
    pub title: String,
    pub description: String,
    pub acceptance: String,
    pub budget: Budget,
    pub priority: u8,
    pub planner_id: Option<Uuid>,
    pub require_plan_approval: bool,
    pub state: GoalState,
    pub plan: Option<Plan>,
    pub plan_task_id: Option<Uuid>,
    pub plan_rejections: u32,
    pub plan_errors: Vec<String>,
    pub plan_note: Option<String>,
    pub blocked: Option<Blocked>,
    pub deliver_task_id: Option<Uuid>,
    pub deliverable: Option<Value>,
    pub spent: Spend,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl GoalRow {
    pub fn brief(&self) -> crate::briefs::GoalBrief<'_> {
        crate::briefs::GoalBrief {
            title: &self.title,
            description: &self.description,
            acceptance: &self.acceptance,
            budget: self.budget,
        }
    }

    /// Planning, running, paused or delivering: it can spend.
    pub fn at_work(&self) -> bool {
        matches!(
            self.state,
            GoalState::Planning | GoalState::Running | GoalState::Paused | GoalState::Delivering
        )
    }

    /// Nothing may start: a person paused it, or its budget is spent.
    pub fn stopped(&self) -> bool {
        self.state == GoalState::Paused
            || (self.state == GoalState::Blocked
                && self
                    .blocked
                    .as_ref()
                    .is_some_and(|b| b.kind == BlockKind::Budget))
    }

    /// New sub-tasks are not started: the goal is paused, over its budget,
    /// or not yet approved.
    pub fn holds_work(&self) -> bool {
        match self.state {
            GoalState::Paused | GoalState::AwaitingApproval | GoalState::Planning => true,
            GoalState::Blocked => self
                .blocked
                .as_ref()
                .is_some_and(|b| b.kind == BlockKind::Budget),
            _ => false,
        }
    }
}

fn json_of<T: serde::de::DeserializeOwned>(
    v: Option<Value>,
    what: &str,
    id: Uuid,
) -> Result<Option<T>> {
    v.map(|v| {
        serde_json::from_value(v).map_err(|e| {
            Error::Invalid(format!(
                "goal {id} has {what} this version cannot read: {e}"
            ))
        })
    })
    .transpose()
}

pub(crate) fn row_to_goal(r: &Row) -> Result<GoalRow> {
    let id: Uuid = r.get(0);
    let state: String = r.get(9);
    let state = GoalState::parse(&state)
        .ok_or_else(|| Error::Invalid(format!("goal {id} has unknown state {state:?}")))?;
    Ok(GoalRow {
        id,
        tenant: r.get(1),
        title: r.get(2),
        description: r.get(3),
        acceptance: r.get(4),
        budget: json_of(Some(r.get(5)), "a budget", id)?.unwrap_or_default(),
        priority: r.get::<_, i16>(6).clamp(0, 9) as u8,
        planner_id: r.get(7),
        require_plan_approval: r.get(8),
        state,
        plan: json_of(r.get(10), "a plan", id)?,
        plan_task_id: r.get(11),
        plan_rejections: r.get::<_, i32>(12).max(0) as u32,
        plan_errors: json_of(r.get(13), "plan errors", id)?.unwrap_or_default(),
        plan_note: r.get(14),
        blocked: json_of(r.get(15), "a block", id)?,
        deliver_task_id: r.get(16),
        deliverable: r.get(17),
        spent: Spend {
            tokens: r.get::<_, i64>(18).max(0) as u64,
            cost_usd: r.get::<_, f64>(19).max(0.0),
        },
        created_at: r.get(20),
        updated_at: r.get(21),
    })
}

/// The extra columns of a task of a goal, after [`COLS`].
pub(crate) const LOOP_COLS: &str = "subtask_key, module_key, title, reviews_task_id, reworks, \
     deps_left, size, review_role, min_score, max_reworks";

/// A task of a goal, with what the loop needs of it.
#[derive(Clone, Debug)]
pub struct GoalTask {
    pub row: TaskRow,
    pub kind: TaskKind,
    pub key: Option<String>,
    pub module: Option<String>,
    pub title: Option<String>,
    pub reviews_task_id: Option<Uuid>,
    pub reworks: u32,
    pub deps_left: u32,
    pub size: u32,
    pub review_role: Option<String>,
    pub min_score: u8,
    pub max_reworks: u32,
}

impl GoalTask {
    pub fn id(&self) -> Uuid {
        self.row.view.id
    }
    pub fn state(&self) -> TaskState {
        self.row.view.state
    }
    pub fn view(&self) -> &TaskView {
        &self.row.view
    }
    /// `key (title)`, or the id for a run of the loop itself.
    pub fn label(&self) -> String {
        match (&self.key, &self.title) {
            (Some(k), Some(t)) => format!("{k} ({t})"),
            (Some(k), None) => k.clone(),
            _ => format!("{} task {}", self.kind.as_str(), self.id()),
        }
    }
}

pub(crate) fn row_to_goal_task(r: &Row) -> Result<GoalTask> {
    let row = row_to_task(r)?;
    let kind = row.view.kind;
    let n = |i: usize| -> u32 { r.get::<_, i32>(i).max(0) as u32 };
    Ok(GoalTask {
        row,
        kind,
        key: r.get(18),
        module: r.get(19),
        title: r.get(20),
        reviews_task_id: r.get(21),
        reworks: n(22),
        deps_left: n(23),
        size: r.get::<_, i16>(24).clamp(1, 5) as u32,
        review_role: r.get(25),
        min_score: r.get::<_, i16>(26).clamp(1, 10) as u8,
        max_reworks: r.get::<_, i16>(27).max(0) as u32,
    })
}

/// What ingress asks to create.
#[derive(Clone, Debug)]
pub struct NewGoal {
    pub tenant: String,
    pub title: String,
    pub description: String,
    pub acceptance: String,
    pub budget: Budget,
    pub priority: u8,
    pub planner_id: Option<Uuid>,
    pub require_plan_approval: bool,
    pub idempotency_key: Option<String>,
}

#[derive(Debug)]
pub struct GoalCreated {
    pub goal: GoalRow,
    /// False when the idempotency key matched an existing goal.
    pub created: bool,
    pub outbox: Vec<OutboxMsg>,
}

/// What a person's action on a goal did.
#[derive(Debug)]
pub struct GoalChanged {
    pub goal: GoalRow,
    pub outbox: Vec<OutboxMsg>,
    /// Workers running a task this change cancelled (to be told).
    pub cancelled_on: Vec<(Uuid, Option<String>)>,
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("message types serialise")
}

/// The message that gives a consumer of the loop its work.
pub(crate) fn loop_msg(tenant: &str, goal: Uuid, task: Option<Uuid>, kind: LoopKind) -> OutboxMsg {
    OutboxMsg::now(
        subject::loop_msg(kind),
        json(&LoopMsg {
            v: subjects::VERSION,
            tenant: tenant.to_string(),
            goal_id: goal,
            task_id: task,
            kind,
        }),
        task,
    )
}

/// A transaction over one goal and its tasks, gathering the outbox rows
/// its changes cause.
pub(crate) struct LoopTx<'a> {
    pub tx: deadpool_postgres::Transaction<'a>,
    pub outbox: Vec<OutboxMsg>,
    pub now: OffsetDateTime,
    /// Tasks this transaction cancelled while a worker ran them.
    pub cancelled_on: Vec<(Uuid, Option<String>)>,
}

impl<'a> LoopTx<'a> {
    pub async fn begin(client: &'a mut deadpool_postgres::Object) -> Result<LoopTx<'a>> {
        Ok(LoopTx {
            tx: client.transaction().await?,
            outbox: Vec::new(),
            now: OffsetDateTime::now_utc(),
            cancelled_on: Vec::new(),
        })
    }

    /// Write the outbox rows and commit; the rows are returned for the
    /// caller to publish at once (the relay's poller is the fallback).
    pub async fn commit(self) -> Result<Vec<OutboxMsg>> {
        if !self.outbox.is_empty() {
            insert_outbox(&self.tx, &self.outbox).await?;
        }
        self.tx.commit().await?;
        Ok(self.outbox)
    }

    /// Insert `new` as goal `id` in `planning`, with its first event and
    /// the message that asks for its plan. `None`: its idempotency key is
    /// taken.
    pub async fn insert_goal(&mut self, new: &NewGoal, id: Uuid) -> Result<Option<GoalRow>> {
        if let Some(p) = new.planner_id {
            let ok = self
                .tx
                .query_opt(
                    "SELECT 1 FROM employees WHERE id = $1 AND tenant = $2 AND state <> 'offboarded'",
                    &[&p, &new.tenant],
                )
                .await?;
            if ok.is_none() {
                return Err(Error::Invalid(format!(
                    "planner {p} is not one of this tenant's employees; leave it out to have one chosen"
                )));
            }
        }
        let budget = serde_json::to_value(new.budget).expect("a budget serialises");
        let inserted = self
            .tx
            .execute(
                "INSERT INTO goals (id, tenant, title, description, acceptance, budget, priority, planner_id,
                                    require_plan_approval, state, idempotency_key, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'planning', $10, $11, $11)
                 ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
                &[
                    &id,
                    &new.tenant,
                    &crate::pg_text(&new.title),
                    &crate::pg_text(&new.description),
                    &crate::pg_text(&new.acceptance),
                    &budget,
                    &i16::from(new.priority),
                    &new.planner_id,
                    &new.require_plan_approval,
                    &new.idempotency_key,
                    &self.now,
                ],
            )
            .await?;
        if inserted == 0 {
            return Ok(None);
        }
        let g = self.lock_goal(id, None).await?;
        self.event(&g, "state", None, Some("submitted"), None, None)
            .await?;
        self.loop_work(&g, None, LoopKind::Plan);
        Ok(Some(g))
    }

    /// The goal, locked; `tenant` (when given) must own it.
    pub async fn lock_goal(&self, id: Uuid, tenant: Option<&str>) -> Result<GoalRow> {
        let row = self
            .tx
            .query_opt(
                &format!("SELECT {GOAL_COLS} FROM goals WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?
            .ok_or_else(|| no_goal(id))?;
        let g = row_to_goal(&row)?;
        if tenant.is_some_and(|t| t != g.tenant) {
            return Err(no_goal(id));
        }
        Ok(g)
    }

    /// The goal, locked, or `None` when it is gone (a consumer's message
    /// for a deleted goal is done with).
    pub async fn find_goal(&self, id: Uuid) -> Result<Option<GoalRow>> {
        match self.lock_goal(id, None).await {
            Ok(g) => Ok(Some(g)),
            Err(Error::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A task of `goal`, locked.
    pub async fn lock_task(&self, goal: &GoalRow, id: Uuid) -> Result<GoalTask> {
        let row = self
            .tx
            .query_opt(
                &format!("SELECT {COLS}, {LOOP_COLS} FROM tasks WHERE id = $1 AND goal_id = $2 FOR UPDATE"),
                &[&id, &goal.id],
            )
            .await?
            .ok_or(Error::NotFound(id))?;
        row_to_goal_task(&row)
    }

    /// Every task of `goal` of `kind` in one of `states`, locked.
    pub async fn lock_tasks(
        &self,
        goal: &GoalRow,
        kinds: &[TaskKind],
        states: &[TaskState],
    ) -> Result<Vec<GoalTask>> {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT {COLS}, {LOOP_COLS} FROM tasks
                     WHERE goal_id = $1 AND kind::text = ANY($2) AND state::text = ANY($3)
                     ORDER BY created_at, id FOR UPDATE"
                ),
                &[&goal.id, &kinds, &states],
            )
            .await?;
        rows.iter().map(row_to_goal_task).collect()
    }

    /// Moves the goal to `to`; `blocked` says why when `to` is blocked.
    pub async fn goal_to(
        &mut self,
        g: &mut GoalRow,
        to: GoalState,
        reason: &str,
        blocked: Option<Blocked>,
    ) -> Result<()> {
        goal_state::check(g.state, to)?;
        let from = g.state;
        g.state = to;
        g.updated_at = self.now;
        g.blocked = if to == GoalState::Blocked {
            blocked.clone()
        } else {
            None
        };
        let blocked_json = g
            .blocked
            .as_ref()
            .map(|b| serde_json::to_value(b).expect("a block serialises"));
        self.tx
            .execute(
                "UPDATE goals SET state = $2::text::goal_state, updated_at = $3, blocked = $4 WHERE id = $1",
                &[&g.id, &to.as_str(), &self.now, &blocked_json],
            )
            .await?;
        let task = g.blocked.as_ref().and_then(|b| b.task_id);
        self.event(
            g,
            "state",
            Some((from, to)),
            Some(reason),
            task,
            blocked_json,
        )
        .await?;
        let notify = match to {
            GoalState::Done => Some(NotifyKind::GoalDone),
            GoalState::Failed => Some(NotifyKind::GoalFailed),
            GoalState::Blocked => Some(NotifyKind::GoalBlocked),
            _ => None,
        };
        if let Some(kind) = notify {
            let summary = format!("goal {:?} is {to}: {reason}", g.title);
            self.notify(
                g,
                kind,
                task,
                summary,
                g.blocked
                    .as_ref()
                    .map(|b| serde_json::to_value(b).expect("serialises")),
            );
        }
        Ok(())
    }

    /// Records something that happened to the goal, and announces it.
    pub async fn event(
        &mut self,
        g: &GoalRow,
        kind: &str,
        states: Option<(GoalState, GoalState)>,
        reason: Option<&str>,
        task: Option<Uuid>,
        detail: Option<Value>,
    ) -> Result<()> {
        let reason = reason.map(|r| crate::pg_text(r).into_owned());
        self.tx
            .execute(
                "INSERT INTO goal_events (goal_id, kind, from_state, to_state, reason, task_id, detail, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &g.id,
                    &kind,
                    &states.map(|s| s.0.as_str()),
                    &states.map(|s| s.1.as_str()),
                    &reason,
                    &task,
                    &detail,
                    &self.now,
                ],
            )
            .await?;
        let ev = GoalEvent {
            v: subjects::VERSION,
            tenant: g.tenant.clone(),
            goal_id: g.id,
            kind: kind.to_string(),
            from: states.map(|s| s.0),
            to: states.map(|s| s.1),
            reason,
            task_id: task,
            detail,
            at: self.now,
        };
        self.outbox.push(OutboxMsg::now(
            subject::goal_events(&g.tenant, g.id, kind),
            json(&ev),
            task,
        ));
        Ok(())
    }

    /// Tells the tenant's people (and webhooks).
    pub fn notify(
        &mut self,
        g: &GoalRow,
        kind: NotifyKind,
        task: Option<Uuid>,
        summary: String,
        detail: Option<Value>,
    ) {
        let n = Notification {
            v: subjects::VERSION,
            id: Uuid::now_v7(),
            tenant: g.tenant.clone(),
            kind,
            goal_id: Some(g.id),
            task_id: task,
            summary,
            detail,
            at: self.now,
        };
        self.outbox.push(OutboxMsg {
            id: n.id,
            subject: subject::notify(&g.tenant, kind),
            payload: json(&n),
            task_id: task,
            available_at: self.now,
        });
    }

    /// Work for a consumer of the loop.
    pub fn loop_work(&mut self, g: &GoalRow, task: Option<Uuid>, kind: LoopKind) {
        self.outbox.push(loop_msg(&g.tenant, g.id, task, kind));
    }

    /// Moves a task to `to` (not to `queued`: see [`LoopTx::queue`]).
    pub async fn task_to(
        &mut self,
        t: &mut GoalTask,
        to: TaskState,
        reason: Option<&str>,
    ) -> Result<()> {
        let from = t.state();
        state::check(from, to)?;
        let reason = reason.map(|r| crate::pg_text(r).into_owned());
        let view = &mut t.row.view;
        view.state = to;
        view.updated_at = self.now;
        if matches!(
            to,
            TaskState::Blocked | TaskState::Failed | TaskState::Cancelled
        ) {
            view.error = reason.clone();
        }
        self.tx
            .execute(
                "UPDATE tasks SET state = $2::text::task_state, error = $3, updated_at = $4,
                        worker_id = NULL, heartbeat_at = NULL
                 WHERE id = $1",
                &[&view.id, &to.as_str(), &view.error, &self.now],
            )
            .await?;
        if from == TaskState::Running {
            let run_state = match to {
                TaskState::Cancelled => "cancelled",
                TaskState::Done | TaskState::Review => "succeeded",
                _ => "failed",
            };
            self.tx
                .execute(
                    "UPDATE runs SET state = $2::text::run_state, error = $3, finished_at = $4
                     WHERE task_id = $1 AND state = 'running'",
                    &[&view.id, &run_state, &reason, &self.now],
                )
                .await?;
            if to == TaskState::Cancelled {
                self.cancelled_on.push((view.id, t.row.worker_id.clone()));
            }
        }
        insert_history(&self.tx, view, Some(from), reason.as_deref()).await?;
        self.outbox
            .push(event_msg(&state_event(view, Some(from), reason.clone())));
        if to.is_final() {
            self.outbox.push(result_msg(view));
        }
        Ok(())
    }

    /// Queues a task with `input` for a new attempt: a new dispatch and its
    /// work message. `fresh_attempts` gives it its attempts back (a
    /// person's retry, a rework).
    pub async fn queue(
        &mut self,
        t: &mut GoalTask,
        input: Value,
        reason: Option<&str>,
        fresh_attempts: bool,
    ) -> Result<()> {
        let from = t.state();
        state::check(from, TaskState::Queued)?;
        let dispatch = Uuid::now_v7();
        let view = &mut t.row.view;
        if from != TaskState::Pending {
            // A new attempt that is not a failure's retry (a rework, a
            // person's retry): it uses up none of the attempts left, and a
            // person's retry starts with three.
            view.attempt += 1;
            view.max_attempts = if fresh_attempts {
                view.attempt + 2
            } else {
                view.max_attempts + 1
            };
        }
        view.state = TaskState::Queued;
        view.input = input;
        view.updated_at = self.now;
        view.error = None;
        t.row.dispatch_id = Some(dispatch);
        self.tx
            .execute(
                "UPDATE tasks SET state = 'queued', input = $2, dispatch_id = $3, attempt = $4,
                        max_attempts = $5, updated_at = $6, error = NULL, worker_id = NULL, heartbeat_at = NULL
                 WHERE id = $1",
                &[
                    &view.id,
                    &view.input,
                    &dispatch,
                    &(view.attempt as i32),
                    &(view.max_attempts as i32),
                    &self.now,
                ],
            )
            .await?;
        insert_history(&self.tx, view, Some(from), reason).await?;
        self.outbox
            .push(work_msg(view, t.row.timeout_secs, dispatch, self.now));
        self.outbox.push(event_msg(&state_event(
            view,
            Some(from),
            reason.map(str::to_string),
        )));
        Ok(())
    }

    /// Inserts a task of the goal: queued (with its work message) unless
    /// `pending`.
    pub async fn insert_task(&mut self, g: &GoalRow, new: NewGoalTask) -> Result<GoalTask> {
        let id = Uuid::now_v7();
        // A paused goal, or one whose budget is spent, starts no sub-task
        // or review: the run waits (pending) until the goal goes on
        // (`release_ready`). (A plan being written inserts its sub-tasks
        // before the goal runs; they are queued as the plan says.)
        let held = matches!(new.kind, TaskKind::Work | TaskKind::Review) && g.stopped();
        let queued = !new.pending && !held;
        let dispatch = queued.then(Uuid::now_v7);
        let state = if queued {
            TaskState::Queued
        } else {
            TaskState::Pending
        };
        let input = crate::tasks::storable_result(new.input);
        self.tx
            .execute(
                "INSERT INTO tasks (id, tenant, role, goal_id, input, state, attempt, max_attempts, timeout_secs,
                                    dispatch_id, created_at, updated_at, employee_id, kind, subtask_key, module_key,
                                    title, reviews_task_id, deps_left, size, review_role, min_score, max_reworks,
                                    idempotency_key)
                 VALUES ($1, $2, $3, $4, $5, $6::text::task_state, 1, $7, $8, $9, $10, $10, $11,
                         $12::text::task_kind, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
                &[
                    &id,
                    &g.tenant,
                    &new.role,
                    &g.id,
                    &input,
                    &state.as_str(),
                    &(new.max_attempts as i32),
                    &(new.timeout_secs as i32),
                    &dispatch,
                    &self.now,
                    &new.employee_id,
                    &new.kind.as_str(),
                    &new.key,
                    &new.module,
                    &new.title,
                    &new.reviews_task_id,
                    &(new.deps_left as i32),
                    &(new.size.clamp(1, 5) as i16),
                    &new.review_role,
                    &(new.min_score as i16),
                    &(new.max_reworks as i16),
                    &new.idempotency_key,
                ],
            )
            .await?;
        let view = TaskView {
            v: subjects::VERSION,
            id,
            tenant: g.tenant.clone(),
            role: new.role.clone(),
            state,
            attempt: 1,
            max_attempts: new.max_attempts,
            goal_id: Some(g.id),
            input,
            result: None,
            error: None,
            created_at: self.now,
            updated_at: self.now,
            employee_id: new.employee_id,
            kind: new.kind,
        };
        insert_history(&self.tx, &view, None, None).await?;
        if let Some(d) = dispatch {
            self.outbox
                .push(work_msg(&view, new.timeout_secs, d, self.now));
        }
        self.outbox.push(event_msg(&state_event(&view, None, None)));
        Ok(GoalTask {
            row: TaskRow {
                view,
                timeout_secs: new.timeout_secs,
                dispatch_id: dispatch,
                worker_id: None,
                heartbeat_age: None,
            },
            kind: new.kind,
            key: new.key,
            module: new.module,
            title: new.title,
            reviews_task_id: new.reviews_task_id,
            reworks: 0,
            deps_left: new.deps_left,
            size: new.size,
            review_role: new.review_role,
            min_score: new.min_score,
            max_reworks: new.max_reworks,
        })
    }

    /// Cancels every task of the goal that is not final (the loop's own
    /// runs too).
    pub async fn cancel_open_tasks(&mut self, g: &GoalRow, reason: &str) -> Result<()> {
        let open: Vec<TaskState> = TaskState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        for mut t in self.lock_tasks(g, &TaskKind::ALL, &open).await? {
            self.task_to(&mut t, TaskState::Cancelled, Some(reason))
                .await?;
        }
        Ok(())
    }

    /// An active employee of `role` in the goal's tenant with the fewest
    /// open tasks (never `not`), hired when there is none.
    pub async fn employee_for(&self, tenant: &str, role: &str, not: Option<Uuid>) -> Result<Uuid> {
        let row = self
            .tx
            .query_opt(
                "SELECT e.id FROM employees e
                 WHERE e.tenant = $1 AND e.role = $2 AND e.state = 'active' AND e.id IS DISTINCT FROM $3
                 ORDER BY (SELECT count(*) FROM tasks t WHERE t.employee_id = e.id
                             AND t.state NOT IN ('done', 'failed', 'cancelled')), e.created_at
                 LIMIT 1",
                &[&tenant, &role, &not],
            )
            .await?;
        if let Some(r) = row {
            return Ok(r.get(0));
        }
        // Hire one: `<role>-<n>`, the first free n.
        let taken: i64 = self
            .tx
            .query_one(
                "SELECT count(*) FROM employees WHERE tenant = $1 AND role = $2",
                &[&tenant, &role],
            )
            .await?
            .get(0);
        let id = Uuid::now_v7();
        for n in (taken + 1)..(taken + 100) {
            let name = format!("{role}-{n}");
            let inserted = self
                .tx
                .execute(
                    "INSERT INTO employees (id, tenant, name, role, state, quotas, created_at, updated_at)
                     SELECT $1, $2, $3, $4, 'active', '{}', $5, $5
                     WHERE NOT EXISTS (SELECT 1 FROM employees WHERE tenant = $2 AND name = $3 AND state <> 'offboarded')
                     ON CONFLICT DO NOTHING",
                    &[&id, &tenant, &name, &role, &self.now],
                )
                .await?;
            if inserted == 1 {
                tracing::info!(tenant, role, employee = %id, name, "hired an employee for the loop");
                return Ok(id);
            }
        }
        Err(Error::Conflict(format!(
            "no free name to hire a {role} in tenant {tenant}; offboard unused employees"
        )))
    }
}

/// A task of a goal to insert.
#[derive(Clone, Debug)]
pub struct NewGoalTask {
    pub kind: TaskKind,
    pub role: String,
    pub input: Value,
    pub employee_id: Option<Uuid>,
    pub max_attempts: u32,
    pub timeout_secs: u32,
    pub key: Option<String>,
    pub module: Option<String>,
    pub title: Option<String>,
    pub reviews_task_id: Option<Uuid>,
    pub deps_left: u32,
    pub size: u32,
    pub review_role: Option<String>,
    pub min_score: u8,
    pub max_reworks: u32,
    /// Inserted waiting (dependencies, approval, a paused goal).
    pub pending: bool,
    pub idempotency_key: Option<String>,
}

impl NewGoalTask {
    /// A run of the loop itself (planning, review, delivery).
    pub fn run(
        kind: TaskKind,
        role: &str,
        input: Value,
        employee: Uuid,
        timeout_secs: u32,
    ) -> NewGoalTask {
        NewGoalTask {
            kind,
            role: role.to_string(),
            input,
            employee_id: Some(employee),
            max_attempts: 2,
            timeout_secs,
            key: None,
            module: None,
            title: None,
            reviews_task_id: None,
            deps_left: 0,
            size: 1,
            review_role: None,
            min_score: 7,
            max_reworks: 3,
            pending: false,
            idempotency_key: None,
        }
    }
}

pub(crate) fn no_goal(id: Uuid) -> Error {
    Error::Missing(format!("goal {id} does not exist"))
}

fn not_now(g: &GoalRow, what: &str) -> Error {
    Error::Conflict(format!("goal {} is {}, so it cannot {what}", g.id, g.state))
}

impl Store {
    /// Create a goal in `planning`, with the message that asks for its
    /// plan; or return the goal an earlier call with the same key made.
    pub async fn create_goal(&self, new: &NewGoal) -> Result<GoalCreated> {
        let mut client = self.client().await?;
        if let Some(key) = &new.idempotency_key {
            if let Some(g) = goal_by_key(&client, &new.tenant, key).await? {
                return same_goal(g, new, key);
            }
        }
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(g) = t.insert_goal(new, Uuid::now_v7()).await? else {
            drop(t);
            let key = new.idempotency_key.as_deref().unwrap_or_default();
            let g = goal_by_key(&client, &new.tenant, key)
                .await?
                .ok_or_else(|| {
                    Error::Conflict(format!(
                        "idempotency key {key:?} is in use; retry the request"
                    ))
                })?;
            return same_goal(g, new, key);
        };
        let outbox = t.commit().await?;
        Ok(GoalCreated {
            goal: g,
            created: true,
            outbox,
        })
    }

    /// `tenant`'s goal `id` (another tenant's is `None`).
    pub async fn goal(&self, tenant: &str, id: Uuid) -> Result<Option<GoalRow>> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {GOAL_COLS} FROM goals WHERE id = $1 AND tenant = $2"),
                &[&id, &tenant],
            )
            .await?
            .map(|r| row_to_goal(&r))
            .transpose()
    }

    /// A goal whatever its tenant (for the loop's consumers).
    pub async fn goal_by_id(&self, id: Uuid) -> Result<Option<GoalRow>> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {GOAL_COLS} FROM goals WHERE id = $1"),
                &[&id],
            )
            .await?
            .map(|r| row_to_goal(&r))
            .transpose()
    }

    /// The goal as a client sees it: its plan, sub-tasks, reviews, progress
    /// and spend.
    pub async fn goal_view(&self, tenant: &str, id: Uuid) -> Result<Option<GoalView>> {
        let Some(g) = self.goal(tenant, id).await? else {
            return Ok(None);
        };
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLS}, {LOOP_COLS},
                            ARRAY(SELECT d.subtask_key FROM task_deps e JOIN tasks d ON d.id = e.depends_on
                                  WHERE e.task_id = tasks.id ORDER BY d.subtask_key)
                     FROM tasks WHERE goal_id = $1 AND kind = 'work' ORDER BY created_at, id"
                ),
                &[&id],
            )
            .await?;
        let reviews = client
            .query(
                "SELECT r.task_id, r.score, r.verdict::text, r.issues, r.comments, r.reviewer_employee_id, r.at
                 FROM reviews r JOIN tasks t ON t.id = r.task_id
                 WHERE t.goal_id = $1 ORDER BY r.id",
                &[&id],
            )
            .await?;
        let mut subtasks = Vec::new();
        for r in &rows {
            let t = row_to_goal_task(r)?;
            let deps: Vec<Option<String>> = r.get(28);
            let task_reviews = reviews
                .iter()
                .filter(|rv| rv.get::<_, Uuid>(0) == t.id())
                .map(|rv| ReviewView {
                    score: rv.get::<_, i16>(1).clamp(1, 10) as u8,
                    approve: rv.get::<_, String>(2) == "approved",
                    issues: serde_json::from_value(rv.get(3)).unwrap_or_default(),
                    summary: rv.get(4),
                    reviewer_employee_id: rv.get(5),
                    at: rv.get(6),
                })
                .collect();
            subtasks.push(SubtaskView {
                id: t.id(),
                key: t.key.clone().unwrap_or_default(),
                title: t.title.clone().unwrap_or_default(),
                module: t.module.clone(),
                role: t.view().role.clone(),
                state: t.state(),
                attempt: t.view().attempt,
                reworks: t.reworks,
                depends_on: deps.into_iter().flatten().collect(),
                employee_id: t.view().employee_id,
                reviews: task_reviews,
                result: t.view().result.clone(),
                error: t.view().error.clone(),
            });
        }
        let progress = progress_of(subtasks.iter().map(|s| s.state));
        Ok(Some(GoalView {
            v: subjects::VERSION,
            id: g.id,
            tenant: g.tenant,
            title: g.title,
            description: g.description,
            acceptance: g.acceptance,
            budget: g.budget,
            priority: g.priority,
            state: g.state,
            require_plan_approval: g.require_plan_approval,
            planner_id: g.planner_id,
            plan: g.plan,
            subtasks,
            progress,
            spent: g.spent,
            blocked: g.blocked,
            deliverable: g.deliverable,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }))
    }

    /// `tenant`'s goals, newest first, optionally in one state.
    pub async fn list_goals(
        &self,
        tenant: &str,
        state: Option<GoalState>,
        limit: u32,
    ) -> Result<Vec<GoalSummary>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT g.id, g.title, g.state::text, g.priority, g.spent_tokens, g.spent_cost_usd,
                        g.created_at, g.updated_at,
                        ARRAY(SELECT t.state::text FROM tasks t WHERE t.goal_id = g.id AND t.kind = 'work')
                 FROM goals g
                 WHERE g.tenant = $1 AND ($2::text IS NULL OR g.state::text = $2)
                 ORDER BY g.created_at DESC, g.id DESC LIMIT $3",
                &[&tenant, &state.map(|s| s.as_str()), &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                let state: String = r.get(2);
                let states: Vec<String> = r.get(8);
                Ok(GoalSummary {
                    id,
                    title: r.get(1),
                    state: GoalState::parse(&state).ok_or_else(|| {
                        Error::Invalid(format!("goal {id} has unknown state {state:?}"))
                    })?,
                    priority: r.get::<_, i16>(3).clamp(0, 9) as u8,
                    progress: progress_of(states.iter().filter_map(|s| TaskState::parse(s))),
                    spent: Spend {
                        tokens: r.get::<_, i64>(4).max(0) as u64,
                        cost_usd: r.get::<_, f64>(5).max(0.0),
                    },
                    created_at: r.get(6),
                    updated_at: r.get(7),
                })
            })
            .collect()
    }

    /// The goal's history, oldest first: its own events, and the state
    /// changes of its tasks, as the events that announced them.
    pub async fn goal_history(&self, tenant: &str, id: Uuid) -> Result<Option<Vec<GoalEvent>>> {
        let Some(g) = self.goal(tenant, id).await? else {
            return Ok(None);
        };
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT kind, from_state, to_state, reason, task_id, detail, at
                 FROM goal_events WHERE goal_id = $1 ORDER BY id",
                &[&id],
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|r| GoalEvent {
                    v: subjects::VERSION,
                    tenant: g.tenant.clone(),
                    goal_id: id,
                    kind: r.get(0),
                    from: r
                        .get::<_, Option<String>>(1)
                        .and_then(|s| GoalState::parse(&s)),
                    to: r
                        .get::<_, Option<String>>(2)
                        .and_then(|s| GoalState::parse(&s)),
                    reason: r.get(3),
                    task_id: r.get(4),
                    detail: r.get(5),
                    at: r.get(6),
                })
                .collect(),
        ))
    }

    /// The state changes of every task of a goal, oldest first, as their
    /// events: what a goal's watcher replays before it goes live.
    pub async fn goal_task_events(&self, tenant: &str, id: Uuid) -> Result<Vec<subjects::Event>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT e.task_id, e.attempt, e.from_state, e.to_state, e.reason, e.at
                 FROM events e JOIN tasks t ON t.id = e.task_id
                 WHERE t.goal_id = $1 AND t.tenant = $2 ORDER BY e.at, e.id",
                &[&id, &tenant],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(subjects::Event {
                    v: subjects::EVENT_VERSION,
                    tenant: tenant.to_string(),
                    task_id: r.get(0),
                    goal_id: Some(id),
                    attempt: r.get::<_, i32>(1).max(0) as u32,
                    at: r.get(5),
                    body: subjects::EventBody::State {
                        from: r
                            .get::<_, Option<String>>(2)
                            .and_then(|s| TaskState::parse(&s)),
                        to: TaskState::parse(&r.get::<_, String>(3))?,
                        reason: r.get(4),
                    },
                })
            })
            .collect())
    }

    /// A person's action on `tenant`'s goal `id`, in one transaction.
    pub async fn act_on_goal(
        &self,
        tenant: &str,
        id: Uuid,
        action: GoalAction,
    ) -> Result<GoalChanged> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let mut g = t.lock_goal(id, Some(tenant)).await?;
        t.act(&mut g, action).await?;
        let cancelled_on = std::mem::take(&mut t.cancelled_on);
        let outbox = t.commit().await?;
        Ok(GoalChanged {
            goal: g,
            outbox,
            cancelled_on,
        })
    }
}

impl Store {
    /// Charges a model call of goal task `task` to its goal (a task of no
    /// goal: nothing); a goal whose spend now reaches its token or cost
    /// budget is blocked ([`Store::block_if_over_budget`]).
    pub async fn charge_goal(
        &self,
        task: Uuid,
        tokens: u64,
        cost_usd: f64,
    ) -> Result<Vec<OutboxMsg>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE goals g SET spent_tokens = g.spent_tokens + $2, spent_cost_usd = g.spent_cost_usd + $3
                 FROM tasks t WHERE t.id = $1 AND g.id = t.goal_id
                 RETURNING g.id, g.state::text IN ('planning', 'running', 'paused', 'delivering')
                     AND ((g.budget ? 'tokens' AND g.spent_tokens >= (g.budget->>'tokens')::bigint)
                       OR (g.budget ? 'cost_usd' AND g.spent_cost_usd >= (g.budget->>'cost_usd')::float8))",
            )
            .await?;
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        let Some(row) = client
            .query_opt(&stmt, &[&task, &tokens, &cost_usd])
            .await?
        else {
            return Ok(Vec::new());
        };
        let (goal, crossed): (Uuid, bool) = (row.get(0), row.get(1));
        drop(client);
        if !crossed {
            return Ok(Vec::new());
        }
        self.block_if_over_budget(goal).await
    }

    /// A goal at work and over one of its budgets (tokens, dollars, wall
    /// clock) waits for a person (blocked, kind `budget`), its queued work
    /// with it; runs in flight finish within their role's per-run quotas. A
    /// person's `decide` with a larger budget resumes it.
    pub async fn block_if_over_budget(&self, goal: Uuid) -> Result<Vec<OutboxMsg>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(mut g) = t.find_goal(goal).await? else {
            return Ok(Vec::new());
        };
        if !g.at_work() || !t.over_budget(&g) {
            return Ok(Vec::new());
        }
        let age = (t.now - g.created_at).as_seconds_f64();
        let reason = match g.budget.wall_secs.filter(|w| age > *w as f64) {
            Some(w) => format!(
                "the goal has run {age:.0} s, past its wall-clock budget of {w} s; a person decides (a larger budget, or cancel)"
            ),
            None => format!(
                "the goal has spent {} tokens and ${:.4}, reaching its budget ({}); a person decides (a larger budget, or cancel)",
                g.spent.tokens,
                g.spent.cost_usd,
                crate::briefs::budget_line(&g.budget)
            ),
        };
        t.hold_queued(&g, "the goal's budget is spent").await?;
        t.goal_to(
            &mut g,
            GoalState::Blocked,
            &reason,
            Some(Blocked {
                kind: BlockKind::Budget,
                reason: reason.clone(),
                task_id: None,
                details: Vec::new(),
            }),
        )
        .await?;
        t.commit().await
    }
}

impl Store {
    /// Goals past their wall-clock budget (`budget.wall_secs` since they
    /// were submitted) that are still at work (for
    /// [`Store::block_if_over_budget`]).
    pub async fn overdue_goals(&self) -> Result<Vec<Uuid>> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT id FROM goals
                 WHERE state IN ('planning', 'running', 'paused', 'delivering')
                   AND budget ? 'wall_secs'
                   AND created_at + make_interval(secs => (budget->>'wall_secs')::float8) < now()
                 LIMIT 100",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

impl Store {
    /// Goals final for longer than `retention` whose workspace is still
    /// there (oldest first).
    pub async fn goals_to_retire(&self, retention: std::time::Duration) -> Result<Vec<Uuid>> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT id FROM goals
                 WHERE workspace_removed_at IS NULL AND state IN ('done', 'failed', 'cancelled')
                   AND updated_at < now() - make_interval(secs => $1)
                 ORDER BY updated_at LIMIT 100",
                &[&retention.as_secs_f64()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// The goal's workspace is gone.
    pub async fn workspace_retired(&self, goal: Uuid) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE goals SET workspace_removed_at = now() WHERE id = $1 AND workspace_removed_at IS NULL",
                &[&goal],
            )
            .await?;
        Ok(())
    }
}

/// What a person may do to a goal.
#[derive(Clone, Debug)]
pub enum GoalAction {
    /// Nothing new starts (queued sub-tasks wait again); runs in flight
    /// finish.
    Pause,
    /// Waiting sub-tasks whose dependencies are done are queued again.
    Resume,
    /// The plan is approved: its first sub-tasks are queued.
    Approve,
    /// The goal and every task of it that is not final are cancelled.
    Cancel(String),
    /// Plan again what is not done: open sub-tasks are cancelled, done ones
    /// stay (the new plan may depend on them), and a planning run is asked
    /// for with the note.
    Replan(String),
    /// The answer to a goal that waits for a person.
    Decide(GoalDecision),
}

impl LoopTx<'_> {
    async fn act(&mut self, g: &mut GoalRow, action: GoalAction) -> Result<()> {
        match action {
            GoalAction::Pause => {
                if g.state == GoalState::Paused {
                    return Ok(());
                }
                if g.state != GoalState::Running {
                    return Err(not_now(g, "be paused"));
                }
                self.goal_to(g, GoalState::Paused, "paused by a person", None)
                    .await?;
                self.hold_queued(g, "held: the goal is paused").await
            }
            GoalAction::Resume => {
                if g.state == GoalState::Running {
                    return Ok(());
                }
                if g.state != GoalState::Paused {
                    return Err(not_now(g, "be resumed"));
                }
                self.goal_to(g, GoalState::Running, "resumed by a person", None)
                    .await?;
                self.release_ready(g).await?;
                self.check_complete(g).await
            }
            GoalAction::Approve => {
                if g.state != GoalState::AwaitingApproval {
                    return Err(not_now(g, "have its plan approved"));
                }
                self.goal_to(g, GoalState::Running, "a person approved the plan", None)
                    .await?;
                self.release_ready(g).await
            }
            GoalAction::Cancel(reason) => {
                if g.state == GoalState::Cancelled {
                    return Ok(());
                }
                if g.state.is_final() {
                    return Err(not_now(g, "be cancelled"));
                }
                self.cancel_open_tasks(g, &reason).await?;
                self.goal_to(g, GoalState::Cancelled, &reason, None).await
            }
            GoalAction::Replan(note) => {
                if g.state == GoalState::Planning
                    || goal_state::check(g.state, GoalState::Planning).is_err()
                {
                    return Err(not_now(g, "be planned again"));
                }
                self.start_replan(g, &note, "a person asked for a new plan")
                    .await
            }
            GoalAction::Decide(decision) => {
                if g.state != GoalState::Blocked {
                    return Err(Error::Conflict(format!(
                        "goal {} is {}, not waiting for a person; only a blocked goal takes a decision",
                        g.id, g.state
                    )));
                }
                let blocked = g.blocked.clone().ok_or_else(|| {
                    Error::Invalid(format!("goal {} is blocked without a reason", g.id))
                })?;
                let detail = serde_json::to_value(&decision).expect("a decision serialises");
                self.event(
                    g,
                    "decision",
                    None,
                    Some(&decision.note),
                    blocked.task_id,
                    Some(detail),
                )
                .await?;
                if let Some(b) = decision.budget {
                    g.budget = b;
                    let budget = serde_json::to_value(b).expect("a budget serialises");
                    self.tx
                        .execute(
                            "UPDATE goals SET budget = $2 WHERE id = $1",
                            &[&g.id, &budget],
                        )
                        .await?;
                }
                self.decide(g, &blocked, &decision).await
            }
        }
    }
}

impl LoopTx<'_> {
    /// Queued sub-tasks and review runs wait again (a paused goal, a spent
    /// budget).
    pub async fn hold_queued(&mut self, g: &GoalRow, reason: &str) -> Result<()> {
        for t in self
            .lock_tasks(g, &[TaskKind::Work, TaskKind::Review], &[TaskState::Queued])
            .await?
        {
            state::check(TaskState::Queued, TaskState::Pending)?;
            let mut view = t.row.view.clone();
            view.state = TaskState::Pending;
            view.updated_at = self.now;
            self.tx
                .execute(
                    "UPDATE tasks SET state = 'pending', dispatch_id = NULL, updated_at = $2 WHERE id = $1",
                    &[&view.id, &self.now],
                )
                .await?;
            insert_history(&self.tx, &view, Some(TaskState::Queued), Some(reason)).await?;
            self.outbox.push(event_msg(&state_event(
                &view,
                Some(TaskState::Queued),
                Some(reason.to_string()),
            )));
        }
        Ok(())
    }

    /// Starts a new planning round: open sub-tasks and runs are cancelled.
    pub async fn start_replan(&mut self, g: &mut GoalRow, note: &str, reason: &str) -> Result<()> {
        self.cancel_open_tasks(g, "cancelled: the goal is planned again")
            .await?;
        self.goal_to(g, GoalState::Planning, reason, None).await?;
        g.plan_task_id = None;
        g.plan_rejections = 0;
        g.plan_errors.clear();
        g.plan_note = Some(note.to_string()).filter(|n| !n.trim().is_empty());
        g.deliver_task_id = None;
        self.tx
            .execute(
                "UPDATE goals SET plan_task_id = NULL, plan_rejections = 0, plan_errors = NULL, plan_note = $2,
                        deliver_task_id = NULL
                 WHERE id = $1",
                &[&g.id, &g.plan_note],
            )
            .await?;
        self.loop_work(g, None, LoopKind::Plan);
        Ok(())
    }

    async fn decide(&mut self, g: &mut GoalRow, blocked: &Blocked, d: &GoalDecision) -> Result<()> {
        let note = Some(d.note.as_str()).filter(|n| !n.trim().is_empty());
        let goes_on = matches!(
            d.action,
            DecideAction::Approve | DecideAction::Retry | DecideAction::Replan
        );
        if goes_on && self.over_budget(g) {
            return Err(Error::Invalid(format!(
                "goal {} has spent {} tokens and ${:.2}, over its budget; decide with a larger budget",
                g.id, g.spent.tokens, g.spent.cost_usd
            )));
        }
        match d.action {
            DecideAction::Cancel => {
                let reason = match note {
                    Some(n) => format!("cancelled by a person: {n}"),
                    None => "cancelled by a person".to_string(),
                };
                self.cancel_open_tasks(g, &reason).await?;
                self.goal_to(g, GoalState::Cancelled, &reason, None).await
            }
            DecideAction::Fail => {
                let reason = match note {
                    Some(n) => format!("given up by a person: {n}"),
                    None => "given up by a person".to_string(),
                };
                self.cancel_open_tasks(g, &reason).await?;
                self.goal_to(g, GoalState::Failed, &reason, None).await
            }
            DecideAction::Replan => {
                self.start_replan(g, &d.note, "a person decided: plan again")
                    .await
            }
            DecideAction::Retry => match blocked.kind {
                BlockKind::PlanRejected => {
                    self.start_replan(g, &d.note, "a person decided: plan again")
                        .await
                }
                BlockKind::DeliveryFailed => {
                    self.goal_to(
                        g,
                        GoalState::Delivering,
                        "a person decided: deliver again",
                        None,
                    )
                    .await?;
                    g.deliver_task_id = None;
                    self.tx
                        .execute(
                            "UPDATE goals SET deliver_task_id = NULL WHERE id = $1",
                            &[&g.id],
                        )
                        .await?;
                    self.loop_work(g, None, LoopKind::Deliver);
                    Ok(())
                }
                BlockKind::Budget => {
                    if self.over_budget(g) {
                        return Err(Error::Invalid(format!(
                            "goal {} has spent {} tokens and ${:.2}, over its budget; decide with a larger budget",
                            g.id, g.spent.tokens, g.spent.cost_usd
                        )));
                    }
                    if g.plan.is_none() {
                        // The budget ran out while it was being planned.
                        return self
                            .start_replan(g, &d.note, "a person raised the budget")
                            .await;
                    }
                    self.goal_to(g, GoalState::Running, "a person raised the budget", None)
                        .await?;
                    if let Some(task) = blocked.task_id {
                        self.retry_blocked_task(g, task, note).await?;
                    }
                    self.release_ready(g).await?;
                    self.check_complete(g).await
                }
                _ => {
                    let task = blocked.task_id.ok_or_else(|| {
                        Error::Invalid(format!(
                            "goal {} is blocked without a sub-task to retry",
                            g.id
                        ))
                    })?;
                    self.goal_to(g, GoalState::Running, "a person decided: retry", None)
                        .await?;
                    self.retry_blocked_task(g, task, note).await?;
                    self.release_ready(g).await?;
                    self.check_complete(g).await
                }
            },
            DecideAction::Approve => {
                let task = match blocked.kind {
                    BlockKind::PlanRejected | BlockKind::DeliveryFailed => {
                        return Err(Error::Conflict(format!(
                            "goal {} has no sub-task's work to approve; retry, replan or cancel",
                            g.id
                        )))
                    }
                    _ => blocked.task_id,
                };
                self.goal_to(g, GoalState::Running, "a person decided: approve", None)
                    .await?;
                if let Some(task) = task {
                    let mut x = self.lock_task(g, task).await?;
                    if x.state() == TaskState::Blocked {
                        self.task_to(
                            &mut x,
                            TaskState::Done,
                            Some("approved as it is by a person"),
                        )
                        .await?;
                        self.subtask_done(g, &x).await?;
                    }
                }
                self.release_ready(g).await?;
                self.check_complete(g).await
            }
        }
    }

    /// A blocked sub-task runs again with fresh attempts and reworks; the
    /// sub-tasks it blocked wait for it again.
    async fn retry_blocked_task(
        &mut self,
        g: &GoalRow,
        task: Uuid,
        note: Option<&str>,
    ) -> Result<()> {
        let mut x = self.lock_task(g, task).await?;
        if x.state() != TaskState::Blocked {
            return Ok(());
        }
        self.tx
            .execute("UPDATE tasks SET reworks = 0 WHERE id = $1", &[&x.id()])
            .await?;
        x.reworks = 0;
        let input = self.compose_input(&x, note).await?;
        self.queue(&mut x, input, Some("retried by a person"), true)
            .await?;
        self.unblock_dependents(g, x.id()).await
    }

    pub fn over_budget(&self, g: &GoalRow) -> bool {
        g.budget.tokens.is_some_and(|t| g.spent.tokens >= t)
            || g.budget.cost_usd.is_some_and(|c| g.spent.cost_usd >= c)
            || g.budget
                .wall_secs
                .is_some_and(|w| (self.now - g.created_at).as_seconds_f64() > w as f64)
    }
}

async fn goal_by_key(c: &impl GenericClient, tenant: &str, key: &str) -> Result<Option<GoalRow>> {
    c.query_opt(
        &format!("SELECT {GOAL_COLS} FROM goals WHERE tenant = $1 AND idempotency_key = $2"),
        &[&tenant, &key],
    )
    .await?
    .map(|r| row_to_goal(&r))
    .transpose()
}

fn same_goal(g: GoalRow, new: &NewGoal, key: &str) -> Result<GoalCreated> {
    if g.title != new.title || g.description != new.description || g.acceptance != new.acceptance {
        return Err(Error::Conflict(format!(
            "idempotency key {key:?} was already used for a different goal ({}); use a new key",
            g.id
        )));
    }
    Ok(GoalCreated {
        goal: g,
        created: false,
        outbox: Vec::new(),
    })
}

/// Sub-task counts by state.
pub fn progress_of(states: impl Iterator<Item = TaskState>) -> Progress {
    let mut p = Progress::default();
    for s in states {
        if s == TaskState::Cancelled {
            continue;
        }
        p.total += 1;
        match s {
            TaskState::Done => p.done += 1,
            TaskState::Running => p.running += 1,
            TaskState::Review | TaskState::Rework => p.review += 1,
            TaskState::Blocked | TaskState::Failed => p.blocked += 1,
            _ => p.waiting += 1,
        }
    }
    p
}
