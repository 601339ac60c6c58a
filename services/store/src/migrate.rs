//! Numbered migrations from `sql/`, applied in order, once.
//!
//! All pending migrations run in one transaction that first takes a
//! transaction-scoped advisory lock, so two processes starting at once apply
//! them exactly once: the second waits, then finds nothing left to do. A
//! migration edited after it was applied is refused (its checksum differs).

use sha2::{Digest, Sha256};

use crate::{Error, Result, Store};

/// (version, file name, SQL), in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../../../sql/0001_init.sql"),
    ),
    (
        2,
        "0002_lean_writes.sql",
        include_str!("../../../sql/0002_lean_writes.sql"),
    ),
    (
        3,
        "0003_employees.sql",
        include_str!("../../../sql/0003_employees.sql"),
    ),
    (
        4,
        "0004_notes_reviews.sql",
        include_str!("../../../sql/0004_notes_reviews.sql"),
    ),
    (
        5,
        "0005_usage_by_tenant.sql",
        include_str!("../../../sql/0005_usage_by_tenant.sql"),
    ),
    (
        6,
        "0006_egress_bytes.sql",
        include_str!("../../../sql/0006_egress_bytes.sql"),
    ),
    (
        7,
        "0007_api_keys.sql",
        include_str!("../../../sql/0007_api_keys.sql"),
    ),
    (
        8,
        "0008_subtasks.sql",
        include_str!("../../../sql/0008_subtasks.sql"),
    ),
    (
        9,
        "0009_day_budgets.sql",
        include_str!("../../../sql/0009_day_budgets.sql"),
    ),
    (
        10,
        "0010_goals.sql",
        include_str!("../../../sql/0010_goals.sql"),
    ),
    (
        11,
        "0011_patrol.sql",
        include_str!("../../../sql/0011_patrol.sql"),
    ),
    (
        12,
        "0012_webhooks.sql",
        include_str!("../../../sql/0012_webhooks.sql"),
    ),
    (
        13,
        "0013_schedules.sql",
        include_str!("../../../sql/0013_schedules.sql"),
    ),
    (
        14,
        "0014_dlq.sql",
        include_str!("../../../sql/0014_dlq.sql"),
    ),
    (
        15,
        "0015_ops_views.sql",
        include_str!("../../../sql/0015_ops_views.sql"),
    ),
    (
        16,
        "0016_history_tail.sql",
        include_str!("../../../sql/0016_history_tail.sql"),
    ),
];

/// Arbitrary but fixed: the advisory lock that serialises migrators.
const LOCK_KEY: i64 = 0x636f_6c6f_6e79; // "colony"

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// Apply every migration not yet applied; returns the names applied now.
    pub async fn migrate(&self) -> Result<Vec<&'static str>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS {
            let sum = checksum(sql);
            let row = tx
                .query_opt(
                    "SELECT checksum FROM schema_migrations WHERE version = $1",
                    &[&version],
                )
                .await?;
            match row {
                Some(row) => {
                    let stored: String = row.get(0);
                    if stored != sum {
                        return Err(Error::Invalid(format!(
                            "migration {name} changed after it was applied; add a new migration instead of editing it"
                        )));
                    }
                }
                None => {
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        &[&version, &name, &sum],
                    )
                    .await?;
                    applied.push(name);
                }
            }
        }
        tx.commit().await?;
        Ok(applied)
    }
}
