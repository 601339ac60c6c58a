//! Model usage: one row per model call, and the sums quotas are checked
//! against (per run, per task, per employee, and per employee since a time,
//! for daily quotas).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Result, Store};

/// One model call.
#[derive(Clone, Debug)]
pub struct NewUsage {
    /// When the call was answered.
    pub at: OffsetDateTime,
    pub tenant: String,
    pub run_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    pub employee_id: Option<Uuid>,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// Sums over some model calls.
#[derive(schemars::JsonSchema, Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct UsageTotals {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
}

/// A day's spend of one budget subject, after a charge.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct DaySpend {
    pub tokens: i64,
    pub cost_usd: f64,
    /// The (UTC) day charged.
    pub day: time::Date,
}

impl Store {
    /// Adds to today's (UTC) spend of `subject` in `tenant` (`employee` or
    /// the role) and answers the totals after the change; see
    /// `sql/0009_day_budgets.sql`.
    pub async fn charge_day(
        &self,
        tenant: &str,
        employee: Option<Uuid>,
        role: &str,
        tokens: i64,
        cost_usd: f64,
        day: Option<time::Date>,
    ) -> Result<DaySpend> {
        let subject = match employee {
            Some(e) => format!("employee:{e}"),
            None => format!("role:{role}"),
        };
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO day_budgets (tenant, subject, day, tokens, cost_usd)
                 VALUES ($1, $2, COALESCE($5::date, (now() AT TIME ZONE 'UTC')::date), $3, $4)
                 ON CONFLICT (tenant, subject, day) DO UPDATE
                     SET tokens = day_budgets.tokens + EXCLUDED.tokens,
                         cost_usd = day_budgets.cost_usd + EXCLUDED.cost_usd
                 RETURNING tokens, cost_usd, day",
            )
            .await?;
        let row = client
            .query_one(&stmt, &[&tenant, &subject, &tokens, &cost_usd, &day])
            .await?;
        Ok(DaySpend {
            tokens: row.get(0),
            cost_usd: row.get(1),
            day: row.get(2),
        })
    }

    /// What a run's egress moved, in bytes (received, sent), on its run row.
    pub async fn record_run_egress(&self, run: Uuid, bytes_in: u64, bytes_out: u64) -> Result<()> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.client()
            .await?
            .execute(
                "UPDATE runs SET egress_bytes_in = $2, egress_bytes_out = $3 WHERE id = $1",
                &[&run, &n(bytes_in), &n(bytes_out)],
            )
            .await?;
        Ok(())
    }

    pub async fn insert_usage(&self, u: &NewUsage) -> Result<()> {
        let tokens = |n: u64, what: &str| {
            i64::try_from(n)
                .map_err(|_| Error::Invalid(format!("{what} {n} is too large to store")))
        };
        let prompt = tokens(u.prompt_tokens, "prompt_tokens")?;
        let completion = tokens(u.completion_tokens, "completion_tokens")?;
        if !(u.cost_usd.is_finite() && u.cost_usd >= 0.0) {
            return Err(Error::Invalid(format!(
                "cost_usd {} is not a cost; give a finite number of dollars, 0 or more",
                u.cost_usd
            )));
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO usage (at, tenant, run_id, task_id, employee_id, model, prompt_tokens, completion_tokens, cost_usd)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &u.at,
                    &u.tenant,
                    &u.run_id,
                    &u.task_id,
                    &u.employee_id,
                    &u.model,
                    &prompt,
                    &completion,
                    &u.cost_usd,
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn usage_of_run(&self, run_id: Uuid) -> Result<UsageTotals> {
        self.usage_where("run_id = $1", run_id, None).await
    }

    pub async fn usage_of_task(&self, task_id: Uuid) -> Result<UsageTotals> {
        self.usage_where("task_id = $1", task_id, None).await
    }

    /// Everything the employee ever used.
    pub async fn usage_of_employee(&self, employee_id: Uuid) -> Result<UsageTotals> {
        self.usage_where("employee_id = $1", employee_id, None)
            .await
    }

    /// What the employee used from `since` on (for daily quotas: since the
    /// start of the day, or 24 hours ago).
    pub async fn employee_usage_since(
        &self,
        employee_id: Uuid,
        since: OffsetDateTime,
    ) -> Result<UsageTotals> {
        self.usage_where("employee_id = $1", employee_id, Some(since))
            .await
    }

    /// What runs of `role` in `tenant` without an employee used from
    /// `since` on (a role's daily quota when no employee does the work).
    pub async fn role_usage_since(
        &self,
        tenant: &str,
        role: &str,
        since: OffsetDateTime,
    ) -> Result<UsageTotals> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT count(*), COALESCE(sum(u.prompt_tokens), 0)::bigint,
                        COALESCE(sum(u.completion_tokens), 0)::bigint, COALESCE(sum(u.cost_usd), 0)::float8
                 FROM usage u JOIN tasks t ON t.id = u.task_id
                 WHERE u.tenant = $1 AND t.role = $2 AND u.employee_id IS NULL AND u.at >= $3",
            )
            .await?;
        let r = client.query_one(&stmt, &[&tenant, &role, &since]).await?;
        Ok(totals(&r))
    }

    async fn usage_where(
        &self,
        cond: &'static str,
        id: Uuid,
        since: Option<OffsetDateTime>,
    ) -> Result<UsageTotals> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT count(*), COALESCE(sum(prompt_tokens), 0)::bigint,
                        COALESCE(sum(completion_tokens), 0)::bigint, COALESCE(sum(cost_usd), 0)::float8
                 FROM usage WHERE {cond} AND ($2::timestamptz IS NULL OR at >= $2)"
            ))
            .await?;
        let r = client.query_one(&stmt, &[&id, &since]).await?;
        Ok(totals(&r))
    }
}

/// (count, prompt, completion, cost) as totals.
fn totals(r: &tokio_postgres::Row) -> UsageTotals {
    let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    let (prompt_tokens, completion_tokens) = (n(1), n(2));
    UsageTotals {
        calls: n(0),
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        cost_usd: r.get(3),
    }
}
