//! Goal routes, the leaderboard and a person's score adjustments.
//!
//! - `POST /v1/goals` → 202 `{id, state, created}` (`Idempotency-Key` as for
//!   tasks); `GET /v1/goals[?state=&limit=]`; `GET /v1/goals/{id}` → the
//!   goal with its plan, sub-tasks, reviews, progress and spend.
//! - `GET /v1/goals/{id}/events` → server-sent events: the goal's history
//!   (`goal` events for the goal, `task` events for its tasks' state
//!   changes), then the same live, ending with `end` (the final view).
//! - `POST /v1/goals/{id}/{pause|resume|approve|cancel|replan|decide}`: a
//!   person's action; `cancel` and `replan` take an optional `{"note"}`,
//!   `decide` takes a [`GoalDecision`]. Runs a change cancels are told to
//!   stop.
//! - `GET /v1/leaderboard[?role=]`; `POST /v1/employees/{id}/score`
//!   `{delta, reason}` (admin keys; a ledger row and an audit row).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Deserialize;
use store::goals::GoalAction;
use subjects::goals::{GoalDecision, GoalEvent, GoalState, GoalSummary, GoalView};
use subjects::{subject, Event};
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{header_str, read_json, submission_bytes, uuid_of, AppState, Caller, Refusal};

pub(super) fn no_goal(id: Uuid) -> Refusal {
    Refusal::not_found(format!("goal {id} does not exist"))
}

pub(super) async fn submit(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let bytes = submission_bytes(&s.0.cfg.rules, body).await?;
    let key = header_str(&headers, "idempotency-key")?;
    let accepted = s.admit_goal(&caller.tenant, &bytes, key).await?;
    let status = if accepted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(accepted)).into_response())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<GoalSummary>>, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(Refusal::bad(
            "the query takes state=<goal state> and limit=<1-500>",
        ));
    };
    let state = match q.state.as_deref() {
        None => None,
        Some(raw) => Some(GoalState::parse(raw).ok_or_else(|| {
            Refusal::bad(format!(
                "state {raw:?} is not a goal state; use one of {}",
                GoalState::ALL.map(|s| s.as_str()).join(", ")
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Refusal::bad(format!(
            "limit is {limit}; use a number from 1 to 500"
        )));
    }
    Ok(Json(
        s.0.store.list_goals(&caller.tenant, state, limit).await?,
    ))
}

pub(super) async fn get_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<GoalView>, Refusal> {
    let id = uuid_of(&raw, "a goal")?;
    s.goal_view(&caller.tenant, id).await.map(Json)
}

/// The optional body of `cancel` and `replan`.
#[derive(schemars::JsonSchema, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Note {
    #[serde(default)]
    note: String,
}

/// What a person may do to a goal; the last path segment.
#[derive(Clone, Copy)]
pub(super) enum Act {
    Pause,
    Resume,
    Approve,
    Cancel,
    Replan,
    Decide,
}

async fn note_of(body: Body) -> Result<String, Refusal> {
    let bytes = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map_err(|_| Refusal::bad("the note is over the 16384-byte limit"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let n: Note = serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::bad(format!("the body is not a valid {{\"note\"}}: {e}")))?;
    if n.note.contains('\0') {
        return Err(Refusal::bad("the note contains a NUL character"));
    }
    Ok(n.note)
}

pub(super) async fn act(
    s: AppState,
    caller: Caller,
    raw: String,
    act: Act,
    body: Body,
) -> Result<Json<GoalView>, Refusal> {
    let id = uuid_of(&raw, "a goal")?;
    let action = match act {
        Act::Pause => GoalAction::Pause,
        Act::Resume => GoalAction::Resume,
        Act::Approve => GoalAction::Approve,
        Act::Cancel => {
            let note = note_of(body).await?;
            GoalAction::Cancel(if note.is_empty() {
                "cancelled by a person".to_string()
            } else {
                format!("cancelled by a person: {note}")
            })
        }
        Act::Replan => GoalAction::Replan(note_of(body).await?),
        Act::Decide => {
            let d: GoalDecision = read_json(body, "decision").await?;
            if let Some(b) = &d.budget {
                admission::goal::check_budget(b)?;
            }
            if d.note.contains('\0') {
                return Err(Refusal::bad("the note contains a NUL character"));
            }
            GoalAction::Decide(d)
        }
    };
    let changed = s.0.store.act_on_goal(&caller.tenant, id, action).await?;
    s.0.relay.send(changed.outbox);
    // Core NATS, like a task's cancel: a lost one leaves the run to finish
    // and its result to be dropped by the guarded transition.
    for (task, worker) in &changed.cancelled_on {
        let target = match worker {
            Some(w) => subject::ctl(w, subject::CTL_CANCEL),
            None => subject::ctl_broadcast(subject::CTL_CANCEL),
        };
        let _ = s.0.nats.publish(target, task.to_string().into()).await;
    }
    s.0.store
        .goal_view(&caller.tenant, id)
        .await?
        .map(Json)
        .ok_or_else(|| no_goal(id))
}

#[derive(Deserialize)]
pub(super) struct RoleQuery {
    role: Option<String>,
}

pub(super) async fn leaderboard(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<RoleQuery>, QueryRejection>,
) -> Result<Json<Vec<store::scores::Standing>>, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(Refusal::bad("the query takes role=<role name>"));
    };
    Ok(Json(
        s.0.store
            .leaderboard(&caller.tenant, q.role.as_deref())
            .await?,
    ))
}

/// Body of `POST /v1/employees/{id}/score`.
#[derive(schemars::JsonSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Adjustment {
    /// Non-zero points, at most 1 000 either way.
    #[schemars(range(min = -1000, max = 1000))]
    delta: i32,
    reason: String,
}

pub(super) async fn adjust_score(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, Refusal> {
    let id = uuid_of(&raw, "an employee")?;
    let a: Adjustment = read_json(body, "adjustment").await?;
    let row =
        s.0.store
            .adjust_score(&caller.tenant, id, a.delta, &a.reason, caller.key_id)
            .await?;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

/// A key that tells one event from another whether it came from Postgres
/// (history) or from NATS (live): Postgres keeps microseconds.
fn seen_key(task: Option<Uuid>, kind: &str, to: Option<&str>, at: OffsetDateTime) -> String {
    let micros = at.unix_timestamp_nanos() / 1_000;
    format!(
        "{}|{kind}|{}|{micros}",
        task.map(|t| t.to_string()).unwrap_or_default(),
        to.unwrap_or_default()
    )
}

pub(super) fn goal_sse(ev: &GoalEvent) -> SseEvent {
    SseEvent::default()
        .event("goal")
        .json_data(ev)
        .unwrap_or_else(|_| SseEvent::default())
}

pub(super) fn task_sse(ev: &Event) -> SseEvent {
    SseEvent::default()
        .event("task")
        .json_data(ev)
        .unwrap_or_else(|_| SseEvent::default())
}

fn task_key(ev: &Event) -> String {
    let to = match &ev.body {
        subjects::EventBody::State { to, .. } => Some(to.as_str()),
        _ => None,
    };
    seen_key(Some(ev.task_id), ev.body.kind(), to, ev.at)
}

fn goal_key(ev: &GoalEvent) -> String {
    seen_key(ev.task_id, &ev.kind, ev.to.map(|s| s.as_str()), ev.at)
}

pub(super) async fn events(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let id = uuid_of(&raw, "a goal")?;
    // Listen before reading the history, so nothing falls in between; what
    // is in both is sent once.
    let live =
        s.0.watchers
            .watch(subject::events_of_goal(&caller.tenant, id))
            .await
            .map_err(|e| {
                tracing::warn!(goal = %id, error = %e, "goal watch");
                Refusal::unavailable("the event feed is unavailable; retry in a few seconds")
            })?;
    let history =
        s.0.store
            .goal_history(&caller.tenant, id)
            .await?
            .ok_or_else(|| no_goal(id))?;
    let tasks = s.0.store.goal_task_events(&caller.tenant, id).await?;
    let mut seen = HashSet::new();
    let mut backlog: Vec<(OffsetDateTime, SseEvent)> = Vec::new();
    for ev in &history {
        seen.insert(goal_key(ev));
        backlog.push((ev.at, goal_sse(ev)));
    }
    for ev in &tasks {
        seen.insert(task_key(ev));
        backlog.push((ev.at, task_sse(ev)));
    }
    backlog.sort_by_key(|(at, _)| *at);
    let closing = history
        .iter()
        .any(|e| e.to.is_some_and(GoalState::is_final));
    let state = Feed {
        s: s.clone(),
        tenant: caller.tenant,
        id,
        live,
        seen,
        backlog: backlog.into_iter().map(|(_, e)| e).collect(),
        closing,
        ended: false,
    };
    Ok(Sse::new(feed(state))
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct Feed {
    s: AppState,
    tenant: String,
    id: Uuid,
    live: tokio::sync::broadcast::Receiver<crate::watch::Message>,
    seen: HashSet<String>,
    backlog: std::collections::VecDeque<SseEvent>,
    /// The goal is final: `end` follows the backlog.
    closing: bool,
    ended: bool,
}

impl Feed {
    /// The final view, if the goal is final.
    async fn end(&self) -> Option<SseEvent> {
        let store = &self.s.0.store;
        // One row first: an idle watcher asks every few seconds.
        let goal = store.goal(&self.tenant, self.id).await.ok()??;
        if !goal.state.is_final() {
            return None;
        }
        let view = store.goal_view(&self.tenant, self.id).await.ok()??;
        view.state.is_final().then(|| {
            SseEvent::default()
                .event("end")
                .json_data(&view)
                .unwrap_or_else(|_| SseEvent::default())
        })
    }
}

/// The history, then live events until the goal is final (or found final
/// in Postgres, should its last event be lost: core NATS), then `end`.
fn feed(state: Feed) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(state, |mut f| async move {
        if f.ended {
            return None;
        }
        if let Some(ev) = f.backlog.pop_front() {
            return Some((Ok(ev), f));
        }
        if f.closing {
            f.ended = true;
            return f.end().await.map(|end| (Ok(end), f));
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(5), f.live.recv()).await {
                Ok(Ok(msg)) => {
                    if let Some(ev) = f.accept(&msg) {
                        return Some((Ok(ev), f));
                    }
                }
                Ok(Err(RecvError::Lagged(n))) => {
                    let sse = SseEvent::default().event("lagged").data(format!(
                        "{n} events were skipped because this client reads slowly; GET the goal for its state"
                    ));
                    return Some((Ok(sse), f));
                }
                Ok(Err(RecvError::Closed)) => return None,
                Err(_) => {
                    if let Some(end) = f.end().await {
                        f.ended = true;
                        return Some((Ok(end), f));
                    }
                }
            }
        }
    })
}

impl Feed {
    /// A live message as an event, unless it was sent already (or is not
    /// one); a goal's final state closes the feed after it.
    fn accept(&mut self, msg: &crate::watch::Message) -> Option<SseEvent> {
        if subject::is_goal_event(&msg.subject) {
            let ev = serde_json::from_slice::<GoalEvent>(&msg.payload).ok()?;
            if !self.seen.insert(goal_key(&ev)) {
                return None;
            }
            if ev.to.is_some_and(GoalState::is_final) {
                self.closing = true;
            }
            Some(goal_sse(&ev))
        } else {
            let ev = serde_json::from_slice::<Event>(&msg.payload).ok()?;
            self.seen.insert(task_key(&ev)).then(|| task_sse(&ev))
        }
    }
}
