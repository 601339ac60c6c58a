//! The one way the HTTP API says no.
//!
//! Every handler returns `Result<_, Refusal>` and uses `?`; a [`Refusal`]
//! becomes `{"error": "<one sentence>"}` with its status. Store errors map
//! here, in one place: what the caller named is missing (404), conflicts
//! (409), breaks a bound (400); anything else is the database's fault (503,
//! logged with its cause, never shown: the body says only to retry).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use subjects::ApiError;

use admission::{Refused, Rejection};

/// A refusal: status, one sentence, and for 429 how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Adds `WWW-Authenticate: Bearer` (a 401).
    pub challenge: bool,
}

impl Refusal {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error: error.into(),
            retry_after: None,
            challenge: false,
        }
    }

    pub fn bad(error: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, error)
    }

    pub fn not_found(error: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, error)
    }

    pub fn unauthenticated(error: impl Into<String>) -> Refusal {
        Refusal {
            challenge: true,
            ..Refusal::new(StatusCode::UNAUTHORIZED, error)
        }
    }

    pub fn forbidden(error: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::FORBIDDEN, error)
    }

    pub fn too_many(error: impl Into<String>, retry_after_secs: u64) -> Refusal {
        Refusal {
            retry_after: Some(retry_after_secs.max(1)),
            ..Refusal::new(StatusCode::TOO_MANY_REQUESTS, error)
        }
    }

    pub fn unavailable(error: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, error)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(ApiError { error: self.error })).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        if self.challenge {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Refusal {
        Refusal::new(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            r.reason,
        )
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Refusal {
        match r {
            Refused::Rejected(r) => r.into(),
            Refused::Store(e) => e.into(),
        }
    }
}

impl From<store::Error> for Refusal {
    fn from(e: store::Error) -> Refusal {
        match e {
            store::Error::NotFound(id) => Refusal::not_found(format!("task {id} does not exist")),
            store::Error::Missing(r) => Refusal::not_found(r),
            store::Error::Conflict(r) => Refusal::new(StatusCode::CONFLICT, r),
            store::Error::Illegal(i) => {
                Refusal::new(StatusCode::CONFLICT, format!("the task is {}; {i}", i.from))
            }
            store::Error::Invalid(r) => Refusal::bad(r),
            e @ store::Error::IllegalGoal(_) => Refusal::new(StatusCode::CONFLICT, e.to_string()),
            store::Error::Refused { status, reason } => Refusal::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                reason,
            ),
            e @ store::Error::NoVault => Refusal::unavailable(e.to_string()),
            other => {
                tracing::error!(error = %other, "database error");
                Refusal::unavailable("the database is unavailable; retry in a few seconds")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Refusal) -> (StatusCode, axum::http::HeaderMap, String) {
        let resp = r.into_response();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 4096).await.expect("body");
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).expect("utf-8"),
        )
    }

    #[tokio::test]
    async fn refusals_are_one_json_sentence_with_their_headers() {
        let (status, headers, text) = body(Refusal::too_many("slow down", 0)).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(text, r#"{"error":"slow down"}"#);
        let (status, headers, _) = body(Refusal::unauthenticated("who?")).await;
        assert_eq!(status, 401);
        assert_eq!(headers["www-authenticate"], "Bearer");
    }

    #[tokio::test]
    async fn database_trouble_never_shows_its_cause() {
        let pool = store::Error::Invalid("x".into());
        assert_eq!(Refusal::from(pool).status, 400);
        let r = Refusal::from(store::Error::Missing("employee 1 does not exist".into()));
        assert_eq!(r.status, 404);
        let (status, _, text) = body(Refusal::from(store::Error::NoVault)).await;
        assert_eq!(status, 503);
        assert!(text.contains("COLONY_VAULT_KEY"));
    }
}
