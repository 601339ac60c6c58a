//! The notifier (`colony notifier`, part of `colony all`): every
//! notification on `colony.notify.<tenant>.<kind>` is posted to the
//! tenant's webhooks that want its kind.
//!
//! A delivery is `POST <url>` with the notification as its JSON body and
//! `X-Colony-Event: <kind>`, `X-Colony-Delivery: <notification id>`,
//! `X-Colony-Timestamp: <unix seconds>` and `X-Colony-Signature:
//! sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` under the
//! webhook's secret. A 2xx answer delivers it; anything else is retried
//! with exponential backoff (the notification's message is redelivered
//! later; webhooks it reached already are skipped) up to `max_attempts`,
//! then recorded as failed. Every attempt is a row a tenant can read.
//!
//! A webhook's host is resolved at each delivery and every address checked
//! like agent egress (no loopback, private, link-local or metadata address
//! unless the operator opened its range), and the request goes to the
//! address that was checked: a DNS answer that changes between the check
//! and the connection does not reach inside.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures_util::StreamExt;
use gateway::AddressPolicy;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use store::webhooks::{NewDelivery, Target};
use store::Store;
use subjects::goals::Notification;
use subjects::stream;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Config {
    /// Which private addresses webhooks may reach (the egress setting).
    pub addresses: AddressPolicy,
    /// Attempts per webhook and notification before it is given up.
    pub max_attempts: u32,
    pub timeout: Duration,
    /// The first retry's delay; each next one doubles, up to a minute.
    pub backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addresses: AddressPolicy::default(),
            max_attempts: 6,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("JetStream: {what}")]
    Nats {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sum = mac.finalize().into_bytes();
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Run until `shutdown`.
pub async fn run(
    cfg: Config,
    store: Store,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let js = jetstream::new(nats);
    let nats_err = |what: &str| {
        let what = what.to_string();
        move |e: Box<dyn std::error::Error + Send + Sync>| Error::Nats { what, source: e }
    };
    let consumer: PullConsumer = js
        .get_stream(stream::NOTIFY)
        .await
        .map_err(|e| nats_err("stream NOTIFY")(Box::new(e)))?
        .create_consumer(subjects::nats::notifier_consumer())
        .await
        .map_err(|e| nats_err("the notifier consumer")(Box::new(e)))?;
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "notifier pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                n = messages.next() => n,
            };
            match next {
                None => break,
                Some(Ok(msg)) => handle(&cfg, &store, msg).await,
                Some(Err(e)) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind;
                    match e.kind() {
                        MessagesErrorKind::MissingHeartbeat => {}
                        _ => {
                            tracing::warn!(error = %e, "notifier stream error; re-subscribing");
                            break;
                        }
                    }
                }
            }
        }
    }
}

async fn handle(cfg: &Config, store: &Store, msg: jetstream::Message) {
    let n: Notification = match serde_json::from_slice(&msg.payload) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "not a notification; dropped");
            let _ = msg.ack().await;
            return;
        }
    };
    let kind = n.kind.as_str();
    let targets = match store.webhook_targets(&n.tenant, kind).await {
        Ok(t) => t,
        // Without the vault no webhook can exist.
        Err(store::Error::NoVault) => {
            let _ = msg.ack().await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "notifier: cannot read the webhooks; retrying");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
            return;
        }
    };
    let attempt = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
    let mut again = false;
    for t in targets {
        match store.delivered(t.webhook.id, n.id).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "notifier: cannot read the delivery log; retrying");
                again = true;
                continue;
            }
        }
        // Slow webhooks must not get the message redelivered meanwhile.
        let _ = msg.ack_with(AckKind::Progress).await;
        let started = Instant::now();
        let result = deliver(cfg, &t, kind, &n, &msg.payload).await;
        let last = attempt >= cfg.max_attempts;
        let (outcome, status, error, retry) = match result {
            Ok(status) => ("delivered", Some(status), None, false),
            Err(Failure {
                status,
                error,
                retryable,
            }) => {
                let retry = retryable && !last;
                (
                    if retry { "retrying" } else { "failed" },
                    status,
                    Some(error),
                    retry,
                )
            }
        };
        again |= retry;
        let d = NewDelivery {
            webhook_id: t.webhook.id,
            tenant: n.tenant.clone(),
            notification_id: n.id,
            kind: kind.to_string(),
            attempt,
            outcome,
            status,
            error,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        if outcome != "delivered" {
            tracing::warn!(webhook = %t.webhook.id, attempt, outcome, error = ?d.error, "webhook delivery");
        }
        if let Err(e) = store.record_delivery(&d).await {
            tracing::warn!(error = %e, "notifier: cannot log a delivery");
        }
    }
    if again {
        let delay = cfg
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(6))
            .min(Duration::from_secs(60));
        let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
    } else {
        let _ = msg.double_ack().await;
    }
}

struct Failure {
    status: Option<u16>,
    error: String,
    /// A refused address will not change by waiting.
    retryable: bool,
}

/// A webhook URL's addresses, each checked against `policy`: the checked
/// addresses, or why the URL may not be used (one sentence). `retryable`
/// in the failure tells a resolver hiccup from a refusal.
async fn checked_addresses(
    policy: &AddressPolicy,
    url: &str,
) -> Result<(reqwest::Url, String, Vec<SocketAddr>), Failure> {
    let fail = |error: String, retryable: bool| Failure {
        status: None,
        error,
        retryable,
    };
    let url =
        reqwest::Url::parse(url).map_err(|e| fail(format!("the URL is not valid: {e}"), false))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail("a webhook URL is http:// or https://".into(), false));
    }
    let host = url
        .host_str()
        .ok_or_else(|| fail("the URL has no host".into(), false))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| fail(format!("cannot resolve {host}: {e}"), true))?
        .collect();
    if addrs.is_empty() {
        return Err(fail(format!("{host} resolves to no address"), true));
    }
    for a in &addrs {
        if let Err(np) = policy.check(a.ip()) {
            return Err(fail(
                format!(
                    "{host} resolves to {} ({}), which webhooks may not reach unless the operator opens its range with COLONY_EGRESS_ALLOW_PRIVATE",
                    a.ip(),
                    np.kind
                ),
                false,
            ));
        }
    }
    Ok((url, host, addrs))
}

/// Whether `url` may be a webhook under `policy`: `Err` with the sentence
/// of why not (for `POST /v1/webhooks`).
pub async fn check_url(policy: &AddressPolicy, url: &str) -> Result<(), String> {
    checked_addresses(policy, url)
        .await
        .map(|_| ())
        .map_err(|f| f.error)
}

/// Post `body` to `t`; the status of a 2xx answer.
async fn deliver(
    cfg: &Config,
    t: &Target,
    kind: &str,
    n: &Notification,
    body: &[u8],
) -> Result<u16, Failure> {
    let fail = |error: String, retryable: bool| Failure {
        status: None,
        error,
        retryable,
    };
    let (url, host, addrs) = checked_addresses(&cfg.addresses, &t.webhook.url)
        .await
        .map_err(|f| Failure {
            error: format!("refused: {}", f.error),
            ..f
        })?;
    let first = addrs[0];
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .resolve(&host, first)
        .build()
        .map_err(|e| fail(format!("cannot build the client: {e}"), true))?;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "colony-notifier")
        .header("x-colony-event", kind)
        .header("x-colony-delivery", n.id.to_string())
        .header("x-colony-timestamp", ts.to_string())
        .header("x-colony-signature", signature(&t.secret, ts, body))
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| fail(format!("the request failed: {e}"), true))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        Ok(status)
    } else {
        Err(Failure {
            status: Some(status),
            error: format!("answered {status}"),
            retryable: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let sig = signature(b"key", 1, b"{}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert_eq!(sig, signature(b"key", 1, b"{}"));
        assert_ne!(sig, signature(b"key", 2, b"{}"));
        assert_ne!(sig, signature(b"other", 1, b"{}"));
        // The crate against the well-known vector HMAC-SHA256("key", "The
        // quick brown fox jumps over the lazy dog").
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").expect("key");
        mac.update(b"The quick brown fox jumps over the lazy dog");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
