//! The planner consumer (`colony planner`, part of `colony all`).
//!
//! Models judge, code decides: a planner employee writes a goal's plan
//! (with the `plan.submit` action, checked and written by the worker's
//! gateway backend) and its deliverable; this consumer only decides when
//! such a run is needed and what its end means:
//!
//! - `plan`: a new (or replanned) goal gets a planning run, given to the
//!   goal's planner employee (one is hired when the tenant has none);
//! - `planned`: a planning run ended without an accepted plan: that counts
//!   as a refusal, and the next run is asked for with the errors — or,
//!   past the limit, the goal waits for a person;
//! - `deliver`: every sub-task is done: a delivery run is asked for;
//! - `delivered`: the delivery run ended: the goal is done with its
//!   deliverable, or delivery is tried again.
//!
//! Every step is a guarded transition in Postgres ([`store::plans`]), so
//! any number of planner processes may run and a redelivered message
//! changes nothing.

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
            consumer: loopwork::Config::new(subjects::consumer::PLANNER),
        }
    }
}

struct Planner {
    store: Store,
    roles: Arc<LoopRoles>,
}

impl loopwork::Handler for Planner {
    fn handle(&self, msg: LoopMsg) -> BoxFuture<'_, Result<Vec<OutboxMsg>, store::Error>> {
        Box::pin(async move {
            let roles = self.roles.as_ref();
            let task = || {
                msg.task_id.ok_or_else(|| {
                    store::Error::Invalid(format!("a {:?} message names no task", msg.kind))
                })
            };
            match msg.kind {
                LoopKind::Plan => self.store.dispatch_planning(msg.goal_id, roles).await,
                LoopKind::Planned => self.store.planning_ended(msg.goal_id, task()?, roles).await,
                LoopKind::Deliver => self.store.dispatch_delivery(msg.goal_id, roles).await,
                LoopKind::Delivered => self.store.delivery_ended(msg.goal_id, task()?, roles).await,
                other => Err(store::Error::Invalid(format!(
                    "the planner does not handle {other:?} messages"
                ))),
            }
        })
    }
}

/// Runs the planner consumer until `shutdown`.
pub async fn run(
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    relay: relay::Relay,
    shutdown: CancellationToken,
) -> Result<(), loopwork::Error> {
    let js = async_nats::jetstream::new(nats);
    let handler = Arc::new(Planner {
        store,
        roles: cfg.roles,
    });
    loopwork::run(cfg.consumer, js, relay, handler, shutdown).await
}
