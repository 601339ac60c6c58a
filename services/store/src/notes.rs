//! Notes agents leave on their tasks (reviews are `verdicts`).

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Result, Store};

/// Bytes a note may have.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;

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
}
