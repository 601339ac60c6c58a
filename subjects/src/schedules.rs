//! Schedules on the wire: what `POST /v1/schedules` takes
//! ([`ScheduleSpec`]), what `GET /v1/schedules/{id}` answers
//! ([`ScheduleView`]) and each fire ([`FireView`]).
//!
//! The rules (which expressions, zones and windows are allowed, the DST
//! policy, when a fire is due) live in the `scheduler` crate; only the
//! shapes and the names live here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// What happens at a fire time while the previous fire's task or goal is
/// still running.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start it anyway: runs may overlap.
    Allow,
    /// Do not start it; the fire is recorded as skipped.
    #[default]
    Skip,
    /// Keep one fire waiting and start it when the previous one ends; more
    /// fires meanwhile are skipped.
    BufferOne,
    /// Cancel the previous fire's task or goal, then start.
    CancelPrevious,
}

impl Overlap {
    pub const ALL: [Overlap; 4] = [
        Overlap::Allow,
        Overlap::Skip,
        Overlap::BufferOne,
        Overlap::CancelPrevious,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::CancelPrevious => "cancel_previous",
        }
    }

    pub fn parse(s: &str) -> Option<Overlap> {
        Overlap::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What happens to the fire times a stopped scheduler (or a paused
/// schedule) passed that are still inside the catch-up window.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    /// Each one runs, oldest first.
    All,
    /// Only the latest runs; the others are recorded as skipped.
    #[default]
    Latest,
}

impl Catchup {
    pub fn as_str(self) -> &'static str {
        match self {
            Catchup::All => "all",
            Catchup::Latest => "latest",
        }
    }

    pub fn parse(s: &str) -> Option<Catchup> {
        [Catchup::All, Catchup::Latest]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// A length of time: a number of seconds, or a string with a unit
/// (`"500ms"`, `"90s"`, `"10m"`, `"2h"`, `"1d"`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, PartialEq, Debug)]
#[serde(untagged)]
pub enum Span {
    Seconds(u64),
    Text(String),
}

/// A schedule: the body of `POST /v1/schedules` (and, field by field, of
/// `PATCH /v1/schedules/{id}`, where `null` clears `start_at`/`end_at`).
///
/// Exactly one of `task` and `goal`: what `POST /v1/tasks` or
/// `POST /v1/goals` takes. Every string in it may name the fire:
/// `{{fire_at}}` (UTC, RFC 3339), `{{fire_at_local}}` (in the schedule's
/// zone), `{{fire_date}}` (the local date), `{{schedule_id}}`,
/// `{{schedule_name}}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique among the tenant's schedules; 1-100 characters.
    pub name: String,
    /// 5 fields (`min hour day month weekday`), 6 with seconds first, or
    /// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    /// An IANA zone (`Europe/Berlin`); default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Value>,
    #[serde(default)]
    pub overlap: Overlap,
    /// How late a fire may still start (default 5 minutes, at most 7
    /// days); older ones are recorded as missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup_window: Option<Span>,
    #[serde(default)]
    pub catchup: Catchup,
    /// Bound of this schedule's own fixed offset (default none): many
    /// schedules on one expression do not all fire in the same instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Span>,
    /// No fire before this instant (RFC 3339).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub start_at: Option<OffsetDateTime>,
    /// No fire after this instant (RFC 3339).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub end_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".to_string()
}

/// One upcoming fire time, in the schedule's zone and in UTC.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct NextFire {
    /// RFC 3339 with the zone's offset of that day.
    pub local: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub utc: OffsetDateTime,
}

/// How a fire time was decided.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// Its task or goal was created.
    Fired,
    /// Not started: the previous fire still ran, or the catch-up policy
    /// ran a later fire instead (see the reason).
    Skipped,
    /// Too late: outside the catch-up window when a scheduler got to it.
    Missed,
    /// Waiting for the previous fire to end (`buffer_one`).
    Buffered,
    /// Its task or goal was refused (the reason says why).
    Failed,
}

impl FireOutcome {
    pub const ALL: [FireOutcome; 5] = [
        FireOutcome::Fired,
        FireOutcome::Skipped,
        FireOutcome::Missed,
        FireOutcome::Buffered,
        FireOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Fired => "fired",
            FireOutcome::Skipped => "skipped",
            FireOutcome::Missed => "missed",
            FireOutcome::Buffered => "buffered",
            FireOutcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<FireOutcome> {
        FireOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Where a fire time came from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum FireKind {
    /// The cron expression.
    Cron,
    /// `POST /v1/schedules/{id}/trigger`.
    Trigger,
    /// `POST /v1/schedules/{id}/backfill`.
    Backfill,
}

impl FireKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FireKind::Cron => "cron",
            FireKind::Trigger => "trigger",
            FireKind::Backfill => "backfill",
        }
    }

    pub fn parse(s: &str) -> Option<FireKind> {
        [FireKind::Cron, FireKind::Trigger, FireKind::Backfill]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One fire time and what became of it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FireView {
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub fire_at: OffsetDateTime,
    pub kind: FireKind,
    pub outcome: FireOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Due time (fire time plus the schedule's offset) → task or goal
    /// created, for a fire that started something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness_ms: Option<f64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub decided_at: OffsetDateTime,
}

/// The answer of `GET /v1/schedules/{id}/fires`, newest first.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Fires {
    pub fires: Vec<FireView>,
}

/// Fires of a schedule by outcome, and the lateness of those that started
/// something.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct FireStats {
    pub fired: u64,
    pub skipped: u64,
    pub missed: u64,
    pub buffered: u64,
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness_p99_ms: Option<f64>,
}

/// A schedule as `GET /v1/schedules/{id}` shows it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ScheduleView {
    pub id: Uuid,
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// The window and the jitter bound, resolved.
    pub catchup_window_secs: u64,
    pub jitter_ms: u64,
    /// This schedule's own offset within the jitter bound: each fire is due
    /// this long after its cron time.
    pub offset_ms: u64,
    /// The next 10 cron times (empty when none is left: past `end_at`).
    pub next_fires: Vec<NextFire>,
    pub stats: FireStats,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
}

/// The body of `POST /v1/schedules/{id}/backfill`: every cron time in
/// `[from, to)` that has not run yet runs now.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub to: OffsetDateTime,
}

/// The answer of backfill and trigger: the fires they decided.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FiresStarted {
    pub fires: Vec<FireView>,
}
