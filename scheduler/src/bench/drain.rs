//! The drain run: jobs/s measured the way the BullMQ peer measures it. The peer starts
//! its workers, holds them at a barrier, enqueues all N jobs (enqueue time excluded),
//! releases them, and reports N / (last finish − first start). Here: with the workers
//! stopped, N jobs are enqueued (as the throughput run enqueues them), the same fleet is
//! started again, and the run is timed from the moment the first worker's `worker
//! ready` line is read to the arrival of the last of those N jobs' completion notices.
//!
//! The window leaves out the first worker's process start (loading the binary,
//! connecting, building the sandbox: all before its ready line) and each other worker's
//! start before the first ready line; a worker whose start runs past that line is
//! inside the window until its own ready line, so the spread of the ready lines (last −
//! first, [`Drain::ready_spread`]) is reported beside it, with the time from the first
//! ready line to the first drained job's notice ([`Drain::first_notice`]). The window
//! includes each worker's first claim and its load of the module from the fleet's
//! shared artifact cache (Redis, L3; the first fleet compiled it): conservative against
//! the peer, whose workers have loaded nothing before their first job starts but whose
//! window opens at that start.
//! It also runs to the arrival of the last notice at the bench, where the peer's ends
//! at its worker's own `finishedOn` stamp.
//!
//! Worker CPU is counted from each worker's own ready line (its CPU time read as the
//! line is read) to the last notice; Redis CPU from before the workers start (so the
//! workers' connecting is in it: conservative too) to the last notice.

use std::time::Duration;

use anyhow::Context;
use sluice_shared::Job;
use sluice_shared::queue::redis::RedisQueue;

use super::cpu::CpuTime;
use super::follow;
use super::server;
use super::workers::{WorkerSpec, Workers};
use super::workload::{Checked, Workload};

/// The drain run's figures.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Jobs enqueued before the workers started.
    pub jobs: usize,
    /// How those jobs were checked (every one: outcome, and output against the
    /// reference run).
    pub checked: Checked,
    /// Time to enqueue them (outside the window).
    pub enqueued: Duration,
    /// First worker's ready line → the last job's completion notice.
    pub elapsed: Duration,
    /// The last worker's ready line − the first's (the part of the workers' start
    /// inside the window).
    pub ready_spread: Duration,
    /// First worker's ready line → the first drained job's completion notice.
    pub first_notice: Duration,
    /// The workers' CPU time in the window (each from its own ready line).
    pub worker_cpu: CpuTime,
    /// redis-server's CPU time from before the workers started to the last notice.
    pub redis_cpu: CpuTime,
}

impl Drain {
    /// Jobs checked: those with an outcome, whether right, wrong or expired.
    pub fn checked_jobs(&self) -> usize {
        self.checked.total()
    }

    /// Jobs/s over the window, counting the jobs the throughput run's jobs/s counts
    /// ([`Checked::counted`]; [`run`] fails rather than return a zero window).
    pub fn jobs_per_s(&self) -> f64 {
        self.checked.counted() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the drain with the workers stopped: enqueues `count` jobs (job `n` made by
/// `job(n)`), starts `spec`'s workers, follows the jobs' notices until all have arrived
/// (or `deadline` has passed since the first worker was ready), stops the workers, and
/// checks every job against `workload`. Fails when the window is zero (see
/// [`Drain::jobs_per_s`]).
pub async fn run(
    queue: &RedisQueue,
    spec: &WorkerSpec,
    workload: &Workload,
    count: usize,
    job: &impl Fn(usize) -> (Job, usize),
    deadline: Duration,
) -> anyhow::Result<Drain> {
    let started = std::time::Instant::now();
    let mut run = follow::enqueue(queue, count, job)
        .await
        .context("enqueueing the drain run")?;
    let enqueued = started.elapsed();
    let from = queue.results().notices_from_now().await?;
    let redis_before = server::cpu(queue).await?;
    let mut workers = Workers::start(spec)?;
    let first = workers.first_ready().await?;
    follow::follow(queue, from, &mut run, first.at, deadline)
        .await
        .context("the drain run")?;
    let worker_end = workers.cpu_each(spec.tick)?;
    let redis_cpu = server::cpu(queue).await?.since(redis_before);
    let last = run.last_done().unwrap_or(first.at);
    let elapsed = last.saturating_duration_since(first.at);
    // No window to divide by (the clock did not move, or no notice came after the first
    // ready line): no jobs/s rather than N ÷ a made-up nanosecond.
    anyhow::ensure!(
        !elapsed.is_zero(),
        "the drain run's window (first worker ready → last notice) is zero: no jobs/s to \
         report"
    );
    let first_done = run.first_done().unwrap_or(first.at);
    // A worker whose ready line came after the last notice did none of the work: its
    // share saturates to zero.
    let ready = workers.all_ready().await?;
    let mut worker_cpu = CpuTime::default();
    for (end, ready) in worker_end.iter().zip(&ready) {
        let at_ready = ready
            .cpu
            .with_context(|| format!("worker {}'s CPU time at its ready line", ready.worker))?;
        worker_cpu = [worker_cpu, end.since(at_ready)].into_iter().sum();
    }
    let last_ready = ready.iter().map(|r| r.at).max().unwrap_or(first.at);
    drop(workers);
    let checked = workload.check(queue, &run.finished()).await?;
    Ok(Drain {
        jobs: count,
        checked,
        enqueued,
        elapsed,
        ready_spread: last_ready.saturating_duration_since(first.at),
        first_notice: first_done.saturating_duration_since(first.at),
        worker_cpu,
        redis_cpu,
    })
}
