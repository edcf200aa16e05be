//! How the loop claims, leases and gives up on runs ([`ExecutorConfig`]), and why it
//! stops on its own ([`ExecutorError`]).

use std::time::Duration;

use sluice_shared::RetryPolicy;

use crate::sandbox::Sandbox;

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
    /// before the watchdog records it as `timeout` and stops renewing its lease. The
    /// sweep notices on its next look (at most half a grace later, and a run claimed or
    /// started between looks is first seen then), so a stuck run is recorded between
    /// grace and 1.5 × grace past its deadline.
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
    /// sandbox. [`run`](super::run) does it; a caller that needs the loop's real size (the health
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
    /// A task the loop depends on (the sweep: lease renewals and the watchdog; or the
    /// collector of run results) ended: without it no lease is renewed, no stuck run
    /// is noticed, or no result is recorded, so the loop stops.
    #[error("the worker loop's {task} task ended unexpectedly: {reason}")]
    Background {
        /// Which task (`sweep` or `handback`).
        task: &'static str,
        /// How it ended (a panic's message, or that it returned).
        reason: String,
    },
    /// The run threads (one per job slot) could not all be started.
    #[error("cannot start the worker's {slots} run threads: {source}")]
    RunThreads {
        /// The threads asked for.
        slots: usize,
        /// What the system said.
        source: std::io::Error,
    },
}
