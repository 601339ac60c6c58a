//! The HTTP API.
//!
//! - `POST /v1/tasks` → 202 `{id, state, created}`; `Idempotency-Key` makes a
//!   retry return the same task; `X-Colony-Tenant` picks the tenant.
//! - `GET /v1/tasks/{id}` → the task; `?wait=<secs>` holds the answer until
//!   the task is final or the time is up.
//! - `GET /v1/tasks/{id}/events` → its events as server-sent events, live,
//!   ending with the final state.
//! - `POST /v1/tasks/{id}/cancel` → cancels a task that is not final.
//! - `GET /healthz` → 200 when Postgres and NATS answer.
//! - Employees ([`employees`]): `POST /v1/employees` hires, `GET
//!   /v1/employees[/{id}]` reads, `POST /v1/employees/{id}/pause|resume`,
//!   `DELETE /v1/employees/{id}` offboards.
//! - `GET /v1/audit` ([`audit`]): the audit trail, filtered.
//! - Credentials ([`credentials`]): `POST|GET /v1/credentials`, `DELETE
//!   /v1/credentials/{id}`; write-only.
//!
//! Every refusal is a JSON `{"error": "<one sentence>"}`.

// A refusal is the `Response` itself, built at most once per request.
#![allow(clippy::result_large_err)]

mod audit;
mod credentials;
mod employees;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use relay::Relay;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use store::Store;
use subjects::{stream, subject, ApiError, Event, EventBody, TaskAccepted, TaskView};
use uuid::Uuid;

use crate::validate::{EmployeeRefusal, Rejection};
use crate::Config;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    js: jetstream::Context,
    relay: Relay,
}

impl AppState {
    pub fn new(cfg: Config, store: Store, nats: async_nats::Client, relay: Relay) -> AppState {
        let js = jetstream::new(nats.clone());
        AppState(Arc::new(Inner {
            cfg,
            store,
            nats,
            js,
            relay,
        }))
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/tasks", post(submit))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/events", get(events))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/employees", post(employees::hire).get(employees::list))
        .route(
            "/v1/employees/{id}",
            get(employees::get_one).delete(employees::offboard),
        )
        .route("/v1/employees/{id}/memory", get(employees::memory))
        .route("/v1/employees/{id}/pause", post(employees::pause))
        .route("/v1/employees/{id}/resume", post(employees::resume))
        .route("/v1/audit", get(audit::query))
        .route(
            "/v1/credentials",
            post(credentials::put).get(credentials::list),
        )
        .route("/v1/credentials/{id}", delete(credentials::remove))
        .route("/v1/workers", get(workers))
        .fallback(|| async {
            refuse(
                StatusCode::NOT_FOUND,
                "no such endpoint; see the README for the API".into(),
            )
        })
        .with_state(state)
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, Json(ApiError { error })).into_response()
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        refuse(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST),
            self.reason,
        )
    }
}

fn store_error(e: store::Error) -> Response {
    match e {
        store::Error::NotFound(id) => {
            refuse(StatusCode::NOT_FOUND, format!("task {id} does not exist"))
        }
        store::Error::Conflict(r) => refuse(StatusCode::CONFLICT, r),
        store::Error::Illegal(i) => {
            refuse(StatusCode::CONFLICT, format!("the task is {}; {i}", i.from))
        }
        other => {
            tracing::error!(error = %other, "database error");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; retry in a few seconds".into(),
            )
        }
    }
}

/// A store error on the employee, audit and credential routes: what the
/// caller named is missing (404), conflicts (409) or is out of bounds (400);
/// anything else is the database's fault (503).
fn store_refusal(e: store::Error) -> Response {
    match e {
        store::Error::Missing(r) => refuse(StatusCode::NOT_FOUND, r),
        store::Error::Conflict(r) => refuse(StatusCode::CONFLICT, r),
        store::Error::Invalid(r) => refuse(StatusCode::BAD_REQUEST, r),
        store::Error::NoVault => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => store_error(other),
    }
}

/// The tenant a request acts for: `X-Colony-Tenant`, else the default.
fn tenant(s: &AppState, h: &HeaderMap) -> Result<String, Response> {
    let t = header_str(h, "x-colony-tenant")?.unwrap_or_else(|| s.0.cfg.default_tenant.clone());
    if subjects::is_token(&t) {
        Ok(t)
    } else {
        Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("tenant {t:?} is not valid; use 1-64 letters, digits, '-' or '_'"),
        ))
    }
}

/// Largest JSON body of the employee and credential routes.
const MAX_JSON_BYTES: usize = 64 * 1024;

/// Read a small JSON body as `T`; `what` names it in the refusal.
async fn read_json<T: DeserializeOwned>(body: Body, what: &str) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the {what} is over the {MAX_JSON_BYTES}-byte limit"),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let how = if e.is_syntax() || e.is_eof() {
            "is not valid JSON"
        } else {
            "is not valid"
        };
        refuse(StatusCode::BAD_REQUEST, format!("the {what} {how}: {e}"))
    })
}

/// A path segment that must be a UUID; `what` names it in the refusal.
fn uuid_of(raw: &str, what: &str) -> Result<Uuid, Response> {
    Uuid::parse_str(raw).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("{raw:?} is not {what} id (a UUID)"),
        )
    })
}

fn task_id(raw: &str) -> Result<Uuid, Response> {
    Uuid::parse_str(raw).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("{raw:?} is not a task id (a UUID)"),
        )
    })
}

async fn healthz(State(s): State<AppState>) -> Response {
    let nats_ok = s.0.nats.connection_state() == async_nats::connection::State::Connected;
    match s.0.store.ping().await {
        Ok(()) if nats_ok => {
            (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
        }
        Ok(()) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "NATS is not connected".into(),
        ),
        Err(e) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Postgres does not answer: {e}"),
        ),
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Result<Option<String>, Response> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("the {name} header must be visible ASCII"),
            )
        }),
    }
}

async fn submit(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let rules = &s.0.cfg.rules;
    // Read one byte past the limit so that "too large" is told apart.
    let bytes = match axum::body::to_bytes(body, rules.max_body_bytes + 1).await {
        Ok(b) => b,
        Err(_) => {
            return rules
                .too_large(rules.max_body_bytes + 1)
                .map(IntoResponse::into_response)
                .unwrap_or_else(|| {
                    refuse(
                        StatusCode::BAD_REQUEST,
                        "the request body could not be read".into(),
                    )
                })
        }
    };
    let (key, tenant) = match (
        header_str(&headers, "idempotency-key"),
        header_str(&headers, "x-colony-tenant"),
    ) {
        (Ok(k), Ok(t)) => (k, t.unwrap_or_else(|| s.0.cfg.default_tenant.clone())),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let new = match rules.check(&bytes, &tenant, key) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    match crate::validate::check_employee(&s.0.store, &new).await {
        Ok(()) => {}
        Err(EmployeeRefusal::Refused(r)) => return r.into_response(),
        Err(EmployeeRefusal::Store(e)) => return store_error(e),
    }
    match s.0.store.create_task(&new).await {
        Ok(c) => {
            s.0.relay.send(c.outbox);
            let status = if c.created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (
                status,
                Json(TaskAccepted {
                    id: c.task.id,
                    state: c.task.state,
                    created: c.created,
                }),
            )
                .into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<f64>,
}

async fn get_task(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let id = match task_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let wait = match q {
        Ok(Query(q)) => q.wait.unwrap_or(0.0),
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "wait must be a number of seconds".into(),
            )
        }
    };
    if !(0.0..=s.0.cfg.max_wait.as_secs_f64()).contains(&wait) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "wait must be between 0 and {} seconds",
                s.0.cfg.max_wait.as_secs()
            ),
        );
    }
    // Subscribe before reading so that a result published in between is not missed.
    let mut sub = if wait > 0.0 {
        s.0.nats.subscribe(subject::result(id)).await.ok()
    } else {
        None
    };
    let view = match s.0.store.get_task(id).await {
        Ok(Some(t)) => t.view,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, format!("task {id} does not exist")),
        Err(e) => return store_error(e),
    };
    if view.state.is_final() || sub.is_none() {
        return Json(view).into_response();
    }
    if let Some(sub) = sub.as_mut() {
        let deadline = Duration::from_secs_f64(wait);
        if let Ok(Some(msg)) = tokio::time::timeout(deadline, sub.next()).await {
            if let Ok(v) = serde_json::from_slice::<TaskView>(&msg.payload) {
                return Json(v).into_response();
            }
        }
    }
    match s.0.store.get_task(id).await {
        Ok(Some(t)) => Json(t.view).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, format!("task {id} does not exist")),
        Err(e) => store_error(e),
    }
}

async fn cancel(State(s): State<AppState>, Path(raw): Path<String>) -> Response {
    let id = match task_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match s.0.store.cancel(id, "cancelled on request").await {
        Ok((task, outbox, worker)) => {
            s.0.relay.send(outbox);
            // Core NATS: if this is lost, the run finishes and its result is
            // dropped by the guarded transition (the task is cancelled).
            let target = match &worker {
                Some(w) => subject::ctl(w, subject::CTL_CANCEL),
                None => subject::ctl_broadcast(subject::CTL_CANCEL),
            };
            let _ = s.0.nats.publish(target, id.to_string().into()).await;
            Json(task).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// Every live worker's status (runs in flight, pool metrics), from the
/// worker registry; a worker that stopped reporting drops out by itself.
async fn workers(State(s): State<AppState>) -> Response {
    let unavailable = |e: String| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the worker registry is unavailable: {e}"),
        )
    };
    let kv = match s.0.js.get_key_value(subjects::kv::WORKERS).await {
        Ok(kv) => kv,
        // No worker has started yet.
        Err(_) => return Json(Vec::<subjects::status::WorkerStatus>::new()).into_response(),
    };
    let mut keys = match kv.keys().await {
        Ok(k) => k,
        Err(e) => return unavailable(e.to_string()),
    };
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        match kv.get(&key).await {
            Ok(Some(v)) => {
                if let Ok(status) = serde_json::from_slice::<subjects::status::WorkerStatus>(&v) {
                    out.push(status);
                }
            }
            Ok(None) => {}
            Err(e) => return unavailable(e.to_string()),
        }
    }
    out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    Json(out).into_response()
}

async fn events(State(s): State<AppState>, Path(raw): Path<String>) -> Response {
    let id = match task_id(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match s.0.store.get_task(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return refuse(StatusCode::NOT_FOUND, format!("task {id} does not exist")),
        Err(e) => return store_error(e),
    }
    let consumer = async {
        s.0.js
            .get_stream(stream::EVENTS)
            .await
            .map_err(|e| e.to_string())?
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject::events_of_task(id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    };
    let messages = match consumer.await {
        Ok(c) => match c.messages().await {
            Ok(m) => m,
            Err(e) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the event stream is unavailable: {e}"),
                )
            }
        },
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the event stream is unavailable: {e}"),
            )
        }
    };
    Sse::new(feed(s.clone(), id, messages))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Events of one task until its final state (or until the task is found
/// final in Postgres, for a task whose events have aged out of the stream).
fn feed(
    s: AppState,
    id: Uuid,
    messages: jetstream::consumer::pull::Ordered,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(
        (s, messages, false),
        move |(s, mut messages, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                    Ok(Some(Ok(msg))) => {
                        let Ok(ev) = serde_json::from_slice::<Event>(&msg.payload) else {
                            continue;
                        };
                        let last = matches!(ev.body, EventBody::State { to, .. } if to.is_final());
                        let sse = SseEvent::default()
                            .event(ev.body.kind())
                            .json_data(&ev)
                            .unwrap_or_else(|_| SseEvent::default());
                        return Some((Ok(sse), (s, messages, last)));
                    }
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "event feed error");
                        continue;
                    }
                    Ok(None) => return None,
                    Err(_) => {
                        if let Ok(Some(t)) = s.0.store.get_task(id).await {
                            if t.view.state.is_final() {
                                let sse = SseEvent::default()
                                    .event("end")
                                    .json_data(&t.view)
                                    .unwrap_or_else(|_| SseEvent::default());
                                return Some((Ok(sse), (s, messages, true)));
                            }
                        }
                    }
                }
            }
        },
    )
}
