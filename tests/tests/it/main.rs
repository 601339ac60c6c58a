//! Cross-service tests on real NATS, Postgres and Docker (see the harness in
//! `colony_tests`). One binary, so the workspace links once.

mod agents;
mod dashboard;
mod dlq;
mod employees;
mod failures;
mod flow;
mod goals;
mod hostile;
mod input;
mod metrics;
mod natsapi;
mod natsauth;
mod notify;
mod openapi;
mod patrol;
mod pool;
mod sandbox;
mod schedules;
mod schema;
mod subtasks;
mod tenancy;
