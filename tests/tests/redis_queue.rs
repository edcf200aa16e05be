//! The Redis queue against a real redis-server: the shared conformance suite, then what
//! only Redis has (blobs, modules, schedules, dead-letter commands, restarts).

use std::time::Duration;

use sluice_shared::queue::Claimed;
use sluice_shared::queue::redis::{RedisConfig, RedisQueue};
use sluice_shared::{Job, JobInput, JobResult, ModuleHash, Outcome, Queue, codec};
use sluice_tests::{RedisServer, fresh_queue};

fn uuid_nil() -> uuid::Uuid {
    uuid::Uuid::nil()
}

async fn fresh() -> (RedisServer, RedisQueue) {
    fresh_queue(|_| {}).await
}

sluice_shared::queue_conformance!(fresh());
sluice_shared::queue_ownership_conformance!(fresh());

const LONG: Duration = Duration::from_secs(60);

fn job(n: u8) -> Job {
    Job::new(ModuleHash::of(b"redis"), JobInput::Inline(vec![n]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_without_envelope_field_is_a_decode_error() {
    let (server, queue) = fresh().await;
    server.cli(&["XADD", &queue.keys().jobs, "*", "junk", "value"]);
    let claimed = queue.claim("c1", 10, LONG, LONG).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let err = claimed[0].delivery.as_ref().unwrap_err();
    assert!(err.to_string().contains("envelope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_are_batched_and_all_recorded() {
    let (_server, queue) = fresh().await;
    let queue = std::sync::Arc::new(queue);
    let jobs: Vec<Job> = (0..200).map(|i| job(i as u8)).collect();
    queue.enqueue(&jobs).await.unwrap();
    let claimed = queue.claim("c1", 500, LONG, LONG).await.unwrap();
    assert_eq!(claimed.len(), 200);
    let mut completing = tokio::task::JoinSet::new();
    for c in claimed {
        let queue = queue.clone();
        completing.spawn(async move {
            let result = JobResult::without_run(c.lease.job_id.unwrap(), Outcome::Success, 1);
            queue.complete(&c.lease, result).await
        });
    }
    while let Some(done) = completing.join_next().await {
        done.unwrap().unwrap();
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.completed, stats.leased, stats.ready), (200, 0, 0));
    for job in &jobs {
        assert!(queue.result(job.id).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_round_trip_in_chunks() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.chunk_bytes = 1000;
    let queue = RedisQueue::connect(config).await.unwrap();
    let data: Vec<u8> = (0..3500u32).map(|i| (i % 251) as u8).collect();
    let mut writer = queue.blobs().writer();
    writer.write(&data[..1234]).await.unwrap();
    writer.write(&data[1234..]).await.unwrap();
    let (id, len) = writer.finish().await.unwrap();
    assert_eq!(len, 3500);
    let mut reader = queue.blobs().reader(&id);
    let mut back = Vec::new();
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        assert!(chunk.len() <= 1000);
        back.extend(chunk);
    }
    assert_eq!(back, data);
    let mut missing = queue.blobs().reader("nope");
    assert!(missing.next_chunk().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_are_content_addressed_with_aliases() {
    let (_server, queue) = fresh().await;
    let hash = queue
        .modules()
        .put(b"\0asm\x01\0\0\0", Some("empty"))
        .await
        .unwrap();
    assert_eq!(hash, ModuleHash::of(b"\0asm\x01\0\0\0"));
    assert_eq!(queue.modules().resolve("empty").await.unwrap(), Some(hash));
    assert_eq!(
        queue.modules().resolve(&hash.to_hex()).await.unwrap(),
        Some(hash)
    );
    assert_eq!(queue.modules().resolve("other").await.unwrap(), None);
    assert_eq!(
        queue.modules().get(&hash).await.unwrap().unwrap(),
        b"\0asm\x01\0\0\0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_wait_for_their_time_on_the_server_clock() {
    let (_server, queue) = fresh().await;
    let now = queue.server_time_ms().await.unwrap();
    queue.schedule(&[job(1)], now + 400).await.unwrap();
    assert!(
        queue
            .claim("c1", 1, LONG, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let due = queue
        .claim("c1", 1, LONG, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_retried_and_purged() {
    let (_server, queue) = fresh().await;
    queue.enqueue(&[job(1), job(2)]).await.unwrap();
    for claimed in queue.claim("c1", 2, LONG, LONG).await.unwrap() {
        let result = JobResult::without_run(claimed.lease.job_id.unwrap(), Outcome::Timeout, 3);
        queue.dead_letter(&claimed.lease, result).await.unwrap();
    }
    let dead = queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        queue
            .admin()
            .dlq_retry(Some(&dead[0].entry_id))
            .await
            .unwrap(),
        1
    );
    assert_eq!(queue.dead_letters().await.unwrap().len(), 1);
    let again = queue.claim("c1", 5, LONG, LONG).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.job_id, dead[0].job_id);
    // The retried run's result is recorded, not mistaken for a duplicate of the
    // failure stored when it died.
    let job_id = again[0].lease.job_id.unwrap();
    let success = JobResult::without_run(job_id, Outcome::Success, 4);
    let done = queue
        .complete(&again[0].lease, success.clone())
        .await
        .unwrap();
    assert_eq!(done, sluice_shared::queue::Completion::Recorded);
    assert_eq!(queue.result(job_id).await.unwrap(), Some(success));
    // An entry that never had an envelope cannot be retried and stays dead.
    queue.enqueue_raw(Vec::new()).await.unwrap();
    let garbage = queue.claim("c1", 5, LONG, LONG).await.unwrap().remove(0);
    let result = JobResult::without_run(sluice_shared::JobId(uuid_nil()), Outcome::Timeout, 1);
    queue.dead_letter(&garbage.lease, result).await.unwrap();
    assert_eq!(queue.dead_letters().await.unwrap().len(), 2);
    assert_eq!(queue.admin().dlq_purge().await.unwrap(), 2);
    assert!(queue.dead_letters().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_jobs_survive_a_redis_restart_with_aof() {
    let mut server = RedisServer::start_with_aof();
    let queue = RedisQueue::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    queue.enqueue(&[job(1), job(2)]).await.unwrap();
    let held = queue.claim("c1", 1, LONG, LONG).await.unwrap().remove(0);
    server.kill();
    server.start_again();
    // The same connection manager reconnects; the lease and the other job are intact.
    let mut renewed = queue.extend_lease(&held.lease, LONG).await;
    for _ in 0..20 {
        if renewed.is_ok() {
            break;
        }
        renewed = queue.extend_lease(&held.lease, LONG).await;
    }
    renewed.expect("lease survives the restart");
    let other = queue
        .claim("c2", 5, LONG, LONG)
        .await
        .expect("claims after the restart");
    assert_eq!(other.len(), 1);
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.leased, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_format_version_on_the_stream_is_named() {
    let (_server, queue) = fresh().await;
    let mut envelope = codec::encode(&job(1));
    envelope[0] = 42;
    queue.enqueue_raw(envelope).await.unwrap();
    let claimed = queue.claim("c1", 1, LONG, LONG).await.unwrap();
    assert!(
        claimed[0]
            .delivery
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("42")
    );
}

fn success_of(id: sluice_shared::JobId) -> JobResult {
    JobResult::without_run(id, Outcome::Success, 1)
}

/// Enqueues two copies of one job, claims both and completes the first copy; returns
/// the job, both claims and the stored result.
async fn two_copies_first_completed(queue: &RedisQueue) -> (Job, Vec<Claimed>, JobResult) {
    let sent = job(1);
    queue.enqueue(&[sent.clone(), sent.clone()]).await.unwrap();
    let claimed = queue.claim("c1", 2, LONG, LONG).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let done = success_of(sent.id);
    queue
        .complete(&claimed[0].lease, done.clone())
        .await
        .unwrap();
    (sent, claimed, done)
}

fn failure_of(id: sluice_shared::JobId) -> JobResult {
    JobResult::without_run(
        id,
        Outcome::InvalidModule {
            reason: "test".into(),
        },
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_name_that_would_break_the_hash_tag_is_refused() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.queue = "a}b{c".into();
    let err = RedisQueue::connect(config).await.err().expect("refused");
    assert!(err.to_string().contains("queue:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_keeps_the_jobs_it_took_over_when_reading_new_ones_fails() {
    let server = RedisServer::start();
    let queue = RedisQueue::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    queue.enqueue(&[job(1)]).await.unwrap();
    let first = queue.claim("dies", 1, LONG, LONG).await.unwrap();
    assert_eq!(first.len(), 1);
    // A client that may take over (its scripts run XAUTOCLAIM) but not read new
    // entries: the read fails after the takeover took the job.
    server.cli(&[
        "ACL",
        "SETUSER",
        "limited",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-xreadgroup",
    ]);
    let url = format!("redis://limited:x@127.0.0.1:{}", server.port());
    let mut config = RedisConfig::new(url);
    config.maintenance_interval = Duration::from_millis(1);
    let limited = RedisQueue::connect(config).await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..100 {
        taken = limited
            .claim("takes-over", 5, Duration::from_millis(1), Duration::ZERO)
            .await
            .expect("the jobs taken over are returned, not dropped");
        if !taken.is_empty() {
            break;
        }
    }
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].lease.job_id, first[0].lease.job_id);
    assert_eq!(taken[0].lease.deliveries, 2);
    // With nothing to take over, the failing read is the claim's error.
    let err = limited
        .claim("takes-over", 5, LONG, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sluice:{default}:jobs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_result_is_never_dead_lettered() {
    let (_server, queue) = fresh().await;
    // The same job twice on the stream (a re-enqueue of a job thought lost).
    let (sent, claimed, done) = two_copies_first_completed(&queue).await;
    let refused = queue
        .dead_letter(&claimed[1].lease, failure_of(sent.id))
        .await;
    assert!(
        matches!(refused, Err(sluice_shared::QueueError::LeaseLost { .. })),
        "{refused:?}"
    );
    assert!(queue.dead_letters().await.unwrap().is_empty());
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(done));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 0));
    assert_eq!(queue.admin().status().await.unwrap().duplicates, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_never_deletes_a_success() {
    let (_server, queue) = fresh().await;
    let sent = job(1);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = queue.claim("c1", 1, LONG, LONG).await.unwrap().remove(0);
    queue
        .dead_letter(&claimed.lease, failure_of(sent.id))
        .await
        .unwrap();
    // However it got there (an older build's race), a stored success stays.
    let done = success_of(sent.id);
    redis::cmd("SET")
        .arg(queue.keys().result_key(sent.id))
        .arg(codec::encode_result(&done))
        .query_async::<()>(&mut queue.connection())
        .await
        .unwrap();
    assert_eq!(queue.admin().dlq_retry(None).await.unwrap(), 0);
    let letter = queue.dead_letters().await.unwrap().remove(0);
    let err = queue
        .admin()
        .dlq_retry(Some(&letter.entry_id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("succeeded"), "{err}");
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(done));
    assert_eq!(queue.stats().await.unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_outcomes_are_counted_once_across_dead_letters_and_dlq_retry() {
    let (_server, queue) = fresh().await;
    let jobs: Vec<Job> = (0..3).map(job).collect();
    let batch = sluice_tests::fleet::api_batch(&queue, "acme", &jobs).await;
    // Another tenant's view of it is the same as of a batch that does not exist.
    assert_eq!(
        queue.results().batch_counts(&batch, "other").await.unwrap(),
        None
    );
    assert_eq!(
        queue
            .results()
            .batch_counts(&format!("{batch}:jobs"), "acme")
            .await
            .unwrap(),
        None
    );
    let fresh_counts = queue
        .results()
        .batch_counts(&batch, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((fresh_counts.total, fresh_counts.done()), (3, 0));
    assert_eq!(sluice_tests::fleet::admit(&queue, "acme", 10).await, 3);
    let claimed = queue.claim("c1", 3, LONG, LONG).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let id = |c: &sluice_shared::queue::Claimed| c.lease.job_id.unwrap();
    queue
        .complete(&claimed[0].lease, success_of(id(&claimed[0])))
        .await
        .unwrap();
    for c in &claimed[1..] {
        queue
            .dead_letter(&c.lease, failure_of(id(c)))
            .await
            .unwrap();
    }
    let counts = queue
        .results()
        .batch_counts(&batch, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.by_outcome.get("success"), Some(&1));
    assert_eq!(counts.by_outcome.get("invalid_module"), Some(&2));
    assert_eq!(counts.done(), 3);
    assert_eq!(
        counts.jobs.iter().filter(|(_, o)| o.is_some()).count(),
        3,
        "{counts:?}"
    );
    // Retried dead letters are taken back out of the counts, then counted as they end.
    assert_eq!(queue.admin().dlq_retry(None).await.unwrap(), 2);
    let counts = queue
        .results()
        .batch_counts(&batch, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.done(), 1);
    assert_eq!(counts.by_outcome.get("invalid_module"), None);
    for c in queue.claim("c1", 3, LONG, LONG).await.unwrap() {
        queue.complete(&c.lease, success_of(id(&c))).await.unwrap();
    }
    let counts = queue
        .results()
        .batch_counts(&batch, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.by_outcome.get("success"), Some(&3));
    assert_eq!(counts.done(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_takes_every_token_issued_before_it() {
    let (_server, queue) = fresh().await;
    let first = queue
        .tenants()
        .create("acme", &sluice_shared::TenantPolicy::default())
        .await
        .unwrap()
        .unwrap();
    let tokens: Vec<String> = {
        let mut issued = vec![first];
        for _ in 0..5 {
            issued.push(queue.tenants().issue_token("acme").await.unwrap());
        }
        issued
    };
    // Issued and revoked concurrently: each token is either revoked or counted later.
    let (revoked, late) = tokio::join!(
        queue.tenants().revoke_tokens("acme"),
        queue.tenants().issue_token("acme")
    );
    let late = late.unwrap();
    let revoked = revoked.unwrap();
    let valid_late = queue.tenants().for_token(&late).await.unwrap().is_some();
    assert_eq!(revoked, if valid_late { 6 } else { 7 });
    for token in &tokens {
        assert_eq!(queue.tenants().for_token(token).await.unwrap(), None);
    }
    // Whatever survived is still revocable.
    assert_eq!(
        queue.tenants().revoke_tokens("acme").await.unwrap(),
        u64::from(valid_late)
    );
    assert_eq!(queue.tenants().for_token(&late).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_copy_is_not_retried_once_the_job_has_a_result() {
    let (_server, queue) = fresh().await;
    // Two copies of one job (a takeover's stale run, or a recovery re-enqueue).
    let (sent, claimed, done) = two_copies_first_completed(&queue).await;
    let mut again = sent.clone();
    again.attempt = 2;
    let refused = queue.retry(&claimed[1].lease, &again, Duration::ZERO).await;
    assert!(
        matches!(refused, Err(sluice_shared::QueueError::LeaseLost { .. })),
        "{refused:?}"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.leased, stats.delayed, stats.dead),
        (0, 0, 0, 0)
    );
    assert!(
        queue
            .claim("c2", 5, LONG, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(done));
    let status = queue.admin().status().await.unwrap();
    assert_eq!((status.duplicates, status.retried), (1, 0));
}

/// An API job (with a record) admitted by the dispatcher and claimed.
async fn dispatched(queue: &RedisQueue) -> (Job, sluice_shared::Claimed) {
    let sent = job(7);
    queue
        .admission()
        .enqueue_owned(std::slice::from_ref(&sent), "acme", None)
        .await
        .unwrap();
    queue.admission().hold_dispatcher("d", LONG).await.unwrap();
    assert_eq!(
        queue.admission().dispatch("d", "acme", 10).await.unwrap(),
        vec![sent.id]
    );
    let claimed = queue.claim("c1", 1, LONG, LONG).await.unwrap().remove(0);
    (sent, claimed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_job_can_still_be_cancelled() {
    let (_server, queue) = fresh().await;
    let (sent, claimed) = dispatched(&queue).await;
    queue
        .release(
            &claimed.lease,
            Some(&sent),
            sluice_shared::queue::ReleaseKind::Drain,
        )
        .await
        .unwrap();
    let record = queue.results().job_record(sent.id).await.unwrap().unwrap();
    assert_ne!(record.entry, claimed.lease.entry_id);
    assert_eq!(
        queue.results().cancel(sent.id).await.unwrap(),
        sluice_shared::queue::redis::Cancelled::Yes
    );
    assert_eq!(queue.stats().await.unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_and_promotion_renew_the_job_record() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    // Every claim runs the maintenance step that promotes due jobs.
    config.maintenance_interval = Duration::from_millis(1);
    let queue = RedisQueue::connect(config).await.unwrap();
    let sent = job(9);
    queue
        .admission()
        .enqueue_owned(std::slice::from_ref(&sent), "acme", None)
        .await
        .unwrap();
    let record = format!(
        "{}job:{}",
        queue.keys().jobs.trim_end_matches("jobs"),
        sent.id
    );
    let pttl =
        |server: &RedisServer| -> i64 { server.cli(&["PTTL", &record]).trim().parse().unwrap() };
    // As if it had waited in its backlog for most of the result TTL.
    server.cli(&["PEXPIRE", &record, "5000"]);
    queue.admission().hold_dispatcher("d", LONG).await.unwrap();
    queue.admission().dispatch("d", "acme", 10).await.unwrap();
    assert!(pttl(&server) > 60_000, "admission renews the record");
    // Retried, then promoted back into its backlog: renewed again.
    let claimed = queue.claim("c1", 1, LONG, LONG).await.unwrap().remove(0);
    server.cli(&["PEXPIRE", &record, "5000"]);
    let mut again = sent.clone();
    again.attempt = 2;
    queue
        .retry(&claimed.lease, &again, Duration::ZERO)
        .await
        .unwrap();
    // A claim promotes the job once due (into its backlog: nothing to claim yet).
    for _ in 0..100 {
        let claimed = queue
            .claim("c1", 1, LONG, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(claimed.is_empty());
        if queue.stats().await.unwrap().delayed == 0 {
            break;
        }
    }
    assert_eq!(queue.stats().await.unwrap().delayed, 0);
    let record_now = queue.results().job_record(sent.id).await.unwrap().unwrap();
    assert!(record_now.stream.contains("backlog:acme"), "{record_now:?}");
    assert!(pttl(&server) > 60_000, "promotion renews the record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_quota_holds_under_concurrent_enqueues() {
    use sluice_shared::queue::redis::Enqueued;
    let (_server, queue) = fresh().await;
    let queue = std::sync::Arc::new(queue);
    // Twenty one-job requests at once against a quota of 5: each checks the length
    // and enqueues in one step, so exactly five get in.
    let mut sending = tokio::task::JoinSet::new();
    for n in 0..20u8 {
        let queue = queue.clone();
        sending.spawn(async move {
            queue
                .admission()
                .enqueue_owned_within(&[job(n)], "acme", None, Some(5))
                .await
                .unwrap()
        });
    }
    let mut admitted = 0;
    while let Some(done) = sending.join_next().await {
        match done.unwrap() {
            Enqueued::Yes => admitted += 1,
            Enqueued::BacklogFull { waiting } => assert_eq!(waiting, 5),
        }
    }
    assert_eq!(admitted, 5);
    assert_eq!(queue.admission().backlog_len("acme").await.unwrap(), 5);
    // A batch that would pass the quota is refused whole: no entry, no record.
    let batch: Vec<Job> = (0..3).map(|n| job(100 + n)).collect();
    let refused = queue
        .admission()
        .enqueue_owned_within(&batch, "other", Some("b1"), Some(2))
        .await
        .unwrap();
    assert_eq!(refused, Enqueued::BacklogFull { waiting: 0 });
    assert_eq!(queue.admission().backlog_len("other").await.unwrap(), 0);
    assert!(
        queue
            .results()
            .job_record(batch[0].id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(queue.results().batch("b1").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_of_all_goes_page_by_page() {
    let (server, queue) = fresh().await;
    let jobs: Vec<Job> = (0..1100u32).map(|n| job((n % 251) as u8)).collect();
    let mut pipe = redis::pipe();
    for sent in &jobs {
        pipe.cmd("XADD")
            .arg(&queue.keys().dead)
            .arg("*")
            .arg("job")
            .arg(sent.id.to_string())
            .arg("kind")
            .arg("invalid_module")
            .arg("reason")
            .arg("test")
            .arg("attempts")
            .arg(1)
            .arg("e")
            .arg(codec::encode(sent))
            .ignore();
    }
    pipe.query_async::<()>(&mut queue.connection())
        .await
        .unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(queue.admin().dlq_retry(None).await.unwrap(), 1100);
    assert!(queue.dead_letters().await.unwrap().is_empty());
    assert_eq!(queue.stats().await.unwrap().ready, 1100);
    // 500 letters a script: three calls that ran (a NOSCRIPT reply, before the script
    // is loaded, is a failed call), none of them over every letter at once.
    let scripts = server.cli(&["INFO", "commandstats"]);
    let stat = |line: &str, name: &str| -> u64 {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let ran: u64 = scripts
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| stat(l, "calls") - stat(l, "failed_calls"))
        .sum();
    assert_eq!(ran, 3, "{scripts}");
}

/// Calls of `cmdstat_<name>` in `INFO commandstats` that ran (`calls` minus
/// `failed_calls`: an `EVALSHA` answered NOSCRIPT, before its script is loaded, is a
/// failed call); 0 when the command never ran.
fn command_calls(server: &RedisServer, name: &str) -> u64 {
    let prefix = format!("cmdstat_{name}:");
    let stats = server.cli(&["INFO", "commandstats"]);
    let Some(fields) = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
    else {
        return 0;
    };
    let field = |key: &str| -> u64 {
        fields
            .split(',')
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    field("calls") - field("failed_calls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_job_without_a_batch_has_its_outcome_noted() {
    let (server, queue) = fresh().await;
    let (sent, claimed) = dispatched(&queue).await;
    let done = queue
        .complete(&claimed.lease, success_of(sent.id))
        .await
        .unwrap();
    assert_eq!(done, sluice_shared::queue::Completion::Recorded);
    let record = format!(
        "{}job:{}",
        queue.keys().jobs.trim_end_matches("jobs"),
        sent.id
    );
    assert_eq!(server.cli(&["HGET", &record, "outcome"]).trim(), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_queue_pays_no_type_per_completed_job() {
    let (server, queue) = fresh().await;
    let queue = std::sync::Arc::new(queue);
    // One job alone: what one complete.lua call costs in TYPE (its key checks).
    queue.enqueue(&[job(0)]).await.unwrap();
    let one = queue.claim("c1", 1, LONG, LONG).await.unwrap().remove(0);
    server.cli(&["CONFIG", "RESETSTAT"]);
    queue
        .complete(&one.lease, success_of(one.lease.job_id.unwrap()))
        .await
        .unwrap();
    assert_eq!(command_calls(&server, "evalsha"), 1);
    let per_call = command_calls(&server, "type");
    assert!(per_call > 0, "the key checks run TYPE");

    // Many at once: batched into fewer calls, and TYPE grows with the calls only.
    let jobs: Vec<Job> = (0..200).map(|i| job(i as u8)).collect();
    queue.enqueue(&jobs).await.unwrap();
    let claimed = queue.claim("c1", 500, LONG, LONG).await.unwrap();
    assert_eq!(claimed.len(), 200);
    server.cli(&["CONFIG", "RESETSTAT"]);
    let mut completing = tokio::task::JoinSet::new();
    for c in claimed {
        let queue = queue.clone();
        completing.spawn(async move {
            let result = success_of(c.lease.job_id.unwrap());
            queue.complete(&c.lease, result).await
        });
    }
    while let Some(done) = completing.join_next().await {
        done.unwrap().unwrap();
    }
    let calls = command_calls(&server, "evalsha");
    assert!(calls < 200, "completions were not batched ({calls} calls)");
    assert_eq!(command_calls(&server, "type"), per_call * calls);
    assert_eq!(queue.stats().await.unwrap().completed, 201);
}
