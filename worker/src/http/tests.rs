//! The bounded server against real TCP clients on loopback.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A generous bound on waits for events that must come (never a measurement).
const EVENTUALLY: Duration = Duration::from_secs(60);

/// How long `GET /slow` takes to answer.
const SLOW: Duration = Duration::from_secs(2);

/// A whole request that asks for the connection to close after its answer.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// Counts connections open now, as a gauge would.
struct Open(watch::Sender<usize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A running server answering `GET /` with `ok`.
struct Server {
    addr: std::net::SocketAddr,
    /// Connections open now.
    open: watch::Receiver<usize>,
    /// Connections evicted so far.
    evicted: Arc<AtomicUsize>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a server with `config`.
async fn start(config: ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (counter, open) = watch::channel(0usize);
    let evicted = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(SLOW).await;
                "slow"
            }),
        );
    let evictions = evicted.clone();
    let hooks = Hooks {
        opened: Box::new(move || {
            counter.send_modify(|n| *n += 1);
            Open(counter.clone())
        }),
        evicted: Box::new(move || {
            evictions.fetch_add(1, Ordering::SeqCst);
        }),
    };
    let task = tokio::spawn(serve(listener, app, config, hooks, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        open,
        evicted,
        stop,
        task,
    }
}

impl Server {
    /// Waits until `n` connections are open.
    async fn await_open(&mut self, n: usize) {
        let reached = tokio::time::timeout(EVENTUALLY, self.open.wait_for(|open| *open == n))
            .await
            .is_ok_and(|changed| changed.is_ok());
        assert!(reached, "{} connections open, not {n}", *self.open.borrow());
    }

    /// Stops it and waits until it has.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(EVENTUALLY, self.task)
            .await
            .expect("the server stopped within its grace")
            .unwrap();
    }
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

/// `GET /` over a connection of its own: the whole answer.
async fn get(addr: std::net::SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(REQUEST).await.unwrap();
    read_to_close(&mut c).await
}

#[tokio::test]
async fn the_cap_holds_until_a_connection_closes() {
    let config = ServerConfig {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(600),
        ..ServerConfig::API
    };
    let mut server = start(config).await;
    let first = half_sent(server.addr).await;
    let second = half_sent(server.addr).await;
    server.await_open(2).await;
    // The third completes the handshake (the listen backlog) but is not accepted,
    // so its whole request goes unanswered while the two are held. (This can only
    // fail to notice a third connection served late, never fail wrongly.)
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(REQUEST).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(early.is_err(), "the third connection was served: {early:?}");
    assert_eq!(*server.open.borrow(), 2);
    // One holder goes: the third is accepted and answered.
    drop(first);
    let reply = read_to_close(&mut third).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");
    assert_eq!(
        server.evicted.load(Ordering::SeqCst),
        0,
        "the API evicts none"
    );
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn a_full_endpoint_serves_a_new_client_and_evicts_the_oldest() {
    let config = ServerConfig {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(600),
        max_connection_age: None,
        ..ServerConfig::ENDPOINT
    };
    let mut server = start(config).await;
    let mut oldest = TcpStream::connect(server.addr).await.unwrap();
    server.await_open(1).await;
    let mut newer = TcpStream::connect(server.addr).await.unwrap();
    server.await_open(2).await;
    // The cap is full of silent connections: a client sending its request is served.
    let reply = get(server.addr).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // The oldest silent one was closed to make room, and recorded.
    assert_eq!(read_to_close(&mut oldest).await, "");
    assert_eq!(server.evicted.load(Ordering::SeqCst), 1);
    // The newer one is still open: it is served when it sends its request.
    newer.write_all(REQUEST).await.unwrap();
    let reply = read_to_close(&mut newer).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(server.evicted.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_closed_at_the_age() {
    let config = ServerConfig {
        max_connection_age: Some(Duration::from_millis(200)),
        header_read_timeout: Duration::from_millis(200),
        ..ServerConfig::ENDPOINT
    };
    let mut server = start(config).await;
    let c = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = c.into_split();
    // Pipelined requests, never read: the server's answers fill the socket buffers and
    // it stops reading; the header timeout never runs (no head is being waited for).
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(256);
    let written = tokio::time::timeout(EVENTUALLY, async {
        while writer.write_all(&request).await.is_ok() {}
    })
    .await;
    assert!(written.is_ok(), "the connection was never closed");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(EVENTUALLY, reader.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was never closed");
    server.await_open(0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_request_in_progress_at_the_age_is_finished_before_the_close() {
    let config = ServerConfig {
        // Well before `/slow` answers, well after its request arrives.
        max_connection_age: Some(SLOW / 4),
        header_read_timeout: EVENTUALLY,
        ..ServerConfig::ENDPOINT
    };
    let mut server = start(config).await;
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    // Kept alive: only the age closes it, after the answer.
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut c).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("slow"), "{reply}");
    server.await_open(0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_or_half_sent_connection_is_closed_after_the_header_timeout() {
    let config = ServerConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ServerConfig::ENDPOINT
    };
    let mut server = start(config).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = half_sent(server.addr).await;
    assert_eq!(read_to_close(&mut silent).await, "");
    // hyper answers a timed-out head with nothing, or a 408, then closes.
    let reply = read_to_close(&mut half).await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    server.await_open(0).await;
    // A kept-alive connection that sends no next request is closed the same way.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut kept).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_connection_finish_within_the_grace() {
    let config = ServerConfig {
        header_read_timeout: Duration::from_secs(600),
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::ENDPOINT
    };
    let mut server = start(config).await;
    let _held = half_sent(server.addr).await;
    server.await_open(1).await;
    let addr = server.addr;
    // A connection that never finishes its request does not hold the shutdown
    // past the grace period.
    server.stop().await;
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[test]
fn the_default_is_the_api_and_endpoints_take_fewer() {
    assert_eq!(ServerConfig::default(), ServerConfig::API);
    let (api, endpoint) = (ServerConfig::API, ServerConfig::ENDPOINT);
    assert!(endpoint.max_connections < api.max_connections);
    assert!(!api.evict_oldest_when_full && api.max_connection_age.is_none());
    assert!(endpoint.evict_oldest_when_full);
    assert!(endpoint.max_connection_age > Some(endpoint.header_read_timeout));
    assert!(endpoint.max_header_bytes >= 8192);
}
