//! API keys of the caller's tenant: `POST /v1/keys` makes one (its secret
//! is in this one answer), `GET /v1/keys` lists them, `DELETE
//! /v1/keys/{id}` revokes one. Admin keys only; operator keys are made
//! with `colony keys operator`, never here.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::{ApiKey, Scope};

use super::{read_json, uuid_of, AppState, Caller, Refusal};

#[derive(schemars::JsonSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyRequest {
    name: String,
    scope: String,
}

/// The answer to a create: the key and its secret, shown this once.
#[derive(schemars::JsonSchema, Serialize)]
pub(super) struct CreatedView<'a> {
    #[serde(flatten)]
    key: &'a ApiKey,
    secret: &'a str,
}

pub(super) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, Refusal> {
    let req: KeyRequest = read_json(body, "key request").await?;
    let scope = match Scope::parse(&req.scope) {
        Some(Scope::Operator) => {
            return Err(Refusal::forbidden(
                "operator keys are made only with colony keys operator on the host; ask for read, submit or admin",
            ))
        }
        Some(scope) => scope,
        None => {
            return Err(Refusal::bad(format!(
                "scope must be read, submit or admin, not {:?}",
                req.scope
            )))
        }
    };
    let created =
        s.0.store
            .create_key(&caller.tenant, &req.name, scope)
            .await?;
    tracing::info!(key = %created.key.id, prefix = %created.key.prefix, tenant = %created.key.tenant, scope = %scope, by = %caller.key_id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedView {
            key: &created.key,
            secret: &created.secret,
        }),
    )
        .into_response())
}

pub(super) async fn list(State(s): State<AppState>, caller: Caller) -> Result<Response, Refusal> {
    let keys = s.0.store.list_keys(&caller.tenant).await?;
    Ok(Json(serde_json::json!({ "keys": keys })).into_response())
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let id = uuid_of(&raw, "a key")?;
    let key = s.0.store.revoke_key(&caller.tenant, id).await?;
    s.0.gate.forget(id);
    tracing::info!(key = %id, tenant = %key.tenant, by = %caller.key_id, "API key revoked");
    Ok(Json(key).into_response())
}
