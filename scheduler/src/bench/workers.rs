//! The bench's worker processes (`sluice-worker serve` on the bench's queue), stopped
//! with SIGTERM and waited for when dropped. Their stderr is piped through the bench:
//! every line is forwarded to the bench's own stderr (so `--worker-log` shows what it
//! always did), and each worker's `worker ready` line is noted with the moment it was
//! read and the worker's CPU time then (the drain run's start, [`Workers::first_ready`]).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use super::cpu::{self, CpuTime};

/// The log target and message of the worker's `worker ready` line, as `serve` logs it.
pub use sluice_worker::fleet::{READY_MESSAGE, READY_TARGET};

/// How long the bench waits for a started worker's `worker ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dropping [`Workers`] waits, after the processes have exited, for the rest
/// of their log to be forwarded (a grandchild still holding the pipe is not waited for).
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How to start the bench's workers; the same spec starts the same fleet again.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The `sluice-worker` binary.
    pub bin: PathBuf,
    /// The Redis URL.
    pub redis_url: String,
    /// The bench's queue.
    pub queue: String,
    /// Worker processes.
    pub count: usize,
    /// Job slots per worker.
    pub slots: usize,
    /// `--ttl` of results, notices and blobs.
    pub ttl: String,
    /// `--cache-ttl` of the shared artifact cache's entries: at least as long as the
    /// whole bench, so the compiled module the first fleet stored is still there when
    /// the drain's workers start ([`super::cache_ttl`]).
    pub cache_ttl: Duration,
    /// Their `RUST_LOG`, as given (`--worker-log`); [`log_filter`] adds the ready line.
    pub log: String,
    /// The fleet's artifact cache key (`SLUICE_CACHE_KEY`): with it, the workers share
    /// compiled modules through Redis (L3), so a worker started again loads the module
    /// the first fleet compiled instead of compiling it.
    pub cache_key: String,
    /// The length of a clock tick (`/proc`'s CPU time unit).
    pub tick: Duration,
}

/// A worker's `worker ready` line, as the bench read it.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    /// Which worker (its index in the fleet).
    pub worker: usize,
    /// When the bench read the line.
    pub at: Instant,
    /// The worker's CPU time then (`None` when it could not be read).
    pub cpu: Option<CpuTime>,
}

/// Running worker processes.
pub struct Workers {
    children: Vec<Child>,
    ready: mpsc::UnboundedReceiver<Ready>,
    /// Every ready line received so far, by worker.
    seen: Vec<Option<Ready>>,
    /// One message per log forwarder that has ended.
    forwarded: std::sync::mpsc::Receiver<()>,
    forwarders: usize,
}

/// `log` with a directive that lets the `worker ready` line through: `log` as given
/// when one of its directives names exactly that target ([`READY_TARGET`]) at a level
/// that lets info through (the user's level for it stands), else `log` without its
/// directives for that exact target (`…::serve=off`, `=warn`) and with
/// `{READY_TARGET}=info` appended.
pub fn log_filter(log: &str) -> String {
    let directives: Vec<&str> = log
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let lets_info_through = |level: &str| {
        ["info", "debug", "trace", "3", "4", "5"]
            .iter()
            .any(|l| level.eq_ignore_ascii_case(l))
    };
    if directives
        .iter()
        .filter_map(|d| ready_target_level(d))
        .any(lets_info_through)
    {
        return log.to_owned();
    }
    let mut kept: Vec<String> = directives
        .into_iter()
        .filter(|d| ready_target_level(d).is_none())
        .map(str::to_owned)
        .collect();
    kept.push(format!("{READY_TARGET}=info"));
    kept.join(",")
}

/// The level a `RUST_LOG` directive gives exactly [`READY_TARGET`] (`trace`, all of
/// them, for the bare target), `None` when it is about another target or none.
fn ready_target_level(directive: &str) -> Option<&str> {
    match directive.split_once('=') {
        Some((target, level)) => (target.trim() == READY_TARGET).then(|| level.trim()),
        None => (directive == READY_TARGET).then_some("trace"),
    }
}

/// Whether a worker's log line is its `worker ready` line: in the text log format
/// `… sluice_worker::fleet::serve: worker ready consumer=…`, in the JSON one an object
/// whose message is `worker ready` and whose target is that module.
pub fn is_ready_line(line: &str) -> bool {
    let text = format!("{READY_TARGET}: {READY_MESSAGE}");
    let ends_text = line
        .find(&text)
        .map(|at| &line[at + text.len()..])
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '));
    let json = line.contains(&format!("\"message\":\"{READY_MESSAGE}\""))
        && line.contains(&format!("\"target\":\"{READY_TARGET}\""));
    ends_text || json
}

/// Copies every line of `input` to `out` and calls `on_ready` once, at the first ready
/// line ([`is_ready_line`]), before that line is copied. A line that is not UTF-8 is
/// read lossily (its bad bytes as U+FFFD) rather than ending the forwarding; after a
/// failed write to `out` nothing more is written, but `input` is still read to its end
/// (so the ready line is still seen and the worker never blocks on a full pipe). Ends
/// at the end of `input` or at an error reading it; returns the first write error.
pub fn forward(
    mut input: impl BufRead,
    out: &mut impl Write,
    mut on_ready: impl FnMut(),
) -> std::io::Result<()> {
    let mut ready = false;
    let mut write_error = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return write_error.map_or(Err(e), Err),
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if !ready && is_ready_line(text) {
            ready = true;
            on_ready();
        }
        if write_error.is_none()
            && let Err(e) = writeln!(out, "{text}")
        {
            write_error = Some(e);
        }
    }
    write_error.map_or(Ok(()), Err)
}

impl Workers {
    /// Starts the workers `spec` describes, each forwarding its log to this process's
    /// stderr and reporting its ready line.
    pub fn start(spec: &WorkerSpec) -> anyhow::Result<Self> {
        let (ready_tx, ready) = mpsc::unbounded_channel();
        let (done_tx, forwarded) = std::sync::mpsc::channel();
        let mut workers = Workers {
            children: Vec::with_capacity(spec.count),
            ready,
            seen: vec![None; spec.count],
            forwarded,
            forwarders: 0,
        };
        let filter = log_filter(&spec.log);
        for i in 0..spec.count {
            let mut child = Command::new(&spec.bin)
                .args(["serve", "--redis", &spec.redis_url, "--queue", &spec.queue])
                .args(["--concurrency", &spec.slots.to_string()])
                .args(["--consumer", &format!("bench-{i}")])
                .args(["--ttl", &spec.ttl])
                .args(["--cache-ttl", &format!("{}s", spec.cache_ttl.as_secs())])
                .env("RUST_LOG", &filter)
                .env(sluice_worker::fleet::config::CACHE_KEY_ENV, &spec.cache_key)
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", spec.bin.display()))?;
            let stderr = child.stderr.take().context("a worker's piped stderr")?;
            let pid = child.id();
            workers.children.push(child);
            let (ready_tx, done_tx, tick) = (ready_tx.clone(), done_tx.clone(), spec.tick);
            std::thread::Builder::new()
                .name(format!("bench-worker-log-{i}"))
                .spawn(move || forward_worker(stderr, i, pid, tick, ready_tx, done_tx))
                .context("starting a worker's log forwarder")?;
            workers.forwarders += 1;
        }
        Ok(workers)
    }

    /// The workers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The CPU time of every worker process so far, summed.
    pub fn cpu(&self, tick: Duration) -> anyhow::Result<CpuTime> {
        Ok(self.cpu_each(tick)?.into_iter().sum())
    }

    /// The CPU time of each worker process so far, in the fleet's order.
    pub fn cpu_each(&self, tick: Duration) -> anyhow::Result<Vec<CpuTime>> {
        self.pids()
            .into_iter()
            .map(|pid| cpu::process(pid, tick).context("a worker process's CPU time"))
            .collect()
    }

    /// Context switches of every worker process's threads so far, summed
    /// ([`cpu::context_switches`]).
    pub fn context_switches(&self) -> anyhow::Result<u64> {
        let mut total = 0u64;
        for pid in self.pids() {
            total += cpu::context_switches(pid).context("a worker's context switches")?;
        }
        Ok(total)
    }

    /// Waits for the next ready line of a worker not yet ready.
    async fn next_ready(&mut self) -> anyhow::Result<Ready> {
        let ready = tokio::time::timeout(READY_TIMEOUT, self.ready.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no `{READY_MESSAGE}` line from a worker in {READY_TIMEOUT:?} (does \
                     --worker-log let {READY_TARGET}=info through?)"
                )
            })?
            .context("every worker's log ended before it said it was ready")?;
        self.seen[ready.worker] = Some(ready);
        Ok(ready)
    }

    /// The first worker's ready line: the first ready line received, or waits for one.
    pub async fn first_ready(&mut self) -> anyhow::Result<Ready> {
        match self.seen.iter().flatten().min_by_key(|r| r.at) {
            Some(first) => Ok(*first),
            None => self.next_ready().await,
        }
    }

    /// Every worker's ready line, in the fleet's order (waits for those not yet read).
    pub async fn all_ready(&mut self) -> anyhow::Result<Vec<Ready>> {
        while self.seen.iter().any(Option::is_none) {
            self.next_ready().await?;
        }
        Ok(self.seen.iter().flatten().copied().collect())
    }
}

/// A worker's log forwarder: copies its stderr to this process's stderr, reports its
/// ready line (with the worker's CPU time at that moment), and says when it ends.
fn forward_worker(
    stderr: ChildStderr,
    worker: usize,
    pid: u32,
    tick: Duration,
    ready: mpsc::UnboundedSender<Ready>,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut out = std::io::stderr();
    let _ = forward(BufReader::new(stderr), &mut out, || {
        let at = Instant::now();
        let cpu = cpu::process(pid, tick).ok();
        let _ = ready.send(Ready { worker, at, cpu });
    });
    let _ = done.send(());
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        // The workers' last lines (`drained; exiting`) reach stderr before the bench
        // goes on.
        let until = Instant::now() + LOG_FLUSH_TIMEOUT;
        for _ in 0..self.forwarders {
            let left = until.saturating_duration_since(Instant::now());
            if self.forwarded.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_is_found_among_others_and_every_line_is_forwarded() {
        let log = "\
2026-11-29T07:50:01.000Z  INFO sluice_worker::cache: artifact cache on
2026-11-29T07:50:01.001Z  WARN sluice_worker::fleet::serve: worker ready? not this one
2026-11-29T07:50:01.001Z  WARN sluice_worker::executor: a guest said worker ready
2026-11-29T07:50:01.002Z  INFO sluice_worker::fleet::serve: worker ready consumer=bench-0 slots=64
2026-11-29T07:50:01.003Z  INFO sluice_worker::fleet::serve: worker ready consumer=bench-0 slots=64
{\"level\":\"INFO\",\"fields\":{\"message\":\"job claimed\"}}
";
        let mut out = Vec::new();
        let mut calls = 0;
        forward(log.as_bytes(), &mut out, || calls += 1).unwrap();
        assert_eq!(calls, 1, "one call, at the first ready line");
        assert_eq!(String::from_utf8(out).unwrap(), log, "every line forwarded");
        let ready: Vec<bool> = log.lines().map(is_ready_line).collect();
        assert_eq!(ready, [false, false, false, true, true, false]);
        // The JSON log format's ready line.
        assert!(is_ready_line(
            r#"{"timestamp":"t","level":"INFO","fields":{"message":"worker ready","slots":64},"target":"sluice_worker::fleet::serve"}"#
        ));
        assert!(!is_ready_line(
            r#"{"fields":{"message":"worker ready"},"target":"sluice_worker::executor"}"#
        ));
    }

    /// A writer that fails every write (the bench's stderr gone).
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_or_a_failed_write_does_not_hide_the_ready_line() {
        let mut log =
            b"2026-11-29T07:50:01.000Z  WARN sluice_worker: bad \xff\xfe bytes\n".to_vec();
        log.extend_from_slice(
            b"2026-11-29T07:50:01.002Z  INFO sluice_worker::fleet::serve: worker ready slots=64\n",
        );
        log.extend_from_slice(b"last line, no newline");
        let mut out = Vec::new();
        let mut calls = 0;
        forward(&log[..], &mut out, || calls += 1).unwrap();
        assert_eq!(calls, 1, "the ready line after a line that is not UTF-8");
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with(
                "2026-11-29T07:50:01.000Z  WARN sluice_worker: bad \u{fffd}\u{fffd} bytes\n"
            ),
            "{out}"
        );
        assert!(
            out.ends_with("worker ready slots=64\nlast line, no newline\n"),
            "{out}"
        );
        // Writing fails from the first line on: the ready line is still seen, and the
        // write error is returned once the input has ended.
        let mut calls = 0;
        let result = forward(&log[..], &mut Broken, || calls += 1);
        assert_eq!(calls, 1, "the ready line read after a failed write");
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn the_ready_line_is_let_through_the_worker_log_filter() {
        assert_eq!(log_filter("warn"), "warn,sluice_worker::fleet::serve=info");
        assert_eq!(log_filter(""), "sluice_worker::fleet::serve=info");
        assert_eq!(
            log_filter("sluice_worker::executor=debug"),
            "sluice_worker::executor=debug,sluice_worker::fleet::serve=info"
        );
        // A filter that names the target at a level that lets info through keeps its
        // own level for it.
        assert_eq!(
            log_filter("warn,sluice_worker::fleet::serve=debug"),
            "warn,sluice_worker::fleet::serve=debug"
        );
        assert_eq!(
            log_filter("sluice_worker::fleet::serve,warn"),
            "sluice_worker::fleet::serve,warn"
        );
        // One that turns it off or below info: that directive gives way to info.
        assert_eq!(
            log_filter("warn,sluice_worker::fleet::serve=off"),
            "warn,sluice_worker::fleet::serve=info"
        );
        assert_eq!(
            log_filter("sluice_worker::fleet::serve=WARN, debug"),
            "debug,sluice_worker::fleet::serve=info"
        );
        // A longer target that starts with it is another target: it stays, ours is
        // added.
        assert_eq!(
            log_filter("sluice_worker::fleet::serve_x=info"),
            "sluice_worker::fleet::serve_x=info,sluice_worker::fleet::serve=info"
        );
    }
}
