//! The gateway's [`Backend`] over Postgres: memory, audit, usage and vault
//! credentials in the store, sub-tasks through the store and the relay.

use std::collections::BTreeMap;
use std::time::SystemTime;

use gateway::{
    AuditOutcome, AuditRecord, Backend, BackendError, BoxFuture, ReviewSubmission, RunContext,
    UsageRecord,
};
use relay::WeakRelay;
use serde_json::{json, Value};
use store::Store;
use subjects::TaskSubmission;
use time::OffsetDateTime;
use uuid::Uuid;

/// Defaults for sub-tasks an agent creates without saying.
const SUBTASK_MAX_ATTEMPTS: u32 = 3;
const SUBTASK_TIMEOUT_SECS: u32 = 300;

pub struct StoreBackend {
    pub store: Store,
    /// Weak, so that a gateway still finishing a call does not hold the
    /// relay open at shutdown.
    pub relay: WeakRelay,
    pub roles: std::sync::Arc<roles::Roles>,
}

fn err(e: store::Error) -> BackendError {
    match e {
        store::Error::Invalid(m) => BackendError::Invalid(m),
        store::Error::Illegal(m) => BackendError::Conflict(m.to_string()),
        store::Error::Conflict(m) => BackendError::Conflict(m),
        store::Error::NotFound(id) => BackendError::NotFound(format!("task {id} does not exist")),
        store::Error::Missing(m) => BackendError::NotFound(m),
        other => BackendError::Internal(other.to_string()),
    }
}

fn at(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl Backend for StoreBackend {
    fn memory_get<'a>(
        &'a self,
        employee_id: Uuid,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, BackendError>> {
        Box::pin(async move { self.store.memory_get(employee_id, key).await.map_err(err) })
    }

    fn memory_set<'a>(
        &'a self,
        employee_id: Uuid,
        key: &'a str,
        value: Value,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.store
                .memory_set(employee_id, key, &value)
                .await
                .map_err(err)
        })
    }

    fn memory_list(
        &self,
        employee_id: Uuid,
    ) -> BoxFuture<'_, Result<BTreeMap<String, Value>, BackendError>> {
        Box::pin(async move { self.store.memory_list(employee_id).await.map_err(err) })
    }

    fn note<'a>(
        &'a self,
        run: &'a RunContext,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.store
                .add_note(run.task_id, run.run_id, run.employee_id, text)
                .await
                .map_err(err)
        })
    }

    fn create_task<'a>(
        &'a self,
        parent: &'a RunContext,
        task: TaskSubmission,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            if !self.roles.is_known(&task.role) {
                return Err(BackendError::Invalid(format!(
                    "there is no role {:?}; known roles: {}",
                    task.role,
                    self.roles.known().join(", ")
                )));
            }
            if let Some(e) = task.employee_id {
                let employee = self
                    .store
                    .employee(e)
                    .await
                    .map_err(err)?
                    .filter(|x| x.tenant == parent.tenant)
                    .ok_or_else(|| {
                        BackendError::NotFound(format!("employee {e} does not exist"))
                    })?;
                if employee.role != task.role {
                    return Err(BackendError::Invalid(format!(
                        "employee {} is a {}, not a {}",
                        employee.name, employee.role, task.role
                    )));
                }
                if employee.state != store::employees::EmployeeState::Active {
                    return Err(BackendError::Conflict(format!(
                        "employee {} is {} and takes no tasks",
                        employee.name, employee.state
                    )));
                }
            }
            let created = self
                .store
                .create_task(&store::tasks::NewTask {
                    tenant: parent.tenant.clone(),
                    role: task.role.clone(),
                    goal_id: task.goal_id,
                    input: task.input.clone(),
                    max_attempts: task.max_attempts.unwrap_or(SUBTASK_MAX_ATTEMPTS),
                    timeout_secs: task.timeout_secs.unwrap_or(SUBTASK_TIMEOUT_SECS),
                    idempotency_key: Some(task.idempotency_key.clone().unwrap_or_else(|| {
                        // A retried action call creates the sub-task once.
                        format!("{}:{}", parent.run_id, Uuid::new_v4())
                    })),
                    employee_id: task.employee_id,
                })
                .await
                .map_err(err)?;
            self.relay.send(created.outbox);
            Ok(json!({
                "id": created.task.id,
                "state": created.task.state,
                "created": created.created,
                "parent": parent.task_id,
            }))
        })
    }

    fn submit_review<'a>(
        &'a self,
        reviewer: &'a RunContext,
        review: ReviewSubmission,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let verdict = serde_json::to_value(review.verdict)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let id = self
                .store
                .add_review(&store::notes::NewReview {
                    task_id: review.task_id,
                    reviewer_task_id: reviewer.task_id,
                    reviewer_run_id: reviewer.run_id,
                    reviewer_employee_id: reviewer.employee_id,
                    score: i16::from(review.score),
                    verdict,
                    comments: review.comments.clone(),
                })
                .await
                .map_err(err)?;
            Ok(json!({"review_id": id, "task_id": review.task_id, "score": review.score}))
        })
    }

    fn audit(&self, r: AuditRecord) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let outcome = match r.outcome {
                AuditOutcome::Allowed => store::audit::Outcome::Allowed,
                AuditOutcome::Denied => store::audit::Outcome::Denied,
                AuditOutcome::Failed => store::audit::Outcome::Failed,
            };
            self.store
                .insert_audit(&store::audit::NewAudit {
                    at: at(r.at),
                    tenant: r.tenant,
                    employee_id: r.employee_id,
                    task_id: Some(r.task_id),
                    run_id: Some(r.run_id),
                    action: r.action,
                    target: r.target,
                    outcome,
                    detail: Some(r.detail),
                })
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn record_usage(&self, r: UsageRecord) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.store
                .insert_usage(&store::usage::NewUsage {
                    at: at(r.at),
                    tenant: r.tenant,
                    run_id: Some(r.run_id),
                    task_id: Some(r.task_id),
                    employee_id: r.employee_id,
                    model: r.model,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    cost_usd: r.cost_usd,
                })
                .await
                .map_err(err)
        })
    }

    fn credentials_for<'a>(
        &'a self,
        tenant: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, BackendError>> {
        Box::pin(async move {
            match self.store.credentials_for_url(tenant, url).await {
                Ok(c) => Ok(c),
                // No vault configured: nothing to attach.
                Err(store::Error::NoVault) => Ok(Vec::new()),
                Err(e) => Err(err(e)),
            }
        })
    }
}
