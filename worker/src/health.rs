//! The worker's health, as its `/healthz` (liveness) and `/readyz` (readiness) tell it:
//! state the claim loop's hooks ([`crate::executor::JobEnv`]) update in atomics, so a
//! probe reads a few numbers and never calls Redis.
//!
//! - **Liveness** (`/healthz`, restart when failing): the claim loop makes progress. It
//!   fails only when a claim was due (a slot is free, the worker is not draining) and no
//!   claim call completed, successfully or not, nor a slot came free, within
//!   [`liveness_bound`]. Redis being down does **not** fail it: claims then fail fast
//!   (or at their response timeout) and the loop goes on, and restarting every worker
//!   during a Redis outage would only add reconnect storms and lose the module caches.
//! - **Readiness** (`/readyz`, leave the Service's endpoints when failing): the last
//!   claim round reached Redis. It fails after [`UNREADY_AFTER`] Redis calls in a row
//!   failed (saying the last error's kind, never the URL), while draining after SIGTERM,
//!   and while liveness fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_shared::QueueError;

use crate::executor::QueueOp;

/// Redis calls that failed in a row before `/readyz` says not ready: one failure (a
/// dropped connection the client reconnects at once) is not worth leaving the Service.
pub const UNREADY_AFTER: u32 = 3;

/// How long the claim loop may go without completing a claim call while one is due,
/// before liveness fails: `claim_wait` (the longest a claim waits for work) + six
/// `response_timeout`s (a claim makes at most four Redis round trips, each bounded by the
/// response timeout: promoting due jobs, taking over expired leases, and the blocking
/// read, tried twice after a broken connection, bounded by its short block plus the
/// response timeout; two more for reconnecting) + `retry_max` (the longest backoff
/// after a failed claim). With the worker's defaults (500 ms, 10 s, 5 s): 65.5 s.
pub fn liveness_bound(
    claim_wait: Duration,
    response_timeout: Duration,
    retry_max: Duration,
) -> Duration {
    claim_wait
        .saturating_add(response_timeout.saturating_mul(6))
        .saturating_add(retry_max)
}

/// The kind of the last failed Redis call, the only detail `/readyz` gives of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureKind {
    /// No call has failed yet.
    NoFailure = 0,
    /// Redis could not be reached, or did not answer in time.
    Unavailable = 1,
    /// Redis answered with something this build does not understand.
    Protocol = 2,
    /// Redis answered, but the job's lease had been lost.
    LeaseLost = 3,
}

impl FailureKind {
    fn of(error: &QueueError) -> Self {
        match error {
            QueueError::Unavailable(_) => FailureKind::Unavailable,
            QueueError::Protocol(_) => FailureKind::Protocol,
            QueueError::LeaseLost { .. } => FailureKind::LeaseLost,
        }
    }

    fn from_u8(n: u8) -> Self {
        match n {
            1 => FailureKind::Unavailable,
            2 => FailureKind::Protocol,
            3 => FailureKind::LeaseLost,
            _ => FailureKind::NoFailure,
        }
    }

    /// Words for a probe's answer.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NoFailure => "none",
            FailureKind::Unavailable => "Redis unreachable or not answering in time",
            FailureKind::Protocol => "Redis answered with an unexpected reply",
            FailureKind::LeaseLost => "a lease was lost",
        }
    }
}

/// A probe's verdict: healthy, or why not (a short plain reason for the 503's body).
pub type Verdict = Result<&'static str, String>;

/// The worker's health, shared by the claim loop's hooks and the probe endpoints.
#[derive(Debug)]
pub struct WorkerHealth {
    /// The clock's origin; the times below are milliseconds after it.
    origin: Instant,
    /// Job slots; when all are busy the loop rightly waits for one, claiming nothing.
    slots: usize,
    /// See [`liveness_bound`].
    bound: Duration,
    /// When the loop last made progress: a claim call completed (either way), or a
    /// slot came free (the loop claims next), or the worker started.
    progress_ms: AtomicU64,
    /// Slots holding a job now.
    busy: AtomicUsize,
    /// Redis calls that failed in a row (reset by one that reached Redis).
    failures: AtomicU32,
    /// The last failure's [`FailureKind`].
    last_failure: AtomicU8,
    /// Shutdown began: no more claims, jobs in flight finishing.
    draining: AtomicBool,
}

impl WorkerHealth {
    /// A worker with `slots` job slots, connected to Redis and about to claim, whose
    /// loop must complete a claim within `bound` when one is due.
    pub fn new(slots: usize, bound: Duration) -> Self {
        Self::at(Instant::now(), slots, bound)
    }

    /// As [`WorkerHealth::new`], starting at `now` (the clock tests inject).
    pub fn at(now: Instant, slots: usize, bound: Duration) -> Self {
        WorkerHealth {
            origin: now,
            slots: slots.max(1),
            bound,
            progress_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            last_failure: AtomicU8::new(FailureKind::NoFailure as u8),
            draining: AtomicBool::new(false),
        }
    }

    /// The liveness bound in use.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn progressed(&self, now: Instant) {
        self.progress_ms.fetch_max(self.ms(now), Ordering::SeqCst);
    }

    /// A claim call returned (entries or none): the loop progresses and Redis answered.
    pub fn claim_succeeded(&self, now: Instant) {
        self.progressed(now);
        self.reached_redis();
    }

    /// A queue operation failed. A failed claim is progress (the loop backs off and
    /// claims again) and a failed Redis call, whatever the error; another operation
    /// (a renewal, a completion) counts as failed only when Redis was unreachable, as
    /// a lost lease or an unexpected reply came from a Redis that answered.
    pub fn queue_error(&self, now: Instant, op: QueueOp, error: &QueueError) {
        if op == QueueOp::Claim {
            self.progressed(now);
        } else if !matches!(error, QueueError::Unavailable(_)) {
            self.reached_redis();
            return;
        }
        self.last_failure
            .store(FailureKind::of(error) as u8, Ordering::SeqCst);
        self.failures.fetch_add(1, Ordering::SeqCst);
    }

    /// A Redis call other than a claim reached Redis (a lease renewal).
    pub fn reached_redis(&self) {
        self.failures.store(0, Ordering::SeqCst);
    }

    /// A slot was taken (`true`) or came free (`false`, after which the loop claims).
    pub fn slot(&self, now: Instant, busy: bool) {
        if busy {
            self.busy.fetch_add(1, Ordering::SeqCst);
        } else {
            // Progress first: the loop may claim (and be judged) as soon as it is free.
            self.progressed(now);
            let _ = self
                .busy
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
    }

    /// Shutdown began: the worker claims no more and finishes its jobs in flight.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Liveness at `now`: `Err` with a reason when the claim loop is stuck.
    pub fn liveness(&self, now: Instant) -> Verdict {
        if self.draining.load(Ordering::SeqCst) {
            // Jobs in flight are finishing; a restart would cut them short.
            return Ok("ok: draining");
        }
        if self.busy.load(Ordering::SeqCst) >= self.slots {
            // Waiting for a slot, not for a claim: each run is bounded by its watchdog.
            return Ok("ok: every slot busy");
        }
        let since = Duration::from_millis(
            self.ms(now)
                .saturating_sub(self.progress_ms.load(Ordering::SeqCst)),
        );
        if since > self.bound {
            return Err(format!(
                "claim loop stuck: no claim completed for {}s (bound {}s)",
                since.as_secs(),
                self.bound.as_secs()
            ));
        }
        Ok("ok")
    }

    /// Readiness at `now`: `Err` with a reason when draining, when Redis failed
    /// [`UNREADY_AFTER`] times in a row, or when the loop is stuck.
    pub fn readiness(&self, now: Instant) -> Verdict {
        if self.draining.load(Ordering::SeqCst) {
            return Err("not ready: draining after SIGTERM (finishing jobs in flight)".into());
        }
        let failures = self.failures.load(Ordering::SeqCst);
        if failures >= UNREADY_AFTER {
            let kind = FailureKind::from_u8(self.last_failure.load(Ordering::SeqCst));
            return Err(format!(
                "not ready: {failures} Redis calls in a row failed (last: {})",
                kind.as_str()
            ));
        }
        self.liveness(now)?;
        Ok("ready")
    }
}

/// A verdict as a probe's answer: 200 with `ok`/`ready`, or 503 with the reason, as
/// plain text.
pub fn answer(verdict: Verdict) -> (axum::http::StatusCode, String) {
    match verdict {
        Ok(word) => (axum::http::StatusCode::OK, word.to_owned()),
        Err(reason) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// `/healthz` and `/readyz` over `health`, for the metrics endpoint's router.
pub fn routes(health: Arc<WorkerHealth>) -> axum::Router {
    use axum::routing::get;
    let live = health.clone();
    axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = live.clone();
                async move { answer(health.liveness(Instant::now())) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move { answer(health.readiness(Instant::now())) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(60);

    fn unavailable() -> QueueError {
        QueueError::Unavailable("Connection refused (os error 111) redis://:secret@host".into())
    }

    #[test]
    fn the_default_bound_covers_a_claim_of_timeouts_and_the_longest_backoff() {
        let bound = liveness_bound(
            Duration::from_millis(500),
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        assert_eq!(bound, Duration::from_millis(65_500));
    }

    #[test]
    fn a_fresh_worker_is_live_and_ready() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 2, BOUND);
        assert_eq!(health.liveness(t0), Ok("ok"));
        assert_eq!(health.readiness(t0), Ok("ready"));
    }

    #[test]
    fn a_loop_that_completes_no_claim_within_the_bound_is_not_live() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 2, BOUND);
        health.claim_succeeded(t0 + Duration::from_secs(30));
        assert!(health.liveness(t0 + Duration::from_secs(90)).is_ok());
        let stuck = health.liveness(t0 + Duration::from_secs(91));
        let reason = stuck.expect_err("past the bound");
        assert!(reason.contains("claim loop stuck"), "{reason}");
        assert!(health.readiness(t0 + Duration::from_secs(91)).is_err());
        // The loop moves again: live at once.
        health.claim_succeeded(t0 + Duration::from_secs(92));
        assert_eq!(health.liveness(t0 + Duration::from_secs(92)), Ok("ok"));
    }

    #[test]
    fn failing_claims_keep_the_worker_live_but_not_ready() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 1, BOUND);
        for i in 1..UNREADY_AFTER {
            health.queue_error(
                t0 + Duration::from_secs(u64::from(i) * 40),
                QueueOp::Claim,
                &unavailable(),
            );
            assert!(
                health
                    .readiness(t0 + Duration::from_secs(u64::from(i) * 40))
                    .is_ok()
            );
        }
        let now = t0 + Duration::from_secs(u64::from(UNREADY_AFTER) * 40);
        health.queue_error(now, QueueOp::Claim, &unavailable());
        assert_eq!(
            health.liveness(now),
            Ok("ok"),
            "Redis down is not a restart"
        );
        let reason = health.readiness(now).expect_err("not ready");
        assert!(reason.contains("Redis unreachable"), "{reason}");
        assert!(
            !reason.contains("secret") && !reason.contains("redis://"),
            "{reason}"
        );
        // One call that reaches Redis makes it ready again.
        health.claim_succeeded(now);
        assert_eq!(health.readiness(now), Ok("ready"));
    }

    #[test]
    fn a_renewal_that_reaches_redis_resets_the_failures() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 1, BOUND);
        for _ in 0..UNREADY_AFTER {
            health.queue_error(t0, QueueOp::Renew, &unavailable());
        }
        assert!(health.readiness(t0).is_err());
        health.reached_redis();
        assert!(health.readiness(t0).is_ok());
        // A lost lease came from a Redis that answered.
        for _ in 0..UNREADY_AFTER {
            health.queue_error(t0, QueueOp::Claim, &unavailable());
        }
        let lost = QueueError::LeaseLost {
            entry_id: "1-0".into(),
        };
        health.queue_error(t0, QueueOp::Renew, &lost);
        assert!(health.readiness(t0).is_ok());
    }

    #[test]
    fn a_worker_whose_slots_are_all_busy_is_live_however_long_its_jobs_run() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 2, BOUND);
        health.claim_succeeded(t0);
        health.slot(t0, true);
        health.slot(t0, true);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(health.liveness(later), Ok("ok: every slot busy"));
        // A slot comes free: the loop claims next, judged from then.
        health.slot(later, false);
        assert_eq!(health.liveness(later + BOUND), Ok("ok"));
        assert!(
            health
                .liveness(later + BOUND + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn a_draining_worker_is_live_but_not_ready() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 1, BOUND);
        health.drain();
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(health.liveness(later), Ok("ok: draining"));
        let reason = health.readiness(later).expect_err("draining");
        assert!(reason.contains("draining"), "{reason}");
    }
}
