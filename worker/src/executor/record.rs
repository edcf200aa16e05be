//! Writing a run's end to the queue: complete, retry (with a per-job jitter) or dead
//! letter, each result capped once more on its way; the `job finished` line; and the
//! releases at shutdown.

use std::sync::atomic::Ordering;

use sluice_shared::queue::{Completion, ReleaseKind};
use sluice_shared::{Job, JobId, JobResult, Lease, Queue, QueueError};

use super::flight::{Flight, RunClock};
use super::{Disposition, ExecutorConfig, JobEnv, QueueOp};

/// Writes a run's end to the queue (complete, retry or dead letter) and tells the
/// environment. Every result and dead-letter reason the executor stores passes here.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish<Q: Queue, E: JobEnv>(
    queue: &Q,
    env: &E,
    config: &ExecutorConfig,
    lease: &Lease,
    clock: &RunClock,
    job: Option<&Job>,
    result: JobResult,
) {
    // A renewal still in flight now comes back for a lease that is (about to be) gone.
    clock.recording.store(true, Ordering::SeqCst);
    // Every path that stores a result or a dead letter passes here: guest-controlled
    // text (reasons, stderr) is capped once more before it reaches Redis or a report.
    let result = result.capped();
    let disposition = match record(queue, config, lease, job, &result).await {
        Ok(disposition) => disposition,
        Err((op, error)) => {
            unrecorded(env, clock, op, result.job_id, &error);
            Disposition::Unrecorded
        }
    };
    log_finished(&result, disposition);
    env.on_finished(job, &result, disposition);
}

/// The run's `job finished` line, in its job span: at debug for a success (a line per
/// job at info would cost every job a write to stderr), at info for anything else.
fn log_finished(result: &JobResult, disposition: Disposition) {
    let outcome = result.outcome.kind().as_str();
    let quiet = result.outcome.is_success()
        && matches!(disposition, Disposition::Completed | Disposition::Duplicate);
    let disposition = disposition.as_str();
    let run_us = result.stats.wall_time_us;
    if quiet {
        tracing::debug!(outcome, disposition, run_us, "job finished");
    } else {
        tracing::info!(outcome, disposition, run_us, "job finished");
    }
}

/// Stores a finished run: its result, a retry, or a dead letter.
async fn record<Q: Queue>(
    queue: &Q,
    config: &ExecutorConfig,
    lease: &Lease,
    job: Option<&Job>,
    result: &JobResult,
) -> Result<Disposition, (QueueOp, QueueError)> {
    if result.outcome.is_success() {
        return match queue.complete(lease, result).await {
            Ok(Completion::Recorded) => Ok(Disposition::Completed),
            Ok(Completion::AlreadyDone) => Ok(Disposition::Duplicate),
            Err(error) => Err((QueueOp::Complete, error)),
        };
    }
    let attempt = result.attempt;
    let retry = job.and_then(|job| {
        config
            .retry
            .delay_after(result.outcome.kind(), attempt, jitter(job.id, attempt))
            .map(|delay| (job, delay))
    });
    if let Some((job, delay)) = retry {
        let mut again = job.clone();
        again.attempt = attempt;
        return match queue.retry(lease, &again, delay).await {
            Ok(()) => Ok(Disposition::Retrying(delay)),
            Err(error) => Err((QueueOp::Retry, error)),
        };
    }
    match queue.dead_letter(lease, result).await {
        Ok(()) => Ok(Disposition::DeadLettered),
        Err(error) => Err((QueueOp::DeadLetter, error)),
    }
}

/// Tells the environment a run's end was not recorded, unless it is the lease a renewal
/// already found lost (logged and counted once, there).
fn unrecorded<E: JobEnv>(env: &E, clock: &RunClock, op: QueueOp, job: JobId, error: &QueueError) {
    if matches!(error, QueueError::LeaseLost { .. }) && clock.lease_lost.load(Ordering::SeqCst) {
        tracing::debug!(op = op.as_str(), %error, "run not recorded: its lease was lost");
        return;
    }
    env.on_queue_error(op, Some(job), error);
}

/// A spread in `[0, 1)` that differs between jobs, so a batch that failed together
/// does not retry in lockstep; derived from the id's random bits.
fn jitter(job_id: JobId, attempt: u32) -> f64 {
    let bits = (job_id.0.as_u128() as u64).rotate_left(attempt % 64) & 0xffff_ffff;
    bits as f64 / (1u64 << 32) as f64
}

/// One line per run released at the end of the grace period: which job, whose, and
/// whether its run counts as an attempt (`overdue`: past its deadline) or not (`drain`).
pub(super) fn log_released(flight: &Flight, kind: ReleaseKind) {
    let release = match kind {
        ReleaseKind::Drain => "drain",
        ReleaseKind::Overdue => "overdue",
    };
    let job = flight.job.as_ref();
    tracing::warn!(
        entry = %flight.lease.entry_id,
        job = job.map(|job| tracing::field::display(job.id)),
        tenant = job.map(|job| tracing::field::display(crate::logging::tenant_field(&job.tenant.0))),
        release,
        "job still running at the end of the grace period; released for another worker"
    );
}

/// Gives `lease` back to the queue (at shutdown), telling `env` if that failed.
pub(super) async fn release<Q: Queue, E: JobEnv>(
    queue: &Q,
    env: &E,
    lease: &Lease,
    job: Option<&Job>,
    kind: ReleaseKind,
) {
    if let Err(error) = queue.release(lease, job, kind).await {
        env.on_queue_error(QueueOp::Release, lease.job_id, &error);
    }
}
