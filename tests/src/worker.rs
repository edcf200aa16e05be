//! A real `sluice-worker serve` process for a test, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::bin;

/// A running worker.
pub struct WorkerProcess {
    child: Child,
    /// The consumer name it claims jobs as.
    pub consumer: String,
}

impl WorkerProcess {
    /// Starts a worker on `queue` at `redis_url` with `extra` flags, and returns once it
    /// logged that it is ready (connected, sandbox built).
    pub fn start(redis_url: &str, queue: &str, consumer: &str, extra: &[&str]) -> Self {
        let mut child = bin("sluice-worker")
            .args([
                "serve",
                "--redis",
                redis_url,
                "--queue",
                queue,
                "--consumer",
                consumer,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice-worker");
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("worker ready") {
                    let _ = ready_tx.send(());
                }
                eprintln!("[worker] {line}");
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("worker became ready");
        WorkerProcess {
            child,
            consumer: consumer.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        crate::sigterm(self.pid());
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for worker")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        crate::peak_rss_kib(self.pid()) * 1024
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
