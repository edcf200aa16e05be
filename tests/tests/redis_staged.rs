//! Large results staged outside `complete.lua` against a real redis-server: the
//! flusher pipelines `SET staged:<entry>:<consumer>` before the script, which renames
//! it to the result key or deletes it. Every test ends by checking that no staged key
//! is left behind, whatever the script answered.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::queue::conformance::large_success;
use sluice_shared::queue::redis::{RedisConfig, RedisQueue, STAGE_THRESHOLD};
use sluice_shared::queue::{Completion, StagedLoss};
use sluice_shared::{Claimed, Job, JobInput, JobResult, ModuleHash, Outcome, Queue, QueueError};
use sluice_tests::wait::poll;
use sluice_tests::{RedisServer, fresh_queue};

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);
const PATIENT: Duration = Duration::from_secs(30);

fn job(n: u8) -> Job {
    Job::new(ModuleHash::of(b"staged"), JobInput::Inline(vec![n]))
}

async fn claim_one(queue: &RedisQueue, consumer: &str, lease: Duration) -> Claimed {
    let mut claimed = queue.claim(consumer, 1, lease, PATIENT).await.unwrap();
    assert_eq!(claimed.len(), 1, "{consumer} claimed nothing");
    claimed.remove(0)
}

/// The staged keys left on the server (none, after any completion).
fn staged_keys(server: &RedisServer, queue: &RedisQueue) -> Vec<String> {
    server
        .cli(&["--scan", "--pattern", &queue.keys().staged_pattern()])
        .lines()
        .map(str::to_owned)
        .filter(|line| !line.is_empty())
        .collect()
}

fn assert_nothing_staged(server: &RedisServer, queue: &RedisQueue) {
    let left = staged_keys(server, queue);
    assert!(left.is_empty(), "staged keys left behind: {left:?}");
}

/// The job's entry is pending in the group (claimed and not acknowledged).
async fn leased(queue: &RedisQueue) -> u64 {
    queue.stats().await.unwrap().leased
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_stored_with_its_ttl_and_notice() {
    let (server, queue) = fresh_queue(|config| config.result_ttl = Duration::from_secs(600)).await;
    let sent = job(1);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let result = large_success(&sent, 1, b'x');
    assert!(sluice_shared::codec::encode_result(&result).len() >= STAGE_THRESHOLD);
    assert_eq!(
        queue.complete(&claimed.lease, &result).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(result));
    let key = queue.keys().result_key(sent.id);
    let ttl: i64 = server.cli(&["PTTL", &key]).trim().parse().unwrap();
    // The result TTL (600 s), not the staged copy's short one (about 106 s with the
    // default response timeout), which complete.lua replaces with PEXPIRE.
    assert!(
        (300_000..=600_000).contains(&ttl),
        "the result's TTL is the result TTL: {ttl}"
    );
    let notices = server.cli(&["XRANGE", &queue.keys().done, "-", "+"]);
    assert!(
        notices.contains(&sent.id.to_string()),
        "no notice: {notices}"
    );
    assert_nothing_staged(&server, &queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_holders_completing_at_once_store_one_large_result() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let sent = job(2);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let first = claim_one(&queue, "stalls", SHORT).await;
    let second = claim_one(&queue, "takes-over", SHORT).await;
    assert_eq!(second.lease.deliveries, 2);
    let (a, b) = (large_success(&sent, 1, b'a'), large_success(&sent, 2, b'b'));
    // Sent together, so they usually share one script call (and one pipeline).
    let (done_a, done_b) = tokio::join!(
        queue.complete(&first.lease, &a),
        queue.complete(&second.lease, &b)
    );
    let mut done = [done_a.unwrap(), done_b.unwrap()];
    done.sort_by_key(|c| *c == Completion::AlreadyDone);
    assert_eq!(done, [Completion::Recorded, Completion::AlreadyDone]);
    let stored = queue.result(sent.id).await.unwrap().unwrap();
    assert!(stored == a || stored == b);
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.completed, stats.leased), (1, 0));
    assert_nothing_staged(&server, &queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_large_completion_stores_nothing_and_leaves_nothing() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let sent = job(3);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let stale = claim_one(&queue, "stalls", SHORT).await;
    let holder = claim_one(&queue, "takes-over", SHORT).await;
    let mut next = sent.clone();
    next.attempt = holder.attempt();
    queue.retry(&holder.lease, &next, LONG).await.unwrap();
    let err = queue
        .complete(&stale.lease, large_success(&sent, 1, b's'))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
    assert_eq!(queue.result(sent.id).await.unwrap(), None);
    assert_eq!(queue.stats().await.unwrap().delayed, 1);
    assert_nothing_staged(&server, &queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_result_key_leaves_the_job_pending_and_its_staged_copy_deleted() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let sent = job(4);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let key = queue.keys().result_key(sent.id);
    server.cli(&["HSET", &key, "not", "a result"]);
    let err = queue
        .complete(&claimed.lease, large_success(&sent, 1, b'c'))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QueueError::Protocol(m) if m.contains(&key) && m.contains("corrupt")),
        "{err}"
    );
    assert_eq!(leased(&queue).await, 1, "the entry must stay pending");
    assert_eq!(server.cli(&["TYPE", &key]).trim(), "hash");
    assert_eq!(queue.stats().await.unwrap().completed, 0);
    assert_nothing_staged(&server, &queue);
}

/// A queue client connected as user `stager`, who may run everything (until a test's
/// ACL change says otherwise), on a fresh server; the test's `cli` stays the default
/// user, to change the ACL and look.
async fn as_stager(server: &RedisServer) -> RedisQueue {
    let acl = server.cli(&["ACL", "SETUSER", "stager", "on", ">pw", "~*", "&*", "+@all"]);
    assert_eq!(acl.trim(), "OK", "{acl}");
    let url = format!("redis://stager:pw@127.0.0.1:{}", server.port());
    RedisQueue::connect(RedisConfig::new(url)).await.unwrap()
}

fn acl(server: &RedisServer, rules: &[&str]) {
    let mut args = vec!["ACL", "SETUSER", "stager"];
    args.extend_from_slice(rules);
    let reply = server.cli(&args);
    assert_eq!(reply.trim(), "OK", "{reply}");
}

/// `SET key value` by hand, the value binary (redis-cli's `-x` reads it from stdin).
fn set_bytes(server: &RedisServer, key: &str, value: &[u8]) {
    let mut cli = Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "-x", "SET", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    cli.stdin.take().unwrap().write_all(value).unwrap();
    let out = cli.wait_with_output().unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert_eq!(reply.trim(), "OK", "{reply}");
}

/// Redis refuses the staged SET (an ACL that denies SET on staged keys stands in for
/// the staged key expiring or being evicted before the script runs: either way the
/// script finds no staged key and answers 3). The entry is still pending, so the
/// flusher sends the result again inline, and it is stored.
/// (Before the inline resend, this test expected `StagedResultMissing`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_staged_set_is_sent_again_inline_and_stored() {
    let server = RedisServer::start();
    let queue = as_stager(&server).await;
    acl(&server, &["-set", "(+set ~sluice:*:result:*)"]);
    let sent = job(5);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let result = large_success(&sent, 1, b'm');
    assert_eq!(
        queue.complete(&claimed.lease, &result).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(result));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.leased, stats.completed), (0, 1));
    assert_nothing_staged(&server, &queue);
}

/// The staged SET is refused and so is the inline resend's (an ACL denying SET
/// altogether): nothing is stored, the entry stays pending, the typed error says
/// why, and the job runs again after its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_staged_result_whose_resend_fails_leaves_the_job_pending() {
    let server = RedisServer::start();
    let queue = as_stager(&server).await;
    let sent = job(8);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", SHORT).await;
    acl(&server, &["-set"]);
    let err = queue
        .complete(&claimed.lease, large_success(&sent, 1, b'm'))
        .await
        .unwrap_err();
    let QueueError::StagedResultMissing {
        entry_id,
        why,
        resend,
    } = &err
    else {
        panic!("not a missing staged result: {err}");
    };
    assert_eq!(entry_id, &claimed.lease.entry_id);
    assert_eq!(
        why,
        &StagedLoss::Refused {
            code: "NOPERM".into()
        }
    );
    assert!(resend.contains("can't run this command"), "{resend}");
    assert!(err.to_string().contains("stays queued"), "{err}");
    assert_eq!(queue.result(sent.id).await.unwrap(), None);
    assert_eq!(leased(&queue).await, 1, "the entry must stay pending");
    assert_eq!(queue.stats().await.unwrap().completed, 0);
    assert_nothing_staged(&server, &queue);
    // The job runs again after its lease, and that run's result is stored.
    // (A claimer takes over entries idle longer than its own lease.)
    acl(&server, &["+set"]);
    let again = claim_one(&queue, "c2", SHORT).await;
    assert_eq!(again.lease.job_id, Some(sent.id));
    assert_eq!(again.lease.deliveries, 2);
    let small = JobResult::without_run(sent.id, Outcome::Success, 2);
    assert_eq!(
        queue.complete(&again.lease, &small).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(small));
}

/// Redis is full (used memory over `maxmemory`, `noeviction`, as docs/quotas.md
/// recommends): it refuses the staged SET with OOM, while the script, which writes
/// first (XCLAIM), may store past the cap. The result, sent again inline, is stored,
/// as it was before results were staged: a full Redis must not turn successes into
/// reruns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_stored_while_redis_is_full() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let sent = job(9);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let full = server.cli(&[
        "CONFIG",
        "SET",
        "maxmemory-policy",
        "noeviction",
        "maxmemory",
        "1",
    ]);
    assert_eq!(full.trim(), "OK", "{full}");
    let refused = server.cli(&["SET", "probe", "x"]);
    assert!(refused.contains("OOM"), "Redis is not full: {refused}");
    let result = large_success(&sent, 1, b'o');
    let done = queue.complete(&claimed.lease, &result).await;
    let room = server.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(room.trim(), "OK", "{room}");
    assert_eq!(done.unwrap(), Completion::Recorded);
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(result));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.leased, stats.completed), (0, 1));
    assert_nothing_staged(&server, &queue);
}

/// A corrupt shared key (the stats hash a string) fails the whole script: the large
/// completion gets CORRUPT, its entry stays pending, and its staged copy is deleted by
/// the failing script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_shared_key_deletes_the_staged_copy() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let sent = job(10);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let stats = queue.keys().stats.clone();
    server.cli(&["DEL", &stats]);
    server.cli(&["SET", &stats, "oops"]);
    let err = queue
        .complete(&claimed.lease, large_success(&sent, 1, b'k'))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(err.to_string().contains(&stats), "{err}");
    assert_nothing_staged(&server, &queue);
    server.cli(&["DEL", &stats]);
    assert_eq!(leased(&queue).await, 1, "the entry must stay pending");
    assert_eq!(queue.result(sent.id).await.unwrap(), None);
}

/// A result already stored (written here by hand) when a large completion of a still
/// pending entry arrives: RENAMENX answers 0, a duplicate; the entry is acknowledged,
/// the stored result kept, the staged copy deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_completion_onto_a_stored_result_is_a_duplicate() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let sent = job(11);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let first = JobResult::without_run(sent.id, Outcome::Success, 1);
    let key = queue.keys().result_key(sent.id);
    let encoded = sluice_shared::codec::encode_result(&first);
    set_bytes(&server, &key, &encoded);
    assert_eq!(
        queue
            .complete(&claimed.lease, large_success(&sent, 1, b'd'))
            .await
            .unwrap(),
        Completion::AlreadyDone
    );
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(first));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.leased, stats.completed), (0, 0));
    let stats_key = queue.keys().stats.clone();
    assert_eq!(server.cli(&["HGET", &stats_key, "duplicates"]).trim(), "1");
    assert_nothing_staged(&server, &queue);
}

/// Each try of a batch sends its staged SETs again, not the script alone: the script
/// is denied (ACL) so the first tries fail after their SETs landed; the staged copy is
/// deleted, and must come back (a later try's SET) before the script is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_stages_its_results_again() {
    let server = RedisServer::start();
    let queue = Arc::new(as_stager(&server).await);
    let sent = job(12);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let staged = queue
        .keys()
        .staged_result(&claimed.lease.entry_id, &claimed.lease.consumer);
    acl(&server, &["-evalsha"]);
    let result = large_success(&sent, 1, b'r');
    let completing = {
        let (queue, lease, result) = (queue.clone(), claimed.lease.clone(), result.clone());
        tokio::spawn(async move { queue.complete(&lease, &result).await })
    };
    let exists = || server.cli(&["EXISTS", &staged]).trim().to_owned();
    tokio::task::block_in_place(|| {
        poll("the first try's staged copy", PATIENT, exists, |e| e == "1");
        server.cli(&["DEL", &staged]);
        poll("a later try's staged copy", PATIENT, exists, |e| e == "1");
    });
    acl(&server, &["+evalsha"]);
    assert_eq!(completing.await.unwrap().unwrap(), Completion::Recorded);
    assert_eq!(queue.result(sent.id).await.unwrap(), Some(result));
    assert_eq!(leased(&queue).await, 0);
    assert_nothing_staged(&server, &queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_gets_the_right_reply_per_job() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let queue = Arc::new(queue);
    // Small and large results, some of them stale (the job was retried after a
    // takeover) and some duplicates (another holder stored first), all completed at
    // once so they share script calls.
    let jobs: Vec<Job> = (0..40).map(job).collect();
    queue.enqueue(&jobs).await.unwrap();
    let stalled = queue.claim("stalls", 40, SHORT, PATIENT).await.unwrap();
    assert_eq!(stalled.len(), 40);
    // (A claimer takes over entries idle longer than its own lease; no one claims
    // after the holder, so its short lease is never taken over.)
    let mut holders = Vec::new();
    while holders.len() < 40 {
        holders.extend(queue.claim("holder", 40, SHORT, PATIENT).await.unwrap());
    }
    holders.sort_by_key(|c| c.lease.job_id);
    let mut stalled = stalled;
    stalled.sort_by_key(|c| c.lease.job_id);
    let by_id = |id| jobs.iter().find(|j| Some(j.id) == id).unwrap().clone();
    let mut expected = Vec::new();
    let mut kept = std::collections::HashMap::new();
    let mut completing = tokio::task::JoinSet::new();
    for (i, (old, new)) in stalled.into_iter().zip(holders).enumerate() {
        let sent = by_id(old.lease.job_id);
        // Every kind of completion with both sizes.
        let large = (i / 4 + i) % 2 == 0;
        let result = |attempt, fill| {
            if large {
                large_success(&sent, attempt, fill)
            } else {
                JobResult::without_run(sent.id, Outcome::Success, attempt)
            }
        };
        match i % 4 {
            // The current holder completes: stored.
            0 | 1 => {
                expected.push((sent.id, "stored"));
                let (queue, r) = (queue.clone(), result(2, b'h'));
                kept.insert(sent.id, Some(r.clone()));
                completing.spawn(async move { (r.job_id, queue.complete(&new.lease, &r).await) });
            }
            // The holder retried it: the stalled holder's completion is stale.
            2 => {
                let mut next = sent.clone();
                next.attempt = 2;
                queue.retry(&new.lease, &next, LONG).await.unwrap();
                expected.push((sent.id, "stale"));
                kept.insert(sent.id, None);
                let (queue, r) = (queue.clone(), result(1, b's'));
                completing.spawn(async move { (r.job_id, queue.complete(&old.lease, &r).await) });
            }
            // The holder stored first: the stalled holder's completion is a duplicate.
            _ => {
                let first = result(2, b'f');
                assert_eq!(
                    queue.complete(&new.lease, &first).await.unwrap(),
                    Completion::Recorded
                );
                kept.insert(sent.id, Some(first));
                expected.push((sent.id, "duplicate"));
                let (queue, r) = (queue.clone(), result(1, b'd'));
                completing.spawn(async move { (r.job_id, queue.complete(&old.lease, &r).await) });
            }
        }
    }
    let mut got = Vec::new();
    while let Some(done) = completing.join_next().await {
        let (id, reply) = done.unwrap();
        let reply = match reply {
            Ok(Completion::Recorded) => "stored",
            Ok(Completion::AlreadyDone) => "duplicate",
            Err(QueueError::LeaseLost { .. }) => "stale",
            Err(other) => panic!("{id}: {other}"),
        };
        got.push((id, reply));
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    for sent in &jobs {
        assert_eq!(
            queue.result(sent.id).await.unwrap(),
            kept[&sent.id],
            "{}: not the winning run's result",
            sent.id
        );
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.completed, stats.leased, stats.delayed), (30, 0, 10));
    assert_nothing_staged(&server, &queue);
}

/// After a restart Redis has neither the script nor anything staged before it: the
/// flusher's next tries load the script and send the staged SETs again with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_completion_after_a_redis_restart_is_staged_again_and_stored() {
    let mut server = RedisServer::start_with_aof();
    let queue = RedisQueue::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let (before, after) = (job(6), job(7));
    queue
        .enqueue(&[before.clone(), after.clone()])
        .await
        .unwrap();
    let claimed = queue.claim("c1", 2, LONG, PATIENT).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let lease_of = |sent: &Job| {
        claimed
            .iter()
            .find(|c| c.lease.job_id == Some(sent.id))
            .unwrap()
            .lease
            .clone()
    };
    // The script is loaded (and the AOF has the pending entries) before the restart.
    let first = large_success(&before, 1, b'1');
    assert_eq!(
        queue.complete(&lease_of(&before), &first).await.unwrap(),
        Completion::Recorded
    );
    server.kill();
    server.start_again();
    let second = large_success(&after, 1, b'2');
    assert_eq!(
        queue.complete(&lease_of(&after), &second).await.unwrap(),
        Completion::Recorded
    );
    assert_eq!(queue.result(after.id).await.unwrap(), Some(second));
    assert_eq!(queue.result(before.id).await.unwrap(), Some(first));
    assert_eq!(queue.stats().await.unwrap().leased, 0);
    assert_nothing_staged(&server, &queue);
}

/// `complete.lua` as the queue loads it: `check.lua`'s key checks in front.
fn complete_script() -> String {
    format!(
        "{}\n{}",
        include_str!("../../shared/src/queue/redis/scripts/check.lua"),
        include_str!("../../shared/src/queue/redis/scripts/complete.lua")
    )
}

/// A call whose declared keys do not match its jobs' staged flags (a caller bug: one
/// job's staged copy would be renamed onto the next job's result key) is refused before
/// any write: the staged copy, the job's entry and the counters are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_keys_do_not_match_its_staged_flags_writes_nothing() {
    let (server, queue) = fresh_queue(|_| {}).await;
    let sent = job(20);
    queue.enqueue(std::slice::from_ref(&sent)).await.unwrap();
    let claimed = claim_one(&queue, "c1", LONG).await;
    let lease = &claimed.lease;
    let keys = queue.keys();
    let staged = keys.staged_result(&lease.entry_id, &lease.consumer);
    server.cli(&["SET", &staged, "copy", "PX", "60000"]);
    let result_key = keys.result_key(sent.id);
    let id = sent.id.to_string();
    let script = complete_script();
    // One job flagged staged ('1') but only its result key declared: 5 keys, not 6.
    let reply = server.cli(&[
        "EVAL",
        &script,
        "5",
        &keys.jobs,
        &keys.stats,
        &keys.done,
        &keys.owned(),
        &result_key,
        "workers",
        "600000",
        "60000",
        keys.prefix(),
        &lease.entry_id,
        &id,
        "success",
        "",
        &lease.consumer,
        "1",
    ]);
    assert!(reply.contains("keys declared"), "{reply}");
    assert_eq!(server.cli(&["EXISTS", &result_key]).trim(), "0");
    assert_eq!(server.cli(&["GET", &staged]).trim(), "copy");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.leased, stats.completed), (1, 0));
}
