//! The outbox: messages committed together with the state change that
//! caused them.
//!
//! A row is written by the same statement as its state change. The process
//! that wrote it hands the [`OutboxMsg`] to its relay, which publishes it with
//! `Nats-Msg-Id = id` and deletes the row. Rows are written with a claim
//! (`claimed_until`) so that no other relay publishes them meanwhile; a row
//! whose claim ran out — its writer died before publishing — or that was
//! written for later (a retry's backoff) is taken by [`Store::claim_due`].
//! A row published twice is dropped by the server's de-duplication window,
//! and every consumer is idempotent besides.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Result, Store};

/// One message to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMsg {
    /// Also the message's `Nats-Msg-Id`.
    pub id: Uuid,
    pub subject: String,
    pub payload: Vec<u8>,
    pub task_id: Option<Uuid>,
    /// Not to be published before this time.
    pub available_at: OffsetDateTime,
}

impl OutboxMsg {
    pub fn now(subject: String, payload: Vec<u8>, task_id: Option<Uuid>) -> OutboxMsg {
        OutboxMsg {
            id: Uuid::now_v7(),
            subject,
            payload,
            task_id,
            available_at: OffsetDateTime::now_utc(),
        }
    }

    /// True when the row may be published now.
    pub fn is_due(&self) -> bool {
        self.available_at <= OffsetDateTime::now_utc()
    }
}

/// How long a writer has to publish its own rows before the poller may.
pub const WRITER_CLAIM: Duration = Duration::from_secs(15);

/// The columns of an outbox insert, as arrays for `unnest`.
pub(crate) struct Columns {
    pub ids: Vec<Uuid>,
    pub subjects: Vec<String>,
    pub payloads: Vec<Vec<u8>>,
    pub available: Vec<OffsetDateTime>,
    /// NULL for a row written for later: the poller publishes it when due.
    pub claimed: Vec<Option<OffsetDateTime>>,
}

impl Columns {
    pub fn of(msgs: &[OutboxMsg]) -> Columns {
        let now = OffsetDateTime::now_utc();
        Columns {
            ids: msgs.iter().map(|m| m.id).collect(),
            subjects: msgs.iter().map(|m| m.subject.clone()).collect(),
            payloads: msgs.iter().map(|m| m.payload.clone()).collect(),
            available: msgs.iter().map(|m| m.available_at).collect(),
            claimed: msgs
                .iter()
                .map(|m| m.is_due().then_some(now + WRITER_CLAIM))
                .collect(),
        }
    }
}

/// The SQL fragment that inserts [`Columns`] bound at `$first..$first+4`,
/// for the task whose id the CTE `u` returns.
pub(crate) fn insert_for_u(first: usize) -> String {
    let (a, b, c, d, e) = (first, first + 1, first + 2, first + 3, first + 4);
    format!(
        "INSERT INTO outbox (id, subject, payload, task_id, available_at, claimed_until)
         SELECT x.id, x.subject, x.payload, u.id, x.available_at, x.claimed_until
         FROM u, unnest(${a}::uuid[], ${b}::text[], ${c}::bytea[], ${d}::timestamptz[], ${e}::timestamptz[])
              AS x(id, subject, payload, available_at, claimed_until)"
    )
}

impl Store {
    /// Claim up to `limit` rows that are due and unclaimed (or whose claim ran
    /// out) for `lease`; the caller publishes them and calls [`Store::delete_sent`].
    pub async fn claim_due(&self, limit: i64, lease: Duration) -> Result<Vec<OutboxMsg>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE outbox SET claimed_until = now() + make_interval(secs => $2)
                 WHERE id IN (
                     SELECT id FROM outbox
                     WHERE available_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
                     ORDER BY available_at
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, subject, payload, task_id, available_at",
            )
            .await?;
        let rows = client.query(&stmt, &[&limit, &lease.as_secs_f64()]).await?;
        let mut msgs: Vec<OutboxMsg> = rows
            .iter()
            .map(|r| OutboxMsg {
                id: r.get(0),
                subject: r.get(1),
                payload: r.get(2),
                task_id: r.get(3),
                available_at: r.get(4),
            })
            .collect();
        msgs.sort_by_key(|m| (m.available_at, m.id));
        Ok(msgs)
    }

    /// Forget rows that were published.
    ///
    /// The delete commits without waiting for the WAL flush
    /// (`synchronous_commit` off for this transaction only): a delete lost
    /// in a database crash only means the rows are published again, and the
    /// server drops those duplicates by `Nats-Msg-Id`.
    pub async fn delete_sent(&self, ids: &[Uuid]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "WITH s AS (SELECT set_config('synchronous_commit', 'off', true))
                 DELETE FROM outbox WHERE id = ANY($1) AND EXISTS (SELECT 1 FROM s)",
            )
            .await?;
        Ok(client.execute(&stmt, &[&ids]).await?)
    }

    /// Rows not yet published (for tests and the ops dashboard).
    pub async fn outbox_backlog(&self) -> Result<i64> {
        let client = self.client().await?;
        Ok(client
            .query_one("SELECT count(*) FROM outbox", &[])
            .await?
            .get(0))
    }
}
