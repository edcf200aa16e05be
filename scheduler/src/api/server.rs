//! The HTTP/1 server under the API: `axum::serve` has no header-read timeout and no
//! connection cap, so an idle or half-sent connection could be held (with its buffers)
//! for ever and their number grow without bound. This accept loop uses hyper's own
//! HTTP/1 connection with a header-read timeout (which also closes keep-alive
//! connections that send no next request), stops accepting while `max_connections` are
//! open (further clients wait in the kernel's listen backlog), and drains open
//! connections on shutdown. Body reads are bounded by the handlers (`read_body`,
//! `stream_input`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Bounds on connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A request's headers (and, on a kept-alive connection, the next request's) must
    /// arrive within this; the connection is closed otherwise.
    pub header_read_timeout: Duration,
    /// Largest buffer for a request's head, bytes (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
    /// How long open connections get to finish their requests at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections
/// finish (up to the grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServerConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept:
                    // back off briefly instead of spinning on the error.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let open = metrics.connection_opened();
        let connection = graceful.watch(
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())),
        );
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection; nothing to do.
            let _ = connection.await;
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!("connections still open at the end of the shutdown grace period");
        }
    }
}
