//! A Redis connection that goes silent (half-open TCP after a failover): a real
//! redis-server behind a relay that can freeze the connections it carries, as a dead
//! peer would, while new connections still get through.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::{RedisConfig, RedisQueue};
use sluice_shared::{Job, JobInput, ModuleHash, Queue};
use sluice_tests::RedisServer;

/// A TCP relay to a Redis port; `freeze` makes every connection open so far go silent
/// for good (bytes are swallowed, nothing is closed), like a peer that vanished.
struct Relay {
    port: u16,
    generation: Arc<AtomicU64>,
}

impl Relay {
    fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let current = generation.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let current = current.clone();
                    std::thread::spawn(move || pipe(from, to, born, &current));
                }
            }
        });
        Relay { port, generation }
    }

    fn freeze(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while the connection's generation is current; after a freeze
/// it holds both sockets open and silent until the test process ends.
fn pipe(mut from: TcpStream, mut to: TcpStream, born: u64, current: &AtomicU64) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if current.load(Ordering::SeqCst) != born {
            // Swallow everything from now on, answer nothing, close nothing.
            while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
            loop {
                std::thread::park();
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn config(url: String) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.queue = "stalled".into();
    config.response_timeout = Duration::from_secs(1);
    config
}

/// A claim whose blocking read goes over a connection that went silent ends (it used
/// to hang ~15 minutes, until the kernel gave up on the connection), and a later claim
/// reads new jobs over a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_a_silent_connection_ends_and_the_next_reconnects() {
    let server = RedisServer::start();
    let relay = Relay::start(server.port());
    let queue = RedisQueue::connect(config(format!("redis://127.0.0.1:{}", relay.port)))
        .await
        .expect("connect through the relay");
    let direct = RedisQueue::connect(config(server.url()))
        .await
        .expect("connect");
    let lease = Duration::from_secs(60);
    let wait = Duration::from_millis(200);
    let bound = Duration::from_secs(60);
    assert!(queue.claim("w", 1, lease, wait).await.unwrap().is_empty());

    relay.freeze();
    // Empty or an error: either way it ends.
    let ended = tokio::time::timeout(bound, queue.claim("w", 1, lease, wait)).await;
    assert!(ended.is_ok(), "a claim over a silent connection hung");

    direct
        .enqueue(&[Job::new(ModuleHash::of(b"x"), JobInput::Inline(vec![1]))])
        .await
        .unwrap();
    let deadline = Instant::now() + bound;
    loop {
        let claimed = tokio::time::timeout(bound, queue.claim("w", 1, lease, wait))
            .await
            .expect("a claim after the freeze hung");
        if claimed.is_ok_and(|c| c.len() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no claim read the new job over a fresh connection"
        );
    }
}
