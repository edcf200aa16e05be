//! The bench's worker processes (`sluice-worker serve` on the bench's queue), stopped
//! with SIGTERM and waited for when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use super::cpu::{self, CpuTime};

/// Running worker processes.
pub struct Workers(Vec<Child>);

impl Workers {
    /// Starts `count` workers with `slots` job slots each on `queue`, keeping results
    /// for `ttl`, logging what the `log` filter (their `RUST_LOG`) lets through.
    pub fn start(
        bin: &Path,
        redis_url: &str,
        queue: &str,
        count: usize,
        slots: usize,
        ttl: &str,
        log: &str,
    ) -> anyhow::Result<Self> {
        let mut workers = Workers(Vec::with_capacity(count));
        for i in 0..count {
            let child = Command::new(bin)
                .args(["serve", "--redis", redis_url, "--queue", queue])
                .args(["--concurrency", &slots.to_string()])
                .args(["--consumer", &format!("bench-{i}")])
                .args(["--ttl", ttl])
                .env("RUST_LOG", log)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            workers.0.push(child);
        }
        Ok(workers)
    }

    /// The workers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }

    /// The CPU time of every worker process so far, summed.
    pub fn cpu(&self, tick: Duration) -> anyhow::Result<CpuTime> {
        let mut total = Vec::with_capacity(self.0.len());
        for pid in self.pids() {
            total.push(cpu::process(pid, tick).context("a worker process's CPU time")?);
        }
        Ok(total.into_iter().sum())
    }
}

impl Workers {
    /// Context switches of every worker process's threads so far, summed
    /// ([`cpu::context_switches`]).
    pub fn context_switches(&self) -> anyhow::Result<u64> {
        let mut total = 0u64;
        for pid in self.pids() {
            total += cpu::context_switches(pid).context("a worker's context switches")?;
        }
        Ok(total)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}
