//! Employees: hired instances of a role template.
//!
//! An employee is `active` (takes tasks), `paused` (keeps everything, takes
//! no new task) or `offboarded` (final: its name is free again, its history
//! — tasks, memory, audit, usage — stays). Each change is one guarded
//! `UPDATE … WHERE state = ANY(<allowed from>)`; asking for the state the
//! employee is already in is answered with the employee, unchanged, so a
//! retried request is harmless.
//!
//! Whether the role exists is ingress's question (the store does not load
//! templates).

use roles::Quotas;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{Error, Result, Store};

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum EmployeeState {
    Active,
    Paused,
    Offboarded,
}

impl EmployeeState {
    pub const ALL: [EmployeeState; 3] = [
        EmployeeState::Active,
        EmployeeState::Paused,
        EmployeeState::Offboarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EmployeeState::Active => "active",
            EmployeeState::Paused => "paused",
            EmployeeState::Offboarded => "offboarded",
        }
    }

    pub fn parse(s: &str) -> Option<EmployeeState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for EmployeeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An employee as stored.
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct Employee {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub state: EmployeeState,
    /// Overrides of the role's quotas, field by field.
    pub quotas: Quotas,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub offboarded_at: Option<OffsetDateTime>,
}

/// What ingress asks to hire.
#[derive(Clone, Debug)]
pub struct NewEmployee {
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub quotas: Quotas,
}

const COLS: &str =
    "id, tenant, name, role, state::text, quotas, created_at, updated_at, offboarded_at";

fn row_to_employee(r: &Row) -> Result<Employee> {
    let state: String = r.get(4);
    let state = EmployeeState::parse(&state)
        .ok_or_else(|| Error::Invalid(format!("employee row has unknown state {state:?}")))?;
    let id: Uuid = r.get(0);
    let quotas = serde_json::from_value(r.get(5)).map_err(|e| {
        Error::Invalid(format!(
            "employee {id} has quotas this version cannot read: {e}"
        ))
    })?;
    Ok(Employee {
        id,
        tenant: r.get(1),
        name: r.get(2),
        role: r.get(3),
        state,
        quotas,
        created_at: r.get(6),
        updated_at: r.get(7),
        offboarded_at: r.get(8),
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn no_such(id: Uuid) -> Error {
    Error::Missing(format!("employee {id} does not exist"))
}

impl Store {
    /// Hire an employee: `active` at once. The name must be free among the
    /// tenant's employees that are not offboarded.
    pub async fn hire(&self, new: &NewEmployee) -> Result<Employee> {
        if !subjects::is_token(&new.name) {
            return Err(Error::Invalid(format!(
                "employee name {:?} is not valid; use 1-64 letters, digits, '-' or '_'",
                new.name
            )));
        }
        if let Some((field, reason)) = new.quotas.problems().into_iter().next() {
            return Err(Error::Invalid(format!("quotas.{field} {reason}")));
        }
        let now = OffsetDateTime::now_utc();
        let quotas = serde_json::to_value(new.quotas).expect("quotas serialise");
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO employees (id, tenant, name, role, state, quotas, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 'active', $5, $6, $6)
                     RETURNING {COLS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &new.tenant,
                    &new.name,
                    &new.role,
                    &quotas,
                    &now,
                ],
            )
            .await
            .map_err(|e| {
                let taken = e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    && e.as_db_error().and_then(|d| d.constraint()) == Some("employees_name");
                if taken {
                    Error::Conflict(format!(
                        "an employee named {:?} already works for tenant {:?}; choose another name or offboard that employee first",
                        new.name, new.tenant
                    ))
                } else {
                    Error::Db(e)
                }
            })?;
        row_to_employee(&row)
    }

    /// The employee `id`, whatever its tenant and state.
    pub async fn employee(&self, id: Uuid) -> Result<Option<Employee>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {COLS} FROM employees WHERE id = $1"))
            .await?;
        client
            .query_opt(&stmt, &[&id])
            .await?
            .map(|r| row_to_employee(&r))
            .transpose()
    }

    pub async fn list_employees(
        &self,
        tenant: &str,
        role: Option<&str>,
        state: Option<EmployeeState>,
    ) -> Result<Vec<Employee>> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {COLS} FROM employees
                     WHERE tenant = $1 AND ($2::text IS NULL OR role = $2)
                       AND ($3::text IS NULL OR state = $3::text::employee_state)
                     ORDER BY created_at, id"
                ),
                &[&tenant, &role, &state.map(EmployeeState::as_str)],
            )
            .await?
            .iter()
            .map(row_to_employee)
            .collect()
    }

    /// `active` → `paused`.
    pub async fn pause_employee(&self, id: Uuid) -> Result<Employee> {
        self.move_employee(id, &[EmployeeState::Active], EmployeeState::Paused)
            .await
    }

    /// `paused` → `active`.
    pub async fn resume_employee(&self, id: Uuid) -> Result<Employee> {
        self.move_employee(id, &[EmployeeState::Paused], EmployeeState::Active)
            .await
    }

    /// `active` or `paused` → `offboarded`, for good. Nothing of its history
    /// is deleted; the caller tells the workers to remove its containers.
    pub async fn offboard_employee(&self, id: Uuid) -> Result<Employee> {
        self.move_employee(
            id,
            &[EmployeeState::Active, EmployeeState::Paused],
            EmployeeState::Offboarded,
        )
        .await
    }

    async fn move_employee(
        &self,
        id: Uuid,
        from: &[EmployeeState],
        to: EmployeeState,
    ) -> Result<Employee> {
        let now = OffsetDateTime::now_utc();
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let client = self.client().await?;
        let moved = client
            .query_opt(
                &format!(
                    "UPDATE employees SET state = $2::text::employee_state, updated_at = $3,
                            offboarded_at = CASE WHEN $2 = 'offboarded' THEN $3 ELSE offboarded_at END
                     WHERE id = $1 AND state::text = ANY($4)
                     RETURNING {COLS}"
                ),
                &[&id, &to.as_str(), &now, &from],
            )
            .await?;
        if let Some(row) = moved {
            return row_to_employee(&row);
        }
        let current = self.employee(id).await?.ok_or_else(|| no_such(id))?;
        if current.state == to {
            return Ok(current);
        }
        Err(Error::Conflict(format!(
            "employee {id} is {}, so it cannot become {to}; hire a new employee instead",
            current.state
        )))
    }
}
