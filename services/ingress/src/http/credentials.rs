//! Credential routes, write-only: `POST /v1/credentials` stores a sealed
//! value, `GET` lists metadata, `DELETE /v1/credentials/{id}` removes one.
//! No route returns a value; only the gateway decrypts, when it attaches a
//! credential to an outgoing request. Without a vault key every route
//! answers 503.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use store::NewCredential;

use super::{read_json, uuid_of, vault_ready as ready, AppState, Caller, Refusal};

#[derive(schemars::JsonSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialRequest {
    name: String,
    url_prefix: String,
    header: String,
    value: String,
}

pub(super) async fn put(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, Refusal> {
    ready(&s)?;
    let req: CredentialRequest = read_json(body, "credential").await?;
    let new = NewCredential {
        tenant: caller.tenant,
        name: req.name,
        url_prefix: req.url_prefix,
        header: req.header,
        value: req.value,
    };
    let c = s.0.store.put_credential(&new).await?;
    tracing::info!(credential = %c.id, name = %c.name, url_prefix = %c.url_prefix, "credential stored");
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

pub(super) async fn list(State(s): State<AppState>, caller: Caller) -> Result<Response, Refusal> {
    ready(&s)?;
    let list = s.0.store.list_credentials(&caller.tenant).await?;
    Ok(Json(serde_json::json!({ "credentials": list })).into_response())
}

pub(super) async fn remove(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    ready(&s)?;
    let id = uuid_of(&raw, "a credential")?;
    s.0.store.delete_credential(&caller.tenant, id).await?;
    tracing::info!(credential = %id, "credential deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
