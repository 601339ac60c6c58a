//! The consumer loop of the goal loop's consumers.
//!
//! The planner and the reviewer each share one durable consumer on the
//! LOOP stream (`colony.loop.<consumer>.>`) among all their processes. A
//! [`Handler`] turns one [`LoopMsg`] into a guarded transition in Postgres
//! (a redelivered message finds the transition made and changes nothing)
//! and returns the outbox rows it wrote, which go to the relay before the
//! message is acknowledged. A message that cannot be handled is retried
//! with a growing delay; one that cannot be read, or that fails
//! `max_deliver` times, goes to `colony.dlq.loop.<tenant>` with the reason.
//!
//! What this crate does not know: what a message means (the handlers').

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use store::OutboxMsg;
use subjects::goals::LoopMsg;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Handles one message of the loop.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, msg: LoopMsg) -> BoxFuture<'_, Result<Vec<OutboxMsg>, store::Error>>;
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The consumer (`subjects::consumer::PLANNER`, …).
    pub consumer: &'static str,
    pub ack_wait: Duration,
    /// Messages handled at once by this process.
    pub concurrency: usize,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
}

impl Config {
    pub fn new(consumer: &'static str) -> Config {
        Config {
            consumer,
            ack_wait: Duration::from_secs(30),
            concurrency: 16,
            max_deliver: 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the {consumer} consumer on LOOP: {source}")]
    Consumer {
        consumer: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Runs the consumer until `shutdown`; messages in hand are finished first.
pub async fn run(
    cfg: Config,
    js: jetstream::Context,
    relay: relay::Relay,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let consumer_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Consumer {
        consumer: cfg.consumer,
        source: e,
    };
    let stream = js
        .get_stream(subjects::stream::LOOP)
        .await
        .map_err(|e| consumer_err(e.into()))?;
    let consumer = stream
        .get_or_create_consumer(
            cfg.consumer,
            subjects::nats::loop_consumer(cfg.consumer, cfg.ack_wait),
        )
        .await
        .map_err(|e| consumer_err(e.into()))?;
    tracing::info!(consumer = cfg.consumer, "loop consumer started");
    let room = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let tracker = TaskTracker::new();
    let cfg = Arc::new(cfg);
    'pull: loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break 'pull,
            p = room.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'pull },
        };
        let mut permits = vec![first];
        while let Ok(p) = room.clone().try_acquire_owned() {
            permits.push(p);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(consumer = cfg.consumer, error = %e, "pull request failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'pull,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'pull,
                n = batch.next() => n,
            };
            match next {
                None => break,
                Some(Ok(msg)) => {
                    let Some(permit) = permits.pop() else {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    let (cfg, js, relay, handler) =
                        (cfg.clone(), js.clone(), relay.clone(), handler.clone());
                    tracker.spawn(async move {
                        handle(&cfg, &js, &relay, handler.as_ref(), msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(consumer = cfg.consumer, error = %e, "pull batch ended");
                    break;
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    tracing::info!(consumer = cfg.consumer, "loop consumer stopped");
    Ok(())
}

async fn handle(
    cfg: &Config,
    js: &jetstream::Context,
    relay: &relay::Relay,
    handler: &dyn Handler,
    msg: Message,
) {
    let loop_msg: LoopMsg = match serde_json::from_slice(&msg.payload) {
        Ok(m) => m,
        Err(e) => {
            let reason = format!("the loop message is not a LoopMsg ({e}); it was dead-lettered");
            relay::dead_letter_message(js, subjects::subject::DLQ_LOOP, &msg, &reason).await;
            return;
        }
    };
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let what = format!("{:?} of goal {}", loop_msg.kind, loop_msg.goal_id);
    match handler.handle(loop_msg).await {
        Ok(outbox) => {
            relay.send(outbox);
            if let Err(e) = msg.double_ack().await {
                tracing::debug!(consumer = cfg.consumer, error = %e, "ack not confirmed; a redelivery is harmless");
            }
        }
        Err(e) if delivered >= cfg.max_deliver => {
            let reason = format!(
                "the {} consumer could not handle {what} in {delivered} deliveries: {e}",
                cfg.consumer
            );
            tracing::error!(consumer = cfg.consumer, "{reason}");
            relay::dead_letter_message(js, subjects::subject::DLQ_LOOP, &msg, &reason).await;
        }
        Err(e) => {
            let delay = Duration::from_millis(200 * 2u64.pow((delivered as u32).min(7)));
            tracing::warn!(consumer = cfg.consumer, error = %e, delivered, ?delay, "could not handle {what}; retrying");
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}
