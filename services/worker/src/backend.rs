//! The gateway's [`Backend`] over Postgres: memory, audit, usage and vault
//! credentials in the store, sub-tasks through the store and the relay.

use std::collections::BTreeMap;
use std::time::SystemTime;

use gateway::{
    AuditOutcome, AuditRecord, Backend, BackendError, BoxFuture, RunContext, UsageRecord,
};
use relay::WeakRelay;
use serde_json::{json, Value};
use sha2::Digest;
use store::Store;
use subjects::TaskSubmission;
use time::OffsetDateTime;
use uuid::Uuid;

pub struct StoreBackend {
    pub store: Store,
    /// Weak, so that a gateway still finishing a call does not hold the
    /// relay open at shutdown.
    pub relay: WeakRelay,
    pub roles: std::sync::Arc<roles::Roles>,
    /// The rules every task is admitted by, sub-tasks too.
    pub admission: admission::Rules,
    /// What a plan may hold, and who reviews.
    pub loop_roles: std::sync::Arc<store::plans::LoopRoles>,
}

fn run_ref(run: &RunContext) -> store::plans::RunRef {
    store::plans::RunRef {
        tenant: run.tenant.clone(),
        task_id: run.task_id,
        run_id: run.run_id,
        employee_id: run.employee_id,
    }
}

fn err(e: store::Error) -> BackendError {
    match e {
        store::Error::Invalid(m) => BackendError::Invalid(m),
        store::Error::Illegal(m) => BackendError::Conflict(m.to_string()),
        store::Error::Conflict(m) => BackendError::Conflict(m),
        store::Error::NotFound(id) => BackendError::NotFound(format!("task {id} does not exist")),
        store::Error::Refused { status, reason } => BackendError::Refused { status, reason },
        store::Error::IllegalGoal(m) => BackendError::Conflict(m.to_string()),
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
        args: Value,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let refused = |r: admission::Rejection| BackendError::Refused {
                status: r.status,
                reason: r.reason,
            };
            let task: TaskSubmission = admission::parse_value(args).map_err(refused)?;
            let Some(role) = self.roles.get(&parent.role) else {
                // A role without a template (shell) runs no agent.
                return Err(BackendError::Refused {
                    status: 403,
                    reason: format!("role {} may not create tasks", parent.role),
                });
            };
            // A retried action call creates the sub-task once: without a key
            // of its own, the key is the run and what it asked for.
            let key = task.idempotency_key.clone().unwrap_or_else(|| {
                let asked = serde_json::to_vec(&task).unwrap_or_default();
                let digest = sha2::Sha256::digest(&asked);
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                format!("{}:{hex}", parent.run_id)
            });
            let new = self
                .admission
                .check_submission(task, &parent.tenant, Some(key))
                .map_err(refused)?;
            let created = admission::admit(
                &self.store,
                &self.admission,
                new,
                Some(admission::Parent {
                    task_id: parent.task_id,
                    tenant: &parent.tenant,
                    role,
                }),
            )
            .await
            .map_err(|e| match e {
                admission::Refused::Rejected(r) => refused(r),
                admission::Refused::Store(e) => err(e),
            })?;
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
        verdict: subjects::goals::ReviewVerdict,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let (applied, outbox) = self
                .store
                .submit_verdict(&run_ref(reviewer), &verdict)
                .await
                .map_err(err)?;
            self.relay.send(outbox);
            let outcome = match applied.outcome {
                store::verdicts::VerdictOutcome::Done => "the sub-task is done".to_string(),
                store::verdicts::VerdictOutcome::Rework { round } => {
                    format!("the sub-task goes back to its employee (rework {round})")
                }
                store::verdicts::VerdictOutcome::Escalated => {
                    "the sub-task was rejected more often than its role allows; a person decides"
                        .to_string()
                }
            };
            Ok(json!({
                "review_id": applied.review_id,
                "task_id": verdict.task_id,
                "points": applied.points,
                "outcome": outcome,
            }))
        })
    }

    fn submit_plan<'a>(
        &'a self,
        planner: &'a RunContext,
        plan: subjects::goals::Plan,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let run = run_ref(planner);
            let roles = &self.loop_roles;
            let ctx = self.store.plan_context(&run).await.map_err(err)?;
            let errors = admission::plan::check(
                &plan,
                &admission::plan::PlanRules {
                    plannable: roles.plannable.clone(),
                    max_subtasks: roles.max_subtasks,
                    budget: ctx.budget,
                    done_keys: ctx.done_keys,
                },
            );
            if errors.is_empty() {
                let (accepted, outbox) = self
                    .store
                    .accept_plan(&run, &plan, roles)
                    .await
                    .map_err(err)?;
                self.relay.send(outbox);
                return Ok(json!({
                    "accepted": true,
                    "subtasks": accepted.subtasks,
                    "queued": accepted.queued,
                    "awaiting_approval": accepted.awaiting_approval,
                }));
            }
            let (refused, outbox) = self
                .store
                .reject_plan(&run, errors.clone(), roles)
                .await
                .map_err(err)?;
            self.relay.send(outbox);
            let list = errors
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{}) {e}", i + 1))
                .collect::<Vec<_>>()
                .join(" ");
            let next = if refused.blocked {
                "the goal now waits for a person, so stop here".to_string()
            } else {
                format!(
                    "fix every error and submit the whole plan again ({} of {} tries left)",
                    refused.max + 1 - refused.rejections,
                    refused.max + 1
                )
            };
            Err(BackendError::Refused {
                status: 422,
                reason: format!(
                    "the plan was refused with {} errors: {list}; {next}",
                    errors.len()
                ),
            })
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
            let (task, tokens, cost) =
                (r.task_id, r.prompt_tokens + r.completion_tokens, r.cost_usd);
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
                .map_err(err)?;
            // A goal's run spends the goal's budget too.
            let outbox = self
                .store
                .charge_goal(task, tokens, cost)
                .await
                .map_err(err)?;
            self.relay.send(outbox);
            Ok(())
        })
    }

    fn charge_day<'a>(
        &'a self,
        run: &'a RunContext,
        tokens: i64,
        cost_usd: f64,
        day: Option<time::Date>,
    ) -> BoxFuture<'a, Result<(gateway::DailyUsage, time::Date), BackendError>> {
        Box::pin(async move {
            let spend = self
                .store
                .charge_day(
                    &run.tenant,
                    run.employee_id,
                    &run.role,
                    tokens,
                    cost_usd,
                    day,
                )
                .await
                .map_err(err)?;
            Ok((
                gateway::DailyUsage {
                    tokens: spend.tokens.max(0) as u64,
                    cost_usd: spend.cost_usd.max(0.0),
                },
                spend.day,
            ))
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
