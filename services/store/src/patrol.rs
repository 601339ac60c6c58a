//! What the patrol reads and writes: its lease, the tasks that look stuck,
//! and the record of every step it takes.
//!
//! The patrol's decisions are its own (`services/patrol`); the store answers
//! the questions (which runs lost their heartbeat, which tasks wait
//! unclaimed, which goals went quiet) and applies the steps under the same
//! guards as the task path, so a step raced by the worker it concerns
//! changes nothing.

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use subjects::goals::{Notification, NotifyKind};
use subjects::subject;

use crate::goals::LoopTx;
use crate::tasks::{row_to_task, Running, COLS};
use crate::{OutboxMsg, Result, Store};

/// A running task as the patrol sees it.
#[derive(Clone, Debug)]
pub struct Suspect {
    /// What `finish` needs to end its attempt under the task path's guard.
    pub running: Running,
    pub max_attempts: u32,
    pub subtask_key: Option<String>,
    /// Seconds since its last heartbeat.
    pub silent_secs: f64,
    pub started_at: OffsetDateTime,
}

/// One step the patrol took.
#[derive(Clone, Debug)]
pub struct PatrolAction {
    pub tenant: String,
    pub task_id: Option<Uuid>,
    pub attempt: Option<u32>,
    pub goal_id: Option<Uuid>,
    pub subtask_key: Option<String>,
    pub rule: &'static str,
    pub action: &'static str,
    pub reason: String,
    pub evidence: Option<Value>,
    pub holder: String,
}

/// A step on record, as `GET`-style readers see it.
#[derive(serde::Serialize, Clone, Debug, PartialEq)]
pub struct PatrolRecord {
    pub id: i64,
    pub tenant: String,
    pub task_id: Option<Uuid>,
    pub attempt: Option<i32>,
    pub goal_id: Option<Uuid>,
    pub subtask_key: Option<String>,
    pub rule: String,
    pub action: String,
    pub reason: String,
    pub evidence: Option<Value>,
    pub holder: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A task queued and not claimed (or, from [`Store::churning`], started
/// over and over: `waited_secs` is then its number of runs).
#[derive(Clone, Debug)]
pub struct Waiting {
    pub id: Uuid,
    pub tenant: String,
    pub role: String,
    pub attempt: u32,
    pub goal_id: Option<Uuid>,
    pub waited_secs: f64,
}

/// A running goal with no change for a while.
#[derive(Clone, Debug)]
pub struct QuietGoal {
    pub id: Uuid,
    pub tenant: String,
    pub title: String,
    pub since: OffsetDateTime,
}

/// `id, tenant, role, attempt, goal_id, <seconds or count>` as a
/// [`Waiting`].
fn row_to_waiting(r: &tokio_postgres::Row) -> Waiting {
    Waiting {
        id: r.get(0),
        tenant: r.get(1),
        role: r.get(2),
        attempt: r.get::<_, i32>(3).max(0) as u32,
        goal_id: r.get(4),
        waited_secs: r.get(5),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Store {
    /// Take (or keep) the lease `name` for `holder` for `ttl`; true when
    /// `holder` holds it now. An expired lease passes to whoever asks first.
    pub async fn take_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                 WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()
                 RETURNING holder",
                &[&name, &holder, &secs(ttl)],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Give the lease up (on shutdown), so another patrol need not wait out
    /// its time.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await?;
        Ok(())
    }

    /// Running tasks, with their open run; `silent_for`: only those whose
    /// last heartbeat is older than that.
    pub async fn running_suspects(&self, silent_for: Option<Duration>) -> Result<Vec<Suspect>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLS}, r.run_id, t.max_attempts, t.subtask_key,
                            extract(epoch FROM now() - coalesce(t.heartbeat_at, r.run_started))::float8, r.run_started
                     FROM tasks t JOIN LATERAL (
                         SELECT id AS run_id, started_at AS run_started FROM runs
                         WHERE task_id = t.id AND state = 'running'
                         ORDER BY started_at DESC LIMIT 1) r ON true
                     WHERE t.state = 'running'
                       AND ($1::float8 IS NULL OR coalesce(t.heartbeat_at, r.run_started) < now() - make_interval(secs => $1))
                     ORDER BY t.updated_at LIMIT 500"
                ),
                &[&silent_for.map(secs)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let t = row_to_task(r)?;
                let n = COLS.split(',').count();
                Ok(Suspect {
                    running: Running {
                        worker_id: t.worker_id.clone().unwrap_or_default(),
                        dispatch_id: t.dispatch_id.unwrap_or_default(),
                        timeout_secs: t.timeout_secs,
                        run_id: r.get(n),
                        task: t.view,
                    },
                    max_attempts: r.get::<_, i32>(n + 1).max(1) as u32,
                    subtask_key: r.get(n + 2),
                    silent_secs: r.get(n + 3),
                    started_at: r.get(n + 4),
                })
            })
            .collect()
    }

    /// Tasks queued longer than `for_at_least` and not claimed.
    pub async fn unclaimed(&self, for_at_least: Duration) -> Result<Vec<Waiting>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, tenant, role, attempt, goal_id, extract(epoch FROM now() - updated_at)::float8
                 FROM tasks WHERE state = 'queued' AND updated_at < now() - make_interval(secs => $1)
                 ORDER BY updated_at LIMIT 500",
                &[&secs(for_at_least)],
            )
            .await?;
        Ok(rows.iter().map(row_to_waiting).collect())
    }

    /// Tasks started `at_least` times within `window` (a redelivery or
    /// retry storm), with their current attempt.
    pub async fn churning(&self, window: Duration, at_least: u32) -> Result<Vec<Waiting>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT t.id, t.tenant, t.role, t.attempt, t.goal_id, n.runs::float8
                 FROM (SELECT task_id, count(*) AS runs FROM runs
                       WHERE started_at > now() - make_interval(secs => $1)
                       GROUP BY task_id HAVING count(*) >= $2) n
                 JOIN tasks t ON t.id = n.task_id LIMIT 500",
                &[&secs(window), &i64::from(at_least)],
            )
            .await?;
        Ok(rows.iter().map(row_to_waiting).collect())
    }

    /// Running goals where nothing changed (the goal or any task of it) for
    /// `for_at_least`.
    pub async fn quiet_goals(&self, for_at_least: Duration) -> Result<Vec<QuietGoal>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT g.id, g.tenant, g.title,
                        greatest(g.updated_at, coalesce((SELECT max(t.updated_at) FROM tasks t WHERE t.goal_id = g.id), g.updated_at))
                 FROM goals g WHERE g.state = 'running'
                   AND g.updated_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.goal_id = g.id
                                   AND t.updated_at >= now() - make_interval(secs => $1))
                 LIMIT 500",
                &[&secs(for_at_least)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| QuietGoal {
                id: r.get(0),
                tenant: r.get(1),
                title: r.get(2),
                since: r.get(3),
            })
            .collect())
    }

    /// Steps already taken about a task (by id, or for a goal's sub-task by
    /// its key, so that a replanned sub-task keeps its count).
    pub async fn patrol_steps(
        &self,
        task: Uuid,
        goal: Option<Uuid>,
        key: Option<&str>,
    ) -> Result<u32> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM patrol_actions
                 WHERE action <> 'alert'
                   AND (task_id = $1 OR ($2::uuid IS NOT NULL AND goal_id = $2 AND subtask_key = $3))",
                &[&task, &goal, &key],
            )
            .await?
            .get(0);
        Ok(n.max(0) as u32)
    }

    /// Record a step, with a `patrol` event on its goal and a patrol-alert
    /// notification, in one transaction; the rows to publish, or `None`
    /// when it is an alert raised already (once per task attempt, or per
    /// goal quiet spell).
    pub async fn record_patrol(&self, a: &PatrolAction) -> Result<Option<Vec<OutboxMsg>>> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let n = t
            .tx
            .execute(
                "INSERT INTO patrol_actions (tenant, task_id, attempt, goal_id, subtask_key, rule, action, reason, evidence, holder, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT DO NOTHING",
                &[
                    &a.tenant,
                    &a.task_id,
                    &a.attempt.map(|n| n as i32),
                    &a.goal_id,
                    &a.subtask_key,
                    &a.rule,
                    &a.action,
                    &crate::pg_text(&a.reason),
                    &a.evidence,
                    &a.holder,
                    &t.now,
                ],
            )
            .await?;
        if n == 0 {
            return Ok(None);
        }
        let detail = serde_json::json!({
            "rule": a.rule, "action": a.action, "evidence": a.evidence, "attempt": a.attempt,
        });
        let summary = format!("patrol {} ({}): {}", a.action, a.rule, a.reason);
        match a.goal_id {
            Some(goal) => {
                if let Some(g) = t.find_goal(goal).await? {
                    t.event(
                        &g,
                        "patrol",
                        None,
                        Some(&summary),
                        a.task_id,
                        Some(detail.clone()),
                    )
                    .await?;
                    t.notify(
                        &g,
                        NotifyKind::PatrolAlert,
                        a.task_id,
                        summary,
                        Some(detail),
                    );
                }
            }
            None => {
                let n = Notification {
                    v: subjects::VERSION,
                    id: Uuid::now_v7(),
                    tenant: a.tenant.clone(),
                    kind: NotifyKind::PatrolAlert,
                    goal_id: None,
                    task_id: a.task_id,
                    summary,
                    detail: Some(detail),
                    at: t.now,
                };
                t.outbox.push(OutboxMsg {
                    id: n.id,
                    subject: subject::notify(&a.tenant, NotifyKind::PatrolAlert),
                    payload: serde_json::to_vec(&n).expect("a notification serialises"),
                    task_id: a.task_id,
                    available_at: t.now,
                });
            }
        }
        Ok(Some(t.commit().await?))
    }

    /// The patrol's record, newest first (`tenant`'s, or every tenant's).
    pub async fn patrol_record(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PatrolRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, tenant, task_id, attempt, goal_id, subtask_key, rule, action, reason, evidence, holder, at
                 FROM patrol_actions WHERE ($1::text IS NULL OR tenant = $1) ORDER BY id DESC LIMIT $2",
                &[&tenant, &i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PatrolRecord {
                id: r.get(0),
                tenant: r.get(1),
                task_id: r.get(2),
                attempt: r.get(3),
                goal_id: r.get(4),
                subtask_key: r.get(5),
                rule: r.get(6),
                action: r.get(7),
                reason: r.get(8),
                evidence: r.get(9),
                holder: r.get(10),
                at: r.get(11),
            })
            .collect())
    }

    /// Give a queued task of a goal to another employee of its role (hired
    /// when there is none); the employee now on it, if it changed.
    pub async fn reassign(&self, goal: Uuid, task: Uuid) -> Result<Option<Uuid>> {
        let mut client = self.client().await?;
        let t = LoopTx::begin(&mut client).await?;
        let Some(g) = t.find_goal(goal).await? else {
            return Ok(None);
        };
        let x = t.lock_task(&g, task).await?;
        if x.state() != subjects::TaskState::Queued {
            return Ok(None);
        }
        let now = x.view().employee_id;
        let next = t.employee_for(&g.tenant, &x.view().role, now).await?;
        t.tx.execute(
            "UPDATE tasks SET employee_id = $2 WHERE id = $1",
            &[&task, &next],
        )
        .await?;
        t.commit().await?;
        Ok(Some(next))
    }
}
