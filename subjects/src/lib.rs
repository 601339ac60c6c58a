//! Colony's wire contract.
//!
//! This crate owns every NATS subject, stream, consumer, KV bucket and header
//! name Colony uses, and every message type that crosses a process boundary:
//! between a client and ingress, between the outbox relay and the workers,
//! between a worker and the `agentd` inside its container. Nothing else in
//! the workspace spells a subject as a string literal.
//!
//! Message types carry a `v` field (the version of their shape). Their JSON
//! Schemas are generated into `subjects/schema/` by [`schema::all`]; a test
//! fails when the files drift from the types, so a client in any language can
//! publish to Colony from the schema alone.
//!
//! What this crate does not own: how a message is produced or consumed (that
//! is the services'), and the task state machine's rules (`store::state`);
//! only the names of the states live here because they are on the wire.

pub mod agent;
pub mod auth;
pub mod gateway;
pub mod goals;
pub mod messages;
#[cfg(feature = "nats")]
pub mod nats;
pub mod ops;
pub mod schedules;
pub mod schema;
pub mod status;
pub mod text;

pub use messages::*;

/// The tenant of a submission that names none (HTTP without
/// `X-Colony-Tenant`).
pub const DEFAULT_TENANT: &str = "default";

/// The version every message type in this crate is currently written with.
pub const VERSION: u32 = 1;

/// Serde default for every `v` field.
pub(crate) fn messages_v1() -> u32 {
    VERSION
}

/// The version of [`Event`]: 2 since it carries its tenant (and its subject
/// the tenant's token, see [`SUBJECT_LAYOUT`]).
pub const EVENT_VERSION: u32 = 2;

pub(crate) fn event_v() -> u32 {
    EVENT_VERSION
}

/// The layout of the subjects: 2 since every subject a tenant's client may
/// read (`colony.results.<tenant>.…`, `colony.events.<tenant>.…`) carries
/// the tenant right after its kind, so NATS permissions can give a client
/// only its own.
pub const SUBJECT_LAYOUT: u32 = 2;

/// Subject prefix shared by everything Colony publishes.
const ROOT: &str = "colony";

/// Subjects, by the stream they belong to.
pub mod subject {
    use super::ROOT;

    /// `colony.intake.<tenant>`: any NATS client submits a task here.
    pub fn intake(tenant: &str) -> String {
        format!("{ROOT}.intake.{tenant}")
    }
    /// `colony.intake.<tenant>.goal`: any NATS client submits a goal here.
    pub fn intake_goal(tenant: &str) -> String {
        format!("{ROOT}.intake.{tenant}.{INTAKE_GOAL}")
    }
    /// Every intake subject (the ingress consumer's filter).
    pub fn intake_all() -> String {
        format!("{ROOT}.intake.>")
    }
    /// `colony.work.<pool>`: the outbox relay publishes a queued task here.
    pub fn work(pool: &str) -> String {
        format!("{ROOT}.work.{pool}")
    }
    pub fn work_all() -> String {
        format!("{ROOT}.work.>")
    }
    /// `colony.events.<tenant>.<goal>.<task>.<kind>`; `goal` is [`NO_GOAL`]
    /// for a task without one. The tenant token comes first so that NATS
    /// permissions can give a tenant's client its own events and nothing
    /// else; the task token lets a per-task feed (SSE) be a plain subject
    /// filter, and the goal token lets a planner follow a whole goal.
    pub fn events(tenant: &str, goal: Option<uuid::Uuid>, task: uuid::Uuid, kind: &str) -> String {
        match goal {
            Some(g) => format!("{ROOT}.events.{tenant}.{g}.{task}.{kind}"),
            None => format!("{ROOT}.events.{tenant}.{NO_GOAL}.{task}.{kind}"),
        }
    }
    /// Every event of one task, whatever its goal.
    pub fn events_of_task(tenant: &str, task: uuid::Uuid) -> String {
        format!("{ROOT}.events.{tenant}.*.{task}.>")
    }
    /// Every event of one tenant.
    pub fn events_of_tenant(tenant: &str) -> String {
        format!("{ROOT}.events.{tenant}.>")
    }
    pub fn events_all() -> String {
        format!("{ROOT}.events.>")
    }
    /// `colony.results.<tenant>.<task>`: the final view of a task, once it
    /// is final.
    pub fn result(tenant: &str, task: uuid::Uuid) -> String {
        format!("{ROOT}.results.{tenant}.{task}")
    }
    /// Every result of one tenant.
    pub fn results_of_tenant(tenant: &str) -> String {
        format!("{ROOT}.results.{tenant}.>")
    }
    pub fn results_all() -> String {
        format!("{ROOT}.results.>")
    }
    /// `colony.ctl.<worker>.<command>` (core NATS, not a stream).
    pub fn ctl(worker: &str, command: &str) -> String {
        format!("{ROOT}.ctl.{worker}.{command}")
    }
    pub fn ctl_all(worker: &str) -> String {
        format!("{ROOT}.ctl.{worker}.>")
    }
    /// Every control subject.
    pub fn ctl_any() -> String {
        format!("{ROOT}.ctl.>")
    }
    /// Every control subject of every worker (for broadcasting a cancel).
    pub fn ctl_broadcast(command: &str) -> String {
        format!("{ROOT}.ctl.all.{command}")
    }
    /// Every dead letter of one source (`colony.dlq.<source>.>`); each is a
    /// message that was rejected, with [`super::header::REASON`] saying why,
    /// filed by tenant ([`dlq_of`]).
    pub fn dlq(source: &str) -> String {
        format!("{ROOT}.dlq.{source}.>")
    }
    /// `colony.dlq.<source>.<tenant>`: where a dead letter of `tenant` (or
    /// of no tenant one can tell, [`NO_TENANT`]) goes, so that a tenant's dead letters
    /// are found by subject, however many another tenant makes.
    pub fn dlq_of(source: &str, tenant: Option<&str>) -> String {
        let tenant = tenant.filter(|t| super::is_token(t)).unwrap_or(NO_TENANT);
        format!("{ROOT}.dlq.{source}.{tenant}")
    }
    /// Every dead letter of one tenant.
    pub fn dlq_of_tenant(tenant: &str) -> String {
        format!("{ROOT}.dlq.*.{tenant}")
    }
    pub fn dlq_all() -> String {
        format!("{ROOT}.dlq.>")
    }
    /// The source of a dead letter's subject.
    pub fn dlq_source(subject: &str) -> Option<&str> {
        subject.strip_prefix("colony.dlq.")?.split('.').next()
    }
    /// The tenant token a dead letter was filed under (`colony.dlq.<source>.
    /// <tenant>`; [`NO_TENANT`] for none), if its subject has one.
    pub fn dlq_filed_tenant(subject: &str) -> Option<&str> {
        subject.strip_prefix("colony.dlq.")?.split('.').nth(1)
    }
    /// The tenant a dead letter belongs to: its intake subject names it; a
    /// work or loop message carries it.
    pub fn dlq_tenant_of(original_subject: &str, payload: &[u8]) -> Option<String> {
        if let Some(t) =
            intake_goal_tenant(original_subject).or_else(|| intake_tenant(original_subject))
        {
            return Some(t.to_string());
        }
        serde_json::from_slice::<serde_json::Value>(payload)
            .ok()?
            .get("tenant")?
            .as_str()
            .filter(|t| super::is_token(t))
            .map(str::to_string)
    }
    /// The tenant token of a dead letter of no tenant one can tell: no
    /// tenant can be named so (a tenant is a [`super::is_token`]).
    pub const NO_TENANT: &str = "~";

    /// The goal token used in event subjects of a task that has no goal.
    /// `colony.events.<tenant>.<goal>.goal.<kind>`: what happened to a goal
    /// itself (the task token is [`GOAL_TOKEN`]).
    pub fn goal_events(tenant: &str, goal: uuid::Uuid, kind: &str) -> String {
        format!("{ROOT}.events.{tenant}.{goal}.{GOAL_TOKEN}.{kind}")
    }
    /// Whether an events subject is a goal's own event (not a task's).
    pub fn is_goal_event(subject: &str) -> bool {
        subject.split('.').nth(4) == Some(GOAL_TOKEN)
    }
    /// Everything about one goal: its own events and its tasks'.
    pub fn events_of_goal(tenant: &str, goal: uuid::Uuid) -> String {
        format!("{ROOT}.events.{tenant}.{goal}.>")
    }
    /// `colony.loop.<consumer>.<kind>`: work for a consumer of the loop.
    pub fn loop_msg(kind: crate::goals::LoopKind) -> String {
        format!("{ROOT}.loop.{}.{}", kind.consumer(), kind.as_str())
    }
    /// Everything one consumer of the loop handles (its filter).
    pub fn loop_of(consumer: &str) -> String {
        format!("{ROOT}.loop.{consumer}.>")
    }
    pub fn loop_all() -> String {
        format!("{ROOT}.loop.>")
    }
    /// `colony.notify.<tenant>.<kind>`: what a tenant's people must hear of.
    pub fn notify(tenant: &str, kind: crate::goals::NotifyKind) -> String {
        format!("{ROOT}.notify.{tenant}.{}", kind.as_str())
    }
    pub fn notify_of_tenant(tenant: &str) -> String {
        format!("{ROOT}.notify.{tenant}.>")
    }
    pub fn notify_all() -> String {
        format!("{ROOT}.notify.>")
    }

    /// The last token of a goal intake subject.
    pub const INTAKE_GOAL: &str = "goal";
    /// The task token of a goal's own events.
    pub const GOAL_TOKEN: &str = "goal";

    pub const NO_GOAL: &str = "_";

    /// Control commands.
    pub const CTL_CANCEL: &str = "cancel";
    /// Broadcast (on [`ctl_broadcast`]) with an employee id as the payload:
    /// every worker removes that employee's containers.
    pub const CTL_OFFBOARD: &str = "offboard";

    /// Event kinds (the last token of an event subject).
    pub const EVENT_STATE: &str = "state";
    pub const EVENT_OUTPUT: &str = "output";
    /// A step of an agent run (message delta, tool call, tool result, usage).
    pub const EVENT_AGENT: &str = "agent";

    /// DLQ sources.
    pub const DLQ_INTAKE: &str = "intake";
    pub const DLQ_WORK: &str = "work";
    pub const DLQ_LOOP: &str = "loop";
    pub const DLQ_SOURCES: [&str; 3] = [DLQ_INTAKE, DLQ_WORK, DLQ_LOOP];

    /// `colony.api.<tenant>.<call>`: a request–reply call of the NATS API
    /// (the `colony` service), answered on the caller's inbox.
    pub fn api(tenant: &str, call: &str) -> String {
        format!("{ROOT}.api.{tenant}.{call}")
    }
    /// One call of every tenant (the service's endpoint subject).
    pub fn api_any(call: &str) -> String {
        format!("{ROOT}.api.*.{call}")
    }
    /// Every call of one tenant (what its client may publish).
    pub fn api_of_tenant(tenant: &str) -> String {
        format!("{ROOT}.api.{tenant}.>")
    }
    /// The tenant an API call's subject names.
    pub fn api_tenant(subject: &str) -> Option<&str> {
        subject
            .strip_prefix("colony.api.")
            .and_then(|rest| rest.split('.').next())
            .filter(|t| super::is_token(t))
    }
    /// The calls of the NATS API: submit a task or a goal (the body of
    /// `POST /v1/tasks` or `POST /v1/goals`; answered with a
    /// [`crate::TaskAccepted`] or [`crate::goals::GoalAccepted`]), and read
    /// one (`{"id": …}`; answered with a [`crate::TaskView`] or
    /// [`crate::goals::GoalView`]), and cancel a task (`{"id": …}`). A refusal is an
    /// [`crate::ApiError`] with the `Nats-Service-Error` and
    /// `Nats-Service-Error-Code` headers.
    pub const API_SUBMIT_TASK: &str = "tasks.submit";
    pub const API_GET_TASK: &str = "tasks.get";
    pub const API_SUBMIT_GOAL: &str = "goals.submit";
    pub const API_GET_GOAL: &str = "goals.get";
    pub const API_CANCEL_TASK: &str = "tasks.cancel";
    /// The NATS service's name (`nats micro info colony`).
    pub const API_SERVICE: &str = "colony";
    /// The services protocol's discovery subject of `verb` (`PING`, `INFO`,
    /// `STATS`) for the service `name`.
    pub fn service_verb(verb: &str, name: &str) -> String {
        format!("$SRV.{verb}.{name}")
    }

    /// The last token of an intake subject: the tenant it submits for.
    pub fn intake_tenant(subject: &str) -> Option<&str> {
        subject
            .strip_prefix("colony.intake.")
            .filter(|t| super::is_token(t))
    }

    /// The tenant of a goal intake subject (`colony.intake.<tenant>.goal`).
    pub fn intake_goal_tenant(subject: &str) -> Option<&str> {
        subject
            .strip_prefix("colony.intake.")
            .and_then(|rest| rest.strip_suffix(".goal"))
            .filter(|t| super::is_token(t))
    }
}

/// JetStream key-value buckets.
pub mod kv {
    /// Container leases: key = container name, value = the worker driving
    /// it. A worker creates a lease before it drives a container, so two
    /// workers never drive one; a lease whose worker is gone expires.
    pub const LEASES: &str = "colony_leases";
    /// Worker registry: key = worker id, value = its
    /// [`crate::status::WorkerStatus`], refreshed while it lives.
    pub const WORKERS: &str = "colony_workers";
}

/// Stream names.
pub mod stream {
    pub const INTAKE: &str = "INTAKE";
    pub const WORK: &str = "WORK";
    pub const EVENTS: &str = "EVENTS";
    pub const RESULTS: &str = "RESULTS";
    pub const DLQ: &str = "DLQ";
    /// Work for the consumers of the loop (planner, reviewer).
    pub const LOOP: &str = "LOOP";
    /// Notifications, for the notifier and tenants' clients.
    pub const NOTIFY: &str = "NOTIFY";
    /// Every stream Colony keeps.
    pub const ALL: [&str; 7] = [INTAKE, WORK, EVENTS, RESULTS, DLQ, LOOP, NOTIFY];
}

/// What the metrics read of the streams.
pub mod metrics {
    use crate::stream::{LOOP, NOTIFY, WORK};

    /// Streams whose consumers' backlog age is the time of their oldest
    /// unacknowledged message, read by sequence; of the others (whose
    /// messages no process reads by sequence) it is the stream's oldest
    /// message's age.
    pub const BACKLOG_BY_MESSAGE: [&str; 3] = [WORK, LOOP, NOTIFY];
}

/// Durable consumer names.
pub mod consumer {
    /// Ingress's consumer on INTAKE.
    pub const INGRESS: &str = "ingress";
    /// The planners' consumer on LOOP.
    pub const PLANNER: &str = "planner";
    /// The reviewers' consumer on LOOP.
    pub const REVIEWER: &str = "reviewer";
    /// The notifier's consumer on NOTIFY (it posts to webhooks).
    pub const NOTIFIER: &str = "notifier";
    /// The workers of one pool share this consumer on WORK.
    pub fn worker(pool: &str) -> String {
        format!("worker-{pool}")
    }
}

/// Container labels: how a worker (and `ops/down`) recognises Colony's
/// containers and decides whether one may be adopted or reused.
pub mod label {
    pub const MANAGED: &str = "colony.managed";
    pub const ROLE: &str = "colony.role";
    pub const AGENT: &str = "colony.agent";
    pub const WORKER: &str = "colony.worker";
    pub const CONFIG_HASH: &str = "colony.config-hash";
    /// The employee a container (and its workspace volume) belongs to.
    pub const EMPLOYEE: &str = "colony.employee";
    /// The goal whose workspace volume a container mounts.
    pub const GOAL: &str = "colony.goal";
}

/// Header names.
pub mod header {
    /// JetStream's de-duplication id; every Colony publish sets it.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// Why a message was dead-lettered (one sentence).
    pub const REASON: &str = "Colony-Reason";
    /// The subject a dead-lettered message was first published to.
    pub const ORIGINAL_SUBJECT: &str = "Colony-Original-Subject";
    /// The task a message is about, when there is one.
    pub const TASK: &str = "Colony-Task";
}

/// A W3C `traceparent` whose trace id is the task's id, so that every
/// message about one task shares a trace.
pub fn traceparent(task: uuid::Uuid, span: u64) -> String {
    format!("00-{}-{span:016x}-01", task.simple())
}

#[cfg(test)]
mod dlq_subject_tests {
    use super::subject::*;

    #[test]
    fn a_dead_letter_goes_to_its_tenants_subject() {
        assert_eq!(dlq_of(DLQ_WORK, Some("acme")), "colony.dlq.work.acme");
        assert_eq!(dlq_of(DLQ_WORK, None), "colony.dlq.work.~");
        assert_eq!(dlq_of(DLQ_WORK, Some("a.b")), "colony.dlq.work.~");
        assert_eq!(dlq_source("colony.dlq.loop.acme"), Some("loop"));
        assert_eq!(dlq_filed_tenant("colony.dlq.loop.acme"), Some("acme"));
        assert_eq!(dlq_filed_tenant("colony.dlq.loop"), None);
        assert_eq!(
            dlq_tenant_of("colony.intake.acme.goal", b"garbage").as_deref(),
            Some("acme")
        );
        assert_eq!(
            dlq_tenant_of("colony.work.shell", br#"{"tenant":"globex"}"#).as_deref(),
            Some("globex")
        );
        assert_eq!(
            dlq_tenant_of("colony.work.shell", br#"{"tenant":"*"}"#),
            None
        );
        assert_eq!(dlq_tenant_of("colony.work.shell", b"not json"), None);
    }
}

/// True when `s` can stand as one subject token and as a tenant, pool or
/// role name: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        for ok in ["default", "shell", "a-b_c", "A1"] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", "*", ">", "ü", &"x".repeat(65)] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[test]
    fn intake_tenant_is_the_last_token() {
        assert_eq!(
            subject::intake_tenant(&subject::intake("acme")),
            Some("acme")
        );
        assert_eq!(subject::intake_tenant("colony.intake.a.b"), None);
        assert_eq!(subject::intake_tenant("colony.work.a"), None);
    }

    #[test]
    fn tenant_comes_first_in_what_a_tenant_may_read() {
        let t = uuid::Uuid::nil();
        assert_eq!(
            subject::events("acme", None, t, "state"),
            format!("colony.events.acme._.{t}.state")
        );
        assert_eq!(
            subject::events_of_task("acme", t),
            format!("colony.events.acme.*.{t}.>")
        );
        assert_eq!(subject::events_of_tenant("acme"), "colony.events.acme.>");
        assert_eq!(
            subject::result("acme", t),
            format!("colony.results.acme.{t}")
        );
        assert_eq!(subject::results_of_tenant("acme"), "colony.results.acme.>");
    }
}
