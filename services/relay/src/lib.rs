//! The outbox relay: moves committed outbox rows onto JetStream.
//!
//! Two paths feed it. The fast path: a service that just committed a state
//! change hands the rows it wrote to [`Relay::send`]; the relay publishes them
//! at once (pipelined, each with `Nats-Msg-Id` = row id and a `traceparent`)
//! and deletes them once the server has acknowledged them. The safety net:
//! [`run_poller`] periodically claims rows nobody published — their writer
//! died, or they were written for later (a retry's backoff) — and publishes
//! those. A row published twice within the stream's duplicate window is
//! dropped by the server; consumers are idempotent past it.
//!
//! The relay owns no state of its own: Postgres holds every unpublished row.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::{jetstream, HeaderMap};
use futures_util::future::join_all;
use store::{OutboxMsg, Store};
use subjects::header;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Config {
    /// How often the poller looks for rows nobody published.
    pub poll_interval: Duration,
    /// Rows claimed per poll.
    pub batch: i64,
    /// How long the poller holds the rows it claimed.
    pub lease: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            batch: 500,
            lease: Duration::from_secs(30),
        }
    }
}

/// The fast path into the relay. Cheap to clone; the relay task ends when the
/// last handle is dropped, after publishing everything it was given.
#[derive(Clone)]
pub struct Relay {
    tx: mpsc::UnboundedSender<Vec<OutboxMsg>>,
}

impl Relay {
    /// Publish rows that were just committed. Rows not yet due (a retry's
    /// backoff) are left to the poller.
    pub fn send(&self, msgs: Vec<OutboxMsg>) {
        let due: Vec<_> = msgs.into_iter().filter(OutboxMsg::is_due).collect();
        if !due.is_empty() && self.tx.send(due).is_err() {
            tracing::warn!("relay stopped; rows stay in the outbox for the poller");
        }
    }
}

impl Relay {
    /// A handle that does not keep the relay running (for long-lived
    /// holders, such as a worker's gateway, that must not delay shutdown).
    pub fn downgrade(&self) -> WeakRelay {
        WeakRelay {
            tx: self.tx.downgrade(),
        }
    }
}

/// See [`Relay::downgrade`]. Once the relay has stopped, rows sent here stay
/// in the outbox for the next relay's poller.
#[derive(Clone)]
pub struct WeakRelay {
    tx: mpsc::WeakUnboundedSender<Vec<OutboxMsg>>,
}

impl WeakRelay {
    pub fn send(&self, msgs: Vec<OutboxMsg>) {
        match self.tx.upgrade() {
            Some(tx) => Relay { tx }.send(msgs),
            None => tracing::info!("relay stopped; rows stay in the outbox for the poller"),
        }
    }
}

/// Start the fast-path relay task.
pub fn spawn(store: Store, js: jetstream::Context) -> (Relay, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(fast_path(store, js, rx));
    (Relay { tx }, handle)
}

fn headers(m: &OutboxMsg) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::MSG_ID, m.id.to_string().as_str());
    if let Some(task) = m.task_id {
        h.insert(header::TASK, task.to_string().as_str());
        h.insert(
            header::TRACEPARENT,
            subjects::traceparent(task, m.id.as_u64_pair().1).as_str(),
        );
    }
    h
}

/// Publish `msgs` (pipelined) and return the ids the server acknowledged.
pub async fn publish(js: &jetstream::Context, msgs: &[OutboxMsg]) -> Vec<Uuid> {
    let mut pending = Vec::with_capacity(msgs.len());
    for m in msgs {
        match js
            .publish_with_headers(m.subject.clone(), headers(m), m.payload.clone().into())
            .await
        {
            Ok(ack) => pending.push((m.id, ack)),
            Err(e) => {
                tracing::warn!(id = %m.id, subject = %m.subject, error = %e, "publish failed; the poller retries")
            }
        }
    }
    let (ids, acks): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
    join_all(acks.into_iter().map(IntoFuture::into_future))
        .await
        .into_iter()
        .zip(ids)
        .filter_map(|(res, id)| match res {
            Ok(_) => Some(id),
            Err(e) => {
                tracing::warn!(%id, error = %e, "publish not acknowledged; the poller retries");
                None
            }
        })
        .collect()
}

async fn fast_path(
    store: Store,
    js: jetstream::Context,
    mut rx: mpsc::UnboundedReceiver<Vec<OutboxMsg>>,
) {
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Vec<Uuid>>();
    let deleter = tokio::spawn(delete_sent(store, done_rx));
    let mut inflight = tokio::task::JoinSet::new();
    while let Some(mut msgs) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            msgs.extend(more);
        }
        // Wait for the acks on another task so that the next batch is not
        // held up by this one's round trip.
        let js = js.clone();
        let done_tx = done_tx.clone();
        inflight.spawn(async move {
            let _ = done_tx.send(publish(&js, &msgs).await);
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    drop(done_tx);
    let _ = deleter.await;
}

/// How long published row ids are gathered before they are deleted.
const DELETE_WINDOW: Duration = Duration::from_millis(20);

async fn delete_sent(store: Store, mut rx: mpsc::UnboundedReceiver<Vec<Uuid>>) {
    while let Some(mut ids) = rx.recv().await {
        // Gather what else is acknowledged within a short window: one
        // delete for many rows costs about what one row does.
        let window = tokio::time::sleep(DELETE_WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                biased;
                more = rx.recv() => match more {
                    Some(more) => ids.extend(more),
                    None => break,
                },
                _ = &mut window => break,
            }
        }
        if let Err(e) = store.delete_sent(&ids).await {
            // Harmless: the rows are published again after their claim runs
            // out and the server drops the duplicates.
            tracing::warn!(rows = ids.len(), error = %e, "could not delete published outbox rows");
        }
    }
}

/// The safety net: publish rows whose writer did not (or that are due only
/// now), until `shutdown`.
pub async fn run_poller(
    cfg: Config,
    store: Store,
    js: jetstream::Context,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            let msgs = match store.claim_due(cfg.batch, cfg.lease).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox poll failed");
                    break;
                }
            };
            if msgs.is_empty() {
                break;
            }
            let ok = publish(&js, &msgs).await;
            tracing::debug!(claimed = msgs.len(), published = ok.len(), "outbox poll");
            if let Err(e) = store.delete_sent(&ok).await {
                tracing::warn!(error = %e, "could not delete published outbox rows");
            }
            if (msgs.len() as i64) < cfg.batch || ok.len() < msgs.len() {
                break;
            }
        }
    }
}

/// Publish a message that could not be processed to
/// `colony.dlq.<source>.<tenant>` (the tenant its subject or body names),
/// with the reason and its original subject in headers, and wait for the
/// server to store it.
pub async fn dead_letter(
    js: &jetstream::Context,
    source: &str,
    original_subject: &str,
    msg_id: &str,
    payload: bytes::Bytes,
    reason: &str,
) -> Result<(), String> {
    let mut h = HeaderMap::new();
    h.insert(header::MSG_ID, format!("dlq-{msg_id}").as_str());
    // A header value is one line.
    h.insert(header::REASON, reason.replace(['\r', '\n'], " ").as_str());
    h.insert(header::ORIGINAL_SUBJECT, original_subject);
    let tenant = subjects::subject::dlq_tenant_of(original_subject, &payload);
    js.publish_with_headers(
        subjects::subject::dlq_of(source, tenant.as_deref()),
        h,
        payload,
    )
    .await
    .map_err(|e| e.to_string())?
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Dead-letter a JetStream message that cannot be processed to
/// `colony.dlq.<source>.<tenant>`, then terminate it so it is not redelivered; if the
/// DLQ publish fails, Nak it so that nothing is lost.
pub async fn dead_letter_message(
    js: &jetstream::Context,
    source: &str,
    msg: &jetstream::Message,
    reason: &str,
) {
    tracing::warn!(subject = %msg.subject, %reason, source, "dead-lettering message");
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    let id = format!("{source}-{seq}");
    match dead_letter(js, source, &msg.subject, &id, msg.payload.clone(), reason).await {
        Ok(()) => {
            let _ = msg.ack_with(jetstream::AckKind::Term).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not dead-letter; the message will be redelivered");
            let _ = msg
                .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}
