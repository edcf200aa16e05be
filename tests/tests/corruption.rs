//! Corrupt or foreign Redis contents, key by key of the queue's schema, while jobs run
//! through the `RedisQueue` API: an operation that touches the damaged key fails with
//! an error naming it and changes nothing; everything that does not touch it keeps
//! working; and once the key is repaired (deleted), every job still finishes: none was
//! lost.

use std::time::{Duration, Instant};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::queue::{Claimed, Completion, QueueError};
use sluice_shared::{Job, JobId, JobInput, JobResult, ModuleHash, Outcome, Queue, TenantPolicy};
use sluice_tests::{RedisServer, fresh_queue};

const LONG: Duration = Duration::from_secs(600);
const WAIT: Duration = Duration::from_secs(10);
const Q: &str = "corrupt";

fn key(suffix: &str) -> String {
    format!("sluice:{{{Q}}}:{suffix}")
}

async fn fresh() -> (RedisServer, RedisQueue) {
    fresh_queue(|config| {
        config.queue = Q.into();
        config.maintenance_interval = Duration::from_millis(1);
    })
    .await
}

fn job(n: u8) -> Job {
    Job::new(ModuleHash::of(b"corrupt"), JobInput::Inline(vec![n]))
}

fn success(id: JobId) -> JobResult {
    JobResult::without_run(id, Outcome::Success, 1)
}

fn failure(id: JobId) -> JobResult {
    JobResult::without_run(
        id,
        Outcome::InvalidModule {
            reason: "corrupt test".into(),
        },
        1,
    )
}

/// The error names `key` (and is not a lost lease, which would hide the damage). Role
/// errors are checked as the [`QueueError`] they become.
fn names<T: std::fmt::Debug, E: Into<QueueError>>(reply: Result<T, E>, key: &str) {
    match reply.map_err(Into::into) {
        Err(QueueError::LeaseLost { .. }) => panic!("a lost lease instead of naming {key}"),
        Err(e) => assert!(e.to_string().contains(key), "{e} does not name {key}"),
        Ok(v) => panic!("{v:?}: expected an error naming {key}"),
    }
}

/// Enqueues `n` jobs and claims them all for `c1`.
async fn running(queue: &RedisQueue, n: u8) -> (Vec<Job>, Vec<Claimed>) {
    let jobs: Vec<Job> = (0..n).map(job).collect();
    queue.enqueue(&jobs).await.unwrap();
    let mut claimed = Vec::new();
    while claimed.len() < n as usize {
        let got = queue.claim("c1", n as usize, LONG, WAIT).await.unwrap();
        assert!(!got.is_empty(), "enqueued jobs were not claimed");
        claimed.extend(got);
    }
    (jobs, claimed)
}

/// Runs every job still anywhere to an end (taking over whatever is held) and checks
/// each of `jobs` has a result: nothing was lost.
async fn all_finish(queue: &RedisQueue, jobs: &[Job]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut missing = Vec::new();
        for job in jobs {
            if queue.result(job.id).await.unwrap().is_none() {
                missing.push(job.id);
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "jobs lost: {missing:?}");
        let got = queue
            .claim(
                "drain",
                100,
                Duration::from_millis(1),
                Duration::from_millis(50),
            )
            .await
            .unwrap();
        for c in got {
            let id = c.lease.job_id.unwrap();
            queue.complete(&c.lease, success(id)).await.unwrap();
        }
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.delayed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_delayed_set_stops_retries_not_claims_or_completions() {
    let (server, queue) = fresh().await;
    let (jobs, claimed) = running(&queue, 3).await;
    let delayed = key("delayed");
    server.cli(&["SET", &delayed, "not a zset"]);
    // The retry is refused before anything moves: the job is still held.
    let mut next = jobs[0].clone();
    next.attempt = 1;
    names(
        queue.retry(&claimed[0].lease, &next, Duration::ZERO).await,
        &delayed,
    );
    assert_eq!(queue.stats().await.unwrap().leased, 3);
    // New jobs are still claimed (the failing promotion is skipped), others complete.
    let late = job(9);
    queue.enqueue(std::slice::from_ref(&late)).await.unwrap();
    let got = queue.claim("c2", 5, LONG, WAIT).await.unwrap();
    assert_eq!(got.len(), 1, "a corrupt delayed set stopped claims");
    queue
        .complete(&got[0].lease, success(late.id))
        .await
        .unwrap();
    queue
        .complete(&claimed[1].lease, success(jobs[1].id))
        .await
        .unwrap();
    server.cli(&["DEL", &delayed]);
    queue
        .retry(&claimed[0].lease, &next, Duration::ZERO)
        .await
        .unwrap();
    all_finish(&queue, &jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_dead_letter_stream_stops_dead_letters_only() {
    let (server, queue) = fresh().await;
    let (jobs, claimed) = running(&queue, 2).await;
    let dead = key("dead");
    server.cli(&["SET", &dead, "x"]);
    names(
        queue
            .dead_letter(&claimed[0].lease, failure(jobs[0].id))
            .await,
        &dead,
    );
    names(queue.dead_letters().await, &dead);
    names(queue.admin().dlq_retry(None).await, &dead);
    // Nothing moved: the job is still held and has no result.
    assert_eq!(queue.result(jobs[0].id).await.unwrap(), None);
    assert_eq!(queue.stats().await.unwrap().leased, 2);
    queue
        .complete(&claimed[1].lease, success(jobs[1].id))
        .await
        .unwrap();
    server.cli(&["DEL", &dead]);
    queue
        .dead_letter(&claimed[0].lease, failure(jobs[0].id))
        .await
        .unwrap();
    assert_eq!(queue.dead_letters().await.unwrap().len(), 1);
    all_finish(&queue, &jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_stats_hash_is_named_and_loses_nothing() {
    let (server, queue) = fresh().await;
    let (jobs, claimed) = running(&queue, 3).await;
    let stats = key("stats");
    // A field that is not a number stops only what counts into it.
    server.cli(&["HSET", &stats, "completed", "many"]);
    names(
        queue.complete(&claimed[0].lease, success(jobs[0].id)).await,
        &stats,
    );
    let mut next = jobs[1].clone();
    next.attempt = 1;
    queue
        .retry(&claimed[1].lease, &next, Duration::ZERO)
        .await
        .unwrap();
    // Depths stay readable for claimers and the dispatcher.
    let depths = queue.stats().await.unwrap();
    assert_eq!(depths.leased, 2);
    // The whole hash replaced by a string stops every move, and moves nothing.
    server.cli(&["DEL", &stats]);
    server.cli(&["SET", &stats, "x"]);
    names(
        queue.complete(&claimed[0].lease, success(jobs[0].id)).await,
        &stats,
    );
    names(
        queue
            .dead_letter(&claimed[2].lease, failure(jobs[2].id))
            .await,
        &stats,
    );
    assert_eq!(queue.result(jobs[0].id).await.unwrap(), None);
    assert_eq!(queue.stats().await.unwrap().leased, 2);
    server.cli(&["DEL", &stats]);
    assert_eq!(
        queue
            .complete(&claimed[0].lease, success(jobs[0].id))
            .await
            .unwrap(),
        Completion::Recorded
    );
    all_finish(&queue, &jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_notice_stream_costs_notices_not_completions() {
    let (server, queue) = fresh().await;
    let (jobs, claimed) = running(&queue, 2).await;
    let done = key("done");
    server.cli(&["SET", &done, "x"]);
    // Results are the truth and notices only wake followers early: the job completes,
    // and a follower reading notices is told which key is wrong.
    assert_eq!(
        queue
            .complete(&claimed[0].lease, success(jobs[0].id))
            .await
            .unwrap(),
        Completion::Recorded
    );
    assert!(queue.result(jobs[0].id).await.unwrap().is_some());
    names(
        queue
            .results()
            .completions("0", Duration::from_millis(1))
            .await,
        &done,
    );
    // The foreign value is left alone (it may be another application's).
    assert_eq!(server.cli(&["GET", &done]).trim(), "x");
    // Retries do not write notices.
    let mut next = jobs[1].clone();
    next.attempt = 1;
    queue
        .retry(&claimed[1].lease, &next, Duration::ZERO)
        .await
        .unwrap();
    server.cli(&["DEL", &done]);
    all_finish(&queue, &jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_result_key_fails_its_job_alone() {
    let (server, queue) = fresh().await;
    let queue = std::sync::Arc::new(queue);
    let (jobs, claimed) = running(&queue, 4).await;
    let bad = queue.keys().result_key(jobs[0].id);
    server.cli(&["HSET", &bad, "not", "a result"]);
    // Completed together (one flusher batch, most likely): only the damaged one fails.
    let mut calls = tokio::task::JoinSet::new();
    for (job, c) in jobs.iter().zip(&claimed) {
        let (queue, lease, id) = (queue.clone(), c.lease.clone(), job.id);
        calls.spawn(async move { (id, queue.complete(&lease, success(id)).await) });
    }
    while let Some(done) = calls.join_next().await {
        let (id, reply) = done.unwrap();
        if id == jobs[0].id {
            names(reply, &bad);
        } else {
            assert_eq!(reply.unwrap(), Completion::Recorded);
        }
    }
    names(queue.result(jobs[0].id).await, &bad);
    // A garbage string where a result should be reads as an error naming the key.
    let garbage = queue.keys().result_key(jobs[1].id);
    server.cli(&["SET", &garbage, "garbage"]);
    names(queue.result(jobs[1].id).await, &garbage);
    server.cli(&["DEL", &bad]);
    server.cli(&["DEL", &garbage]);
    // The damaged job was left where it was: its holder completes it now.
    assert_eq!(
        queue
            .complete(&claimed[0].lease, success(jobs[0].id))
            .await
            .unwrap(),
        Completion::Recorded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_job_stream_is_named_and_other_stores_keep_working() {
    let (server, queue) = fresh().await;
    let hash = queue.modules().put(b"\0asm\x01\0\0\0", None).await.unwrap();
    let jobs_key = key("jobs");
    server.cli(&["DEL", &jobs_key]);
    server.cli(&["SET", &jobs_key, "x"]);
    names(queue.claim("c1", 1, LONG, Duration::ZERO).await, &jobs_key);
    names(queue.enqueue(&[job(1)]).await, &jobs_key);
    assert!(queue.modules().get(&hash).await.unwrap().is_some());
    let mut writer = queue.blobs().writer();
    writer.write(b"still works").await.unwrap();
    let (id, _) = writer.finish().await.unwrap();
    let mut reader = queue.blobs().reader(&id);
    assert_eq!(reader.next_chunk().await.unwrap().unwrap(), b"still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_keys_are_named_when_read() {
    let (server, queue) = fresh().await;
    let mut writer = queue.blobs().writer();
    writer.write(b"input").await.unwrap();
    let (id, _) = writer.finish().await.unwrap();
    let meta = key(&format!("blob:{id}"));
    let chunk = key(&format!("blob:{id}:0"));
    server.cli(&["HSET", &meta, "chunks", "many"]);
    names(queue.blobs().reader(&id).next_chunk().await, &meta);
    server.cli(&["HSET", &meta, "chunks", "1"]);
    server.cli(&["DEL", &chunk]);
    server.cli(&["HSET", &chunk, "x", "y"]);
    names(queue.blobs().reader(&id).next_chunk().await, &chunk);
    server.cli(&["DEL", &meta]);
    server.cli(&["SET", &meta, "x"]);
    names(queue.blobs().reader(&id).next_chunk().await, &meta);
    // Other blobs are unaffected.
    let mut writer = queue.blobs().writer();
    writer.write(b"other").await.unwrap();
    let (other, _) = writer.finish().await.unwrap();
    assert_eq!(
        queue
            .blobs()
            .reader(&other)
            .next_chunk()
            .await
            .unwrap()
            .unwrap(),
        b"other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_module_is_named_and_repaired_by_an_upload() {
    let (server, queue) = fresh().await;
    let wasm = b"\0asm\x01\0\0\0";
    let hash = ModuleHash::of(wasm);
    let module = key(&format!("module:{hash}"));
    server.cli(&["SET", &module, "not the module"]);
    names(queue.modules().get(&hash).await, &module);
    queue.modules().put(wasm, Some("m")).await.unwrap();
    assert_eq!(queue.modules().get(&hash).await.unwrap().unwrap(), wasm);
    server.cli(&["DEL", &module]);
    server.cli(&["HSET", &module, "a", "b"]);
    names(queue.modules().get(&hash).await, &module);
    let alias = key("alias:m");
    server.cli(&["DEL", &alias]);
    server.cli(&["HSET", &alias, "a", "b"]);
    names(queue.modules().resolve("m").await, &alias);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_job_record_and_batch_fail_their_jobs_alone() {
    let (server, queue) = fresh().await;
    let jobs: Vec<Job> = (0..3).map(job).collect();
    let batch = sluice_tests::fleet::api_batch(&queue, "acme", &jobs).await;
    assert_eq!(sluice_tests::fleet::admit(&queue, "acme", 10).await, 3);
    let claimed = queue.claim("c1", 3, LONG, WAIT).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let lease_of = |id: JobId| {
        claimed
            .iter()
            .find(|c| c.lease.job_id == Some(id))
            .unwrap()
            .lease
            .clone()
    };
    let record = key(&format!("job:{}", jobs[0].id));
    server.cli(&["DEL", &record]);
    server.cli(&["SET", &record, "x"]);
    names(
        queue
            .complete(&lease_of(jobs[0].id), success(jobs[0].id))
            .await,
        &record,
    );
    names(queue.results().cancel(jobs[0].id).await, &record);
    names(queue.results().job_record(jobs[0].id).await, &record);
    queue
        .complete(&lease_of(jobs[1].id), success(jobs[1].id))
        .await
        .unwrap();
    let batch_key = key(&format!("batch:{batch}"));
    server.cli(&["HSET", &batch_key, "n:success", "lots"]);
    names(
        queue
            .complete(&lease_of(jobs[2].id), success(jobs[2].id))
            .await,
        &batch_key,
    );
    // The status reads what it can: a counter that is not a number counts 0.
    let counts = queue
        .results()
        .batch_counts(&batch, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.total, 3);
    server.cli(&["HSET", &batch_key, "n:success", "1"]);
    server.cli(&["DEL", &record]);
    for id in [jobs[0].id, jobs[2].id] {
        assert_eq!(
            queue.complete(&lease_of(id), success(id)).await.unwrap(),
            Completion::Recorded
        );
    }
    let counts = queue
        .results()
        .batch_counts(&batch, "acme")
        .await
        .unwrap()
        .unwrap();
    // Job 0's record went with the damage, so its batch cannot count it; 1 and 2 count.
    assert_eq!(counts.by_outcome.get("success"), Some(&2));
    all_finish(&queue, &jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_tenant_keys_are_named_and_tokens_stay_revocable() {
    let (server, queue) = fresh().await;
    let policies = "sluice:{tenants}:policies";
    let tokens = "sluice:{tenants}:tokens";
    let acme_tokens = "sluice:{tenants}:tokens:acme";
    let token = queue
        .tenants()
        .create("acme", &TenantPolicy::default())
        .await
        .unwrap()
        .unwrap();
    queue
        .tenants()
        .create("other", &TenantPolicy::default())
        .await
        .unwrap()
        .unwrap();
    // One tenant's bad policy is that tenant's error, named; the others read fine.
    server.cli(&["HSET", policies, "other", "{not json"]);
    names(queue.tenants().policy("other").await, policies);
    assert!(queue.tenants().policy("acme").await.unwrap().is_some());
    // A foreign tenant token set: issuing fails before the token becomes valid, so no
    // valid token is ever missing from the set revocation reads.
    server.cli(&["DEL", acme_tokens]);
    server.cli(&["SET", acme_tokens, "x"]);
    names(queue.tenants().issue_token("acme").await, acme_tokens);
    names(queue.tenants().revoke_tokens("acme").await, acme_tokens);
    assert_eq!(
        queue.tenants().for_token(&token).await.unwrap().as_deref(),
        Some("acme")
    );
    server.cli(&["DEL", acme_tokens]);
    let second = queue.tenants().issue_token("acme").await.unwrap();
    assert_eq!(queue.tenants().revoke_tokens("acme").await.unwrap(), 1);
    assert_eq!(queue.tenants().for_token(&second).await.unwrap(), None);
    // The token hash replaced: lookups name it.
    server.cli(&["DEL", tokens]);
    server.cli(&["SET", tokens, "x"]);
    names(queue.tenants().for_token(&token).await, tokens);
    names(queue.tenants().revoke_tokens("acme").await, tokens);
    server.cli(&["DEL", policies]);
    server.cli(&["SET", policies, "x"]);
    names(queue.tenants().policy("acme").await, policies);
    names(queue.tenants().all().await, policies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_delayed_set_is_dead_lettered_not_lost() {
    let (_server, queue) = fresh().await;
    let now = queue.server_time_ms().await.unwrap();
    let good = job(1);
    queue
        .schedule(std::slice::from_ref(&good), now)
        .await
        .unwrap();
    let mut raw = redis::cmd("ZADD");
    raw.arg(&queue.keys().delayed).arg(now).arg("garbage");
    raw.query_async::<()>(&mut queue.connection())
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(queue.claim("c1", 5, LONG, WAIT).await.unwrap());
    }
    for c in got {
        match c.delivery {
            Ok(job) => {
                queue.complete(&c.lease, success(job.id)).await.unwrap();
            }
            Err(_) => queue
                .dead_letter(&c.lease, failure(JobId(uuid::Uuid::nil())))
                .await
                .unwrap(),
        }
    }
    assert!(queue.result(good.id).await.unwrap().is_some());
    assert_eq!(queue.dead_letters().await.unwrap().len(), 1);
}
