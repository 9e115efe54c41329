//! A deliberately tiny HTTP endpoint for `/metrics`, `/healthz`, `/readyz`
//! and `/progress` (the cutover readiness as JSON): GET only, one request per
//! connection, no keep-alive. Enough for Prometheus, health checks and a
//! dashboard; nothing else is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;

use crate::error::Fatal;
use crate::metrics::Metrics;

/// What `GET /progress` serves: a JSON text, or why it cannot be had now.
pub type ProgressFn = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Bind now (so a taken port fails at start-up), serve until `cancel`.
pub async fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    progress: Option<ProgressFn>,
    cancel: CancellationToken,
) -> Result<SocketAddr, Fatal> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::Config(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
    let local = listener.local_addr().map_err(|e| Fatal::Config(e.to_string()))?;
    tracing::info!(address = %local, "Serving /metrics, /healthz, /readyz and /progress");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let (m, p) = (metrics.clone(), progress.clone());
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(15), handle(stream, &m, p)).await;
                        });
                    }
                }
            }
        }
    });
    Ok(local)
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, progress: Option<ProgressFn>) -> std::io::Result<()> {
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
    let mut content_type = "text/plain; version=0.0.4; charset=utf-8";
    let (status, body) = match (method, path) {
        ("GET", "/progress") => {
            content_type = "application/json";
            match progress {
                Some(p) => match tokio::time::timeout(Duration::from_secs(10), p()).await {
                    Ok(Ok(json)) => ("200 OK", json),
                    Ok(Err(e)) => ("503 Service Unavailable", serde_json::json!({ "error": e }).to_string()),
                    Err(_) => ("503 Service Unavailable", r#"{"error":"MongoDB did not answer in time"}"#.to_string()),
                },
                None => ("404 Not Found", r#"{"error":"no progress here"}"#.to_string()),
            }
        }
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        ("GET", "/healthz") => ("200 OK", "ok\n".to_string()),
        ("GET", "/readyz") if metrics.is_ready() => ("200 OK", "ready\n".to_string()),
        ("GET", "/readyz") => ("503 Service Unavailable", "not ready\n".to_string()),
        ("GET", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "GET only\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
