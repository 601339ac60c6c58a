//! `POST /v1/actions/{name}`: platform actions, deny by default, every call
//! audited.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};
use subjects::gateway::{action, ActionRequest, ActionResponse};

use crate::backend::{AuditOutcome, BackendError};
use crate::reply::{self, error, one_line};
use crate::run::Run;
use crate::{Inner, Shared};

const ACTION_REQUEST_MAX: usize = 1024 * 1024;
const MAX_KEY_CHARS: usize = 200;
const MAX_NOTE_BYTES: usize = 16 * 1024;

/// What an action that ran answers, and what the audit says about it.
struct Done {
    result: Value,
    target: Option<String>,
    detail: String,
}

/// Why an action did not run.
struct Failure {
    status: StatusCode,
    sentence: String,
    target: Option<String>,
    /// For the audit: the internal cause when the caller only gets a
    /// generic sentence.
    detail: Option<String>,
}

impl Failure {
    fn bad(sentence: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            sentence: sentence.into(),
            target: None,
            detail: None,
        }
    }

    fn target(mut self, target: Option<String>) -> Failure {
        self.target = target;
        self
    }

    fn backend(name: &str, e: BackendError) -> Failure {
        let (status, sentence, detail) = match e {
            BackendError::Refused { status, reason } => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                reason,
                None,
            ),
            BackendError::Invalid(s) => (StatusCode::UNPROCESSABLE_ENTITY, s, None),
            BackendError::NotFound(s) => (StatusCode::NOT_FOUND, s, None),
            BackendError::Conflict(s) => (StatusCode::CONFLICT, s, None),
            BackendError::Internal(s) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the action {name} failed inside the platform and was not done; it may be retried"),
                Some(s),
            ),
        };
        Failure {
            status,
            sentence,
            target: None,
            detail,
        }
    }
}

pub(crate) async fn action(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let Some(run) = shared.current() else {
        return reply::no_run();
    };
    let gw = &shared.gw;
    let deny = |status: StatusCode, sentence: String| {
        run.audit(
            gw,
            &audit_name(&name),
            None,
            AuditOutcome::Denied,
            &sentence,
        );
        error(status, sentence)
    };
    if !action::ALL.contains(&name.as_str()) {
        return deny(
            StatusCode::NOT_FOUND,
            format!(
                "there is no action named {}; the platform knows {}",
                one_line(&name, 64),
                action::ALL.join(", ")
            ),
        );
    }
    if let Some(reason) = run.over_quota() {
        run.audit(gw, &name, None, AuditOutcome::Denied, reason);
        return reply::over_quota(reason);
    }
    if !run.ctx.allowed_actions.contains(&name) {
        return deny(
            StatusCode::FORBIDDEN,
            format!("role {} may not use action {name}", run.ctx.role),
        );
    }

    let outcome = match parse_args(body, &name).await {
        Ok(args) => perform(gw, &run, &name, args).await,
        Err(f) => Err(f),
    };
    match outcome {
        Ok(done) => {
            run.audit(gw, &name, done.target, AuditOutcome::Allowed, &done.detail);
            reply::json(
                StatusCode::OK,
                &ActionResponse {
                    result: done.result,
                },
            )
        }
        Err(f) => {
            let detail = match &f.detail {
                Some(cause) => format!("{}: {cause}", f.sentence),
                None => f.sentence.clone(),
            };
            let outcome = if f.status == StatusCode::FORBIDDEN {
                AuditOutcome::Denied
            } else {
                AuditOutcome::Failed
            };
            run.audit(gw, &name, f.target, outcome, &detail);
            error(f.status, f.sentence)
        }
    }
}

/// An unknown name as it goes into the audit trail: bounded.
fn audit_name(name: &str) -> String {
    one_line(name, 64)
}

async fn parse_args(body: Body, name: &str) -> Result<Value, Failure> {
    let bytes =
        reply::read_body(body, ACTION_REQUEST_MAX)
            .await
            .map_err(|(status, sentence)| Failure {
                status,
                sentence,
                target: None,
                detail: None,
            })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let req: ActionRequest = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::bad(format!(
            "the request of action {name} is not {{\"args\": {{…}}}}: {e}"
        ))
    })?;
    match req.args {
        Value::Null | Value::Object(_) => Ok(req.args),
        _ => Err(Failure::bad(format!(
            "the args of action {name} must be a JSON object"
        ))),
    }
}

fn str_arg<'a>(
    args: &'a Value,
    name: &str,
    field: &str,
    max_bytes: usize,
) -> Result<&'a str, Failure> {
    match args.get(field).and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= max_bytes => Ok(s),
        _ => Err(Failure::bad(format!(
            "action {name} needs args.{field}, a non-empty string of at most {max_bytes} bytes"
        ))),
    }
}

async fn perform(gw: &Inner, run: &Run, name: &str, args: Value) -> Result<Done, Failure> {
    let backend = &gw.backend;
    match name {
        action::MEMORY_GET | action::MEMORY_SET | action::MEMORY_LIST => {
            let Some(employee) = run.ctx.employee_id else {
                return Err(Failure {
                    status: StatusCode::CONFLICT,
                    sentence: format!(
                        "this run of role {} has no employee, so it has no memory for {name}",
                        run.ctx.role
                    ),
                    target: None,
                    detail: None,
                });
            };
            match name {
                action::MEMORY_GET => {
                    let key = str_arg(&args, name, "key", MAX_KEY_CHARS)?;
                    let target = Some(key.to_string());
                    let value = backend
                        .memory_get(employee, key)
                        .await
                        .map_err(|e| Failure::backend(name, e).target(target.clone()))?;
                    let detail = if value.is_some() {
                        "found"
                    } else {
                        "no such key"
                    };
                    Ok(Done {
                        result: value.unwrap_or(Value::Null),
                        target,
                        detail: detail.into(),
                    })
                }
                action::MEMORY_SET => {
                    let key = str_arg(&args, name, "key", MAX_KEY_CHARS)?;
                    let target = Some(key.to_string());
                    let Some(value) = args.get("value") else {
                        return Err(Failure::bad(format!(
                            "action {name} needs args.value (any JSON value)"
                        ))
                        .target(target));
                    };
                    let size = value.to_string().len();
                    backend
                        .memory_set(employee, key, value.clone())
                        .await
                        .map_err(|e| Failure::backend(name, e).target(target.clone()))?;
                    Ok(Done {
                        result: json!({"ok": true}),
                        target,
                        detail: format!("stored {size} bytes"),
                    })
                }
                _ => {
                    let memory = backend
                        .memory_list(employee)
                        .await
                        .map_err(|e| Failure::backend(name, e))?;
                    let detail = format!("{} keys", memory.len());
                    Ok(Done {
                        result: serde_json::to_value(memory).unwrap_or(Value::Null),
                        target: None,
                        detail,
                    })
                }
            }
        }
        action::NOTE => {
            let text = str_arg(&args, name, "text", MAX_NOTE_BYTES)?;
            backend
                .note(&run.ctx, text)
                .await
                .map_err(|e| Failure::backend(name, e))?;
            Ok(Done {
                result: json!({"ok": true}),
                target: None,
                detail: format!("note of {} bytes: {}", text.len(), one_line(text, 120)),
            })
        }
        action::TASK_CREATE => {
            let role = args
                .get("role")
                .and_then(Value::as_str)
                .map(|r| one_line(r, 64))
                .unwrap_or_default();
            let created = backend
                .create_task(&run.ctx, args)
                .await
                .map_err(|e| Failure::backend(name, e))?;
            let id = created
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(Done {
                detail: format!("created a sub-task of {} for role {role}", run.ctx.task_id),
                target: id,
                result: created,
            })
        }
        action::REVIEW_SUBMIT => {
            let verdict: subjects::goals::ReviewVerdict = serde_json::from_value(args).map_err(|e| {
                Failure::bad(format!(
                    "the args of {name} are not a verdict {{task_id, score, approve, issues, summary}}: {e}"
                ))
            })?;
            let target = Some(verdict.task_id.to_string());
            if !(1..=10).contains(&verdict.score) {
                return Err(Failure::bad(format!(
                    "the score of {name} must be from 1 to 10, not {}",
                    verdict.score
                ))
                .target(target));
            }
            let detail = format!(
                "{} with score {}",
                if verdict.approve {
                    "approved"
                } else {
                    "rejected"
                },
                verdict.score
            );
            let result = backend
                .submit_review(&run.ctx, verdict)
                .await
                .map_err(|e| Failure::backend(name, e).target(target.clone()))?;
            Ok(Done {
                result,
                target,
                detail,
            })
        }
        action::PLAN_SUBMIT => {
            let plan: subjects::goals::Plan = serde_json::from_value(args).map_err(|e| {
                Failure::bad(format!(
                    "the args of {name} are not a plan {{summary, modules, subtasks: [{{key, title, description, role, acceptance, depends_on}}]}}: {e}"
                ))
            })?;
            let n = plan.subtasks.len();
            let result = backend
                .submit_plan(&run.ctx, plan)
                .await
                .map_err(|e| Failure::backend(name, e))?;
            Ok(Done {
                result,
                target: None,
                detail: format!("a plan of {n} sub-tasks, accepted"),
            })
        }
        other => Err(Failure {
            status: StatusCode::NOT_FOUND,
            sentence: format!("there is no action named {other}"),
            target: None,
            detail: None,
        }),
    }
}
