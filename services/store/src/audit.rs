//! The audit trail: every platform action an employee's run asked for,
//! allowed, denied or failed, kept for good.
//!
//! The gateway writes a row per action ([`Store::insert_audit`]); the HTTP
//! API reads them back with filters ([`Store::query_audit`]). Rows carry
//! plain ids (no foreign keys), so the trail outlives what it mentions.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{Error, Result, Store};

/// Longest `target` and `detail` kept; longer text is cut and marked.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most rows one query returns.
pub const MAX_LIMIT: u32 = 1000;

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    Denied,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Allowed, Outcome::Denied, Outcome::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// One action to record.
#[derive(Clone, Debug)]
pub struct NewAudit {
    /// When the action was asked for.
    pub at: OffsetDateTime,
    pub tenant: String,
    pub employee_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    pub run_id: Option<Uuid>,
    /// The action's name (`memory.set`, `fetch`, `egress`, …).
    pub action: String,
    /// What it acted on (a memory key, a URL, a host).
    pub target: Option<String>,
    pub outcome: Outcome,
    /// Why it was denied or failed, or what it did.
    pub detail: Option<String>,
}

/// A recorded action.
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    pub tenant: String,
    pub employee_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    pub run_id: Option<Uuid>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// Which rows [`Store::query_audit`] returns: the tenant's, narrowed by
/// every filter that is set; `since` and `until` are inclusive.
#[derive(Clone, Debug)]
pub struct AuditFilter {
    pub tenant: String,
    pub employee_id: Option<Uuid>,
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// 1 to [`MAX_LIMIT`]; the newest rows first.
    pub limit: u32,
}

impl AuditFilter {
    /// Every row of `tenant`, newest first, 100 at most.
    pub fn tenant(tenant: &str) -> AuditFilter {
        AuditFilter {
            tenant: tenant.to_string(),
            employee_id: None,
            action: None,
            outcome: None,
            since: None,
            until: None,
            limit: 100,
        }
    }
}

fn bounded(text: &Option<String>) -> Option<String> {
    text.as_ref().map(|t| {
        let t = crate::pg_text(t);
        if t.chars().count() <= MAX_TEXT_CHARS {
            t.into_owned()
        } else {
            let cut: String = t.chars().take(MAX_TEXT_CHARS).collect();
            format!("{cut}[… cut at {MAX_TEXT_CHARS} characters]")
        }
    })
}

const COLS: &str =
    "id, at, tenant, employee_id, task_id, run_id, action, target, outcome::text, detail";

fn row_to_entry(r: &Row) -> Result<AuditEntry> {
    let outcome: String = r.get(8);
    Ok(AuditEntry {
        id: r.get(0),
        at: r.get(1),
        tenant: r.get(2),
        employee_id: r.get(3),
        task_id: r.get(4),
        run_id: r.get(5),
        action: r.get(6),
        target: r.get(7),
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| Error::Invalid(format!("audit row has unknown outcome {outcome:?}")))?,
        detail: r.get(9),
    })
}

impl Store {
    /// Record one action; returns its id. `target` and `detail` longer
    /// than [`MAX_TEXT_CHARS`] are cut.
    pub async fn insert_audit(&self, a: &NewAudit) -> Result<i64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO audit (at, tenant, employee_id, task_id, run_id, action, target, outcome, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::audit_outcome, $9)
                 RETURNING id",
            )
            .await?;
        Ok(client
            .query_one(
                &stmt,
                &[
                    &a.at,
                    &a.tenant,
                    &a.employee_id,
                    &a.task_id,
                    &a.run_id,
                    &crate::pg_text(&a.action),
                    &bounded(&a.target),
                    &a.outcome.as_str(),
                    &bounded(&a.detail),
                ],
            )
            .await?
            .get(0))
    }

    /// The rows `f` selects, newest first.
    pub async fn query_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        if !(1..=MAX_LIMIT).contains(&f.limit) {
            return Err(Error::Invalid(format!(
                "limit is {}; use a number from 1 to {MAX_LIMIT}",
                f.limit
            )));
        }
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {COLS} FROM audit
                     WHERE tenant = $1
                       AND ($2::uuid IS NULL OR employee_id = $2)
                       AND ($3::text IS NULL OR action = $3)
                       AND ($4::text IS NULL OR outcome = $4::text::audit_outcome)
                       AND ($5::timestamptz IS NULL OR at >= $5)
                       AND ($6::timestamptz IS NULL OR at <= $6)
                     ORDER BY at DESC, id DESC
                     LIMIT $7"
                ),
                &[
                    &f.tenant,
                    &f.employee_id,
                    &f.action,
                    &f.outcome.map(Outcome::as_str),
                    &f.since,
                    &f.until,
                    &i64::from(f.limit),
                ],
            )
            .await?
            .iter()
            .map(row_to_entry)
            .collect()
    }
}
