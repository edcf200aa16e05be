//! The worker loop over any [`Queue`]: claim as many jobs as there are free slots, run
//! each on a blocking thread (guests are synchronous; see the NOTES on why), renew the
//! lease while it runs, then complete, retry or dead-letter it.
//!
//! Where modules, inputs and outputs come from is the [`JobEnv`]'s business: files in
//! embedded batch mode, Redis blobs in the fleet.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_shared::queue::Completion;
use sluice_shared::{
    Claimed, Job, JobId, JobResult, Lease, ModuleHash, Outcome, Queue, RetryPolicy,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sandbox::{LoadedModule, Sandbox};

/// What happened to a finished run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The result was stored; the job is done.
    Completed,
    /// Another delivery of the same job finished first; this result was dropped.
    Duplicate,
    /// It failed and will run again after the delay.
    Retrying(Duration),
    /// It failed for the last time and is in the dead letters.
    DeadLettered,
    /// The queue refused the result (lease lost or backend down); the job will be
    /// delivered again.
    Unrecorded,
}

impl Disposition {
    /// Whether the job will not run again.
    pub fn is_final(self) -> bool {
        matches!(self, Disposition::Completed | Disposition::DeadLettered)
    }
}

/// Where a job's module, input and output live.
pub trait JobEnv: Send + Sync + 'static {
    /// Whether this job may run at all (its limits against its tenant's policy).
    fn admit(&self, _job: &Job) -> Result<(), Outcome> {
        Ok(())
    }
    /// The loaded module a job names.
    fn module(&self, hash: &ModuleHash) -> Result<Arc<LoadedModule>, Outcome>;
    /// A reader over the job's input.
    fn open_input(&self, job: &Job) -> Result<Box<dyn Read + Send>, Outcome>;
    /// A writer for the job's output.
    fn open_output(&self, job: &Job) -> Result<Box<dyn Write + Send>, Outcome>;
    /// Keeps or discards the output once the outcome is known, recording where it is
    /// in `result.output`.
    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome>;
    /// Told when a job starts running (metrics).
    fn on_started(&self, _job: &Job) {}
    /// Told of every run's end (progress, reports, metrics). `job` is `None` when the
    /// envelope did not decode.
    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition);
}

/// How the loop claims and leases.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Jobs run at once (at most the sandbox's pool slots).
    pub slots: usize,
    /// Consumer name in the queue (unique per worker process).
    pub consumer: String,
    /// How long a claim holds a job before another worker may take it over; renewed
    /// every third of it while the job runs.
    pub lease: Duration,
    /// How long one claim waits for work before looking at shutdown again.
    pub claim_wait: Duration,
    /// Retries and dead letters.
    pub retry: RetryPolicy,
    /// After shutdown, how long jobs in flight may take to finish before their leases
    /// are released for other workers.
    pub grace: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            slots: 1,
            consumer: format!("worker-{}", std::process::id()),
            lease: Duration::from_secs(30),
            claim_wait: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            grace: Duration::from_secs(30),
        }
    }
}

/// Leases of the jobs running now, so shutdown can release those that outlive the grace
/// period.
type InFlight = Arc<Mutex<HashMap<String, Lease>>>;

/// Runs jobs from `queue` until `shutdown` is cancelled, then lets the jobs in flight
/// finish for up to the grace period, releases the leases of any still running so
/// other workers take them at once, and returns.
pub async fn run<Q: Queue + 'static, E: JobEnv>(
    queue: Arc<Q>,
    sandbox: Arc<Sandbox>,
    env: Arc<E>,
    config: ExecutorConfig,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    let in_flight: InFlight = Arc::default();
    let mut running = JoinSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        // A claim is never abandoned half-way: the server may already have handed the
        // entries to us. It waits at most `claim_wait`; what it brings after shutdown
        // began is given back at once.
        let claimed = queue
            .claim(
                &config.consumer,
                permits.len(),
                config.lease,
                config.claim_wait,
            )
            .await;
        if shutdown.is_cancelled() {
            for claimed in claimed.iter().flatten() {
                if let Err(error) = queue.release(&claimed.lease).await {
                    tracing::warn!(entry = %claimed.lease.entry_id, %error, "release failed; the lease will expire");
                }
            }
            break;
        }
        match claimed {
            Ok(claimed) => {
                backoff = Duration::from_millis(50);
                for (claimed, permit) in claimed.into_iter().zip(permits) {
                    let (queue, sandbox, env, config, in_flight) = (
                        queue.clone(),
                        sandbox.clone(),
                        env.clone(),
                        config.clone(),
                        in_flight.clone(),
                    );
                    let entry_id = claimed.lease.entry_id.clone();
                    lock(&in_flight).insert(entry_id.clone(), claimed.lease.clone());
                    running.spawn(async move {
                        process(&*queue, sandbox, env, &config, claimed).await;
                        lock(&in_flight).remove(&entry_id);
                        drop(permit);
                    });
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "claim failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    let drained = tokio::time::timeout(config.grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let leftover: Vec<Lease> = lock(&in_flight).drain().map(|(_, lease)| lease).collect();
        tracing::warn!(
            jobs = leftover.len(),
            "grace period over; releasing jobs still running"
        );
        for lease in leftover {
            if let Err(error) = queue.release(&lease).await {
                tracing::warn!(entry = %lease.entry_id, %error, "release failed; the lease will expire");
            }
        }
        running.abort_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A spread in `[0, 1)` that differs between jobs, so a batch that failed together
/// does not retry in lockstep; derived from the id's random bits.
fn jitter(job_id: JobId, attempt: u32) -> f64 {
    let bits = (job_id.0.as_u128() as u64).rotate_left(attempt % 64) & 0xffff_ffff;
    bits as f64 / (1u64 << 32) as f64
}

async fn process<Q: Queue, E: JobEnv>(
    queue: &Q,
    sandbox: Arc<Sandbox>,
    env: Arc<E>,
    config: &ExecutorConfig,
    claimed: Claimed,
) {
    let attempt = claimed.attempt();
    let lease = claimed.lease;
    let job = match claimed.delivery {
        Ok(job) => job,
        Err(error) => {
            let result = JobResult::without_run(
                JobId(uuid::Uuid::nil()),
                Outcome::BadEnvelope {
                    reason: error.to_string(),
                },
                attempt,
            );
            let disposition = dead_letter(queue, &lease, &result).await;
            env.on_finished(None, &result, disposition);
            return;
        }
    };

    // A job that kills its worker every time never reaches the retry decision below;
    // its delivery count still grows, and past the attempt limit it is given up here.
    if attempt > config.retry.max_attempts {
        // Reported as a (zero-length) run, so started/finished stay paired for metrics.
        env.on_started(&job);
        let result = JobResult::without_run(
            job.id,
            Outcome::HostError {
                reason: format!(
                    "delivered {attempt} times without finishing (its worker died each time?); giving up"
                ),
            },
            attempt,
        );
        let disposition = dead_letter(queue, &lease, &result).await;
        env.on_finished(Some(&job), &result, disposition);
        return;
    }

    let renewing = CancellationToken::new();
    let renewal = async {
        let every = config.lease / 3;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = renewing.cancelled() => return,
            }
            if let Err(error) = queue.extend_lease(&lease, config.lease).await {
                tracing::warn!(job = %job.id, %error, "lease renewal failed");
            }
        }
    };
    env.on_started(&job);
    let run_job = {
        let job = job.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || run_one(&sandbox, &*env, &job, attempt))
    };
    let (ran, ()) = tokio::join!(
        async {
            let ran = run_job.await;
            renewing.cancel();
            ran
        },
        renewal
    );
    let result = ran.unwrap_or_else(|panicked| {
        JobResult::without_run(
            job.id,
            Outcome::HostError {
                reason: format!("worker thread failed: {panicked}"),
            },
            attempt,
        )
    });

    let kind = result.outcome.kind();
    let disposition = if result.outcome.is_success() {
        match queue.complete(&lease, result.clone()).await {
            Ok(Completion::Recorded) => Disposition::Completed,
            Ok(Completion::AlreadyDone) => Disposition::Duplicate,
            Err(_) => Disposition::Unrecorded,
        }
    } else if let Some(delay) = config
        .retry
        .delay_after(kind, attempt, jitter(job.id, attempt))
    {
        let mut again = job.clone();
        again.attempt = attempt;
        match queue.retry(&lease, &again, delay).await {
            Ok(()) => Disposition::Retrying(delay),
            Err(_) => Disposition::Unrecorded,
        }
    } else {
        dead_letter(queue, &lease, &result).await
    };
    env.on_finished(Some(&job), &result, disposition);
}

/// Gives the job up; `Unrecorded` when the queue refused (it will be delivered again).
async fn dead_letter<Q: Queue>(queue: &Q, lease: &Lease, result: &JobResult) -> Disposition {
    match queue.dead_letter(lease, result.clone()).await {
        Ok(()) => Disposition::DeadLettered,
        Err(_) => Disposition::Unrecorded,
    }
}

fn run_one<E: JobEnv>(sandbox: &Sandbox, env: &E, job: &Job, attempt: u32) -> JobResult {
    let prepared = env
        .admit(job)
        .and_then(|()| env.module(&job.module))
        .and_then(|module| {
            let input = env.open_input(job)?;
            let output = env.open_output(job)?;
            Ok((module, input, output))
        });
    let mut result = match prepared {
        Ok((module, input, output)) => sandbox.run(&module, job, input, output),
        Err(outcome) => JobResult::without_run(job.id, outcome, attempt),
    };
    result.attempt = attempt;
    if let Err(outcome) = env.finish_output(job, &mut result)
        && result.outcome.is_success()
    {
        result.outcome = outcome;
    }
    result
}
