//! Employee routes: hire, list, read, pause, resume and offboard.
//!
//! Every route acts within the request's tenant; an employee of another
//! tenant does not exist for it. Offboarding keeps the employee's row and
//! history and tells every worker, over core NATS, to remove its containers.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use roles::{Quotas, Roles, SHELL};
use serde::{Deserialize, Serialize};
use store::{Employee, EmployeeState, NewEmployee, UsageTotals};
use subjects::subject;
use uuid::Uuid;

use super::{read_json, refuse, store_refusal, tenant, uuid_of, AppState};

/// Body of `POST /v1/employees`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HireRequest {
    name: String,
    role: String,
    /// Overrides of the role's quotas, field by field.
    #[serde(default)]
    quotas: Quotas,
}

/// The answer to a hire: the employee and its token, shown this once.
#[derive(Serialize)]
struct HiredView<'a> {
    #[serde(flatten)]
    employee: &'a Employee,
    token: &'a str,
}

/// `GET /v1/employees/{id}`: the employee, the quotas it works under, and
/// what it has used.
#[derive(Serialize)]
struct EmployeeView<'a> {
    #[serde(flatten)]
    employee: &'a Employee,
    /// The role's quotas with the employee's overrides (absent when the
    /// role's template is no longer loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_quotas: Option<Quotas>,
    usage: UsageTotals,
}

fn hireable(roles: &Roles) -> String {
    if roles.is_empty() {
        "no role templates are loaded (see COLONY_ROLES_DIR)".to_string()
    } else {
        format!(
            "roles that can be hired: {}",
            roles.names().collect::<Vec<_>>().join(", ")
        )
    }
}

fn check_hire(roles: &Roles, req: &HireRequest) -> Result<(), Response> {
    if !subjects::is_token(&req.name) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "employee name {:?} is not valid; use 1-64 letters, digits, '-' or '_'",
                req.name
            ),
        ));
    }
    if req.role == SHELL {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "role shell is built in and runs commands without a model, so it has no employees; {}",
                hireable(roles)
            ),
        ));
    }
    if roles.get(&req.role).is_none() {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("unknown role {:?}; {}", req.role, hireable(roles)),
        ));
    }
    if let Some((field, reason)) = req.quotas.problems().into_iter().next() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("quotas.{field} {reason}; leave it out for the role's quota"),
        ));
    }
    Ok(())
}

pub(super) async fn hire(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let tenant = match tenant(&s, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let req: HireRequest = match read_json(body, "hire request").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = check_hire(&s.0.cfg.roles, &req) {
        return r;
    }
    let new = NewEmployee {
        tenant,
        name: req.name,
        role: req.role,
        quotas: req.quotas,
    };
    match s.0.store.hire(&new).await {
        Ok(h) => {
            tracing::info!(employee = %h.employee.id, name = %h.employee.name, role = %h.employee.role, tenant = %h.employee.tenant, "employee hired");
            (
                StatusCode::CREATED,
                Json(HiredView {
                    employee: &h.employee,
                    token: &h.token,
                }),
            )
                .into_response()
        }
        Err(e) => store_refusal(e),
    }
}

pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let tenant = match tenant(&s, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(Query(q)) = q else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the query string is malformed; use ?role=<role>&state=<state>".into(),
        );
    };
    let mut role = None;
    let mut state = None;
    for (k, v) in &q {
        match k.as_str() {
            "role" => role = Some(v.as_str()),
            "state" => match EmployeeState::parse(v) {
                Some(st) => state = Some(st),
                None => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        format!("state must be active, paused or offboarded, not {v:?}"),
                    )
                }
            },
            other => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("unknown filter {other:?}; use role or state"),
                )
            }
        }
    }
    match s.0.store.list_employees(&tenant, role, state).await {
        Ok(list) => Json(serde_json::json!({ "employees": list })).into_response(),
        Err(e) => store_refusal(e),
    }
}

/// The employee `raw` names, if it exists in the request's tenant.
async fn find(s: &AppState, headers: &HeaderMap, raw: &str) -> Result<Employee, Response> {
    let tenant = tenant(s, headers)?;
    let id = uuid_of(raw, "an employee")?;
    match s.0.store.employee(id).await {
        Ok(Some(e)) if e.tenant == tenant => Ok(e),
        Ok(_) => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("employee {id} does not exist"),
        )),
        Err(e) => Err(store_refusal(e)),
    }
}

pub(super) async fn get_one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let employee = match find(&s, &headers, &raw).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let usage = match s.0.store.usage_of_employee(employee.id).await {
        Ok(u) => u,
        Err(e) => return store_refusal(e),
    };
    let effective_quotas =
        s.0.cfg
            .roles
            .get(&employee.role)
            .map(|r| r.quotas.overridden_by(&employee.quotas));
    Json(EmployeeView {
        employee: &employee,
        effective_quotas,
        usage,
    })
    .into_response()
}

/// The employee's memory (key → value), as its next run will see it.
pub(super) async fn memory(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let employee = match find(&s, &headers, &raw).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    match s.0.store.memory_list(employee.id).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => store_refusal(e),
    }
}

#[derive(Clone, Copy)]
enum Move {
    Pause,
    Resume,
    Offboard,
}

async fn transition(s: &AppState, headers: &HeaderMap, raw: &str, how: Move) -> Response {
    let id: Uuid = match find(s, headers, raw).await {
        Ok(e) => e.id,
        Err(r) => return r,
    };
    let store = &s.0.store;
    let moved = match how {
        Move::Pause => store.pause_employee(id).await,
        Move::Resume => store.resume_employee(id).await,
        Move::Offboard => store.offboard_employee(id).await,
    };
    let employee = match moved {
        Ok(e) => e,
        Err(e) => return store_refusal(e),
    };
    tracing::info!(employee = %id, state = %employee.state, "employee state changed");
    if let Move::Offboard = how {
        // Core NATS, repeated by a repeated DELETE: a worker that misses it
        // keeps idle containers of an employee no task can name any more,
        // and reaps them as idle.
        let sent =
            s.0.nats
                .publish(
                    subject::ctl_broadcast(subject::CTL_OFFBOARD),
                    id.to_string().into(),
                )
                .await;
        if let Err(e) = sent
            .map_err(|e| e.to_string())
            .and(s.0.nats.flush().await.map_err(|e| e.to_string()))
        {
            tracing::warn!(employee = %id, error = %e, "could not tell the workers to remove an offboarded employee's containers; repeat the DELETE");
        }
    }
    Json(employee).into_response()
}

pub(super) async fn pause(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    transition(&s, &headers, &raw, Move::Pause).await
}

pub(super) async fn resume(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    transition(&s, &headers, &raw, Move::Resume).await
}

pub(super) async fn offboard(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    transition(&s, &headers, &raw, Move::Offboard).await
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn roles() -> Roles {
        let executor = roles::Role::parse(
            Path::new("executor.yaml"),
            "name: executor\nmodel: scripted\nsystem_prompt: work\n",
        )
        .expect("template");
        Roles::from_roles(vec![executor]).expect("roles")
    }

    fn req(name: &str, role: &str, quotas: Quotas) -> HireRequest {
        HireRequest {
            name: name.into(),
            role: role.into(),
            quotas,
        }
    }

    #[tokio::test]
    async fn hires_are_checked_against_the_loaded_roles() {
        assert!(check_hire(&roles(), &req("ada", "executor", Quotas::default())).is_ok());
        let zero = Quotas {
            tokens_per_day: Some(0),
            ..Quotas::default()
        };
        let cases = [
            (roles(), req("a b", "executor", Quotas::default()), 400, "employee name \"a b\" is not valid; use 1-64 letters, digits, '-' or '_'"),
            (roles(), req("ada", "wizard", Quotas::default()), 422, "unknown role \"wizard\"; roles that can be hired: executor"),
            (Roles::empty(), req("ada", "executor", Quotas::default()), 422, "unknown role \"executor\"; no role templates are loaded (see COLONY_ROLES_DIR)"),
            (roles(), req("ada", "shell", Quotas::default()), 422, "role shell is built in and runs commands without a model, so it has no employees; roles that can be hired: executor"),
            (roles(), req("ada", "executor", zero), 400, "quotas.tokens_per_day must be greater than 0; leave it out for the role's quota"),
        ];
        for (roles, r, status, want) in cases {
            let resp = check_hire(&roles, &r).expect_err(want);
            assert_eq!(resp.status().as_u16(), status, "{want}");
            let body = axum::body::to_bytes(resp.into_body(), 4096)
                .await
                .expect("body");
            let v: subjects::ApiError = serde_json::from_slice(&body).expect("ApiError");
            assert_eq!(v.error, want);
        }
    }
}
