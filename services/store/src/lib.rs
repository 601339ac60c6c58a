//! Postgres, Colony's source of truth.
//!
//! This crate owns the connection pool, the numbered migrations under
//! `sql/`, the task state machine ([`state`]) and the SQL that moves tasks
//! ([`tasks`]) and fills and drains the outbox ([`outbox`]). Every state
//! change is one guarded statement that also writes its history row and the
//! outbox rows announcing it, so a change and its message cannot part.
//!
//! It keeps the API [`keys`] that open the HTTP API, hashed.
//!
//! It also keeps what AI employees leave behind: the employees themselves
//! ([`employees`]), their key/value [`memory`], the [`audit`] trail of
//! their actions, the [`usage`] of their model calls, and the tenant's
//! encrypted credentials ([`vault`]).
//!
//! It does not talk to NATS: the relay crate publishes what the outbox holds.

pub mod audit;
pub mod briefs;
pub mod dlq;
pub mod employees;
pub mod fleet;
pub mod goal_state;
pub mod goals;
mod graph;
pub mod keys;
pub mod memory;
pub mod migrate;
pub mod notes;
pub mod ops;
pub mod outbox;
pub mod patrol;
pub mod plans;
pub mod schedules;
pub mod scores;
pub mod state;
pub mod tasks;
pub mod usage;
pub mod vault;
pub mod verdicts;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use uuid::Uuid;

pub use audit::{AuditEntry, AuditFilter, NewAudit, Outcome};
pub use employees::{Employee, EmployeeState, NewEmployee};
pub use keys::{ApiKey, CreatedKey, Scope};
pub use outbox::OutboxMsg;
pub use state::IllegalTransition;
pub use usage::{NewUsage, UsageTotals};
pub use vault::{Credential, NewCredential, Vault};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {}", db_cause(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("no database connection: {}", pool_cause(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    Illegal(#[from] IllegalTransition),
    #[error("{0}")]
    IllegalGoal(#[from] goal_state::IllegalGoalTransition),
    /// Refused for good, with the HTTP status any door should answer (a
    /// verdict for a task the run was not given: 403).
    #[error("{reason}")]
    Refused { status: u16, reason: String },
    #[error("task {0} does not exist")]
    NotFound(Uuid),
    /// The request contradicts what is stored (e.g. an idempotency key reused
    /// for a different task).
    #[error("{0}")]
    Conflict(String),
    /// Stored data or configuration is not what this code expects, or the
    /// caller's input breaks a bound the store keeps (memory sizes, …).
    #[error("{0}")]
    Invalid(String),
    /// An employee, credential, … that the caller named does not exist;
    /// the sentence says which.
    #[error("{0}")]
    Missing(String),
    /// A credential operation without a vault key configured.
    #[error("the credential vault is not configured; start Colony with COLONY_VAULT_KEY set to a 32-byte key (64 hex characters or base64)")]
    NoVault,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `url` without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// What a database error was about: the server's message, SQLSTATE and
/// detail when the server refused a statement, else the client-side cause
/// chain (`db error` alone names nothing).
fn db_cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            out.push_str("; ");
            out.push_str(detail);
        }
        return out;
    }
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Why the pool gave no connection, with the server's reason when it
/// refused one.
fn pool_cause(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(db) => db_cause(db),
        other => other.to_string(),
    }
}

/// `s` as Postgres `text` can hold it (NUL escaped, see [`subjects::text`]).
pub(crate) fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    subjects::text::escape_nul(s)
}

/// A handle on the database: cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    vault: Option<Arc<Vault>>,
}

impl Store {
    /// Build a pool for `url` (`postgres://user@host:port/db`). Connections
    /// are opened lazily; [`Store::ping`] checks that the database answers.
    pub fn connect(url: &str, max_connections: usize) -> Result<Store> {
        Store::connect_with(url, None, max_connections)
    }

    /// As [`Store::connect`], with a password kept out of the URL.
    pub fn connect_with(
        url: &str,
        password: Option<&str>,
        max_connections: usize,
    ) -> Result<Store> {
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::Invalid(format!(
                "the database URL {} is not valid: {e}",
                redact_url(url)
            ))
        })?;
        if let Some(p) = password {
            pg.password(p);
        }
        let mgr = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(max_connections)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the connection pool: {e}")))?;
        Ok(Store { pool, vault: None })
    }

    /// This store, encrypting and decrypting credentials with `vault`.
    pub fn with_vault(mut self, vault: Vault) -> Store {
        self.vault = Some(Arc::new(vault));
        self
    }

    /// True when credentials can be stored and read.
    pub fn has_vault(&self) -> bool {
        self.vault.is_some()
    }

    pub async fn ping(&self) -> Result<()> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}
