//! The NATS door: a durable consumer on `colony.intake.>`.
//!
//! A task goes to `colony.intake.<tenant>`, a goal to
//! `colony.intake.<tenant>.goal`; each is checked by the rules its HTTP
//! route uses. A message's idempotency key is its
//! `idempotency_key` field, else its `Nats-Msg-Id` header, so a publisher that
//! retries with the same message id gets one task. A message that cannot
//! become a task goes to `colony.dlq.intake.<tenant>` with the reason and is
//! terminated; a database outage Naks it for later.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures_util::StreamExt;
use relay::Relay;
use store::Store;
use subjects::{header, stream, subject};
use tokio_util::sync::CancellationToken;

use crate::{Error, Rules};

pub async fn run(
    rules: Rules,
    store: Store,
    nats: async_nats::Client,
    relay: Relay,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let js = jetstream::new(nats);
    let consumer: PullConsumer = js
        .get_stream(stream::INTAKE)
        .await
        .map_err(|e| Error::Nats {
            what: format!("stream {}", stream::INTAKE),
            source: Box::new(e),
        })?
        .create_consumer(subjects::nats::ingress_consumer())
        .await
        .map_err(|e| Error::Nats {
            what: "the intake consumer".into(),
            source: Box::new(e),
        })?;
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "intake pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                n = messages.next() => n,
            };
            match next {
                None => break,
                Some(Ok(msg)) => handle(&rules, &store, &js, &relay, msg).await,
                Some(Err(e)) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind;
                    match e.kind() {
                        MessagesErrorKind::MissingHeartbeat => {
                            tracing::debug!("intake heartbeat missed; continuing")
                        }
                        _ => {
                            tracing::warn!(error = %e, "intake stream error; re-subscribing");
                            break;
                        }
                    }
                }
            }
        }
    }
}

async fn handle(
    rules: &Rules,
    store: &Store,
    js: &jetstream::Context,
    relay: &Relay,
    msg: jetstream::Message,
) {
    let key = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(header::MSG_ID))
        .map(|v| v.as_str().to_string());
    // Without a key of its own, a message is its stream sequence: a
    // redelivered one (a lost acknowledgement) is the same task.
    let seq = msg
        .info()
        .map(|i| {
            format!(
                "{}:{}",
                i.stream_sequence,
                i.published.unix_timestamp_nanos()
            )
        })
        .ok();
    let seq_key = seq.map(|n| format!("intake:{n}"));
    if let Some(tenant) = subject::intake_goal_tenant(&msg.subject) {
        return goal(rules, store, js, relay, &msg, tenant, key.or(seq_key)).await;
    }
    let checked = match subject::intake_tenant(&msg.subject) {
        Some(tenant) => rules.parse(&msg.payload).and_then(|mut sub| {
            sub.idempotency_key = sub
                .idempotency_key
                .or(key)
                .or(seq_key);
            // The key is checked like any other part of the submission.
            rules.check_submission(sub, tenant, None)
        }),
        None => Err(admission::Rejection {
            status: 400,
            reason: format!(
                "subject {} does not name a valid tenant; publish to colony.intake.<tenant> (a task) or colony.intake.<tenant>.goal (a goal)",
                msg.subject
            ),
        }),
    };
    let new = match checked {
        Ok(n) => n,
        Err(r) => return dead_letter(js, &msg, &r.reason).await,
    };
    let tenant = new.tenant.clone();
    match admission::admit(store, rules, new, None).await {
        Ok(created) => {
            tracing::info!(task = %created.task.id, created = created.created, tenant = %tenant, "task submitted over NATS");
            relay.send(created.outbox);
            let _ = msg.ack().await;
        }
        Err(admission::Refused::Rejected(r)) => dead_letter(js, &msg, &r.reason).await,
        Err(admission::Refused::Store(e)) => {
            tracing::warn!(error = %e, "could not store an intake message; it will be redelivered");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
    }
}

/// A goal over NATS: the rules of `POST /v1/goals`. The body's key wins,
/// then the message id, then the stream sequence.
async fn goal(
    rules: &Rules,
    store: &Store,
    js: &jetstream::Context,
    relay: &Relay,
    msg: &jetstream::Message,
    tenant: &str,
    key: Option<String>,
) {
    let new = match rules.check_goal(&msg.payload, tenant, None) {
        Ok(mut new) => {
            new.idempotency_key = new.idempotency_key.or(key);
            new
        }
        Err(r) => return dead_letter(js, msg, &r.reason).await,
    };
    match store.create_goal(&new).await {
        Ok(created) => {
            tracing::info!(goal = %created.goal.id, created = created.created, tenant = %tenant, "goal submitted over NATS");
            relay.send(created.outbox);
            let _ = msg.ack().await;
        }
        Err(e @ (store::Error::Invalid(_) | store::Error::Conflict(_))) => {
            dead_letter(js, msg, &e.to_string()).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not store a goal from the intake; it will be redelivered");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
    }
}

async fn dead_letter(js: &jetstream::Context, msg: &jetstream::Message, reason: &str) {
    relay::dead_letter_message(js, subject::DLQ_INTAKE, msg, reason).await;
}
