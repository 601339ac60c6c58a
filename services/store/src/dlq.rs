//! What people did with dead letters: one action (replayed or discarded)
//! per dead letter, by its stream sequence.

use std::collections::HashMap;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Result, Store};

/// A recorded action on a dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DlqAction {
    pub seq: u64,
    pub action: String,
    pub task_id: Option<Uuid>,
    pub goal_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub at: OffsetDateTime,
}

/// An action to record.
#[derive(Clone, Debug)]
pub struct NewDlqAction<'a> {
    pub seq: u64,
    pub tenant: &'a str,
    pub source: &'a str,
    pub action: &'a str,
    pub task_id: Option<Uuid>,
    pub goal_id: Option<Uuid>,
    pub idempotency_key: Option<&'a str>,
    pub key_id: Option<Uuid>,
}

impl Store {
    /// Record `a`; false when the dead letter has an action already.
    pub async fn record_dlq_action(&self, a: &NewDlqAction<'_>) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "INSERT INTO dlq_actions (seq, tenant, source, action, task_id, goal_id, idempotency_key, key_id, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now()) ON CONFLICT (seq) DO NOTHING",
                &[
                    &(a.seq as i64),
                    &a.tenant,
                    &a.source,
                    &a.action,
                    &a.task_id,
                    &a.goal_id,
                    &a.idempotency_key,
                    &a.key_id,
                ],
            )
            .await?
            == 1)
    }

    /// The actions on the dead letters `seqs`.
    pub async fn dlq_actions(&self, seqs: &[u64]) -> Result<HashMap<u64, DlqAction>> {
        let client = self.client().await?;
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        Ok(client
            .query(
                "SELECT seq, action, task_id, goal_id, idempotency_key, at FROM dlq_actions WHERE seq = ANY($1)",
                &[&seqs],
            )
            .await?
            .iter()
            .map(|r| {
                let seq = r.get::<_, i64>(0) as u64;
                (
                    seq,
                    DlqAction {
                        seq,
                        action: r.get(1),
                        task_id: r.get(2),
                        goal_id: r.get(3),
                        idempotency_key: r.get(4),
                        at: r.get(5),
                    },
                )
            })
            .collect())
    }
}
