//! The client side of a container's `agent.sock` (see `subjects::agent`).
//!
//! One connection per request: write the request line, read frames until the
//! final one. Dropping the future closes the socket, which agentd takes as a
//! cancel and answers by killing the run's process group.

use std::path::Path;

use subjects::agent::{AgentEvent, AgentFrame, AgentRequest};
use subjects::OutputStream;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

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
}

/// What a run reports before its final frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    Output(OutputStream, String),
    Event(AgentEvent),
}

/// Send `req` and return its final frame, passing every output chunk and
/// agent event to `on_progress` as it arrives.
pub async fn call(
    socket: &Path,
    req: &AgentRequest,
    mut on_progress: impl FnMut(Progress),
) -> Result<AgentFrame, AgentError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(AgentError::Connect)?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| AgentError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    // Keep the write half open until the end: closing it would read as a
    // cancel on agentd's side.
    let _write = write;
    loop {
        let Some(text) = lines.next_line().await? else {
            return Err(AgentError::Closed);
        };
        let frame: AgentFrame = serde_json::from_str(&text)
            .map_err(|e| AgentError::Protocol(format!("{e}: {text:.200}")))?;
        match frame {
            AgentFrame::Output { stream, data } => on_progress(Progress::Output(stream, data)),
            AgentFrame::Event { event } => on_progress(Progress::Event(event)),
            other => return Ok(other),
        }
    }
}

/// True when agentd answers a ping on `socket`.
pub async fn ping(socket: &Path) -> bool {
    matches!(
        call(socket, &AgentRequest::Ping, |_| {}).await,
        Ok(AgentFrame::Pong { .. })
    )
}
