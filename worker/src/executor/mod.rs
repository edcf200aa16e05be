//! The worker loop over any [`Queue`]: claim as many jobs as there are free slots, hand
//! the batch to the run threads (one per slot, long-lived: guests run synchronously,
//! as wasmtime-wasi's async stdio on a multi-threaded runtime streams ~10x slower,
//! `docs/ARCHITECTURE.md`), renew each lease while its job runs, then complete, retry
//! or dead-letter it. Per claimed batch the run threads get one hand-off and wake a
//! thread or two (`threads`), their results come back in groups (`handback`), and one
//! sweep task renews the leases and runs the watchdog for every job in flight
//! (`sweep`), instead of a timer and a renewal future per job.
//!
//! A watchdog stands behind the sandbox's own deadline: a run still going at its
//! deadline plus [`ExecutorConfig::watchdog_grace`] (blocked in a host call the sandbox
//! cannot interrupt: an input reader, a [`JobEnv`] call, a wasmtime bug) stops being
//! renewed and is recorded as `timeout`. Its thread cannot be killed, so it keeps its
//! slot until it returns, and what it returns is dropped. A worker with more such stuck
//! runs than [`ExecutorConfig::stuck_bound`] stops claiming, records or releases what it
//! holds, and [`run`] returns [`ExecutorError::TooManyStuck`] so that its supervisor
//! restarts it with fresh threads. A run that panics is recorded as `host_error`; its
//! thread and slot live on.
//!
//! Where modules, inputs and outputs come from is the [`JobEnv`]'s business: files in
//! embedded batch mode, Redis blobs in the fleet.
//!
//! One job per file: [`env`](JobEnv) (the seam and its hooks), `config`, `flight` (what
//! the loop and its runs share), `threads` (the run threads), `guest` (a claimed entry
//! before its run, and the run), `handback` (results back from the run threads),
//! `sweep` (lease renewals, the watchdog, late thread wakeups), `process` (a run's
//! wait and recording), `record` (writing a run's end to the queue); the loop itself
//! here.

mod config;
mod env;
mod flight;
mod guest;
mod handback;
mod process;
mod record;
mod sweep;
mod threads;

pub use config::{ExecutorConfig, ExecutorError};
pub use env::{ClaimReport, Disposition, JobEnv, QueueOp, log_queue_error};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_shared::backoff::Backoff;
use sluice_shared::queue::ReleaseKind;
use sluice_shared::{Claimed, Queue};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::sandbox::Sandbox;
use flight::{Flight, RunClock, Shared, SlotGuard};
use guest::Start;
use handback::Handback;
use process::{job_span, process};
use record::{log_released, release};
use sweep::Watch;
use threads::RunThreads;

/// The first wait after a failed claim (the queue's backend away); it doubles on each
/// failure up to [`CLAIM_RETRY_MAX`] and starts again after a claim succeeds.
const CLAIM_RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between claims while the backend is away.
pub const CLAIM_RETRY_MAX: Duration = Duration::from_secs(5);

/// The error for a background task (the sweep, or the results' collector) that ended:
/// both run as long as the loop, so any end is a failure.
fn background_ended(
    ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    sweep: tokio::task::Id,
) -> ExecutorError {
    let (id, reason) = match ended {
        Ok((id, ())) => (id, "it returned".to_owned()),
        Err(error) => (error.id(), error.to_string()),
    };
    let task = if id == sweep { "sweep" } else { "handback" };
    ExecutorError::Background { task, reason }
}

/// Runs jobs from `queue` until `shutdown` is cancelled, then lets the jobs in flight
/// finish for up to the grace period, releases the leases of any still running so
/// other workers take them at once, and returns. Returns
/// [`ExecutorError::TooManyStuck`] (after the same drain) when more runs are stuck than
/// the config tolerates.
pub async fn run<Q: Queue + 'static, E: JobEnv>(
    queue: Arc<Q>,
    sandbox: Arc<Sandbox>,
    env: Arc<E>,
    mut config: ExecutorConfig,
    shutdown: CancellationToken,
) -> Result<(), ExecutorError> {
    config.fit_to(&sandbox);
    let bound = config.stuck_bound();
    // No more run threads woken at once for fresh work than cores (see `threads`).
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Handle::current();
    let threads = Arc::new(
        RunThreads::start(config.slots, cores, &runtime).map_err(|source| {
            ExecutorError::RunThreads {
                slots: config.slots,
                source,
            }
        })?,
    );
    let shared = Arc::new(Shared::default());
    let handback = Arc::new(Handback::default());
    // The sweep and the results' collector live as long as this loop: dropping the
    // set aborts them.
    let mut background = JoinSet::new();
    let sweep_task = background
        .spawn(sweep::sweep(
            queue.clone(),
            env.clone(),
            shared.clone(),
            threads.clone(),
            config.lease,
            sweep::tick(config.lease, config.watchdog_grace),
        ))
        .id();
    {
        let handback = handback.clone();
        background.spawn(async move { handback.deliver().await });
    }
    // Shared by every run's task (cloned once, not per job).
    let run_config = Arc::new(config.clone());
    let slots = Arc::new(Semaphore::new(config.slots));
    let mut running = JoinSet::new();
    let mut backoff = Backoff::new(CLAIM_RETRY_FIRST, CLAIM_RETRY_MAX);
    let mut stopped_by = None;
    let mut failed_claims: u32 = 0;
    loop {
        while running.try_join_next().is_some() {}
        if let Some(error) = shared.too_many_stuck(bound) {
            stopped_by = Some(error);
            break;
        }
        let stuck_grew = shared.stuck_grew.notified();
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
            () = stuck_grew => continue,
            Some(ended) = background.join_next_with_id() => {
                stopped_by = Some(background_ended(ended, sweep_task));
                break;
            }
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        // A claim is never abandoned half-way: the server may already have handed the
        // entries to us. It waits at most `claim_wait`; what it brings after shutdown
        // began (or once too many runs are stuck) is given back at once.
        let claim_started = Instant::now();
        let claimed = queue
            .claim(
                &config.consumer,
                permits.len(),
                config.lease,
                config.claim_wait,
            )
            .await;
        let took = claim_started.elapsed();
        let too_many = shared.too_many_stuck(bound);
        let stopping = shutdown.is_cancelled() || too_many.is_some();
        if let Ok(entries) = &claimed {
            env.on_claimed(&ClaimReport {
                claimed: entries,
                took,
                after_failures: failed_claims,
                given_back: stopping,
            });
            failed_claims = 0;
        }
        if stopping {
            if let Err(error) = &claimed {
                env.on_queue_error(QueueOp::Claim, None, error);
            }
            for claimed in claimed.iter().flatten() {
                let job = claimed.delivery.as_ref().ok();
                release(&*queue, &*env, &claimed.lease, job, ReleaseKind::Drain).await;
            }
            stopped_by = too_many;
            break;
        }
        match claimed {
            Ok(claimed) => {
                backoff.reset();
                let mut tasks = Vec::with_capacity(claimed.len());
                for (claimed, permit) in claimed.into_iter().zip(permits) {
                    let clock = RunClock::new(config.prepare_budget);
                    let slot = SlotGuard::take(env.clone(), permit);
                    let span = job_span(&claimed);
                    let attempt = claimed.attempt();
                    // The job moves into one `Arc` that its run, its task and the
                    // in-flight map share: no copy of its input per holder.
                    let Claimed { lease, delivery } = claimed;
                    let delivery = delivery.map(Arc::new);
                    let (start, task) = {
                        let _in_job = span.enter();
                        guest::begin(
                            &sandbox, &env, &config, attempt, &delivery, &clock, &span, &handback,
                        )
                    };
                    let (watch, given_up) = match &start {
                        Start::Running(job, _) => {
                            let limit = job.limits.timeout().saturating_add(config.watchdog_grace);
                            let (watch, given_up) = Watch::new(limit, clock.claimed, config.lease);
                            (Some(watch), Some(given_up))
                        }
                        _ => (None, None),
                    };
                    tasks.extend(task);
                    // In the map before the task is spawned, so a shutdown that comes
                    // before the task first runs still finds the lease to release.
                    shared.in_flight.lock().insert(
                        lease.entry_id.clone(),
                        Flight {
                            lease: lease.clone(),
                            job: delivery.ok(),
                            clock: clock.clone(),
                            watch,
                        },
                    );
                    let (queue, env, config, shared) = (
                        queue.clone(),
                        env.clone(),
                        run_config.clone(),
                        shared.clone(),
                    );
                    running.spawn(
                        async move {
                            process(
                                &*queue, &*env, &config, lease, attempt, start, clock, given_up,
                                &shared,
                            )
                            .await;
                            drop(slot);
                        }
                        .instrument(span),
                    );
                }
                // The whole batch in one go, waking a thread or two, not one per job;
                // the sweep wakes more for jobs left waiting too long (kicked only when
                // it would look later than that).
                if threads.submit(tasks) {
                    shared.kick.notify_one();
                }
            }
            Err(error) => {
                let delay = backoff.next_delay();
                failed_claims = failed_claims.saturating_add(1);
                env.on_queue_error(QueueOp::Claim, None, &error);
                tracing::debug!(retry_in = ?delay, "claim backoff");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    if let Some(error) = &stopped_by {
        tracing::error!(%error, "stopping: no new claims, draining jobs in flight");
    }
    let drained = tokio::time::timeout(config.grace, shared.all_recorded()).await;
    if drained.is_err() {
        let leftover: Vec<Flight> = shared
            .in_flight
            .lock()
            .drain()
            .map(|(_, flight)| flight)
            .collect();
        tracing::warn!(
            jobs = leftover.len(),
            "grace period over; releasing jobs still running"
        );
        for flight in leftover {
            flight.clock.abandoned.store(true, Ordering::SeqCst);
            // A run already past its deadline counts as an attempt: otherwise a job
            // that blocks every worker it reaches would be handed on without end.
            let kind = match &flight.job {
                Some(job) if flight.clock.is_past(job.limits.timeout()) => ReleaseKind::Overdue,
                _ => ReleaseKind::Drain,
            };
            log_released(&flight, kind);
            release(&*queue, &*env, &flight.lease, flight.job.as_deref(), kind).await;
        }
    }
    if drained.is_ok() && shared.stuck.load(Ordering::SeqCst) == 0 {
        while running.join_next().await.is_some() {}
    } else {
        // Stuck threads cannot be stopped; their tasks only wait for them.
        running.abort_all();
    }
    stopped_by.map_or(Ok(()), Err)
}
