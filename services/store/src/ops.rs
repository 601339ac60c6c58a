//! What the operations views read of one tenant: its overview and a
//! search over its tasks.

use std::collections::BTreeMap;

use subjects::goals::GoalState;
use subjects::ops::{MinuteCount, Overview};
use subjects::TaskState;
use uuid::Uuid;

use crate::tasks::{row_to_task, COLS};
use crate::{Error, Result, Store};

/// The longest a task search may run.
pub const SEARCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What `GET /v1/tasks` filters by; every field optional.
#[derive(Clone, Debug, Default)]
pub struct TaskSearch {
    pub state: Option<TaskState>,
    pub role: Option<String>,
    pub goal_id: Option<Uuid>,
    pub employee_id: Option<Uuid>,
    /// Text the task's id, input or error contains (case-insensitive).
    pub text: Option<String>,
    /// Only tasks made before this one (ids are UUIDv7, so in time
    /// order): the previous page's last.
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// `text` as a LIKE pattern that matches it literally anywhere.
fn like_anywhere(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Store {
    /// One tenant's figures for the overview.
    pub async fn overview(&self, tenant: &str) -> Result<Overview> {
        let client = self.client().await?;
        let mut tasks: BTreeMap<String, i64> = TaskState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        for r in client
            .query(
                "SELECT state::text, count(*) FROM tasks WHERE tenant = $1 GROUP BY 1",
                &[&tenant],
            )
            .await?
        {
            tasks.insert(r.get(0), r.get(1));
        }
        let mut goals: BTreeMap<String, i64> = GoalState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        for r in client
            .query(
                "SELECT state::text, count(*) FROM goals WHERE tenant = $1 GROUP BY 1",
                &[&tenant],
            )
            .await?
        {
            goals.insert(r.get(0), r.get(1));
        }
        let minutes = client
            .query(
                "WITH m AS (
                   SELECT generate_series(date_trunc('minute', now()) - interval '59 minutes',
                                          date_trunc('minute', now()), interval '1 minute') AS minute)
                 SELECT m.minute,
                        count(t.id) FILTER (WHERE t.state = 'done'),
                        count(t.id) FILTER (WHERE t.state = 'failed')
                   FROM m LEFT JOIN tasks t
                     ON t.tenant = $1 AND t.state IN ('done', 'failed')
                    AND t.updated_at >= date_trunc('minute', now()) - interval '59 minutes'
                    AND t.updated_at >= m.minute AND t.updated_at < m.minute + interval '1 minute'
                  GROUP BY m.minute ORDER BY m.minute",
                &[&tenant],
            )
            .await?;
        let throughput: Vec<MinuteCount> = minutes
            .iter()
            .map(|r| MinuteCount {
                minute: r.get(0),
                done: r.get(1),
                failed: r.get(2),
            })
            .collect();
        let figures = client
            .query_one(
                "SELECT
                   (SELECT count(*) FROM tasks WHERE tenant = $1 AND state = 'done'
                       AND updated_at >= now() - interval '1 minute'),
                   (SELECT count(*) FROM tasks WHERE tenant = $1 AND state = 'failed'
                       AND updated_at >= now() - interval '1 hour'),
                   (SELECT coalesce(sum(cost_usd), 0)::float8 FROM usage
                     WHERE tenant = $1 AND at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),
                   (SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)::int8 FROM usage
                     WHERE tenant = $1 AND at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),
                   (SELECT count(*) FROM employees WHERE tenant = $1 AND offboarded_at IS NULL),
                   (SELECT count(*) FROM schedules WHERE tenant = $1),
                   now()",
                &[&tenant],
            )
            .await?;
        Ok(Overview {
            tenant: tenant.to_string(),
            at: figures.get(6),
            waiting_for_person: goals.get(GoalState::Blocked.as_str()).copied().unwrap_or(0),
            tasks,
            goals,
            done_last_minute: figures.get(0),
            failed_last_hour: figures.get(1),
            spend_today_usd: figures.get(2),
            tokens_today: figures.get(3),
            employees: figures.get(4),
            schedules: figures.get(5),
            throughput,
        })
    }

    /// A page of the tenant's tasks that match, newest first, and the
    /// cursor of the next page when there may be one.
    pub async fn search_tasks(
        &self,
        tenant: &str,
        f: &TaskSearch,
    ) -> Result<(Vec<subjects::TaskView>, Option<String>)> {
        if f.limit == 0 {
            return Err(Error::Invalid("a page holds at least one task".into()));
        }
        let mut client = self.client().await?;
        // A text search scans the tenant's tasks: bounded in time, so that
        // no read key can keep the database busy.
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            SEARCH_TIMEOUT.as_millis()
        ))
        .await?;
        let state = f.state.map(|s| s.as_str().to_string());
        let text = f.text.as_deref().map(like_anywhere);
        let limit = i64::from(f.limit);
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLS} FROM tasks
                      WHERE tenant = $1
                        AND ($2::text IS NULL OR state::text = $2)
                        AND ($3::text IS NULL OR role = $3)
                        AND ($4::uuid IS NULL OR goal_id = $4)
                        AND ($5::uuid IS NULL OR employee_id = $5)
                        AND ($6::text IS NULL OR id::text LIKE $6 OR input::text ILIKE $6
                             OR coalesce(error, '') ILIKE $6)
                        AND ($7::uuid IS NULL OR id < $7)
                      ORDER BY id DESC
                      LIMIT $8"
                ),
                &[
                    &tenant,
                    &state,
                    &f.role,
                    &f.goal_id,
                    &f.employee_id,
                    &text,
                    &f.before,
                    &limit,
                ],
            )
            .await
            .map_err(|e| {
                if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
                    Error::Invalid(format!(
                        "the search took longer than {} s; narrow it with state, role, goal_id or employee_id",
                        SEARCH_TIMEOUT.as_secs()
                    ))
                } else {
                    Error::Db(e)
                }
            })?;
        tx.commit().await?;
        let tasks = rows
            .iter()
            .map(|r| row_to_task(r).map(|t| t.view))
            .collect::<Result<Vec<_>>>()?;
        let next = (tasks.len() as i64 == limit)
            .then(|| tasks.last().map(|t| t.id.to_string()))
            .flatten();
        Ok((tasks, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_literal() {
        assert_eq!(like_anywhere("50%_a\\"), "%50\\%\\_a\\\\%");
    }
}
