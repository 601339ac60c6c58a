//! Reviews: the runs that judge a sub-task's work, their verdicts, and the
//! points the verdicts give.
//!
//! A sub-task whose role needs review goes `running → review` when its run
//! ends, and the reviewer consumer asks for a review run
//! ([`Store::dispatch_review`]) of the reviewing role, by an employee who
//! did not do the work. The run's verdict ([`Store::submit_verdict`]) is
//! applied at once, in one transaction: approved, the sub-task is done (and
//! its dependents may start); rejected, it goes back to its employee with
//! the issues, or — past its reworks — waits for a person with every
//! round's issues. Each verdict is one row of the score ledger for the
//! employee who did the work, and its sign follows the verdict: an approval
//! never costs points, a rejection never earns them. A review run that ends
//! without a verdict is replaced ([`Store::review_ended`]), a few times.

use serde_json::json;
use subjects::goals::{BlockKind, NotifyKind, ReviewVerdict, TaskKind};
use subjects::TaskState;
use uuid::Uuid;

use crate::briefs::{self, Round};
use crate::goals::{GoalRow, GoalTask, LoopTx, NewGoalTask};
use crate::plans::{LoopRoles, RunRef};
use crate::{Error, OutboxMsg, Result, Store};

/// What a verdict did to the sub-task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerdictOutcome {
    /// Approved: the sub-task is done.
    Done,
    /// Rejected: it is queued again with the issues (`round` reworks so far).
    Rework { round: u32 },
    /// Rejected past its reworks: a person decides.
    Escalated,
}

/// A verdict as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictApplied {
    pub review_id: i64,
    pub points: i32,
    pub outcome: VerdictOutcome,
}

/// Points a verdict gives the employee who did the work: an approval
/// `score × size`, a rejection `−(11 − score) × size`.
pub fn points(score: u8, approve: bool, size: u32) -> i32 {
    let size = size.clamp(1, 5) as i32;
    let score = i32::from(score.clamp(1, 10));
    if approve {
        score * size
    } else {
        -(11 - score) * size
    }
}

impl LoopTx<'_> {
    async fn rounds_of(&self, x: Uuid) -> Result<Vec<Round>> {
        Ok(self
            .tx
            .query(
                "SELECT score, issues FROM reviews WHERE task_id = $1 AND verdict = 'rejected' ORDER BY id",
                &[&x],
            )
            .await?
            .iter()
            .map(|r| Round {
                score: r.get::<_, i16>(0).clamp(1, 10) as u8,
                issues: serde_json::from_value(r.get(1)).unwrap_or_default(),
            })
            .collect())
    }

    /// The review runs of `x`'s current round, newest last.
    async fn review_runs(&self, x: &GoalTask) -> Result<Vec<(Uuid, TaskState)>> {
        Ok(self
            .tx
            .query(
                "SELECT id, state::text FROM tasks
                 WHERE reviews_task_id = $1 AND kind = 'review' AND idempotency_key LIKE $2
                 ORDER BY created_at, id",
                &[&x.id(), &format!("review:{}:{}:%", x.id(), x.reworks)],
            )
            .await?
            .iter()
            .map(|r| {
                let s: String = r.get(1);
                (r.get(0), TaskState::parse(&s).unwrap_or(TaskState::Failed))
            })
            .collect())
    }

    /// Queues a review run of `x`, the `n`th of its round.
    async fn review_run(
        &mut self,
        g: &GoalRow,
        x: &GoalTask,
        n: usize,
        roles: &LoopRoles,
    ) -> Result<()> {
        let role = x
            .review_role
            .clone()
            .ok_or_else(|| Error::Invalid(format!("sub-task {} needs no review", x.id())))?;
        let facts = roles.facts(&role)?;
        let reviewer = self
            .employee_for(&g.tenant, &role, x.view().employee_id)
            .await?;
        let subtask = x.view().input.get("subtask").cloned().unwrap_or_default();
        let earlier = self.rounds_of(x.id()).await?;
        let prompt = briefs::review_prompt(
            &g.brief(),
            x.id(),
            x.key.as_deref().unwrap_or_default(),
            x.title.as_deref().unwrap_or_default(),
            &subtask,
            x.view().result.as_ref(),
            x.min_score,
            &earlier,
        );
        let mut new = NewGoalTask::run(
            TaskKind::Review,
            &facts.name,
            json!({"prompt": prompt, "review_of": x.id()}),
            reviewer,
            facts.timeout_secs,
        );
        new.reviews_task_id = Some(x.id());
        new.idempotency_key = Some(format!("review:{}:{}:{n}", x.id(), x.reworks));
        self.insert_task(g, new).await?;
        Ok(())
    }
}

impl Store {
    /// `task`'s work awaits review: a review run is queued, unless one of
    /// this round is open.
    pub async fn dispatch_review(
        &self,
        goal: Uuid,
        task: Uuid,
        roles: &LoopRoles,
    ) -> Result<Vec<OutboxMsg>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(g) = t.find_goal(goal).await? else {
            return Ok(Vec::new());
        };
        let x = t.lock_task(&g, task).await?;
        if x.state() != TaskState::Review {
            return Ok(Vec::new());
        }
        let runs = t.review_runs(&x).await?;
        if !runs.is_empty() {
            // Asked for already (a redelivery); its end is `review_ended`'s.
            return Ok(Vec::new());
        }
        t.review_run(&g, &x, 1, roles).await?;
        t.commit().await
    }

    /// The review run `review` ended. When its sub-task still awaits a
    /// verdict, another review run is queued — or, past the limit, the
    /// sub-task waits for a person.
    pub async fn review_ended(
        &self,
        goal: Uuid,
        review: Uuid,
        roles: &LoopRoles,
    ) -> Result<Vec<OutboxMsg>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let Some(mut g) = t.find_goal(goal).await? else {
            return Ok(Vec::new());
        };
        let r = t.lock_task(&g, review).await?;
        let Some(x) = r.reviews_task_id else {
            return Ok(Vec::new());
        };
        let mut x = t.lock_task(&g, x).await?;
        if x.state() != TaskState::Review {
            return Ok(Vec::new());
        }
        let runs = t.review_runs(&x).await?;
        if runs.last().map(|(id, _)| *id) != Some(review) || !r.state().is_final() {
            return Ok(Vec::new());
        }
        if runs.len() < roles.max_review_runs as usize {
            t.review_run(&g, &x, runs.len() + 1, roles).await?;
        } else {
            let reason = format!(
                "no verdict for {} after {} review runs (the last: {})",
                x.label(),
                runs.len(),
                r.view()
                    .error
                    .clone()
                    .unwrap_or_else(|| "it ended without calling action_review_submit".into())
            );
            t.subtask_failed(&mut g, &mut x, BlockKind::ReviewFailed, &reason, Vec::new())
                .await?;
        }
        t.commit().await
    }

    /// Applies the verdict of `run` (a review run). Refused (403) when the
    /// run was given another sub-task, when the reviewer did the work
    /// itself, or when the run does not hold its task.
    pub async fn submit_verdict(
        &self,
        run: &RunRef,
        v: &ReviewVerdict,
    ) -> Result<(VerdictApplied, Vec<OutboxMsg>)> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let (mut g, r) = t.lock_run(run, TaskKind::Review).await?;
        if r.reviews_task_id != Some(v.task_id) {
            return Err(Error::Refused {
                status: 403,
                reason: format!(
                    "this review run was given task {}, not {}; a verdict is only for the task a run was given",
                    r.reviews_task_id.map(|x| x.to_string()).unwrap_or_default(),
                    v.task_id
                ),
            });
        }
        let mut x = t.lock_task(&g, v.task_id).await?;
        // A run reviews the round it was given, not a later one (its
        // sub-task may have been sent back and come again meanwhile).
        let given: Option<String> =
            t.tx.query_one(
                "SELECT idempotency_key FROM tasks WHERE id = $1",
                &[&run.task_id],
            )
            .await?
            .get(0);
        let round = format!("review:{}:{}:", x.id(), x.reworks);
        if !given.as_deref().is_some_and(|k| k.starts_with(&round)) {
            return Err(Error::Refused {
                status: 403,
                reason: format!(
                    "this review run was given an earlier round of task {}; the rework is reviewed by a run of its own",
                    x.id()
                ),
            });
        }
        if x.view().employee_id.is_some() && x.view().employee_id == run.employee_id {
            return Err(Error::Refused {
                status: 403,
                reason: format!(
                    "employee {} did the work of task {}; nobody reviews their own work",
                    run.employee_id.map(|e| e.to_string()).unwrap_or_default(),
                    x.id()
                ),
            });
        }
        if x.state() != TaskState::Review {
            return Err(Error::Conflict(format!(
                "task {} is {}, not awaiting review; its verdict was given already",
                x.id(),
                x.state()
            )));
        }
        if !(1..=10).contains(&v.score) {
            return Err(Error::Invalid(format!(
                "a score is from 1 to 10, not {}",
                v.score
            )));
        }
        if v.approve && v.score < x.min_score {
            return Err(Error::Invalid(format!(
                "an approval needs a score of at least {}, not {}; reject with the issues instead",
                x.min_score, v.score
            )));
        }
        let issues: Vec<String> = v
            .issues
            .iter()
            .map(|i| crate::pg_text(i.trim()).into_owned())
            .filter(|i| !i.is_empty())
            .collect();
        if !v.approve && issues.is_empty() {
            return Err(Error::Invalid(
                "a rejection needs at least one issue saying what must change".into(),
            ));
        }
        let verdict = if v.approve { "approved" } else { "rejected" };
        let review_id: i64 = t
            .tx
            .query_one(
                "INSERT INTO reviews (task_id, reviewer_task_id, reviewer_run_id, reviewer_employee_id,
                                      score, verdict, comments, issues, round, tenant, at)
                 VALUES ($1, $2, $3, $4, $5, $6::text::review_verdict, $7, $8, $9, $10, $11) RETURNING id",
                &[
                    &x.id(),
                    &run.task_id,
                    &run.run_id,
                    &run.employee_id,
                    &i16::from(v.score),
                    &verdict,
                    &crate::pg_text(&v.summary),
                    &json!(issues),
                    &(x.reworks as i32),
                    &g.tenant,
                    &t.now,
                ],
            )
            .await?
            .get(0);
        let pts = points(v.score, v.approve, x.size);
        if let Some(worker) = x.view().employee_id {
            t.tx.execute(
                "INSERT INTO score_events (tenant, employee_id, delta, reason, task_id, review_id, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &g.tenant,
                    &worker,
                    &pts,
                    &format!(
                        "{verdict} with score {} (size {}) for {}",
                        v.score,
                        x.size,
                        x.label()
                    ),
                    &x.id(),
                    &review_id,
                    &t.now,
                ],
            )
            .await?;
        }
        t.event(
            &g,
            "review",
            None,
            Some(&format!("{} {verdict} with score {}", x.label(), v.score)),
            Some(x.id()),
            Some(json!({"score": v.score, "approve": v.approve, "issues": issues, "points": pts})),
        )
        .await?;
        let outcome = if v.approve {
            t.task_to(&mut x, TaskState::Done, None).await?;
            t.subtask_done(&mut g, &x).await?;
            VerdictOutcome::Done
        } else {
            // Past the cap the sub-task goes from review straight to a
            // person; within it, back to work with the issues.
            x.reworks += 1;
            t.tx.execute(
                "UPDATE tasks SET reworks = $2 WHERE id = $1",
                &[&x.id(), &(x.reworks as i32)],
            )
            .await?;
            t.notify(
                &g,
                NotifyKind::ReviewRejected,
                Some(x.id()),
                format!(
                    "{} was sent back (score {}): {}",
                    x.label(),
                    v.score,
                    issues.join("; ")
                ),
                Some(json!({"score": v.score, "issues": issues, "round": x.reworks})),
            );
            if x.reworks > x.max_reworks {
                let rounds = t.rounds_of(x.id()).await?;
                let details = rounds
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        format!(
                            "round {} (score {}): {}",
                            i + 1,
                            r.score,
                            r.issues.join("; ")
                        )
                    })
                    .collect();
                let reason = format!(
                    "{} was rejected {} times, more than its role's {} reworks; a person decides",
                    x.label(),
                    x.reworks,
                    x.max_reworks
                );
                t.subtask_failed(
                    &mut g,
                    &mut x,
                    BlockKind::ReworksExhausted,
                    &reason,
                    details,
                )
                .await?;
                VerdictOutcome::Escalated
            } else {
                t.task_to(&mut x, TaskState::Rework, Some(&issues.join("; ")))
                    .await?;
                // A paused goal, or one whose budget is spent, keeps it in
                // rework until it goes on (`release_ready`).
                if !g.stopped() {
                    let input = t.compose_input(&x, None).await?;
                    t.queue(&mut x, input, Some("sent back for rework"), false)
                        .await?;
                }
                VerdictOutcome::Rework { round: x.reworks }
            }
        };
        let outbox = t.commit().await?;
        Ok((
            VerdictApplied {
                review_id,
                points: pts,
                outcome,
            },
            outbox,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::points;

    #[test]
    fn points_follow_the_verdict_and_the_size() {
        for score in 1..=10u8 {
            for size in 1..=5u32 {
                assert!(points(score, true, size) > 0, "approval {score} {size}");
                assert!(points(score, false, size) < 0, "rejection {score} {size}");
            }
        }
        assert_eq!(points(8, true, 2), 16);
        assert_eq!(points(3, false, 1), -8);
        assert_eq!(points(10, false, 1), -1);
        // Out-of-range sizes are clamped, not trusted.
        assert_eq!(points(5, true, 99), 25);
    }
}
