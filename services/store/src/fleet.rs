//! What the metrics show of Postgres: tasks, goals, the patrol's actions
//! and reviews, counted; and what the history tables (`events`, `usage`,
//! `audit`) gained since the last look ([`Store::fleet_history`]).

use std::time::{Duration, Instant};

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

/// Rows read from one append-only table (`events`, `usage`, `audit`) at a
/// time, by id: each refresh of the metrics reads what came after the last.
///
/// Ids are taken from a sequence when a row is inserted, not when it is
/// committed, so a row may become visible after rows with higher ids. Every
/// missing id (a hole) is noted with when it was first seen; the reader
/// takes rows up to the first hole that has not waited [`SETTLE`] yet, and
/// passes a hole that has (its transaction rolled back, or committed more
/// than [`SETTLE`] after taking its id: an under-count the README states).
#[derive(Debug, Default, Clone)]
pub struct Tail {
    /// The last id taken; `None` until the first read placed the tail at
    /// the table's end.
    after: Option<i64>,
    /// Ids past `after` found missing, and when each was first missed.
    holes: std::collections::BTreeMap<i64, Instant>,
}

/// How long a missing id is waited for.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Most rows of each table one read takes (the rest wait for the next); for
/// `events`, also the width of the id window one read looks at.
pub const HISTORY_BATCH: i64 = 50_000;

impl Tail {
    /// The last id taken.
    pub fn after(&self) -> Option<i64> {
        self.after
    }

    /// Whether the hole `id` has waited long enough at `now` (noting it
    /// when it is new).
    fn settled(&mut self, id: i64, now: Instant) -> bool {
        let since = *self.holes.entry(id).or_insert(now);
        now.duration_since(since) >= SETTLE
    }

    /// Of `ids` (ascending, all past the tail), how many are taken now: up
    /// to the first hole that has not waited [`SETTLE`] yet at `now`. Every
    /// hole between them is noted, so holes settle together, not one per
    /// read.
    pub fn take(&mut self, ids: impl IntoIterator<Item = i64>, now: Instant) -> usize {
        let Some(mut last) = self.after else {
            return 0;
        };
        let ids: Vec<i64> = ids.into_iter().collect();
        // Note the holes first: all of them start waiting now.
        let mut prev = last;
        for &id in &ids {
            for hole in prev + 1..id {
                self.holes.entry(hole).or_insert(now);
            }
            prev = id;
        }
        let mut n = 0;
        'ids: for &id in &ids {
            for hole in last + 1..id {
                if !self.settled(hole, now) {
                    break 'ids;
                }
            }
            n += 1;
            last = id;
        }
        self.after = Some(last);
        self.holes = self.holes.split_off(&(last + 1));
        n
    }

    /// A window of ids `(after, end]` that showed no row while the
    /// sequence had passed `end`: its ids are holes like any other, and the
    /// tail moves past them once they have waited [`SETTLE`].
    pub fn pass_empty(&mut self, end: i64, now: Instant) {
        let Some(after) = self.after else { return };
        if self.settled(after + 1, now) {
            self.after = Some(end);
            self.holes = self.holes.split_off(&(end + 1));
        }
    }
}

/// Where the metrics' reading of the history tables stands.
#[derive(Debug, Default, Clone)]
pub struct Tails {
    pub events: Tail,
    pub usage: Tail,
    pub audit: Tail,
}

/// What a transition says beyond its states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// running → queued: a failed attempt queued again (by its worker, or
    /// by the patrol's requeue).
    Retry,
    /// running → running: taken over from a worker whose heartbeat stopped.
    Takeover,
    /// running → queued: given back uncounted by a worker shutting down.
    HandBack,
}

/// One row of `events`: a task moving from one state to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub role: String,
    /// The state left; `None` when the task was created.
    pub from: Option<String>,
    pub to: String,
    /// Seconds the task spent in `from` (since the event that entered it).
    pub secs: Option<f64>,
    pub step: Option<Step>,
    /// The quota that stopped the run (`tokens_per_run`, …, or `other`),
    /// when the gateway's `quota_exceeded:` reason ended it.
    pub quota: Option<String>,
}

/// One row of `usage`: a model call.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    pub model: String,
    /// The role of the task that made it ("" when none).
    pub role: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// One row of `audit` the gateway wrote: an action a run asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayAction {
    /// One of [`GATEWAY_ACTIONS`], or `other` (an unknown name a run made
    /// up: not a label value of its own).
    pub action: String,
    /// allowed | denied | failed
    pub outcome: String,
}

/// What happened since the last read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct History {
    pub transitions: Vec<Transition>,
    pub calls: Vec<ModelCall>,
    pub actions: Vec<GatewayAction>,
    /// On the first read only: the (model, role) pairs of the most recent
    /// model calls, to show as 0 before their next call.
    pub recent_models: Vec<(String, String)>,
}

/// The quotas a run can cross (`quota_exceeded: <quota> …`).
pub const QUOTAS: [&str; 5] = [
    "tokens_per_run",
    "cost_usd_per_run",
    "wall_secs_per_run",
    "tokens_per_day",
    "cost_usd_per_day",
];

/// The `action` values the gateway writes: the platform's actions, `egress`
/// (fetch and proxy) and `model` (refused model calls).
pub const GATEWAY_ACTIONS: [&str; 9] = [
    subjects::gateway::action::MEMORY_GET,
    subjects::gateway::action::MEMORY_SET,
    subjects::gateway::action::MEMORY_LIST,
    subjects::gateway::action::NOTE,
    subjects::gateway::action::TASK_CREATE,
    subjects::gateway::action::REVIEW_SUBMIT,
    subjects::gateway::action::PLAN_SUBMIT,
    "egress",
    "model",
];

/// How [`crate::tasks`] words a hand-back (`Finish::HandBack`).
const HANDED_BACK: &str = "handed back by ";
/// How the gateway words a run stopped by a quota.
const QUOTA_EXCEEDED: &str = "quota_exceeded: ";

/// What a transition `from → to` with `reason` was, beyond its states.
pub fn classify(
    from: Option<&str>,
    to: &str,
    reason: Option<&str>,
) -> (Option<Step>, Option<String>) {
    let reason = reason.unwrap_or("");
    let step = match (from, to) {
        (Some("running"), "running") => Some(Step::Takeover),
        (Some("running"), "queued") if reason.starts_with(HANDED_BACK) => Some(Step::HandBack),
        (Some("running"), "queued") => Some(Step::Retry),
        _ => None,
    };
    let quota = match (from, reason.strip_prefix(QUOTA_EXCEEDED)) {
        (Some("running"), Some(rest)) => {
            let word = rest
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next();
            Some(
                QUOTAS
                    .into_iter()
                    .find(|q| Some(*q) == word)
                    .unwrap_or("other")
                    .to_string(),
            )
        }
        _ => None,
    };
    (step, quota)
}

/// An audit action as a label value.
pub fn gateway_action(action: &str) -> String {
    GATEWAY_ACTIONS
        .into_iter()
        .find(|a| *a == action)
        .unwrap_or("other")
        .to_string()
}

impl Store {
    /// The transitions, model calls and gateway actions written since the
    /// last read of `tails` (at most [`HISTORY_BATCH`] rows of each table).
    /// The first read only places the tails at the tables' ends: what
    /// happened before it is not read.
    ///
    /// Each read is one statement per table, on indexes: `events` by its
    /// BRIN index on id (sql/0016_history_tail.sql; the primary key is
    /// (task_id, id)), in a window of [`HISTORY_BATCH`] ids so that a read
    /// after a long pause costs no more than one after a short one, with one
    /// primary-key probe per row for the event before it and one for its
    /// task's role; `usage` and `audit` by their primary keys.
    ///
    /// It answers the tails moved past what it read; the caller keeps them
    /// only once it has counted what was read, so a failure or a dropped
    /// request reads the same rows again rather than losing them.
    pub async fn fleet_history(&self, mut tails: Tails) -> Result<(History, Tails)> {
        let client = self.client().await?;
        let mut out = History::default();
        if tails.events.after.is_none() {
            let row = client
                .query_one(
                    "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_id_seq),
                            (SELECT coalesce(max(id), 0) FROM usage),
                            (SELECT coalesce(max(id), 0) FROM audit)",
                    &[],
                )
                .await?;
            tails.events.after = Some(row.get(0));
            tails.usage.after = Some(row.get(1));
            tails.audit.after = Some(row.get(2));
            out.recent_models = client
                .query(
                    "SELECT DISTINCT u.model, coalesce(t.role, '')
                     FROM (SELECT model, task_id FROM usage ORDER BY id DESC LIMIT 1000) u
                     LEFT JOIN tasks t ON t.id = u.task_id",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            return Ok((out, tails));
        }
        let now = Instant::now();
        let rows = client
            .query(
                "SELECT e.id, coalesce(t.role, ''), e.from_state, e.to_state,
                        CASE WHEN e.from_state = 'running' THEN left(e.reason, 64) END,
                        p.to_state, extract(epoch FROM e.at - p.at)::float8
                 FROM (SELECT id, task_id, from_state, to_state, reason, at FROM events
                       WHERE id > $1 AND id <= $1 + $2 ORDER BY id) e
                 LEFT JOIN tasks t ON t.id = e.task_id
                 LEFT JOIN LATERAL (
                     SELECT q.to_state, q.at FROM events q
                     WHERE q.task_id = e.task_id AND q.id < e.id AND e.from_state IS NOT NULL
                     ORDER BY q.id DESC LIMIT 1) p ON true
                 ORDER BY e.id",
                &[&tails.events.after, &HISTORY_BATCH],
            )
            .await?;
        let after = tails.events.after.unwrap_or(0);
        if rows.is_empty() {
            // A window of holes only, with the sequence past it, is passed
            // once its ids have waited like any hole.
            let last: i64 = client
                .query_one(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_id_seq",
                    &[],
                )
                .await?
                .get(0);
            if last > after + HISTORY_BATCH {
                tails.events.pass_empty(after + HISTORY_BATCH, now);
            }
        }
        let n = tails.events.take(rows.iter().map(|r| r.get(0)), now);
        out.transitions = rows[..n]
            .iter()
            .map(|r| {
                let from: Option<String> = r.get(2);
                let to: String = r.get(3);
                let reason: Option<String> = r.get(4);
                let entered: Option<String> = r.get(5);
                let (step, quota) = classify(from.as_deref(), &to, reason.as_deref());
                // The event before it entered the state it leaves: else
                // (history not as written by this code) no duration.
                let secs = match (&from, entered) {
                    (Some(f), Some(e)) if *f == e => r.get::<_, Option<f64>>(6).map(|s| s.max(0.0)),
                    _ => None,
                };
                Transition {
                    role: r.get(1),
                    from,
                    to,
                    secs,
                    step,
                    quota,
                }
            })
            .collect();
        let rows = client
            .query(
                "SELECT u.id, u.model, coalesce(t.role, ''), u.prompt_tokens, u.completion_tokens, u.cost_usd
                 FROM (SELECT id, model, task_id, prompt_tokens, completion_tokens, cost_usd FROM usage
                       WHERE id > $1 ORDER BY id LIMIT $2) u
                 LEFT JOIN tasks t ON t.id = u.task_id
                 ORDER BY u.id",
                &[&tails.usage.after, &HISTORY_BATCH],
            )
            .await?;
        let n = tails.usage.take(rows.iter().map(|r| r.get(0)), now);
        out.calls = rows[..n]
            .iter()
            .map(|r| ModelCall {
                model: r.get(1),
                role: r.get(2),
                prompt_tokens: r.get::<_, i64>(3).max(0) as u64,
                completion_tokens: r.get::<_, i64>(4).max(0) as u64,
                cost_usd: r.get::<_, f64>(5).max(0.0),
            })
            .collect();
        // Every row moves the tail; only the gateway's (a run's) count.
        let rows = client
            .query(
                "SELECT id, action, outcome::text, run_id IS NOT NULL FROM audit
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&tails.audit.after, &HISTORY_BATCH],
            )
            .await?;
        let n = tails.audit.take(rows.iter().map(|r| r.get(0)), now);
        out.actions = rows[..n]
            .iter()
            .filter(|r| r.get::<_, bool>(3))
            .map(|r| GatewayAction {
                action: gateway_action(r.get(1)),
                outcome: r.get(2),
            })
            .collect();
        Ok((out, tails))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(after: i64) -> Tail {
        Tail {
            after: Some(after),
            holes: Default::default(),
        }
    }

    #[test]
    fn a_tail_takes_rows_up_to_a_gap_and_skips_it_once_it_settled() {
        let t0 = Instant::now();
        let mut t = Tail::default();
        assert_eq!(t.take([1, 2], t0), 0, "not placed yet");
        let mut t = at(10);
        assert_eq!(t.take([11, 12, 13], t0), 3);
        assert_eq!(t.after(), Some(13));
        // 14 is not there (yet): stop before 15.
        assert_eq!(t.take([15, 16], t0), 0);
        assert_eq!(t.after(), Some(13));
        // It came: everything is taken.
        assert_eq!(t.take([14, 15, 16], t0 + Duration::from_secs(1)), 3);
        assert_eq!(t.after(), Some(16));
        // 17 never comes: waited for, then skipped.
        assert_eq!(t.take([18], t0 + Duration::from_secs(2)), 0);
        assert_eq!(t.take([18, 19], t0 + Duration::from_secs(3)), 0);
        assert_eq!(
            t.take([18, 19, 21], t0 + SETTLE + Duration::from_secs(2)),
            2
        );
        // A new gap (20) is waited for in its turn.
        assert_eq!(t.after(), Some(19));
        assert_eq!(t.take([21], t0 + SETTLE + Duration::from_secs(3)), 0);
        assert_eq!(t.take([21], t0 + 2 * SETTLE + Duration::from_secs(4)), 1);
        assert_eq!(t.after(), Some(21));
        assert_eq!(t.take([], t0), 0);
        assert_eq!(t.after(), Some(21));

        // Holes seen in one read settle together, not one per read.
        let mut t = at(0);
        assert_eq!(t.take([2, 4, 6], t0), 0);
        assert_eq!(t.take([2, 4, 6], t0 + SETTLE), 3);
        assert_eq!(t.after(), Some(6));
        assert!(t.holes.is_empty(), "{:?}", t.holes);

        // A window without a row: passed once it waited.
        let mut t = at(100);
        t.pass_empty(100 + HISTORY_BATCH, t0);
        assert_eq!(t.after(), Some(100));
        t.pass_empty(100 + HISTORY_BATCH, t0 + SETTLE);
        assert_eq!(t.after(), Some(100 + HISTORY_BATCH));
        assert!(t.holes.is_empty());
    }

    #[test]
    fn transitions_are_told_apart_by_states_and_reason() {
        assert_eq!(
            classify(
                Some("running"),
                "running",
                Some("worker w1 stopped responding during attempt 1; taken over by w2")
            ),
            (Some(Step::Takeover), None)
        );
        assert_eq!(
            classify(
                Some("running"),
                "queued",
                Some("handed back by w1 on shutdown")
            ),
            (Some(Step::HandBack), None)
        );
        assert_eq!(
            classify(
                Some("running"),
                "queued",
                Some("the command ran past its 1-second limit")
            ),
            (Some(Step::Retry), None)
        );
        assert_eq!(classify(Some("queued"), "running", None), (None, None));
        assert_eq!(classify(None, "queued", None), (None, None));
        assert_eq!(
            classify(
                Some("running"),
                "failed",
                Some("quota_exceeded: tokens_per_run 1234 > 1000 (prompt 900, completion 334)")
            ),
            (None, Some("tokens_per_run".into()))
        );
        assert_eq!(
            classify(
                Some("running"),
                "blocked",
                Some("quota_exceeded: the daily budget could not be checked")
            ),
            (None, Some("other".into()))
        );
        assert_eq!(gateway_action("egress"), "egress");
        assert_eq!(gateway_action("memory.set"), "memory.set");
        assert_eq!(gateway_action("made-up name of 64 chars"), "other");
    }
}
