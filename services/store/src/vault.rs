//! The credential vault: secrets the gateway attaches to an employee's
//! outgoing requests, so that they never enter a container.
//!
//! A credential is a header (`Authorization: Bearer …`) for every URL that
//! starts with its `url_prefix`. The value is sealed with AES-256-GCM under
//! a key from the configuration ([`Vault`]), with a fresh random nonce per
//! value and the credential's id and tenant as associated data, so the
//! database holds only ciphertext and a ciphertext cannot be moved to
//! another row. Nothing but [`Store::credentials_for_url`] ever decrypts;
//! the metadata ([`Credential`]) never carries the value.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{Error, Result, Store};

const NONCE_BYTES: usize = 12;
/// Longest credential value accepted.
pub const MAX_VALUE_BYTES: usize = 8192;

/// The key credentials are sealed with. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Vault {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(<key redacted>)")
    }
}

impl Vault {
    pub fn from_key(key: &[u8; 32]) -> Vault {
        Vault {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    /// A key written as 64 hex characters or as base64 (standard or URL
    /// alphabet, padded or not) of 32 bytes. The errors never repeat the key.
    pub fn parse(text: &str) -> Result<Vault> {
        let text = text.trim();
        let bytes = if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
                .collect::<std::result::Result<Vec<u8>, _>>()
                .map_err(|_| Error::Invalid("the vault key is not valid hex".into()))?;
            if bytes.len() != 32 {
                return Err(Error::Invalid(format!(
                    "the vault key is {} bytes of hex; it must be 32 bytes (64 hex characters), e.g. from `openssl rand -hex 32`",
                    bytes.len()
                )));
            }
            bytes
        } else {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| {
                    Error::Invalid(
                        "the vault key is neither 64 hex characters nor base64; generate one with `openssl rand -hex 32`".into(),
                    )
                })?;
            if bytes.len() != 32 {
                return Err(Error::Invalid(format!(
                    "the vault key decodes from base64 to {} bytes; it must be 32 bytes, e.g. from `openssl rand -base64 32`",
                    bytes.len()
                )));
            }
            bytes
        };
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(Vault::from_key(&key))
    }

    pub(crate) fn seal(&self, aad: &[u8], value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, Payload { msg: value, aad })
            .expect("AES-GCM encrypts any message under 64 GiB");
        (nonce.to_vec(), sealed)
    }

    pub(crate) fn open(&self, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if nonce.len() != NONCE_BYTES {
            return None;
        }
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }
}

pub(crate) fn aad(id: Uuid, tenant: &str) -> Vec<u8> {
    let mut a = id.as_bytes().to_vec();
    a.extend_from_slice(tenant.as_bytes());
    a
}

/// A credential's metadata: everything but the value.
#[derive(schemars::JsonSchema, Serialize, Clone, Debug, PartialEq)]
pub struct Credential {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub url_prefix: String,
    pub header: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
}

/// A credential to store. Its `Debug` leaves the value out.
#[derive(Clone)]
pub struct NewCredential {
    pub tenant: String,
    pub name: String,
    pub url_prefix: String,
    pub header: String,
    pub value: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential")
            .field("tenant", &self.tenant)
            .field("name", &self.name)
            .field("url_prefix", &self.url_prefix)
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// `url` with its scheme and authority in lower case, when it is an
/// `http(s)://host…` URL.
pub fn normalize_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some(format!(
        "{scheme}://{}{tail}",
        authority.to_ascii_lowercase()
    ))
}

/// True when `prefix` covers `url` (both normalised): `url` starts with it
/// and goes on at a boundary, so `https://api.example.com` covers
/// `https://api.example.com/x` but not `https://api.example.com.evil.org/`.
pub fn prefix_covers(prefix: &str, url: &str) -> bool {
    match url.strip_prefix(prefix) {
        None => false,
        Some(rest) => {
            rest.is_empty()
                || prefix.ends_with('/')
                || rest.starts_with('/')
                || rest.starts_with('?')
                || rest.starts_with('#')
        }
    }
}

fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 100
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check(new: &NewCredential) -> Result<String> {
    let bad = |s: String| Err(Error::Invalid(s));
    if new.name.is_empty()
        || new.name.len() > 64
        || !new
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return bad(format!(
            "credential name {:?} is not valid; use 1-64 letters, digits, '-', '_' or '.'",
            new.name
        ));
    }
    let Some(prefix) = normalize_url(&new.url_prefix).filter(|p| p.len() <= 2048) else {
        return bad(format!(
            "url_prefix {:?} is not an http:// or https:// URL with a host; give the start of the URLs the credential is for",
            new.url_prefix
        ));
    };
    if !is_header_name(&new.header) {
        return bad(format!(
            "header {:?} is not a valid HTTP header name; use e.g. Authorization",
            new.header
        ));
    }
    if new.value.is_empty()
        || new.value.len() > MAX_VALUE_BYTES
        || new
            .value
            .bytes()
            .any(|b| b == b'\r' || b == b'\n' || b == 0)
    {
        return bad(format!(
            "the credential value must be 1-{MAX_VALUE_BYTES} bytes without line breaks"
        ));
    }
    Ok(prefix)
}

const COLS: &str = "id, tenant, name, url_prefix, header, created_at";

fn row_to_credential(r: &Row) -> Credential {
    Credential {
        id: r.get(0),
        tenant: r.get(1),
        name: r.get(2),
        url_prefix: r.get(3),
        header: r.get(4),
        created_at: r.get(5),
    }
}

impl Store {
    pub(crate) fn vault(&self) -> Result<&Vault> {
        self.vault.as_deref().ok_or(Error::NoVault)
    }

    /// Seal and store a credential; its name is unique per tenant.
    pub async fn put_credential(&self, new: &NewCredential) -> Result<Credential> {
        let vault = self.vault()?;
        let prefix = check(new)?;
        let id = Uuid::now_v7();
        let (nonce, sealed) = vault.seal(&aad(id, &new.tenant), new.value.as_bytes());
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO credentials (id, tenant, name, url_prefix, header, nonce, ciphertext, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     RETURNING {COLS}"
                ),
                &[
                    &id,
                    &new.tenant,
                    &new.name,
                    &prefix,
                    &new.header,
                    &nonce,
                    &sealed,
                    &OffsetDateTime::now_utc(),
                ],
            )
            .await
            .map_err(|e| {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    Error::Conflict(format!(
                        "a credential named {:?} already exists; delete it first or choose another name",
                        new.name
                    ))
                } else {
                    Error::Db(e)
                }
            })?;
        Ok(row_to_credential(&row))
    }

    /// The tenant's credentials, by name, without values.
    pub async fn list_credentials(&self, tenant: &str) -> Result<Vec<Credential>> {
        let client = self.client().await?;
        Ok(client
            .query(
                &format!("SELECT {COLS} FROM credentials WHERE tenant = $1 ORDER BY name"),
                &[&tenant],
            )
            .await?
            .iter()
            .map(row_to_credential)
            .collect())
    }

    /// Delete a credential of `tenant` for good.
    pub async fn delete_credential(&self, tenant: &str, id: Uuid) -> Result<()> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM credentials WHERE tenant = $1 AND id = $2",
                &[&tenant, &id],
            )
            .await?;
        if n == 0 {
            return Err(Error::Missing(format!("credential {id} does not exist")));
        }
        Ok(())
    }

    /// The headers to attach to a request for `url`, decrypted: for each
    /// header name (case-insensitive), the credential with the longest
    /// prefix covering `url`. Empty for a URL that is not http(s).
    pub async fn credentials_for_url(
        &self,
        tenant: &str,
        url: &str,
    ) -> Result<Vec<(String, String)>> {
        let vault = self.vault()?;
        let Some(url) = normalize_url(url) else {
            return Ok(Vec::new());
        };
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, name, url_prefix, header, nonce, ciphertext FROM credentials
                 WHERE tenant = $1 AND starts_with($2, url_prefix)",
            )
            .await?;
        let rows = client.query(&stmt, &[&tenant, &url]).await?;
        drop(client);
        let mut best: BTreeMap<String, &Row> = BTreeMap::new();
        for row in &rows {
            let prefix: &str = row.get(2);
            if !prefix_covers(prefix, &url) {
                continue;
            }
            let header: &str = row.get(3);
            let key = header.to_ascii_lowercase();
            let longer = best
                .get(&key)
                .is_none_or(|b| b.get::<_, &str>(2).len() < prefix.len());
            if longer {
                best.insert(key, row);
            }
        }
        best.values()
            .map(|row| {
                let (id, name): (Uuid, &str) = (row.get(0), row.get(1));
                let plain = vault
                    .open(&aad(id, tenant), row.get(4), row.get(5))
                    .and_then(|p| String::from_utf8(p).ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "credential {name:?} cannot be decrypted with the configured vault key; was COLONY_VAULT_KEY changed?"
                        ))
                    })?;
                Ok((row.get::<_, String>(3), plain))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_hex_and_base64_and_wrong_lengths_say_so() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(Vault::parse(hex).is_ok());
        assert!(Vault::parse(&hex.to_uppercase()).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(Vault::parse(&b64).is_ok());
        assert!(Vault::parse(b64.trim_end_matches('=')).is_ok());
        let cases = [
            ("abcd", "the vault key is 2 bytes of hex; it must be 32 bytes (64 hex characters), e.g. from `openssl rand -hex 32`"),
            ("c2hvcnQ=", "the vault key decodes from base64 to 5 bytes; it must be 32 bytes, e.g. from `openssl rand -base64 32`"),
            ("not a key!", "the vault key is neither 64 hex characters nor base64; generate one with `openssl rand -hex 32`"),
        ];
        for (text, want) in cases {
            assert_eq!(Vault::parse(text).expect_err(text).to_string(), want);
        }
        assert_eq!(
            format!("{:?}", Vault::parse(hex).expect("key")),
            "Vault(<key redacted>)"
        );
    }

    #[test]
    fn sealing_binds_the_value_to_its_row() {
        let v = Vault::from_key(&[1u8; 32]);
        let id = Uuid::now_v7();
        let (nonce, sealed) = v.seal(&aad(id, "t"), b"secret");
        assert_ne!(sealed, b"secret".to_vec());
        assert_eq!(
            v.open(&aad(id, "t"), &nonce, &sealed),
            Some(b"secret".to_vec())
        );
        assert_eq!(
            v.open(&aad(id, "other"), &nonce, &sealed),
            None,
            "another tenant"
        );
        assert_eq!(
            v.open(&aad(Uuid::now_v7(), "t"), &nonce, &sealed),
            None,
            "another row"
        );
        assert_eq!(
            Vault::from_key(&[2u8; 32]).open(&aad(id, "t"), &nonce, &sealed),
            None,
            "another key"
        );
        assert_eq!(
            v.open(&aad(id, "t"), &nonce[..4], &sealed),
            None,
            "a short nonce"
        );
        let (nonce2, sealed2) = v.seal(&aad(id, "t"), b"secret");
        assert_ne!(
            (nonce, sealed),
            (nonce2, sealed2),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn prefixes_cover_urls_only_at_a_boundary() {
        let p = normalize_url("HTTPS://API.Example.com").expect("url");
        assert_eq!(p, "https://api.example.com");
        for (url, covered) in [
            ("https://api.example.com", true),
            ("https://api.example.com/v1/x", true),
            ("https://API.example.com/v1", true),
            ("https://api.example.com?q=1", true),
            ("https://api.example.com.evil.org/", false),
            ("https://api.example.com@evil.org/", false),
            ("https://api.example.com:8443/", false),
            ("http://api.example.com/", false),
        ] {
            let url = normalize_url(url).expect("url");
            assert_eq!(prefix_covers(&p, &url), covered, "{url}");
        }
        assert!(prefix_covers("https://h/v1/", "https://h/v1/x"));
        assert!(!prefix_covers("https://h/v1", "https://h/v10"));
        assert_eq!(normalize_url("ftp://h/"), None);
        assert_eq!(normalize_url("https:///path"), None);
        assert_eq!(normalize_url("https://h/a b"), None);
    }

    #[test]
    fn credentials_are_checked_with_one_sentence_and_never_debug_their_value() {
        let ok = NewCredential {
            tenant: "t".into(),
            name: "github".into(),
            url_prefix: "https://api.github.com/".into(),
            header: "Authorization".into(),
            value: "Bearer s3cret".into(),
        };
        assert_eq!(check(&ok).expect("valid"), "https://api.github.com/");
        assert!(!format!("{ok:?}").contains("s3cret"));
        type Change = fn(&mut NewCredential);
        let cases: [(Change, &str); 4] = [
            (|c| c.name = "a b".into(), "credential name \"a b\" is not valid; use 1-64 letters, digits, '-', '_' or '.'"),
            (|c| c.url_prefix = "api.github.com".into(), "url_prefix \"api.github.com\" is not an http:// or https:// URL with a host; give the start of the URLs the credential is for"),
            (|c| c.header = "Auth: x".into(), "header \"Auth: x\" is not a valid HTTP header name; use e.g. Authorization"),
            (|c| c.value = "a\r\nX-Evil: 1".into(), "the credential value must be 1-8192 bytes without line breaks"),
        ];
        for (change, want) in cases {
            let mut c = ok.clone();
            change(&mut c);
            assert_eq!(check(&c).expect_err(want).to_string(), want);
        }
    }
}
