//! The HTTP API.
//!
//! Every route but `/healthz` needs an API key (`Authorization: Bearer
//! <key>`); what each route needs is one table, [`auth::access`], and the
//! tenant comes from the key ([`auth`]). Every query is filtered by that
//! tenant: another tenant's resource is a 404 like a missing one.
//!
//! - `POST /v1/tasks` → 202 `{id, state, created}`; `Idempotency-Key` makes a
//!   retry return the same task.
//! - `GET /v1/tasks/{id}` → the task; `?wait=<secs>` holds the answer until
//!   the task is final or the time is up (the answer always comes from
//!   Postgres; a result message only wakes the wait).
//! - `GET /v1/tasks/{id}/events` → its events as server-sent events, live,
//!   ending with the final state.
//! - `POST /v1/tasks/{id}/cancel` → cancels a task that is not final.
//! - `GET /` → the dashboard ([`ui`]); `GET /v1/whoami`, `/v1/overview`,
//!   `/v1/streams`, `/v1/tasks` (search) and `/v1/feed` ([`ops`]).
//! - `GET /healthz` → 200 `{"status":"ok"}` when Postgres and NATS answer,
//!   else 503 `{"status":"unavailable"}` (the cause goes to the log only).
//! - Goals, the leaderboard and score adjustments ([`goals`]); webhooks
//!   for notifications ([`webhooks`]); schedules ([`schedules`]); dead
//!   letters to browse, replay and discard ([`dlq`]).
//! - Employees ([`employees`]), the audit trail ([`audit`]), credentials
//!   ([`credentials`]), API keys ([`keys`]), and `GET /v1/workers` and
//!   `GET /metrics` (operator keys only).
//!
//! Every refusal is a JSON `{"error": "<one sentence>"}` ([`Refusal`]).

mod audit;
pub mod auth;
mod credentials;
mod dlq;
mod employees;
pub mod error;
mod goals;
mod keys;
mod openapi;
mod ops;
mod schedules;
mod ui;
mod webhooks;

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
use subjects::{stream, subject, Event, EventBody, TaskAccepted, TaskView};
use uuid::Uuid;

pub use auth::Caller;
pub use error::Refusal;

use crate::Config;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    js: jetstream::Context,
    relay: Relay,
    gate: Arc<auth::Gate>,
    watchers: crate::watch::Watchers,
    collector: crate::metrics::Collector,
    overviews: ops::Overviews,
}

impl AppState {
    pub fn new(cfg: Config, store: Store, nats: async_nats::Client, relay: Relay) -> AppState {
        let js = jetstream::new(nats.clone());
        let gate = Arc::new(auth::Gate::new(
            store.clone(),
            cfg.default_tenant.clone(),
            cfg.limits,
        ));
        AppState(Arc::new(Inner {
            collector: crate::metrics::Collector::new(store.clone(), js.clone(), cfg.metrics_ttl),
            overviews: ops::Overviews::default(),
            cfg,
            store,
            watchers: crate::watch::Watchers::new(nats.clone()),
            nats,
            js,
            relay,
            gate,
        }))
    }

    pub fn gate(&self) -> Arc<auth::Gate> {
        self.0.gate.clone()
    }

    /// Admit a task submission of `tenant` (the body of `POST /v1/tasks`)
    /// through the one admission path, and send its outbox on.
    pub async fn admit_task(
        &self,
        tenant: &str,
        bytes: &[u8],
        key: Option<String>,
    ) -> Result<TaskAccepted, Refusal> {
        let rules = &self.0.cfg.rules;
        let new = rules.check(bytes, tenant, key)?;
        let c = admission::admit(&self.0.store, rules, new, None).await?;
        self.0.relay.send(c.outbox);
        Ok(TaskAccepted {
            id: c.task.id,
            state: c.task.state,
            created: c.created,
        })
    }

    /// Admit a goal of `tenant` (the body of `POST /v1/goals`).
    pub async fn admit_goal(
        &self,
        tenant: &str,
        bytes: &[u8],
        key: Option<String>,
    ) -> Result<subjects::goals::GoalAccepted, Refusal> {
        let new = self.0.cfg.rules.check_goal(bytes, tenant, key)?;
        let created = self.0.store.create_goal(&new).await.map_err(|e| match e {
            store::Error::Invalid(r) => Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, r),
            e => e.into(),
        })?;
        self.0.relay.send(created.outbox);
        Ok(subjects::goals::GoalAccepted {
            id: created.goal.id,
            state: created.goal.state,
            created: created.created,
        })
    }

    /// The tenant's task, or a 404.
    pub async fn task_view(&self, tenant: &str, id: Uuid) -> Result<TaskView, Refusal> {
        self.0
            .store
            .task_of(tenant, id)
            .await?
            .map(|t| t.view)
            .ok_or_else(|| no_task(id))
    }

    /// The tenant's goal, or a 404.
    pub async fn goal_view(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<subjects::goals::GoalView, Refusal> {
        self.0
            .store
            .goal_view(tenant, id)
            .await?
            .ok_or_else(|| goals::no_goal(id))
    }

    /// Cancel the tenant's task, and tell the worker running it to stop.
    pub async fn cancel_task(&self, tenant: &str, id: Uuid) -> Result<TaskView, Refusal> {
        let (task, outbox, worker) = self
            .0
            .store
            .cancel(tenant, id, "cancelled on request")
            .await?;
        self.0.relay.send(outbox);
        // Core NATS: if this is lost, the run finishes and its result is
        // dropped by the guarded transition (the task is cancelled). A
        // worker checks the task in Postgres before it stops anything.
        let target = match &worker {
            Some(w) => subject::ctl(w, subject::CTL_CANCEL),
            None => subject::ctl_broadcast(subject::CTL_CANCEL),
        };
        let _ = self.0.nats.publish(target, id.to_string().into()).await;
        Ok(task)
    }

    pub(crate) fn nats(&self) -> &async_nats::Client {
        &self.0.nats
    }

    pub(crate) fn config(&self) -> &Config {
        &self.0.cfg
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/whoami", get(ops::whoami))
        .route("/v1/overview", get(ops::overview))
        .route("/v1/streams", get(ops::streams))
        .route("/v1/feed", get(ops::feed))
        .route("/v1/tasks", post(submit).get(ops::search))
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
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", delete(keys::revoke))
        .route("/v1/workers", get(workers))
        .route("/metrics", get(metrics))
        .route("/v1/goals", post(goals::submit).get(goals::list))
        .route("/v1/goals/{id}", get(goals::get_one))
        .route("/v1/goals/{id}/events", get(goals::events))
        .route("/v1/goals/{id}/pause", post(goal_pause))
        .route("/v1/goals/{id}/resume", post(goal_resume))
        .route("/v1/goals/{id}/approve", post(goal_approve))
        .route("/v1/goals/{id}/cancel", post(goal_cancel))
        .route("/v1/goals/{id}/replan", post(goal_replan))
        .route("/v1/goals/{id}/decide", post(goal_decide))
        .route("/v1/leaderboard", get(goals::leaderboard))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", delete(webhooks::remove))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/employees/{id}/score", post(goals::adjust_score))
        .route(
            "/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/v1/schedules/{id}",
            get(schedules::get_one)
                .patch(schedules::patch)
                .delete(schedules::remove),
        )
        .route("/v1/schedules/{id}/pause", post(schedules::pause))
        .route("/v1/schedules/{id}/resume", post(schedules::resume))
        .route("/v1/schedules/{id}/trigger", post(schedules::trigger))
        .route("/v1/schedules/{id}/backfill", post(schedules::backfill))
        .route("/v1/schedules/{id}/fires", get(schedules::fires))
        .route("/v1/dlq", get(dlq::list))
        .route("/v1/dlq/replay", post(dlq::replay_all))
        .route("/v1/dlq/discard", post(dlq::discard_all))
        .route("/v1/dlq/{id}/replay", post(dlq::replay))
        .route("/v1/dlq/{id}/discard", post(dlq::discard))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .route_layer(axum::middleware::from_fn(track))
        .fallback(|| async { Refusal::not_found("no such endpoint; see the README for the API") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::limit_peers,
        ))
        .with_state(state)
}

/// The handlers of `POST /v1/goals/{id}/<act>`.
macro_rules! goal_acts {
    ($($name:ident => $act:ident),* $(,)?) => {$(
        async fn $name(
            State(s): State<AppState>,
            caller: Caller,
            Path(raw): Path<String>,
            body: Body,
        ) -> Result<Json<subjects::goals::GoalView>, Refusal> {
            goals::act(s, caller, raw, goals::Act::$act, body).await
        }
    )*};
}

goal_acts! {
    goal_pause => Pause,
    goal_resume => Resume,
    goal_approve => Approve,
    goal_cancel => Cancel,
    goal_replan => Replan,
    goal_decide => Decide,
}

/// Largest JSON body of the employee, credential and key routes.
const MAX_JSON_BYTES: usize = 64 * 1024;

/// Read a small JSON body as `T`; `what` names it in the refusal.
async fn read_json<T: DeserializeOwned>(body: Body, what: &str) -> Result<T, Refusal> {
    let bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
        .await
        .map_err(|_| {
            Refusal::new(
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
        Refusal::bad(format!("the {what} {how}: {e}"))
    })
}

/// 503 unless the vault key is set (credentials and webhook secrets are
/// sealed with it).
fn vault_ready(s: &AppState) -> Result<(), Refusal> {
    if s.0.store.has_vault() {
        Ok(())
    } else {
        Err(store::Error::NoVault.into())
    }
}

/// A path segment that must be a UUID; `what` names it in the refusal.
fn uuid_of(raw: &str, what: &str) -> Result<Uuid, Refusal> {
    Uuid::parse_str(raw).map_err(|_| Refusal::bad(format!("{raw:?} is not {what} id (a UUID)")))
}

fn no_task(id: Uuid) -> Refusal {
    Refusal::not_found(format!("task {id} does not exist"))
}

/// The process's metrics and the fleet's, in the OpenMetrics text format
/// (operator keys).
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        s.0.collector.scrape().await,
    )
        .into_response()
}

/// Count every routed request by its route's pattern, method and status.
async fn track(
    path: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().as_str().to_string();
    let route = path.as_str().to_string();
    let resp = next.run(req).await;
    let http = &telemetry::get().http;
    http.requests
        .get_or_create(&telemetry::HttpLabels {
            route: route.clone(),
            method: method.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    http.duration
        .get_or_create(&telemetry::RouteLabels { route, method })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// `ok` or not: the cause of a failure goes to the log, never to the
/// caller.
async fn healthz(State(s): State<AppState>) -> Response {
    let nats_ok = s.0.nats.connection_state() == async_nats::connection::State::Connected;
    let db = s.0.store.ping().await;
    if let Err(e) = &db {
        tracing::warn!(error = %e, "health: Postgres does not answer");
    }
    if !nats_ok {
        tracing::warn!("health: NATS is not connected");
    }
    if db.is_ok() && nats_ok {
        (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable"})),
        )
            .into_response()
    }
}

/// A submission's body, up to the rules' limit ("too large" told apart
/// by reading one byte past it).
async fn submission_bytes(rules: &crate::Rules, body: Body) -> Result<bytes::Bytes, Refusal> {
    axum::body::to_bytes(body, rules.max_body_bytes + 1)
        .await
        .map_err(|_| {
            rules
                .too_large(rules.max_body_bytes + 1)
                .map(Refusal::from)
                .unwrap_or_else(|| Refusal::bad("the request body could not be read"))
        })
}

fn header_str(h: &HeaderMap, name: &str) -> Result<Option<String>, Refusal> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| Refusal::bad(format!("the {name} header must be visible ASCII"))),
    }
}

async fn submit(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let bytes = submission_bytes(&s.0.cfg.rules, body).await?;
    let key = header_str(&headers, "idempotency-key")?;
    let accepted = s.admit_task(&caller.tenant, &bytes, key).await?;
    let status = if accepted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(accepted)).into_response())
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<f64>,
}

async fn get_task(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<TaskView>, Refusal> {
    let id = uuid_of(&raw, "a task")?;
    let wait = match q {
        Ok(Query(q)) => q.wait.unwrap_or(0.0),
        Err(_) => return Err(Refusal::bad("wait must be a number of seconds")),
    };
    if !(0.0..=s.0.cfg.max_wait.as_secs_f64()).contains(&wait) {
        return Err(Refusal::bad(format!(
            "wait must be between 0 and {} seconds",
            s.0.cfg.max_wait.as_secs()
        )));
    }
    // Subscribe before reading so that a result published in between is not
    // missed. The message only wakes the wait: what is answered is read
    // from Postgres, so a forged result changes nothing.
    let mut sub = if wait > 0.0 {
        s.0.nats
            .subscribe(subject::result(&caller.tenant, id))
            .await
            .ok()
    } else {
        None
    };
    let view =
        s.0.store
            .task_of(&caller.tenant, id)
            .await?
            .ok_or_else(|| no_task(id))?
            .view;
    let Some(sub) = sub.as_mut().filter(|_| !view.state.is_final()) else {
        return Ok(Json(view));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, sub.next()).await {
        let t =
            s.0.store
                .task_of(&caller.tenant, id)
                .await?
                .ok_or_else(|| no_task(id))?;
        if t.view.state.is_final() {
            return Ok(Json(t.view));
        }
    }
    let t =
        s.0.store
            .task_of(&caller.tenant, id)
            .await?
            .ok_or_else(|| no_task(id))?;
    Ok(Json(t.view))
}

async fn cancel(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<TaskView>, Refusal> {
    let id = uuid_of(&raw, "a task")?;
    Ok(Json(s.cancel_task(&caller.tenant, id).await?))
}

/// Every live worker's status (runs in flight, pool metrics), from the
/// worker registry; a worker that stopped reporting drops out by itself.
/// Operator keys only: it spans tenants.
async fn workers(
    State(s): State<AppState>,
) -> Result<Json<Vec<subjects::status::WorkerStatus>>, Refusal> {
    let unavailable = |e: String| {
        tracing::warn!(error = %e, "worker registry");
        Refusal::unavailable("the worker registry is unavailable; retry in a few seconds")
    };
    let kv = match s.0.js.get_key_value(subjects::kv::WORKERS).await {
        Ok(kv) => kv,
        // No worker has started yet.
        Err(_) => return Ok(Json(Vec::new())),
    };
    let mut keys = kv.keys().await.map_err(|e| unavailable(e.to_string()))?;
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
            Err(e) => return Err(unavailable(e.to_string())),
        }
    }
    out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    Ok(Json(out))
}

async fn events(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let id = uuid_of(&raw, "a task")?;
    s.0.store
        .task_of(&caller.tenant, id)
        .await?
        .ok_or_else(|| no_task(id))?;
    let unavailable = |e: String| {
        tracing::warn!(task = %id, error = %e, "event stream");
        Refusal::unavailable("the event stream is unavailable; retry in a few seconds")
    };
    let consumer =
        s.0.js
            .get_stream(stream::EVENTS)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject::events_of_task(&caller.tenant, id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(Sse::new(feed(s.clone(), caller.tenant, id, messages))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Events of one task until its final state (or until the task is found
/// final in Postgres, for a task whose events have aged out of the stream).
fn feed(
    s: AppState,
    tenant: String,
    id: Uuid,
    messages: jetstream::consumer::pull::Ordered,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(
        (s, tenant, messages, false),
        move |(s, tenant, mut messages, ended)| async move {
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
                        return Some((Ok(sse), (s, tenant, messages, last)));
                    }
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "event feed error");
                        continue;
                    }
                    Ok(None) => return None,
                    Err(_) => {
                        if let Ok(Some(t)) = s.0.store.task_of(&tenant, id).await {
                            if t.view.state.is_final() {
                                let sse = SseEvent::default()
                                    .event("end")
                                    .json_data(&t.view)
                                    .unwrap_or_else(|_| SseEvent::default());
                                return Some((Ok(sse), (s, tenant, messages, true)));
                            }
                        }
                    }
                }
            }
        },
    )
}
