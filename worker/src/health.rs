//! The worker's health, as its `/healthz` (liveness) and `/readyz` (readiness) tell it:
//! state the claim loop's hooks ([`crate::executor::JobEnv`]) update in atomics, so a
//! probe reads a few numbers and never calls Redis.
//!
//! - **Liveness** (`/healthz`, restart when failing): the claim loop makes progress. It
//!   fails only when a claim was due (a slot is free, the worker is not stopping) and no
//!   claim call completed, successfully or not, within [`liveness_bound`] (a slot that
//!   frees a full worker makes a claim due, and starts the count). Its 200 body gives
//!   the last claim's age. Redis being down does **not** fail it: claims then fail fast
//!   (or at their timeouts) and the loop goes on, and restarting every worker during a
//!   Redis outage would only add reconnect storms and lose the module caches.
//! - **Readiness** (`/readyz`): the last claim round reached Redis. It fails after
//!   [`UNREADY_AFTER`] failed Redis calls in a row, counted at most once per
//!   [`FAILURE_SPACING`] (saying the last Redis error code or kind, never the URL),
//!   while stopping (a stop signal, or too many stuck runs), and while liveness fails.

mod reply;
mod verdict;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_shared::QueueError;

use crate::executor::QueueOp;
pub use reply::{REDIS_CODES, redis_code};
pub use verdict::{FailureKind, Healthy, Unhealthy, Verdict};

/// Failed Redis calls in a row (each counted at most once per [`FAILURE_SPACING`])
/// before `/readyz` says not ready: a failure spell of at least two seconds.
pub const UNREADY_AFTER: u32 = 3;

/// Failures closer together than this count once: one dropped connection failing
/// several concurrent calls (renewals, completions, a claim) is one failure, not three.
pub const FAILURE_SPACING: Duration = Duration::from_secs(1);

/// Redis round trips a claim makes at most: promoting due jobs, taking over expired
/// leases, the blocking read, that read again after a broken connection, and creating
/// the consumer group after a `NOGROUP` reply.
pub const CLAIM_ROUND_TRIPS: u32 = 5;

/// Of those, the blocking reads, each waiting up to the claim's block time.
pub const CLAIM_BLOCKING_READS: u32 = 2;

/// The queue's connection timeout for one (re)connection attempt, as
/// `RedisQueue::connect_checked` (`sluice_shared::queue::redis`) configures its
/// connection managers.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection attempts per reconnect there: the first and its 2 retries.
pub const REDIS_CONNECT_ATTEMPTS: u32 = 3;

/// The longest wait between those attempts there.
pub const REDIS_RECONNECT_DELAY_MAX: Duration = Duration::from_millis(500);

/// The longest a Redis call can wait for its connection to come back:
/// [`REDIS_CONNECT_ATTEMPTS`] × [`REDIS_CONNECT_TIMEOUT`] plus the delays between them
/// (16 s).
pub fn reconnect_max() -> Duration {
    REDIS_CONNECT_TIMEOUT
        .saturating_mul(REDIS_CONNECT_ATTEMPTS)
        .saturating_add(REDIS_RECONNECT_DELAY_MAX.saturating_mul(REDIS_CONNECT_ATTEMPTS - 1))
}

/// How long the claim loop may go without completing a claim call while one is due,
/// before liveness fails: [`CLAIM_BLOCKING_READS`] × `claim_wait` (the blocking reads'
/// block) + [`CLAIM_ROUND_TRIPS`] × (`response_timeout` + [`reconnect_max`]) (every
/// round trip bounded by the response timeout, or the blocking read's block plus it,
/// after waiting at most one reconnect) + `retry_max` (the longest backoff after a
/// failed claim). With the worker's defaults (0.5 s, 10 s, 5 s): 1 + 5 × 26 + 5 = 136 s.
pub fn liveness_bound(
    claim_wait: Duration,
    response_timeout: Duration,
    retry_max: Duration,
) -> Duration {
    claim_wait
        .saturating_mul(CLAIM_BLOCKING_READS)
        .saturating_add(
            response_timeout
                .saturating_add(reconnect_max())
                .saturating_mul(CLAIM_ROUND_TRIPS),
        )
        .saturating_add(retry_max)
}

/// Milliseconds of a failure streak's last counted failure: the low 48 bits of
/// [`WorkerHealth::failures`] (the count is above them).
const MS_BITS: u32 = 48;
const MS_MASK: u64 = (1 << MS_BITS) - 1;
/// "No claim yet" in [`WorkerHealth::claim_ms`].
const NEVER: u64 = u64::MAX;

/// The worker's health, shared by the claim loop's hooks and the probe endpoints.
#[derive(Debug)]
pub struct WorkerHealth {
    /// The clock's origin; the times below are milliseconds after it.
    origin: Instant,
    /// Job slots the claim loop runs (its semaphore's size); when all are busy it
    /// rightly waits for one, claiming nothing.
    slots: usize,
    /// Stuck runs tolerated; one more and the loop stops claiming.
    max_stuck: usize,
    /// See [`liveness_bound`].
    bound: Duration,
    /// When the loop last made progress: a claim call completed (either way), a slot
    /// freed a full worker (a claim is due from then), or the worker started.
    progress_ms: AtomicU64,
    /// When a claim call last completed, [`NEVER`] before the first.
    claim_ms: AtomicU64,
    /// Slots holding a job now.
    busy: AtomicUsize,
    /// Runs the watchdog gave up whose threads are still busy.
    stuck: AtomicUsize,
    /// More than `max_stuck` runs were stuck at once: the loop stopped claiming (for
    /// good, the worker exits once drained).
    too_many_stuck: AtomicBool,
    /// Failed Redis calls in a row (above [`MS_BITS`]) and when the last counted one
    /// came (below); 0 after a call that reached Redis.
    failures: AtomicU64,
    /// The last failure's kind: 0 none, 1 unreachable, 2 protocol, 3 + i the code
    /// `REDIS_CODES[i]`.
    last_failure: AtomicU8,
    /// A stop signal came: no more claims, jobs in flight finishing.
    draining: AtomicBool,
}

impl WorkerHealth {
    /// A worker whose claim loop runs `slots` job slots and stops claiming past
    /// `max_stuck` stuck runs (the values the loop itself uses), connected to Redis
    /// and about to claim, whose loop must complete a claim within `bound` when due.
    pub fn new(slots: usize, max_stuck: usize, bound: Duration) -> Self {
        Self::at(Instant::now(), slots, max_stuck, bound)
    }

    /// As [`WorkerHealth::new`], starting at `now` (the clock tests inject).
    pub fn at(now: Instant, slots: usize, max_stuck: usize, bound: Duration) -> Self {
        WorkerHealth {
            origin: now,
            slots: slots.max(1),
            max_stuck,
            bound,
            progress_ms: AtomicU64::new(0),
            claim_ms: AtomicU64::new(NEVER),
            busy: AtomicUsize::new(0),
            stuck: AtomicUsize::new(0),
            too_many_stuck: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            last_failure: AtomicU8::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// The liveness bound in use.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(MS_MASK)
            .min(MS_MASK)
    }

    fn progressed(&self, now: Instant) {
        self.progress_ms.fetch_max(self.ms(now), Ordering::SeqCst);
    }

    fn claim_completed(&self, now: Instant) {
        let ms = self.ms(now);
        self.progress_ms.fetch_max(ms, Ordering::SeqCst);
        let _ = self
            .claim_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                (last == NEVER || last < ms).then_some(ms)
            });
    }

    /// A claim call returned (entries or none): the loop progresses and Redis answered.
    pub fn claim_succeeded(&self, now: Instant) {
        self.claim_completed(now);
        self.reached_redis();
    }

    /// A queue operation failed. A failed claim is progress (the loop backs off and
    /// claims again) and a failed Redis call; another operation (a renewal, a
    /// completion) counts as failed only when Redis was unreachable or replied an
    /// error, as a lost lease or an unexpected reply came from a Redis that answered.
    pub fn queue_error(&self, now: Instant, op: QueueOp, error: &QueueError) {
        if op == QueueOp::Claim {
            self.claim_completed(now);
        }
        let kind: u8 = match error {
            // A large result whose staged copy was missing and whose inline resend then
            // failed: the resend's failure is Redis's (a full Redis refuses both).
            QueueError::Unavailable(message)
            | QueueError::StagedResultMissing {
                resend: message, ..
            } => redis_code(message)
                .and_then(|code| REDIS_CODES.iter().position(|(c, _)| *c == code))
                .map_or(1, |i| {
                    3u8.saturating_add(u8::try_from(i).unwrap_or(u8::MAX))
                }),
            QueueError::Protocol(_) if op == QueueOp::Claim => 2,
            _ => {
                self.reached_redis();
                return;
            }
        };
        self.last_failure.store(kind, Ordering::SeqCst);
        let now_ms = self.ms(now);
        let spacing = u64::try_from(FAILURE_SPACING.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |state| {
                let (count, last) = (state >> MS_BITS, state & MS_MASK);
                (count == 0 || now_ms.saturating_sub(last) >= spacing)
                    .then(|| ((count + 1).min(u64::from(u16::MAX)) << MS_BITS) | now_ms)
            });
    }

    /// A Redis call reached Redis (a claim, a lease renewal): the failures end.
    pub fn reached_redis(&self) {
        self.failures.store(0, Ordering::SeqCst);
    }

    /// A slot was taken (`true`) or came free (`false`). A slot that frees a full
    /// worker makes a claim due: the loop is judged from then. One that frees while
    /// another was already free is no progress: the loop was due to claim already, and
    /// may be stuck in that claim.
    pub fn slot(&self, now: Instant, busy: bool) {
        if busy {
            self.busy.fetch_add(1, Ordering::SeqCst);
        } else {
            // Progress before the count drops, so no probe sees a due claim judged
            // from before the slot came free.
            if self.busy.load(Ordering::SeqCst) >= self.slots {
                self.progressed(now);
            }
            let _ = self
                .busy
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
    }

    /// The watchdog gave a run up while its thread is busy (`true`), or that thread
    /// returned (`false`). Past `max_stuck` at once, the loop stops claiming for good.
    pub fn stuck(&self, stuck: bool) {
        if stuck {
            let now_stuck = self.stuck.fetch_add(1, Ordering::SeqCst) + 1;
            if now_stuck > self.max_stuck {
                self.too_many_stuck.store(true, Ordering::SeqCst);
            }
        } else {
            let _ = self
                .stuck
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
    }

    /// A stop signal came: the worker claims no more and finishes its jobs in flight.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.draining.load(Ordering::SeqCst) || self.too_many_stuck.load(Ordering::SeqCst)
    }

    /// Liveness at `now`: [`Unhealthy::Stuck`] when a claim was due and none completed
    /// within the bound.
    pub fn liveness(&self, now: Instant) -> Verdict {
        if self.stopping() {
            // Jobs in flight are finishing; a restart would cut them short.
            return Ok(Healthy::Stopping);
        }
        if self.busy.load(Ordering::SeqCst) >= self.slots {
            // Waiting for a slot, not for a claim: each run is bounded by its watchdog.
            return Ok(Healthy::EverySlotBusy);
        }
        let now_ms = self.ms(now);
        let since =
            Duration::from_millis(now_ms.saturating_sub(self.progress_ms.load(Ordering::SeqCst)));
        if since > self.bound {
            return Err(Unhealthy::Stuck {
                since,
                bound: self.bound,
            });
        }
        let last_claim = match self.claim_ms.load(Ordering::SeqCst) {
            NEVER => None,
            ms => Some(Duration::from_millis(now_ms.saturating_sub(ms))),
        };
        Ok(Healthy::Live { last_claim })
    }

    /// Readiness at `now`: unhealthy while stopping, after [`UNREADY_AFTER`] counted
    /// Redis failures in a row, or while liveness fails.
    pub fn readiness(&self, now: Instant) -> Verdict {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Unhealthy::Draining);
        }
        if self.too_many_stuck.load(Ordering::SeqCst) {
            return Err(Unhealthy::TooManyStuck);
        }
        let count =
            u32::try_from(self.failures.load(Ordering::SeqCst) >> MS_BITS).unwrap_or(u32::MAX);
        if count >= UNREADY_AFTER {
            let kind = match self.last_failure.load(Ordering::SeqCst) {
                2 => FailureKind::Protocol,
                n @ 3.. => REDIS_CODES
                    .get(usize::from(n - 3))
                    .map_or(FailureKind::Unreachable, |(code, _)| {
                        FailureKind::Replied(code)
                    }),
                _ => FailureKind::Unreachable,
            };
            return Err(Unhealthy::RedisFailing { count, kind });
        }
        self.liveness(now)?;
        Ok(Healthy::Ready)
    }
}

/// A verdict as a probe's answer: 200 or 503, with its words as plain text.
pub fn answer(verdict: Verdict) -> (axum::http::StatusCode, String) {
    match verdict {
        Ok(healthy) => (axum::http::StatusCode::OK, healthy.to_string()),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            reason.to_string(),
        ),
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
    use crate::executor::{CLAIM_RETRY_MAX, ExecutorConfig};

    const BOUND: Duration = Duration::from_secs(60);

    fn unavailable() -> QueueError {
        QueueError::Unavailable("Connection refused (os error 111) redis://:secret@host".into())
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_default_bound_covers_a_claim_of_timeouts_reconnects_and_the_longest_backoff() {
        let claim_wait = ExecutorConfig::default().claim_wait;
        let response_timeout = sluice_shared::RedisConfig::new("redis://h").response_timeout;
        let bound = liveness_bound(claim_wait, response_timeout, CLAIM_RETRY_MAX);
        let expected = claim_wait * CLAIM_BLOCKING_READS
            + (response_timeout + reconnect_max()) * CLAIM_ROUND_TRIPS
            + CLAIM_RETRY_MAX;
        assert_eq!(bound, expected);
        assert_eq!(reconnect_max(), secs(16));
        // The figure the docs and the manifest's comment give.
        let figure = format!("{} s", bound.as_secs_f64());
        for (name, text) in [
            (
                "docs/operations.md",
                include_str!("../../docs/operations.md"),
            ),
            (
                "deploy/k8s/worker.yaml",
                include_str!("../../deploy/k8s/worker.yaml"),
            ),
        ] {
            assert!(text.contains(&figure), "{name} states the bound {figure}");
        }
    }

    #[test]
    fn a_fresh_worker_is_live_and_ready() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 2, 1, BOUND);
        assert_eq!(health.liveness(t0), Ok(Healthy::Live { last_claim: None }));
        assert_eq!(health.readiness(t0), Ok(Healthy::Ready));
        health.claim_succeeded(t0 + Duration::from_millis(100));
        let verdict = health.liveness(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(verdict.to_string(), "ok (last claim 0.4s ago)");
    }

    #[test]
    fn a_loop_that_completes_no_claim_within_the_bound_is_not_live() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 2, 1, BOUND);
        health.claim_succeeded(t0 + secs(30));
        assert!(health.liveness(t0 + secs(90)).is_ok());
        let stuck = health.liveness(t0 + secs(91)).expect_err("past the bound");
        assert_eq!(
            stuck,
            Unhealthy::Stuck {
                since: secs(61),
                bound: BOUND
            }
        );
        assert!(stuck.to_string().contains("claim loop stuck"), "{stuck}");
        assert!(health.readiness(t0 + secs(91)).is_err());
        // The loop moves again: live at once.
        health.claim_succeeded(t0 + secs(92));
        assert!(health.liveness(t0 + secs(92)).is_ok());
    }

    #[test]
    fn slots_freeing_while_a_claim_hangs_do_not_hide_it() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 2, 1, BOUND);
        // Both slots busy; one frees: a claim starts and never completes.
        health.claim_succeeded(t0);
        health.slot(t0, true);
        health.slot(t0, true);
        health.slot(t0 + secs(10), false);
        // The other frees while that claim hangs: no progress.
        health.slot(t0 + secs(50), false);
        assert!(health.liveness(t0 + secs(70)).is_ok());
        assert!(matches!(
            health.liveness(t0 + secs(71)),
            Err(Unhealthy::Stuck { .. })
        ));
    }

    #[test]
    fn failing_claims_keep_the_worker_live_but_not_ready() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 1, 0, BOUND);
        for i in 1..UNREADY_AFTER {
            let at = t0 + secs(u64::from(i) * 40);
            health.queue_error(at, QueueOp::Claim, &unavailable());
            assert!(health.readiness(at).is_ok());
        }
        let now = t0 + secs(u64::from(UNREADY_AFTER) * 40);
        health.queue_error(now, QueueOp::Claim, &unavailable());
        assert!(health.liveness(now).is_ok(), "Redis down is not a restart");
        let reason = health.readiness(now).expect_err("not ready");
        assert_eq!(
            reason,
            Unhealthy::RedisFailing {
                count: UNREADY_AFTER,
                kind: FailureKind::Unreachable
            }
        );
        let text = reason.to_string();
        assert!(text.contains("Redis unreachable"), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("redis://"),
            "{text}"
        );
        // One call that reaches Redis makes it ready again.
        health.claim_succeeded(now);
        assert_eq!(health.readiness(now), Ok(Healthy::Ready));
    }

    /// After `UNREADY_AFTER` spaced failures of `op` with `error`, the worker is not
    /// ready, and says Redis replied OOM.
    fn assert_unready_on_oom(op: QueueOp, error: &QueueError) {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 1, 0, BOUND);
        for i in 0..u64::from(UNREADY_AFTER) {
            health.queue_error(t0 + secs(i), op, error);
        }
        let reason = health.readiness(t0 + secs(3)).expect_err("not ready");
        assert!(
            reason.to_string().contains("last: Redis replied OOM"),
            "{reason}"
        );
    }

    #[test]
    fn a_redis_error_reply_is_named_by_its_code() {
        let oom = QueueError::Unavailable(
            "\"OOM\": command not allowed when used memory > 'maxmemory'.".into(),
        );
        assert_unready_on_oom(QueueOp::Renew, &oom);
    }

    #[test]
    fn a_large_result_refused_twice_by_a_full_redis_counts_as_a_redis_failure() {
        let refused = QueueError::StagedResultMissing {
            entry_id: "1-0".into(),
            why: sluice_shared::queue::StagedLoss::Refused { code: "OOM".into() },
            resend: "OOM: command not allowed when used memory > 'maxmemory'.".into(),
        };
        assert_unready_on_oom(QueueOp::Complete, &refused);
    }

    #[test]
    fn failures_at_once_count_once() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 4, 2, BOUND);
        // One dropped connection fails a claim, renewals and a completion together.
        for op in [
            QueueOp::Claim,
            QueueOp::Renew,
            QueueOp::Renew,
            QueueOp::Complete,
        ] {
            health.queue_error(t0 + Duration::from_millis(200), op, &unavailable());
        }
        assert_eq!(health.readiness(t0 + secs(1)), Ok(Healthy::Ready));
        // A failure spell of two seconds is not ready.
        health.queue_error(
            t0 + Duration::from_millis(1200),
            QueueOp::Claim,
            &unavailable(),
        );
        health.queue_error(
            t0 + Duration::from_millis(2200),
            QueueOp::Claim,
            &unavailable(),
        );
        assert!(health.readiness(t0 + secs(3)).is_err());
    }

    #[test]
    fn a_renewal_that_reaches_redis_resets_the_failures() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 1, 0, BOUND);
        for i in 0..u64::from(UNREADY_AFTER) {
            health.queue_error(t0 + secs(i), QueueOp::Renew, &unavailable());
        }
        let now = t0 + secs(u64::from(UNREADY_AFTER));
        assert!(health.readiness(now).is_err());
        health.reached_redis();
        assert!(health.readiness(now).is_ok());
        // A lost lease came from a Redis that answered.
        for i in 0..u64::from(UNREADY_AFTER) {
            health.queue_error(now + secs(i), QueueOp::Claim, &unavailable());
        }
        let lost = QueueError::LeaseLost {
            entry_id: "1-0".into(),
        };
        health.queue_error(now + secs(5), QueueOp::Renew, &lost);
        assert!(health.readiness(now + secs(5)).is_ok());
    }

    #[test]
    fn a_worker_whose_slots_are_all_busy_is_live_however_long_its_jobs_run() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 2, 1, BOUND);
        health.claim_succeeded(t0);
        health.slot(t0, true);
        health.slot(t0, true);
        let later = t0 + secs(3600);
        assert_eq!(health.liveness(later), Ok(Healthy::EverySlotBusy));
        // A slot frees the full worker: the loop claims next, judged from then.
        health.slot(later, false);
        assert!(health.liveness(later + BOUND).is_ok());
        assert!(health.liveness(later + BOUND + secs(1)).is_err());
    }

    #[test]
    fn a_draining_worker_is_live_but_not_ready() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 1, 0, BOUND);
        health.drain();
        let later = t0 + secs(3600);
        assert_eq!(health.liveness(later), Ok(Healthy::Stopping));
        let reason = health.readiness(later).expect_err("draining");
        assert_eq!(reason, Unhealthy::Draining);
        assert!(
            reason.to_string().contains("after a stop signal"),
            "{reason}"
        );
    }

    #[test]
    fn too_many_stuck_runs_stop_the_worker_live_but_not_ready() {
        let t0 = Instant::now();
        let health = WorkerHealth::at(t0, 4, 1, BOUND);
        health.stuck(true);
        assert!(health.readiness(t0).is_ok(), "one stuck run is tolerated");
        health.stuck(true);
        let later = t0 + secs(3600);
        assert_eq!(health.liveness(later), Ok(Healthy::Stopping));
        let reason = health.readiness(later).expect_err("stopping");
        assert!(
            reason.to_string().contains("stopping: too many stuck runs"),
            "{reason}"
        );
        // The loop stopped claiming for good, even once a thread returns.
        health.stuck(false);
        assert_eq!(health.readiness(later), Err(Unhealthy::TooManyStuck));
    }

    /// `GET path` on the real router, served on a loopback port: status line and body.
    async fn get(health: Arc<WorkerHealth>, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, routes(health)).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        server.abort();
        let (head, body) = reply.split_once("\r\n\r\n").expect("a reply");
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn the_routes_answer_503_for_a_stuck_loop_and_200_with_the_claims_age() {
        let bound = secs(10);
        let stuck = Arc::new(WorkerHealth::at(Instant::now() - 2 * bound, 1, 0, bound));
        let (status, body) = get(stuck.clone(), "/healthz").await;
        assert!(status.contains(" 503 "), "{status}");
        assert!(body.starts_with("claim loop stuck"), "{body}");
        let (status, _) = get(stuck.clone(), "/readyz").await;
        assert!(status.contains(" 503 "), "{status}");
        stuck.claim_succeeded(Instant::now());
        let (status, body) = get(stuck.clone(), "/healthz").await;
        assert!(status.contains(" 200 "), "{status}");
        assert!(body.starts_with("ok (last claim 0."), "{body}");
        let (status, body) = get(stuck, "/readyz").await;
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(body, "ready");
    }
}
