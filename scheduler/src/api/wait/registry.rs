//! The requests waiting for their jobs: the caps (in all, per tenant), each request's
//! place ([`Slot`], released when dropped) and its registered wait ([`Watch`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use parking_lot::Mutex;
use sluice_shared::JobId;
use sluice_shared::OutcomeKind;
use sluice_shared::queue::redis::RedisQueue;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{LINGER, WaitLimits};
use crate::api::error::{ApiError, ApiResult};
use crate::metrics::{WaitEnd, WaitMetrics};

/// The requests waiting for their jobs, and the one follower that wakes them.
pub(in crate::api) struct Waiters {
    limits: WaitLimits,
    state: Mutex<State>,
    /// Rung when a waiter arrives while the follower is idle.
    pub(super) wake: Notify,
    /// Bumped each time the follower starts following (from a fresh position).
    ready: watch::Sender<u64>,
    /// Whether the follower task has been started.
    started: AtomicBool,
    /// Fired when the server shuts down: every waiter answers 202 with its job's id at
    /// once, new waits are refused (503) and the follower ends.
    closing: CancellationToken,
}

/// What the waiters share, under one lock (never held across an await).
#[derive(Default)]
struct State {
    /// The job each waiting request waits for, and how to wake it.
    jobs: HashMap<JobId, oneshot::Sender<OutcomeKind>>,
    /// Waiting requests per tenant (no entry at zero).
    by_tenant: HashMap<String, usize>,
    /// Waiting requests in all.
    total: usize,
    /// Whether the follower reads notices from a position older than every waiter.
    following: bool,
    /// When the last wait was registered.
    last_registered: Option<Instant>,
}

impl Waiters {
    /// No one waiting yet, under `limits`.
    pub(in crate::api) fn new(limits: WaitLimits) -> Self {
        Waiters {
            limits,
            state: Mutex::default(),
            wake: Notify::new(),
            ready: watch::Sender::new(0),
            started: AtomicBool::new(false),
            closing: CancellationToken::new(),
        }
    }

    /// The token that, once cancelled, ends every wait (answered 202 with the job's id
    /// at once), refuses new ones and stops the follower: cancel it when the server
    /// starts shutting down, so no waiting client is cut off without its job's id.
    pub(in crate::api) fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// The bounds on waiting.
    pub(in crate::api) fn limits(&self) -> WaitLimits {
        self.limits
    }

    /// A place for one waiting request of `tenant`, or the refusal: 503 when the
    /// process has `max_waiters` waiting, 429 when the tenant has its share.
    pub(in crate::api) fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        metrics: &WaitMetrics,
    ) -> ApiResult<Slot> {
        if self.closing.is_cancelled() {
            metrics.refused();
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "this server is shutting down; submit without wait, or try again",
            );
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        let mut state = self.state.lock();
        if state.total >= self.limits.max_waiters {
            metrics.refused();
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_waiters",
                format!(
                    "{} requests are waiting for their jobs, the most this server holds; submit without wait, or try again",
                    self.limits.max_waiters
                ),
            );
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        let mine = state.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= self.limits.max_per_tenant {
            metrics.refused();
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                format!(
                    "this tenant has {mine} requests waiting for their jobs, the most one tenant may; submit without wait, or try again"
                ),
            );
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        state.total += 1;
        *state.by_tenant.entry(tenant.to_owned()).or_default() += 1;
        metrics.started();
        Ok(Slot {
            waiters: self.clone(),
            tenant: tenant.to_owned(),
            job: None,
            metrics: metrics.clone(),
            end: WaitEnd::Abandoned,
        })
    }

    /// Starts the follower over `queue` unless it runs already.
    pub(super) fn start(self: &Arc<Self>, queue: &Arc<RedisQueue>, metrics: &WaitMetrics) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(super::follower::follow(
                Arc::downgrade(self),
                queue.clone(),
                metrics.clone(),
                self.closing.clone(),
            ));
        }
    }

    /// Whether any request waits for a job.
    pub(super) fn anyone_waiting(&self) -> bool {
        !self.state.lock().jobs.is_empty()
    }

    /// The follower reads from a position older than every waiter now: wake those
    /// waiting for that.
    pub(super) fn now_following(&self) {
        let mut state = self.state.lock();
        state.following = true;
        self.ready.send_modify(|generation| *generation += 1);
    }

    /// Stops following when nobody waits and nobody arrived for [`LINGER`] (the next
    /// waiter has the follower start from a fresh position); whether it stopped.
    pub(super) fn stop_if_idle(&self) -> bool {
        let mut state = self.state.lock();
        let lingering = state
            .last_registered
            .is_some_and(|at| at.elapsed() < LINGER);
        if state.jobs.is_empty() && !lingering {
            state.following = false;
            true
        } else {
            false
        }
    }

    /// Wakes the request waiting for each job in `notices`, if any.
    pub(super) fn deliver(&self, notices: Vec<(JobId, OutcomeKind)>) {
        let mut state = self.state.lock();
        for (job, kind) in notices {
            if let Some(waiter) = state.jobs.remove(&job) {
                let _ = waiter.send(kind);
            }
        }
    }
}

/// One waiting request's place: released, and counted by how it ended, when dropped.
pub(in crate::api) struct Slot {
    waiters: Arc<Waiters>,
    tenant: String,
    job: Option<JobId>,
    metrics: WaitMetrics,
    /// How the wait ended, counted when the slot is dropped.
    pub(super) end: WaitEnd,
}

/// A registered wait for one job.
pub(in crate::api) struct Watch {
    /// Sent the job's outcome kind when its notice arrives.
    pub(super) finished: oneshot::Receiver<OutcomeKind>,
    /// Set when the follower was idle: changes once it follows.
    pub(super) ready: Option<watch::Receiver<u64>>,
}

impl Slot {
    /// The request failed after taking its place (counted as `failed`, not as a client
    /// that went away).
    pub(in crate::api) fn failed(&mut self) {
        self.end = WaitEnd::Failed;
    }

    /// Registers the wait for `job` (before it is enqueued), starting the follower over
    /// `queue` if need be.
    pub(in crate::api) fn watch(&mut self, job: JobId, queue: &Arc<RedisQueue>) -> Watch {
        self.waiters.start(queue, &self.metrics);
        let (tx, finished) = oneshot::channel();
        let mut state = self.waiters.state.lock();
        state.jobs.insert(job, tx);
        state.last_registered = Some(Instant::now());
        self.job = Some(job);
        let ready = (!state.following).then(|| self.waiters.ready.subscribe());
        drop(state);
        if ready.is_some() {
            self.waiters.wake.notify_one();
        }
        Watch { finished, ready }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.waiters.state.lock();
        if let Some(job) = self.job {
            state.jobs.remove(&job);
        }
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.by_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                state.by_tenant.remove(&self.tenant);
            }
        }
        drop(state);
        self.metrics.ended(self.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wait::{DEFAULT_MAX_WAIT, WaitLimits};
    use crate::metrics::WaitMetrics;

    fn limits(max_waiters: usize, max_per_tenant: usize) -> WaitLimits {
        WaitLimits {
            max_wait: DEFAULT_MAX_WAIT,
            max_waiters,
            max_per_tenant,
        }
    }

    #[test]
    fn waiters_are_capped_per_tenant_and_in_all_and_released_on_drop() {
        let waiters = Arc::new(Waiters::new(limits(3, 2)));
        let metrics = WaitMetrics::default();
        let a1 = waiters.reserve("a", &metrics).unwrap();
        let _a2 = waiters.reserve("a", &metrics).unwrap();
        let refused = waiters.reserve("a", &metrics).err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let _b1 = waiters.reserve("b", &metrics).unwrap();
        let refused = waiters.reserve("c", &metrics).err().unwrap();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        drop(a1);
        let _c1 = waiters.reserve("c", &metrics).unwrap();
        assert_eq!(waiters.state.lock().total, 3);
    }

    #[test]
    fn a_dropped_slot_forgets_its_job() {
        let waiters = Arc::new(Waiters::new(limits(3, 2)));
        let metrics = WaitMetrics::default();
        let mut slot = waiters.reserve("a", &metrics).unwrap();
        let id = JobId(uuid::Uuid::now_v7());
        let (tx, _rx) = oneshot::channel();
        waiters.state.lock().jobs.insert(id, tx);
        slot.job = Some(id);
        drop(slot);
        let state = waiters.state.lock();
        assert!(state.jobs.is_empty() && state.by_tenant.is_empty() && state.total == 0);
    }

    #[test]
    fn a_notice_wakes_its_waiter_only() {
        let waiters = Waiters::new(limits(3, 2));
        let (mine, other) = (JobId(uuid::Uuid::now_v7()), JobId(uuid::Uuid::now_v7()));
        let (tx, mut rx) = oneshot::channel();
        waiters.state.lock().jobs.insert(mine, tx);
        waiters.deliver(vec![(other, OutcomeKind::Success)]);
        assert!(rx.try_recv().is_err());
        waiters.deliver(vec![(mine, OutcomeKind::Trap)]);
        assert_eq!(rx.try_recv().unwrap(), OutcomeKind::Trap);
        // Nobody registered lately: the follower may stop; a recent waiter keeps it.
        assert!(waiters.stop_if_idle());
        waiters.state.lock().last_registered = Some(Instant::now());
        assert!(!waiters.stop_if_idle());
    }
}
