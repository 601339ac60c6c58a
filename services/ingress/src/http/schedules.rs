//! Schedule routes: recurring tasks and goals.
//!
//! - `POST /v1/schedules` ([`ScheduleSpec`]) → 201, the [`ScheduleView`]
//!   (with its next 10 fire times in its zone and in UTC);
//!   `GET /v1/schedules[?limit=]`; `GET|PATCH|DELETE /v1/schedules/{id}`
//!   (a PATCH takes any fields of the spec; `null` clears `start_at` and
//!   `end_at`).
//! - `POST /v1/schedules/{id}/pause|resume` → the view;
//!   `POST /v1/schedules/{id}/trigger` (fire now, the overlap policy
//!   applies) and `POST /v1/schedules/{id}/backfill {from, to}` (every cron
//!   time in `[from, to)` that started nothing yet) → 202 with the fires.
//! - `GET /v1/schedules/{id}/fires[?outcome=&limit=]` → the fires, newest
//!   first: fired (with the task or goal), skipped, missed, buffered or
//!   failed, each with its reason and lateness.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use scheduler::spec::{self, first_after, to_chrono, to_time, Rules};
use serde::Deserialize;
use serde_json::Value;
use store::schedules::{ScheduleDef, ScheduleRow};
use subjects::schedules::{Backfill, FireOutcome, Fires, FiresStarted, ScheduleSpec, ScheduleView};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{submission_bytes, uuid_of, AppState, Caller, Refusal};

fn no_schedule(id: Uuid) -> Refusal {
    Refusal::not_found(format!("schedule {id} does not exist"))
}

fn rules(s: &AppState) -> Rules {
    Rules::new(s.0.cfg.rules.clone(), s.0.store.clone())
}

/// A JSON body up to the submission limit (a schedule holds a task or a
/// goal).
async fn body_json(s: &AppState, body: Body, what: &str) -> Result<Value, Refusal> {
    let bytes = submission_bytes(&s.0.cfg.rules, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::bad(format!("the {what} is not valid JSON: {e}")))
}

fn spec_of(v: Value) -> Result<ScheduleSpec, Refusal> {
    serde_json::from_value(v).map_err(|e| Refusal::bad(format!("the schedule is not valid: {e}")))
}

/// The checked schedule with its first fire time after `after`.
fn checked(
    s: &AppState,
    caller: &Caller,
    spec: &ScheduleSpec,
    after: OffsetDateTime,
) -> Result<ScheduleDef, Refusal> {
    let now = OffsetDateTime::now_utc();
    let c = spec::check(spec, &caller.tenant, &s.0.cfg.rules, now).map_err(Refusal::bad)?;
    let mut new = c.new;
    new.next_fire_at = first_after(&c.schedule, after, new.start_at, new.end_at);
    if new.next_fire_at.is_none() {
        return Err(Refusal::bad(format!(
            "cron expression {:?} has no fire time left (before end_at, and before 2100)",
            new.cron
        )));
    }
    Ok(new)
}

/// The views of `rows`, their fire counts read in one go.
async fn views(s: &AppState, rows: Vec<ScheduleRow>) -> Result<Vec<ScheduleView>, Refusal> {
    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    let mut stats = s.0.store.fire_stats(&ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| ScheduleView {
            id: row.id,
            spec: row.spec(),
            catchup_window_secs: row.catchup_window.as_secs(),
            jitter_ms: row.jitter.as_millis() as u64,
            offset_ms: row.offset.as_millis() as u64,
            next_fires: spec::next_fires(&row, 10),
            stats: stats.remove(&row.id).unwrap_or_default(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
        .collect())
}

async fn view(s: &AppState, row: ScheduleRow) -> Result<ScheduleView, Refusal> {
    let mut v = views(s, vec![row]).await?;
    v.pop()
        .ok_or_else(|| Refusal::unavailable("the schedule could not be shown"))
}

async fn row_of(s: &AppState, caller: &Caller, raw: &str) -> Result<ScheduleRow, Refusal> {
    let id = uuid_of(raw, "a schedule")?;
    s.0.store
        .schedule(&caller.tenant, id)
        .await?
        .ok_or_else(|| no_schedule(id))
}

pub(super) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, Refusal> {
    let spec = spec_of(body_json(&s, body, "schedule").await?)?;
    let new = checked(&s, &caller, &spec, OffsetDateTime::now_utc())?;
    let row = s.0.store.create_schedule(&new).await?;
    tracing::info!(schedule = %row.id, tenant = %row.tenant, cron = %row.cron, zone = %row.timezone, "schedule created");
    Ok((StatusCode::CREATED, Json(view(&s, row).await?)).into_response())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u32>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<ScheduleView>>, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(Refusal::bad("the query takes limit=<1-500>"));
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Refusal::bad(format!(
            "limit is {limit}; use a number from 1 to 500"
        )));
    }
    let rows = s.0.store.list_schedules(&caller.tenant, limit).await?;
    Ok(Json(views(&s, rows).await?))
}

pub(super) async fn get_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<ScheduleView>, Refusal> {
    let row = row_of(&s, &caller, &raw).await?;
    Ok(Json(view(&s, row).await?))
}

pub(super) async fn patch(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Json<ScheduleView>, Refusal> {
    let id = uuid_of(&raw, "a schedule")?;
    let Value::Object(changes) = body_json(&s, body, "change").await? else {
        return Err(Refusal::bad(
            "the change must be a JSON object of schedule fields",
        ));
    };
    let updated = s
        .0
        .store
        .patch_schedule(&caller.tenant, id, |row, last, now| {
            let mut merged = serde_json::to_value(row.spec()).expect("a spec serialises");
            let fields = merged.as_object_mut().expect("a spec is an object");
            // A task and a goal exclude each other: naming one drops the other.
            if changes.contains_key("task") {
                fields.remove("goal");
            }
            if changes.contains_key("goal") {
                fields.remove("task");
            }
            for (k, v) in changes {
                if v.is_null() {
                    fields.remove(&k);
                } else {
                    fields.insert(k, v);
                }
            }
            let spec = spec_of(merged)?;
            // The same expression goes on from its cursor (nothing due is
            // skipped); a new one starts from now, and the old one's due
            // times not yet decided are recorded as skipped.
            let same_clock = spec.cron.trim() == row.cron && spec.timezone == row.timezone;
            let mut passed = Vec::new();
            let after = if same_clock {
                match (row.next_fire_at, last) {
                    (Some(next), _) => next - time::Duration::microseconds(1),
                    (None, Some(l)) => l,
                    (None, None) => row.created_at.min(now),
                }
            } else {
                if let Some(old) = Rules::cron_of(row) {
                    let mut at = row.next_fire_at;
                    while let Some(t) = at.filter(|t| row.due(*t) <= now && passed.len() < 1000) {
                        passed.push(t);
                        at = first_after(&old, t, row.start_at, row.end_at);
                    }
                }
                last.map_or(now, |l| l.max(now))
            };
            Ok::<_, Refusal>((checked(&s, &caller, &spec, after)?, passed))
        })
        .await??;
    Ok(Json(view(&s, updated).await?))
}

pub(super) async fn remove(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, Refusal> {
    let id = uuid_of(&raw, "a schedule")?;
    if s.0.store.delete_schedule(&caller.tenant, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_schedule(id))
    }
}

pub(super) async fn pause(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<ScheduleView>, Refusal> {
    let id = uuid_of(&raw, "a schedule")?;
    let row = s.0.store.pause_schedule(&caller.tenant, id, true).await?;
    Ok(Json(view(&s, row).await?))
}

pub(super) async fn resume(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<ScheduleView>, Refusal> {
    let id = uuid_of(&raw, "a schedule")?;
    let row = s.0.store.pause_schedule(&caller.tenant, id, false).await?;
    Ok(Json(view(&s, row).await?))
}

pub(super) async fn trigger(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let id = uuid_of(&raw, "a schedule")?;
    let rules = rules(&s);
    let (store, tenant) = (&s.0.store, caller.tenant.as_str());
    let d = scheduler::run::drive(store, &s.0.nats, &s.0.relay, |tried| {
        let rules = &rules;
        async move {
            store
                .trigger_schedule(tenant, id, rules, tried.as_ref())
                .await
        }
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(FiresStarted { fires: d.fires })).into_response())
}

pub(super) async fn backfill(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, Refusal> {
    let row = row_of(&s, &caller, &raw).await?;
    let b: Backfill =
        serde_json::from_value(body_json(&s, body, "backfill").await?).map_err(|e| {
            Refusal::bad(format!(
                "the backfill is not a valid {{\"from\", \"to\"}}: {e}"
            ))
        })?;
    let now = OffsetDateTime::now_utc();
    if b.to <= b.from {
        return Err(Refusal::bad("to must be after from"));
    }
    if b.to > now {
        return Err(Refusal::bad(
            "a backfill covers the past: to must not be later than now (use trigger to fire now)",
        ));
    }
    if b.from < now - store::schedules::FIRE_RETENTION {
        return Err(Refusal::bad(format!(
            "from is older than the {} days fires are kept; backfill a later range",
            store::schedules::FIRE_RETENTION.whole_days()
        )));
    }
    let cron = Rules::cron_of(&row)
        .ok_or_else(|| Refusal::bad("the schedule's expression does not parse"))?;
    let mut times = Vec::new();
    let mut at = cron
        .next_after(to_chrono(b.from - time::Duration::microseconds(1)))
        .map(to_time);
    while let Some(t) = at.filter(|t| *t < b.to) {
        if times.len() == spec::MAX_BACKFILL {
            return Err(Refusal::bad(format!(
                "the range holds more than {} fire times; backfill it in parts",
                spec::MAX_BACKFILL
            )));
        }
        times.push(t);
        at = cron.next_after(to_chrono(t)).map(to_time);
    }
    let d =
        s.0.store
            .backfill_schedule(&caller.tenant, row.id, &times, &rules(&s))
            .await?;
    s.0.relay.send(d.outbox);
    scheduler::run::record(&d.fires);
    Ok((StatusCode::ACCEPTED, Json(FiresStarted { fires: d.fires })).into_response())
}

#[derive(Deserialize)]
pub(super) struct FiresQuery {
    outcome: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn fires(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    q: Result<Query<FiresQuery>, QueryRejection>,
) -> Result<Json<Fires>, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(Refusal::bad(
            "the query takes outcome=<fire outcome> and limit=<1-1000>",
        ));
    };
    let outcome = match q.outcome.as_deref() {
        None => None,
        Some(raw) => Some(FireOutcome::parse(raw).ok_or_else(|| {
            Refusal::bad(format!(
                "outcome {raw:?} is not a fire outcome; use one of {}",
                FireOutcome::ALL.map(|o| o.as_str()).join(", ")
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Refusal::bad(format!(
            "limit is {limit}; use a number from 1 to 1000"
        )));
    }
    let row = row_of(&s, &caller, &raw).await?;
    Ok(Json(Fires {
        fires: s.0.store.schedule_fires(row.id, outcome, limit).await?,
    }))
}
