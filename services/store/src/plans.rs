//! Planning and delivery: the runs that make a goal's plan and write its
//! deliverable, and what happens when they end.
//!
//! A planning run submits its plan with the `plan.submit` action. The
//! caller checks the plan ([`admission::plan`] — the store only writes) and
//! then either [`Store::accept_plan`]s it — modules, sub-tasks and
//! dependency edges in one transaction, the sub-tasks with no dependency
//! queued in it — or [`Store::reject_plan`]s it with every error, which the
//! run sees at once and may fix. A run that ends without an accepted plan
//! counts as one refusal more; past the limit the goal waits for a person.
//! Every function here is a guarded transition: a redelivered message, or a
//! run that is no longer the goal's planning run, changes nothing.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use subjects::goals::{BlockKind, Blocked, GoalState, Plan, TaskKind};
use subjects::TaskState;
use uuid::Uuid;

use crate::briefs::{self, DoneSubtask, PlannableRole};
use crate::goals::{GoalRow, GoalTask, LoopTx, NewGoalTask};
use crate::{Error, OutboxMsg, Result, Store};

/// What the store needs to know of a role to run its tasks.
#[derive(Clone, Debug)]
pub struct RoleFacts {
    pub name: String,
    pub description: String,
    pub timeout_secs: u32,
    pub max_attempts: u32,
    /// The role that reviews its work, when its work needs review.
    pub review_role: Option<String>,
    pub min_score: u8,
    pub max_reworks: u32,
}

/// The roles and limits of the loop.
#[derive(Clone, Debug)]
pub struct LoopRoles {
    /// The role whose employees plan and deliver.
    pub planner: String,
    /// Roles a plan may give sub-tasks to.
    pub plannable: Vec<String>,
    /// Every role, by name.
    pub roles: BTreeMap<String, RoleFacts>,
    /// Sub-tasks one plan may have.
    pub max_subtasks: u32,
    /// Refused plans (or planning runs without one) before the goal waits
    /// for a person: the planner is re-asked this many times.
    pub max_plan_rejections: u32,
    /// Review runs of one round before the sub-task waits for a person.
    pub max_review_runs: u32,
    /// Delivery runs before the goal waits for a person.
    pub max_delivery_runs: u32,
}

/// The limits of the loop, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct LoopLimits {
    pub max_subtasks: u32,
    pub max_plan_rejections: u32,
    pub max_review_runs: u32,
    pub max_delivery_runs: u32,
    /// Attempts of a sub-task before it waits for a person.
    pub max_attempts: u32,
}

impl Default for LoopLimits {
    fn default() -> Self {
        Self {
            max_subtasks: 50,
            max_plan_rejections: 2,
            max_review_runs: 3,
            max_delivery_runs: 2,
            max_attempts: 3,
        }
    }
}

impl LoopRoles {
    /// The loop's view of the role templates: `planner` plans (and
    /// delivers) and may plan the roles its `may_create` lists.
    pub fn from_roles(roles: &roles::Roles, planner: &str, limits: LoopLimits) -> LoopRoles {
        let facts = roles
            .iter()
            .map(|r| {
                let review = &r.review;
                (
                    r.name.clone(),
                    RoleFacts {
                        name: r.name.clone(),
                        description: r.description.clone(),
                        timeout_secs: r.limits.timeout_secs,
                        max_attempts: limits.max_attempts,
                        review_role: review
                            .required
                            .then(|| review.reviewer_role.clone())
                            .flatten(),
                        min_score: review.min_score(),
                        max_reworks: review.max_reworks(),
                    },
                )
            })
            .collect();
        let plannable = roles
            .get(planner)
            .map(|p| {
                p.may_create
                    .iter()
                    .filter(|r| r.as_str() != roles::SHELL && roles.get(r).is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        LoopRoles {
            planner: planner.to_string(),
            plannable,
            roles: facts,
            max_subtasks: limits.max_subtasks,
            max_plan_rejections: limits.max_plan_rejections,
            max_review_runs: limits.max_review_runs,
            max_delivery_runs: limits.max_delivery_runs,
        }
    }

    pub fn facts(&self, role: &str) -> Result<&RoleFacts> {
        self.roles.get(role).ok_or_else(|| {
            Error::Invalid(format!(
                "role {role} has no template on this process; add roles/{role}.yaml"
            ))
        })
    }
}

/// A run of a task, as the gateway knows it: who asks.
#[derive(Clone, Debug)]
pub struct RunRef {
    pub tenant: String,
    pub task_id: Uuid,
    pub run_id: Uuid,
    pub employee_id: Option<Uuid>,
}

/// What a plan is checked against.
#[derive(Clone, Debug)]
pub struct PlanContext {
    pub goal_id: Uuid,
    pub budget: subjects::goals::Budget,
    /// Keys of sub-tasks already done (a replan's plan may depend on them
    /// but not reuse them).
    pub done_keys: Vec<String>,
}

/// What accepting a plan did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanAccepted {
    pub subtasks: u32,
    pub queued: u32,
    pub awaiting_approval: bool,
}

/// What refusing a plan did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRejected {
    /// Refusals so far, this one included.
    pub rejections: u32,
    /// Refusals allowed before the goal waits for a person.
    pub max: u32,
    /// The goal now waits for a person.
    pub blocked: bool,
}

impl LoopTx<'_> {
    /// The run's task, locked after its goal: `kind` must match, the task
    /// must be running, and `run` must be its current run.
    pub(crate) async fn lock_run(
        &self,
        run: &RunRef,
        kind: TaskKind,
    ) -> Result<(GoalRow, GoalTask)> {
        let goal: Option<Uuid> = self
            .tx
            .query_opt(
                "SELECT goal_id FROM tasks WHERE id = $1 AND tenant = $2",
                &[&run.task_id, &run.tenant],
            )
            .await?
            .and_then(|r| r.get(0));
        let refused = |reason: String| Error::Refused {
            status: 403,
            reason,
        };
        let Some(goal) = goal else {
            return Err(refused(format!(
                "task {} is not a {} run of a goal",
                run.task_id,
                kind.as_str()
            )));
        };
        let g = self.lock_goal(goal, Some(&run.tenant)).await?;
        let t = self.lock_task(&g, run.task_id).await?;
        if t.kind != kind {
            return Err(refused(format!(
                "task {} is a {} run, not a {} run",
                run.task_id,
                t.kind.as_str(),
                kind.as_str()
            )));
        }
        let current: bool = self
            .tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1 AND task_id = $2 AND state = 'running')",
                &[&run.run_id, &run.task_id],
            )
            .await?
            .get(0);
        if t.state() != TaskState::Running || !current {
            return Err(refused(format!(
                "run {} does not hold task {}; only its current run may submit for it",
                run.run_id, run.task_id
            )));
        }
        Ok((g, t))
    }

    /// Queues a planning run for `g` (which is in `planning`).
    async fn planning_run(&mut self, g: &mut GoalRow, roles: &LoopRoles) -> Result<()> {
        let facts = roles.facts(&roles.planner)?;
        let planner = match g.planner_id {
            Some(p) if self.active(p).await? => p,
            _ => self.employee_for(&g.tenant, &roles.planner, None).await?,
        };
        let done = self.done_subtasks(g).await?;
        let plannable: Vec<PlannableRole> = roles
            .plannable
            .iter()
            .filter_map(|r| roles.roles.get(r))
            .map(|f| PlannableRole {
                name: f.name.clone(),
                description: f.description.clone(),
            })
            .collect();
        let prompt = briefs::planning_prompt(
            &g.brief(),
            &plannable,
            roles.max_subtasks,
            &g.plan_errors,
            &done,
            g.plan_note.as_deref(),
        );
        let t = self
            .insert_task(
                g,
                NewGoalTask::run(
                    TaskKind::Plan,
                    &facts.name,
                    json!({"prompt": prompt}),
                    planner,
                    facts.timeout_secs,
                ),
            )
            .await?;
        g.plan_task_id = Some(t.id());
        g.planner_id = Some(planner);
        self.tx
            .execute(
                "UPDATE goals SET plan_task_id = $2, planner_id = $3 WHERE id = $1",
                &[&g.id, &t.id(), &planner],
            )
            .await?;
        let round = g.plan_rejections + 1;
        self.event(
            g,
            "plan",
            None,
            Some(&format!("planning run {round} queued")),
            Some(t.id()),
            None,
        )
        .await
    }

    async fn active(&self, employee: Uuid) -> Result<bool> {
        Ok(self
            .tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM employees WHERE id = $1 AND state = 'active')",
                &[&employee],
            )
            .await?
            .get(0))
    }

    async fn done_subtasks(&self, g: &GoalRow) -> Result<Vec<DoneSubtask>> {
        Ok(self
            .tx
            .query(
                "SELECT subtask_key, title, result FROM tasks
                 WHERE goal_id = $1 AND kind = 'work' AND state = 'done' ORDER BY created_at, id",
                &[&g.id],
            )
            .await?
            .iter()
            .map(|r| DoneSubtask {
                key: r.get::<_, Option<String>>(0).unwrap_or_default(),
                title: r.get::<_, Option<String>>(1).unwrap_or_default(),
                result: r.get(2),
            })
            .collect())
    }

    /// One refusal more for the goal's plan; past the limit the goal
    /// waits for a person.
    async fn refuse_plan(
        &mut self,
        g: &mut GoalRow,
        errors: Vec<String>,
        max: u32,
    ) -> Result<PlanRejected> {
        g.plan_rejections += 1;
        g.plan_errors = errors;
        let errors_json = serde_json::to_value(&g.plan_errors).expect("strings serialise");
        self.tx
            .execute(
                "UPDATE goals SET plan_rejections = $2, plan_errors = $3 WHERE id = $1",
                &[&g.id, &(g.plan_rejections as i32), &errors_json],
            )
            .await?;
        let n = g.plan_rejections;
        self.event(
            g,
            "plan",
            None,
            Some(&format!("plan refused ({n} of {} allowed)", max + 1)),
            g.plan_task_id,
            Some(errors_json),
        )
        .await?;
        let blocked = n > max;
        if blocked {
            let reason = format!(
                "the planner's plan was refused {n} times; a person decides (retry, replan with a note, or cancel)"
            );
            self.goal_to(
                g,
                GoalState::Blocked,
                &reason,
                Some(Blocked {
                    kind: BlockKind::PlanRejected,
                    reason: reason.clone(),
                    task_id: g.plan_task_id,
                    details: g.plan_errors.clone(),
                }),
            )
            .await?;
        }
        Ok(PlanRejected {
            rejections: n,
            max,
            blocked,
        })
    }
}

impl Store {
    /// A goal needs a planning run: one is queued, unless the goal is not
    /// being planned or a planning run is already open.
    pub async fn dispatch_planning(&self, goal: Uuid, roles: &LoopRoles) -> Result<Vec<OutboxMsg>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(mut g) = t.find_goal(goal).await? else {
            return Ok(Vec::new());
        };
        if g.state != GoalState::Planning {
            return Ok(Vec::new());
        }
        if g.plan_task_id.is_some() {
            // Running, it will submit; ended, `planning_ended` judges it.
            return Ok(Vec::new());
        }
        t.planning_run(&mut g, roles).await?;
        t.commit().await
    }

    /// The planning run `task` ended: unless a plan was accepted, that is
    /// one refusal more, and the next planning run is queued (or the goal
    /// waits for a person).
    pub async fn planning_ended(
        &self,
        goal: Uuid,
        task: Uuid,
        roles: &LoopRoles,
    ) -> Result<Vec<OutboxMsg>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(mut g) = t.find_goal(goal).await? else {
            return Ok(Vec::new());
        };
        if g.state != GoalState::Planning || g.plan_task_id != Some(task) {
            return Ok(Vec::new());
        }
        let run = t.lock_task(&g, task).await?;
        if !run.state().is_final() {
            return Ok(Vec::new());
        }
        let reason = match (run.state(), &run.view().error) {
            (TaskState::Failed, Some(e)) => format!("the planning run failed: {e}"),
            _ => "the planning run ended without submitting an accepted plan (call action_plan_submit)"
                .to_string(),
        };
        let mut errors = g.plan_errors.clone();
        errors.push(reason);
        let refused = t
            .refuse_plan(&mut g, errors, roles.max_plan_rejections)
            .await?;
        if !refused.blocked {
            t.planning_run(&mut g, roles).await?;
        }
        t.commit().await
    }

    /// What the plan of `run` (a planning run) is checked against.
    pub async fn plan_context(&self, run: &RunRef) -> Result<PlanContext> {
        let mut client = self.client().await?;
        let t = LoopTx::begin(&mut client).await?;
        let (g, _) = t.lock_run(run, TaskKind::Plan).await?;
        if g.state != GoalState::Planning || g.plan_task_id != Some(run.task_id) {
            return Err(Error::Conflict(format!(
                "goal {} is {}, not being planned by this run",
                g.id, g.state
            )));
        }
        let done = t.done_subtasks(&g).await?;
        Ok(PlanContext {
            goal_id: g.id,
            budget: g.budget,
            done_keys: done.into_iter().map(|d| d.key).collect(),
        })
    }

    /// Writes a checked plan: modules, sub-tasks (each given to an employee
    /// of its role, hired when the tenant has none) and dependency edges;
    /// the sub-tasks with no dependency left are queued, unless a person
    /// approves the plan first.
    pub async fn accept_plan(
        &self,
        run: &RunRef,
        plan: &Plan,
        roles: &LoopRoles,
    ) -> Result<(PlanAccepted, Vec<OutboxMsg>)> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let (mut g, _) = t.lock_run(run, TaskKind::Plan).await?;
        if g.state != GoalState::Planning || g.plan_task_id != Some(run.task_id) {
            return Err(Error::Conflict(format!(
                "goal {} is {}, not being planned by this run",
                g.id, g.state
            )));
        }
        let approval = g.require_plan_approval;
        for m in &plan.modules {
            t.tx.execute(
                "INSERT INTO goal_modules (goal_id, key, title, description) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (goal_id, key) DO UPDATE SET title = EXCLUDED.title, description = EXCLUDED.description",
                &[&g.id, &m.key, &crate::pg_text(&m.title), &crate::pg_text(&m.description)],
            )
            .await?;
        }
        let mut ids: HashMap<String, Uuid> = HashMap::new();
        let done = t.done_subtasks(&g).await?;
        for r in t
            .tx
            .query(
                "SELECT subtask_key, id FROM tasks WHERE goal_id = $1 AND kind = 'work' AND state = 'done'",
                &[&g.id],
            )
            .await?
        {
            if let Some(k) = r.get::<_, Option<String>>(0) {
                ids.insert(k, r.get(1));
            }
        }
        let brief = g.brief();
        let mut queued = 0;
        let mut inserted = Vec::new();
        for s in &plan.subtasks {
            let facts = roles.facts(&s.role)?;
            let employee = t.employee_for(&g.tenant, &s.role, None).await?;
            let deps_left = s
                .depends_on
                .iter()
                .filter(|d| !done.iter().any(|x| &x.key == *d))
                .count() as u32;
            let pending = deps_left > 0 || approval;
            let text = briefs::subtask_brief(&brief, s);
            let subtask = json!({
                "key": s.key, "title": s.title, "description": s.description,
                "acceptance": s.acceptance, "module": s.module, "size": s.size.unwrap_or(1),
            });
            let deps_done: Vec<DoneSubtask> = done
                .iter()
                .filter(|d| s.depends_on.contains(&d.key))
                .cloned()
                .collect();
            let input = briefs::subtask_input(&text, &subtask, &deps_done, None, None);
            let task = t
                .insert_task(
                    &g,
                    NewGoalTask {
                        kind: TaskKind::Work,
                        role: s.role.clone(),
                        input,
                        employee_id: Some(employee),
                        max_attempts: facts.max_attempts,
                        timeout_secs: facts.timeout_secs,
                        key: Some(s.key.clone()),
                        module: s.module.clone(),
                        title: Some(s.title.clone()),
                        reviews_task_id: None,
                        deps_left,
                        size: u32::from(s.size.unwrap_or(1)),
                        review_role: facts.review_role.clone(),
                        min_score: facts.min_score,
                        max_reworks: facts.max_reworks,
                        pending,
                        idempotency_key: None,
                    },
                )
                .await?;
            queued += u32::from(!pending);
            ids.insert(s.key.clone(), task.id());
            inserted.push((task.id(), s.depends_on.clone()));
        }
        for (id, deps) in &inserted {
            for d in deps {
                let on = *ids.get(d).ok_or_else(|| {
                    Error::Invalid(format!("the plan names a dependency {d} it does not have"))
                })?;
                t.tx.execute(
                    "INSERT INTO task_deps (task_id, depends_on) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[id, &on],
                )
                .await?;
            }
        }
        let plan_json = serde_json::to_value(plan).expect("a plan serialises");
        t.tx.execute(
            "UPDATE goals SET plan = $2, plan_errors = NULL WHERE id = $1",
            &[&g.id, &plan_json],
        )
        .await?;
        g.plan = Some(plan.clone());
        g.plan_errors.clear();
        let n = plan.subtasks.len() as u32;
        t.event(
            &g,
            "plan",
            None,
            Some(&format!("plan accepted: {n} sub-tasks, {queued} queued")),
            Some(run.task_id),
            Some(json!({"subtasks": n, "queued": queued})),
        )
        .await?;
        let (to, why) = if approval {
            (
                GoalState::AwaitingApproval,
                "plan accepted; it waits for a person's approval",
            )
        } else {
            (GoalState::Running, "plan accepted")
        };
        t.goal_to(&mut g, to, why, None).await?;
        let outbox = t.commit().await?;
        Ok((
            PlanAccepted {
                subtasks: n,
                queued,
                awaiting_approval: approval,
            },
            outbox,
        ))
    }

    /// Refuses the plan of `run` with every error; past the limit the goal
    /// waits for a person.
    pub async fn reject_plan(
        &self,
        run: &RunRef,
        errors: Vec<String>,
        roles: &LoopRoles,
    ) -> Result<(PlanRejected, Vec<OutboxMsg>)> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let (mut g, _) = t.lock_run(run, TaskKind::Plan).await?;
        if g.state != GoalState::Planning || g.plan_task_id != Some(run.task_id) {
            return Err(Error::Conflict(format!(
                "goal {} is {}, not being planned by this run",
                g.id, g.state
            )));
        }
        let r = t
            .refuse_plan(&mut g, errors, roles.max_plan_rejections)
            .await?;
        Ok((r, t.commit().await?))
    }

    /// Every sub-task is done: a delivery run is queued, unless one is open.
    pub async fn dispatch_delivery(&self, goal: Uuid, roles: &LoopRoles) -> Result<Vec<OutboxMsg>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(mut g) = t.find_goal(goal).await? else {
            return Ok(Vec::new());
        };
        if g.state != GoalState::Delivering {
            return Ok(Vec::new());
        }
        if g.deliver_task_id.is_some() {
            // Running, it will deliver; ended, `delivery_ended` judges it.
            return Ok(Vec::new());
        }
        t.delivery_run(&mut g, roles).await?;
        t.commit().await
    }

    /// The delivery run `task` ended: done, the goal is done with its
    /// deliverable; failed, another run is queued (or the goal waits for a
    /// person).
    pub async fn delivery_ended(
        &self,
        goal: Uuid,
        task: Uuid,
        roles: &LoopRoles,
    ) -> Result<Vec<OutboxMsg>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(mut g) = t.find_goal(goal).await? else {
            return Ok(Vec::new());
        };
        if g.state != GoalState::Delivering || g.deliver_task_id != Some(task) {
            return Ok(Vec::new());
        }
        let run = t.lock_task(&g, task).await?;
        match run.state() {
            TaskState::Done => {
                let result = run.view().result.clone().unwrap_or(Value::Null);
                let deliverable = json!({
                    "summary": result.get("message").cloned().unwrap_or(Value::Null),
                    "files": result.get("files").cloned().unwrap_or_else(|| json!([])),
                    "task_id": task,
                });
                t.tx.execute(
                    "UPDATE goals SET deliverable = $2 WHERE id = $1",
                    &[&g.id, &deliverable],
                )
                .await?;
                g.deliverable = Some(deliverable);
                t.goal_to(&mut g, GoalState::Done, "the deliverable is written", None)
                    .await?;
            }
            s if s.is_final() => {
                let runs: i64 =
                    t.tx.query_one(
                        "SELECT count(*) FROM tasks WHERE goal_id = $1 AND kind = 'deliver'",
                        &[&g.id],
                    )
                    .await?
                    .get(0);
                if runs < i64::from(roles.max_delivery_runs) {
                    t.delivery_run(&mut g, roles).await?;
                } else {
                    let reason = format!(
                        "the deliverable could not be written in {runs} runs: {}",
                        run.view().error.clone().unwrap_or_default()
                    );
                    t.goal_to(
                        &mut g,
                        GoalState::Blocked,
                        &reason,
                        Some(Blocked {
                            kind: BlockKind::DeliveryFailed,
                            reason: reason.clone(),
                            task_id: Some(task),
                            details: Vec::new(),
                        }),
                    )
                    .await?;
                }
            }
            _ => return Ok(Vec::new()),
        }
        t.commit().await
    }
}

impl LoopTx<'_> {
    async fn delivery_run(&mut self, g: &mut GoalRow, roles: &LoopRoles) -> Result<()> {
        let facts = roles.facts(&roles.planner)?;
        let planner = match g.planner_id {
            Some(p) if self.active(p).await? => p,
            _ => self.employee_for(&g.tenant, &roles.planner, None).await?,
        };
        let done = self.done_subtasks(g).await?;
        let prompt = briefs::delivery_prompt(&g.brief(), &done);
        let task = self
            .insert_task(
                g,
                NewGoalTask::run(
                    TaskKind::Deliver,
                    &facts.name,
                    json!({"prompt": prompt, "list_workspace": true}),
                    planner,
                    facts.timeout_secs,
                ),
            )
            .await?;
        g.deliver_task_id = Some(task.id());
        self.tx
            .execute(
                "UPDATE goals SET deliver_task_id = $2 WHERE id = $1",
                &[&g.id, &task.id()],
            )
            .await?;
        Ok(())
    }
}
