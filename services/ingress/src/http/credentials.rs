//! Credential routes, write-only: `POST /v1/credentials` stores a sealed
//! value, `GET` lists metadata, `DELETE /v1/credentials/{id}` removes one.
//! No route returns a value; only the gateway decrypts, when it attaches a
//! credential to an outgoing request. Without a vault key every route
//! answers 503.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use store::NewCredential;

use super::{read_json, refuse, store_refusal, tenant, uuid_of, AppState};

/// Body of `POST /v1/credentials`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRequest {
    name: String,
    url_prefix: String,
    header: String,
    value: String,
}

/// The tenant, once the vault is known to be there.
fn ready(s: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    if !s.0.store.has_vault() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            store::Error::NoVault.to_string(),
        ));
    }
    tenant(s, headers)
}

pub(super) async fn put(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let tenant = match ready(&s, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let req: CredentialRequest = match read_json(body, "credential").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let new = NewCredential {
        tenant,
        name: req.name,
        url_prefix: req.url_prefix,
        header: req.header,
        value: req.value,
    };
    match s.0.store.put_credential(&new).await {
        Ok(c) => {
            tracing::info!(credential = %c.id, name = %c.name, url_prefix = %c.url_prefix, "credential stored");
            (StatusCode::CREATED, Json(c)).into_response()
        }
        Err(e) => store_refusal(e),
    }
}

pub(super) async fn list(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let tenant = match ready(&s, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match s.0.store.list_credentials(&tenant).await {
        Ok(list) => Json(serde_json::json!({ "credentials": list })).into_response(),
        Err(e) => store_refusal(e),
    }
}

pub(super) async fn remove(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let tenant = match ready(&s, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let id = match uuid_of(&raw, "a credential") {
        Ok(id) => id,
        Err(r) => return r,
    };
    match s.0.store.delete_credential(&tenant, id).await {
        Ok(()) => {
            tracing::info!(credential = %id, "credential deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_refusal(e),
    }
}
