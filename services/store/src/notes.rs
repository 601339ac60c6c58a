//! Notes agents leave on their tasks, and reviews of other tasks.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Result, Store};

/// Bytes a note may have.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;

/// A review to record (`review.submit`).
#[derive(Clone, Debug)]
pub struct NewReview {
    /// The reviewer's tenant: only a task of this tenant can be reviewed.
    pub tenant: String,
    pub task_id: Uuid,
    pub reviewer_task_id: Uuid,
    pub reviewer_run_id: Uuid,
    pub reviewer_employee_id: Option<Uuid>,
    /// 1–10.
    pub score: i16,
    /// `approved` or `rejected`.
    pub verdict: String,
    pub comments: String,
}

/// A note as stored.
#[derive(serde::Serialize, Clone, Debug, PartialEq)]
pub struct Note {
    pub id: i64,
    pub task_id: Uuid,
    pub run_id: Option<Uuid>,
    pub employee_id: Option<Uuid>,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Store {
    /// Keep `text` with `task`'s history.
    pub async fn add_note(
        &self,
        task: Uuid,
        run: Uuid,
        employee: Option<Uuid>,
        text: &str,
    ) -> Result<()> {
        if text.trim().is_empty() {
            return Err(Error::Invalid("a note needs some text".into()));
        }
        if text.len() > MAX_NOTE_BYTES {
            return Err(Error::Invalid(format!(
                "a note may have at most {MAX_NOTE_BYTES} bytes, not {}",
                text.len()
            )));
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO notes (task_id, run_id, employee_id, text, at) VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &task,
                    &run,
                    &employee,
                    &crate::pg_text(text),
                    &OffsetDateTime::now_utc(),
                ],
            )
            .await?;
        Ok(())
    }

    /// The notes on `task`, oldest first.
    pub async fn notes_of(&self, task: Uuid) -> Result<Vec<Note>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, task_id, run_id, employee_id, text, at FROM notes WHERE task_id = $1 ORDER BY id",
                &[&task],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Note {
                id: r.get(0),
                task_id: r.get(1),
                run_id: r.get(2),
                employee_id: r.get(3),
                text: r.get(4),
                at: r.get(5),
            })
            .collect())
    }

    /// Record a review of an existing task of the reviewer's tenant (another
    /// tenant's task does not exist for it); returns its id.
    pub async fn add_review(&self, r: &NewReview) -> Result<i64> {
        if !(1..=10).contains(&r.score) {
            return Err(Error::Invalid(format!(
                "a review's score is 1 to 10, not {}",
                r.score
            )));
        }
        if r.verdict != "approved" && r.verdict != "rejected" {
            return Err(Error::Invalid(format!(
                "a review's verdict is approved or rejected, not {:?}",
                r.verdict
            )));
        }
        if r.task_id == r.reviewer_task_id {
            return Err(Error::Invalid("a task cannot review itself".into()));
        }
        let client = self.client().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM tasks WHERE id = $1 AND tenant = $2",
                &[&r.task_id, &r.tenant],
            )
            .await?
            .is_some();
        if !exists {
            return Err(Error::NotFound(r.task_id));
        }
        let row = client
            .query_one(
                "INSERT INTO reviews (task_id, reviewer_task_id, reviewer_run_id, reviewer_employee_id,
                                      score, verdict, comments, at)
                 VALUES ($1, $2, $3, $4, $5, $6::text::review_verdict, $7, $8) RETURNING id",
                &[
                    &r.task_id,
                    &r.reviewer_task_id,
                    &r.reviewer_run_id,
                    &r.reviewer_employee_id,
                    &r.score,
                    &r.verdict,
                    &crate::pg_text(&r.comments),
                    &OffsetDateTime::now_utc(),
                ],
            )
            .await?;
        Ok(row.get(0))
    }
}
