//! The SQL that creates and moves tasks.
//!
//! Hot paths (create, claim, finish) are each one statement: a guarded
//! `UPDATE … WHERE state = <expected> AND …` in a CTE, with the history row
//! and the outbox rows inserted from its `RETURNING`, so a transition and its
//! announcements commit together or not at all, in one round trip. Rare paths
//! (takeover, cancel, dead-lettering) lock the row in a transaction and decide
//! in Rust. Every path asks [`state::check`] before it writes.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde_json::Value;
use subjects::goals::TaskKind;
use subjects::{subject, Event, EventBody, TaskState, TaskView, WorkItem};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::outbox::{insert_for_u, Columns};
use crate::{state, Error, OutboxMsg, Result, Store};

pub(crate) const COLS: &str =
    "id, tenant, role, goal_id, input, state::text, attempt, max_attempts, timeout_secs, \
                    result, error, created_at, updated_at, dispatch_id, worker_id, \
                    extract(epoch FROM now() - heartbeat_at)::float8, employee_id, kind::text";

/// A task as stored, with what only workers care about.
#[derive(Clone, Debug)]
pub struct TaskRow {
    pub view: TaskView,
    pub timeout_secs: u32,
    pub dispatch_id: Option<Uuid>,
    pub worker_id: Option<String>,
    /// Time since the holder's last heartbeat, by the database's clock.
    pub heartbeat_age: Option<Duration>,
}

pub(crate) fn row_to_task(r: &Row) -> Result<TaskRow> {
    let state: String = r.get(5);
    let state = TaskState::parse(&state)
        .ok_or_else(|| Error::Invalid(format!("task row has unknown state {state:?}")))?;
    let n = |i: usize| -> u32 { r.get::<_, i32>(i).max(0) as u32 };
    Ok(TaskRow {
        view: TaskView {
            v: subjects::VERSION,
            id: r.get(0),
            tenant: r.get(1),
            role: r.get(2),
            goal_id: r.get(3),
            input: r.get(4),
            state,
            attempt: n(6),
            max_attempts: n(7),
            result: r.get(9),
            error: r.get(10),
            created_at: r.get(11),
            updated_at: r.get(12),
            employee_id: r.get(16),
            kind: TaskKind::parse(r.get(17))
                .ok_or_else(|| Error::Invalid("task row has an unknown kind".to_string()))?,
        },
        timeout_secs: n(8),
        dispatch_id: r.get(13),
        worker_id: r.get(14),
        heartbeat_age: r
            .get::<_, Option<f64>>(15)
            .map(|s| Duration::from_secs_f64(s.max(0.0))),
    })
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("message types serialise")
}

/// The work message that queues `task`'s current attempt.
pub fn work_msg(
    task: &TaskView,
    timeout_secs: u32,
    dispatch_id: Uuid,
    at: OffsetDateTime,
) -> OutboxMsg {
    let item = WorkItem {
        v: subjects::VERSION,
        task_id: task.id,
        dispatch_id,
        attempt: task.attempt,
        role: task.role.clone(),
        tenant: task.tenant.clone(),
        goal_id: task.goal_id,
        input: task.input.clone(),
        timeout_secs,
        employee_id: task.employee_id,
    };
    OutboxMsg {
        id: dispatch_id,
        subject: subject::work(&task.role),
        payload: json(&item),
        task_id: Some(task.id),
        available_at: at,
    }
}

/// The event announcing a transition of `task` (already in its new state).
pub fn state_event(task: &TaskView, from: Option<TaskState>, reason: Option<String>) -> Event {
    Event {
        v: subjects::EVENT_VERSION,
        tenant: task.tenant.clone(),
        task_id: task.id,
        goal_id: task.goal_id,
        attempt: task.attempt,
        at: task.updated_at,
        body: EventBody::State {
            from,
            to: task.state,
            reason,
        },
    }
}

pub fn event_msg(ev: &Event) -> OutboxMsg {
    OutboxMsg::now(
        subject::events(&ev.tenant, ev.goal_id, ev.task_id, ev.body.kind()),
        json(ev),
        Some(ev.task_id),
    )
}

/// The final view of a task on `colony.results.<task>`.
pub fn result_msg(task: &TaskView) -> OutboxMsg {
    OutboxMsg::now(
        subject::result(&task.tenant, task.id),
        json(task),
        Some(task.id),
    )
}

/// A run's result as Postgres `jsonb` can hold it: strings (and keys) with
/// NUL are escaped (see [`subjects::text`]), and an object result lists them
/// under [`subjects::text::ESCAPED`]; a result of another type is wrapped as
/// `{"value": …, "escaped": […]}` when it had to change.
pub fn storable_result(mut result: Value) -> Value {
    let changed = subjects::text::escape_nul_in_json(&mut result);
    if changed.is_empty() {
        return result;
    }
    let list = Value::from(changed);
    match result {
        Value::Object(mut map) => {
            map.insert(subjects::text::ESCAPED.to_string(), list);
            Value::Object(map)
        }
        other => serde_json::json!({ "value": other, subjects::text::ESCAPED: list }),
    }
}

/// What ingress asks to create.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub tenant: String,
    pub role: String,
    pub goal_id: Option<Uuid>,
    pub input: Value,
    pub max_attempts: u32,
    pub timeout_secs: u32,
    pub idempotency_key: Option<String>,
    /// The employee doing the work; ingress checks that it is active and
    /// of `role` before it asks.
    pub employee_id: Option<Uuid>,
    /// The task whose run creates this one (`task.create`), and the bounds
    /// that keep an agent from multiplying work without end.
    pub parent: Option<ParentLink>,
}

/// A sub-task's parent and the bounds checked against it, under a lock on
/// the parent's row so that parallel creations cannot pass them together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentLink {
    pub task_id: Uuid,
    /// Levels below a task a person submitted (which is level 0).
    pub max_depth: u32,
    /// Sub-tasks one task may create.
    pub max_children: u32,
}

#[derive(Debug)]
pub struct Created {
    pub task: TaskView,
    /// False when the idempotency key matched an existing task.
    pub created: bool,
    /// To hand to the relay (empty when nothing was created).
    pub outbox: Vec<OutboxMsg>,
}

/// A task a worker holds.
#[derive(Clone, Debug)]
pub struct Running {
    pub task: TaskView,
    pub run_id: Uuid,
    pub worker_id: String,
    pub dispatch_id: Uuid,
    pub timeout_secs: u32,
}

#[derive(Debug)]
pub enum Claim {
    /// The task is this worker's now; `took_over` when a lost worker had it.
    Claimed { running: Running, took_over: bool },
    /// Another worker holds it and its heartbeat is fresh.
    Busy { heartbeat_age: Option<Duration> },
    /// The message is not the task's current dispatch, or the task has moved
    /// on (final, in review, …): ack it and do nothing.
    Stale { state: TaskState },
    /// The holder was lost and no attempts are left: the task is failed now.
    Exhausted {
        task: TaskView,
        outbox: Vec<OutboxMsg>,
    },
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Finish {
    Done {
        result: Value,
    },
    /// Queue the next attempt after `delay`.
    Retry {
        error: String,
        delay: Duration,
    },
    Fail {
        error: String,
    },
    /// Shutdown: give the attempt back uncounted; the caller Naks the message.
    HandBack,
}

#[derive(Debug)]
pub struct Finished {
    pub task: TaskView,
    pub outbox: Vec<OutboxMsg>,
}

pub(crate) async fn insert_history(
    c: &impl GenericClient,
    task: &TaskView,
    from: Option<TaskState>,
    reason: Option<&str>,
) -> Result<()> {
    c.execute(
        "INSERT INTO events (task_id, attempt, from_state, to_state, reason, at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &task.id,
            &(task.attempt as i32),
            &from.map(|s| s.as_str()),
            &task.state.as_str(),
            &reason,
            &task.updated_at,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn insert_outbox(c: &impl GenericClient, msgs: &[OutboxMsg]) -> Result<()> {
    let cols = Columns::of(msgs);
    c.execute(
        "INSERT INTO outbox (id, subject, payload, task_id, available_at, claimed_until)
         SELECT x.id, x.subject, x.payload, x.task_id, x.available_at, x.claimed_until
         FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[], $5::timestamptz[], $6::timestamptz[])
              AS x(id, subject, payload, task_id, available_at, claimed_until)",
        &[
            &cols.ids,
            &cols.subjects,
            &cols.payloads,
            &msgs.iter().map(|m| m.task_id).collect::<Vec<_>>(),
            &cols.available,
            &cols.claimed,
        ],
    )
    .await?;
    Ok(())
}

/// The announcements of a task reaching a final state.
/// Locks the parent's row and checks a new sub-task against it; returns the
/// sub-task's depth.
async fn check_parent(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &str,
    link: &ParentLink,
) -> Result<i32> {
    let row = tx
        .query_opt(
            "SELECT depth, (SELECT count(*) FROM tasks c WHERE c.parent_id = p.id)
             FROM tasks p WHERE p.id = $1 AND p.tenant = $2 FOR UPDATE",
            &[&link.task_id, &tenant],
        )
        .await?
        .ok_or(Error::NotFound(link.task_id))?;
    let (depth, children): (i32, i64) = (row.get(0), row.get(1));
    let depth = depth.saturating_add(1);
    if depth as u32 > link.max_depth {
        return Err(Error::Invalid(format!(
            "task {} is {} levels below the task a person submitted, and sub-tasks may go {} levels deep at most; do the work in this task instead",
            link.task_id,
            depth - 1,
            link.max_depth
        )));
    }
    if children >= i64::from(link.max_children) {
        return Err(Error::Invalid(format!(
            "task {} has created {children} sub-tasks, the most one task may create; finish with the ones it has",
            link.task_id
        )));
    }
    Ok(depth)
}

/// The view, dispatch id and outbox rows of `new` queued as task `id`.
fn queued_task(new: &NewTask, id: Uuid, now: OffsetDateTime) -> (TaskView, Uuid, Vec<OutboxMsg>) {
    let task = TaskView {
        v: subjects::VERSION,
        id,
        tenant: new.tenant.clone(),
        role: new.role.clone(),
        state: TaskState::Queued,
        attempt: 1,
        max_attempts: new.max_attempts,
        goal_id: new.goal_id,
        input: new.input.clone(),
        result: None,
        error: None,
        created_at: now,
        updated_at: now,
        employee_id: new.employee_id,
        kind: TaskKind::Work,
    };
    let dispatch = Uuid::now_v7();
    let outbox = vec![
        work_msg(&task, new.timeout_secs, dispatch, now),
        event_msg(&state_event(&task, None, None)),
    ];
    (task, dispatch, outbox)
}

/// Insert every `(new, id)` as a queued task (no parent, no goal) with
/// its first event and outbox rows, in one statement each, through `c`.
/// `None` in the answer: that task's idempotency key is taken.
pub(crate) async fn insert_queued_many(
    c: &impl GenericClient,
    items: &[(&NewTask, Uuid)],
) -> Result<Vec<Option<(TaskView, Vec<OutboxMsg>)>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let now = OffsetDateTime::now_utc();
    let mut built = Vec::with_capacity(items.len());
    let (mut ids, mut tenants, mut roles, mut inputs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut attempts, mut timeouts, mut keys, mut dispatches, mut employees) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (new, id) in items {
        if new.parent.is_some() || new.goal_id.is_some() {
            return Err(Error::Invalid(
                "a task with a parent or a goal is inserted on its own".into(),
            ));
        }
        let to_i32 = |n: u32| i32::try_from(n).ok().filter(|n| *n >= 1);
        let (Some(a), Some(t)) = (to_i32(new.max_attempts), to_i32(new.timeout_secs)) else {
            return Err(Error::Invalid(format!(
                "max_attempts and timeout_secs must be between 1 and {}",
                i32::MAX
            )));
        };
        let (task, dispatch, outbox) = queued_task(new, *id, now);
        ids.push(*id);
        tenants.push(new.tenant.clone());
        roles.push(new.role.clone());
        inputs.push(new.input.clone());
        attempts.push(a);
        timeouts.push(t);
        keys.push(new.idempotency_key.clone());
        dispatches.push(dispatch);
        employees.push(new.employee_id);
        built.push((task, outbox));
    }
    let stmt = c
        .prepare_cached(
            "WITH u AS (
                 INSERT INTO tasks (id, tenant, role, goal_id, input, state, attempt, max_attempts,
                                    timeout_secs, idempotency_key, dispatch_id, created_at, updated_at, employee_id,
                                    parent_id, depth)
                 SELECT x.id, x.tenant, x.role, NULL, x.input, 'queued', 1, x.max_attempts, x.timeout_secs,
                        x.key, x.dispatch, $10, $10, x.employee, NULL, 0
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int[], $6::int[], $7::text[],
                             $8::uuid[], $9::uuid[])
                      AS x(id, tenant, role, input, max_attempts, timeout_secs, key, dispatch, employee)
                 ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id),
             e AS (INSERT INTO events (task_id, attempt, from_state, to_state, at)
                   SELECT id, 1, NULL, 'queued', $10 FROM u)
             SELECT id FROM u",
        )
        .await?;
    let inserted: std::collections::HashSet<Uuid> = c
        .query(
            &stmt,
            &[
                &ids,
                &tenants,
                &roles,
                &inputs,
                &attempts,
                &timeouts,
                &keys,
                &dispatches,
                &employees,
                &now,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let out: Vec<Option<(TaskView, Vec<OutboxMsg>)>> = built
        .into_iter()
        .map(|(task, outbox)| inserted.contains(&task.id).then_some((task, outbox)))
        .collect();
    let msgs: Vec<OutboxMsg> = out
        .iter()
        .flatten()
        .flat_map(|(_, o)| o.iter().cloned())
        .collect();
    if !msgs.is_empty() {
        insert_outbox(c, &msgs).await?;
    }
    Ok(out)
}

/// Insert `new` as the queued task `id` (at `depth` below a person's
/// task) with its first event and its outbox rows (already written: the
/// rows are returned for the relay), through `c`: a connection or the
/// transaction of a larger change. `None`: its idempotency key is taken.
pub(crate) async fn insert_queued(
    c: &impl GenericClient,
    new: &NewTask,
    id: Uuid,
    depth: i32,
) -> Result<Option<(TaskView, Vec<OutboxMsg>)>> {
    // The schema does not check these (see sql/0002_lean_writes.sql).
    let limit = |n: u32, what: &str| match i32::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Error::Invalid(format!(
            "{what} must be between 1 and {}, not {n}",
            i32::MAX
        ))),
    };
    let max_attempts = limit(new.max_attempts, "max_attempts")?;
    let timeout_secs = limit(new.timeout_secs, "timeout_secs")?;
    let now = OffsetDateTime::now_utc();
    let (task, dispatch, outbox) = queued_task(new, id, now);
    let cols = Columns::of(&outbox);
    let sql = format!(
        "WITH u AS (
             INSERT INTO tasks (id, tenant, role, goal_id, input, state, attempt, max_attempts,
                                timeout_secs, idempotency_key, dispatch_id, created_at, updated_at, employee_id,
                                parent_id, depth)
             VALUES ($1, $2, $3, $4, $5, 'queued', 1, $6, $7, $8, $9, $10, $10, $16, $17, $18)
             ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id),
         e AS (INSERT INTO events (task_id, attempt, from_state, to_state, at)
               SELECT id, 1, NULL, 'queued', $10 FROM u),
         o AS ({})
         SELECT count(*) FROM u",
        insert_for_u(11)
    );
    let parent_id = new.parent.map(|p| p.task_id);
    let stmt = c.prepare_cached(&sql).await?;
    let inserted: i64 = c
        .query_one(
            &stmt,
            &[
                &task.id,
                &task.tenant,
                &task.role,
                &task.goal_id,
                &task.input,
                &max_attempts,
                &timeout_secs,
                &new.idempotency_key,
                &dispatch,
                &now,
                &cols.ids,
                &cols.subjects,
                &cols.payloads,
                &cols.available,
                &cols.claimed,
                &new.employee_id,
                &parent_id,
                &depth,
            ],
        )
        .await?
        .get(0);
    Ok((inserted == 1).then_some((task, outbox)))
}

fn final_msgs(task: &TaskView, from: TaskState, reason: Option<String>) -> Vec<OutboxMsg> {
    vec![
        event_msg(&state_event(task, Some(from), reason)),
        result_msg(task),
    ]
}

impl Store {
    /// Create a queued task with its work message, or return the task an
    /// earlier call with the same idempotency key created.
    pub async fn create_task(&self, new: &NewTask) -> Result<Created> {
        let mut client = self.client().await?;
        let inserted = match &new.parent {
            Some(link) => {
                let tx = client.transaction().await?;
                let depth = check_parent(&tx, &new.tenant, link).await?;
                let inserted = insert_queued(&tx, new, Uuid::now_v7(), depth).await?;
                tx.commit().await?;
                inserted
            }
            None => insert_queued(&client, new, Uuid::now_v7(), 0).await?,
        };
        if let Some((task, outbox)) = inserted {
            return Ok(Created {
                task,
                created: true,
                outbox,
            });
        }
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let row = client
            .query_opt(
                &format!("SELECT {COLS} FROM tasks WHERE tenant = $1 AND idempotency_key = $2"),
                &[&new.tenant, &key],
            )
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "idempotency key {key:?} is in use; retry the request"
                ))
            })?;
        let existing = row_to_task(&row)?.view;
        if existing.role != new.role
            || existing.input != new.input
            || existing.goal_id != new.goal_id
            || existing.employee_id != new.employee_id
        {
            return Err(Error::Conflict(format!(
                "idempotency key {key:?} was already used for a different task ({}); use a new key",
                existing.id
            )));
        }
        Ok(Created {
            task: existing,
            created: false,
            outbox: Vec::new(),
        })
    }

    pub async fn get_task(&self, id: Uuid) -> Result<Option<TaskRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {COLS} FROM tasks WHERE id = $1"))
            .await?;
        client
            .query_opt(&stmt, &[&id])
            .await?
            .map(|r| row_to_task(&r))
            .transpose()
    }

    /// The task `id` if it belongs to `tenant`; another tenant's task is
    /// `None`, exactly as a task that does not exist.
    pub async fn task_of(&self, tenant: &str, id: Uuid) -> Result<Option<TaskRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLS} FROM tasks WHERE id = $1 AND tenant = $2"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&id, &tenant])
            .await?
            .map(|r| row_to_task(&r))
            .transpose()
    }

    /// Take the task a work message names, if that message is still its
    /// current dispatch. A queued task is claimed in one statement; a running
    /// one whose holder's heartbeat is older than `stale_after` is taken over
    /// (that attempt counts as lost).
    pub async fn claim(
        &self,
        item: &WorkItem,
        worker_id: &str,
        stale_after: Duration,
    ) -> Result<Claim> {
        state::check(TaskState::Queued, TaskState::Running)?;
        let run_id = Uuid::now_v7();
        let now = OffsetDateTime::now_utc();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "WITH u AS (
                     UPDATE tasks SET state = 'running', worker_id = $3, heartbeat_at = now(), updated_at = $4
                     WHERE id = $1 AND dispatch_id = $2 AND state = 'queued'
                     RETURNING *),
                 r AS (INSERT INTO runs (id, task_id, attempt, worker_id, state, started_at)
                       SELECT $5, id, attempt, $3, 'running', $4 FROM u),
                 e AS (INSERT INTO events (task_id, attempt, from_state, to_state, at)
                       SELECT id, attempt, 'queued', 'running', $4 FROM u)
                 SELECT {} FROM u",
                COLS.replace("now() - heartbeat_at", "interval '0'")
            ))
            .await?;
        let rows = client
            .query(
                &stmt,
                &[&item.task_id, &item.dispatch_id, &worker_id, &now, &run_id],
            )
            .await?;
        drop(client);
        if let Some(row) = rows.first() {
            let t = row_to_task(row)?;
            return Ok(Claim::Claimed {
                running: Running {
                    task: t.view,
                    run_id,
                    worker_id: worker_id.to_string(),
                    dispatch_id: item.dispatch_id,
                    timeout_secs: t.timeout_secs,
                },
                took_over: false,
            });
        }
        self.claim_slow(item, worker_id, stale_after, run_id).await
    }

    async fn claim_slow(
        &self,
        item: &WorkItem,
        worker_id: &str,
        stale_after: Duration,
        run_id: Uuid,
    ) -> Result<Claim> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {COLS} FROM tasks WHERE id = $1 FOR UPDATE"),
                &[&item.task_id],
            )
            .await?
            .ok_or(Error::NotFound(item.task_id))?;
        let t = row_to_task(&row)?;
        if t.dispatch_id != Some(item.dispatch_id) || t.view.state != TaskState::Running {
            return Ok(Claim::Stale {
                state: t.view.state,
            });
        }
        let stale = t.heartbeat_age.is_none_or(|age| age >= stale_after);
        if !stale {
            return Ok(Claim::Busy {
                heartbeat_age: t.heartbeat_age,
            });
        }
        let lost = t.view.attempt;
        let holder = t.worker_id.clone().unwrap_or_default();
        let now = OffsetDateTime::now_utc();
        tx.execute(
            "UPDATE runs SET state = 'lost', finished_at = $3, error = $4
             WHERE task_id = $1 AND attempt = $2 AND state = 'running'",
            &[
                &item.task_id,
                &(lost as i32),
                &now,
                &format!("worker {holder} stopped sending heartbeats"),
            ],
        )
        .await?;
        let mut task = t.view.clone();
        task.updated_at = now;
        if lost >= task.max_attempts {
            state::check(TaskState::Running, TaskState::Failed)?;
            let reason = format!(
                "the worker running attempt {lost} of {} ({holder}) stopped responding and no attempts are left",
                task.max_attempts
            );
            task.state = TaskState::Failed;
            task.error = Some(reason.clone());
            tx.execute(
                "UPDATE tasks SET state = 'failed', error = $2, worker_id = NULL, heartbeat_at = NULL, updated_at = $3
                 WHERE id = $1",
                &[&task.id, &reason, &now],
            )
            .await?;
            insert_history(&tx, &task, Some(TaskState::Running), Some(&reason)).await?;
            let outbox = final_msgs(&task, TaskState::Running, Some(reason));
            insert_outbox(&tx, &outbox).await?;
            tx.commit().await?;
            return Ok(Claim::Exhausted { task, outbox });
        }
        state::check(TaskState::Running, TaskState::Running)?;
        task.attempt = lost + 1;
        tx.execute(
            "UPDATE tasks SET attempt = $2, worker_id = $3, heartbeat_at = now(), updated_at = $4 WHERE id = $1",
            &[&task.id, &(task.attempt as i32), &worker_id, &now],
        )
        .await?;
        tx.execute(
            "INSERT INTO runs (id, task_id, attempt, worker_id, state, started_at) VALUES ($1, $2, $3, $4, 'running', $5)",
            &[&run_id, &task.id, &(task.attempt as i32), &worker_id, &now],
        )
        .await?;
        let reason = format!(
            "worker {holder} stopped responding during attempt {lost}; taken over by {worker_id}"
        );
        insert_history(&tx, &task, Some(TaskState::Running), Some(&reason)).await?;
        tx.commit().await?;
        Ok(Claim::Claimed {
            running: Running {
                task,
                run_id,
                worker_id: worker_id.to_string(),
                dispatch_id: item.dispatch_id,
                timeout_secs: t.timeout_secs,
            },
            took_over: true,
        })
    }

    /// End the attempt `r` holds. `None` when the task is no longer this
    /// worker's attempt (cancelled meanwhile, or taken over after a lost
    /// heartbeat): nothing was written and the caller just lets go.
    pub async fn finish(&self, r: &Running, how: Finish) -> Result<Option<Finished>> {
        // A task of a goal that ends (done, or failed for good) moves its
        // goal along in the same transaction (see `graph`).
        if let (Some(goal), Finish::Done { .. } | Finish::Fail { .. }) = (r.task.goal_id, &how) {
            return self.finish_in_goal(r, goal, how).await;
        }
        let now = OffsetDateTime::now_utc();
        let mut task = r.task.clone();
        task.updated_at = now;
        let (run_state, bump, dispatch, outbox, reason);
        match how {
            Finish::Done { result } => {
                task.state = TaskState::Done;
                task.result = Some(storable_result(result));
                task.error = None;
                (run_state, bump, dispatch, reason) = ("succeeded", false, None, None);
                outbox = final_msgs(&task, TaskState::Running, None);
            }
            Finish::Fail { error } => {
                let error = crate::pg_text(&error).into_owned();
                task.state = TaskState::Failed;
                task.error = Some(error.clone());
                (run_state, bump, dispatch, reason) = ("failed", false, None, Some(error.clone()));
                outbox = final_msgs(&task, TaskState::Running, Some(error));
            }
            Finish::Retry { error, delay } => {
                let error = crate::pg_text(&error).into_owned();
                task.state = TaskState::Queued;
                task.error = Some(error.clone());
                task.attempt += 1;
                let d = Uuid::now_v7();
                (run_state, bump, dispatch, reason) =
                    ("failed", true, Some(d), Some(error.clone()));
                outbox = vec![
                    work_msg(&task, r.timeout_secs, d, now + delay),
                    event_msg(&state_event(&task, Some(TaskState::Running), Some(error))),
                ];
            }
            Finish::HandBack => {
                task.state = TaskState::Queued;
                let why = format!("handed back by {} on shutdown", r.worker_id);
                (run_state, bump, dispatch, reason) =
                    ("handed_back", false, None, Some(why.clone()));
                outbox = vec![event_msg(&state_event(
                    &task,
                    Some(TaskState::Running),
                    Some(why),
                ))];
            }
        }
        state::check(TaskState::Running, task.state)?;
        let cols = Columns::of(&outbox);
        let client = self.client().await?;
        let sql = format!(
            "WITH u AS (
                 UPDATE tasks SET state = $5::text::task_state, result = $6, error = $7, worker_id = NULL, heartbeat_at = NULL,
                        updated_at = $8, attempt = attempt + $9::int, dispatch_id = COALESCE($10, dispatch_id)
                 WHERE id = $1 AND state = 'running' AND attempt = $2 AND worker_id = $3
                 RETURNING id),
             r AS (UPDATE runs SET state = $11::text::run_state, error = $7, finished_at = $8
                   WHERE id = $4 AND EXISTS (SELECT 1 FROM u)),
             e AS (INSERT INTO events (task_id, attempt, from_state, to_state, reason, at)
                   SELECT id, $2, 'running', $5::text, $12, $8 FROM u),
             o AS ({})
             SELECT count(*) FROM u",
            insert_for_u(13)
        );
        let stmt = client.prepare_cached(&sql).await?;
        let n: i64 = client
            .query_one(
                &stmt,
                &[
                    &r.task.id,
                    &(r.task.attempt as i32),
                    &r.worker_id,
                    &r.run_id,
                    &task.state.as_str(),
                    &task.result,
                    &task.error,
                    &now,
                    &i32::from(bump),
                    &dispatch,
                    &run_state,
                    &reason,
                    &cols.ids,
                    &cols.subjects,
                    &cols.payloads,
                    &cols.available,
                    &cols.claimed,
                ],
            )
            .await?
            .get(0);
        Ok((n == 1).then_some(Finished { task, outbox }))
    }

    /// Keep the rows of the tasks this worker runs alive.
    pub async fn heartbeat(&self, worker_id: &str, tasks: &[Uuid]) -> Result<u64> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE tasks SET heartbeat_at = now()
                 WHERE id = ANY($1) AND worker_id = $2 AND state = 'running'",
            )
            .await?;
        Ok(client.execute(&stmt, &[&tasks, &worker_id]).await?)
    }

    /// Cancel `tenant`'s task `id` if it is not final (another tenant's task
    /// is [`Error::NotFound`]). Returns the cancelled task, its
    /// announcements, and the worker that was running it, if any.
    pub async fn cancel(
        &self,
        tenant: &str,
        id: Uuid,
        reason: &str,
    ) -> Result<(TaskView, Vec<OutboxMsg>, Option<String>)> {
        self.end_locked(id, Some(tenant), None, TaskState::Cancelled, reason)
            .await
    }

    /// A work message could not be processed (undecodable task, delivered
    /// too often): fail its task if the message is still its current dispatch.
    pub async fn fail_dead_lettered(
        &self,
        id: Uuid,
        dispatch_id: Uuid,
        reason: &str,
    ) -> Result<(TaskView, Vec<OutboxMsg>, Option<String>)> {
        self.end_locked(id, None, Some(dispatch_id), TaskState::Failed, reason)
            .await
    }

    async fn end_locked(
        &self,
        id: Uuid,
        tenant: Option<&str>,
        dispatch_id: Option<Uuid>,
        to: TaskState,
        reason: &str,
    ) -> Result<(TaskView, Vec<OutboxMsg>, Option<String>)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {COLS} FROM tasks WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?
            .ok_or(Error::NotFound(id))?;
        let t = row_to_task(&row)?;
        if tenant.is_some_and(|tenant| tenant != t.view.tenant) {
            return Err(Error::NotFound(id));
        }
        if let Some(d) = dispatch_id {
            if t.dispatch_id != Some(d) {
                return Err(Error::Conflict(format!(
                    "task {id} has moved on to another dispatch; nothing to fail"
                )));
            }
        }
        let from = t.view.state;
        state::check(from, to)?;
        let reason: &str = &crate::pg_text(reason);
        let now = OffsetDateTime::now_utc();
        let mut task = t.view;
        task.state = to;
        task.error = Some(reason.to_string());
        task.updated_at = now;
        tx.execute(
            "UPDATE tasks SET state = $2::text::task_state, error = $3, worker_id = NULL, heartbeat_at = NULL, updated_at = $4 WHERE id = $1",
            &[&id, &to.as_str(), &reason, &now],
        )
        .await?;
        let run_state = if to == TaskState::Cancelled {
            "cancelled"
        } else {
            "failed"
        };
        tx.execute(
            "UPDATE runs SET state = $2::text::run_state, error = $3, finished_at = $4 WHERE task_id = $1 AND state = 'running'",
            &[&id, &run_state, &reason, &now],
        )
        .await?;
        insert_history(&tx, &task, Some(from), Some(reason)).await?;
        let outbox = final_msgs(&task, from, Some(reason.to_string()));
        insert_outbox(&tx, &outbox).await?;
        tx.commit().await?;
        Ok((task, outbox, t.worker_id))
    }
}
