//! Webhook routes (admin keys): `POST /v1/webhooks {url, kinds?}` → 201
//! with the signing secret (shown once), `GET /v1/webhooks`, `DELETE
//! /v1/webhooks/{id}`, and `GET /v1/webhooks/{id}/deliveries` (every
//! attempt, newest first). A URL whose host is (or resolves to) a loopback,
//! private, link-local or metadata address is refused, as agent egress is,
//! unless the operator opened its range. Without a vault key every route
//! answers 503 (the secrets are sealed with it).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{read_json, uuid_of, vault_ready as ready, AppState, Caller, Refusal};

#[derive(schemars::JsonSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookRequest {
    url: String,
    #[serde(default)]
    kinds: Vec<String>,
}

pub(super) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, Refusal> {
    ready(&s)?;
    let req: WebhookRequest = read_json(body, "webhook").await?;
    notifier::check_url(&s.0.cfg.webhook_addresses, &req.url)
        .await
        .map_err(|why| Refusal::bad(format!("webhook URL refused: {why}")))?;
    let created =
        s.0.store
            .create_webhook(&caller.tenant, &req.url, &req.kinds)
            .await?;
    tracing::info!(webhook = %created.webhook.id, url = %created.webhook.url, "webhook created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub(super) async fn list(State(s): State<AppState>, caller: Caller) -> Result<Response, Refusal> {
    ready(&s)?;
    let list = s.0.store.list_webhooks(&caller.tenant).await?;
    Ok(Json(serde_json::json!({ "webhooks": list })).into_response())
}

pub(super) async fn remove(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    ready(&s)?;
    let id = uuid_of(&raw, "a webhook")?;
    s.0.store.delete_webhook(&caller.tenant, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn deliveries(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    ready(&s)?;
    let id = uuid_of(&raw, "a webhook")?;
    let list =
        s.0.store
            .deliveries(&caller.tenant, id, 500)
            .await?
            .ok_or_else(|| Refusal::not_found(format!("webhook {id} does not exist")))?;
    Ok(Json(serde_json::json!({ "deliveries": list })).into_response())
}
