//! Every metrics and health port is the bounded server (`sluice_worker::http`), not a
//! bare `axum::serve`, with a metrics port's bounds: with its 64 connections held by
//! half-sent requests (slowloris), a probe that sends its request at once is served and
//! the oldest holder is closed to make room (a bare server never closes it; a server
//! that only stops accepting never answers the probe); a real `sluice-worker serve`
//! runs jobs meanwhile and counts the eviction and what is open; `/healthz` answers
//! once the holders go; a connection that sends no header is closed by the server.
//! The same holds on `sluice exporter` and `sluice serve --metrics-listen`. (That the
//! API instead waits for a connection to close, and that a client that never reads its
//! answers is closed at its age, is unit-tested in `worker/src/http/tests.rs`.)

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
    /// make room; the answer. Whether the others were all still open when the oldest
    /// was closed (if not, the header timeout ran out on a stalled machine, and the
    /// oldest may have gone that way instead).
    fn probe(&mut self, addr: &str, path: &str, what: &str) -> (String, bool) {
        let reply = get(addr, path);
        assert!(reply.starts_with("HTTP/1.1 200"), "{what}: {reply}");
        let oldest = read_to_close(&mut self.0[0], "the oldest holder");
        assert!(
            oldest.is_empty() || oldest.starts_with("HTTP/1.1 408"),
            "{what}: the oldest holder was answered {oldest}"
        );
        let others_open = !self.0[1..].iter().any(closed);
        if !others_open {
            eprintln!("{what}: holders timed out (a stalled machine); eviction not shown");
        }
        (reply, others_open)
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

/// On a scheduler metrics port: a probe is served past the full cap, `/healthz`
/// answers once the holders go, and a silent connection is closed by the server.
fn capped_and_comes_back(addr: &str, what: &str) {
    let mut holders = Holders::fill(addr);
    holders.probe(addr, "/healthz", what);
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
    // The worker runs jobs while its endpoint is full.
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
    // A scrape is served past the full cap; it counts the eviction and the connections
    // open (the holders left and itself).
    let (scrape, others_open) = holders.probe(&addr, "/metrics", "the worker's endpoint");
    let evicted = sample(&scrape, "sluice_worker_endpoint_connections_evicted_total");
    let open = sample(&scrape, "sluice_worker_endpoint_connections_open");
    if others_open {
        assert_eq!(evicted - evicted_before, 1.0, "evictions");
        assert_eq!(open, CAP as f64, "connections open");
    } else {
        assert!(evicted > evicted_before || open < CAP as f64, "{scrape}");
        assert!(open <= CAP as f64, "{open} connections open");
    }

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
    capped_and_comes_back(&exporter.addr, "sluice exporter");
    let reply = get(&exporter.addr, "/metrics");
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
    capped_and_comes_back(&private, "sluice serve --metrics-listen");
}
