//! Text that Postgres and JSON can hold, from bytes and strings that may not
//! be.
//!
//! A command's output is bytes: it may hold NUL (which neither Postgres
//! `text` nor `jsonb` accepts) and byte sequences that are not UTF-8 (which
//! a JSON string cannot carry). Rather than lose them or fail the task,
//! Colony stores such text *escaped* and says so with a marker next to it
//! (`stdout_escaped`, `stderr_escaped`, or a result's [`ESCAPED`] list).
//! The escape is reversible ([`unescape`]):
//!
//! - `\` becomes `\\`,
//! - NUL becomes `\0`,
//! - a byte that is not part of valid UTF-8 becomes `\xHH`.
//!
//! Text that needs none of this is left exactly as it was and carries no
//! marker, so ordinary output never changes.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

/// The key a JSON result object gets when strings in it were escaped: the
/// JSON pointers of those strings (an empty pointer is the value itself).
pub const ESCAPED: &str = "escaped";

/// `bytes` as text: unchanged (and borrowed) when they are UTF-8 without
/// NUL, else escaped. The flag says whether it was escaped.
pub fn escape_bytes(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if !s.contains('\0') {
            return (Cow::Borrowed(s), false);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    let mut rest = bytes;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                // Valid up to here; then one invalid sequence (or an
                // incomplete one at the end).
                let valid = std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default();
                (valid, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        push_escaped(&mut out, valid);
        let after = valid.len();
        for b in &rest[after..after + bad] {
            let _ = write!(out, "\\x{b:02x}");
        }
        rest = &rest[after + bad..];
    }
    (Cow::Owned(out), true)
}

/// `s` with NUL escaped (and `\` doubled, so the escape is reversible), or
/// unchanged when it holds no NUL.
pub fn escape_nul(s: &str) -> Cow<'_, str> {
    if !s.contains('\0') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s);
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
}

/// The bytes an escaped text stood for.
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b[i + 1] {
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'0' => {
                out.push(0);
                i += 2;
            }
            b'x' if i + 4 <= b.len() => match (hex(b[i + 2]), hex(b[i + 3])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 4;
                }
                _ => {
                    out.push(b'\\');
                    i += 1;
                }
            },
            _ => {
                out.push(b'\\');
                i += 1;
            }
        }
    }
    out
}

fn hex(d: u8) -> Option<u8> {
    (d as char).to_digit(16).map(|v| v as u8)
}

/// An error and its causes, joined by `: `, each said once (a cause that
/// its wrapper already quotes is not repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// True when a string (or object key) anywhere in `v` holds NUL.
pub fn json_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(k, item)| k.contains('\0') || json_has_nul(item)),
        _ => false,
    }
}

/// Escapes NUL in every string (and object key) of `v`, in place; returns
/// the JSON pointers of what changed (empty when nothing did).
pub fn escape_nul_in_json(v: &mut Value) -> Vec<String> {
    let mut changed = Vec::new();
    walk(v, &mut String::new(), &mut changed);
    changed
}

fn walk(v: &mut Value, path: &mut String, changed: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(e) = escape_nul(s) {
                *s = e;
                changed.push(path.clone());
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                let _ = write!(path, "/{i}");
                walk(item, path, changed);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (k, item) in old {
                    let key = escape_nul(&k).into_owned();
                    if key != k {
                        changed.push(format!("{path}/{}", pointer_token(&key)));
                    }
                    map.insert(key, item);
                }
            }
            for (k, item) in map.iter_mut() {
                let len = path.len();
                path.push('/');
                path.push_str(&pointer_token(k));
                walk(item, path, changed);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// A key as a JSON-pointer token (RFC 6901).
fn pointer_token(k: &str) -> Cow<'_, str> {
    if k.contains(['~', '/']) {
        Cow::Owned(k.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_left_alone() {
        for s in ["", "hello\n", "a\\b", "€ and ü", "tab\tand\r\n"] {
            let (t, escaped) = escape_bytes(s.as_bytes());
            assert!(!escaped, "{s:?}");
            assert!(matches!(t, Cow::Borrowed(_)), "{s:?}");
            assert_eq!(t, s);
        }
    }

    #[test]
    fn nul_and_invalid_bytes_are_escaped_reversibly() {
        let cases: &[(&[u8], &str)] = &[
            (b"a\0b\xff", "a\\0b\\xff"),
            (b"\0", "\\0"),
            (b"back\\slash\0", "back\\\\slash\\0"),
            (b"\xe2\x82", "\\xe2\\x82"),
            (b"ok \xe2\x82\xac \xc3", "ok \u{20ac} \\xc3"),
            (b"\xff\xfe", "\\xff\\xfe"),
        ];
        for (bytes, want) in cases {
            let (t, escaped) = escape_bytes(bytes);
            assert!(escaped, "{bytes:?}");
            assert_eq!(t, *want, "{bytes:?}");
            assert_eq!(unescape(&t), *bytes, "round trip of {bytes:?}");
            assert!(!t.contains('\0'));
        }
    }

    #[test]
    fn every_byte_pair_round_trips() {
        for a in 0..=255u8 {
            for b in [0u8, b'\\', b'x', 0x80, 0xff, b'0'] {
                let bytes = [a, b, b'\\', a];
                let (t, escaped) = escape_bytes(&bytes);
                if escaped {
                    assert_eq!(unescape(&t), bytes, "{bytes:?}");
                } else {
                    assert_eq!(t.as_bytes(), bytes);
                }
            }
        }
    }

    #[test]
    fn json_strings_and_keys_with_nul_are_escaped_and_listed() {
        let mut v = serde_json::json!({
            "message": "a\u{0}b",
            "list": ["fine", "x\u{0}"],
            "k\u{0}ey": 1,
            "nested": {"a/b": "\u{0}"},
            "clean": "c:\\dir"
        });
        let mut changed = escape_nul_in_json(&mut v);
        changed.sort();
        assert_eq!(
            changed,
            vec!["/k\\0ey", "/list/1", "/message", "/nested/a~1b"]
        );
        assert_eq!(v["message"], "a\\0b");
        assert_eq!(v["list"][1], "x\\0");
        assert_eq!(v["k\\0ey"], 1);
        assert_eq!(
            v["clean"], "c:\\dir",
            "untouched strings keep their backslashes"
        );
        assert!(!serde_json::to_string(&v).unwrap().contains("\\u0000"));

        let mut clean = serde_json::json!({"a": ["b", 1, null]});
        assert!(!json_has_nul(&clean));
        assert!(json_has_nul(&serde_json::json!({"a": [{"b\u{0}": 1}]})));
        assert!(escape_nul_in_json(&mut clean).is_empty());
        let mut top = Value::String("\u{0}".into());
        assert_eq!(escape_nul_in_json(&mut top), vec![String::new()]);
    }

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let e = Wrap(
            "no database connection: refused",
            Some(Box::new(Wrap(
                "refused",
                Some(Box::new(Wrap("port 5432 closed", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "no database connection: refused: port 5432 closed"
        );
        assert_eq!(error_chain(&Wrap("alone", None)), "alone");
    }
}
