//! Schedules and their fires.
//!
//! A fire time is decided once: every decision is a row of
//! `schedule_fires`, unique by `(schedule_id, fire_at)`, written in the
//! same transaction as the task or goal it starts (and their outbox rows)
//! and as the schedule's cursor (`next_fire_at`, the first cron time not yet
//! decided). Every writer of fires holds the schedule's row lock, and any
//! number of schedulers may run: one takes a due schedule (`SKIP LOCKED`),
//! the others pass it by, and a fire row already there is never written
//! twice. Nothing lives only in a scheduler's memory.
//!
//! What a cron time is and what a fire starts come from the caller's
//! [`FireRules`] (the `scheduler` crate: expressions, zones, templates,
//! admission).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde_json::Value;
use subjects::goals::GoalState;
use subjects::schedules::{
    Catchup, FireKind, FireOutcome, FireStats, FireView, Overlap, ScheduleSpec, Span,
};
use subjects::TaskState;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::goals::{LoopTx, NewGoal};
use crate::tasks::{insert_queued, insert_queued_many, NewTask};
use crate::{Error, OutboxMsg, Result, Store};

/// What a schedule starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Task,
    Goal,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Task => "task",
            TargetKind::Goal => "goal",
        }
    }
}

/// A stored schedule: its definition, and who and when.
#[derive(Clone, Debug)]
pub struct ScheduleRow {
    pub id: Uuid,
    pub def: ScheduleDef,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl std::ops::Deref for ScheduleRow {
    type Target = ScheduleDef;

    fn deref(&self) -> &ScheduleDef {
        &self.def
    }
}

impl ScheduleRow {
    /// The request that makes this schedule (the base of a PATCH).
    pub fn spec(&self) -> ScheduleSpec {
        let (task, goal) = match self.target {
            TargetKind::Task => (Some(self.template.clone()), None),
            TargetKind::Goal => (None, Some(self.template.clone())),
        };
        ScheduleSpec {
            name: self.name.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            task,
            goal,
            overlap: self.overlap,
            catchup_window: Some(Span::Seconds(self.catchup_window.as_secs())),
            catchup: self.catchup,
            jitter: Some(Span::Text(format!("{}ms", self.jitter.as_millis()))),
            start_at: self.start_at,
            end_at: self.end_at,
            paused: self.paused,
        }
    }

    /// When cron time `fire_at` is due: plus the schedule's offset.
    pub fn due(&self, fire_at: OffsetDateTime) -> OffsetDateTime {
        fire_at + self.offset
    }
}

/// What a schedule is, as stored (new, or replacing one with a PATCH).
#[derive(Clone, Debug)]
pub struct ScheduleDef {
    pub tenant: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub target: TargetKind,
    pub template: Value,
    pub overlap: Overlap,
    pub catchup_window: Duration,
    pub catchup: Catchup,
    pub jitter: Duration,
    /// This schedule's own offset within `jitter`.
    pub offset: Duration,
    pub start_at: Option<OffsetDateTime>,
    pub end_at: Option<OffsetDateTime>,
    pub paused: bool,
    /// The first cron time not yet decided (`None`: none is left).
    pub next_fire_at: Option<OffsetDateTime>,
}

/// What one fire starts, admitted.
#[derive(Clone, Debug)]
pub enum NewTarget {
    Task(NewTask),
    Goal(NewGoal),
}

/// What the store needs to know about cron times and templates.
pub trait FireRules: Sync {
    /// The first cron time of `s` strictly after `after` that is inside
    /// its `start_at`/`end_at` (`None`: no fire is left).
    fn next_after(&self, s: &ScheduleRow, after: OffsetDateTime) -> Option<OffsetDateTime>;

    /// The task or goal fire `fire_at` of `s` starts (its template filled
    /// in and admitted), or why it cannot start: one sentence.
    /// (`Err`: the store did not answer, and the fire is tried again.)
    fn admit(
        &self,
        s: &ScheduleRow,
        fire_at: OffsetDateTime,
    ) -> impl Future<Output = Result<std::result::Result<NewTarget, String>>> + Send;
}

/// The latest fire that started something, and whether its task or goal
/// is still at work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previous {
    pub tenant: String,
    pub fire_at: OffsetDateTime,
    pub task_id: Option<Uuid>,
    pub goal_id: Option<Uuid>,
    pub running: bool,
}

impl Previous {
    fn label(&self) -> String {
        match (self.task_id, self.goal_id) {
            (Some(t), _) => format!("the fire at {} (task {t})", rfc3339(self.fire_at)),
            (_, Some(g)) => format!("the fire at {} (goal {g})", rfc3339(self.fire_at)),
            _ => format!("the fire at {}", rfc3339(self.fire_at)),
        }
    }
}

/// What a call decided.
#[derive(Debug, Default)]
pub struct Decided {
    /// The fire rows written (or changed), oldest first.
    pub fires: Vec<FireView>,
    /// The outbox rows of what they started, for the relay.
    pub outbox: Vec<OutboxMsg>,
    /// Overlap `cancel_previous` with the previous fire still at work:
    /// nothing was started; cancel this one, then call again.
    pub cancel_first: Option<Previous>,
    /// More fire times of the schedule are due: call again.
    pub more: bool,
}

/// What one batch did ([`Store::decide_batch`]).
#[derive(Debug, Default)]
pub struct Batch {
    pub decided: Decided,
    /// Due schedules this batch took.
    pub claimed: usize,
    /// Those it left to be decided one by one ([`Store::decide_due`]):
    /// paused, behind, goals, an overlap to settle, a fire row in the way.
    pub single: Vec<Uuid>,
}

const COLS: &str =
    "id, tenant, name, cron, timezone, target, template, overlap, catchup_window_secs, \
    catchup, jitter_ms, offset_ms, start_at, end_at, paused, next_fire_at, created_at, updated_at";

const FIRE_COLS: &str = "fire_at, kind, outcome, task_id, goal_id, reason, lateness_ms, decided_at";

/// Longest span of fire rows one transaction decides: a long downtime is
/// caught up in several.
pub const MAX_PER_PASS: usize = 1000;

/// Schedules one tenant may have.
pub const MAX_PER_TENANT: i64 = 1000;

/// Fire rows are kept this long (the latest of each schedule longer): a
/// backfill reaches no further back, so no fire time is started twice.
pub const FIRE_RETENTION: time::Duration = time::Duration::days(400);

fn row_to_schedule(r: &Row) -> Result<ScheduleRow> {
    let target = match r.get::<_, &str>(5) {
        "task" => TargetKind::Task,
        "goal" => TargetKind::Goal,
        other => {
            return Err(Error::Invalid(format!(
                "schedule target {other:?} is unknown"
            )))
        }
    };
    let overlap: &str = r.get(7);
    let catchup: &str = r.get(9);
    let ms = |i: usize| Duration::from_millis(r.get::<_, i64>(i).max(0) as u64);
    Ok(ScheduleRow {
        id: r.get(0),
        created_at: r.get(16),
        updated_at: r.get(17),
        def: ScheduleDef {
            tenant: r.get(1),
            name: r.get(2),
            cron: r.get(3),
            timezone: r.get(4),
            target,
            template: r.get(6),
            overlap: Overlap::parse(overlap)
                .ok_or_else(|| Error::Invalid(format!("overlap {overlap:?} is unknown")))?,
            catchup_window: Duration::from_secs(r.get::<_, i64>(8).max(0) as u64),
            catchup: Catchup::parse(catchup)
                .ok_or_else(|| Error::Invalid(format!("catch-up policy {catchup:?} is unknown")))?,
            jitter: ms(10),
            offset: ms(11),
            start_at: r.get(12),
            end_at: r.get(13),
            paused: r.get(14),
            next_fire_at: r.get(15),
        },
    })
}

fn row_to_fire(r: &Row) -> Result<FireView> {
    let kind: &str = r.get(1);
    let outcome: &str = r.get(2);
    Ok(FireView {
        fire_at: r.get(0),
        kind: FireKind::parse(kind)
            .ok_or_else(|| Error::Invalid(format!("fire kind {kind:?} is unknown")))?,
        outcome: FireOutcome::parse(outcome)
            .ok_or_else(|| Error::Invalid(format!("fire outcome {outcome:?} is unknown")))?,
        task_id: r.get(3),
        goal_id: r.get(4),
        reason: r.get(5),
        lateness_ms: r.get(6),
        decided_at: r.get(7),
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `a - b` in milliseconds.
fn ms_between(a: OffsetDateTime, b: OffsetDateTime) -> f64 {
    (a - b).as_seconds_f64() * 1000.0
}

/// A span for people: `500 ms`, `1.5 s`, `42 s`, `3 min`, `2 h`, `1 d`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if s < 120 && d.subsec_millis() == 0 {
        format!("{s} s")
    } else if s < 120 {
        format!("{:.1} s", d.as_secs_f64())
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else if s < 2 * 86_400 {
        format!("{} h", s / 3600)
    } else {
        format!("{} d", s / 86_400)
    }
}

/// A fire row to write.
struct FireRow<'a> {
    fire_at: OffsetDateTime,
    kind: FireKind,
    outcome: FireOutcome,
    task_id: Option<Uuid>,
    goal_id: Option<Uuid>,
    reason: Option<&'a str>,
    lateness_ms: Option<f64>,
}

impl<'a> FireRow<'a> {
    fn decided(
        fire_at: OffsetDateTime,
        kind: FireKind,
        outcome: FireOutcome,
        reason: &'a str,
    ) -> FireRow<'a> {
        FireRow {
            fire_at,
            kind,
            outcome,
            task_id: None,
            goal_id: None,
            reason: Some(reason),
            lateness_ms: None,
        }
    }
}

/// Insert a fire row (`None`: that fire time has one already).
async fn insert_fire(
    c: &impl GenericClient,
    schedule: Uuid,
    f: &FireRow<'_>,
) -> Result<Option<FireView>> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO schedule_fires (schedule_id, fire_at, kind, outcome, task_id, goal_id, reason, lateness_ms, decided_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
             ON CONFLICT (schedule_id, fire_at) DO NOTHING
             RETURNING {FIRE_COLS}"
        ))
        .await?;
    let row = c
        .query_opt(
            &stmt,
            &[
                &schedule,
                &f.fire_at,
                &f.kind.as_str(),
                &f.outcome.as_str(),
                &f.task_id,
                &f.goal_id,
                &f.reason.map(crate::pg_text),
                &f.lateness_ms,
            ],
        )
        .await?;
    row.as_ref().map(row_to_fire).transpose()
}

/// Turn a fire row that started nothing (skipped, missed, buffered) into
/// one that did; `None`: it is not such a row (any more).
async fn upgrade_fire(
    c: &impl GenericClient,
    schedule: Uuid,
    f: &FireRow<'_>,
) -> Result<Option<FireView>> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE schedule_fires
             SET outcome = $3, task_id = $4, goal_id = $5, reason = $6, lateness_ms = $7, decided_at = now(),
                 kind = CASE WHEN $8 = 'backfill' THEN 'backfill' ELSE kind END
             WHERE schedule_id = $1 AND fire_at = $2 AND outcome IN ('skipped', 'missed', 'buffered')
             RETURNING {FIRE_COLS}"
        ))
        .await?;
    let row = c
        .query_opt(
            &stmt,
            &[
                &schedule,
                &f.fire_at,
                &f.outcome.as_str(),
                &f.task_id,
                &f.goal_id,
                &f.reason.map(crate::pg_text),
                &f.lateness_ms,
                &f.kind.as_str(),
            ],
        )
        .await?;
    row.as_ref().map(row_to_fire).transpose()
}

/// The latest fire of `schedule` that started something and is still at
/// work (among its latest 100), else the latest one.
async fn previous(c: &impl GenericClient, schedule: Uuid) -> Result<Option<Previous>> {
    // The latest 100 that started something; a running one first.
    let stmt = c
        .prepare_cached(
            "SELECT f.fire_at, f.task_id, f.goal_id, t.state::text, g.state::text
             FROM (SELECT fire_at, task_id, goal_id, decided_at FROM schedule_fires
                   WHERE schedule_id = $1 AND outcome = 'fired'
                   ORDER BY decided_at DESC, fire_at DESC LIMIT 100) f
             LEFT JOIN tasks t ON t.id = f.task_id
             LEFT JOIN goals g ON g.id = f.goal_id
             ORDER BY coalesce(coalesce(t.state::text, g.state::text) NOT IN ('done', 'failed', 'cancelled'), false) DESC,
                      f.decided_at DESC, f.fire_at DESC
             LIMIT 1",
        )
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&schedule]).await? else {
        return Ok(None);
    };
    let task_state: Option<&str> = r.get(3);
    let goal_state: Option<&str> = r.get(4);
    let running = match (task_state, goal_state) {
        (Some(s), _) => TaskState::parse(s).is_some_and(|s| !s.is_final()),
        (_, Some(s)) => GoalState::parse(s).is_some_and(|s| !s.is_final()),
        // Gone (a tenant's data removed): not at work.
        _ => false,
    };
    Ok(Some(Previous {
        tenant: String::new(),
        fire_at: r.get(0),
        task_id: r.get(1),
        goal_id: r.get(2),
        running,
    }))
}

async fn has_buffered(c: &impl GenericClient, schedule: Uuid) -> Result<Option<OffsetDateTime>> {
    let stmt = c
        .prepare_cached(
            "SELECT fire_at FROM schedule_fires WHERE schedule_id = $1 AND outcome = 'buffered'
             ORDER BY fire_at LIMIT 1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&schedule]).await?.map(|r| r.get(0)))
}

/// What the overlap policy says about starting a fire now.
enum Verdict {
    Start,
    /// Not now: skipped or buffered, with why.
    Hold(FireOutcome, String),
    CancelFirst(Previous),
}

/// `tried`: the previous fire the caller tried to cancel already (it starts
/// regardless, rather than wait for ever on one that will not stop).
async fn overlap_verdict(
    c: &impl GenericClient,
    s: &ScheduleRow,
    tried: Option<&Previous>,
) -> Result<Verdict> {
    if s.overlap == Overlap::Allow {
        return Ok(Verdict::Start);
    }
    let Some(mut prev) = previous(c, s.id).await?.filter(|p| p.running) else {
        return Ok(Verdict::Start);
    };
    prev.tenant = s.tenant.clone();
    if s.overlap == Overlap::CancelPrevious && tried.is_some_and(|t| t.fire_at == prev.fire_at) {
        return Ok(Verdict::Start);
    }
    Ok(match s.overlap {
        Overlap::Allow => Verdict::Start,
        Overlap::Skip => Verdict::Hold(
            FireOutcome::Skipped,
            format!("{} was still running (overlap: skip)", prev.label()),
        ),
        Overlap::BufferOne => match has_buffered(c, s.id).await? {
            Some(waiting) => Verdict::Hold(
                FireOutcome::Skipped,
                format!(
                    "the fire at {} already waits for {} to end (overlap: buffer_one)",
                    rfc3339(waiting),
                    prev.label()
                ),
            ),
            None => Verdict::Hold(
                FireOutcome::Buffered,
                format!("waits for {} to end (overlap: buffer_one)", prev.label()),
            ),
        },
        Overlap::CancelPrevious => Verdict::CancelFirst(prev),
    })
}

/// Start fire `fire_at` of `s`: its task or goal and the fire row, in
/// `t`. `upgrade`: the fire row exists (skipped, missed or buffered) and
/// becomes a fired one. A template refused at fire time is a `failed` row.
#[allow(clippy::too_many_arguments)]
async fn start<R: FireRules>(
    t: &mut LoopTx<'_>,
    s: &ScheduleRow,
    fire_at: OffsetDateTime,
    kind: FireKind,
    upgrade: bool,
    reason: Option<&str>,
    rules: &R,
    out: &mut Decided,
) -> Result<()> {
    let mut row = FireRow {
        fire_at,
        kind,
        outcome: FireOutcome::Fired,
        task_id: None,
        goal_id: None,
        reason,
        lateness_ms: None,
    };
    let what = s.target.as_str();
    let refused: Option<String> = match rules.admit(s, fire_at).await? {
        Err(why) => Some(why),
        Ok(target) => {
            // (task, goal, when it was made), or its idempotency key taken.
            let (made, key) = match target {
                NewTarget::Task(new) => (
                    insert_queued(&t.tx, &new, Uuid::now_v7(), 0)
                        .await
                        .map(|m| {
                            m.map(|(task, outbox)| {
                                out.outbox.extend(outbox);
                                (Some(task.id), None, task.created_at)
                            })
                        }),
                    new.idempotency_key,
                ),
                NewTarget::Goal(new) => (
                    t.insert_goal(&new, Uuid::now_v7())
                        .await
                        .map(|m| m.map(|g| (None, Some(g.id), g.created_at))),
                    new.idempotency_key,
                ),
            };
            match made {
                Ok(Some((task_id, goal_id, created))) => {
                    (row.task_id, row.goal_id) = (task_id, goal_id);
                    if kind != FireKind::Backfill {
                        row.lateness_ms = Some(ms_between(created, s.due(fire_at)));
                    }
                    None
                }
                Ok(None) => Some(format!(
                    "the {what}'s idempotency key {:?} names another {what} already",
                    key.unwrap_or_default()
                )),
                Err(Error::Invalid(why)) => Some(why),
                Err(e) => return Err(e),
            }
        }
    };
    let why;
    if let Some(r) = refused {
        why = format!("its {what} was refused: {r}");
        row.outcome = FireOutcome::Failed;
        row.reason = Some(&why);
    }
    let written = if upgrade {
        upgrade_fire(&t.tx, s.id, &row).await?
    } else {
        insert_fire(&t.tx, s.id, &row).await?
    };
    // Every writer holds the schedule's lock and looked first: a row in
    // the way is a bug, and nothing of this transaction may commit.
    let written = written.ok_or_else(|| {
        Error::Conflict(format!(
            "schedule {} has a fire at {} already",
            s.id,
            rfc3339(fire_at)
        ))
    })?;
    out.fires.push(written);
    Ok(())
}

/// Start `s`'s buffered fire if the fire before it has ended (overlap
/// `buffer_one`): a waiting fire goes before any later one. True: one
/// started.
async fn start_buffered<R: FireRules>(
    t: &mut LoopTx<'_>,
    s: &ScheduleRow,
    rules: &R,
    out: &mut Decided,
) -> Result<bool> {
    let Some(waiting) = has_buffered(&t.tx, s.id).await? else {
        return Ok(false);
    };
    if previous(&t.tx, s.id).await?.is_some_and(|p| p.running) {
        return Ok(false);
    }
    let why = "started when the fire before it ended (overlap: buffer_one)";
    start(t, s, waiting, FireKind::Cron, true, Some(why), rules, out).await?;
    Ok(true)
}

/// Record `rows` (none of which start anything) in one statement; rows
/// already there stay.
async fn record(
    t: &LoopTx<'_>,
    s: &ScheduleRow,
    rows: &[FireRow<'_>],
    out: &mut Decided,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let views: Vec<(Uuid, FireView)> = rows
        .iter()
        .map(|r| {
            (
                s.id,
                FireView {
                    fire_at: r.fire_at,
                    kind: r.kind,
                    outcome: r.outcome,
                    task_id: r.task_id,
                    goal_id: r.goal_id,
                    reason: r.reason.map(str::to_string),
                    lateness_ms: r.lateness_ms,
                    decided_at: t.now,
                },
            )
        })
        .collect();
    let written = insert_fires(&t.tx, &views).await?;
    out.fires.extend(
        views
            .into_iter()
            .map(|(_, v)| v)
            .filter(|v| written.contains(&(s.id, v.fire_at))),
    );
    Ok(())
}

async fn lock_schedule(
    t: &LoopTx<'_>,
    id: Uuid,
    tenant: Option<&str>,
    skip_locked: bool,
) -> Result<Option<ScheduleRow>> {
    let sql = format!(
        "SELECT {COLS} FROM schedules WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE{}",
        if skip_locked { " SKIP LOCKED" } else { "" }
    );
    let row = t.tx.query_opt(&sql, &[&id, &tenant]).await?;
    row.as_ref().map(row_to_schedule).transpose()
}

async fn fire_exists(
    t: &LoopTx<'_>,
    schedule: Uuid,
    fire_at: OffsetDateTime,
) -> Result<Option<FireOutcome>> {
    let row =
        t.tx.query_opt(
            "SELECT outcome FROM schedule_fires WHERE schedule_id = $1 AND fire_at = $2",
            &[&schedule, &fire_at],
        )
        .await?;
    Ok(row.and_then(|r| FireOutcome::parse(r.get::<_, &str>(0))))
}

async fn set_cursor(t: &LoopTx<'_>, s: &ScheduleRow, next: Option<OffsetDateTime>) -> Result<()> {
    t.tx.execute(
        "UPDATE schedules SET next_fire_at = $2, next_due_at = $3 WHERE id = $1",
        &[&s.id, &next, &next.map(|n| s.due(n))],
    )
    .await?;
    Ok(())
}

/// A definition's columns as statement parameters: `$1` the id, `$2` the
/// tenant, then `name` … `next_due_at` in the table's order.
struct DefCols<'a> {
    d: &'a ScheduleDef,
    name: String,
    target: &'static str,
    overlap: &'static str,
    catchup: &'static str,
    catchup_secs: i64,
    jitter_ms: i64,
    offset_ms: i64,
    next_due: Option<OffsetDateTime>,
}

impl<'a> DefCols<'a> {
    fn of(d: &'a ScheduleDef) -> DefCols<'a> {
        DefCols {
            d,
            name: crate::pg_text(&d.name).into_owned(),
            target: d.target.as_str(),
            overlap: d.overlap.as_str(),
            catchup: d.catchup.as_str(),
            catchup_secs: d.catchup_window.as_secs() as i64,
            jitter_ms: millis(d.jitter),
            offset_ms: millis(d.offset),
            next_due: d.next_fire_at.map(|n| n + d.offset),
        }
    }

    fn params<'b>(
        &'b self,
        id: &'b Uuid,
        tenant: &'b &'b str,
    ) -> [&'b (dyn tokio_postgres::types::ToSql + Sync); 17] {
        let d = self.d;
        [
            id,
            tenant,
            &self.name,
            &d.cron,
            &d.timezone,
            &self.target,
            &d.template,
            &self.overlap,
            &self.catchup_secs,
            &self.catchup,
            &self.jitter_ms,
            &self.offset_ms,
            &d.start_at,
            &d.end_at,
            &d.paused,
            &d.next_fire_at,
            &self.next_due,
        ]
    }
}

fn no_schedule(id: Uuid) -> Error {
    Error::Missing(format!("schedule {id} does not exist"))
}

/// Write fire rows of several schedules at once, decided now (the
/// database's clock); a fire time that has a row already keeps it. Returns
/// the (schedule, fire time) pairs written.
async fn insert_fires(
    c: &impl GenericClient,
    rows: &[(Uuid, FireView)],
) -> Result<std::collections::HashSet<(Uuid, OffsetDateTime)>> {
    if rows.is_empty() {
        return Ok(Default::default());
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO schedule_fires (schedule_id, fire_at, kind, outcome, task_id, goal_id, reason, lateness_ms, decided_at)
             SELECT x.*, now() FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[],
                                          $6::uuid[], $7::text[], $8::float8[]) AS x
             ON CONFLICT (schedule_id, fire_at) DO NOTHING
             RETURNING schedule_id, fire_at",
        )
        .await?;
    let col = |f: fn(&FireView) -> String| rows.iter().map(|(_, v)| f(v)).collect::<Vec<_>>();
    Ok(c.query(
        &stmt,
        &[
            &rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            &rows.iter().map(|(_, v)| v.fire_at).collect::<Vec<_>>(),
            &col(|v| v.kind.as_str().to_string()),
            &col(|v| v.outcome.as_str().to_string()),
            &rows.iter().map(|(_, v)| v.task_id).collect::<Vec<_>>(),
            &rows.iter().map(|(_, v)| v.goal_id).collect::<Vec<_>>(),
            &rows
                .iter()
                .map(|(_, v)| v.reason.as_deref().map(crate::pg_text))
                .collect::<Vec<_>>(),
            &rows.iter().map(|(_, v)| v.lateness_ms).collect::<Vec<_>>(),
        ],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Now by the database's clock (the one `next_due_at <= now()` uses).
async fn db_now(t: &LoopTx<'_>) -> Result<OffsetDateTime> {
    Ok(t.tx
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0))
}

impl Store {
    pub async fn create_schedule(&self, new: &ScheduleDef) -> Result<ScheduleRow> {
        let client = self.client().await?;
        let have: i64 = client
            .query_one(
                "SELECT count(*) FROM schedules WHERE tenant = $1",
                &[&new.tenant],
            )
            .await?
            .get(0);
        if have >= MAX_PER_TENANT {
            return Err(Error::Invalid(format!(
                "this tenant has {have} schedules, the most it may have; delete one first"
            )));
        }
        let cols = DefCols::of(new);
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO schedules (id, tenant, name, cron, timezone, target, template, overlap,
                                            catchup_window_secs, catchup, jitter_ms, offset_ms, start_at, end_at,
                                            paused, next_fire_at, next_due_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, now(), now())
                     ON CONFLICT (tenant, name) DO NOTHING
                     RETURNING {COLS}"
                ),
                &cols.params(&Uuid::now_v7(), &new.tenant.as_str()),
            )
            .await?;
        match row {
            Some(r) => row_to_schedule(&r),
            None => Err(Error::Conflict(format!(
                "a schedule named {:?} exists already; choose another name, or change that one with PATCH",
                new.name
            ))),
        }
    }

    /// `tenant`'s schedule `id` (another tenant's is `None`).
    pub async fn schedule(&self, tenant: &str, id: Uuid) -> Result<Option<ScheduleRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLS} FROM schedules WHERE id = $1 AND tenant = $2"),
                &[&id, &tenant],
            )
            .await?;
        row.as_ref().map(row_to_schedule).transpose()
    }

    pub async fn list_schedules(&self, tenant: &str, limit: u32) -> Result<Vec<ScheduleRow>> {
        let client = self.client().await?;
        client
            .query(
                &format!("SELECT {COLS} FROM schedules WHERE tenant = $1 ORDER BY name LIMIT $2"),
                &[&tenant, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(row_to_schedule)
            .collect()
    }

    /// Change `tenant`'s schedule `id` under its lock: `change` gets the
    /// schedule, its latest decided cron time and the database's now, and
    /// answers the new definition and the old cron times that were due
    /// and not decided (recorded as skipped: the expression changed before
    /// them) — or why not.
    pub async fn patch_schedule<E>(
        &self,
        tenant: &str,
        id: Uuid,
        change: impl FnOnce(
            &ScheduleRow,
            Option<OffsetDateTime>,
            OffsetDateTime,
        ) -> std::result::Result<(ScheduleDef, Vec<OffsetDateTime>), E>,
    ) -> Result<std::result::Result<ScheduleRow, E>> {
        let mut client = self.client().await?;
        let t = LoopTx::begin(&mut client).await?;
        let row = lock_schedule(&t, id, Some(tenant), false)
            .await?
            .ok_or_else(|| no_schedule(id))?;
        let last: Option<OffsetDateTime> = t
            .tx
            .query_one(
                "SELECT max(fire_at) FROM schedule_fires WHERE schedule_id = $1 AND kind <> 'trigger'",
                &[&id],
            )
            .await?
            .get(0);
        let now = db_now(&t).await?;
        let (new, passed) = match change(&row, last, now) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let why = "the schedule's expression changed before this fire time was decided";
        let rows: Vec<FireRow<'_>> = passed
            .iter()
            .map(|f| FireRow::decided(*f, FireKind::Cron, FireOutcome::Skipped, why))
            .collect();
        record(&t, &row, &rows, &mut Decided::default()).await?;
        let cols = DefCols::of(&new);
        let updated = t
            .tx
            .query_one(
                &format!(
                    "UPDATE schedules SET name = $3, cron = $4, timezone = $5, target = $6, template = $7,
                         overlap = $8, catchup_window_secs = $9, catchup = $10, jitter_ms = $11, offset_ms = $12,
                         start_at = $13, end_at = $14, paused = $15, next_fire_at = $16, next_due_at = $17,
                         updated_at = now()
                     WHERE id = $1 AND tenant = $2
                     RETURNING {COLS}"
                ),
                &cols.params(&id, &tenant),
            )
            .await
            .map_err(|e| {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    Error::Conflict(format!(
                        "a schedule named {:?} exists already; choose another name",
                        new.name
                    ))
                } else {
                    e.into()
                }
            })?;
        let updated = row_to_schedule(&updated)?;
        t.commit().await?;
        Ok(Ok(updated))
    }

    /// Remove up to 10 000 fire rows older than [`FIRE_RETENTION`], but
    /// each schedule's latest; returns how many.
    pub async fn prune_fires(&self) -> Result<u64> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM schedule_fires WHERE ctid IN (
                     SELECT f.ctid FROM schedule_fires f
                     WHERE f.decided_at < now() - make_interval(secs => $1)
                       AND f.fire_at < (SELECT max(l.fire_at) FROM schedule_fires l WHERE l.schedule_id = f.schedule_id)
                     LIMIT 10000)",
                &[&FIRE_RETENTION.as_seconds_f64()],
            )
            .await?)
    }

    /// Pause or resume `tenant`'s schedule `id`.
    pub async fn pause_schedule(
        &self,
        tenant: &str,
        id: Uuid,
        paused: bool,
    ) -> Result<ScheduleRow> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE schedules SET paused = $3, updated_at = now() WHERE id = $1 AND tenant = $2
                     RETURNING {COLS}"
                ),
                &[&id, &tenant, &paused],
            )
            .await?;
        row.as_ref()
            .map(row_to_schedule)
            .transpose()?
            .ok_or_else(|| no_schedule(id))
    }

    /// Delete `tenant`'s schedule `id` and its fires; what it started
    /// stays. False: there was none.
    pub async fn delete_schedule(&self, tenant: &str, id: Uuid) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM schedules WHERE id = $1 AND tenant = $2",
                &[&id, &tenant],
            )
            .await?
            == 1)
    }

    /// Fires of schedule `id`, newest first.
    pub async fn schedule_fires(
        &self,
        id: Uuid,
        outcome: Option<FireOutcome>,
        limit: u32,
    ) -> Result<Vec<FireView>> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {FIRE_COLS} FROM schedule_fires
                     WHERE schedule_id = $1 AND ($2::text IS NULL OR outcome = $2)
                     ORDER BY fire_at DESC LIMIT $3"
                ),
                &[&id, &outcome.map(|o| o.as_str()), &i64::from(limit)],
            )
            .await?
            .iter()
            .map(row_to_fire)
            .collect()
    }

    /// Fires of each of `ids` by outcome, and the lateness of its latest
    /// 1 000 cron fires that started on time (not held by an overlap
    /// policy): two statements however many schedules.
    pub async fn fire_stats(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, FireStats>> {
        let client = self.client().await?;
        let mut out: HashMap<Uuid, FireStats> = HashMap::new();
        for r in client
            .query(
                "SELECT schedule_id, outcome, count(*) FROM schedule_fires
                 WHERE schedule_id = ANY($1) GROUP BY 1, 2",
                &[&ids],
            )
            .await?
        {
            let stats = out.entry(r.get(0)).or_default();
            let n = r.get::<_, i64>(2).max(0) as u64;
            match FireOutcome::parse(r.get(1)) {
                Some(FireOutcome::Fired) => stats.fired = n,
                Some(FireOutcome::Skipped) => stats.skipped = n,
                Some(FireOutcome::Missed) => stats.missed = n,
                Some(FireOutcome::Buffered) => stats.buffered = n,
                Some(FireOutcome::Failed) => stats.failed = n,
                None => {}
            }
        }
        for r in client
            .query(
                "SELECT x.id, percentile_cont(0.5) WITHIN GROUP (ORDER BY l.lateness_ms),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY l.lateness_ms)
                 FROM unnest($1::uuid[]) AS x(id)
                 CROSS JOIN LATERAL (
                     SELECT lateness_ms FROM schedule_fires
                     WHERE schedule_id = x.id AND kind = 'cron' AND outcome = 'fired' AND reason IS NULL
                       AND lateness_ms IS NOT NULL
                     ORDER BY fire_at DESC LIMIT 1000) l
                 GROUP BY x.id",
                &[&ids],
            )
            .await?
        {
            let stats = out.entry(r.get(0)).or_default();
            stats.lateness_p50_ms = r.get(1);
            stats.lateness_p99_ms = r.get(2);
        }
        Ok(out)
    }

    /// When the next fire time of any schedule is due.
    pub async fn next_due(&self) -> Result<Option<OffsetDateTime>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT min(next_due_at) FROM schedules")
            .await?;
        Ok(client.query_one(&stmt, &[]).await?.get(0))
    }

    /// Schedules with a fire waiting for the previous one to end.
    pub async fn buffered_schedules(&self) -> Result<Vec<Uuid>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT DISTINCT schedule_id FROM schedule_fires WHERE outcome = 'buffered' LIMIT 1000",
            )
            .await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Decide the due cron times of schedule `id` (if no other scheduler
    /// holds it): the ones past the catch-up window are missed, the others
    /// start per the catch-up and overlap policies. At most one starts per
    /// call (the next call sees it running); the cursor moves past every
    /// time decided.
    pub async fn decide_due<R: FireRules>(
        &self,
        id: Uuid,
        rules: &R,
        tried: Option<&Previous>,
    ) -> Result<Decided> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let mut out = Decided::default();
        let Some(s) = lock_schedule(&t, id, None, true).await? else {
            return Ok(out);
        };
        let now = db_now(&t).await?;
        let mut times = Vec::new();
        let mut cursor = s.next_fire_at;
        while let Some(f) = cursor {
            if s.due(f) > now || times.len() >= MAX_PER_PASS {
                break;
            }
            times.push(f);
            cursor = rules.next_after(&s, f);
        }
        if times.is_empty() {
            // Another scheduler got here first.
            return Ok(out);
        }
        let late = |f: OffsetDateTime| now - s.due(f);
        let missed: Vec<String> = times
            .iter()
            .take_while(|f| late(**f) > s.catchup_window)
            .map(|f| {
                format!(
                    "{} late, outside the catch-up window of {}",
                    human(late(*f).unsigned_abs()),
                    human(s.catchup_window)
                )
            })
            .collect();
        let rows: Vec<FireRow<'_>> = times
            .iter()
            .zip(&missed)
            .map(|(f, why)| FireRow {
                lateness_ms: Some(ms_between(now, s.due(*f))),
                ..FireRow::decided(*f, FireKind::Cron, FireOutcome::Missed, why)
            })
            .collect();
        record(&t, &s, &rows, &mut out).await?;
        let in_window = &times[missed.len()..];
        let paused = "the schedule is paused".to_string();
        // More due than one pass decides: under `latest`, none of this
        // pass's is the latest.
        let behind = cursor.is_some_and(|c| s.due(c) <= now);
        let coalesced = match in_window.last() {
            Some(l) if !behind => format!(
                "coalesced: the catch-up policy latest runs only the fire at {}",
                rfc3339(*l)
            ),
            _ => "coalesced: the catch-up policy latest runs only the latest fire due".to_string(),
        };
        let (skip, candidates): (&[OffsetDateTime], &[OffsetDateTime]) =
            if s.paused || (s.catchup == Catchup::Latest && behind) {
                (in_window, &[])
            } else if s.catchup == Catchup::Latest && in_window.len() > 1 {
                in_window.split_at(in_window.len() - 1)
            } else {
                (&[], in_window)
            };
        let why = if s.paused { &paused } else { &coalesced };
        let rows: Vec<FireRow<'_>> = skip
            .iter()
            .map(|f| FireRow::decided(*f, FireKind::Cron, FireOutcome::Skipped, why))
            .collect();
        record(&t, &s, &rows, &mut out).await?;
        if !candidates.is_empty() && s.overlap == Overlap::BufferOne {
            start_buffered(&mut t, &s, rules, &mut out).await?;
        }
        for (i, f) in candidates.iter().enumerate() {
            if fire_exists(&t, s.id, *f).await?.is_some() {
                continue;
            }
            match overlap_verdict(&t.tx, &s, tried).await? {
                Verdict::Start => {
                    start(&mut t, &s, *f, FireKind::Cron, false, None, rules, &mut out).await?;
                    if let Some(next) = candidates.get(i + 1) {
                        cursor = Some(*next);
                        break;
                    }
                }
                Verdict::Hold(outcome, why) => {
                    let row = FireRow::decided(*f, FireKind::Cron, outcome, &why);
                    record(&t, &s, &[row], &mut out).await?;
                }
                Verdict::CancelFirst(prev) => {
                    cursor = Some(*f);
                    out.cancel_first = Some(prev);
                    break;
                }
            }
        }
        set_cursor(&t, &s, cursor).await?;
        out.more = out.cancel_first.is_some()
            || cursor.is_some_and(|c| s.due(c) <= OffsetDateTime::now_utc());
        let outbox = t.commit().await?;
        out.outbox.extend(outbox);
        Ok(out)
    }

    /// Decide up to `limit` due schedules in one transaction: the ones
    /// with one cron time due, inside the window, of a task, and free to
    /// start (overlap `allow`, or the previous fire has ended) start their
    /// task, all in one statement each for tasks, events, outbox rows,
    /// fires and cursors. The others are left, still due, for
    /// [`Store::decide_due`] once this commits.
    pub async fn decide_batch<R: FireRules>(&self, limit: u32, rules: &R) -> Result<Batch> {
        let mut client = self.client().await?;
        let t = LoopTx::begin(&mut client).await?;
        let mut out = Batch::default();
        let stmt =
            t.tx.prepare_cached(&format!(
                "SELECT {COLS} FROM schedules WHERE next_due_at <= now()
                 ORDER BY next_due_at LIMIT $1 FOR UPDATE SKIP LOCKED"
            ))
            .await?;
        let schedules =
            t.tx.query(&stmt, &[&i64::from(limit)])
                .await?
                .iter()
                .map(row_to_schedule)
                .collect::<Result<Vec<_>>>()?;
        out.claimed = schedules.len();
        if schedules.is_empty() {
            return Ok(out);
        }
        // Which of the overlap-minding ones still have their last fire at work.
        let minding: Vec<Uuid> = schedules
            .iter()
            .filter(|s| s.overlap != Overlap::Allow)
            .map(|s| s.id)
            .collect();
        let busy: std::collections::HashSet<Uuid> = if minding.is_empty() {
            Default::default()
        } else {
            let stmt =
                t.tx.prepare_cached(
                    "SELECT x.id FROM unnest($1::uuid[]) AS x(id)
                     WHERE EXISTS (SELECT 1 FROM
                                     (SELECT task_id, goal_id FROM schedule_fires
                                      WHERE schedule_id = x.id AND outcome = 'fired'
                                      ORDER BY decided_at DESC LIMIT 100) f
                                   LEFT JOIN tasks t ON t.id = f.task_id
                                   LEFT JOIN goals g ON g.id = f.goal_id
                                   WHERE t.state::text NOT IN ('done', 'failed', 'cancelled')
                                      OR g.state::text NOT IN ('done', 'failed', 'cancelled'))
                        OR EXISTS (SELECT 1 FROM schedule_fires b
                                   WHERE b.schedule_id = x.id AND b.outcome = 'buffered')",
                )
                .await?;
            t.tx.query(&stmt, &[&minding])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let now = db_now(&t).await?;
        // (schedule, fire time, next cursor) of the ones this batch takes.
        let mut simple = Vec::new();
        for s in &schedules {
            let Some(f) = s.next_fire_at else {
                out.single.push(s.id);
                continue;
            };
            let next = rules.next_after(s, f);
            let behind = next.is_some_and(|n| s.due(n) <= now);
            let late = now - s.due(f) > s.catchup_window;
            if s.paused || s.target == TargetKind::Goal || busy.contains(&s.id) || behind || late {
                out.single.push(s.id);
            } else {
                simple.push((s, f, next));
            }
        }
        if !simple.is_empty() {
            let stmt =
                t.tx.prepare_cached(
                    "SELECT f.schedule_id FROM schedule_fires f
                     JOIN unnest($1::uuid[], $2::timestamptz[]) AS x(id, at)
                       ON f.schedule_id = x.id AND f.fire_at = x.at",
                )
                .await?;
            let taken: std::collections::HashSet<Uuid> =
                t.tx.query(
                    &stmt,
                    &[
                        &simple.iter().map(|(s, _, _)| s.id).collect::<Vec<_>>(),
                        &simple.iter().map(|(_, f, _)| *f).collect::<Vec<_>>(),
                    ],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            simple.retain(|(s, _, _)| {
                let keep = !taken.contains(&s.id);
                if !keep {
                    out.single.push(s.id);
                }
                keep
            });
        }
        let mut fires: Vec<(Uuid, FireView)> = Vec::with_capacity(simple.len());
        let mut tasks: Vec<(usize, NewTask, Uuid)> = Vec::new();
        for (i, (s, f, _)) in simple.iter().enumerate() {
            let view = FireView {
                fire_at: *f,
                kind: FireKind::Cron,
                outcome: FireOutcome::Fired,
                task_id: None,
                goal_id: None,
                reason: None,
                lateness_ms: None,
                decided_at: now,
            };
            match rules.admit(s, *f).await? {
                Ok(NewTarget::Task(new)) => tasks.push((i, new, Uuid::now_v7())),
                Ok(NewTarget::Goal(_)) => {
                    return Err(Error::Invalid(format!(
                        "schedule {} of a task made a goal",
                        s.id
                    )))
                }
                Err(why) => {
                    let reason = format!("its task was refused: {why}");
                    fires.push((
                        s.id,
                        FireView {
                            outcome: FireOutcome::Failed,
                            reason: Some(reason),
                            ..view.clone()
                        },
                    ));
                    continue;
                }
            }
            fires.push((s.id, view));
        }
        let items: Vec<(&NewTask, Uuid)> = tasks.iter().map(|(_, n, id)| (n, *id)).collect();
        let made = insert_queued_many(&t.tx, &items).await?;
        let by_schedule: std::collections::HashMap<Uuid, usize> = fires
            .iter()
            .enumerate()
            .map(|(k, (id, _))| (*id, k))
            .collect();
        for ((i, new, _), made) in tasks.iter().zip(made) {
            let (s, f, _) = simple[*i];
            let fire = &mut fires[by_schedule[&s.id]].1;
            match made {
                Some((task, outbox)) => {
                    fire.task_id = Some(task.id);
                    fire.lateness_ms = Some(ms_between(task.created_at, s.due(f)));
                    out.decided.outbox.extend(outbox);
                }
                None => {
                    fire.outcome = FireOutcome::Failed;
                    fire.reason = Some(format!(
                        "its task was refused: the task's idempotency key {:?} names another task already",
                        new.idempotency_key.clone().unwrap_or_default()
                    ));
                }
            }
        }
        let written = insert_fires(&t.tx, &fires).await?;
        if written.len() != fires.len() {
            // Checked above under the locks: a bug, and nothing may commit.
            return Err(Error::Conflict(
                "a fire row appeared under a schedule's lock".into(),
            ));
        }
        if !simple.is_empty() {
            let stmt = t
                .tx
                .prepare_cached(
                    "UPDATE schedules s SET next_fire_at = x.next, next_due_at = x.due
                     FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS x(id, next, due)
                     WHERE s.id = x.id",
                )
                .await?;
            t.tx.execute(
                &stmt,
                &[
                    &simple.iter().map(|(s, _, _)| s.id).collect::<Vec<_>>(),
                    &simple.iter().map(|(_, _, n)| *n).collect::<Vec<_>>(),
                    &simple
                        .iter()
                        .map(|(s, _, n)| n.map(|n| s.due(n)))
                        .collect::<Vec<_>>(),
                ],
            )
            .await?;
        }
        out.decided.outbox.extend(t.commit().await?);
        out.decided.fires = fires.into_iter().map(|(_, f)| f).collect();
        Ok(out)
    }

    /// Start schedule `id`'s buffered fire if the fire before it has ended.
    pub async fn promote_buffered<R: FireRules>(&self, id: Uuid, rules: &R) -> Result<Decided> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let mut out = Decided::default();
        let Some(s) = lock_schedule(&t, id, None, true).await? else {
            return Ok(out);
        };
        if s.paused {
            return Ok(out);
        }
        if start_buffered(&mut t, &s, rules, &mut out).await? {
            out.outbox.extend(t.commit().await?);
        }
        Ok(out)
    }

    /// Fire `tenant`'s schedule `id` now (its overlap policy applies).
    pub async fn trigger_schedule<R: FireRules>(
        &self,
        tenant: &str,
        id: Uuid,
        rules: &R,
        tried: Option<&Previous>,
    ) -> Result<Decided> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let mut out = Decided::default();
        let s = lock_schedule(&t, id, Some(tenant), false)
            .await?
            .ok_or_else(|| no_schedule(id))?;
        // Microseconds (the column's precision), and never a cron instant
        // of the schedule, whose fire that would take.
        let mut now = db_now(&t).await?;
        if rules.next_after(&s, now - time::Duration::microseconds(1)) == Some(now) {
            now += time::Duration::microseconds(1);
        }
        if fire_exists(&t, s.id, now).await?.is_some() {
            return Err(Error::Conflict(format!(
                "schedule {id} has a fire at {} already; trigger it again",
                rfc3339(now)
            )));
        }
        let kind = FireKind::Trigger;
        if s.overlap == Overlap::BufferOne {
            start_buffered(&mut t, &s, rules, &mut out).await?;
        }
        match overlap_verdict(&t.tx, &s, tried).await? {
            Verdict::Start => {
                start(
                    &mut t,
                    &s,
                    now,
                    kind,
                    false,
                    Some("triggered by a person"),
                    rules,
                    &mut out,
                )
                .await?
            }
            Verdict::Hold(outcome, why) => {
                let row = FireRow::decided(now, kind, outcome, &why);
                record(&t, &s, &[row], &mut out).await?
            }
            Verdict::CancelFirst(prev) => {
                out.cancel_first = Some(prev);
                return Ok(out);
            }
        }
        out.outbox.extend(t.commit().await?);
        Ok(out)
    }

    /// Start every one of `times` (cron times of `tenant`'s schedule `id`,
    /// in the past) that has not started anything yet: a missing fire row
    /// is written, a skipped or missed one becomes fired; fired, failed
    /// and buffered ones stay. Overlap does not apply: a person asked for
    /// each.
    pub async fn backfill_schedule<R: FireRules>(
        &self,
        tenant: &str,
        id: Uuid,
        times: &[OffsetDateTime],
        rules: &R,
    ) -> Result<Decided> {
        let mut client = self.client().await?;
        let mut t = LoopTx::begin(&mut client).await?;
        let mut out = Decided::default();
        let s = lock_schedule(&t, id, Some(tenant), false)
            .await?
            .ok_or_else(|| no_schedule(id))?;
        let why = "backfilled by a person";
        for f in times {
            let upgrade = match fire_exists(&t, s.id, *f).await? {
                None => false,
                Some(FireOutcome::Skipped | FireOutcome::Missed) => true,
                Some(_) => continue,
            };
            start(
                &mut t,
                &s,
                *f,
                FireKind::Backfill,
                upgrade,
                Some(why),
                rules,
                &mut out,
            )
            .await?;
        }
        out.outbox.extend(t.commit().await?);
        Ok(out)
    }
}
