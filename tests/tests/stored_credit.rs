//! Results are counted against the stored-bytes quota from a worker's per-tenant credit
//! (far fewer quota script calls than jobs), the count never falls below what was
//! stored nor runs ahead of it by more than one credit step per worker process, unused
//! credit is given back when the worker drains, and a tenant whose usage key is broken
//! fails open without holding up another: a real redis-server and a real
//! `sluice-worker serve`.

use std::time::Duration;

use sluice_shared::queue::redis::{RedisQueue, Reservation};
use sluice_shared::{Job, JobInput, JobResult, OutcomeKind, TenantId, TenantPolicy};
use sluice_tests::{Fleet, RedisServer, wait};

/// Writes nothing and ends.
const NOOP: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// What the worker counts per result besides output and stderr (`RESULT_OVERHEAD` in
/// worker/src/fleet.rs; the exact count after the drain fails if they drift apart).
const RESULT_OVERHEAD: u64 = 512;

/// The most credit a worker process holds for one tenant (`CREDIT_STEP` in
/// worker/src/fleet/credit.rs).
const CREDIT_STEP: u64 = 1 << 20;

async fn run(queue: &RedisQueue, jobs: &[Job]) -> Vec<JobResult> {
    wait::enqueue_and_await(queue, jobs, Duration::from_secs(120)).await;
    wait::results(queue, jobs.iter().map(|j| &j.id)).await
}

fn jobs(module: sluice_shared::ModuleHash, tenant: &str, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| {
            let mut job = Job::new(module, JobInput::Inline(Vec::new()));
            job.tenant = TenantId(tenant.to_owned());
            job
        })
        .collect()
}

/// Calls of `command` the server has served, the ones scripts make included
/// (`INFO commandstats`).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

fn stored(results: &[JobResult]) -> u64 {
    let mut stored = 0;
    for result in results {
        assert_eq!(result.outcome.kind(), OutcomeKind::Success, "{result:?}");
        stored += result.stderr.len() as u64 + RESULT_OVERHEAD;
    }
    stored
}

#[test]
fn results_are_counted_from_credit_within_one_step_and_given_back_at_the_drain() {
    let fleet = Fleet::start("qcredit");
    let module = fleet.put_module(NOOP.as_bytes());
    let mut worker = fleet.worker("w1", &["--concurrency", "4"]);
    let jobs = jobs(module, "counted", 300);
    // `quota_stored.lua` reads the usage hash with HGETALL; of the scripts only the
    // heartbeat (every third of a lease) does too.
    let before = calls(&fleet.redis, "hgetall");
    fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        &jobs,
        Duration::from_secs(120),
    ));
    let quota_calls = calls(&fleet.redis, "hgetall") - before;
    assert!(quota_calls > 0, "the quota script was never called");
    assert!(
        quota_calls < 30,
        "{quota_calls} quota script calls for 300 jobs: the credit is not used"
    );
    let results = fleet
        .rt
        .block_on(wait::results(&fleet.queue, jobs.iter().map(|j| &j.id)));
    let stored = stored(&results);
    let counted = fleet.stored_bytes("counted");
    assert!(counted >= stored, "counted {counted} < stored {stored}");
    assert!(
        counted <= stored + CREDIT_STEP,
        "counted {counted} runs ahead of stored {stored} by more than one step"
    );
    // The drain gives the unused credit back: exactly what is stored stays counted.
    worker.terminate();
    assert!(worker.wait().success());
    assert_eq!(fleet.stored_bytes("counted"), stored);
}

#[test]
fn a_tenant_with_a_broken_usage_key_fails_open_and_holds_up_no_other() {
    let fleet = Fleet::start("qcreditbroken");
    let module = fleet.put_module(NOOP.as_bytes());
    let broken = fleet.queue.keys().usage("broken");
    fleet.redis.cli(&["SET", &broken, "not a hash"]);
    let _worker = fleet.worker("w1", &["--concurrency", "4"]);
    let mut all = jobs(module, "broken", 40);
    let fine = jobs(module, "fine", 40);
    for (i, job) in fine.into_iter().enumerate() {
        all.insert(2 * i + 1, job);
    }
    let results = fleet.rt.block_on(run(&fleet.queue, &all));
    // Every job of both tenants succeeds (`stored` asserts it): the broken key's errors
    // fail open, and the broken tenant's failing refills hold up no other tenant.
    stored(&results);
    let fine: Vec<JobResult> = results
        .into_iter()
        .filter(|result| {
            all.iter()
                .any(|j| j.id == result.job_id && j.tenant.0 == "fine")
        })
        .collect();
    assert_eq!(fine.len(), 40);
    assert!(fleet.stored_bytes("fine") >= stored(&fine));
    assert_eq!(fleet.redis.cli(&["TYPE", &broken]).trim(), "string");
}

#[test]
fn concurrent_slots_at_the_quota_edge_store_exactly_what_fits() {
    let fleet = Fleet::start("qcreditedge");
    let module = fleet.put_module(NOOP.as_bytes());
    // Room for ten results of a no-op job (no output, no stderr), not eleven.
    let policy = TenantPolicy {
        max_stored_bytes: 10 * RESULT_OVERHEAD + RESULT_OVERHEAD / 2,
        ..TenantPolicy::default()
    };
    fleet
        .rt
        .block_on(fleet.queue.tenants().create("edge", &policy))
        .unwrap();
    let _worker = fleet.worker("w1", &["--concurrency", "4"]);
    let results = fleet
        .rt
        .block_on(run(&fleet.queue, &jobs(module, "edge", 30)));
    let kept = results
        .iter()
        .filter(|r| r.outcome.kind() == OutcomeKind::Success)
        .count();
    // The step never refuses a result that fits: exactly ten are kept, whatever
    // order the four slots finish in; the rest end as output_limit.
    assert_eq!(kept, 10, "{results:?}");
    for result in results
        .iter()
        .filter(|r| r.outcome.kind() != OutcomeKind::Success)
    {
        assert_eq!(
            result.outcome.kind(),
            OutcomeKind::OutputLimit,
            "{result:?}"
        );
    }
}

#[test]
fn released_bytes_leave_their_bucket_never_below_zero_and_only_inside_the_window() {
    let fleet = Fleet::start("qrelease");
    let admission = fleet.queue.admission();
    let bucket = match fleet
        .rt
        .block_on(admission.reserve_stored("r", 1000, u64::MAX))
        .unwrap()
    {
        Reservation::Granted { bucket, .. } => bucket,
        other => panic!("{other:?}"),
    };
    let release = |bytes, bucket| {
        fleet
            .rt
            .block_on(admission.release_stored("r", bytes, bucket))
            .unwrap()
    };
    assert_eq!(release(400, bucket), 400);
    assert_eq!(fleet.stored_bytes("r"), 600);
    // A bucket long gone from the window, and one not begun, are left alone.
    let gone = sluice_shared::queue::redis::StoredBucket(bucket.0 - 1000);
    let ahead = sluice_shared::queue::redis::StoredBucket(bucket.0 + 1000);
    assert_eq!(release(100, gone), 0);
    assert_eq!(release(100, ahead), 0);
    assert_eq!(fleet.stored_bytes("r"), 600);
    // More than the bucket holds takes it to 0, not below.
    assert_eq!(release(10_000, bucket), 600);
    assert_eq!(fleet.stored_bytes("r"), 0);
    // A wrong-typed usage key is a typed error naming it.
    let key = fleet.queue.keys().usage("r");
    fleet.redis.cli(&["SET", &key, "x"]);
    let error = fleet
        .rt
        .block_on(admission.release_stored("r", 1, bucket))
        .unwrap_err();
    assert!(error.to_string().contains(&key), "{error}");
}
