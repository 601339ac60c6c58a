//! Webhooks: a tenant's URLs for its notifications, each with a signing
//! secret sealed by the vault (shown once, at creation), and the log of
//! every delivery attempt.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::vault::{aad, normalize_url};
use crate::{Error, Result, Store};

/// Webhooks one tenant may have.
pub const MAX_PER_TENANT: i64 = 20;

/// A webhook, without its secret.
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct Webhook {
    pub id: Uuid,
    pub tenant: String,
    pub url: String,
    /// Notification kinds it receives; empty: all.
    pub kinds: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
}

/// A webhook as made: the secret is in this answer only.
#[derive(schemars::JsonSchema, Serialize, Clone)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The HMAC-SHA256 key of its `X-Colony-Signature`; shown once.
    pub secret: String,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook")
            .field("webhook", &self.webhook)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A webhook with its secret, for the notifier only.
#[derive(Clone)]
pub struct Target {
    pub webhook: Webhook,
    pub secret: Vec<u8>,
}

/// One delivery attempt.
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: Uuid,
    pub notification_id: Uuid,
    pub kind: String,
    pub attempt: i32,
    /// `delivered`, `retrying` or `failed` (for good).
    pub outcome: String,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: f64,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

/// A delivery attempt to record.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub webhook_id: Uuid,
    pub tenant: String,
    pub notification_id: Uuid,
    pub kind: String,
    pub attempt: u32,
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: f64,
}

const COLS: &str = "id, tenant, url, kinds, created_at";

fn row_to_webhook(r: &Row) -> Webhook {
    Webhook {
        id: r.get(0),
        tenant: r.get(1),
        url: r.get(2),
        kinds: r.get(3),
        created_at: r.get(4),
    }
}

impl Store {
    /// Make a webhook for `tenant`: `url` (http or https) gets the
    /// notifications of `kinds` (all when empty). The address check is the
    /// caller's (it knows which private ranges are open).
    pub async fn create_webhook(
        &self,
        tenant: &str,
        url: &str,
        kinds: &[String],
    ) -> Result<CreatedWebhook> {
        let vault = self.vault()?;
        let url = normalize_url(url)
            .filter(|u| u.len() <= 2048)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "url {url:?} is not an http:// or https:// URL with a host"
                ))
            })?;
        for k in kinds {
            if subjects::goals::NotifyKind::ALL
                .iter()
                .all(|n| n.as_str() != k)
            {
                return Err(Error::Invalid(format!(
                    "{k:?} is not a notification kind; use any of {}",
                    subjects::goals::NotifyKind::ALL
                        .map(|n| n.as_str())
                        .join(", ")
                )));
            }
        }
        let client = self.client().await?;
        let have: i64 = client
            .query_one(
                "SELECT count(*) FROM webhooks WHERE tenant = $1",
                &[&tenant],
            )
            .await?
            .get(0);
        if have >= MAX_PER_TENANT {
            return Err(Error::Conflict(format!(
                "tenant {tenant} has {have} webhooks, the most it may have; delete one first"
            )));
        }
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let id = Uuid::now_v7();
        let (nonce, sealed) = vault.seal(&aad(id, tenant), secret.as_bytes());
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO webhooks (id, tenant, url, kinds, nonce, ciphertext, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLS}"
                ),
                &[
                    &id,
                    &tenant,
                    &url,
                    &kinds,
                    &nonce,
                    &sealed,
                    &OffsetDateTime::now_utc(),
                ],
            )
            .await?;
        Ok(CreatedWebhook {
            webhook: row_to_webhook(&row),
            secret,
        })
    }

    pub async fn list_webhooks(&self, tenant: &str) -> Result<Vec<Webhook>> {
        let client = self.client().await?;
        Ok(client
            .query(
                &format!("SELECT {COLS} FROM webhooks WHERE tenant = $1 ORDER BY created_at"),
                &[&tenant],
            )
            .await?
            .iter()
            .map(row_to_webhook)
            .collect())
    }

    pub async fn delete_webhook(&self, tenant: &str, id: Uuid) -> Result<()> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM webhooks WHERE id = $1 AND tenant = $2",
                &[&id, &tenant],
            )
            .await?;
        if n == 0 {
            return Err(Error::Missing(format!("webhook {id} does not exist")));
        }
        Ok(())
    }

    /// `tenant`'s webhooks that want `kind`, with their secrets (a secret
    /// the vault cannot open is left out, logged).
    pub async fn webhook_targets(&self, tenant: &str, kind: &str) -> Result<Vec<Target>> {
        let vault = self.vault()?;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLS}, nonce, ciphertext FROM webhooks
                     WHERE tenant = $1 AND (kinds = '{{}}' OR $2 = ANY(kinds)) ORDER BY created_at"
                ),
                &[&tenant, &kind],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let webhook = row_to_webhook(r);
                let nonce: Vec<u8> = r.get(5);
                let sealed: Vec<u8> = r.get(6);
                match vault.open(&aad(webhook.id, &webhook.tenant), &nonce, &sealed) {
                    Some(secret) => Some(Target { webhook, secret }),
                    None => {
                        tracing::error!(webhook = %webhook.id, "the vault key does not open this webhook's secret; it is skipped");
                        None
                    }
                }
            })
            .collect())
    }

    /// Whether `notification` reached `webhook` already (a redelivered
    /// notification is not posted twice where it arrived).
    pub async fn delivered(&self, webhook: Uuid, notification: Uuid) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT 1 FROM webhook_deliveries WHERE webhook_id = $1 AND notification_id = $2 AND outcome = 'delivered'",
                &[&webhook, &notification],
            )
            .await?
            .is_some())
    }

    pub async fn record_delivery(&self, d: &NewDelivery) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO webhook_deliveries (webhook_id, tenant, notification_id, kind, attempt, outcome, status, error, duration_ms, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now()) ON CONFLICT DO NOTHING",
                &[
                    &d.webhook_id,
                    &d.tenant,
                    &d.notification_id,
                    &d.kind,
                    &(d.attempt as i32),
                    &d.outcome,
                    &d.status.map(i32::from),
                    &d.error.as_deref().map(crate::pg_text),
                    &d.duration_ms,
                ],
            )
            .await?;
        Ok(())
    }

    /// `tenant`'s webhook's deliveries, newest first.
    pub async fn deliveries(
        &self,
        tenant: &str,
        webhook: Uuid,
        limit: u32,
    ) -> Result<Option<Vec<Delivery>>> {
        let client = self.client().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM webhooks WHERE id = $1 AND tenant = $2",
                &[&webhook, &tenant],
            )
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = client
            .query(
                "SELECT id, webhook_id, notification_id, kind, attempt, outcome, status, error, duration_ms, at
                 FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2",
                &[&webhook, &i64::from(limit)],
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|r| Delivery {
                    id: r.get(0),
                    webhook_id: r.get(1),
                    notification_id: r.get(2),
                    kind: r.get(3),
                    attempt: r.get(4),
                    outcome: r.get(5),
                    status: r.get(6),
                    error: r.get(7),
                    duration_ms: r.get(8),
                    at: r.get(9),
                })
                .collect(),
        ))
    }
}
