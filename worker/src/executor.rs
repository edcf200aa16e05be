//! The worker loop over any [`Queue`]: claim as many jobs as there are free slots, run
//! each on a blocking thread (guests run synchronously: wasmtime-wasi's async stdio on a
//! multi-threaded runtime streams ~10x slower, `docs/ARCHITECTURE.md`), renew the
//! lease while it runs, then complete, retry or dead-letter it.
//!
//! A watchdog stands behind the sandbox's own deadline: a run still going at its
//! deadline plus [`ExecutorConfig::watchdog_grace`] (blocked in a host call the sandbox
//! cannot interrupt: an input reader, a [`JobEnv`] call, a wasmtime bug) stops being
//! renewed and is recorded as `timeout`. Its thread cannot be killed, so it keeps its
//! slot until it returns, and what it returns is dropped. A worker with more such stuck
//! runs than [`ExecutorConfig::stuck_bound`] stops claiming, records or releases what it
//! holds, and [`run`] returns [`ExecutorError::TooManyStuck`] so that its supervisor
//! restarts it with fresh threads.
//!
//! Where modules, inputs and outputs come from is the [`JobEnv`]'s business: files in
//! embedded batch mode, Redis blobs in the fleet.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::backoff::Backoff;
use sluice_shared::queue::{Completion, ReleaseKind};
use sluice_shared::{
    Claimed, Job, JobId, JobResult, Lease, ModuleHash, Outcome, Queue, QueueError, RetryPolicy,
};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::job_io::{JobReader, JobWriter};
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
    /// (at most the job's `max_output_bytes`), else a stream. The executor calls this
    /// and `finish_output` for one run on the same thread.
    fn open_output(&self, job: &Job) -> Result<JobWriter, Outcome>;
    /// Keeps or discards the output once the outcome is known, recording where it is
    /// in `result.output` (which holds the bytes already for a [`JobWriter::Memory`]
    /// run). A run the watchdog gave up comes here (late) as a failure, so its output
    /// is discarded.
    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome>;
    /// Told when a job starts running (metrics).
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
    /// How long a run may go past its deadline (`limits.timeout`, counted from the
    /// guest's start, or from the claim while the module and input are prepared)
    /// before the watchdog records it as `timeout` and stops renewing its lease.
    pub watchdog_grace: Duration,
    /// Extra time the watchdog allows while a job is being prepared (policy, module
    /// and its compiled code, input), before its guest starts: a fleet worker sets it to its compile
    /// wall-clock limit, so a slow compile ends as the compile limit's
    /// `invalid_module` rather than as a retryable `timeout`. Zero by default.
    pub prepare_budget: Duration,
    /// Stuck runs (given up by the watchdog, thread still busy) this worker tolerates;
    /// one more and [`run`] stops with [`ExecutorError::TooManyStuck`]. `None`: half
    /// the slots (so a one-slot worker stops at its first stuck run).
    pub max_stuck: Option<usize>,
}

impl ExecutorConfig {
    /// Clamps [`Self::slots`] to 1 ..= the sandbox's pool slots, warning when it had
    /// more: more runs than pool slots would make a job wait for a slot inside the
    /// sandbox. [`run`] does it; a caller that needs the loop's real size (the health
    /// checks) does it first, and `run` then changes nothing.
    pub fn fit_to(&mut self, sandbox: &Sandbox) {
        let pool = usize::try_from(sandbox.config().slots).unwrap_or(usize::MAX);
        if self.slots > pool {
            tracing::warn!(
                slots = self.slots,
                pool,
                "more job slots than sandbox pool slots; running at most the pool's"
            );
        }
        self.slots = self.slots.clamp(1, pool.max(1));
    }

    /// Default [`ExecutorConfig::watchdog_grace`]: 5 s, well past the sandbox's own
    /// stop (one epoch tick, 5 ms) and any WASI call's clamp to the deadline.
    pub const DEFAULT_WATCHDOG_GRACE: Duration = Duration::from_secs(5);

    /// The number of stuck runs tolerated (see [`ExecutorConfig::max_stuck`]).
    pub fn stuck_bound(&self) -> usize {
        self.max_stuck.unwrap_or(self.slots / 2)
    }
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
            watchdog_grace: Self::DEFAULT_WATCHDOG_GRACE,
            prepare_budget: Duration::ZERO,
            max_stuck: None,
        }
    }
}

/// Why the worker loop stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// More runs are stuck in host calls than the worker tolerates: their threads and
    /// sandbox slots are lost until the process restarts.
    #[error(
        "{stuck} runs are stuck past their deadline and the watchdog grace (at most {bound} tolerated); \
         stopped claiming so that a restart frees their threads and sandbox slots"
    )]
    TooManyStuck {
        /// Runs stuck when the loop stopped.
        stuck: usize,
        /// The most the config tolerates ([`ExecutorConfig::stuck_bound`]).
        bound: usize,
    },
}

/// When a run began, shared between its task and its blocking thread: the watchdog's
/// clock, and what a release at shutdown needs to know.
struct RunClock {
    /// When the job was claimed (preparation: policy, module, input).
    claimed: Instant,
    /// Extra budget while preparing ([`ExecutorConfig::prepare_budget`]).
    prepare_budget: Duration,
    /// When the guest started, set by the blocking thread.
    guest: OnceLock<Instant>,
    /// Set once the run's result no longer matters (recorded as stuck, or released):
    /// the thread then discards what it made.
    abandoned: AtomicBool,
    /// Set once a renewal found the lease lost (logged and counted there): the
    /// recording that follows fails for the same reason and is not counted again.
    lease_lost: AtomicBool,
}

impl RunClock {
    fn new(prepare_budget: Duration) -> Arc<Self> {
        Arc::new(RunClock {
            claimed: Instant::now(),
            prepare_budget,
            guest: OnceLock::new(),
            abandoned: AtomicBool::new(false),
            lease_lost: AtomicBool::new(false),
        })
    }

    /// When a budget of `limit` runs out; `None` when it is too far to represent.
    fn due(&self, limit: Duration) -> Option<Instant> {
        match self.guest.get() {
            Some(started) => started.checked_add(limit),
            None => self
                .claimed
                .checked_add(limit.saturating_add(self.prepare_budget)),
        }
    }

    fn is_past(&self, limit: Duration) -> bool {
        self.due(limit).is_some_and(|at| Instant::now() >= at)
    }
}

/// A job whose result is not recorded yet.
struct Flight {
    lease: Lease,
    job: Option<Job>,
    clock: Arc<RunClock>,
}

/// What the loop and its run tasks share.
#[derive(Default)]
struct Shared {
    /// Runs not recorded yet, so shutdown can release those that outlive the grace.
    in_flight: Mutex<HashMap<String, Flight>>,
    /// Signalled whenever a run is recorded.
    recorded: Notify,
    /// Runs the watchdog gave up whose threads have not returned.
    stuck: AtomicUsize,
    /// Signalled when `stuck` grows.
    stuck_grew: Notify,
}

impl Shared {
    fn recorded(&self, entry_id: &str) {
        self.in_flight.lock().remove(entry_id);
        self.recorded.notify_waiters();
    }

    async fn all_recorded(&self) {
        loop {
            let recorded = self.recorded.notified();
            tokio::pin!(recorded);
            recorded.as_mut().enable();
            if self.in_flight.lock().is_empty() {
                return;
            }
            recorded.await;
        }
    }

    fn too_many_stuck(&self, bound: usize) -> Option<ExecutorError> {
        let stuck = self.stuck.load(Ordering::SeqCst);
        (stuck > bound).then_some(ExecutorError::TooManyStuck { stuck, bound })
    }
}

/// The first wait after a failed claim (the queue's backend away); it doubles on each
/// failure up to [`CLAIM_RETRY_MAX`] and starts again after a claim succeeds.
const CLAIM_RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between claims while the backend is away.
pub const CLAIM_RETRY_MAX: Duration = Duration::from_secs(5);

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
    let slots = Arc::new(Semaphore::new(config.slots));
    let shared = Arc::new(Shared::default());
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
                for (claimed, permit) in claimed.into_iter().zip(permits) {
                    let (queue, sandbox, env, config, shared) = (
                        queue.clone(),
                        sandbox.clone(),
                        env.clone(),
                        config.clone(),
                        shared.clone(),
                    );
                    let clock = RunClock::new(config.prepare_budget);
                    let slot = SlotGuard::take(env.clone(), permit);
                    // In the map before the task is spawned, so a shutdown that comes
                    // before the task first runs still finds the lease to release.
                    shared.in_flight.lock().insert(
                        claimed.lease.entry_id.clone(),
                        Flight {
                            lease: claimed.lease.clone(),
                            job: claimed.delivery.as_ref().ok().cloned(),
                            clock: clock.clone(),
                        },
                    );
                    let span = job_span(&claimed);
                    running.spawn(
                        async move {
                            process(&*queue, sandbox, env, &config, claimed, clock, &shared).await;
                            drop(slot);
                        }
                        .instrument(span),
                    );
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
            release(&*queue, &*env, &flight.lease, flight.job.as_ref(), kind).await;
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

/// One line per run released at the end of the grace period: which job, whose, and
/// whether its run counts as an attempt (`overdue`: past its deadline) or not (`drain`).
fn log_released(flight: &Flight, kind: ReleaseKind) {
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

async fn release<Q: Queue, E: JobEnv>(
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

/// The span a claimed entry's run is logged in, built with all its fields at once: its
/// entry, and when the envelope decoded the job id, tenant (quoted when it breaks the
/// name rule), module hash and attempt. The outcome is not a span field: the run's
/// `job finished` event carries it ([`finish`]), so no record re-renders the span.
fn job_span(claimed: &Claimed) -> tracing::Span {
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

/// A job slot held by a claimed job: told to the environment when taken and when
/// given back, also when its task is aborted (stuck runs at shutdown).
struct SlotGuard<E: JobEnv> {
    env: Arc<E>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<E: JobEnv> SlotGuard<E> {
    fn take(env: Arc<E>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        env.on_slot(true);
        SlotGuard {
            env,
            _permit: permit,
        }
    }
}

impl<E: JobEnv> Drop for SlotGuard<E> {
    fn drop(&mut self) {
        self.env.on_slot(false);
    }
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
    clock: Arc<RunClock>,
    shared: &Shared,
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
            finish(queue, &*env, config, &lease, &clock, None, result).await;
            shared.recorded(&lease.entry_id);
            return;
        }
    };

    // A job that kills its worker every time never reaches the retry decision below;
    // its delivery count still grows (as does a job released overdue), and past the
    // attempt limit it is given up here.
    if attempt > config.retry.max_attempts {
        // Reported as a (zero-length) run, so started/finished stay paired for metrics.
        env.on_started(&job);
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
        finish(queue, &*env, config, &lease, &clock, Some(&job), result).await;
        shared.recorded(&lease.entry_id);
        return;
    }

    env.on_started(&job);
    let mut run_job = {
        let (job, env, clock) = (job.clone(), env.clone(), clock.clone());
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _in_job = span.enter();
            run_one(&sandbox, &*env, &job, attempt, &clock)
        })
    };
    let limit = job.limits.timeout().saturating_add(config.watchdog_grace);
    let ran = tokio::select! {
        biased;
        ran = &mut run_job => Some(ran),
        () = watchdog(&clock, limit) => None,
        never = renew(queue, &*env, &lease, &clock, config.lease, job.id) => match never {},
    };
    match ran {
        Some(ran) => {
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
            finish(queue, &*env, config, &lease, &clock, Some(&job), result).await;
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
            finish(queue, &*env, config, &lease, &clock, Some(&job), result).await;
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

/// Resolves once the run's budget `limit` is spent, counted from the guest's start (or
/// from the claim while it is being prepared).
async fn watchdog(clock: &RunClock, limit: Duration) {
    loop {
        let Some(due) = clock.due(limit) else {
            return std::future::pending().await;
        };
        if Instant::now() >= due {
            return;
        }
        // The guest may start meanwhile and move the due time; looked at again on wake.
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Renews `lease` every third of its length, until dropped (or the lease is lost).
async fn renew<Q: Queue, E: JobEnv>(
    queue: &Q,
    env: &E,
    lease: &Lease,
    clock: &RunClock,
    lease_for: Duration,
    job: JobId,
) -> Infallible {
    // A zero lease is refused at start; this only keeps a bad config from spinning.
    let every = (lease_for / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        match queue.extend_lease(lease, lease_for).await {
            Ok(()) => env.on_lease_renewed(),
            Err(error @ QueueError::LeaseLost { .. }) => {
                clock.lease_lost.store(true, Ordering::SeqCst);
                env.on_queue_error(QueueOp::Renew, Some(job), &error);
                return std::future::pending().await;
            }
            Err(error) => env.on_queue_error(QueueOp::Renew, Some(job), &error),
        }
    }
}

/// Writes a run's end to the queue (complete, retry or dead letter) and tells the
/// environment. Every result and dead-letter reason the executor stores passes here.
#[allow(clippy::too_many_arguments)]
async fn finish<Q: Queue, E: JobEnv>(
    queue: &Q,
    env: &E,
    config: &ExecutorConfig,
    lease: &Lease,
    clock: &RunClock,
    job: Option<&Job>,
    result: JobResult,
) {
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

async fn record<Q: Queue>(
    queue: &Q,
    config: &ExecutorConfig,
    lease: &Lease,
    job: Option<&Job>,
    result: &JobResult,
) -> Result<Disposition, (QueueOp, QueueError)> {
    if result.outcome.is_success() {
        return match queue.complete(lease, result.clone()).await {
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
    match queue.dead_letter(lease, result.clone()).await {
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

fn run_one<E: JobEnv>(
    sandbox: &Sandbox,
    env: &E,
    job: &Job,
    attempt: u32,
    clock: &RunClock,
) -> JobResult {
    // The module's code for the job's engine is loaded here, under the prepare budget
    // (a compile, or waiting for another worker's), before the guest's deadline starts.
    let prepared = env
        .admit(job)
        .and_then(|()| env.module(&job.module))
        .and_then(|module| {
            module.load_code_for(sandbox, job)?;
            let input = env.open_input(job)?;
            let output = env.open_output(job)?;
            Ok((module, input, output))
        });
    let mut result = match prepared {
        Ok((module, input, output)) => {
            let _ = clock.guest.set(Instant::now());
            sandbox.run_io(&module, job, input, output)
        }
        Err(outcome) => JobResult::without_run(job.id, outcome, attempt),
    };
    result.attempt = attempt;
    if clock.abandoned.load(Ordering::SeqCst) {
        // The watchdog (or a release) already settled this run: keep none of its output.
        result.outcome = Outcome::Timeout;
    }
    if let Err(outcome) = env.finish_output(job, &mut result)
        && result.outcome.is_success()
    {
        result.outcome = outcome;
    }
    result
}
