//! One NATS subscription per watched subject, shared by every watcher.
//!
//! A thousand people watching one goal cost one subscription, not a
//! thousand: each watcher holds a receiver of a broadcast channel fed by the
//! subscription's task, which ends (and unsubscribes) once the last receiver
//! is gone. A watcher too slow for the channel is told how much it missed
//! ([`tokio::sync::broadcast::error::RecvError::Lagged`]) rather than
//! slowing the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, Mutex};

/// What watchers receive: a message's subject and payload.
#[derive(Clone, Debug)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
}

/// Messages buffered per subject for a slow watcher.
const BUFFER: usize = 1024;
/// How often an idle subscription checks whether anyone still listens.
const IDLE_CHECK: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Watchers {
    nats: async_nats::Client,
    subs: Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>,
}

impl Watchers {
    pub fn new(nats: async_nats::Client) -> Watchers {
        Watchers {
            nats,
            subs: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A receiver of every message on `subject` from now on.
    pub async fn watch(
        &self,
        subject: String,
    ) -> Result<broadcast::Receiver<Message>, async_nats::SubscribeError> {
        let mut subs = self.subs.lock().await;
        if let Some(tx) = subs.get(&subject) {
            return Ok(tx.subscribe());
        }
        let mut sub = self.nats.subscribe(subject.clone()).await?;
        let (tx, rx) = broadcast::channel(BUFFER);
        subs.insert(subject.clone(), tx.clone());
        let all = self.subs.clone();
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(IDLE_CHECK, sub.next()).await {
                    Ok(Some(m)) => {
                        let _ = tx.send(Message {
                            subject: m.subject.to_string(),
                            payload: m.payload,
                        });
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
                if tx.receiver_count() == 0 {
                    // Under the lock: a watcher subscribing now either got
                    // this sender (and counts) or will make a new one.
                    let mut subs = all.lock().await;
                    if tx.receiver_count() == 0 {
                        subs.remove(&subject);
                        break;
                    }
                }
            }
            // The subscription ended (NATS closed): forget this sender so the
            // next watcher subscribes afresh.
            let mut subs = all.lock().await;
            if subs.get(&subject).is_some_and(|t| t.same_channel(&tx)) {
                subs.remove(&subject);
            }
            drop(subs);
            let _ = sub.unsubscribe().await;
        });
        Ok(rx)
    }

    /// Subjects with a live subscription (for tests and metrics).
    pub async fn subjects(&self) -> usize {
        self.subs.lock().await.len()
    }
}
