//! The client side of a container's `agent.sock` (see `subjects::agent`).
//!
//! One connection per request: write the request line, read frames until the
//! final one. Dropping the future closes the socket, which agentd takes as a
//! cancel and answers by killing the run's process group.
//!
//! Everything read here comes from inside a container, where a model's
//! commands run as the same user as agentd: it is treated as hostile. A
//! frame longer than [`MAX_FRAME_BYTES`] ends the call with
//! [`AgentError::FrameTooLong`] (nothing past the limit is buffered), and
//! progress is handed on through a bounded channel, so a container that
//! writes faster than the worker publishes is slowed down, not buffered.
//! The socket is reached through a file descriptor opened without following
//! symbolic links ([`crate::sockets`]), so a swapped `agent.sock` leads
//! nowhere on the host.

use std::path::Path;

use subjects::agent::{AgentEvent, AgentFrame, AgentRequest};
use subjects::OutputStream;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// The longest frame (one JSON line) a worker reads from agentd.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Why a call into a container did not get its final frame.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach agentd: {0}")]
    Connect(std::io::Error),
    #[error("lost the connection to agentd: {0}")]
    Io(#[from] std::io::Error),
    #[error("agentd closed the connection before the run finished")]
    Closed,
    #[error("agentd sent a frame this worker does not understand: {0}")]
    Protocol(String),
    #[error("the container sent a frame longer than {limit} bytes; the run was stopped")]
    FrameTooLong { limit: usize },
}

/// What a run reports before its final frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    Output(OutputStream, String),
    Event(AgentEvent),
}

/// Send `req` and return its final frame, passing every output chunk and
/// agent event to `progress` as it arrives (waiting when the channel is
/// full; a closed channel only drops them).
pub async fn call(
    socket: &Path,
    req: &AgentRequest,
    progress: Option<&mpsc::Sender<Progress>>,
) -> Result<AgentFrame, AgentError> {
    call_bounded(socket, req, progress, MAX_FRAME_BYTES).await
}

/// [`call`] with another frame limit.
pub async fn call_bounded(
    socket: &Path,
    req: &AgentRequest,
    progress: Option<&mpsc::Sender<Progress>>,
    max_frame: usize,
) -> Result<AgentFrame, AgentError> {
    let stream = crate::sockets::connect_nofollow(socket)
        .await
        .map_err(AgentError::Connect)?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| AgentError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reader = BufReader::new(read);
    // Keep the write half open until the end: closing it would read as a
    // cancel on agentd's side.
    let _write = write;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if !read_line(&mut reader, &mut buf, max_frame).await? {
            return Err(AgentError::Closed);
        }
        let frame: AgentFrame = serde_json::from_slice(&buf).map_err(|e| {
            AgentError::Protocol(format!("{e}: {:.200}", String::from_utf8_lossy(&buf)))
        })?;
        let p = match frame {
            AgentFrame::Output { stream, data } => Progress::Output(stream, data),
            AgentFrame::Event { event } => Progress::Event(event),
            other => return Ok(other),
        };
        if let Some(tx) = progress {
            let _ = tx.send(p).await;
        }
    }
}

/// Reads one line (without its newline) into `buf`; false at the end of the
/// stream before any byte. Never holds more than `max` bytes.
async fn read_line(
    reader: &mut (impl AsyncBufReadExt + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, AgentError> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return if buf.is_empty() {
                Ok(false)
            } else {
                Err(AgentError::Closed)
            };
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max {
            return Err(AgentError::FrameTooLong { limit: max });
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(true);
        }
    }
}

/// True when agentd answers a ping on `socket`.
pub async fn ping(socket: &Path) -> bool {
    matches!(
        call(socket, &AgentRequest::Ping, None).await,
        Ok(AgentFrame::Pong { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_and_bounded() {
        let data: &[u8] = b"short\nexactly10\n0123456789A\n";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert!(read_line(&mut r, &mut buf, 10).await.expect("line"));
        assert_eq!(buf, b"short");
        buf.clear();
        assert!(read_line(&mut r, &mut buf, 10).await.expect("line"));
        assert_eq!(buf, b"exactly10");
        buf.clear();
        let err = read_line(&mut r, &mut buf, 10).await.expect_err("too long");
        assert!(matches!(err, AgentError::FrameTooLong { limit: 10 }));
        assert!(buf.len() <= 10);
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_told_apart_from_a_cut_line() {
        let mut buf = Vec::new();
        let mut empty = BufReader::new(&b""[..]);
        assert!(!read_line(&mut empty, &mut buf, 10).await.expect("eof"));
        let mut cut = BufReader::new(&b"no newline"[..]);
        assert!(matches!(
            read_line(&mut cut, &mut buf, 100).await,
            Err(AgentError::Closed)
        ));
    }
}
