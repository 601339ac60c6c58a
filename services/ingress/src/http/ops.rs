//! What the dashboard (and any client) reads to watch the fleet:
//!
//! - `GET /v1/whoami` → the key's tenant and scope.
//! - `GET /v1/overview` → the tenant's tasks and goals by state, what
//!   waits for a person, throughput per minute, failures and spend today.
//! - `GET /v1/streams` (operator keys) → streams, consumers, pools'
//!   backlogs and dead letters, as fresh as a `/metrics` scrape.
//! - `GET /v1/tasks?state=&role=&goal_id=&employee_id=&q=&before=&limit=` →
//!   a page of the tenant's tasks, newest first.
//! - `GET /v1/feed` → the tenant's task and goal events as server-sent
//!   events, live (`task`, `goal`, and `lagged` when the client reads too
//!   slowly); it ends after [`FEED_LIFETIME`] so that a revoked key stops
//!   reading, and a client reconnects.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Deserialize;
use store::ops::TaskSearch;
use subjects::goals::GoalEvent;
use subjects::ops::{Overview, Streams, TaskPage, WhoAmI};
use subjects::{subject, Event, TaskState};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::goals::{goal_sse, task_sse};
use super::{AppState, Caller, Refusal};

/// How long one `GET /v1/feed` streams before it ends.
pub const FEED_LIFETIME: Duration = Duration::from_secs(600);
/// The largest page of `GET /v1/tasks`.
const MAX_PAGE: u32 = 200;

pub(super) async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        tenant: caller.tenant,
        scope: caller.scope.as_str().to_string(),
        key_id: caller.key_id,
    })
}

/// Each tenant's last overview: however many tabs poll it, Postgres
/// computes it at most every [`OVERVIEW_TTL`] per tenant.
#[derive(Default)]
pub(super) struct Overviews(std::sync::Mutex<HashMap<String, (Instant, Overview)>>);

/// How long one tenant's overview is served from memory.
const OVERVIEW_TTL: Duration = Duration::from_secs(2);
/// Tenants whose overview is kept at most (the memory is emptied when full).
const OVERVIEWS_MAX: usize = 10_000;

pub(super) async fn overview(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Overview>, Refusal> {
    let cache = &s.0.overviews.0;
    let fresh = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&caller.tenant)
        .filter(|(at, _)| at.elapsed() < OVERVIEW_TTL)
        .map(|(_, o)| o.clone());
    if let Some(o) = fresh {
        return Ok(Json(o));
    }
    let o = s.0.store.overview(&caller.tenant).await?;
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= OVERVIEWS_MAX {
        cache.clear();
    }
    cache.insert(caller.tenant, (Instant::now(), o.clone()));
    Ok(Json(o))
}

pub(super) async fn streams(State(s): State<AppState>) -> Json<Streams> {
    Json(s.0.collector.streams().await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    state: Option<String>,
    role: Option<String>,
    goal_id: Option<Uuid>,
    employee_id: Option<Uuid>,
    q: Option<String>,
    before: Option<Uuid>,
    limit: Option<u32>,
}

pub(super) async fn search(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<TaskPage>, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(Refusal::bad(
            "the query takes state=, role=, goal_id=, employee_id= and before= (UUIDs), q=<text> and limit=<1-200>",
        ));
    };
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(TaskState::parse(raw).ok_or_else(|| {
            let all: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            Refusal::bad(format!("state {raw:?} is not one of {}", all.join(", ")))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Refusal::bad(format!(
            "limit is {limit}; use a number from 1 to {MAX_PAGE}"
        )));
    }
    let text = q.q.filter(|t| !t.is_empty());
    if text.as_ref().is_some_and(|t| t.chars().count() > 200) {
        return Err(Refusal::bad("q is longer than 200 characters"));
    }
    for (name, v) in [("q", &text), ("role", &q.role)] {
        if v.as_ref().is_some_and(|v| v.chars().any(char::is_control)) {
            return Err(Refusal::bad(format!(
                "{name} must not contain control characters"
            )));
        }
    }
    let f = TaskSearch {
        state,
        role: q.role.filter(|r| !r.is_empty()),
        goal_id: q.goal_id,
        employee_id: q.employee_id,
        text,
        before: q.before,
        limit,
    };
    let (tasks, next) = s.0.store.search_tasks(&caller.tenant, &f).await?;
    Ok(Json(TaskPage { tasks, next }))
}

pub(super) async fn feed(State(s): State<AppState>, caller: Caller) -> Result<Response, Refusal> {
    let live =
        s.0.watchers
            .watch(subject::events_of_tenant(&caller.tenant))
            .await
            .map_err(|e| {
                tracing::warn!(tenant = %caller.tenant, error = %e, "feed watch");
                Refusal::unavailable("the event feed is unavailable; retry in a few seconds")
            })?;
    let until = tokio::time::Instant::now() + FEED_LIFETIME;
    Ok(Sse::new(tenant_feed(live, until))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn tenant_feed(
    live: tokio::sync::broadcast::Receiver<crate::watch::Message>,
    until: tokio::time::Instant,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(live, move |mut live| async move {
        loop {
            match tokio::time::timeout_at(until, live.recv()).await {
                Err(_) | Ok(Err(RecvError::Closed)) => return None,
                Ok(Err(RecvError::Lagged(n))) => {
                    let sse = SseEvent::default().event("lagged").data(format!(
                        "{n} events were skipped because this client reads slowly"
                    ));
                    return Some((Ok(sse), live));
                }
                Ok(Ok(m)) => {
                    let sse = if subject::is_goal_event(&m.subject) {
                        serde_json::from_slice::<GoalEvent>(&m.payload)
                            .ok()
                            .map(|e| goal_sse(&e))
                    } else {
                        serde_json::from_slice::<Event>(&m.payload)
                            .ok()
                            .map(|e| task_sse(&e))
                    };
                    if let Some(sse) = sse {
                        return Some((Ok(sse), live));
                    }
                }
            }
        }
    })
}
