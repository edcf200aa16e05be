//! Helpers for the scaling tests: workers that serve their own `/metrics` (the
//! per-worker record of what each one ran), reading one series off a `/metrics` page,
//! and the worker group's figures as KEDA's redis-streams scaler reads them
//! (`XINFO GROUPS` lag, `XPENDING` count).

use std::net::TcpListener;

use crate::{Fleet, RedisServer, WorkerProcess, serve};

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";

/// A free loopback address (`127.0.0.1:<port>`) for a server to listen on.
pub fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string()
}

/// The value of series `series` (name and labels exactly as printed) on the
/// `/metrics` page at `addr`; `None` when the page has no such series.
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    let mut reply = serve::agent()
        .get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap_or_else(|e| panic!("read /metrics at {addr}: {e}"));
    let text = reply
        .body_mut()
        .read_to_string()
        .expect("a UTF-8 metrics page");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
}

/// A worker serving its metrics at its own address.
pub struct MeteredWorker {
    /// The process.
    pub process: WorkerProcess,
    /// Where its `/metrics` is.
    pub metrics: String,
}

impl MeteredWorker {
    /// Starts worker `consumer` on `fleet`'s queue with `extra` flags and its metrics
    /// on a free address, once it is ready.
    pub fn start(fleet: &Fleet, consumer: &str, extra: &[&str]) -> Self {
        let metrics = free_addr();
        let flag = format!("--metrics-addr={metrics}");
        let mut args = vec![flag.as_str()];
        args.extend_from_slice(extra);
        MeteredWorker {
            process: fleet.worker(consumer, &args),
            metrics,
        }
    }

    /// Runs it finished with outcome `kind` (its `sluice_jobs_total{outcome=…}`).
    pub fn finished(&self, kind: &str) -> u64 {
        let series = format!("sluice_jobs_total{{outcome=\"{kind}\"}}");
        metric(&self.metrics, &series).unwrap_or_else(|| panic!("no series {series}")) as u64
    }
}

/// The worker group's figures, the ones KEDA's redis-streams scaler reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupFigures {
    /// `XINFO GROUPS` lag: entries not yet delivered to the group (`None` when Redis
    /// cannot tell, which it reports as nil).
    pub lag: Option<u64>,
    /// `XINFO GROUPS` pending: entries delivered and not acknowledged.
    pub pending: u64,
    /// `XPENDING` (summary form) count: the same figure read the way KEDA reads it.
    pub xpending: u64,
}

impl std::fmt::Display for GroupFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lag {:?}, pending {} (XPENDING {})",
            self.lag, self.pending, self.xpending
        )
    }
}

/// The job stream of queue `queue`.
pub fn stream(queue: &str) -> String {
    format!("sluice:{{{queue}}}:jobs")
}

/// Reads the worker group's figures of queue `queue` on `server` with `redis-cli`.
pub fn group_figures(server: &RedisServer, queue: &str) -> GroupFigures {
    let stream = stream(queue);
    let groups = server.cli(&["XINFO", "GROUPS", &stream]);
    // redis-cli prints a reply without a terminal one element a line: per group,
    // field and value alternate, a nil value being an empty line.
    let lines: Vec<&str> = groups.lines().collect();
    let mut all: Vec<Vec<(&str, &str)>> = Vec::new();
    for pair in lines.chunks(2) {
        let (key, value) = (pair[0], pair.get(1).copied().unwrap_or(""));
        if key == "name" {
            all.push(Vec::new());
        }
        if let Some(group) = all.last_mut() {
            group.push((key, value));
        }
    }
    let ours = all
        .into_iter()
        .find(|g| g.contains(&("name", GROUP)))
        .unwrap_or_else(|| panic!("no group {GROUP} on {stream}: {groups:?}"));
    let field = |name: &str| {
        ours.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {ours:?}"))
    };
    let lag = field("lag");
    let lag = (!lag.is_empty()).then(|| lag.parse().expect("lag is a number"));
    let pending = field("pending").parse().expect("pending is a number");
    let summary = server.cli(&["XPENDING", &stream, GROUP]);
    let xpending = summary
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("XPENDING summary: {summary:?}"));
    GroupFigures {
        lag,
        pending,
        xpending,
    }
}

/// A running `sluice exporter` (the queue-state metrics without the API), killed when
/// dropped.
pub struct Exporter {
    child: std::process::Child,
    /// Where its `/metrics` is.
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Exporter {
    /// Starts `sluice exporter --listen 127.0.0.1:0 --redis <url> --queue <queue>`,
    /// once it says where it listens.
    pub fn start(redis_url: &str, queue: &str) -> Self {
        Self::start_with(redis_url, &["--queue", queue])
    }

    /// Starts `sluice exporter --listen 127.0.0.1:0 --redis <url>` with `extra`
    /// arguments, once it says where it listens.
    pub fn start_with(redis_url: &str, extra: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = crate::bin("sluice")
            .args(["exporter", "--listen", "127.0.0.1:0", "--redis", redis_url])
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("SLUICE_QUEUE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start sluice exporter");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                if let Some(addr) = line.strip_prefix("sluice exporter: listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                eprintln!("[exporter] {line}");
            }
        });
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(addr) => Exporter { child, addr, log },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sluice exporter did not say where it listens: {e}");
            }
        }
    }

    /// Everything it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The worker group's figures of `queue` as it reports them: `(lag, pending)`
    /// from `sluice_queue_lag_entries` and `sluice_queue_pending_entries`.
    pub fn figures(&self, queue: &str) -> ExportedFigures {
        let read = |name: &str| {
            let series = format!("{name}{{queue=\"{queue}\"}}");
            metric(&self.addr, &series).unwrap_or_else(|| panic!("no series {series}")) as u64
        };
        ExportedFigures {
            lag: read("sluice_queue_lag_entries"),
            pending: read("sluice_queue_pending_entries"),
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `sluice exporter` reports for a queue's worker group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportedFigures {
    /// `sluice_queue_lag_entries`.
    pub lag: u64,
    /// `sluice_queue_pending_entries`.
    pub pending: u64,
}

impl std::fmt::Display for ExportedFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lag {}, pending {}", self.lag, self.pending)
    }
}
