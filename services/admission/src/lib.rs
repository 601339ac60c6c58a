//! The one way work enters Colony.
//!
//! Three doors, one set of rules, the same sentences: the HTTP API (as a
//! 4xx body), the NATS intake (as the reason of a `colony.dlq.intake.<tenant>`
//! entry), and an agent's `task.create` action (as the action's refusal,
//! audited). [`Rules::check`] parses and checks a submission's bytes;
//! [`Rules::check_submission`] checks one already parsed (the agent door);
//! [`admit`] then asks the store about the employee it names and, for an
//! agent's sub-task, whether the parent's role may create that role, and
//! creates the task — a sub-task under a lock on its parent's row that
//! bounds its depth and its parent's fan-out.

pub mod goal;
pub mod plan;

use store::tasks::{Created, NewTask, ParentLink};
use store::{EmployeeState, Store};
use subjects::{is_token, ShellInput, TaskSubmission};
use uuid::Uuid;

/// Limits and defaults for submissions.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Roles that can be submitted to.
    pub roles: Vec<String>,
    pub max_body_bytes: usize,
    pub default_max_attempts: u32,
    pub default_timeout_secs: u32,
    /// Levels of sub-tasks below a task a person submitted.
    pub max_depth: u32,
    /// Sub-tasks one task may create.
    pub max_children: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            roles: vec!["shell".to_string()],
            max_body_bytes: 256 * 1024,
            default_max_attempts: 3,
            default_timeout_secs: 300,
            max_depth: 3,
            max_children: 50,
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

/// Why a submission was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// The submission is wrong or not allowed; retrying it will not help.
    Rejected(Rejection),
    /// The store could not answer; try again later.
    Store(store::Error),
}

impl From<Rejection> for Refused {
    fn from(r: Rejection) -> Refused {
        Refused::Rejected(r)
    }
}

/// The run creating a sub-task with `task.create`.
#[derive(Clone, Debug)]
pub struct Parent<'a> {
    pub task_id: Uuid,
    pub tenant: &'a str,
    /// The parent run's role (whose `may_create` decides).
    pub role: &'a roles::Role,
}

/// A submission from a JSON value (the agent door's action args), refused
/// with the sentence [`Rules::check`] gives for bytes that do not fit.
pub fn parse_value(v: serde_json::Value) -> Result<TaskSubmission, Rejection> {
    serde_json::from_value(v).map_err(|e| {
        bad(format!(
            "the submission is not a valid task submission: {e}"
        ))
    })
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
        let sub = self.parse(body)?;
        self.check_submission(sub, tenant, key)
    }

    /// A submission's bytes, parsed (refused when too large or not one).
    pub fn parse(&self, body: &[u8]) -> Result<TaskSubmission, Rejection> {
        if let Some(r) = self.too_large(body.len()) {
            return Err(r);
        }
        serde_json::from_slice(body).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "is not valid JSON"
            } else {
                "is not a valid task submission"
            };
            bad(format!("the submission {what}: {e}"))
        })
    }

    /// Check a parsed submission for `tenant` (what [`Rules::check`] does
    /// after parsing, and all the agent door has to check).
    pub fn check_submission(
        &self,
        sub: TaskSubmission,
        tenant: &str,
        key: Option<String>,
    ) -> Result<NewTask, Rejection> {
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
        if sub.goal_id.is_some() {
            return Err(bad(
                "goal_id is set by Colony on a goal's own tasks; submit a goal with POST /v1/goals instead"
                    .to_string(),
            ));
        }
        self.check_input(&sub.role, &sub.input)?;
        Self::check_nul(&sub.input)?;
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
            if k.is_empty() || k.len() > 200 || k.chars().any(char::is_control) {
                return Err(bad(
                    "the idempotency key must be 1-200 printable characters".to_string(),
                ));
            }
        }
        Ok(NewTask {
            tenant: tenant.to_string(),
            role: sub.role,
            goal_id: None,
            input: sub.input,
            max_attempts,
            timeout_secs,
            idempotency_key,
            employee_id: sub.employee_id,
            parent: None,
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

    /// `check_input`'s last word: no string anywhere in the input may hold
    /// NUL, which Postgres cannot store.
    fn check_nul(input: &serde_json::Value) -> Result<(), Rejection> {
        if subjects::text::json_has_nul(input) {
            return Err(bad(
                "the input contains a NUL character (\\u0000), which Colony cannot store; remove it or encode the data (e.g. base64)".to_string(),
            ));
        }
        Ok(())
    }
}

/// Admit `new`: check the employee it names and, for a sub-task, that the
/// parent's role may create its role; then create it (a sub-task within its
/// depth and its parent's fan-out, checked under a lock on the parent).
pub async fn admit(
    store: &Store,
    rules: &Rules,
    mut new: NewTask,
    parent: Option<Parent<'_>>,
) -> Result<Created, Refused> {
    if let Some(p) = &parent {
        if p.tenant != new.tenant {
            return Err(bad(format!(
                "a sub-task belongs to its parent's tenant {}, not {}",
                p.tenant, new.tenant
            ))
            .into());
        }
        if !p.role.may_create(&new.role) {
            let may = if p.role.may_create.is_empty() {
                "none".to_string()
            } else {
                p.role.may_create.join(", ")
            };
            return Err(Rejection {
                status: 403,
                reason: format!(
                    "role {} may not create tasks of role {}; the roles it may create (may_create): {may}",
                    p.role.name, new.role
                ),
            }
            .into());
        }
        new.parent = Some(ParentLink {
            task_id: p.task_id,
            max_depth: rules.max_depth,
            max_children: rules.max_children,
        });
    }
    match check_employee(store, &new).await {
        Ok(()) => {}
        Err(EmployeeRefusal::Refused(r)) => return Err(r.into()),
        Err(EmployeeRefusal::Store(e)) => return Err(Refused::Store(e)),
    }
    store.create_task(&new).await.map_err(|e| match e {
        // The bounds the store checks under the parent's lock, and an
        // idempotency key reused for another task: for good.
        store::Error::Invalid(reason) => Refused::Rejected(Rejection {
            status: 422,
            reason,
        }),
        store::Error::Conflict(reason) => Refused::Rejected(Rejection {
            status: 409,
            reason,
        }),
        store::Error::NotFound(id) => Refused::Rejected(Rejection {
            status: 404,
            reason: format!("the parent task {id} does not exist"),
        }),
        other => Refused::Store(other),
    })
}

/// Why a task naming an employee cannot be created.
#[derive(Debug)]
enum EmployeeRefusal {
    /// The employee is missing, not active, or of another role.
    Refused(Rejection),
    /// The store could not answer; try again later.
    Store(store::Error),
}

/// The employee `task` names (if any) is this tenant's, active, and of
/// the task's role: what [`admit`] checks before it creates a task, for a
/// caller that creates it itself (a schedule's fire).
pub async fn check_task_employee(store: &Store, task: &NewTask) -> Result<(), Refused> {
    check_employee(store, task).await.map_err(|e| match e {
        EmployeeRefusal::Refused(r) => Refused::Rejected(r),
        EmployeeRefusal::Store(e) => Refused::Store(e),
    })
}

/// The employee `task` names (if any) must exist in its tenant, be active,
/// and be of the task's role.
async fn check_employee(store: &Store, task: &NewTask) -> Result<(), EmployeeRefusal> {
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
                r#"{"role":"shell","input":{"command":"x"},"goal_id":"01a23270-9661-70a2-b66e-fee81d182265"}"#,
                400,
                "goal_id is set by Colony on a goal's own tasks",
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
            (
                r#"{"role":"shell","input":{"command":"x"},"idempotency_key":"a\nb"}"#,
                400,
                "the idempotency key must be 1-200 printable characters",
            ),
            (
                r#"{"role":"shell","input":{"command":"a\u0000b"}}"#,
                400,
                "the input contains a NUL character",
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
