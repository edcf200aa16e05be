//! Every metrics and health port is the bounded server (`sluice_worker::http`), not a
//! bare `axum::serve`: more half-sent connections than its cap (slowloris) neither stop
//! a real `sluice-worker serve` from running jobs nor keep its `/healthz` down once
//! they go, one client address holds at most its share (a further connection from it
//! is closed at once, and another client is served meanwhile), a connection that sends
//! no header is closed by the server after the header timeout, and the same holds on
//! `sluice exporter` and `sluice serve --metrics-listen`. (That an N+1th connection
//! waits for one of N to close is unit-tested in `worker/src/http.rs`.) Clients come
//! from several loopback addresses (127.0.0.x) to be several peers.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sluice_shared::{Job, JobInput, OutcomeKind, Queue};
use sluice_tests::scaling::Exporter;
use sluice_tests::wait::{await_finished, poll};
use sluice_tests::{Fleet, RedisServer, ServeProcess};

/// `ServerConfig::ENDPOINT.max_connections`: a metrics or health port's cap.
const CAP: usize = 64;

/// `ServerConfig::ENDPOINT.max_connections_per_peer`: what one client address may hold.
const PER_PEER: usize = 16;

/// Held connections beyond the cap.
const BEYOND: usize = 8;

/// A generous bound on waits for events that must come (the header timeout is 10 s;
/// this is no measurement).
const EVENTUALLY: Duration = Duration::from_secs(120);

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// A connection to `addr` from 127.0.0.`from`.
fn connect_from(from: u8, addr: &str) -> TcpStream {
    let addr: SocketAddr = addr.parse().expect("an address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, from), 0)))
            .expect("bind a loopback source address");
        let stream = socket.connect(addr).await.expect("connect");
        let stream = stream.into_std().expect("a std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
    })
}

/// A connection from 127.0.0.`from` that sent half a request head and stalls.
fn half_sent(addr: &str, from: u8) -> TcpStream {
    let mut c = connect_from(from, addr);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a head");
    c
}

/// A connection from 127.0.0.`from` that sent `GET path` whole (and asks for the
/// connection to close).
fn request(addr: &str, path: &str, from: u8) -> TcpStream {
    let mut c = connect_from(from, addr);
    // The server may have closed it already (past the per-peer cap).
    let _ = write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    c
}

/// Reads `c` until the server closes it; what it sent. Fails if it stays open for
/// [`EVENTUALLY`].
fn read_to_close(c: &mut TcpStream, what: &str) -> String {
    c.set_read_timeout(Some(EVENTUALLY)).unwrap();
    let mut reply = Vec::new();
    if let Err(e) = c.read_to_end(&mut reply) {
        // A reset is a close too; a timeout is not.
        assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{what}: still open after {EVENTUALLY:?}"
        );
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// `GET path` on `addr` from 127.0.0.`from`, over a connection of its own: the whole
/// answer.
fn get(addr: &str, path: &str, from: u8) -> String {
    read_to_close(&mut request(addr, path, from), path)
}

/// Whether the server has closed `c` already (without waiting).
fn closed(c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = !matches!(c.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    c.set_nonblocking(false).unwrap();
    closed
}

/// Holds more half-sent connections than the cap on `addr` (from 127.0.0.10 on,
/// [`PER_PEER`] from each) while `meanwhile` runs, then closes them: a `/healthz` sent
/// while they were held, and one sent afterwards, are answered 200.
fn saturate(addr: &str, meanwhile: impl FnOnce()) {
    let holders: Vec<TcpStream> = (0..CAP + BEYOND)
        .map(|i| half_sent(addr, 10 + u8::try_from(i / PER_PEER).unwrap()))
        .collect();
    let mut waiting = request(addr, "/healthz", 2);
    meanwhile();
    drop(holders);
    let reply = read_to_close(&mut waiting, "/healthz sent while the cap was held");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let reply = get(addr, "/healthz", 2);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// The value of the sample `name` in an HTTP answer carrying a text exposition.
fn sample(reply: &str, name: &str) -> f64 {
    reply
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {reply}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_workers_endpoint_is_capped_and_comes_back() {
    let fleet = Fleet::start("endpoint-cap");
    let Fleet { rt, queue, .. } = &fleet;
    let module = fleet.put_module(br#"(module (func (export "_start")))"#);
    let addr = free_addr();
    let _worker = fleet.worker("w0", &["--metrics-addr", &addr]);
    poll(
        "the worker's endpoint accepting connections",
        EVENTUALLY,
        || TcpStream::connect(&addr).is_ok(),
        |up| *up,
    );

    // One client holds at most its share: a further connection from it is closed
    // unanswered, and another client is served (the gauge counting every connection
    // the endpoint holds, the scrape reading it included).
    let stalled: Vec<TcpStream> = (0..PER_PEER).map(|_| half_sent(&addr, 1)).collect();
    let refused = get(&addr, "/healthz", 1);
    assert_eq!(refused, "", "a connection past the per-client cap");
    let scrape = get(&addr, "/metrics", 2);
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let open = sample(&scrape, "sluice_worker_endpoint_connections_open");
    if stalled.iter().any(closed) {
        // The header timeout (10 s) ran out on some before the scrape: a stalled
        // machine; the count is then less, never more.
        eprintln!("stalled connections timed out before the scrape; {open} open");
        assert!(open <= (PER_PEER + 1) as f64, "{open} connections open");
    } else {
        assert_eq!(open, (PER_PEER + 1) as f64, "connections open");
    }
    drop(stalled);

    // A client that never sends a byte is closed by the server (once accepted, after
    // the header timeout).
    let mut silent = connect_from(3, &addr);
    saturate(&addr, || {
        // The worker runs jobs while its endpoint is saturated.
        let job = Job::new(module, JobInput::Inline(Vec::new()));
        let from = rt.block_on(queue.results().notices_from_now()).unwrap();
        rt.block_on(queue.enqueue(std::slice::from_ref(&job)))
            .unwrap();
        let finished = rt.block_on(await_finished(
            queue,
            from,
            &HashSet::from([job.id]),
            EVENTUALLY,
        ));
        assert_eq!(finished[&job.id], OutcomeKind::Success);
    });
    assert_eq!(read_to_close(&mut silent, "a silent connection"), "");
}

#[test]
fn the_scheduler_metrics_ports_are_capped_and_come_back() {
    let redis = RedisServer::start();
    let exporter = Exporter::start(&redis.url(), "caps");
    let mut silent = connect_from(3, &exporter.addr);
    saturate(&exporter.addr, || {});
    assert_eq!(
        read_to_close(&mut silent, "a silent exporter connection"),
        ""
    );
    let reply = get(&exporter.addr, "/metrics", 2);
    assert!(reply.contains("sluice_build_info"), "{reply}");

    let private = free_addr();
    let _serve = ServeProcess::start_with(
        &redis.url(),
        "caps",
        "admin",
        &["--metrics-listen", &private],
    );
    poll(
        "--metrics-listen accepting connections",
        EVENTUALLY,
        || TcpStream::connect(&private).is_ok(),
        |up| *up,
    );
    let mut silent = connect_from(3, &private);
    saturate(&private, || {});
    assert_eq!(
        read_to_close(&mut silent, "a silent --metrics-listen connection"),
        ""
    );
}
