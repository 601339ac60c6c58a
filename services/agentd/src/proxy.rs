//! The egress proxy: `127.0.0.1:3128` inside the container, piped to the
//! gateway.
//!
//! The container has no network but its own loopback. Every process agentd
//! starts gets `HTTP_PROXY`/`HTTPS_PROXY` pointing here, and each connection
//! accepted here is copied byte for byte to a fresh connection to
//! `gateway.sock`, which is a forward proxy that allows only the role's
//! egress allowlist. agentd does not look at the bytes. When the gateway
//! cannot be reached, the client gets `502` with one line saying why.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::log;

/// How long a refused client may take to send its request head.
const HEAD_WAIT: Duration = Duration::from_secs(1);
/// The most of a refused client's request read before answering.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Listens on `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot listen for the egress proxy on {addr}: {err}"),
        )
    })
}

/// Accepts forever, piping each connection to `gateway` on its own task.
pub async fn serve(listener: TcpListener, gateway: Arc<Path>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(pipe(client, gateway.clone()));
            }
            Err(err) => {
                log(format_args!("proxy accept failed: {err}"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn pipe(mut client: TcpStream, gateway: Arc<Path>) {
    match UnixStream::connect(&*gateway).await {
        Ok(mut upstream) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(err) => {
            let reason = format!(
                "agentd could not reach the gateway at {}: {err}",
                gateway.display()
            );
            refuse(client, &reason).await;
        }
    }
}

/// Reads the request head (so closing does not reset the connection under
/// the client), answers `502` with `reason`, and closes.
async fn refuse(mut client: TcpStream, reason: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let _ = tokio::time::timeout(HEAD_WAIT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD_BYTES {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = format!("{reason}\n");
    let answer = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use tokio::net::UnixListener;

    async fn start(gateway: &Path) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, Arc::from(gateway)));
        addr
    }

    #[tokio::test]
    async fn pipes_bytes_both_ways() {
        let dir = TempDir::new("proxy").expect("temp");
        let socket = dir.path().join("gateway.sock");
        let upstream = UnixListener::bind(&socket).expect("bind");
        let addr = start(&socket).await;

        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let (mut gateway_side, _) = upstream.accept().await.expect("accept");
        let mut got = vec![0u8; 36];
        gateway_side.read_exact(&mut got).await.expect("read");
        assert_eq!(got, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
        gateway_side
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n\x00\xffbinary")
            .await
            .expect("write");
        drop(gateway_side);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n\x00\xffbinary");
    }

    #[tokio::test]
    async fn a_missing_gateway_is_a_502_with_one_line() {
        let dir = TempDir::new("proxy").expect("temp");
        let socket = dir.path().join("gateway.sock");
        let addr = start(&socket).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(
            body.starts_with(&format!(
                "agentd could not reach the gateway at {}",
                socket.display()
            )),
            "{body}"
        );
        assert_eq!(body.lines().count(), 1, "{body}");
    }
}
