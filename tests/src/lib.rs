//! Harness for the workspace end-to-end tests: finds the built binaries and the guest
//! modules, so tests run the real `sluice` and `sluice-worker` processes.
//!
//! The binaries are built by the same `cargo test --workspace --release` run that builds
//! these tests (the worker and scheduler crates have integration tests of their own,
//! which makes cargo build their binaries first), in the same profile directory.
//!
//! Fixtures, one per repeated setup, each stopping what it started when dropped:
//! [`RedisServer`] (a redis-server), [`RedisCluster`] (a six-node Redis Cluster), [`WorkerProcess`] (a `sluice-worker serve`),
//! [`ServeProcess`] (a `sluice serve` and an HTTP client with tenant creation),
//! [`Fleet`] (a server, a queue client and workers on demand), [`PrometheusServer`] (a
//! real `prometheus` and its HTTP API); [`wait`] holds the bounded waits for results;
//! [`walkthrough`] runs a document's shell walkthrough as written.

use std::path::PathBuf;
use std::process::Command;

pub mod batch;
pub mod cluster;
pub mod dashboards;
pub mod fleet;
pub mod prometheus;
pub mod redis;
pub mod scaling;
pub mod serve;
pub mod wait;
pub mod walkthrough;
pub mod wasm_gen;
pub mod worker;

pub use cluster::RedisCluster;
pub use fleet::{Fleet, assert_refused_over_stored_quota, fresh_queue};
pub use prometheus::PrometheusServer;
pub use redis::RedisServer;
pub use serve::ServeProcess;
pub use worker::WorkerProcess;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The profile directory the running test binary was built into (`target/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

/// A command for one of the workspace's binaries (`sluice`, `sluice-worker`).
pub fn bin(name: &str) -> Command {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace --release`",
        path.display()
    );
    let mut command = Command::new(path);
    command
        .env_remove("SLUICE_REDIS_URL")
        .env_remove("SLUICE_REDIS_CLUSTER");
    command
}

/// Starts `command` with stdin closed and stdout and stderr piped; stderr lines are
/// passed on (to the test's own stderr, prefixed `[sluice]`) and sent to the returned
/// channel.
pub fn spawn_logged(
    mut command: Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the command");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[sluice] {line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Sends SIGTERM to process `pid`.
pub fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -TERM {pid}");
}

/// Peak resident set size of process `pid` so far (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("VmHWM")
}

/// A guest module: built C guests (`examples/build`, `tests/guests/build`) or WAT.
pub fn guest(name: &str) -> PathBuf {
    let root = repo_root();
    [
        "examples/build",
        "examples/raw",
        "tests/guests",
        "tests/guests/build",
    ]
    .iter()
    .map(|dir| root.join(dir).join(name))
    .find(|path| path.exists())
    .unwrap_or_else(|| panic!("guest {name} not found (build guests with `bash scripts/setup`)"))
}

/// The sample inputs of one example.
pub fn example_inputs(example: &str) -> PathBuf {
    repo_root().join("examples/inputs").join(example)
}

/// A two-thread tokio runtime for tests that drive async clients from sync code.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A Redis queue client on `queue` at `url`.
pub async fn connect(url: &str, queue: &str) -> sluice_shared::queue::redis::RedisQueue {
    let mut config = sluice_shared::queue::redis::RedisConfig::new(url);
    config.queue = queue.to_owned();
    sluice_shared::queue::redis::RedisQueue::connect(config)
        .await
        .expect("connect to Redis")
}

/// Runs `sluice ARGS --redis URL`, asserts it succeeded, and returns its trimmed stdout.
pub fn sluice_ok(redis_url: &str, args: &[&str]) -> String {
    let out = bin("sluice")
        .args(args)
        .args(["--redis", redis_url])
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .trim()
        .to_owned()
}
