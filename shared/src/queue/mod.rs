//! The queue a worker loop needs, independent of where jobs live.
//!
//! A job's life: [`Queue::enqueue`] → [`Queue::claim`] (which hands out a [`Lease`]) →
//! exactly one of [`Queue::complete`], [`Queue::retry`], [`Queue::dead_letter`] or
//! [`Queue::release`]. A lease that is not renewed with [`Queue::extend_lease`] before
//! it expires is taken back, and the job is delivered again to the next claimer: a
//! worker that dies loses nothing.
//!
//! Lease lengths are a fleet-wide visibility timeout: every claimer of a queue passes
//! the same `lease_for`, a claimer takes over entries idle for longer than its own
//! `lease_for`, and a renewal restarts the holder's idle clock. (This is what Redis
//! Streams' pending-entries list offers, measured on the server's clock.)
//!
//! Queues store envelopes as bytes, so garbage can be on a queue; a claim hands it out
//! as a [`Delivery`] whose decode failed, to be dead-lettered with its reason.
//!
//! This module holds the trait and its vocabulary ([`Lease`], [`Claimed`],
//! [`Completion`], [`DeadLetter`], [`QueueStats`], [`RetryPolicy`], [`QueueError`]),
//! [`MemoryQueue`] (`memory.rs`), which backs embedded batch mode, the Redis protocol
//! ([`redis`]), whose [`RedisQueue`] implements the same trait and much more a fleet
//! shares, and [`conformance`], the specification both backends must pass.

use std::borrow::Borrow;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;
use crate::job::{Job, JobId};
use crate::outcome::{JobResult, OutcomeKind};

pub mod conformance;
mod memory;
pub mod redis;

pub use self::redis::{RedisConfig, RedisQueue};
pub use memory::MemoryQueue;

/// A claim on one delivered entry, held until completed, retried, dead-lettered,
/// released or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The queue's own id for the entry (a Redis stream id, a counter in memory).
    pub entry_id: String,
    /// The job's id, when the envelope decoded.
    pub job_id: Option<JobId>,
    /// How many times this entry has been delivered, this delivery included (1 first).
    pub deliveries: u32,
    /// The consumer holding the lease.
    pub consumer: String,
}

/// One claimed entry: the lease, and the job or why its envelope did not decode.
#[derive(Debug)]
pub struct Claimed {
    /// The lease held on the entry.
    pub lease: Lease,
    /// The job, or why its envelope did not decode.
    pub delivery: Delivery,
}

/// What a claimed entry holds.
pub type Delivery = Result<Job, DecodeError>;

impl Claimed {
    /// The attempt number of this run: attempts made under earlier envelopes (retries)
    /// plus this entry's deliveries (takeovers after a worker died).
    pub fn attempt(&self) -> u32 {
        let before = self.delivery.as_ref().map(|job| job.attempt).unwrap_or(0);
        before.saturating_add(self.lease.deliveries)
    }
}

/// Whether a released delivery counts as an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseKind {
    /// The worker stopped before the job could finish, through no fault of the job
    /// (shutdown, claimed after shutdown began): the delivery is not counted.
    Drain,
    /// The run was past its deadline (or stuck in a host call) when it was given back:
    /// the delivery counts, so a job that wedges every worker it lands on still reaches
    /// its attempt limit instead of holding fleet slots for good.
    Overdue,
}

/// What [`Queue::complete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The result was stored and the entry removed.
    Recorded,
    /// A result for this job was already stored (a duplicate delivery finished first):
    /// the first result is kept and nothing is counted twice.
    AlreadyDone,
}

/// A job that will not be tried again, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dead-letter entry's id.
    pub entry_id: String,
    /// The job's id, when its envelope decoded.
    pub job_id: Option<JobId>,
    /// Why it was given up, in words.
    pub reason: String,
    /// The final outcome's kind.
    pub kind: OutcomeKind,
    /// Attempts made.
    pub attempts: u32,
}

/// How many entries are where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Entries waiting to be claimed.
    pub ready: u64,
    /// Entries claimed and not yet settled.
    pub leased: u64,
    /// Jobs waiting for their due time (retries, scheduled jobs).
    pub delayed: u64,
    /// Jobs completed (a counter).
    pub completed: u64,
    /// Dead letters kept.
    pub dead: u64,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The lease expired and the entry was handed to another claimer (or finished).
    #[error("lease on entry {entry_id} was lost")]
    LeaseLost {
        /// The entry whose lease was lost.
        entry_id: String,
    },
    /// The backend is unreachable or answered with an error; the operation may be retried.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something this build does not understand.
    #[error("queue protocol error: {0}")]
    Protocol(String),
    /// A large result staged beside the completion (Redis's `staged:` key) was gone
    /// when the completion ran, and sending it again inline failed too: nothing was
    /// stored and the entry is still pending, so the job runs again after its lease.
    #[error(
        "result of entry {entry_id} not stored: its staged copy was missing ({why}) and \
         sending it inline failed ({resend}); the job stays queued and runs again after \
         its lease"
    )]
    StagedResultMissing {
        /// The entry whose result was not stored.
        entry_id: String,
        /// Why the staged copy was missing, as far as the caller knows.
        why: StagedLoss,
        /// Why the inline resend failed (the backend's error message).
        resend: String,
    },
}

/// Why a result staged beside its completion was missing when the script ran.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StagedLoss {
    /// The staged copy was stored and gone by then (expired or evicted).
    #[error("expired or evicted before the script ran")]
    Gone,
    /// Redis refused the staged `SET`.
    #[error("Redis refused its SET ({code})")]
    Refused {
        /// The error code Redis answered with (`OOM` when full, `NOPERM` under an ACL).
        code: String,
    },
}

/// When a failed job is tried again, and when it is given up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each attempt after.
    pub base_delay_ms: u64,
    /// The delay never exceeds this.
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 500,
            max_delay_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The delay before trying again after `attempt` (1-based) ended as `kind`, or
    /// `None` when the job goes to the dead letters. `jitter` in `[0, 1)` spreads
    /// retries of a batch that failed together (full jitter on the upper half).
    pub fn delay_after(&self, kind: OutcomeKind, attempt: u32, jitter: f64) -> Option<Duration> {
        if !kind.is_retryable() || attempt >= self.max_attempts {
            return None;
        }
        let exp = self
            .base_delay_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        let capped = exp.min(self.max_delay_ms);
        let jittered = capped / 2 + ((capped / 2) as f64 * jitter.clamp(0.0, 1.0)) as u64;
        Some(Duration::from_millis(jittered))
    }
}

/// The operations a worker loop and a submitter need. Implemented by [`MemoryQueue`]
/// and by the Redis backend; both pass [`conformance`].
pub trait Queue: Send + Sync {
    /// Makes `jobs` available to claimers now.
    fn enqueue(&self, jobs: &[Job]) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Puts an envelope on the queue as bytes, unchecked (replaying, and testing what
    /// garbage on a queue does).
    fn enqueue_raw(&self, envelope: Vec<u8>)
    -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Claims up to `max` entries for `lease_for`, taking back expired leases first.
    /// Waits up to `wait` for work when none is ready; returns an empty batch then.
    fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Claimed>, QueueError>> + Send;

    /// Renews a lease (restarts its idle clock, for `lease_for` more) so a long job is
    /// not taken over; `LeaseLost` when it already was.
    fn extend_lease(
        &self,
        lease: &Lease,
        lease_for: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Stores the result and removes the entry, atomically and idempotently. `result`
    /// is owned or lent (`&JobResult`): a caller that reads it afterwards (the executor
    /// hands it to its environment) lends it instead of copying its output and stderr.
    fn complete(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> impl Future<Output = Result<Completion, QueueError>> + Send;

    /// Removes the entry and enqueues `job` (its `attempt` already advanced) after `delay`.
    fn retry(
        &self,
        lease: &Lease,
        job: &Job,
        delay: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Removes the entry and records it as dead with its final result (which
    /// [`Queue::result`] then returns, unless a result was already stored).
    /// `result` is owned or lent, as for [`Queue::complete`].
    fn dead_letter(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Gives the entry back at once for the next claimer (a worker shutting down or
    /// giving up). `job` is the entry's job as claimed (`None` when its envelope did not
    /// decode): a backend that re-adds the entry keeps its attempts from it. `kind` says
    /// whether this delivery counts as an attempt: the next delivery's
    /// [`Claimed::attempt`] is this one's for [`ReleaseKind::Drain`], one more for
    /// [`ReleaseKind::Overdue`].
    fn release(
        &self,
        lease: &Lease,
        job: Option<&Job>,
        kind: ReleaseKind,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The stored result of a job, if it finished.
    fn result(
        &self,
        job_id: JobId,
    ) -> impl Future<Output = Result<Option<JobResult>, QueueError>> + Send;

    /// The dead letters, oldest first.
    fn dead_letters(&self) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;

    /// Entry counts.
    fn stats(&self) -> impl Future<Output = Result<QueueStats, QueueError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_backs_off_and_gives_up() {
        let policy = RetryPolicy::default();
        let first = policy.delay_after(OutcomeKind::Timeout, 1, 1.0).unwrap();
        let second = policy.delay_after(OutcomeKind::Timeout, 2, 1.0).unwrap();
        assert!(second > first);
        assert_eq!(policy.delay_after(OutcomeKind::Timeout, 3, 0.5), None);
        assert_eq!(policy.delay_after(OutcomeKind::InvalidModule, 1, 0.5), None);
        let huge = policy.delay_after(OutcomeKind::HostError, 2, 0.0);
        assert!(huge.unwrap() <= Duration::from_millis(policy.max_delay_ms));
    }
}
