//! One work message's life: decode, claim, run in a container, finish, ack.
//!
//! Every exit path either acks the message after Postgres says what happened,
//! Naks it for another try, or dead-letters it with the reason; none leaves a
//! task without a way forward.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use async_nats::HeaderMap;
use backon::{BackoffBuilder, ExponentialBuilder};
use runtime::agent::Progress;
use store::tasks::{Claim, Finish, Running};
use subjects::agent::{AgentFrame, AgentInput, AgentRequest, AgentSpec, RunErrorKind, RunRequest};
use subjects::{header, subject, Event, EventBody, TaskState, WorkItem};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Time given to agentd, beyond the task's own limit, to report a timeout
/// before the worker stops waiting.
const GRACE: Duration = Duration::from_secs(5);

pub(crate) async fn handle(shared: Arc<Shared>, msg: Message) {
    let item: WorkItem = match serde_json::from_slice(&msg.payload) {
        Ok(item) => item,
        Err(e) => {
            let reason =
                format!("the work message is not a valid WorkItem ({e}); it was dead-lettered");
            dead_letter(&shared, &msg, &reason).await;
            return;
        }
    };
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if delivered > shared.cfg.max_deliver {
        let reason = format!(
            "the work message for task {} was delivered {delivered} times without finishing; it was dead-lettered",
            item.task_id
        );
        match shared
            .store
            .fail_dead_lettered(item.task_id, item.dispatch_id, &reason)
            .await
        {
            Ok((_, outbox, _)) => shared.relay.send(outbox),
            Err(e) => {
                tracing::warn!(task = %item.task_id, error = %e, "could not fail a dead-lettered task")
            }
        }
        dead_letter(&shared, &msg, &reason).await;
        return;
    }

    let cfg = &shared.cfg;
    let claim = shared
        .store
        .claim(&item, &cfg.worker_id, cfg.stale_after)
        .await;
    let (running, took_over) = match claim {
        Ok(Claim::Claimed { running, took_over }) => (running, took_over),
        Ok(Claim::Stale { state }) => {
            tracing::debug!(task = %item.task_id, %state, "stale work message acknowledged");
            let _ = msg.ack().await;
            return;
        }
        Ok(Claim::Busy { heartbeat_age }) => {
            tracing::debug!(task = %item.task_id, ?heartbeat_age, "task is running elsewhere; checking again later");
            let _ = msg.ack_with(AckKind::Nak(Some(cfg.stale_after))).await;
            return;
        }
        Ok(Claim::Exhausted { task, outbox }) => {
            tracing::warn!(task = %task.id, error = ?task.error, "task failed: its worker was lost too often");
            shared.relay.send(outbox);
            let _ = msg.ack().await;
            return;
        }
        Err(store::Error::NotFound(id)) => {
            dead_letter(
                &shared,
                &msg,
                &format!("task {id} named by the work message does not exist"),
            )
            .await;
            return;
        }
        Err(e) => {
            tracing::warn!(task = %item.task_id, error = %e, "claim failed; the message will be redelivered");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    if took_over {
        tracing::info!(task = %running.task.id, attempt = running.task.attempt, "took over a task from a lost worker");
    }

    let inflight = crate::InFlight::enter(&shared, running.task.id, running.task.attempt);
    let cancel = inflight.cancel.clone();
    publish_event(
        &shared,
        &running,
        "running",
        EventBody::State {
            from: Some(if took_over {
                TaskState::Running
            } else {
                TaskState::Queued
            }),
            to: TaskState::Running,
            reason: None,
        },
    )
    .await;

    let outcome = {
        let work = execute(&shared, &running, &cancel);
        tokio::pin!(work);
        let mut progress = crate::progress_ticks(cfg.ack_wait / 3);
        loop {
            tokio::select! {
                out = &mut work => break out,
                _ = progress.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
            }
        }
    };
    drop(inflight);

    let finish = match outcome {
        Outcome::Done(result) => Finish::Done { result },
        Outcome::Invalid(error) => Finish::Fail { error },
        Outcome::Failed(error) => retry_or_fail(&shared, &running, error),
        Outcome::Cancelled => {
            // The row is already `cancelled`; the run was stopped.
            let _ = msg.ack().await;
            return;
        }
        Outcome::HandBack => Finish::HandBack,
    };
    let hand_back = matches!(finish, Finish::HandBack);
    match finish_with_retries(&shared, &running, finish).await {
        Ok(Some(done)) => {
            tracing::info!(task = %done.task.id, state = %done.task.state, attempt = running.task.attempt, "attempt finished");
            shared.relay.send(done.outbox);
        }
        Ok(None) => {
            tracing::info!(task = %running.task.id, "the task moved on while it ran (cancelled or taken over); result dropped");
        }
        Err(e) => {
            // The message is redelivered; once this worker's heartbeat is
            // stale the task is taken over and run again.
            tracing::error!(task = %running.task.id, error = %e, "could not record the attempt");
            let _ = msg.ack_with(AckKind::Nak(Some(cfg.stale_after))).await;
            return;
        }
    }
    if hand_back {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    } else {
        let _ = msg.ack().await;
    }
}

enum Outcome {
    Done(serde_json::Value),
    /// Retrying cannot help (the input does not fit the role).
    Invalid(String),
    /// This attempt failed; another may succeed.
    Failed(String),
    Cancelled,
    HandBack,
}

/// What a run needs beyond the container: for an AI employee's role, the
/// agent settings and the gateway context.
struct Plan {
    want: runtime::Want,
    agent: Option<(AgentSpec, gateway::RunContext)>,
}

/// How long the end of an agent run waits for its gateway to settle.
const GATEWAY_SETTLE: Duration = Duration::from_secs(2);

/// Tool output bytes given back to the model per call.
const MAX_TOOL_OUTPUT_BYTES: usize = 16 * 1024;

/// Output chunks and agent events held between the container's socket and
/// their publication.
const PROGRESS_QUEUE: usize = 256;

/// Event publications awaiting the server's acknowledgement at once.
const ACKS_IN_FLIGHT: usize = 64;

/// A run's result as stored: as it came when its JSON fits `max` bytes,
/// else `{"truncated": true, "bytes": <size>, "head": "<first bytes of the
/// JSON text>"}`, so that what a container returns never outgrows a row.
pub(crate) fn capped(output: serde_json::Value, max: usize) -> serde_json::Value {
    let text = match serde_json::to_string(&output) {
        Ok(t) if t.len() > max => t,
        _ => return output,
    };
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({
        "truncated": true,
        "bytes": text.len(),
        "head": &text[..cut],
    })
}

async fn plan(shared: &Shared, running: &Running) -> Result<Plan, Outcome> {
    let task = &running.task;
    if task.role == roles::SHELL {
        return Ok(Plan {
            want: runtime::Want {
                tenant: Some(task.tenant.clone()),
                ..runtime::Want::role(&task.role)
            },
            agent: None,
        });
    }
    let Some(role) = shared.cfg.roles.get(&task.role) else {
        return Err(Outcome::Invalid(format!(
            "this worker has no role {:?}; known roles: {}",
            task.role,
            shared.cfg.roles.known().join(", ")
        )));
    };
    if let Err(e) = serde_json::from_value::<AgentInput>(task.input.clone()) {
        return Err(Outcome::Invalid(format!(
            "the input of a {} task must be {{\"prompt\": \"...\"}} ({e})",
            role.name
        )));
    }
    let (mut quotas, mut memory) = (role.quotas, Default::default());
    let store_err =
        |e: store::Error| Outcome::Failed(format!("cannot load the run's context: {e}"));
    if let Some(e) = task.employee_id {
        let employee = shared.store.employee(e).await.map_err(store_err)?;
        let Some(employee) = employee else {
            return Err(Outcome::Invalid(format!("employee {e} does not exist")));
        };
        if employee.state == store::employees::EmployeeState::Offboarded {
            return Err(Outcome::Invalid(format!(
                "employee {} ({e}) was offboarded",
                employee.name
            )));
        }
        quotas = quotas.overridden_by(&employee.quotas);
        memory = shared.store.memory_list(e).await.map_err(store_err)?;
    }
    let ctx = gateway::RunContext {
        task_id: task.id,
        run_id: running.run_id,
        employee_id: task.employee_id,
        tenant: task.tenant.clone(),
        role: role.name.clone(),
        model: role.model.clone(),
        allowed_actions: role.allowed_actions.iter().cloned().collect(),
        egress: role.egress.clone(),
        quotas: gateway::Quotas {
            tokens_per_run: quotas.tokens_per_run,
            cost_usd_per_run: quotas.cost_usd_per_run,
            wall_secs_per_run: quotas.wall_secs_per_run.map(|s| s as f64),
            tokens_per_day: quotas.tokens_per_day,
            cost_usd_per_day: quotas.cost_usd_per_day,
        },
    };
    let spec = AgentSpec {
        model: role.model.clone(),
        system_prompt: role.system_prompt.clone(),
        tools: role.agent_tools(),
        max_turns: role.max_turns,
        max_tool_output_bytes: MAX_TOOL_OUTPUT_BYTES,
        memory,
        stream: true,
    };
    let mut want = role_want(role, &task.tenant, task.employee_id);
    // A goal's runs share its workspace: its work writes there, review and
    // delivery only read it. Planning needs none (what is done is in its
    // prompt), so planners' containers serve every goal.
    want.goal = match (task.goal_id, task.kind) {
        (Some(_), subjects::goals::TaskKind::Plan) | (None, _) => None,
        (Some(goal), kind) => Some(runtime::GoalMount {
            goal,
            read_only: kind != subjects::goals::TaskKind::Work,
        }),
    };
    Ok(Plan {
        want,
        agent: Some((spec, ctx)),
    })
}

/// The container a role's run needs (an employee's own, when it has one).
pub(crate) fn role_want(
    role: &roles::Role,
    tenant: &str,
    employee: Option<uuid::Uuid>,
) -> runtime::Want {
    runtime::Want {
        tenant: Some(tenant.to_string()),
        role: role.name.clone(),
        employee,
        image: role.image.clone(),
        limits: Some(runtime::Limits {
            memory_bytes: (role.limits.memory_mb as i64) << 20,
            nano_cpus: (role.limits.cpus * 1e9) as i64,
            pids: i64::from(role.limits.pids),
            ..runtime::Limits::default()
        }),
        role_max_active: Some(role.pool.max_active as usize),
        goal: None,
    }
}

async fn execute(shared: &Arc<Shared>, running: &Running, cancel: &CancellationToken) -> Outcome {
    let started = Instant::now();
    let plan = match plan(shared, running).await {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let container = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Outcome::Cancelled,
        _ = shared.hand_back.cancelled() => return Outcome::HandBack,
        c = shared.runtime.acquire(&plan.want) => match c {
            Ok(c) => c,
            Err(e @ runtime::Error::Offboarded(_)) => return Outcome::Invalid(e.to_string()),
            Err(e) => {
                return Outcome::Failed(format!(
                    "no container could be started: {}",
                    subjects::text::error_chain(&e)
                ))
            }
        },
    };
    let acquired = started.elapsed();
    // An agent run talks to the model, the actions and the allowlisted
    // hosts through a gateway on the container's gateway.sock, for this run.
    let (agent, meter) = match plan.agent {
        None => (None, None),
        Some((spec, ctx)) => match shared.gateway.serve(&container.gateway_socket) {
            Ok(gw) => {
                let meter = gw.begin_run(ctx);
                (Some(spec), Some((gw, meter)))
            }
            Err(e) => {
                shared.runtime.release(container).await;
                return Outcome::Failed(format!(
                    "the gateway could not start: {}",
                    subjects::text::error_chain(&e)
                ));
            }
        },
    };
    let exceeded = meter
        .as_ref()
        .map(|(_, m)| m.exceeded())
        .unwrap_or_default();
    let limit = Duration::from_secs(u64::from(running.timeout_secs));
    let req = AgentRequest::Run(RunRequest {
        v: subjects::VERSION,
        run_id: running.run_id.to_string(),
        role: running.task.role.clone(),
        input: running.task.input.clone(),
        timeout_ms: limit.as_millis() as u64,
        max_output_bytes: shared.cfg.max_output_bytes,
        // An employee's workspace is its own and survives between tasks;
        // a goal's is shared by the goal's runs.
        fresh_workspace: container.employee.is_none() && plan.want.goal.is_none(),
        agent,
    });
    // Bounded: a container that writes faster than the events are
    // published waits on its socket instead of filling the worker's memory.
    let (out_tx, out_rx) = mpsc::channel(PROGRESS_QUEUE);
    let publisher = tokio::spawn(publish_output(shared.clone(), running.clone(), out_rx));
    let call = runtime::agent::call(&container.agent_socket, &req, Some(&out_tx));
    // Dropping `call` closes the socket, which agentd takes as a cancel.
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        _ = shared.hand_back.cancelled() => Some(Err(Stopped::HandBack)),
        _ = exceeded.cancelled() => Some(Err(Stopped::Quota)),
        r = tokio::time::timeout(limit + GRACE, call) => Some(Ok(r)),
    };
    drop(out_tx);
    let _ = publisher.await;
    // The quota reason wins over whatever the run said after it was stopped.
    let quota = match meter {
        Some((gw, meter)) => {
            let reason = meter.exceeded_reason();
            // The run is over; a call still in flight to the provider (the
            // run was stopped mid-call) is metered in the background.
            match tokio::time::timeout(GATEWAY_SETTLE, meter.finish()).await {
                Ok(t) => {
                    tracing::debug!(task = %running.task.id, tokens = t.tokens(), cost_usd = t.cost_usd, calls = t.calls,
                        egress_in = t.egress_bytes_in, egress_out = t.egress_bytes_out, "agent run metered");
                    if let Err(e) = shared
                        .store
                        .record_run_egress(running.run_id, t.egress_bytes_in, t.egress_bytes_out)
                        .await
                    {
                        tracing::warn!(task = %running.task.id, error = %e, "the run's egress bytes were not recorded");
                    }
                }
                Err(_) => {
                    tracing::debug!(task = %running.task.id, "a model call was still in flight when the run ended")
                }
            }
            let _ = tokio::time::timeout(GATEWAY_SETTLE, gw.close()).await;
            reason
        }
        None => None,
    };
    tracing::debug!(task = %running.task.id, container = %container.name, source = ?container.source,
        acquire_ms = acquired.as_millis() as u64, total_ms = started.elapsed().as_millis() as u64, "run ended");
    // A run stopped from outside (cancelled, over quota, handed back) may
    // still be tearing down inside its container: the container goes, so
    // that nothing of this run meets the next task.
    let Some(result) = result else {
        shared.runtime.discard(&container).await;
        return Outcome::Cancelled;
    };
    if let Some(reason) = quota {
        // Retrying cannot help: the same limits apply to the next attempt.
        shared.runtime.discard(&container).await;
        return Outcome::Invalid(reason);
    }
    let Ok(result) = result else {
        shared.runtime.discard(&container).await;
        return Outcome::HandBack;
    };
    match result {
        Ok(Ok(AgentFrame::Result { output })) => {
            shared.runtime.release(container).await;
            Outcome::Done(capped(output, shared.cfg.max_result_bytes))
        }
        Ok(Ok(AgentFrame::Error { kind, reason })) => match kind {
            RunErrorKind::InvalidInput => {
                shared.runtime.release(container).await;
                Outcome::Invalid(reason)
            }
            RunErrorKind::Timeout | RunErrorKind::Gateway => {
                shared.runtime.release(container).await;
                Outcome::Failed(reason)
            }
            RunErrorKind::Internal => {
                shared.runtime.discard(&container).await;
                Outcome::Failed(format!("agentd failed: {reason}"))
            }
        },
        Ok(Ok(other)) => {
            shared.runtime.discard(&container).await;
            Outcome::Failed(format!("agentd answered a run with {other:?}"))
        }
        Ok(Err(e @ runtime::agent::AgentError::FrameTooLong { .. })) => {
            // The same input would cross the same limit again.
            shared.runtime.discard(&container).await;
            Outcome::Invalid(e.to_string())
        }
        Ok(Err(e)) => {
            let exit = shared.runtime.exit_after_break(&container).await;
            shared.runtime.discard(&container).await;
            match exit {
                Some(exit) if !exit.running => {
                    Outcome::Failed(format!("the container died mid-run: {exit}"))
                }
                None => Outcome::Failed("the container disappeared mid-run".to_string()),
                Some(_) => Outcome::Failed(format!("the run was lost: {e}")),
            }
        }
        Err(_) => {
            shared.runtime.discard(&container).await;
            Outcome::Failed(format!(
                "no result within {} s (the task's limit plus {} s); the container was removed",
                limit.as_secs(),
                GRACE.as_secs()
            ))
        }
    }
}

/// Why the worker stopped waiting for a run.
enum Stopped {
    HandBack,
    Quota,
}

fn retry_or_fail(shared: &Shared, running: &Running, error: String) -> Finish {
    let (attempt, max) = (running.task.attempt, running.task.max_attempts);
    if attempt < max {
        let delay = ExponentialBuilder::default()
            .with_min_delay(shared.cfg.retry_min_delay)
            .with_max_delay(shared.cfg.retry_max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(shared.cfg.retry_max_delay);
        tracing::info!(task = %running.task.id, attempt, max, ?delay, %error, "attempt failed; retrying");
        Finish::Retry { error, delay }
    } else {
        Finish::Fail {
            error: format!("{error} (attempt {attempt} of {max}; no attempts left)"),
        }
    }
}

async fn finish_with_retries(
    shared: &Shared,
    running: &Running,
    how: Finish,
) -> Result<Option<store::tasks::Finished>, store::Error> {
    use backon::Retryable;
    (|| shared.store.finish(running, how.clone()))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(5),
        )
        .when(|e| !matches!(e, store::Error::Illegal(_)))
        .await
}

fn event(running: &Running, body: EventBody) -> Event {
    Event {
        v: subjects::EVENT_VERSION,
        tenant: running.task.tenant.clone(),
        task_id: running.task.id,
        goal_id: running.task.goal_id,
        attempt: running.task.attempt,
        at: OffsetDateTime::now_utc(),
        body,
    }
}

fn event_headers(running: &Running, msg_id: String) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::MSG_ID, msg_id.as_str());
    h.insert(header::TASK, running.task.id.to_string().as_str());
    h.insert(
        header::TRACEPARENT,
        subjects::traceparent(running.task.id, running.run_id.as_u64_pair().1).as_str(),
    );
    h
}

/// Announce something about a run without waiting for the server's
/// acknowledgement: EVENTS stores it like any other message on its subjects,
/// but nothing here depends on it (the history of states is in Postgres; the
/// stream is the live feed).
async fn publish_event(shared: &Shared, running: &Running, id_suffix: &str, body: EventBody) {
    let ev = event(running, body);
    let subj = subject::events(&ev.tenant, ev.goal_id, ev.task_id, ev.body.kind());
    let headers = event_headers(running, format!("{}-{id_suffix}", running.run_id));
    let payload = serde_json::to_vec(&ev).expect("events serialise");
    if let Err(e) = shared
        .nats
        .publish_with_headers(subj, headers, payload.into())
        .await
    {
        tracing::debug!(task = %running.task.id, error = %e, "event not published");
    }
}

/// Publish a run's output chunks and agent events in order as events, with
/// at most [`ACKS_IN_FLIGHT`] awaiting the server.
async fn publish_output(shared: Arc<Shared>, running: Running, mut rx: mpsc::Receiver<Progress>) {
    let mut acks = std::collections::VecDeque::new();
    let mut seq = 0u64;
    while let Some(progress) = rx.recv().await {
        seq += 1;
        let body = match progress {
            Progress::Output(stream, data) => EventBody::Output { stream, data },
            Progress::Event(event) => EventBody::Agent { event },
        };
        let ev = event(&running, body);
        let subj = subject::events(&ev.tenant, ev.goal_id, ev.task_id, ev.body.kind());
        let headers = event_headers(&running, format!("{}-out-{seq}", running.run_id));
        let payload = serde_json::to_vec(&ev).expect("events serialise");
        match shared
            .js
            .publish_with_headers(subj, headers, payload.into())
            .await
        {
            Ok(ack) => {
                if acks.len() == ACKS_IN_FLIGHT {
                    if let Some(oldest) = acks.pop_front() {
                        let _ = oldest.await;
                    }
                }
                acks.push_back(ack)
            }
            Err(e) => {
                tracing::warn!(task = %running.task.id, error = %e, "output event not published")
            }
        }
    }
    for ack in acks {
        let _ = ack.await;
    }
}

/// Send a message that cannot be processed to `colony.dlq.work.<tenant>` with the
/// reason, then terminate it so it is not redelivered.
async fn dead_letter(shared: &Shared, msg: &Message, reason: &str) {
    relay::dead_letter_message(&shared.js, subject::DLQ_WORK, msg, reason).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_over_the_cap_keep_their_head_and_say_so() {
        let small = serde_json::json!({"message": "hi"});
        assert_eq!(capped(small.clone(), 100), small);
        let big = serde_json::json!({"message": "é".repeat(100)});
        let out = capped(big.clone(), 51);
        assert_eq!(out["truncated"], true);
        assert_eq!(
            out["bytes"],
            serde_json::to_string(&big).expect("json").len()
        );
        let head = out["head"].as_str().expect("head");
        assert!(head.len() <= 51 && head.starts_with("{\"message\":\"é"));
    }
}
