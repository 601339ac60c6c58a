//! API keys: who may call the HTTP API, for which tenant, with which scope.
//!
//! A key is 32 random bytes shown once, at creation, as `colony_<64 hex>`;
//! only its SHA-256 is kept (a key is as random as a hash is wide, so a
//! slow password hash would add nothing), with a short prefix to recognise it
//! in a list. A key belongs to one tenant and has one [`Scope`]; an
//! operator key belongs to no tenant ([`OPERATOR_TENANT`]) and spans them
//! all. Revoking is final; `last_used_at` is refreshed at most once a minute
//! per key.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::employees::hex;
use crate::{Error, Result, Store};

/// What a key may do; each scope includes the ones before it.
#[derive(
    schemars::JsonSchema, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read the tenant's tasks, employees, memory and workers' public view.
    Read,
    /// Also submit and cancel tasks, hire, pause and resume employees.
    Submit,
    /// Also manage keys, credentials and offboarding, read the audit trail,
    /// and give employees quotas above their role's.
    Admin,
    /// Every tenant (chosen per request with `X-Colony-Tenant`), and the
    /// fleet's own views. Made only with `colony keys operator`.
    Operator,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Submit, Scope::Admin, Scope::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
            Scope::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tenant column of an operator key (no tenant name can be `*`).
pub const OPERATOR_TENANT: &str = "*";

/// A key as stored (never with its secret).
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    /// [`OPERATOR_TENANT`] for an operator key.
    pub tenant: String,
    pub name: String,
    pub scope: Scope,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A new key and its secret, which is not stored and cannot be shown again.
#[derive(Clone)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// SHA-256 of a key's text, as stored.
pub fn key_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.trim().as_bytes()).to_vec()
}

const PREFIX_CHARS: usize = 14;
const MAX_NAME_CHARS: usize = 100;
/// Keys a tenant may hold at once (unrevoked).
pub const MAX_KEYS_PER_TENANT: i64 = 1000;

const COLS: &str = "id, tenant, name, scope::text, prefix, created_at, last_used_at, revoked_at";

fn row_to_key(r: &Row) -> Result<ApiKey> {
    let scope: String = r.get(3);
    Ok(ApiKey {
        id: r.get(0),
        tenant: r.get(1),
        name: r.get(2),
        scope: Scope::parse(&scope)
            .ok_or_else(|| Error::Invalid(format!("key row has unknown scope {scope:?}")))?,
        prefix: r.get(4),
        created_at: r.get(5),
        last_used_at: r.get(6),
        revoked_at: r.get(7),
    })
}

fn no_such(id: Uuid) -> Error {
    Error::Missing(format!("key {id} does not exist"))
}

impl Store {
    /// Make a key for `tenant` (or, with [`Scope::Operator`], for every
    /// tenant: `tenant` is then ignored).
    pub async fn create_key(&self, tenant: &str, name: &str, scope: Scope) -> Result<CreatedKey> {
        let tenant = if scope == Scope::Operator {
            OPERATOR_TENANT
        } else {
            if !subjects::is_token(tenant) {
                return Err(Error::Invalid(format!(
                    "tenant {tenant:?} is not valid; use 1-64 letters, digits, '-' or '_'"
                )));
            }
            tenant
        };
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "a key's name is 1-{MAX_NAME_CHARS} printable characters, not {name:?}"
            )));
        }
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let secret = format!("colony_{}", hex(&raw));
        let prefix: String = secret.chars().take(PREFIX_CHARS).collect();
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO api_keys (id, tenant, name, scope, hash, prefix, created_at)
                     SELECT $1, $2, $3, $4::text::key_scope, $5, $6, now()
                     WHERE (SELECT count(*) FROM api_keys WHERE tenant = $2 AND revoked_at IS NULL) < $7
                     RETURNING {COLS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &tenant,
                    &name,
                    &scope.as_str(),
                    &key_hash(&secret),
                    &prefix,
                    &MAX_KEYS_PER_TENANT,
                ],
            )
            .await
            .map_err(|e| {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    Error::Conflict("a key with this hash exists already; try again".into())
                } else {
                    Error::Db(e)
                }
            })?;
        let Some(row) = row else {
            return Err(Error::Conflict(format!(
                "tenant {tenant:?} already holds {MAX_KEYS_PER_TENANT} keys; revoke some before making more"
            )));
        };
        Ok(CreatedKey {
            key: row_to_key(&row)?,
            secret,
        })
    }

    /// The unrevoked key whose text is `secret`.
    pub async fn key_by_secret(&self, secret: &str) -> Result<Option<ApiKey>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&key_hash(secret)])
            .await?
            .as_ref()
            .map(row_to_key)
            .transpose()
    }

    /// Notes that `id` was used now, unless that was noted less than a
    /// minute ago.
    pub async fn touch_key(&self, id: Uuid) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE api_keys SET last_used_at = now()
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            )
            .await?;
        client.execute(&stmt, &[&id]).await?;
        Ok(())
    }

    /// The tenant's keys, newest first, revoked ones included.
    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {COLS} FROM api_keys WHERE tenant = $1 ORDER BY created_at DESC, id DESC"
                ),
                &[&tenant],
            )
            .await?
            .iter()
            .map(row_to_key)
            .collect()
    }

    /// Revoke the tenant's key `id` (revoking it again changes nothing).
    pub async fn revoke_key(&self, tenant: &str, id: Uuid) -> Result<ApiKey> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
                     WHERE id = $1 AND tenant = $2 RETURNING {COLS}"
                ),
                &[&id, &tenant],
            )
            .await?
            .ok_or_else(|| no_such(id))?;
        row_to_key(&row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered_and_named() {
        assert!(Scope::Read < Scope::Submit && Scope::Submit < Scope::Admin);
        assert!(Scope::Admin < Scope::Operator);
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("root"), None);
    }

    #[test]
    fn hashes_ignore_surrounding_space_and_never_debug_the_secret() {
        assert_eq!(key_hash("colony_ab\n"), key_hash("colony_ab"));
        assert_ne!(key_hash("colony_ab"), key_hash("colony_ac"));
        let k = CreatedKey {
            key: ApiKey {
                id: Uuid::nil(),
                tenant: "t".into(),
                name: "n".into(),
                scope: Scope::Read,
                prefix: "colony_0123456".into(),
                created_at: OffsetDateTime::UNIX_EPOCH,
                last_used_at: None,
                revoked_at: None,
            },
            secret: "colony_supersecret".into(),
        };
        assert!(!format!("{k:?}").contains("supersecret"));
    }
}
