//! Container leases in NATS KV, so that two workers never drive one
//! container.
//!
//! The bucket ([`subjects::kv::LEASES`]) holds one key per container (its
//! name) whose value is the id of the worker driving it. A worker takes the
//! lease before it creates or adopts a container and refreshes its leases
//! well within the bucket's `max_age`; the leases of a worker that died
//! expire with the bucket's age limit, and its containers become orphans that
//! any worker may remove. A worker that restarts with the same id finds its
//! own leases (or none, if they expired) and takes its containers back.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation},
};
use bytes::Bytes;

/// Who holds a container's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Nobody,
    Me,
    Other(String),
}

#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    worker_id: String,
    ttl: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("worker_id", &self.worker_id)
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("container {name} is leased to worker {holder}")]
    Held { name: String, holder: String },
    /// The lease bucket did not answer; `what` says what was asked.
    #[error("lease store: {what}")]
    Kv {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn kv(
    what: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> LeaseError {
    let what = what.into();
    move |source| LeaseError::Kv { what, source }
}

impl Leases {
    /// Open (or create) the lease bucket; leases live `ttl` after their last
    /// refresh.
    pub async fn open(
        js: &jetstream::Context,
        worker_id: &str,
        ttl: Duration,
    ) -> Result<Leases, LeaseError> {
        let kv = match js.get_key_value(subjects::kv::LEASES).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: subjects::kv::LEASES.to_string(),
                    description: "Colony container leases: container name → worker id".into(),
                    history: 1,
                    max_age: ttl,
                    ..Default::default()
                })
                .await
                .map_err(|e| kv("cannot create the lease bucket")(e.into()))?,
        };
        Ok(Leases {
            kv,
            worker_id: worker_id.to_string(),
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Who holds `name` right now.
    pub async fn holder(&self, name: &str) -> Result<Holder, LeaseError> {
        let entry = self
            .kv
            .entry(name)
            .await
            .map_err(|e| kv("a lease")(e.into()))?;
        Ok(match entry {
            Some(e) if e.operation == Operation::Put => {
                let who = String::from_utf8_lossy(&e.value).into_owned();
                if who == self.worker_id {
                    Holder::Me
                } else {
                    Holder::Other(who)
                }
            }
            _ => Holder::Nobody,
        })
    }

    /// Take the lease of `name`: create it, or renew it when it is already
    /// this worker's. Fails when another worker holds it.
    pub async fn take(&self, name: &str) -> Result<(), LeaseError> {
        let me = Bytes::from(self.worker_id.clone());
        match self.kv.create(name, me.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(kv("a new lease")(e.into())),
        }
        let entry = self
            .kv
            .entry(name)
            .await
            .map_err(|e| kv("a lease")(e.into()))?;
        match entry {
            Some(e) if e.operation == Operation::Put && e.value != me => Err(LeaseError::Held {
                name: name.to_string(),
                holder: String::from_utf8_lossy(&e.value).into_owned(),
            }),
            Some(e) => self
                .kv
                .update(name, me, e.revision)
                .await
                .map(|_| ())
                .map_err(|e| kv(format!("the lease of {name} changed hands"))(e.into())),
            None => Box::pin(self.take(name)).await,
        }
    }

    /// Keep the leases of `names` alive. Returns the names another worker
    /// holds now (this worker's lease ran out meanwhile): they are not this
    /// worker's to drive any more.
    pub async fn refresh(&self, names: &[String]) -> Vec<String> {
        let mut lost = Vec::new();
        for name in names {
            match self.take(name).await {
                Ok(()) => {}
                Err(LeaseError::Held { .. }) => lost.push(name.clone()),
                Err(e) => tracing::warn!(container = %name, error = %e, "lease refresh failed"),
            }
        }
        lost
    }

    /// Give up the lease of a container that is gone.
    pub async fn drop_lease(&self, name: &str) {
        if let Err(e) = self.kv.purge(name).await {
            tracing::debug!(container = %name, error = %e, "lease purge failed");
        }
    }
}
