//! The one HTTP/1 server under every listener of both binaries (the API of `sluice
//! serve`, its `--metrics-listen`, `sluice exporter`, and the worker's `/metrics` +
//! `/healthz` + `/readyz` endpoint): `axum::serve` has no header-read timeout and no
//! connection cap, so an idle or half-sent connection could be held (with its buffers)
//! for ever and their number grow without bound. This accept loop uses hyper's own
//! HTTP/1 connection with a header-read timeout (which also closes keep-alive
//! connections that send no next request), stops accepting while `max_connections` are
//! open (further clients wait in the kernel's listen backlog), optionally caps the
//! connections one client address holds (closing the rest as soon as they are
//! accepted, so one client cannot hold a metrics port's every connection and starve
//! its health probes), and drains open connections on shutdown. Body reads are bounded by the handlers (the API's
//! `read_body`, `stream_input`; the endpoints take no body).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds on connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most of them one client address may hold; a further connection from it is
    /// closed as soon as it is accepted. `None`: no such cap (the API, where every
    /// client behind a proxy shares one address).
    pub max_connections_per_peer: Option<usize>,
    /// A request's headers (and, on a kept-alive connection, the next request's) must
    /// arrive within this; the connection is closed otherwise.
    pub header_read_timeout: Duration,
    /// Largest buffer for a request's head, bytes (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
    /// How long open connections get to finish their requests at shutdown.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// The API's bounds (`sluice serve`'s listen address): 1,024 connections, 10 s for
    /// a request's headers, 64 KiB of them, 10 s to finish at shutdown.
    pub const API: ServerConfig = ServerConfig {
        max_connections: 1024,
        max_connections_per_peer: None,
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 64 << 10,
        shutdown_grace: Duration::from_secs(10),
    };

    /// A metrics or health port's bounds (the worker's `--metrics-addr`, `sluice serve
    /// --metrics-listen`, `sluice exporter`): its clients are a few scrapers and probes,
    /// so 64 connections, 16 of them per client address (one client holding its 16
    /// leaves room for the probes), 10 s for a request's headers, 16 KiB of them, 5 s
    /// to finish at shutdown.
    pub const ENDPOINT: ServerConfig = ServerConfig {
        max_connections: 64,
        max_connections_per_peer: Some(16),
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

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections
/// finish (up to the grace period). `opened` is called for each accepted connection and
/// what it returns is held until that connection ends (a guard keeping an
/// open-connections gauge up, or `()`).
pub async fn serve<G: Send + 'static>(
    listener: TcpListener,
    app: Router,
    config: ServerConfig,
    opened: impl Fn() -> G,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    let peers = Arc::new(Mutex::new(HashMap::new()));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
        let peer_slot = match config.max_connections_per_peer {
            Some(max) => match PeerSlot::take(&peers, peer.ip(), max) {
                Some(slot) => Some(slot),
                None => {
                    // Closed at once (its permit with it): waiting in the backlog, it
                    // would queue the other clients behind it.
                    tracing::debug!(%peer, "closing a connection past the per-client cap");
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let open = opened();
        let connection = graceful.watch(
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())),
        );
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection; nothing to do.
            let _ = connection.await;
            drop(open);
            drop(peer_slot);
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

/// One connection counted against its client address until dropped.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    /// A slot for `ip` if it holds fewer than `max` connections. The map holds only
    /// addresses with open connections, so at most `max_connections` entries.
    fn take(peers: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let ip = ip.to_canonical();
        let mut held = peers.lock();
        let count = held.entry(ip).or_insert(0);
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.peers.lock();
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A generous bound on waits for events that must come (never a measurement).
    const EVENTUALLY: Duration = Duration::from_secs(60);

    /// Counts connections open now, as a gauge would.
    struct Open(Arc<AtomicUsize>);

    impl Drop for Open {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Starts a server with `config` answering `GET /` with `ok`; returns its address,
    /// the open-connections count, and the sender that stops it.
    async fn start(
        config: ServerConfig,
    ) -> (
        std::net::SocketAddr,
        Arc<AtomicUsize>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let counter = open.clone();
        let server = tokio::spawn(serve(
            listener,
            app,
            config,
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Open(counter.clone())
            },
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, open, stop, server)
    }

    /// Waits until `open` reads `n`.
    async fn await_open(open: &AtomicUsize, n: usize) {
        tokio::time::timeout(EVENTUALLY, async {
            while open.load(Ordering::SeqCst) != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} connections open, not {n}", open.load(Ordering::SeqCst)));
    }

    /// A connection that sent half a request head.
    async fn half_sent(addr: std::net::SocketAddr) -> TcpStream {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        c
    }

    /// Reads until the server closes the connection; what it sent.
    async fn read_to_close(c: &mut TcpStream) -> String {
        let mut reply = Vec::new();
        tokio::time::timeout(EVENTUALLY, async {
            // A reset is a close too.
            let _ = c.read_to_end(&mut reply).await;
        })
        .await
        .expect("the server closed the connection");
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[tokio::test]
    async fn the_cap_holds_until_a_connection_closes() {
        let config = ServerConfig {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(600),
            ..ServerConfig::ENDPOINT
        };
        let (addr, open, stop, server) = start(config).await;
        let first = half_sent(addr).await;
        let second = half_sent(addr).await;
        await_open(&open, 2).await;
        // The third completes the handshake (the listen backlog) but is not accepted,
        // so its whole request goes unanswered while the two are held.
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
        assert!(early.is_err(), "the third connection was served: {early:?}");
        assert_eq!(open.load(Ordering::SeqCst), 2);
        // One holder goes: the third is accepted and answered.
        drop(first);
        let reply = read_to_close(&mut third).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("ok"), "{reply}");
        drop(second);
        stop.send(()).unwrap();
        tokio::time::timeout(EVENTUALLY, server)
            .await
            .expect("the server stopped within its grace")
            .unwrap();
    }

    /// A connection from `from` (a loopback address) to `addr`.
    async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind((std::net::Ipv4Addr::from(from), 0).into())
            .unwrap();
        socket.connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn one_client_holding_its_share_leaves_room_for_others() {
        let config = ServerConfig {
            max_connections: 8,
            max_connections_per_peer: Some(2),
            header_read_timeout: Duration::from_secs(600),
            ..ServerConfig::ENDPOINT
        };
        let (addr, open, stop, _server) = start(config).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = connect_from([127, 0, 0, 1], addr).await;
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            held.push(c);
        }
        await_open(&open, 2).await;
        // Its third is accepted and closed unanswered, and never counted as open.
        let mut third = connect_from([127, 0, 0, 1], addr).await;
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let _ = third.write_all(request).await;
        assert_eq!(read_to_close(&mut third).await, "");
        // Another client is served meanwhile.
        let mut other = connect_from([127, 0, 0, 2], addr).await;
        other.write_all(request).await.unwrap();
        let reply = read_to_close(&mut other).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        // Once one of the first client's goes, it may open another.
        drop(held.pop());
        await_open(&open, 1).await;
        let mut again = connect_from([127, 0, 0, 1], addr).await;
        again.write_all(request).await.unwrap();
        let reply = read_to_close(&mut again).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        stop.send(()).unwrap();
    }

    #[tokio::test]
    async fn a_silent_or_half_sent_connection_is_closed_after_the_header_timeout() {
        let config = ServerConfig {
            header_read_timeout: Duration::from_millis(200),
            ..ServerConfig::ENDPOINT
        };
        let (addr, open, stop, _server) = start(config).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = half_sent(addr).await;
        assert_eq!(read_to_close(&mut silent).await, "");
        // hyper answers a timed-out head with nothing, or a 408, then closes.
        let reply = read_to_close(&mut half).await;
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
            "{reply}"
        );
        await_open(&open, 0).await;
        // A kept-alive connection that sends no next request is closed the same way.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let reply = read_to_close(&mut kept).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        stop.send(()).unwrap();
    }

    #[tokio::test]
    async fn shutdown_lets_a_connection_finish_within_the_grace() {
        let config = ServerConfig {
            header_read_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_millis(200),
            ..ServerConfig::ENDPOINT
        };
        let (addr, open, stop, server) = start(config).await;
        let _held = half_sent(addr).await;
        await_open(&open, 1).await;
        stop.send(()).unwrap();
        // A connection that never finishes its request does not hold the shutdown
        // past the grace period.
        tokio::time::timeout(EVENTUALLY, server)
            .await
            .expect("the server stopped after its grace")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }

    #[test]
    fn the_default_is_the_api_and_endpoints_take_fewer() {
        assert_eq!(ServerConfig::default(), ServerConfig::API);
        let (api, endpoint) = (ServerConfig::API, ServerConfig::ENDPOINT);
        assert!(endpoint.max_connections < api.max_connections);
        assert_eq!(api.max_connections_per_peer, None);
        assert!(endpoint.max_connections_per_peer < Some(endpoint.max_connections));
        assert!(endpoint.max_header_bytes >= 8192);
    }
}
