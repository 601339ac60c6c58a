//! agentd's client of the worker's `gateway.sock` (HTTP/1.1 over a unix
//! socket, see [`subjects::gateway`]).
//!
//! One connection per call: the socket is local, and a call that is dropped
//! (a cancelled or timed-out run) takes its connection down with it, so the
//! gateway sees the call end at once.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// The most of an error answer read for its sentence.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// The longest reason quoted from an error body that is not JSON.
const MAX_REASON_CHARS: usize = 300;

/// Where the gateway listens.
#[derive(Debug, Clone)]
pub struct Gateway {
    socket: PathBuf,
}

/// A call that could not be made or answered properly.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The socket could not be reached, or the HTTP exchange broke.
    Transport(String),
    /// The gateway answered non-2xx; `reason` is its one sentence.
    Refused { status: u16, reason: String },
}

impl CallError {
    /// The one sentence to show.
    pub fn reason(&self) -> &str {
        match self {
            CallError::Transport(reason) | CallError::Refused { reason, .. } => reason,
        }
    }
}

/// An answered call: the 2xx head and the body still to read. Dropping it
/// closes the connection.
pub struct Call {
    pub content_type: String,
    body: Incoming,
    connection: JoinHandle<()>,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Call {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, CallError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(err)) => {
                    return Err(CallError::Transport(format!(
                        "the gateway's answer broke off: {err}"
                    )))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The whole body, refused past `max` bytes.
    pub async fn read(&mut self, max: usize) -> Result<Bytes, CallError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > max {
                return Err(CallError::Transport(format!(
                    "the gateway's answer is longer than {max} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

impl Gateway {
    pub fn new(socket: impl Into<PathBuf>) -> Gateway {
        Gateway {
            socket: socket.into(),
        }
    }

    /// POSTs `body` as JSON to `path`. A 2xx answer is returned with its body
    /// unread; anything else becomes [`CallError::Refused`] with the
    /// gateway's sentence.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        accept: &str,
    ) -> Result<Call, CallError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|err| {
            CallError::Transport(format!(
                "agentd could not reach the gateway at {}: {err}",
                self.socket.display()
            ))
        })?;
        let broke = |err: hyper::Error| {
            CallError::Transport(format!("the call to the gateway's {path} failed: {err}"))
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broke)?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::post(path)
            .header(HOST, HeaderValue::from_static("gateway"))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT, accept)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|err| {
                CallError::Transport(format!("agentd could not build a request to {path}: {err}"))
            })?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => {
                connection.abort();
                return Err(broke(err));
            }
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut call = Call {
            content_type,
            body: response.into_body(),
            connection,
        };
        if status.is_success() {
            return Ok(call);
        }
        let body = call.read(MAX_ERROR_BYTES).await.unwrap_or_default();
        Err(CallError::Refused {
            status: status.as_u16(),
            reason: error_sentence(status, &body),
        })
    }
}

/// The sentence of an error answer: `{"error": "…"}` (the gateway's own
/// form), `{"error": {"message": "…"}}` (a provider's, passed through), a
/// short text body, or a sentence naming the status.
pub fn error_sentence(status: StatusCode, body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let sentence = match value.get("error") {
            Some(Value::String(text)) => Some(text.as_str()),
            Some(error) => error.get("message").and_then(Value::as_str),
            None => None,
        };
        if let Some(sentence) = sentence.map(str::trim).filter(|s| !s.is_empty()) {
            return sentence.to_owned();
        }
    } else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if !text.is_empty() && text.chars().count() <= MAX_REASON_CHARS && !text.contains('\n') {
            return text.to_owned();
        }
    }
    format!("the gateway answered {status} without a reason.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_sentences_come_from_either_error_shape() {
        let status = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            error_sentence(status, br#"{"error": "the token quota is used up."}"#),
            "the token quota is used up."
        );
        assert_eq!(
            error_sentence(
                status,
                br#"{"error": {"message": "slow down", "type": "x"}}"#
            ),
            "slow down"
        );
        assert_eq!(
            error_sentence(status, b"upstream is down\n"),
            "upstream is down"
        );
        assert_eq!(
            error_sentence(StatusCode::BAD_GATEWAY, b"<html>\n</html>"),
            "the gateway answered 502 Bad Gateway without a reason."
        );
        assert_eq!(
            error_sentence(status, br#"{"detail": 1}"#),
            "the gateway answered 429 Too Many Requests without a reason."
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_transport_error() {
        let gateway = Gateway::new("/nonexistent/colony/gateway.sock");
        let err = gateway
            .post_json("/v1/fetch", &serde_json::json!({}), "application/json")
            .await
            .err()
            .expect("no socket");
        let CallError::Transport(reason) = err else {
            panic!("{err:?}");
        };
        assert!(
            reason.starts_with(
                "agentd could not reach the gateway at /nonexistent/colony/gateway.sock"
            ),
            "{reason}"
        );
    }
}
