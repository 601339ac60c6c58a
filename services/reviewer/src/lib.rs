//! The reviewer consumer (`colony reviewer`, part of `colony all`).
//!
//! A reviewer employee judges a sub-task's work (with the `review.submit`
//! action, applied by the worker's gateway backend at once); this consumer
//! only decides when a review run is needed:
//!
//! - `review`: a sub-task's work awaits review: a review run of its
//!   reviewing role is asked for, given to an employee who did not do the
//!   work (one is hired when the tenant has none);
//! - `reviewed`: a review run ended: when its sub-task still awaits a
//!   verdict, another review run is asked for — or, past the limit, the
//!   sub-task waits for a person.
//!
//! Every step is a guarded transition in Postgres ([`store::verdicts`]).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use store::plans::LoopRoles;
use store::{OutboxMsg, Store};
use subjects::goals::{LoopKind, LoopMsg};
use tokio_util::sync::CancellationToken;

pub struct Config {
    pub roles: Arc<LoopRoles>,
    pub consumer: loopwork::Config,
}

impl Config {
    pub fn new(roles: Arc<LoopRoles>) -> Config {
        Config {
            roles,
            consumer: loopwork::Config::new(subjects::consumer::REVIEWER),
        }
    }
}

struct Reviewer {
    store: Store,
    roles: Arc<LoopRoles>,
}

impl loopwork::Handler for Reviewer {
    fn handle(&self, msg: LoopMsg) -> BoxFuture<'_, Result<Vec<OutboxMsg>, store::Error>> {
        Box::pin(async move {
            let Some(task) = msg.task_id else {
                return Err(store::Error::Invalid(format!(
                    "a {:?} message names no task",
                    msg.kind
                )));
            };
            let roles = self.roles.as_ref();
            match msg.kind {
                LoopKind::Review => self.store.dispatch_review(msg.goal_id, task, roles).await,
                LoopKind::Reviewed => self.store.review_ended(msg.goal_id, task, roles).await,
                other => Err(store::Error::Invalid(format!(
                    "the reviewer does not handle {other:?} messages"
                ))),
            }
        })
    }
}

/// Runs the reviewer consumer until `shutdown`.
pub async fn run(
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    relay: relay::Relay,
    shutdown: CancellationToken,
) -> Result<(), loopwork::Error> {
    let js = async_nats::jetstream::new(nats);
    let handler = Arc::new(Reviewer {
        store,
        roles: cfg.roles,
    });
    loopwork::run(cfg.consumer, js, relay, handler, shutdown).await
}
