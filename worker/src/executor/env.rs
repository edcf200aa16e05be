//! The seam between the worker loop and where jobs live: [`JobEnv`] (modules, inputs,
//! outputs, and the hooks the metrics use), what happened to a run ([`Disposition`]),
//! the queue operations the loop performs ([`QueueOp`]) and how their failures are
//! logged, and what one claim brought ([`ClaimReport`]).

use std::sync::Arc;
use std::time::Duration;

use sluice_shared::{Claimed, Job, JobId, JobResult, ModuleHash, Outcome, QueueError};

use crate::job_io::{JobReader, JobWriter};
use crate::sandbox::LoadedModule;

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
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Completed => "completed",
            Disposition::Duplicate => "duplicate",
            Disposition::Retrying(_) => "retrying",
            Disposition::DeadLettered => "dead_lettered",
            Disposition::Unrecorded => "unrecorded",
        }
    }

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
    /// The job's input: [`JobReader::Memory`] when it is already in memory (served on
    /// the guest's own thread), else a stream a helper thread reads until the deadline.
    fn open_input(&self, job: &Job) -> Result<JobReader, Outcome>;
    /// Where the job's output goes: [`JobWriter::Memory`] to have it handed back in
    /// `result.output` as [`JobOutput::Inline`](sluice_shared::JobOutput::Inline)
    /// (at most the job's `max_output_bytes`), [`JobWriter::Spill`] to have it handed
    /// back the same way while it fits `keep` bytes and sent to `then` through a helper
    /// thread once it passes them (`result.output` is then `JobOutput::Written`), else a
    /// stream. The executor calls this and `finish_output` for one run on the same thread.
    fn open_output(&self, job: &Job) -> Result<JobWriter, Outcome>;
    /// Keeps or discards the output once the outcome is known, recording where it is
    /// in `result.output` (which holds the bytes already for a [`JobWriter::Memory`]
    /// run, and for a [`JobWriter::Spill`] run whose output never passed `keep`; a
    /// `Spill` run that passed it says `JobOutput::Written`). A run the watchdog gave up
    /// comes here (late) as a failure, so its output is discarded.
    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome>;
    /// Told when a claimed job is handed to the run threads, or given up without a run
    /// (delivered too often), so started and finished pair up (metrics).
    fn on_started(&self, _job: &Job) {}
    /// Told of every run's end (progress, reports, metrics). `job` is `None` when the
    /// envelope did not decode. A run the watchdog gave up ends here as `timeout`
    /// while its thread is still stuck.
    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition);
    /// Told when the watchdog gives a run up while its thread is still busy (after
    /// `on_finished`), and again with `false` when that thread finally returns.
    fn on_stuck(&self, _job: &Job, _stuck: bool) {}
    /// Told after every claim call that returned entries or none (metrics): what it
    /// brought, how long it took, and how many claims had failed in a row before it.
    fn on_claimed(&self, _claim: &ClaimReport<'_>) {}
    /// Told after every lease renewal the queue accepted (metrics).
    fn on_lease_renewed(&self) {}
    /// Told when a job slot is taken by a claimed job (`true`) and when it is free
    /// again (`false`).
    fn on_slot(&self, _busy: bool) {}
    /// Told of every queue operation that failed. The default logs it
    /// ([`log_queue_error`]); an environment that counts it must log and count it in
    /// one place.
    fn on_queue_error(&self, op: QueueOp, job: Option<JobId>, error: &QueueError) {
        log_queue_error(op, job, error);
    }
}

/// A queue operation the worker loop performs, named in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueOp {
    /// Claiming jobs (new entries or expired leases).
    Claim,
    /// Renewing a running job's lease.
    Renew,
    /// Storing a result.
    Complete,
    /// Putting a failed run back to run again.
    Retry,
    /// Moving a job to the dead letters.
    DeadLetter,
    /// Giving a lease back at shutdown.
    Release,
    /// Moving due delayed jobs (retries, scheduled) onto the job stream, inside a claim.
    Promote,
    /// Taking over entries whose lease expired, inside a claim.
    Takeover,
}

impl QueueOp {
    /// Every operation (the `op` label's closed set).
    pub const ALL: [QueueOp; 8] = [
        QueueOp::Claim,
        QueueOp::Renew,
        QueueOp::Complete,
        QueueOp::Retry,
        QueueOp::DeadLetter,
        QueueOp::Release,
        QueueOp::Promote,
        QueueOp::Takeover,
    ];

    /// Its name in logs and the `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueOp::Claim => "claim",
            QueueOp::Renew => "renew",
            QueueOp::Complete => "complete",
            QueueOp::Retry => "retry",
            QueueOp::DeadLetter => "dead_letter",
            QueueOp::Release => "release",
            QueueOp::Promote => "promote",
            QueueOp::Takeover => "takeover",
        }
    }

    /// What follows from the failure, for the log line.
    fn consequence(self) -> &'static str {
        match self {
            QueueOp::Claim => "claiming again after a backoff",
            QueueOp::Renew => "trying again at the next renewal",
            QueueOp::Complete | QueueOp::Retry | QueueOp::DeadLetter => {
                "the run is not recorded; the job is delivered again after its lease"
            }
            QueueOp::Release => "the lease will expire",
            QueueOp::Promote => "due delayed jobs wait for the next claim",
            QueueOp::Takeover => "expired leases wait for the next claim",
        }
    }
}

/// Logs a failed queue operation with what it concerned and what follows (a warning;
/// a lost lease is one too: another delivery holds the job).
pub fn log_queue_error(op: QueueOp, job: Option<JobId>, error: &QueueError) {
    let job = job.map(|id| id.to_string());
    if op == QueueOp::Renew && matches!(error, QueueError::LeaseLost { .. }) {
        tracing::warn!(
            op = op.as_str(),
            job = job.as_deref(),
            %error,
            "queue operation failed; lease lost: no longer renewing, another delivery holds the job"
        );
        return;
    }
    tracing::warn!(
        op = op.as_str(),
        job = job.as_deref(),
        %error,
        "queue operation failed; {}",
        op.consequence()
    );
}

/// One claim call, as told to [`JobEnv::on_claimed`].
#[derive(Debug)]
pub struct ClaimReport<'a> {
    /// The entries it brought (possibly none).
    pub claimed: &'a [Claimed],
    /// Its round trip, waiting for work included.
    pub took: Duration,
    /// Claims that failed in a row just before this one (0 normally; more when the
    /// queue's backend came back).
    pub after_failures: u32,
    /// The worker is stopping: the entries are released at once, not run.
    pub given_back: bool,
}
