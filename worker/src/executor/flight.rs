//! What the loop and its runs share about the jobs in flight: each run's clock (the
//! watchdog's, and what a release at shutdown needs), the runs not recorded yet, the
//! stuck count, and the job slot a claimed job holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::{Job, Lease};
use tokio::sync::Notify;

use super::sweep::Watch;
use super::{ExecutorError, JobEnv};

/// When a run began, shared between its task and its run thread: the watchdog's
/// clock, and what a release at shutdown needs to know.
pub(super) struct RunClock {
    /// When the job was claimed (preparation: policy, module, input).
    pub(super) claimed: Instant,
    /// Extra budget while preparing ([`ExecutorConfig::prepare_budget`]).
    pub(super) prepare_budget: Duration,
    /// When the guest started, set by the run thread.
    pub(super) guest: OnceLock<Instant>,
    /// Set once the run's result no longer matters (recorded as stuck, or released):
    /// the thread then discards what it made.
    pub(super) abandoned: AtomicBool,
    /// Set once a renewal found the lease lost (logged and counted there): the
    /// recording that follows fails for the same reason and is not counted again.
    pub(super) lease_lost: AtomicBool,
    /// Set while a renewal of the lease is in flight: the sweep starts no second one
    /// (against a stalled backend they would pile up).
    pub(super) renewing: AtomicBool,
    /// Set once the run's end is being written (or it was released): a renewal that
    /// comes back after that is dropped, not reported (a completed job's lease is gone).
    pub(super) recording: AtomicBool,
}

impl RunClock {
    /// A clock started now (the claim).
    pub(super) fn new(prepare_budget: Duration) -> Arc<Self> {
        Arc::new(RunClock {
            claimed: Instant::now(),
            prepare_budget,
            guest: OnceLock::new(),
            abandoned: AtomicBool::new(false),
            lease_lost: AtomicBool::new(false),
            renewing: AtomicBool::new(false),
            recording: AtomicBool::new(false),
        })
    }

    /// When a budget of `limit` runs out; `None` when it is too far to represent.
    pub(super) fn due(&self, limit: Duration) -> Option<Instant> {
        match self.guest.get() {
            Some(started) => started.checked_add(limit),
            None => self
                .claimed
                .checked_add(limit.saturating_add(self.prepare_budget)),
        }
    }

    /// Whether a budget of `limit` has run out.
    pub(super) fn is_past(&self, limit: Duration) -> bool {
        self.due(limit).is_some_and(|at| Instant::now() >= at)
    }
}

/// A job whose result is not recorded yet.
pub(super) struct Flight {
    pub(super) lease: Lease,
    /// The job (when its envelope decoded), shared with its run rather than copied:
    /// a release at shutdown re-enqueues it whole, input included.
    pub(super) job: Option<Arc<Job>>,
    pub(super) clock: Arc<RunClock>,
    /// What the sweep watches of a run (none for an entry recorded without one).
    pub(super) watch: Option<Watch>,
}

/// What the loop and its run tasks share.
#[derive(Default)]
pub(super) struct Shared {
    /// Runs not recorded yet, so shutdown can release those that outlive the grace.
    pub(super) in_flight: Mutex<HashMap<String, Flight>>,
    /// Signalled whenever a run is recorded.
    pub(super) recorded: Notify,
    /// Runs the watchdog gave up whose threads have not returned.
    pub(super) stuck: AtomicUsize,
    /// Signalled when `stuck` grows.
    pub(super) stuck_grew: Notify,
    /// Wakes the sweep early (jobs left queued for the run threads).
    pub(super) kick: Notify,
}

impl Shared {
    /// Forgets a recorded run and tells whoever waits for the runs to be recorded.
    pub(super) fn recorded(&self, entry_id: &str) {
        self.in_flight.lock().remove(entry_id);
        self.recorded.notify_waiters();
    }

    /// Resolves once no run is waiting to be recorded.
    pub(super) async fn all_recorded(&self) {
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

    /// The error to stop with when more runs are stuck than `bound`.
    pub(super) fn too_many_stuck(&self, bound: usize) -> Option<ExecutorError> {
        let stuck = self.stuck.load(Ordering::SeqCst);
        (stuck > bound).then_some(ExecutorError::TooManyStuck { stuck, bound })
    }
}

/// A job slot held by a claimed job: told to the environment when taken and when
/// given back, also when its task is aborted (stuck runs at shutdown).
pub(super) struct SlotGuard<E: JobEnv> {
    env: Arc<E>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<E: JobEnv> SlotGuard<E> {
    /// Takes the slot `permit` stands for, telling `env`.
    pub(super) fn take(env: Arc<E>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
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
