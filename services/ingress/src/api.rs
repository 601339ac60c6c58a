//! The NATS API: a NATS service (the services protocol, so `nats micro
//! ls/info/stats colony` find it) answering a tenant's client by
//! request–reply, so that it never needs HTTP:
//!
//! - `colony.api.<tenant>.tasks.submit` — the body of `POST /v1/tasks` →
//!   a [`TaskAccepted`] (its id; `Idempotency-Key` header as over HTTP);
//! - `colony.api.<tenant>.goals.submit` — the body of `POST /v1/goals` →
//!   a [`GoalAccepted`];
//! - `colony.api.<tenant>.tasks.get` / `goals.get` — `{"id": …}` → the
//!   task or goal as `GET` shows it;
//! - `colony.api.<tenant>.tasks.cancel` — `{"id": …}` → the cancelled task.
//!
//! The client then follows its own `colony.results.<tenant>.…` and
//! `colony.events.<tenant>.…` subjects. The tenant is the subject's, and
//! NATS permissions let a tenant's user publish only under its own
//! `colony.api.<tenant>.>`; every call goes through the same admission
//! path, under a rate per tenant (the per-key rate of HTTP) and at most
//! [`PER_TENANT`] calls of a tenant at once. The answer goes only to the
//! caller's own inbox (`_INBOX_tenant-<tenant>.…`): a call naming any other
//! reply subject is not answered, so no tenant can make the ingress publish
//! where it likes (and the server's permissions allow the ingress no other
//! reply subjects). A refusal answers
//! `{"error": "<one sentence>"}` with the services protocol's
//! `Nats-Service-Error` and `Nats-Service-Error-Code` (the HTTP status)
//! headers. Only the admin user may ask the discovery subjects (`$SRV.…`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures_util::StreamExt;
use governor::DefaultKeyedRateLimiter;
use subjects::auth::{inbox_prefix, tenant_user};
use subjects::ops::ById;
use subjects::{subject, ApiError, TaskAccepted};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::http::{AppState, Refusal};
use crate::Error;

/// Calls answered at once; more are refused (503).
const CONCURRENCY: usize = 256;
/// Calls of one tenant answered at once; more are refused (429).
const PER_TENANT: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    SubmitTask,
    SubmitGoal,
    GetTask,
    GetGoal,
    CancelTask,
}

impl Call {
    const ALL: [Call; 5] = [
        Call::SubmitTask,
        Call::SubmitGoal,
        Call::GetTask,
        Call::GetGoal,
        Call::CancelTask,
    ];

    fn name(self) -> &'static str {
        match self {
            Call::SubmitTask => "submit-task",
            Call::SubmitGoal => "submit-goal",
            Call::GetTask => "get-task",
            Call::GetGoal => "get-goal",
            Call::CancelTask => "cancel-task",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Call::SubmitTask => subject::API_SUBMIT_TASK,
            Call::SubmitGoal => subject::API_SUBMIT_GOAL,
            Call::GetTask => subject::API_GET_TASK,
            Call::GetGoal => subject::API_GET_GOAL,
            Call::CancelTask => subject::API_CANCEL_TASK,
        }
    }
}

fn nats_err(what: &str) -> impl FnOnce(async_nats::Error) -> Error + '_ {
    move |source| Error::Nats {
        what: what.to_string(),
        source,
    }
}

/// What bounds the calls: a rate per tenant, the calls answered at once,
/// and each tenant's share of them.
struct Bounds {
    rate: DefaultKeyedRateLimiter<String>,
    slots: Arc<Semaphore>,
    in_flight: Mutex<HashMap<String, usize>>,
}

/// One tenant's call in flight; counted down when dropped.
struct InFlight<'a> {
    bounds: &'a Bounds,
    tenant: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = self
            .bounds
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

impl Bounds {
    /// A place for one more call of `tenant`, or why not.
    fn admit(&self, tenant: &str) -> Result<(InFlight<'_>, OwnedSemaphorePermit), Refusal> {
        if self.rate.check_key(&tenant.to_string()).is_err() {
            telemetry::get().limited("nats_tenant");
            return Err(Refusal::too_many(
                "too many calls for this tenant; slow down and retry",
                1,
            ));
        }
        {
            let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(tenant.to_string()).or_default();
            if *n >= PER_TENANT {
                return Err(Refusal::too_many(
                    format!("{PER_TENANT} calls of this tenant are in flight already; retry when one is answered"),
                    1,
                ));
            }
            *n += 1;
        }
        let guard = InFlight {
            bounds: self,
            tenant: tenant.to_string(),
        };
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::unavailable("the NATS API is busy; retry in a moment"))?;
        Ok((guard, permit))
    }
}

/// Answer the NATS API until `shutdown`.
pub async fn serve(state: AppState, shutdown: CancellationToken) -> Result<(), Error> {
    let service = state
        .nats()
        .service_builder()
        .description(
            "Colony: submit, read and cancel tasks and goals by request-reply on colony.api.<tenant>.*",
        )
        .start(subject::API_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(nats_err("starting the NATS API service"))?;
    let mut endpoints = futures_util::stream::SelectAll::new();
    for call in Call::ALL {
        let endpoint = service
            .endpoint_builder()
            .name(call.name())
            .add(subject::api_any(call.subject()))
            .await
            .map_err(nats_err("adding a NATS API endpoint"))?;
        endpoints.push(endpoint.map(move |req| (call, req)).boxed());
    }
    tracing::info!(
        subjects = %subject::api_any("…"),
        "NATS API listening"
    );
    let bounds = Arc::new(Bounds {
        rate: DefaultKeyedRateLimiter::keyed(state.config().limits.per_key.quota()),
        slots: Arc::new(Semaphore::new(CONCURRENCY)),
        in_flight: Mutex::new(HashMap::new()),
    });
    let ended = loop {
        let (call, req) = tokio::select! {
            _ = shutdown.cancelled() => break false,
            next = endpoints.next() => match next {
                Some(x) => x,
                None => break true,
            },
        };
        // Answer only on the caller's own inbox: the reply subject is the
        // caller's to choose, and the ingress's answer must not become a
        // message on any other subject.
        let Some(tenant) = subject::api_tenant(&req.message.subject).map(str::to_string) else {
            continue;
        };
        let inbox = format!("{}.", inbox_prefix(&tenant_user(&tenant)));
        if !req
            .message
            .reply
            .as_ref()
            .is_some_and(|r| r.as_str().starts_with(&inbox))
        {
            telemetry::get().api_call(call.name(), "bad_reply");
            tracing::debug!(%tenant, call = call.name(), "a NATS API call without the caller's inbox as its reply subject; not answered");
            continue;
        }
        let (state, bounds) = (state.clone(), bounds.clone());
        tokio::spawn(async move {
            let got = match bounds.admit(&tenant) {
                Ok(_held) => call_of(&state, call, &tenant, &req.message).await,
                Err(r) => Err(r),
            };
            answer(call, req, got).await;
        });
    };
    if let Err(e) = service.stop().await {
        tracing::debug!(error = %e, "stopping the NATS API service");
    }
    if ended {
        return Err(Error::ApiEnded);
    }
    Ok(())
}

async fn answer(call: Call, req: async_nats::service::Request, got: Result<Bytes, Refusal>) {
    let outcome = match &got {
        Ok(_) => "ok".to_string(),
        Err(r) => r.status.as_u16().to_string(),
    };
    telemetry::get().api_call(call.name(), &outcome);
    let sent = match got {
        Ok(body) => req.respond(Ok(body)).await,
        Err(r) => {
            let mut headers = async_nats::HeaderMap::new();
            // A header holds no line break: a refusal may quote the
            // caller's input.
            let line = r.error.replace(|c: char| c.is_control(), " ");
            headers.insert("Nats-Service-Error", line.as_str());
            headers.insert(
                "Nats-Service-Error-Code",
                r.status.as_u16().to_string().as_str(),
            );
            let body = serde_json::to_vec(&ApiError { error: r.error }).unwrap_or_default();
            req.respond_with_headers(Ok(body.into()), headers).await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, call = call.name(), "a NATS API answer was not sent");
    }
}

fn json(v: &impl serde::Serialize) -> Result<Bytes, Refusal> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|_| Refusal::unavailable("the answer could not be written; retry"))
}

async fn call_of(
    state: &AppState,
    call: Call,
    tenant: &str,
    msg: &async_nats::Message,
) -> Result<Bytes, Refusal> {
    // The key as over HTTP (any case), or as over the NATS intake.
    let key = msg.headers.as_ref().and_then(|h| {
        h.iter()
            .find(|(name, _)| {
                let name: &str = name.as_ref();
                name.eq_ignore_ascii_case("idempotency-key")
                    || name.eq_ignore_ascii_case(subjects::header::MSG_ID)
            })
            .and_then(|(_, values)| values.first())
            .map(|v| v.as_str().to_string())
    });
    let by_id = || {
        serde_json::from_slice::<ById>(&msg.payload)
            .map(|b| b.id)
            .map_err(|_| Refusal::bad("the body must be {\"id\": \"<uuid>\"}"))
    };
    match call {
        Call::SubmitTask => {
            let accepted: TaskAccepted = state.admit_task(tenant, &msg.payload, key).await?;
            json(&accepted)
        }
        Call::SubmitGoal => json(&state.admit_goal(tenant, &msg.payload, key).await?),
        Call::GetTask => json(&state.task_view(tenant, by_id()?).await?),
        Call::GetGoal => json(&state.goal_view(tenant, by_id()?).await?),
        Call::CancelTask => json(&state.cancel_task(tenant, by_id()?).await?),
    }
}
