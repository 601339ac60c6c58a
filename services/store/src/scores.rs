//! Employees' scores: a ledger of every change with its reason, and the
//! leaderboard read from it.
//!
//! Verdicts write their rows ([`crate::verdicts`]); a person adjusts a
//! score through the API ([`Store::adjust_score`]), with their key on the
//! row. No agent can write here: no action leads to this module.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Result, Store};

/// One change of a score.
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct ScoreEvent {
    pub id: i64,
    pub employee_id: Uuid,
    pub delta: i32,
    pub reason: String,
    pub task_id: Option<Uuid>,
    pub review_id: Option<i64>,
    pub by_key: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

/// One employee on the leaderboard.
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct Standing {
    pub employee_id: Uuid,
    pub name: String,
    pub role: String,
    /// The sum of the ledger.
    pub score: i64,
    pub approved: i64,
    pub rejected: i64,
    /// Mean review score of its work, 1–10.
    pub mean_review: Option<f64>,
    /// Sub-tasks of goals it finished (done).
    pub subtasks_done: i64,
    /// Model spend per finished sub-task.
    pub cost_usd_per_subtask: Option<f64>,
    pub tokens_per_subtask: Option<f64>,
    /// Mean wall time of its runs that succeeded.
    pub secs_per_run: Option<f64>,
}

/// The most a person may move a score at once.
pub const MAX_ADJUSTMENT: i32 = 1000;

impl Store {
    /// `tenant`'s employees ranked by score (then by approvals), optionally
    /// of one role; offboarded employees are left out.
    pub async fn leaderboard(&self, tenant: &str, role: Option<&str>) -> Result<Vec<Standing>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT e.id, e.name, e.role,
                        coalesce((SELECT sum(delta) FROM score_events s WHERE s.employee_id = e.id), 0)::bigint,
                        (SELECT count(*) FROM reviews r JOIN tasks t ON t.id = r.task_id
                          WHERE t.employee_id = e.id AND r.verdict = 'approved'),
                        (SELECT count(*) FROM reviews r JOIN tasks t ON t.id = r.task_id
                          WHERE t.employee_id = e.id AND r.verdict = 'rejected'),
                        (SELECT avg(r.score)::float8 FROM reviews r JOIN tasks t ON t.id = r.task_id
                          WHERE t.employee_id = e.id),
                        (SELECT count(*) FROM tasks t WHERE t.employee_id = e.id AND t.goal_id IS NOT NULL
                          AND t.kind = 'work' AND t.state = 'done'),
                        (SELECT sum(u.cost_usd)::float8 FROM usage u WHERE u.employee_id = e.id),
                        (SELECT sum(u.prompt_tokens + u.completion_tokens)::float8 FROM usage u WHERE u.employee_id = e.id),
                        (SELECT avg(extract(epoch FROM r.finished_at - r.started_at))::float8
                          FROM runs r JOIN tasks t ON t.id = r.task_id
                          WHERE t.employee_id = e.id AND r.state = 'succeeded')
                 FROM employees e
                 WHERE e.tenant = $1 AND e.state <> 'offboarded' AND ($2::text IS NULL OR e.role = $2)",
                &[&tenant, &role],
            )
            .await?;
        let mut out: Vec<Standing> = rows
            .iter()
            .map(|r| {
                let done: i64 = r.get(7);
                let per = |total: Option<f64>| total.filter(|_| done > 0).map(|t| t / done as f64);
                Standing {
                    employee_id: r.get(0),
                    name: r.get(1),
                    role: r.get(2),
                    score: r.get(3),
                    approved: r.get(4),
                    rejected: r.get(5),
                    mean_review: r.get(6),
                    subtasks_done: done,
                    cost_usd_per_subtask: per(r.get(8)),
                    tokens_per_subtask: per(r.get(9)),
                    secs_per_run: r.get(10),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .cmp(&a.score)
                .then(b.approved.cmp(&a.approved))
                .then(a.name.cmp(&b.name))
        });
        Ok(out)
    }

    /// A person's adjustment of `tenant`'s employee's score (`by` is their
    /// API key), with the reason; returns the ledger row.
    pub async fn adjust_score(
        &self,
        tenant: &str,
        employee: Uuid,
        delta: i32,
        reason: &str,
        by: Uuid,
    ) -> Result<ScoreEvent> {
        if delta == 0 || delta.unsigned_abs() > MAX_ADJUSTMENT.unsigned_abs() {
            return Err(Error::Invalid(format!(
                "an adjustment is a non-zero number of points from -{MAX_ADJUSTMENT} to {MAX_ADJUSTMENT}, not {delta}"
            )));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 1000 {
            return Err(Error::Invalid(
                "an adjustment needs a reason of 1 to 1000 bytes".into(),
            ));
        }
        let client = self.client().await?;
        let row = client
            .query_opt(
                "WITH s AS (
                     INSERT INTO score_events (tenant, employee_id, delta, reason, by_key, at)
                     SELECT $1, e.id, $3, $4, $5, $6 FROM employees e WHERE e.id = $2 AND e.tenant = $1
                     RETURNING id, employee_id, delta, reason, task_id, review_id, by_key, at
                 ), a AS (
                     INSERT INTO audit (at, tenant, employee_id, action, target, outcome, detail)
                     SELECT s.at, $1, NULL, 'score.adjust', s.employee_id::text, 'allowed',
                            format('%s points by key %s: %s', s.delta, s.by_key, s.reason)
                     FROM s
                 )
                 SELECT id, employee_id, delta, reason, task_id, review_id, by_key, at FROM s",
                &[
                    &tenant,
                    &employee,
                    &delta,
                    &crate::pg_text(&format!("adjusted by a person: {reason}")),
                    &by,
                    &OffsetDateTime::now_utc(),
                ],
            )
            .await?
            .ok_or_else(|| Error::Missing(format!("employee {employee} does not exist")))?;
        Ok(score_event(&row))
    }

    /// `tenant`'s employee's score ledger, newest first.
    pub async fn score_events(
        &self,
        tenant: &str,
        employee: Uuid,
        limit: u32,
    ) -> Result<Vec<ScoreEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, employee_id, delta, reason, task_id, review_id, by_key, at
                 FROM score_events WHERE tenant = $1 AND employee_id = $2 ORDER BY id DESC LIMIT $3",
                &[&tenant, &employee, &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(score_event).collect())
    }
}

fn score_event(r: &tokio_postgres::Row) -> ScoreEvent {
    ScoreEvent {
        id: r.get(0),
        employee_id: r.get(1),
        delta: r.get(2),
        reason: r.get(3),
        task_id: r.get(4),
        review_id: r.get(5),
        by_key: r.get(6),
        at: r.get(7),
    }
}
