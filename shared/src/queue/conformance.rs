//! The behaviour every [`Queue`] backend must show, as plain async functions that panic
//! on a violation. A backend's test file runs them all with [`queue_conformance!`](crate::queue_conformance):
//!
//! ```ignore
//! sluice_shared::queue_conformance!(async { ((), sluice_shared::MemoryQueue::new()) });
//! ```
//!
//! The expression is a future of `(guard, queue)`: the guard lives as long as the test
//! (a Redis server, say). Each function takes a fresh, empty queue. None sleeps to synchronise: waits are the
//! queue's own blocking claims, which return as soon as the awaited event happens.

use std::time::Duration;

use super::{Claimed, Completion, Queue, QueueError, ReleaseKind};
use crate::codec::{self, DecodeError};
use crate::job::{Job, JobInput, ModuleHash};
use crate::outcome::{JobOutput, JobResult, Outcome, OutcomeKind};

const LONG: Duration = Duration::from_secs(60);
const PATIENT: Duration = Duration::from_secs(30);
/// The lease of tests that wait for one to expire.
const SHORT: Duration = Duration::from_millis(300);

fn job(n: u8) -> Job {
    let mut job = Job::new(ModuleHash::of(b"conformance"), JobInput::Inline(vec![n]));
    job.label = format!("job-{n}");
    job
}

fn success(job: &Job, attempt: u32) -> JobResult {
    JobResult::without_run(job.id, Outcome::Success, attempt)
}

/// A success with `fill` repeated as a large output: large enough for the Redis queue
/// to stage it outside its script ([`super::redis::STAGE_THRESHOLD`]).
pub fn large_success(job: &Job, attempt: u32, fill: u8) -> JobResult {
    let mut result = success(job, attempt);
    result.output = JobOutput::Inline(vec![fill; 4 * super::redis::STAGE_THRESHOLD]);
    result
}

/// Enqueues `sent` alone.
async fn enqueue_one<Q: Queue>(queue: &Q, sent: &Job) {
    queue.enqueue(std::slice::from_ref(sent)).await.unwrap();
}

/// Claims one job as `consumer` with a lease of `lease`, waiting for it as long as
/// [`PATIENT`]; fails if none comes.
async fn claim_one<Q: Queue>(queue: &Q, consumer: &str, lease: Duration) -> Claimed {
    let mut claimed = queue.claim(consumer, 1, lease, PATIENT).await.unwrap();
    assert_eq!(claimed.len(), 1, "{consumer} claimed nothing");
    claimed.remove(0)
}

/// Runs every check below against queues made by `make`, in order.
#[macro_export]
macro_rules! queue_conformance {
    ($make:expr) => {
        $crate::queue_conformance!(@each $make;
            enqueued_job_is_claimed_intact,
            claim_honours_max_and_never_hands_a_job_twice,
            completion_stores_result_and_removes_entry,
            duplicate_completion_keeps_first_result,
            expired_lease_is_redelivered_with_higher_count,
            extended_lease_is_not_taken_over,
            lost_lease_cannot_be_extended,
            retry_waits_for_its_delay,
            dead_letter_keeps_reason,
            garbage_is_delivered_as_decode_error,
            released_job_is_claimable_at_once,
            drain_release_keeps_earlier_attempts,
            overdue_release_counts_an_attempt,
            release_of_a_lost_lease_is_refused,
            waiting_claim_wakes_on_enqueue,
            large_result_round_trips,
            large_duplicate_completion_keeps_first_result,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_guard, queue) = $make.await;
                $crate::queue::conformance::$name(&queue).await;
            }
        )*
    };
}

/// Checks that enqueued job is claimed intact.
pub async fn enqueued_job_is_claimed_intact<Q: Queue>(queue: &Q) {
    let sent = job(1);
    enqueue_one(queue, &sent).await;
    let claimed = queue.claim("c1", 10, LONG, PATIENT).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].delivery.as_ref().unwrap(), &sent);
    assert_eq!(claimed[0].lease.job_id, Some(sent.id));
    assert_eq!(claimed[0].lease.deliveries, 1);
    assert_eq!(claimed[0].attempt(), 1);
}

/// Checks that claim honours max and never hands a job twice.
pub async fn claim_honours_max_and_never_hands_a_job_twice<Q: Queue>(queue: &Q) {
    let jobs: Vec<Job> = (0..10).map(job).collect();
    queue.enqueue(&jobs).await.unwrap();
    let first = queue.claim("c1", 4, LONG, PATIENT).await.unwrap();
    let second = queue.claim("c2", 100, LONG, PATIENT).await.unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(second.len(), 6);
    let mut seen: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|c| c.lease.job_id.unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 10);
    let none = queue.claim("c3", 1, LONG, Duration::ZERO).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(queue.stats().await.unwrap().leased, 10);
}

/// Checks that completion stores result and removes entry.
pub async fn completion_stores_result_and_removes_entry<Q: Queue>(queue: &Q) {
    let sent = job(2);
    enqueue_one(queue, &sent).await;
    let claimed = claim_one(queue, "c1", LONG).await;
    assert_eq!(queue.result(sent.id).await.unwrap(), None);
    let done = queue
        .complete(&claimed.lease, success(&sent, 1))
        .await
        .unwrap();
    assert_eq!(done, Completion::Recorded);
    assert_eq!(
        queue.result(sent.id).await.unwrap(),
        Some(success(&sent, 1))
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.completed), (0, 0, 1));
}

/// Checks that duplicate completion keeps first result.
pub async fn duplicate_completion_keeps_first_result<Q: Queue>(queue: &Q) {
    let sent = job(3);
    enqueue_one(queue, &sent).await;
    // The first lease expires and a second worker takes the job over; both finish.
    let first = claim_one(queue, "c1", SHORT).await;
    let second = claim_one(queue, "c2", SHORT).await;
    assert_eq!(second.lease.deliveries, 2);
    let mut later = success(&sent, 2);
    later.stats.output_bytes = 99;
    assert_eq!(
        queue.complete(&second.lease, later.clone()).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(
        queue
            .complete(&first.lease, success(&sent, 1))
            .await
            .unwrap(),
        Completion::AlreadyDone
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(later));
    assert_eq!(queue.stats().await.unwrap().completed, 1);
}

/// A large result is stored whole, ends the job and counts once, as a small one does.
pub async fn large_result_round_trips<Q: Queue>(queue: &Q) {
    let sent = job(16);
    enqueue_one(queue, &sent).await;
    let claimed = claim_one(queue, "c1", LONG).await;
    let result = large_success(&sent, 1, b'L');
    assert_eq!(
        queue.complete(&claimed.lease, &result).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(result));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.completed), (0, 0, 1));
}

/// Two holders of one job (after a takeover) both finish with large results: the
/// first stored is kept, the other is a duplicate, and the job counts once.
pub async fn large_duplicate_completion_keeps_first_result<Q: Queue>(queue: &Q) {
    let sent = job(17);
    enqueue_one(queue, &sent).await;
    let first = claim_one(queue, "c1", SHORT).await;
    let second = claim_one(queue, "c2", SHORT).await;
    assert_eq!(second.lease.deliveries, 2);
    let later = large_success(&sent, 2, b'2');
    assert_eq!(
        queue.complete(&second.lease, &later).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(
        queue
            .complete(&first.lease, large_success(&sent, 1, b'1'))
            .await
            .unwrap(),
        Completion::AlreadyDone
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(later));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.completed, stats.leased, stats.ready), (1, 0, 0));
}

/// Checks that expired lease is redelivered with higher count.
pub async fn expired_lease_is_redelivered_with_higher_count<Q: Queue>(queue: &Q) {
    let sent = job(4);
    enqueue_one(queue, &sent).await;
    let first = queue.claim("dies", 1, SHORT, PATIENT).await.unwrap();
    assert_eq!(first.len(), 1);
    // Blocks until the lease runs out, then takes the job over.
    let again = queue.claim("c2", 1, SHORT, PATIENT).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.job_id, Some(sent.id));
    assert_eq!(again[0].lease.deliveries, 2);
    assert_eq!(again[0].attempt(), 2);
}

/// Checks that extended lease is not taken over.
pub async fn extended_lease_is_not_taken_over<Q: Queue>(queue: &Q) {
    let sent = job(5);
    enqueue_one(queue, &sent).await;
    let held = claim_one(queue, "c1", SHORT).await;
    // Renewed more often than it expires, for three lease lengths in all: never taken.
    for _ in 0..6 {
        queue.extend_lease(&held.lease, SHORT).await.unwrap();
        let stolen = queue.claim("c2", 1, SHORT, SHORT / 2).await.unwrap();
        assert!(stolen.is_empty(), "a renewed lease was taken over");
    }
    queue.extend_lease(&held.lease, SHORT).await.unwrap();
}

/// Checks that lost lease cannot be extended.
pub async fn lost_lease_cannot_be_extended<Q: Queue>(queue: &Q) {
    let sent = job(6);
    enqueue_one(queue, &sent).await;
    let lost = claim_one(queue, "c1", SHORT).await;
    let taken = queue.claim("c2", 1, SHORT, PATIENT).await.unwrap();
    assert_eq!(taken.len(), 1);
    let err = queue.extend_lease(&lost.lease, LONG).await.unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
}

/// Checks that retry waits for its delay.
pub async fn retry_waits_for_its_delay<Q: Queue>(queue: &Q) {
    let sent = job(7);
    enqueue_one(queue, &sent).await;
    let claimed = claim_one(queue, "c1", LONG).await;
    let mut next = sent.clone();
    next.attempt = claimed.attempt();
    queue.retry(&claimed.lease, &next, SHORT).await.unwrap();
    let early = queue.claim("c1", 1, LONG, Duration::ZERO).await.unwrap();
    assert!(early.is_empty(), "a delayed retry was delivered at once");
    assert_eq!(queue.stats().await.unwrap().delayed, 1);
    let due = queue.claim("c1", 1, LONG, PATIENT).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery.as_ref().unwrap().id, sent.id);
    assert_eq!(due[0].attempt(), 2);
}

/// Checks that dead letter keeps reason.
pub async fn dead_letter_keeps_reason<Q: Queue>(queue: &Q) {
    let sent = job(8);
    enqueue_one(queue, &sent).await;
    let claimed = claim_one(queue, "c1", LONG).await;
    let result = JobResult::without_run(
        sent.id,
        Outcome::InvalidModule {
            reason: "not wasm".into(),
        },
        1,
    );
    queue
        .dead_letter(&claimed.lease, result.clone())
        .await
        .unwrap();
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(result));
    let dead = queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job_id, Some(sent.id));
    assert_eq!(dead[0].kind, OutcomeKind::InvalidModule);
    assert!(dead[0].reason.contains("not wasm"));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 1));
}

/// Checks that garbage is delivered as decode error.
pub async fn garbage_is_delivered_as_decode_error<Q: Queue>(queue: &Q) {
    queue.enqueue_raw(b"garbage".to_vec()).await.unwrap();
    let mut future = codec::encode(&job(9));
    future[0] = 200;
    queue.enqueue_raw(future).await.unwrap();
    queue.enqueue(&[job(10)]).await.unwrap();
    let claimed = queue.claim("c1", 10, LONG, PATIENT).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed[0].delivery.is_err());
    assert_eq!(
        claimed[1].delivery.as_ref().unwrap_err(),
        &DecodeError::UnknownVersion { found: 200 }
    );
    assert!(
        claimed[2].delivery.is_ok(),
        "good job behind garbage was lost"
    );
}

/// Checks that released job is claimable at once.
pub async fn released_job_is_claimable_at_once<Q: Queue>(queue: &Q) {
    let sent = job(11);
    enqueue_one(queue, &sent).await;
    let claimed = claim_one(queue, "c1", LONG).await;
    queue
        .release(
            &claimed.lease,
            claimed.delivery.as_ref().ok(),
            ReleaseKind::Drain,
        )
        .await
        .unwrap();
    let again = queue.claim("c2", 1, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.job_id, Some(sent.id));
    assert_eq!(again[0].attempt(), 1, "a drain release counted an attempt");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased), (0, 1));
}

/// A drained job keeps the attempts it had, takeovers included: a release never
/// restarts the count (which let a job that wedges workers run without end).
pub async fn drain_release_keeps_earlier_attempts<Q: Queue>(queue: &Q) {
    let sent = job(13);
    enqueue_one(queue, &sent).await;
    let _dies = queue.claim("dies", 1, SHORT, PATIENT).await.unwrap();
    // Blocks until the first lease runs out, then takes the job over (a claimer takes
    // over entries idle for longer than its own lease).
    let taken = claim_one(queue, "c2", SHORT).await;
    assert_eq!(taken.attempt(), 2);
    queue
        .release(
            &taken.lease,
            taken.delivery.as_ref().ok(),
            ReleaseKind::Drain,
        )
        .await
        .unwrap();
    let again = claim_one(queue, "c3", LONG).await;
    assert_eq!(again.lease.job_id, Some(sent.id));
    assert_eq!(again.attempt(), 2, "the takeover's attempt was forgotten");
}

/// Releasing an overdue run counts it, each time, so a job that outlives its deadline
/// on every worker reaches its attempt limit.
pub async fn overdue_release_counts_an_attempt<Q: Queue>(queue: &Q) {
    let sent = job(14);
    enqueue_one(queue, &sent).await;
    let mut attempts = Vec::new();
    for kind in [
        ReleaseKind::Overdue,
        ReleaseKind::Overdue,
        ReleaseKind::Drain,
    ] {
        let claimed = claim_one(queue, "c1", LONG).await;
        assert_eq!(claimed.lease.job_id, Some(sent.id));
        attempts.push(claimed.attempt());
        queue
            .release(&claimed.lease, claimed.delivery.as_ref().ok(), kind)
            .await
            .unwrap();
    }
    let last = claim_one(queue, "c1", LONG).await;
    attempts.push(last.attempt());
    assert_eq!(attempts, [1, 2, 3, 3]);
    assert_eq!(
        last.delivery.as_ref().unwrap().input,
        sent.input,
        "the released envelope changed"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.delayed), (0, 1, 0));
}

/// A release by a holder that lost its lease changes nothing.
pub async fn release_of_a_lost_lease_is_refused<Q: Queue>(queue: &Q) {
    let sent = job(15);
    enqueue_one(queue, &sent).await;
    let lost = claim_one(queue, "c1", SHORT).await;
    let taken = claim_one(queue, "c2", SHORT).await;
    let err = queue
        .release(
            &lost.lease,
            lost.delivery.as_ref().ok(),
            ReleaseKind::Overdue,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased), (0, 1));
    queue.extend_lease(&taken.lease, LONG).await.unwrap();
}

/// Checks that waiting claim wakes on enqueue.
pub async fn waiting_claim_wakes_on_enqueue<Q: Queue>(queue: &Q) {
    let sent = job(12);
    let (claimed, ()) = tokio::join!(queue.claim("c1", 1, LONG, PATIENT), async {
        tokio::task::yield_now().await;
        enqueue_one(queue, &sent).await;
    });
    let claimed = claimed.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease.job_id, Some(sent.id));
}

/// The ownership rules of a queue whose completions race with takeovers: a stale
/// holder's success ends a job that is still pending (to anyone) and is refused once
/// the job moved on; only the current holder retries or dead-letters; a job is never
/// both finished and queued again, nor both completed and dead. Run with
/// [`queue_ownership_conformance!`](crate::queue_ownership_conformance) like [`queue_conformance!`](crate::queue_conformance).
#[macro_export]
macro_rules! queue_ownership_conformance {
    ($make:expr) => {
        $crate::queue_conformance!(@each $make;
            stale_success_after_the_job_was_retried_is_refused,
            stale_success_while_another_holder_runs_ends_the_job,
            stale_holder_cannot_dead_letter_or_retry,
        );
    };
}

/// Claims the job as `first`, lets the lease lapse, and has `second` take it over.
async fn taken_over<Q: Queue>(queue: &Q, sent: &Job) -> (Claimed, Claimed) {
    enqueue_one(queue, sent).await;
    let first = claim_one(queue, "stalls", SHORT).await;
    let second = claim_one(queue, "takes-over", SHORT).await;
    assert_eq!(second.lease.job_id, Some(sent.id));
    assert_eq!(second.lease.deliveries, 2);
    (first, second)
}

/// Checks that stale success after the job was retried is refused.
pub async fn stale_success_after_the_job_was_retried_is_refused<Q: Queue>(queue: &Q) {
    let sent = job(20);
    let (stale, holder) = taken_over(queue, &sent).await;
    // The new holder's run fails retryably: the job waits in the delayed set.
    let mut next = sent.clone();
    next.attempt = holder.attempt();
    queue
        .retry(&holder.lease, &next, Duration::ZERO)
        .await
        .unwrap();
    // The stalled holder now succeeds: the job has moved on, so its result is refused
    // (storing it would finish a job that runs again).
    let err = queue
        .complete(&stale.lease, success(&sent, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
    assert_eq!(queue.result(sent.id).await.unwrap(), None);
    // The retry runs and its success is the one result.
    let again = claim_one(queue, "third", LONG).await;
    assert_eq!(again.lease.job_id, Some(sent.id));
    let last = success(&sent, again.attempt());
    assert_eq!(
        queue.complete(&again.lease, last.clone()).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(last));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.completed, stats.dead, stats.delayed), (1, 0, 0));
}

/// Checks that stale success while another holder runs ends the job.
pub async fn stale_success_while_another_holder_runs_ends_the_job<Q: Queue>(queue: &Q) {
    let sent = job(21);
    let (stale, holder) = taken_over(queue, &sent).await;
    // Still pending (to the new holder): the job is not final, and the stalled run's
    // success is as good as any.
    let first = success(&sent, 1);
    assert_eq!(
        queue.complete(&stale.lease, first.clone()).await.unwrap(),
        Completion::Recorded
    );
    // The new holder finds the job finished whatever its run ends as.
    let mut next = sent.clone();
    next.attempt = holder.attempt();
    assert!(matches!(
        queue.retry(&holder.lease, &next, Duration::ZERO).await,
        Err(QueueError::LeaseLost { .. })
    ));
    let failure = JobResult::without_run(sent.id, Outcome::InvalidModule { reason: "x".into() }, 2);
    assert!(matches!(
        queue.dead_letter(&holder.lease, failure).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert_eq!(
        queue
            .complete(&holder.lease, success(&sent, 2))
            .await
            .unwrap(),
        Completion::AlreadyDone
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(first));
    assert!(queue.dead_letters().await.unwrap().is_empty());
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (
            stats.completed,
            stats.dead,
            stats.delayed,
            stats.ready,
            stats.leased
        ),
        (1, 0, 0, 0, 0)
    );
}

/// Checks that stale holder cannot dead letter or retry.
pub async fn stale_holder_cannot_dead_letter_or_retry<Q: Queue>(queue: &Q) {
    let sent = job(22);
    let (stale, holder) = taken_over(queue, &sent).await;
    let failure = JobResult::without_run(sent.id, Outcome::InvalidModule { reason: "x".into() }, 1);
    assert!(matches!(
        queue.dead_letter(&stale.lease, failure).await,
        Err(QueueError::LeaseLost { .. })
    ));
    let mut next = sent.clone();
    next.attempt = 1;
    assert!(matches!(
        queue.retry(&stale.lease, &next, Duration::ZERO).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(queue.dead_letters().await.unwrap().is_empty());
    // The current holder still decides.
    let last = success(&sent, 2);
    assert_eq!(
        queue.complete(&holder.lease, last.clone()).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(last));
}
