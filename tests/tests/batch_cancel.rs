//! Cancelling a whole batch (`results().cancel_batch`, `cancel_batch.lua`) against a real
//! redis-server: queued jobs go, wherever they wait; running and finished ones are
//! counted, not touched; one corrupt record does not keep the rest running.

use std::time::Duration;

use sluice_shared::queue::redis::{BatchCancelled, RedisQueue, ResultsError};
use sluice_shared::{Job, JobInput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::{RedisServer, fresh_queue};

const LONG: Duration = Duration::from_secs(60);

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
    let batch = uuid::Uuid::now_v7().to_string();
    queue
        .admission()
        .enqueue_owned(&jobs, "acme", Some(&batch))
        .await
        .unwrap();
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
    let batch = uuid::Uuid::now_v7().to_string();
    queue
        .admission()
        .enqueue_owned(&jobs, "acme", Some(&batch))
        .await
        .unwrap();
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
