//! One claimed entry's life on the async side: its span, waiting for its run on a run
//! thread (or for the sweep to give it up), and recording how it ended.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_shared::{Claimed, JobId, JobResult, Lease, Outcome, Queue};
use tokio::sync::oneshot;

use super::flight::{RunClock, Shared};
use super::guest::Start;
use super::record::finish;
use super::{ExecutorConfig, JobEnv};

/// The span a claimed entry's run is logged in, built with all its fields at once: its
/// entry, and when the envelope decoded the job id, tenant (quoted when it breaks the
/// name rule), module hash and attempt. The outcome is not a span field: the run's
/// `job finished` event carries it ([`finish`](super::record::finish)), so no record re-renders the span.
pub(super) fn job_span(claimed: &Claimed) -> tracing::Span {
    match &claimed.delivery {
        Ok(job) => tracing::info_span!(
            "job",
            entry = %claimed.lease.entry_id,
            job = %job.id,
            tenant = %crate::logging::tenant_field(&job.tenant.0),
            module = %job.module,
            attempt = claimed.attempt(),
        ),
        Err(_) => tracing::info_span!(
            "job",
            entry = %claimed.lease.entry_id,
            attempt = claimed.attempt(),
        ),
    }
}

/// A claimed entry's life on the async side, from [`Start`] on: records a run that
/// does not happen; for one that does, waits for its thread's result (the sweep renews
/// its lease meanwhile) and records it, or, once the sweep gives it up (`given_up`),
/// records it as `timeout` and holds its slot until its thread returns.
#[allow(clippy::too_many_arguments)]
pub(super) async fn process<Q: Queue, E: JobEnv>(
    queue: &Q,
    env: &E,
    config: &ExecutorConfig,
    lease: Lease,
    attempt: u32,
    start: Start,
    clock: Arc<RunClock>,
    given_up: Option<oneshot::Receiver<()>>,
    shared: &Shared,
) {
    let (job, mut run_job) = match start {
        Start::BadEnvelope(reason) => {
            let result = JobResult::without_run(
                JobId(uuid::Uuid::nil()),
                Outcome::BadEnvelope { reason },
                attempt,
            );
            finish(queue, env, config, &lease, &clock, None, result).await;
            shared.recorded(&lease.entry_id);
            return;
        }
        Start::Exhausted(job) => {
            let result = JobResult::without_run(
                job.id,
                Outcome::HostError {
                    reason: format!(
                        "delivered {attempt} times without finishing (its worker died, or shut down \
                         while it ran past its deadline, each time?); giving up"
                    ),
                },
                attempt,
            );
            finish(queue, env, config, &lease, &clock, Some(&*job), result).await;
            shared.recorded(&lease.entry_id);
            return;
        }
        Start::Running(job, ran) => (job, ran),
    };
    // The sweep renews the lease while the run goes on, and tells `given_up` once it
    // is past its deadline plus the watchdog grace.
    let given_up = async move {
        // Never given up when it has no watch (a run always has one).
        let told = match given_up {
            Some(given_up) => given_up.await.is_ok(),
            None => false,
        };
        if !told {
            std::future::pending::<()>().await;
        }
    };
    let ran = tokio::select! {
        biased;
        ran = &mut run_job => Some(ran),
        () = given_up => None,
    };
    match ran {
        Some(ran) => {
            // A dropped sender is a run the thread never finished (it cannot happen
            // while the threads live; told as the panic it would be).
            let ran = ran.unwrap_or_else(|_| Err("run dropped by its thread".to_owned()));
            let result = ran.unwrap_or_else(|panicked| {
                JobResult::without_run(
                    job.id,
                    Outcome::HostError {
                        reason: format!("worker thread failed: {panicked}"),
                    },
                    attempt,
                )
            });
            let run_us = result.stats.wall_time_us;
            finish(queue, env, config, &lease, &clock, Some(&*job), result).await;
            shared.recorded(&lease.entry_id);
            // Where a job's time went, from its claim: preparing (policy, the module
            // and its code for the job's engine from the cache, input) until
            // `Sandbox::run`, the run, and the result stored.
            // The cold-start benchmark reads it (docs/benchmarks.md).
            tracing::debug!(
                job = %job.id,
                prepare_us = clock.guest.get().map(|at| micros(at.duration_since(clock.claimed))),
                run_us,
                recorded_us = micros(clock.claimed.elapsed()),
                "job recorded"
            );
        }
        None => {
            clock.abandoned.store(true, Ordering::SeqCst);
            let stuck = shared.stuck.fetch_add(1, Ordering::SeqCst) + 1;
            shared.stuck_grew.notify_one();
            tracing::warn!(
                job = %job.id,
                past_deadline_by = ?config.watchdog_grace,
                stuck,
                "run stuck past its deadline: recorded as timeout; its thread keeps a slot until it returns"
            );
            let mut result = JobResult::without_run(job.id, Outcome::Timeout, attempt);
            result.stats.wall_time_us =
                u64::try_from(clock.claimed.elapsed().as_micros()).unwrap_or(u64::MAX);
            finish(queue, env, config, &lease, &clock, Some(&*job), result).await;
            shared.recorded(&lease.entry_id);
            env.on_stuck(&job, true);
            // Whatever the thread ends with is dropped: the job's record is written.
            let _late = run_job.await;
            shared.stuck.fetch_sub(1, Ordering::SeqCst);
            env.on_stuck(&job, false);
            tracing::info!(job = %job.id, "a stuck run's thread returned; its slot is free");
        }
    }
}

/// `elapsed` in whole microseconds (saturating).
fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
