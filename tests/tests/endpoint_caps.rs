//! Every metrics and health port is the bounded server (`sluice_worker::http`), not a
//! bare `axum::serve`, with a metrics port's bounds: with its 64 connections held by
//! half-sent requests (slowloris), a probe that sends its request at once is served and
//! the oldest holder is closed to make room, and the eviction is counted (the worker)
//! or logged (the scheduler's ports): a bare server never closes the oldest, and a cap
//! that only waits answers the probe once the oldest times out, but records no
//! eviction. A real `sluice-worker serve` counts exactly 64 open and runs jobs while
//! its port is full; `/healthz` answers once the holders go; a connection that sends
//! no header is closed by the server. The same holds on `sluice exporter` and `sluice
//! serve --metrics-listen`. (That the API instead waits for a connection to close, and
//! that a client that never reads its answers is closed at its age, is unit-tested in
//! `worker/src/http/tests.rs`.)

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use sluice_shared::{Job, JobInput, OutcomeKind, Queue};
use sluice_tests::scaling::Exporter;
use sluice_tests::wait::{await_finished, poll};
use sluice_tests::{Fleet, RedisServer, ServeProcess};

/// `ServerConfig::ENDPOINT.max_connections`: a metrics or health port's cap.
const CAP: usize = 64;

/// A generous bound on waits for events that must come (the header timeout is 10 s;
/// this is no measurement).
const EVENTUALLY: Duration = Duration::from_secs(120);

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// A connection that sent half a request head and stalls.
fn half_sent(addr: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a head");
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

/// `GET path` on `addr` over a connection of its own (asking for it to close after the
/// answer): the whole answer.
fn get(addr: &str, path: &str) -> String {
    let mut c = TcpStream::connect(addr).expect("connect");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send a request");
    read_to_close(&mut c, path)
}

/// Whether the server has closed `c` already (without waiting).
fn closed(c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = !matches!(c.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    c.set_nonblocking(false).unwrap();
    closed
}

/// [`CAP`] half-sent connections held on one port, oldest first.
struct Holders(Vec<TcpStream>);

impl Holders {
    /// Fills `addr`'s cap (connected one after another: the server accepts them in
    /// that order).
    fn fill(addr: &str) -> Self {
        Holders((0..CAP).map(|_| half_sent(addr)).collect())
    }

    /// With the cap full, `GET path` is answered 200 and the oldest holder is closed to
    /// make room; the answer. Every holder is still open when the probe is sent: the
    /// header timeout (10 s) has not run out on any (on a machine stalled that long
    /// between filling the cap and this, the test fails here rather than pass without
    /// showing eviction). The caller checks that the eviction was recorded: a cap that
    /// only waits would answer the probe too, once the oldest timed out.
    fn probe(&mut self, addr: &str, path: &str, what: &str) -> String {
        let gone = self.0.iter().filter(|c| closed(c)).count();
        assert_eq!(
            gone, 0,
            "{what}: holders closed before the probe (a stalled machine?)"
        );
        let reply = get(addr, path);
        assert!(reply.starts_with("HTTP/1.1 200"), "{what}: {reply}");
        let oldest = read_to_close(&mut self.0[0], "the oldest holder");
        assert!(
            oldest.is_empty() || oldest.starts_with("HTTP/1.1 408"),
            "{what}: the oldest holder was answered {oldest}"
        );
        reply
    }
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

/// What the scheduler's ports log when they evict (`sluice_worker::http`).
const EVICTION_WARNING: &str = "evicting the oldest connection";

/// On a scheduler metrics port: a probe is served past the full cap and the eviction
/// is logged (`log` reads the process's stderr so far), `/healthz` answers once the
/// holders go, and a silent connection is closed by the server.
fn capped_and_comes_back(addr: &str, what: &str, log: impl Fn() -> bool) {
    assert!(!log(), "{what}: evicted before the cap was full");
    let mut holders = Holders::fill(addr);
    holders.probe(addr, "/healthz", what);
    poll(
        &format!("{what} logging the eviction"),
        EVENTUALLY,
        &log,
        |logged| *logged,
    );
    drop(holders);
    let reply = get(addr, "/healthz");
    assert!(reply.starts_with("HTTP/1.1 200"), "{what}: {reply}");
    let mut silent = TcpStream::connect(addr).expect("connect");
    assert_eq!(
        read_to_close(&mut silent, what),
        "",
        "{what}: a silent connection"
    );
}

#[test]
fn the_workers_endpoint_is_capped_and_comes_back() {
    let fleet = Fleet::start("endpoint-cap");
    let Fleet { rt, queue, .. } = &fleet;
    let module = fleet.put_module(br#"(module (func (export "_start")))"#);
    let addr = free_addr();
    let _worker = fleet.worker("w0", &["--metrics-addr", &addr]);
    poll(
        "the worker's endpoint answering",
        EVENTUALLY,
        || TcpStream::connect(&addr).is_ok(),
        |up| *up,
    );
    let before = get(&addr, "/metrics");
    let evicted_before = sample(&before, "sluice_worker_endpoint_connections_evicted_total");

    let mut holders = Holders::fill(&addr);
    // A scrape is served past the full cap; it counts the eviction and the connections
    // open (the holders left and itself).
    let scrape = holders.probe(&addr, "/metrics", "the worker's endpoint");
    let evicted = sample(&scrape, "sluice_worker_endpoint_connections_evicted_total");
    assert_eq!(evicted - evicted_before, 1.0, "evictions");
    let open = sample(&scrape, "sluice_worker_endpoint_connections_open");
    assert_eq!(open, CAP as f64, "connections open");

    // Full again; the worker runs jobs meanwhile.
    holders.0.push(half_sent(&addr));
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

    drop(holders);
    let reply = get(&addr, "/healthz");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // A client that never sends a byte is closed by the server (after the header
    // timeout).
    let mut silent = TcpStream::connect(&addr).expect("connect");
    assert_eq!(read_to_close(&mut silent, "a silent connection"), "");
}

#[test]
fn the_scheduler_metrics_ports_are_capped_and_come_back() {
    let redis = RedisServer::start();
    let exporter = Exporter::start(&redis.url(), "caps");
    capped_and_comes_back(&exporter.addr, "sluice exporter", || {
        exporter.stderr().contains(EVICTION_WARNING)
    });
    let reply = get(&exporter.addr, "/metrics");
    assert!(reply.contains("sluice_build_info"), "{reply}");

    let private = free_addr();
    let serve = ServeProcess::start_with(
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
    capped_and_comes_back(&private, "sluice serve --metrics-listen", || {
        serve.logged(EVICTION_WARNING)
    });
}
