//! Cancelling a whole batch (`results().cancel_batch`, `cancel_batch.lua`) against a real
//! redis-server: queued jobs go, wherever they wait; running and finished ones are
//! counted, not touched; one corrupt record does not keep the rest running.

use std::time::Duration;

use sluice_shared::queue::redis::{BatchCancelled, RedisQueue, ResultsError};
use sluice_shared::{Job, JobInput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::{RedisServer, fresh_queue};

const LONG: Duration = Duration::from_secs(60);

/// How long a claim that expects nothing waits after a promotion: three maintenance
/// intervals (the default 100 ms), so a promotion happens after the retried job is due.
const PROMOTED: Duration = Duration::from_millis(300);

async fn fresh() -> (RedisServer, RedisQueue) {
    fresh_queue(|_| {}).await
}

fn job(n: u8) -> Job {
    Job::new(ModuleHash::of(b"cancel"), JobInput::Inline(vec![n]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancel_removes_queued_jobs_and_counts_running_and_finished_ones() {
    let (_server, queue) = fresh().await;
    let jobs: Vec<Job> = (0..6).map(job).collect();
    let batch = sluice_tests::fleet::api_batch(&queue, "acme", &jobs).await;
    // Four admitted onto the shared stream, two left in the tenant's backlog; of the
    // admitted, one finishes, one is running, two wait unclaimed.
    assert_eq!(sluice_tests::fleet::admit(&queue, "acme", 4).await, 4);
    let claimed = queue.claim("c1", 2, LONG, LONG).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let first = claimed[0].lease.job_id.unwrap();
    queue
        .complete(
            &claimed[0].lease,
            JobResult::without_run(first, Outcome::Success, 1),
        )
        .await
        .unwrap();

    let done = queue.results().cancel_batch(&batch).await.unwrap();
    assert_eq!(
        done,
        BatchCancelled {
            cancelled: 4,
            running: 1,
            finished: 1,
            corrupt: 0
        }
    );
    assert_eq!(done.total(), 6);
    // Nothing is left to claim, and the backlog is empty.
    assert!(
        queue
            .claim("c2", 10, LONG, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(queue.admission().backlog_len("acme").await.unwrap(), 0);
    // Cancelling again finds nothing more to cancel.
    let again = queue.results().cancel_batch(&batch).await.unwrap();
    assert_eq!((again.cancelled, again.running, again.finished), (0, 1, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_corrupt_record_is_skipped_and_the_rest_of_the_batch_is_cancelled() {
    let (server, queue) = fresh().await;
    let jobs: Vec<Job> = (0..3).map(job).collect();
    let batch = sluice_tests::fleet::api_batch(&queue, "acme", &jobs).await;
    let record = queue.keys().job_record(jobs[1].id);
    server.cli(&["DEL", &record]);
    server.cli(&["SET", &record, "junk"]);
    let done = queue.results().cancel_batch(&batch).await.unwrap();
    assert_eq!((done.cancelled, done.corrupt), (2, 1), "{done:?}");
    assert_eq!(queue.admission().backlog_len("acme").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_batch_or_a_non_batch_id_is_a_typed_error() {
    let (_server, queue) = fresh().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [unknown.as_str(), "x:jobs", &"y".repeat(5_000)] {
        let err = queue.results().cancel_batch(id).await.unwrap_err();
        assert!(matches!(err, ResultsError::UnknownBatch { .. }), "{err}");
        assert!(err.to_string().len() < 200, "the id is capped: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_batch_is_recorded_and_cancels_on_the_job_stream() {
    let (_server, queue) = fresh().await;
    let (batch, jobs) = cli_batch(&queue, 4).await;
    let (tenant, ids) = queue.results().batch(&batch).await.unwrap().unwrap();
    assert_eq!(tenant, "local");
    assert_eq!(ids, jobs.iter().map(|j| j.id).collect::<Vec<_>>());
    let claimed = queue.claim("c1", 1, LONG, LONG).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let done = queue.results().cancel_batch(&batch).await.unwrap();
    assert_eq!((done.cancelled, done.running), (3, 1), "{done:?}");
    let recorded = queue.results().batch_jobs(&ids).await.unwrap();
    let labels: Vec<&str> = recorded.iter().map(|j| j.label.as_str()).collect();
    assert_eq!(labels, ["input-0", "input-1", "input-2", "input-3"]);
    assert_eq!(recorded.iter().filter(|j| j.cancelled).count(), 3);
    // The running job finishes and is counted in its batch.
    let id = claimed[0].lease.job_id.unwrap();
    queue
        .complete(
            &claimed[0].lease,
            JobResult::without_run(id, Outcome::Success, 1),
        )
        .await
        .unwrap();
    let counts = queue
        .results()
        .batch_counts(&batch, "local")
        .await
        .unwrap()
        .unwrap();
    // The cancelled count as done (`n:cancelled`): the batch is over.
    assert_eq!((counts.total, counts.done()), (4, 4));
    assert_eq!(counts.by_outcome.get("cancelled"), Some(&3), "{counts:?}");
}

/// A new client of the same queue: its first claim promotes due delayed jobs (a
/// client promotes at most once per maintenance interval, the first time at once).
/// A job retried with no delay is due from the next millisecond on, so a claim that
/// must see it promoted waits through a few maintenance intervals ([`PROMOTED`]).
async fn promoter(server: &RedisServer) -> RedisQueue {
    RedisQueue::connect(sluice_shared::queue::redis::RedisConfig::new(server.url()))
        .await
        .unwrap()
}

fn labelled(n: u8) -> Job {
    let mut job = job(n);
    job.label = format!("input-{n}");
    job
}

/// A command-line batch (`sluice batch --redis`'s records) of `n` labelled jobs, all
/// enqueued: its id and jobs.
async fn cli_batch(queue: &RedisQueue, n: u8) -> (String, Vec<Job>) {
    let jobs: Vec<Job> = (0..n).map(labelled).collect();
    let batch = uuid::Uuid::now_v7().to_string();
    queue
        .results()
        .enqueue_batch(&batch, "local", jobs.len(), &jobs, false)
        .await
        .unwrap();
    (batch, jobs)
}

/// Claims one job and fails its attempt with no delay: it waits in the delayed set, in
/// no stream. Returns its id.
async fn first_attempt_failed(queue: &RedisQueue) -> sluice_shared::JobId {
    let claimed = queue.claim("c1", 1, LONG, LONG).await.unwrap();
    let first = claimed[0].delivery.clone().unwrap();
    queue
        .retry(&claimed[0].lease, &first, Duration::ZERO)
        .await
        .unwrap();
    first.id
}

/// Whether a new client's claim, which promotes due delayed jobs, finds nothing to run.
async fn nothing_runs_after_promotion(server: &RedisServer, consumer: &str) -> bool {
    promoter(server)
        .await
        .claim(consumer, 10, LONG, PROMOTED)
        .await
        .unwrap()
        .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_waiting_to_retry_is_cancelled_and_never_runs() {
    let (server, queue) = fresh().await;
    let (batch, _) = cli_batch(&queue, 2).await;
    first_attempt_failed(&queue).await;
    let done = queue.results().cancel_batch(&batch).await.unwrap();
    assert_eq!(
        (done.cancelled, done.running, done.finished),
        (2, 0, 0),
        "{done:?}"
    );
    // Due now, it is dropped when promoted instead of running.
    assert!(nothing_runs_after_promotion(&server, "c2").await);
    assert_eq!(server.cli(&["ZCARD", &queue.keys().delayed]).trim(), "0");
    let counts = queue
        .results()
        .batch_counts(&batch, "local")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counts.total, counts.done()), (2, 2), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_job_waiting_to_retry_is_cancelled_and_never_runs() {
    let (server, queue) = fresh().await;
    let jobs: Vec<Job> = (0..1).map(job).collect();
    let batch = sluice_tests::fleet::api_batch(&queue, "acme", &jobs).await;
    assert_eq!(sluice_tests::fleet::admit(&queue, "acme", 1).await, 1);
    let first = first_attempt_failed(&queue).await;
    assert_eq!(
        queue.results().cancel(first).await.unwrap(),
        sluice_shared::queue::redis::Cancelled::Yes
    );
    assert!(nothing_runs_after_promotion(&server, "c2").await);
    // Not put back into its tenant's backlog either.
    assert_eq!(queue.admission().backlog_len("acme").await.unwrap(), 0);
    // Cancelled alone, it is counted in its batch, which is then over.
    let counts = queue
        .results()
        .batch_counts(&batch, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.by_outcome.get("cancelled"), Some(&1), "{counts:?}");
    assert_eq!((counts.total, counts.done()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_command_line_job_is_cancelled_where_it_now_is() {
    let (server, queue) = fresh().await;
    let (batch, jobs) = cli_batch(&queue, 2).await;
    first_attempt_failed(&queue).await;
    // This claim promotes the first job (a fresh entry at the stream's end) and takes
    // the second.
    let second = promoter(&server)
        .await
        .claim("c2", 1, LONG, LONG)
        .await
        .unwrap();
    assert_eq!(second[0].lease.job_id, Some(jobs[1].id));
    let done = queue.results().cancel_batch(&batch).await.unwrap();
    assert_eq!((done.cancelled, done.running), (1, 1), "{done:?}");
    assert!(
        nothing_runs_after_promotion(&server, "c3").await,
        "the promoted entry was not deleted: its record named the old one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_refuses_later_chunks() {
    let (_server, queue) = fresh().await;
    let jobs: Vec<Job> = (0..4).map(labelled).collect();
    let batch = uuid::Uuid::now_v7().to_string();
    queue
        .results()
        .enqueue_batch(&batch, "local", jobs.len(), &jobs[..2], false)
        .await
        .unwrap();
    let done = queue.results().cancel_batch(&batch).await.unwrap();
    assert_eq!(done.cancelled, 2);
    // The submitter's next chunk, and a resubmit of the cancelled, are refused.
    for (chunk, again) in [(&jobs[2..], false), (&jobs[..2], true)] {
        let err = queue
            .results()
            .enqueue_batch(&batch, "local", jobs.len(), chunk, again)
            .await
            .unwrap_err();
        assert!(matches!(err, ResultsError::BatchCancelled { .. }), "{err}");
    }
    assert!(
        queue
            .claim("c1", 10, LONG, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    let (_, ids) = queue.results().batch(&batch).await.unwrap().unwrap();
    assert_eq!(ids.len(), 2, "the refused chunk is not listed");
}
