//! What the metrics show of Postgres: tasks, goals, the patrol's actions
//! and reviews, counted.

use crate::{Result, Store};

/// Counts by label values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FleetCounts {
    /// (state, role, tasks)
    pub tasks: Vec<(String, String, i64)>,
    /// (state, goals)
    pub goals: Vec<(String, i64)>,
    /// (rule, action, steps)
    pub patrol_actions: Vec<(String, String, i64)>,
    /// (verdict, reviews)
    pub reviews: Vec<(String, i64)>,
}

impl Store {
    /// Every tenant's counts (the operator's view).
    pub async fn fleet_counts(&self) -> Result<FleetCounts> {
        let client = self.client().await?;
        let pairs = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, i64)> {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let triples = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, i64)> {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        };
        Ok(FleetCounts {
            tasks: triples(
                client
                    .query(
                        "SELECT state::text, role, count(*) FROM tasks GROUP BY 1, 2",
                        &[],
                    )
                    .await?,
            ),
            goals: pairs(
                client
                    .query("SELECT state::text, count(*) FROM goals GROUP BY 1", &[])
                    .await?,
            ),
            patrol_actions: triples(
                client
                    .query(
                        "SELECT rule, action, count(*) FROM patrol_actions GROUP BY 1, 2",
                        &[],
                    )
                    .await?,
            ),
            reviews: pairs(
                client
                    .query(
                        "SELECT verdict::text, count(*) FROM reviews GROUP BY 1",
                        &[],
                    )
                    .await?,
            ),
        })
    }
}
