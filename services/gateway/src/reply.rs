//! Answers: every refusal is `{"error": "<one sentence>"}`.

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `status` with an [`subjects::ApiError`] body.
pub(crate) fn error(status: StatusCode, sentence: impl Into<String>) -> Response {
    let body = subjects::ApiError {
        error: sentence.into(),
    };
    json(status, &body)
}

pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_with(status, JSON, Bytes::from(bytes)),
        Err(e) => {
            tracing::error!("gateway: could not serialise an answer: {e}");
            bytes_with(
                StatusCode::INTERNAL_SERVER_ERROR,
                JSON,
                Bytes::from_static(br#"{"error":"the gateway could not serialise its answer"}"#),
            )
        }
    }
}

pub(crate) fn bytes_with(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    resp
}

pub(crate) fn no_run() -> Response {
    error(
        StatusCode::CONFLICT,
        "no run is in progress in this container, so the gateway takes no requests",
    )
}

pub(crate) fn over_quota(reason: &str) -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("{reason}, so this run may make no more requests"),
    )
}

/// Reads a request body of at most `limit` bytes (a body in one piece is
/// not copied).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the gateway's limit of {limit} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        })?;
        total += chunk.len();
        if total > limit {
            return Err(too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(head) => {
                joined.extend_from_slice(&head);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

pub(crate) async fn unknown_route(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "the gateway has no route {}; it serves {}, {}<name> and {}",
            one_line(uri.path(), 100),
            subjects::gateway::CHAT_COMPLETIONS,
            subjects::gateway::ACTIONS,
            subjects::gateway::FETCH
        ),
    )
}

pub(crate) async fn wrong_method(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} takes POST, not {method}", one_line(uri.path(), 100)),
    )
}

/// `text` on one line (whitespace runs collapsed), at most `max` bytes
/// (cut at a character boundary, marked with `…`), without a final period.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 4));
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > max {
            break;
        }
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    while out.ends_with('.') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_collapses_cuts_and_drops_the_period() {
        assert_eq!(one_line("  a\n b\t c.  ", 100), "a b c");
        assert_eq!(one_line("héllo wörld", 3), "hé…");
        assert_eq!(one_line("", 10), "");
    }
}
