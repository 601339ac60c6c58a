//! A goal's dependency graph, and how a task of a goal ends.
//!
//! A sub-task waits (`pending`) while `deps_left` > 0. The transaction that
//! makes a sub-task `done` counts one dependency less for each of its
//! dependents and queues those with none left, so a dependent starts as
//! soon as its last dependency is done: no polling, no cron. A sub-task that
//! fails for good is `blocked` instead of `failed` (a person may still
//! retry it), together with every sub-task that waits on it, and the goal
//! goes to a person. The same transaction that ends a planning, review or
//! delivery run tells the consumer that handles it.

use serde_json::Value;
use subjects::goals::{BlockKind, Blocked, GoalState, LoopKind, TaskKind};
use subjects::TaskState;
use uuid::Uuid;

use crate::briefs::{self, DoneSubtask, Round};
use crate::goals::{GoalRow, GoalTask, LoopTx};
use crate::tasks::{storable_result, Finish, Finished, Running};
use crate::{Result, Store};

impl LoopTx<'_> {
    /// `x`, a sub-task, is done: the sub-tasks it blocked wait for it no
    /// more, each of its dependents counts one dependency less and is
    /// queued when none is left (unless the goal holds new work), and when
    /// every sub-task is done the goal goes to delivery.
    pub async fn subtask_done(&mut self, g: &mut GoalRow, x: &GoalTask) -> Result<()> {
        self.unblock_dependents(g, x.id()).await?;
        let rows = self
            .tx
            .query(
                "UPDATE tasks SET deps_left = deps_left - 1
                 WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = $1)
                   AND state IN ('pending', 'blocked') AND deps_left > 0
                 RETURNING id",
                &[&x.id()],
            )
            .await?;
        let mut ready: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        ready.sort();
        for id in ready {
            let mut d = self.lock_task(g, id).await?;
            if d.deps_left == 0 && d.state() == TaskState::Pending && !g.holds_work() {
                let input = self.compose_input(&d, None).await?;
                self.queue(&mut d, input, Some("its dependencies are done"), false)
                    .await?;
            }
        }
        self.check_complete(g).await
    }

    /// Queues every waiting sub-task with no dependency left (on resume,
    /// approval, a person's retry).
    pub async fn release_ready(&mut self, g: &GoalRow) -> Result<()> {
        if g.holds_work() {
            return Ok(());
        }
        for mut d in self
            .lock_tasks(
                g,
                &[TaskKind::Work, TaskKind::Review],
                &[TaskState::Pending, TaskState::Rework],
            )
            .await?
        {
            if d.state() == TaskState::Rework {
                // Sent back while the goal was stopped.
                let input = self.compose_input(&d, None).await?;
                self.queue(&mut d, input, Some("sent back for rework"), false)
                    .await?;
            } else if d.kind == TaskKind::Review {
                // A review run held back: its input does not change.
                let input = d.view().input.clone();
                self.queue(&mut d, input, Some("the goal goes on"), false)
                    .await?;
            } else if d.deps_left == 0 {
                let input = self.compose_input(&d, None).await?;
                self.queue(&mut d, input, Some("its dependencies are done"), false)
                    .await?;
            }
        }
        Ok(())
    }

    /// When every sub-task of a running goal is done, the goal goes to
    /// delivery. Otherwise, when a sub-task is still blocked, the goal waits
    /// for a person about it.
    pub async fn check_complete(&mut self, g: &mut GoalRow) -> Result<()> {
        if g.state != GoalState::Running {
            return Ok(());
        }
        let row = self
            .tx
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'done'),
                        count(*) FILTER (WHERE state NOT IN ('done', 'cancelled'))
                 FROM tasks WHERE goal_id = $1 AND kind = 'work'",
                &[&g.id],
            )
            .await?;
        let (done, open): (i64, i64) = (row.get(0), row.get(1));
        if open == 0 && done > 0 {
            self.goal_to(g, GoalState::Delivering, "every sub-task is done", None)
                .await?;
            g.deliver_task_id = None;
            self.tx
                .execute(
                    "UPDATE goals SET deliver_task_id = NULL WHERE id = $1",
                    &[&g.id],
                )
                .await?;
            self.loop_work(g, None, LoopKind::Deliver);
            return Ok(());
        }
        // A sub-task blocked on its own account (not by a dependency) still
        // needs a person.
        let stuck = self
            .tx
            .query_opt(
                "SELECT t.id, t.error FROM tasks t
                 WHERE t.goal_id = $1 AND t.kind = 'work' AND t.state = 'blocked'
                   AND NOT EXISTS (SELECT 1 FROM task_deps e JOIN tasks d ON d.id = e.depends_on
                                   WHERE e.task_id = t.id AND d.state IN ('blocked', 'failed'))
                 ORDER BY t.updated_at LIMIT 1",
                &[&g.id],
            )
            .await?;
        if let Some(r) = stuck {
            let (id, error): (Uuid, Option<String>) = (r.get(0), r.get(1));
            let reason = error.unwrap_or_else(|| format!("sub-task {id} is blocked"));
            self.goal_to(
                g,
                GoalState::Blocked,
                &reason,
                Some(Blocked {
                    kind: BlockKind::TaskFailed,
                    reason: reason.clone(),
                    task_id: Some(id),
                    details: Vec::new(),
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// `x` failed for good (`kind` says how): it is blocked, so is every
    /// sub-task that waits on it, and the goal waits for a person.
    pub async fn subtask_failed(
        &mut self,
        g: &mut GoalRow,
        x: &mut GoalTask,
        kind: BlockKind,
        reason: &str,
        details: Vec<String>,
    ) -> Result<()> {
        if x.state() != TaskState::Blocked {
            self.task_to(x, TaskState::Blocked, Some(reason)).await?;
        }
        let rows = self
            .tx
            .query(
                "WITH RECURSIVE down(id) AS (
                     SELECT task_id FROM task_deps WHERE depends_on = $1
                     UNION SELECT e.task_id FROM task_deps e JOIN down ON e.depends_on = down.id)
                 SELECT id FROM down ORDER BY id",
                &[&x.id()],
            )
            .await?;
        let waits = format!("waits on {}, which is blocked: {reason}", x.label());
        for r in rows {
            let mut d = self.lock_task(g, r.get(0)).await?;
            if d.state() == TaskState::Pending {
                self.task_to(&mut d, TaskState::Blocked, Some(&waits))
                    .await?;
            }
        }
        let blocked = Blocked {
            kind,
            reason: reason.to_string(),
            task_id: Some(x.id()),
            details,
        };
        match g.state {
            GoalState::Running | GoalState::Paused | GoalState::Delivering => {
                self.goal_to(g, GoalState::Blocked, reason, Some(blocked))
                    .await
            }
            // Already waiting for a person (about something else), or
            // being planned again: it is on the record.
            _ => {
                let detail = serde_json::to_value(&blocked).expect("a block serialises");
                self.event(g, "blocked", None, Some(reason), Some(x.id()), Some(detail))
                    .await
            }
        }
    }

    /// The sub-tasks that waited on `x` (directly or not) while it was
    /// blocked wait for their dependencies again, unless another of theirs
    /// is still blocked.
    pub async fn unblock_dependents(&mut self, g: &GoalRow, x: Uuid) -> Result<()> {
        let rows = self
            .tx
            .query(
                "WITH RECURSIVE down(id, depth) AS (
                     SELECT task_id, 1 FROM task_deps WHERE depends_on = $1
                     UNION SELECT e.task_id, down.depth + 1 FROM task_deps e JOIN down ON e.depends_on = down.id
                       WHERE down.depth < 1000)
                 SELECT id, max(depth) FROM down GROUP BY id ORDER BY max(depth), id",
                &[&x],
            )
            .await?;
        for r in rows {
            let mut d = self.lock_task(g, r.get(0)).await?;
            if d.state() != TaskState::Blocked {
                continue;
            }
            let still: bool = self
                .tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM task_deps e JOIN tasks t ON t.id = e.depends_on
                                    WHERE e.task_id = $1 AND t.state IN ('blocked', 'failed'))",
                    &[&d.id()],
                )
                .await?
                .get(0);
            if !still {
                self.task_to(
                    &mut d,
                    TaskState::Pending,
                    Some("its blocked dependency was recovered"),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// The input of a sub-task's next run: its brief, what its (done)
    /// dependencies delivered, and what the last review asked for.
    pub async fn compose_input(&self, x: &GoalTask, note: Option<&str>) -> Result<Value> {
        let input = &x.view().input;
        let Some(brief) = input.get("brief").and_then(Value::as_str) else {
            return Ok(input.clone());
        };
        let subtask = input.get("subtask").cloned().unwrap_or(Value::Null);
        let deps = self
            .tx
            .query(
                "SELECT t.subtask_key, t.title, t.result FROM task_deps e JOIN tasks t ON t.id = e.depends_on
                 WHERE e.task_id = $1 AND t.state = 'done' ORDER BY t.subtask_key",
                &[&x.id()],
            )
            .await?
            .iter()
            .map(|r| DoneSubtask {
                key: r.get::<_, Option<String>>(0).unwrap_or_default(),
                title: r.get::<_, Option<String>>(1).unwrap_or_default(),
                result: r.get(2),
            })
            .collect::<Vec<_>>();
        let round = if x.reworks > 0 {
            self.tx
                .query_opt(
                    "SELECT score, issues FROM reviews WHERE task_id = $1 ORDER BY id DESC LIMIT 1",
                    &[&x.id()],
                )
                .await?
                .map(|r| Round {
                    score: r.get::<_, i16>(0).clamp(1, 10) as u8,
                    issues: serde_json::from_value(r.get(1)).unwrap_or_default(),
                })
        } else {
            None
        };
        Ok(briefs::subtask_input(
            brief,
            &subtask,
            &deps,
            round.as_ref().map(|r| (x.reworks, r)),
            note,
        ))
    }
}

impl Store {
    /// Ends the attempt `r` holds on a task of a goal: [`Store::finish`]
    /// for a result or a failure for good. `None` when the task is no
    /// longer this worker's attempt.
    pub(crate) async fn finish_in_goal(
        &self,
        r: &Running,
        goal: Uuid,
        how: Finish,
    ) -> Result<Option<Finished>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let mut g = t.lock_goal(goal, None).await?;
        let mut x = t.lock_task(&g, r.task.id).await?;
        if x.state() != TaskState::Running
            || x.view().attempt != r.task.attempt
            || x.row.worker_id.as_deref() != Some(r.worker_id.as_str())
        {
            return Ok(None);
        }
        let ended = match x.kind {
            TaskKind::Work => None,
            TaskKind::Plan => Some(LoopKind::Planned),
            TaskKind::Review => Some(LoopKind::Reviewed),
            TaskKind::Deliver => Some(LoopKind::Delivered),
        };
        match how {
            Finish::Done { result } => {
                let result = storable_result(result);
                t.tx.execute(
                    "UPDATE tasks SET result = $2 WHERE id = $1",
                    &[&x.id(), &result],
                )
                .await?;
                x.row.view.result = Some(result);
                match ended {
                    None if x.review_role.is_some() => {
                        t.task_to(&mut x, TaskState::Review, None).await?;
                        t.loop_work(&g, Some(x.id()), LoopKind::Review);
                    }
                    None => {
                        t.task_to(&mut x, TaskState::Done, None).await?;
                        t.subtask_done(&mut g, &x).await?;
                    }
                    Some(kind) => {
                        t.task_to(&mut x, TaskState::Done, None).await?;
                        t.loop_work(&g, Some(x.id()), kind);
                    }
                }
            }
            Finish::Fail { error } => match ended {
                None => {
                    t.subtask_failed(&mut g, &mut x, BlockKind::TaskFailed, &error, Vec::new())
                        .await?
                }
                Some(kind) => {
                    t.task_to(&mut x, TaskState::Failed, Some(&error)).await?;
                    t.loop_work(&g, Some(x.id()), kind);
                }
            },
            other => {
                return Err(crate::Error::Invalid(format!(
                    "finish_in_goal handles results and failures, not {other:?}"
                )))
            }
        }
        let task = x.row.view.clone();
        let outbox = t.commit().await?;
        Ok(Some(Finished { task, outbox }))
    }
}
