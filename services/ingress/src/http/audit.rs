//! `GET /v1/audit`: the tenant's audit trail, newest first, filtered by
//! `employee`, `action`, `outcome`, `since`, `until` (RFC 3339, inclusive)
//! and `limit` (1–1000, default 100).

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use store::audit::MAX_LIMIT;
use store::{AuditFilter, Outcome};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{AppState, Caller, Refusal};

fn bad(reason: String) -> Refusal {
    Refusal::bad(reason)
}

fn time_of(name: &str, v: &str) -> Result<OffsetDateTime, Refusal> {
    // An unescaped `+` in a query string arrives as a space.
    OffsetDateTime::parse(v, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&v.replace(' ', "+"), &Rfc3339))
        .map_err(|_| {
            bad(format!(
                "{name} must be an RFC 3339 time such as 2026-01-02T03:04:05Z, not {v:?}"
            ))
        })
}

/// The filter a query string asks for, or the one-sentence refusal.
fn filter(tenant: String, q: &BTreeMap<String, String>) -> Result<AuditFilter, Refusal> {
    let mut f = AuditFilter::tenant(&tenant);
    for (k, v) in q {
        match k.as_str() {
            "employee" => {
                f.employee_id = Some(uuid::Uuid::parse_str(v).map_err(|_| {
                    bad(format!(
                        "employee must be an employee id (a UUID), not {v:?}"
                    ))
                })?)
            }
            "action" => {
                if v.is_empty() || v.len() > 100 || v.chars().any(char::is_control) {
                    return Err(bad(
                        "action must be an action name of 1-100 characters, e.g. memory.set".into(),
                    ));
                }
                f.action = Some(v.clone());
            }
            "outcome" => {
                f.outcome = Some(Outcome::parse(v).ok_or_else(|| {
                    bad(format!(
                        "outcome must be allowed, denied or failed, not {v:?}"
                    ))
                })?)
            }
            "since" => f.since = Some(time_of("since", v)?),
            "until" => f.until = Some(time_of("until", v)?),
            "limit" => {
                f.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit must be a number from 1 to {MAX_LIMIT}, not {v:?}"
                        ))
                    })?
            }
            other => {
                return Err(bad(format!(
                    "unknown filter {other:?}; use employee, action, outcome, since, until or limit"
                )))
            }
        }
    }
    if let (Some(since), Some(until)) = (f.since, f.until) {
        if since > until {
            return Err(bad(
                "since is later than until; give a since at or before until".into(),
            ));
        }
    }
    Ok(f)
}

pub(super) async fn query(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(bad("the query string is malformed; use ?employee=…&action=…&outcome=…&since=…&until=…&limit=…".into()));
    };
    let f = filter(caller.tenant, &q)?;
    let entries = s.0.store.query_audit(&f).await?;
    Ok(Json(serde_json::json!({ "entries": entries })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse() {
        let id = uuid::Uuid::now_v7();
        let f = filter(
            "acme".into(),
            &q(&[
                ("employee", &id.to_string()),
                ("action", "memory.set"),
                ("outcome", "denied"),
                ("since", "2026-01-02T03:04:05Z"),
                ("until", "2026-01-02T04:04:05 01:00"),
                ("limit", "5"),
            ]),
        )
        .map_err(|_| "refused")
        .expect("valid");
        assert_eq!(f.tenant, "acme");
        assert_eq!(f.employee_id, Some(id));
        assert_eq!(f.action.as_deref(), Some("memory.set"));
        assert_eq!(f.outcome, Some(Outcome::Denied));
        assert_eq!(f.limit, 5);
        assert_eq!(
            f.until.map(|t| t.offset().whole_hours()),
            Some(1),
            "a + decoded as a space is read back as +"
        );
        let all = filter("acme".into(), &q(&[]))
            .map_err(|_| "refused")
            .expect("valid");
        assert_eq!((all.limit, all.employee_id, all.since), (100, None, None));
    }

    #[tokio::test]
    async fn bad_filters_are_refused_in_one_sentence() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("employee", "bob")], "employee must be an employee id (a UUID), not \"bob\""),
            (&[("outcome", "maybe")], "outcome must be allowed, denied or failed, not \"maybe\""),
            (&[("since", "yesterday")], "since must be an RFC 3339 time such as 2026-01-02T03:04:05Z, not \"yesterday\""),
            (&[("until", "2026-13-01T00:00:00Z")], "until must be an RFC 3339 time such as 2026-01-02T03:04:05Z, not \"2026-13-01T00:00:00Z\""),
            (&[("limit", "0")], "limit must be a number from 1 to 1000, not \"0\""),
            (&[("limit", "many")], "limit must be a number from 1 to 1000, not \"many\""),
            (&[("action", "")], "action must be an action name of 1-100 characters, e.g. memory.set"),
            (&[("who", "x")], "unknown filter \"who\"; use employee, action, outcome, since, until or limit"),
            (
                &[("since", "2026-01-02T00:00:00Z"), ("until", "2026-01-01T00:00:00Z")],
                "since is later than until; give a since at or before until",
            ),
        ];
        for (pairs, want) in cases {
            let Err(refusal) = filter("t".into(), &q(pairs)) else {
                panic!("{pairs:?} accepted");
            };
            assert_eq!(refusal.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(&refusal.error, want);
        }
    }
}
