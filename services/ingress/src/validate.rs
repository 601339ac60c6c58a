//! Turning a submission into a task to create, or a one-sentence refusal.
//!
//! The same checks, and the same sentences, serve the HTTP API (as a 4xx
//! body) and the NATS intake (as the DLQ reason header). [`Rules::check`]
//! needs nothing but the submission; [`check_employee`] then asks the store
//! about the employee a task names.

use store::tasks::NewTask;
use store::{EmployeeState, Store};
use subjects::{is_token, ShellInput, TaskSubmission};

/// Limits and defaults for submissions.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Roles that can be submitted to.
    pub roles: Vec<String>,
    pub max_body_bytes: usize,
    pub default_max_attempts: u32,
    pub default_timeout_secs: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            roles: vec!["shell".to_string()],
            max_body_bytes: 256 * 1024,
            default_max_attempts: 3,
            default_timeout_secs: 300,
        }
    }
}

/// A refusal: what was wrong and what to do, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

fn bad(reason: String) -> Rejection {
    Rejection {
        status: 400,
        reason,
    }
}

impl Rules {
    pub fn too_large(&self, len: usize) -> Option<Rejection> {
        (len > self.max_body_bytes).then(|| Rejection {
            status: 413,
            reason: format!(
                "the submission is {len} bytes, over the {}-byte limit; put large inputs in the workspace instead",
                self.max_body_bytes
            ),
        })
    }

    /// Parse and check a submission for `tenant`; `key` is an idempotency key
    /// from outside the body (HTTP header or `Nats-Msg-Id`).
    pub fn check(
        &self,
        body: &[u8],
        tenant: &str,
        key: Option<String>,
    ) -> Result<NewTask, Rejection> {
        if let Some(r) = self.too_large(body.len()) {
            return Err(r);
        }
        let sub: TaskSubmission = serde_json::from_slice(body).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "is not valid JSON"
            } else {
                "is not a valid task submission"
            };
            bad(format!("the submission {what}: {e}"))
        })?;
        if sub.v != subjects::VERSION {
            return Err(bad(format!(
                "submission version {} is not supported; send \"v\": {}",
                sub.v,
                subjects::VERSION
            )));
        }
        if !is_token(tenant) {
            return Err(bad(format!(
                "tenant {tenant:?} is not valid; use 1-64 letters, digits, '-' or '_'"
            )));
        }
        if !self.roles.iter().any(|r| r == &sub.role) {
            return Err(Rejection {
                status: 422,
                reason: format!(
                    "unknown role {:?}; known roles: {}",
                    sub.role,
                    self.roles.join(", ")
                ),
            });
        }
        self.check_input(&sub.role, &sub.input)?;
        let max_attempts = sub.max_attempts.unwrap_or(self.default_max_attempts);
        if !(1..=10).contains(&max_attempts) {
            return Err(bad(format!(
                "max_attempts is {max_attempts}; use a number from 1 to 10"
            )));
        }
        let timeout_secs = sub.timeout_secs.unwrap_or(self.default_timeout_secs);
        if !(1..=3600).contains(&timeout_secs) {
            return Err(bad(format!(
                "timeout_secs is {timeout_secs}; use a number from 1 to 3600"
            )));
        }
        let idempotency_key = key.or(sub.idempotency_key);
        if let Some(k) = &idempotency_key {
            if k.is_empty() || k.len() > 200 {
                return Err(bad(
                    "the idempotency key must be 1-200 characters long".to_string()
                ));
            }
        }
        Ok(NewTask {
            tenant: tenant.to_string(),
            role: sub.role,
            goal_id: sub.goal_id,
            input: sub.input,
            max_attempts,
            timeout_secs,
            idempotency_key,
            employee_id: sub.employee_id,
        })
    }

    fn check_input(&self, role: &str, input: &serde_json::Value) -> Result<(), Rejection> {
        if role == "shell" {
            let shell: ShellInput = serde_json::from_value(input.clone()).map_err(|e| {
                bad(format!(
                    "the input of role shell must be {{\"command\": \"<shell command>\"}} ({e})"
                ))
            })?;
            if shell.command.trim().is_empty() {
                return Err(bad(
                    "input.command is empty; give the shell command to run".to_string()
                ));
            }
            return Ok(());
        }
        // Every other role is an AI employee's: it takes a prompt.
        let agent: subjects::agent::AgentInput =
            serde_json::from_value(input.clone()).map_err(|e| {
                bad(format!(
                    "the input of role {role} must be {{\"prompt\": \"<what to do>\"}} ({e})"
                ))
            })?;
        if agent.prompt.trim().is_empty() {
            return Err(bad(
                "input.prompt is empty; say what the employee should do".to_string(),
            ));
        }
        Ok(())
    }
}

/// Why a task naming an employee cannot be created.
#[derive(Debug)]
pub enum EmployeeRefusal {
    /// The employee is missing, not active, or of another role.
    Refused(Rejection),
    /// The store could not answer; try again later.
    Store(store::Error),
}

/// The employee `task` names (if any) must exist in its tenant, be active,
/// and be of the task's role.
pub async fn check_employee(store: &Store, task: &NewTask) -> Result<(), EmployeeRefusal> {
    let Some(id) = task.employee_id else {
        return Ok(());
    };
    let employee = store
        .employee(id)
        .await
        .map_err(EmployeeRefusal::Store)?
        .filter(|e| e.tenant == task.tenant);
    let refuse =
        |status: u16, reason: String| Err(EmployeeRefusal::Refused(Rejection { status, reason }));
    match employee {
        None => refuse(
            422,
            format!("employee {id} does not exist; hire one with POST /v1/employees or leave employee_id out"),
        ),
        // A wrong role is for good; a pause is not: say the lasting problem.
        Some(e) if e.role != task.role => refuse(
            422,
            format!(
                "employee {id} is of role {}, not {}; submit with role {} or pick an employee of role {}",
                e.role, task.role, e.role, task.role
            ),
        ),
        Some(e) if e.state == EmployeeState::Paused => refuse(
            409,
            format!("employee {id} is paused; resume it with POST /v1/employees/{id}/resume or submit to another employee"),
        ),
        Some(e) if e.state == EmployeeState::Offboarded => refuse(
            409,
            format!("employee {id} is offboarded; submit to an active employee"),
        ),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<NewTask, Rejection> {
        Rules::default().check(body.as_bytes(), "default", None)
    }

    #[test]
    fn accepts_a_shell_task_with_defaults() {
        let t = check(r#"{"role":"shell","input":{"command":"echo hi"}}"#).expect("valid");
        assert_eq!(
            (t.role.as_str(), t.max_attempts, t.timeout_secs),
            ("shell", 3, 300)
        );
        assert_eq!(t.idempotency_key, None);
    }

    #[test]
    fn header_key_wins_over_body_key() {
        let body = r#"{"role":"shell","input":{"command":"x"},"idempotency_key":"body"}"#;
        let t = Rules::default()
            .check(body.as_bytes(), "default", Some("header".into()))
            .expect("valid");
        assert_eq!(t.idempotency_key.as_deref(), Some("header"));
    }

    #[test]
    fn refusals_say_what_is_wrong_in_one_sentence() {
        let cases: &[(&str, u16, &str)] = &[
            ("{not json", 400, "is not valid JSON"),
            (r#"{"role":"shell"}"#, 400, "missing field `input`"),
            (
                r#"{"role":"shell","input":{"command":"x"},"extra":1}"#,
                400,
                "unknown field `extra`",
            ),
            (
                r#"{"role":"wizard","input":{}}"#,
                422,
                "unknown role \"wizard\"; known roles: shell",
            ),
            (
                r#"{"role":"shell","input":{"cmd":"x"}}"#,
                400,
                "the input of role shell must be",
            ),
            (
                r#"{"role":"shell","input":{"command":"  "}}"#,
                400,
                "input.command is empty",
            ),
            (
                r#"{"role":"shell","input":{"command":"x"},"v":2}"#,
                400,
                "version 2",
            ),
            (
                r#"{"role":"shell","input":{"command":"x"},"max_attempts":0}"#,
                400,
                "max_attempts is 0",
            ),
            (
                r#"{"role":"shell","input":{"command":"x"},"timeout_secs":99999}"#,
                400,
                "timeout_secs is 99999",
            ),
            (
                r#"{"role":"shell","input":{"command":"x"},"idempotency_key":""}"#,
                400,
                "idempotency key",
            ),
        ];
        for &(body, status, needle) in cases {
            let r = check(body).expect_err(body);
            assert_eq!(r.status, status, "{body}: {}", r.reason);
            assert!(
                r.reason.contains(needle),
                "{body}: {:?} lacks {needle:?}",
                r.reason
            );
            assert!(!r.reason.contains('\n'), "{body}: more than one line");
        }
    }

    #[test]
    fn an_agent_role_takes_a_prompt() {
        let rules = Rules {
            roles: vec!["shell".into(), "executor".into()],
            ..Rules::default()
        };
        let ok = rules
            .check(
                br#"{"role":"executor","input":{"prompt":"tidy up"}}"#,
                "default",
                None,
            )
            .expect("a prompt is enough");
        assert_eq!(ok.role, "executor");
        for (body, needle) in [
            (
                r#"{"role":"executor","input":{"command":"ls"}}"#,
                "the input of role executor must be {\"prompt\"",
            ),
            (
                r#"{"role":"executor","input":{"prompt":" "}}"#,
                "input.prompt is empty",
            ),
        ] {
            let r = rules
                .check(body.as_bytes(), "default", None)
                .expect_err(body);
            assert_eq!(r.status, 400, "{body}");
            assert!(r.reason.contains(needle), "{body}: {}", r.reason);
        }
    }

    #[test]
    fn oversized_and_bad_tenant() {
        let rules = Rules {
            max_body_bytes: 10,
            ..Rules::default()
        };
        let r = rules
            .check(&[b' '; 11], "default", None)
            .expect_err("too large");
        assert_eq!(r.status, 413);
        assert!(r.reason.contains("11 bytes, over the 10-byte limit"));
        let r = Rules::default()
            .check(br#"{"role":"shell","input":{"command":"x"}}"#, "a.b", None)
            .expect_err("bad tenant");
        assert!(r.reason.starts_with("tenant \"a.b\" is not valid"));
    }
}
