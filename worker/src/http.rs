//! The one HTTP/1 server under every listener of both binaries (the API of `sluice
//! serve`, its `--metrics-listen`, `sluice exporter`, and the worker's `/metrics` +
//! `/healthz` + `/readyz` endpoint): `axum::serve` has no header-read timeout and no
//! connection cap, so an idle or half-sent connection could be held (with its buffers)
//! for ever and their number grow without bound. This accept loop uses hyper's own
//! HTTP/1 connection with a header-read timeout (which also closes keep-alive
//! connections that send no next request), caps the connections open at once, and
//! drains open connections on shutdown. When the cap is full, the API stops accepting
//! (further clients wait in the kernel's listen backlog: its long `?wait` requests and
//! streamed uploads must not be cut by a flood), while a metrics or health port accepts
//! the new connection and evicts its oldest one, so that connections held open by one
//! client, whatever its addresses, cannot keep a probe that sends its request at once
//! from being served. A connection may also have a maximum age (a client that sends
//! requests and never reads the answers is not bounded by the header timeout). Body
//! reads are bounded by the handlers (the API's `read_body`, `stream_input`; the
//! endpoints take no body).

mod connection;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use connection::{Ends, Registry};

/// Bounds on connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most connections open at once.
    pub max_connections: usize,
    /// When `max_connections` are open: `true` accepts a further connection and closes
    /// the oldest open one ([`Hooks::evicted`] is called); `false` stops accepting until
    /// one closes (further clients wait in the listen backlog).
    pub evict_oldest_when_full: bool,
    /// A connection open this long is asked to finish its request in progress and
    /// close, and is dropped if it has not within `header_read_timeout` more (a client
    /// that pipelines requests and never reads the answers). `None`: no such bound.
    pub max_connection_age: Option<Duration>,
    /// A request's headers (and, on a kept-alive connection, the next request's) must
    /// arrive within this; the connection is closed otherwise.
    pub header_read_timeout: Duration,
    /// Largest buffer for a request's head, bytes (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
    /// How long open connections get to finish their requests at shutdown.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// The API's bounds (`sluice serve`'s listen address): 1,024 connections (when
    /// full, further clients wait: no request in progress is cut), no age, 10 s for a
    /// request's headers, 64 KiB of them, 10 s to finish at shutdown.
    pub const API: ServerConfig = ServerConfig {
        max_connections: 1024,
        evict_oldest_when_full: false,
        max_connection_age: None,
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 64 << 10,
        shutdown_grace: Duration::from_secs(10),
    };

    /// A metrics or health port's bounds (the worker's `--metrics-addr`, `sluice serve
    /// --metrics-listen`, `sluice exporter`): its clients are a few scrapers and probes,
    /// each request served in milliseconds, so 64 connections, the oldest evicted for a
    /// new one when all 64 are open, 30 s at most per connection, 10 s for a request's
    /// headers, 16 KiB of them, 5 s to finish at shutdown.
    pub const ENDPOINT: ServerConfig = ServerConfig {
        max_connections: 64,
        evict_oldest_when_full: true,
        max_connection_age: Some(Duration::from_secs(30)),
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 16 << 10,
        shutdown_grace: Duration::from_secs(5),
    };
}

impl Default for ServerConfig {
    /// [`ServerConfig::API`].
    fn default() -> Self {
        ServerConfig::API
    }
}

/// What a listener records about its connections.
pub struct Hooks<G> {
    /// Called for each accepted connection; what it returns is held until that
    /// connection ends (a guard keeping an open-connections gauge up, or `()`).
    pub opened: Box<dyn Fn() -> G + Send + Sync>,
    /// Called for each connection evicted to make room for a new one (a counter).
    pub evicted: Box<dyn Fn() + Send + Sync>,
}

impl Hooks<()> {
    /// Records nothing (evictions are still logged).
    pub fn none() -> Self {
        Hooks {
            opened: Box::new(|| ()),
            evicted: Box::new(|| ()),
        }
    }
}

/// At most one eviction warning per this long (a flood evicts at every accept).
const EVICTION_WARNING_EVERY: Duration = Duration::from_secs(5);

/// How long to pause after an accept error other than a client's own (out of file
/// descriptors), instead of spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections
/// finish (up to the grace period), recording connections through `hooks`.
pub async fn serve<G: Send + 'static>(
    listener: TcpListener,
    app: Router,
    config: ServerConfig,
    hooks: Hooks<G>,
    shutdown: impl Future<Output = ()>,
) {
    let max = config
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max));
    let registry = Arc::new(Registry::default());
    let stopping = CancellationToken::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    let mut evictions = Evictions::default();
    tokio::pin!(shutdown);
    loop {
        // The API waits for a free permit before accepting; an endpoint accepts first
        // and makes room if it must.
        let waited = if config.evict_oldest_when_full {
            None
        } else {
            tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
                ) => {
                    // The client gave up before it was accepted: nothing to wait for.
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors: pause instead of spinning on the error.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match waited {
            Some(permit) => permit,
            None => match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Full: the oldest connection goes (its task ends at once and frees
                    // its permit). If none is registered, one is ending already.
                    if registry.evict_oldest() {
                        (hooks.evicted)();
                        evictions.record();
                    }
                    tokio::select! {
                        permit = permits.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                        () = &mut shutdown => break,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let open = (hooks.opened)();
        let (registered, evicted) = registry.register();
        let served =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let ends = Ends {
            evicted,
            stopping: stopping.clone(),
            max_age: config.max_connection_age,
            finish_grace: config.header_read_timeout,
        };
        tokio::spawn(async move {
            connection::run(served, ends).await;
            drop(registered);
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    stopping.cancel();
    // Every connection holds a permit until it ends: all of them back means all ended.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!("connections still open at the end of the shutdown grace period");
        }
    }
}

/// Evictions since the last warning, which is logged at most every
/// [`EVICTION_WARNING_EVERY`].
#[derive(Default)]
struct Evictions {
    since_warning: u64,
    warned: Option<Instant>,
}

impl Evictions {
    fn record(&mut self) {
        self.since_warning += 1;
        let due = self
            .warned
            .is_none_or(|warned| warned.elapsed() >= EVICTION_WARNING_EVERY);
        if due {
            tracing::warn!(
                evicted = self.since_warning,
                "connection cap full: evicting the oldest connection for each new one \
                 (is a client holding connections open?)"
            );
            self.since_warning = 0;
            self.warned = Some(Instant::now());
        }
    }
}
