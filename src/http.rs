//! A deliberately tiny HTTP endpoint for `/metrics`, `/healthz` and `/readyz`:
//! GET only, one request per connection, no keep-alive. Enough for
//! Prometheus and for health checks; nothing else is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::metrics::Metrics;

/// Bind now (so a taken port fails at start-up), serve until `cancel`.
pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>, cancel: CancellationToken) -> Result<SocketAddr, Fatal> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::Config(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
    let local = listener.local_addr().map_err(|e| Fatal::Config(e.to_string()))?;
    tracing::info!(address = %local, "Serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let m = metrics.clone();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &m)).await;
                        });
                    }
                }
            }
        }
    });
    Ok(local)
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        ("GET", "/healthz") => ("200 OK", "ok\n".to_string()),
        ("GET", "/readyz") if metrics.is_ready() => ("200 OK", "ready\n".to_string()),
        ("GET", "/readyz") => ("503 Service Unavailable", "not ready\n".to_string()),
        ("GET", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "GET only\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
