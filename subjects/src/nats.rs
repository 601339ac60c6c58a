//! JetStream streams and consumers, as configuration.
//!
//! [`ensure`] creates or updates every stream Colony uses; it is idempotent
//! and safe when several processes start at once. Retention follows the role
//! of each stream: INTAKE and WORK are work queues (a message lives until one
//! consumer acks it), EVENTS, RESULTS and DLQ are bounded by age.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::{consumer, stream, subject};

/// Knobs for the streams; the defaults suit one machine.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// 1 on one machine; 3 on a NATS cluster.
    pub replicas: usize,
    pub events_max_age: Duration,
    pub results_max_age: Duration,
    pub dlq_max_age: Duration,
    pub notify_max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped by the server.
    pub duplicate_window: Duration,
    /// Submissions waiting in one tenant's intake at most.
    pub intake_max_per_tenant: i64,
    /// Bytes waiting in the intake at most.
    pub intake_max_bytes: i64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age: Duration::from_secs(24 * 3600),
            results_max_age: Duration::from_secs(24 * 3600),
            dlq_max_age: Duration::from_secs(7 * 24 * 3600),
            notify_max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            intake_max_per_tenant: 100_000,
            intake_max_bytes: 1 << 30,
        }
    }
}

/// The configuration of every stream, in creation order.
pub fn streams(s: &StreamSettings) -> Vec<Config> {
    let base = |name: &str, subjects: Vec<String>| Config {
        name: name.to_string(),
        subjects,
        storage: StorageType::File,
        num_replicas: s.replicas,
        duplicate_window: s.duplicate_window,
        ..Default::default()
    };
    vec![
        Config {
            retention: RetentionPolicy::WorkQueue,
            // One tenant cannot fill the server: a full subject (a tenant's
            // intake) refuses new messages instead of growing.
            max_messages_per_subject: s.intake_max_per_tenant,
            max_bytes: s.intake_max_bytes,
            discard: DiscardPolicy::New,
            discard_new_per_subject: true,
            ..base(stream::INTAKE, vec![subject::intake_all()])
        },
        Config {
            retention: RetentionPolicy::WorkQueue,
            ..base(stream::WORK, vec![subject::work_all()])
        },
        Config {
            retention: RetentionPolicy::Limits,
            max_age: s.events_max_age,
            discard: DiscardPolicy::Old,
            ..base(stream::EVENTS, vec![subject::events_all()])
        },
        Config {
            retention: RetentionPolicy::Limits,
            max_age: s.results_max_age,
            max_messages_per_subject: 1,
            ..base(stream::RESULTS, vec![subject::results_all()])
        },
        Config {
            retention: RetentionPolicy::Limits,
            max_age: s.dlq_max_age,
            ..base(stream::DLQ, vec![subject::dlq_all()])
        },
        Config {
            retention: RetentionPolicy::WorkQueue,
            ..base(stream::LOOP, vec![subject::loop_all()])
        },
        Config {
            retention: RetentionPolicy::Limits,
            max_age: s.notify_max_age,
            discard: DiscardPolicy::Old,
            ..base(stream::NOTIFY, vec![subject::notify_all()])
        },
    ]
}

/// Create or update every stream.
pub async fn ensure(
    js: &jetstream::Context,
    s: &StreamSettings,
) -> Result<(), jetstream::context::CreateStreamError> {
    for cfg in streams(s) {
        js.create_or_update_stream(cfg).await?;
    }
    Ok(())
}

/// Ingress's durable consumer on INTAKE.
pub fn ingress_consumer() -> pull::Config {
    pull::Config {
        durable_name: Some(consumer::INGRESS.to_string()),
        filter_subject: subject::intake_all(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_deliver: 10,
        ..Default::default()
    }
}

/// The durable consumer every process of one loop consumer (`planner`,
/// `reviewer`) shares on LOOP. Handling is idempotent (each message leads to
/// a guarded transition), so a redelivery is harmless.
pub fn loop_consumer(name: &str, ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: subject::loop_of(name),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// The notifier's durable consumer on NOTIFY.
pub fn notifier_consumer() -> pull::Config {
    pull::Config {
        durable_name: Some(consumer::NOTIFIER.to_string()),
        filter_subject: subject::notify_all(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::New,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        ..Default::default()
    }
}

/// The durable consumer the workers of one pool share on WORK.
///
/// `max_deliver` is unbounded on purpose: a worker counts deliveries itself
/// (the server's max-deliveries advisory fires only while a pull is
/// outstanding) and dead-letters past its own limit, and the task's attempt
/// count in Postgres bounds how often work is really retried.
pub fn worker_consumer(pool: &str, ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(consumer::worker(pool)),
        filter_subject: subject::work(pool),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}
