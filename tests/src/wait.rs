//! Bounded waits for results: polling a reading until it says done, and following a
//! Redis queue's completion notices until given jobs have finished. Every wait fails
//! the test, naming what it waited for, once its bound has passed.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobId, JobResult, OutcomeKind, Queue};

/// Follows `queue`'s completion notices from `cursor` until at least `n` jobs (any)
/// have finished: the event that says a batch is under way or done. Fails once
/// `within` has passed, saying how many arrived.
pub async fn await_notices(queue: &RedisQueue, mut cursor: String, n: usize, within: Duration) {
    let give_up = Instant::now() + within;
    let mut seen = 0;
    while seen < n {
        assert!(
            Instant::now() < give_up,
            "only {seen} of {n} completion notices arrived within {within:?}"
        );
        let (next, notices) = queue
            .results()
            .completions(&cursor, Duration::from_secs(5))
            .await
            .unwrap();
        cursor = next;
        seen += notices.len();
    }
}

/// How long [`poll`] sleeps between readings.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Takes a reading with `read` every 20 ms until `done` accepts one, and returns it;
/// fails naming `what` and the last reading once `within` has passed. For interfaces
/// that offer no push (the HTTP API's job and batch status).
pub fn poll<T: Display>(
    what: &str,
    within: Duration,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let reading = read();
        if done(&reading) {
            return reading;
        }
        assert!(Instant::now() < deadline, "{what}: {reading}");
        std::thread::sleep(POLL_EVERY);
    }
}

/// Follows completion notices from cursor `from` until every id in `ids` has
/// finished, and returns their outcome kinds; fails once `within` has passed. A
/// failing read (Redis briefly away) is retried, so tests that restart Redis can wait
/// through it.
pub async fn await_finished(
    queue: &RedisQueue,
    mut from: String,
    ids: &HashSet<JobId>,
    within: Duration,
) -> HashMap<JobId, OutcomeKind> {
    let mut finished = HashMap::new();
    let deadline = Instant::now() + within;
    while finished.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} finished",
            finished.len(),
            ids.len()
        );
        match queue
            .results()
            .completions(&from, Duration::from_millis(500))
            .await
        {
            Ok((next, notices)) => {
                from = next;
                for (id, kind) in notices {
                    if ids.contains(&id) {
                        finished.insert(id, kind);
                    }
                }
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
    finished
}

/// The stored result of each job in `ids`, asserting every one has a result.
pub async fn results<'a>(
    queue: &RedisQueue,
    ids: impl IntoIterator<Item = &'a JobId>,
) -> Vec<JobResult> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            queue
                .result(*id)
                .await
                .unwrap()
                .expect("a result for every job"),
        );
    }
    out
}

/// Enqueues `jobs`, waits (at most `within`) until every one has finished, and
/// returns their outcome kinds.
pub async fn enqueue_and_await(
    queue: &RedisQueue,
    jobs: &[Job],
    within: Duration,
) -> HashMap<JobId, OutcomeKind> {
    let ids: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    let from = queue.results().notices_from_now().await.unwrap();
    queue.enqueue(jobs).await.unwrap();
    await_finished(queue, from, &ids, within).await
}
