//! An employee's key/value memory, injected into its runs at dispatch.
//!
//! Bounded so that a run cannot grow what every later run is given without
//! limit: keys of at most [`MAX_KEY_CHARS`] characters, values of at most
//! [`MAX_VALUE_BYTES`] bytes of JSON, and at most [`MAX_KEYS`] keys per
//! employee (overwriting a key is always allowed). Whether an employee may
//! touch its memory at all is the gateway's question (the role's
//! `allowed_actions`), not this module's.

use std::collections::BTreeMap;

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::{Error, Result, Store};

pub const MAX_KEY_CHARS: usize = 128;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_KEYS: i64 = 256;

/// Why `key` cannot be a memory key, if it cannot.
pub fn check_key(key: &str) -> Result<()> {
    let chars = key.chars().count();
    if chars == 0 {
        return Err(Error::Invalid(
            "the memory key is empty; give a key of 1-128 characters".into(),
        ));
    }
    if chars > MAX_KEY_CHARS {
        return Err(Error::Invalid(format!(
            "the memory key is {chars} characters, over the {MAX_KEY_CHARS}-character limit; use a shorter key"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "the memory key contains control characters; use printable text".into(),
        ));
    }
    Ok(())
}

/// Why `value` cannot be stored under `key`, if it cannot.
pub fn check_value(key: &str, value: &Value) -> Result<()> {
    let len = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if subjects::text::json_has_nul(value) {
        return Err(Error::Invalid(format!(
            "the value for memory key {key:?} contains a NUL character (\\u0000), which memory cannot hold; escape or drop it"
        )));
    }
    if len > MAX_VALUE_BYTES {
        return Err(Error::Invalid(format!(
            "the value for memory key {key:?} is {len} bytes of JSON, over the {MAX_VALUE_BYTES}-byte limit; store less or split it over several keys"
        )));
    }
    Ok(())
}

impl Store {
    pub async fn memory_get(&self, employee: Uuid, key: &str) -> Result<Option<Value>> {
        check_key(key)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT value FROM memory WHERE employee_id = $1 AND key = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&employee, &key])
            .await?
            .map(|r| r.get(0)))
    }

    /// Set `key` to `value` (insert or overwrite).
    pub async fn memory_set(&self, employee: Uuid, key: &str, value: &Value) -> Result<()> {
        check_key(key)?;
        check_value(key, value)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO memory (employee_id, key, value, updated_at)
                 SELECT $1, $2, $3, $4
                 WHERE EXISTS (SELECT 1 FROM memory WHERE employee_id = $1 AND key = $2)
                    OR (SELECT count(*) FROM memory WHERE employee_id = $1) < $5
                 ON CONFLICT (employee_id, key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
            )
            .await?;
        let n = client
            .execute(
                &stmt,
                &[
                    &employee,
                    &key,
                    value,
                    &OffsetDateTime::now_utc(),
                    &MAX_KEYS,
                ],
            )
            .await
            .map_err(|e| {
                if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                    Error::Missing(format!("employee {employee} does not exist"))
                } else {
                    Error::Db(e)
                }
            })?;
        if n == 0 {
            return Err(Error::Invalid(format!(
                "employee {employee} already keeps {MAX_KEYS} memory keys; overwrite or delete one before adding {key:?}"
            )));
        }
        Ok(())
    }

    /// Remove `key`; false when it was not set.
    pub async fn memory_delete(&self, employee: Uuid, key: &str) -> Result<bool> {
        check_key(key)?;
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM memory WHERE employee_id = $1 AND key = $2",
                &[&employee, &key],
            )
            .await?;
        Ok(n == 1)
    }

    /// Every key and value of the employee's memory.
    pub async fn memory_list(&self, employee: Uuid) -> Result<BTreeMap<String, Value>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT key, value FROM memory WHERE employee_id = $1")
            .await?;
        Ok(client
            .query(&stmt, &[&employee])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_bounded_with_one_sentence() {
        assert!(check_key("notes/today").is_ok());
        assert!(check_key(&"k".repeat(128)).is_ok());
        assert!(check_key(&"é".repeat(128)).is_ok(), "characters, not bytes");
        let cases = [
            (
                String::new(),
                "the memory key is empty; give a key of 1-128 characters",
            ),
            (
                "k".repeat(129),
                "the memory key is 129 characters, over the 128-character limit; use a shorter key",
            ),
            (
                "a\nb".into(),
                "the memory key contains control characters; use printable text",
            ),
        ];
        for (key, want) in cases {
            assert_eq!(check_key(&key).expect_err(&key).to_string(), want);
        }
        let fits = Value::String("x".repeat(MAX_VALUE_BYTES - 2));
        assert!(check_value("k", &fits).is_ok());
        let big = Value::String("x".repeat(MAX_VALUE_BYTES - 1));
        assert_eq!(
            check_value("k", &big).expect_err("too big").to_string(),
            "the value for memory key \"k\" is 65537 bytes of JSON, over the 65536-byte limit; store less or split it over several keys"
        );
    }
}
