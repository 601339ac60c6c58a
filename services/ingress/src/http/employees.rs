//! Employee routes: hire, list, read, pause, resume and offboard.
//!
//! Every route acts within the caller's tenant; an employee of another
//! tenant does not exist for it. An employee's quotas may only lower its
//! role's, unless the caller's key is an admin key. Offboarding keeps the employee's row and
//! history and tells every worker, over core NATS, to remove its containers.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use roles::{Quotas, Roles, SHELL};
use serde::{Deserialize, Serialize};
use store::{Employee, EmployeeState, NewEmployee, Scope, UsageTotals};
use subjects::subject;
use uuid::Uuid;

use super::{read_json, uuid_of, AppState, Caller, Refusal};

/// Body of `POST /v1/employees`.
#[derive(schemars::JsonSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HireRequest {
    name: String,
    role: String,
    /// Overrides of the role's quotas, field by field.
    #[serde(default)]
    quotas: Quotas,
}

/// `GET /v1/employees/{id}`: the employee, the quotas it works under, and
/// what it has used.
#[derive(schemars::JsonSchema, Serialize)]
pub(super) struct EmployeeView<'a> {
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

/// A hire request the loaded roles can take. `may_raise`: the caller's key
/// may give the employee quotas above its role's (an admin key).
fn check_hire(roles: &Roles, req: &HireRequest, may_raise: bool) -> Result<(), Refusal> {
    if !subjects::is_token(&req.name) {
        return Err(Refusal::bad(format!(
            "employee name {:?} is not valid; use 1-64 letters, digits, '-' or '_'",
            req.name
        )));
    }
    let unprocessable = |e: String| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, e);
    if req.role == SHELL {
        return Err(unprocessable(format!(
            "role shell is built in and runs commands without a model, so it has no employees; {}",
            hireable(roles)
        )));
    }
    let Some(role) = roles.get(&req.role) else {
        return Err(unprocessable(format!(
            "unknown role {:?}; {}",
            req.role,
            hireable(roles)
        )));
    };
    if let Some((field, reason)) = req.quotas.problems().into_iter().next() {
        return Err(Refusal::bad(format!(
            "quotas.{field} {reason}; leave it out for the role's quota"
        )));
    }
    if !may_raise {
        if let Some((field, asked, limit)) = req.quotas.raises(&role.quotas).into_iter().next() {
            return Err(unprocessable(format!(
                "quotas.{field} {asked} is above role {}'s {limit}; an employee's quota may only lower its role's (raising one needs an admin key)",
                role.name
            )));
        }
    }
    Ok(())
}

pub(super) async fn hire(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, Refusal> {
    let req: HireRequest = read_json(body, "hire request").await?;
    check_hire(&s.0.cfg.roles, &req, caller.scope >= Scope::Admin)?;
    let new = NewEmployee {
        tenant: caller.tenant,
        name: req.name,
        role: req.role,
        quotas: req.quotas,
    };
    let employee = s.0.store.hire(&new).await?;
    tracing::info!(employee = %employee.id, name = %employee.name, role = %employee.role, tenant = %employee.tenant, "employee hired");
    Ok((StatusCode::CREATED, Json(employee)).into_response())
}

pub(super) async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(Refusal::bad(
            "the query string is malformed; use ?role=<role>&state=<state>",
        ));
    };
    let mut role = None;
    let mut state = None;
    for (k, v) in &q {
        match k.as_str() {
            "role" if subjects::is_token(v) => role = Some(v.as_str()),
            "role" => {
                return Err(Refusal::bad(format!(
                    "role must be a role name (letters, digits, '-' or '_'), not {v:?}"
                )))
            }
            "state" => match EmployeeState::parse(v) {
                Some(st) => state = Some(st),
                None => {
                    return Err(Refusal::bad(format!(
                        "state must be active, paused or offboarded, not {v:?}"
                    )))
                }
            },
            other => {
                return Err(Refusal::bad(format!(
                    "unknown filter {other:?}; use role or state"
                )))
            }
        }
    }
    let list =
        s.0.store
            .list_employees(&caller.tenant, role, state)
            .await?;
    Ok(Json(serde_json::json!({ "employees": list })).into_response())
}

/// The employee `raw` names, if it exists in the caller's tenant.
async fn find(s: &AppState, caller: &Caller, raw: &str) -> Result<Employee, Refusal> {
    let id = uuid_of(raw, "an employee")?;
    match s.0.store.employee(id).await? {
        Some(e) if e.tenant == caller.tenant => Ok(e),
        _ => Err(Refusal::not_found(format!("employee {id} does not exist"))),
    }
}

pub(super) async fn get_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let employee = find(&s, &caller, &raw).await?;
    let usage = s.0.store.usage_of_employee(employee.id).await?;
    let effective_quotas =
        s.0.cfg
            .roles
            .get(&employee.role)
            .map(|r| r.quotas.overridden_by(&employee.quotas));
    Ok(Json(EmployeeView {
        employee: &employee,
        effective_quotas,
        usage,
    })
    .into_response())
}

/// The employee's memory (key → value), as its next run will see it.
pub(super) async fn memory(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    let employee = find(&s, &caller, &raw).await?;
    Ok(Json(s.0.store.memory_list(employee.id).await?).into_response())
}

#[derive(Clone, Copy)]
enum Move {
    Pause,
    Resume,
    Offboard,
}

async fn transition(
    s: &AppState,
    caller: &Caller,
    raw: &str,
    how: Move,
) -> Result<Response, Refusal> {
    let id: Uuid = find(s, caller, raw).await?.id;
    let store = &s.0.store;
    let employee = match how {
        Move::Pause => store.pause_employee(id).await,
        Move::Resume => store.resume_employee(id).await,
        Move::Offboard => store.offboard_employee(id).await,
    }?;
    tracing::info!(employee = %id, state = %employee.state, "employee state changed");
    if let Move::Offboard = how {
        // Core NATS, repeated by a repeated DELETE: a worker that misses it
        // keeps idle containers of an employee no task can name any more,
        // and reaps them as idle. A worker acts only once Postgres says the
        // employee is offboarded.
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
    Ok(Json(employee).into_response())
}

pub(super) async fn pause(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    transition(&s, &caller, &raw, Move::Pause).await
}

pub(super) async fn resume(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    transition(&s, &caller, &raw, Move::Resume).await
}

pub(super) async fn offboard(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Refusal> {
    transition(&s, &caller, &raw, Move::Offboard).await
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
        assert!(check_hire(&roles(), &req("ada", "executor", Quotas::default()), false).is_ok());
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
            let refusal = check_hire(&roles, &r, false).expect_err(want);
            assert_eq!(refusal.status.as_u16(), status, "{want}");
            assert_eq!(refusal.error, want);
        }
    }

    #[test]
    fn only_an_admin_key_may_raise_a_role_quota() {
        let limited = roles::Role::parse(
            Path::new("executor.yaml"),
            "name: executor\nmodel: scripted\nsystem_prompt: work\nquotas: { tokens_per_run: 1000 }\n",
        )
        .expect("template");
        let roles = Roles::from_roles(vec![limited]).expect("roles");
        let more = Quotas {
            tokens_per_run: Some(5000),
            ..Quotas::default()
        };
        let refusal = check_hire(&roles, &req("ada", "executor", more), false).expect_err("raise");
        assert_eq!(refusal.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            refusal.error,
            "quotas.tokens_per_run 5000 is above role executor's 1000; an employee's quota may only lower its role's (raising one needs an admin key)"
        );
        assert!(check_hire(&roles, &req("ada", "executor", more), true).is_ok());
        let less = Quotas {
            tokens_per_run: Some(10),
            ..Quotas::default()
        };
        assert!(check_hire(&roles, &req("ada", "executor", less), false).is_ok());
    }
}
