//! The stored-bytes quota counts what workers store for a tenant (outputs and
//! results), not only what its requests put in Redis: a real redis-server and a real
//! `sluice-worker serve`.

use std::time::Duration;

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{
    Job, JobInput, JobOutput, JobResult, ModuleHash, OutcomeKind, TenantId, TenantPolicy,
};
use sluice_tests::{Fleet, wait};

/// Writes 2 MiB to stdout: 32 `fd_write`s of 64 KiB.
const TWO_MIB_OUT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $i i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 65536))
    (local.set $i (i32.const 32))
    (loop $l
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))))"#;

const OUTPUT_BYTES: u64 = 2 << 20;

/// Room for two jobs' outputs and results, not three.
const QUOTA: u64 = 5 << 20;

fn jobs(module: ModuleHash, tenant: &str, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| {
            let mut job = Job::new(module, JobInput::Inline(Vec::new()));
            job.tenant = TenantId(tenant.to_owned());
            job
        })
        .collect()
}

/// Runs `jobs` to the end (at most two minutes) and returns their results in order.
async fn run(queue: &RedisQueue, jobs: &[Job]) -> Vec<JobResult> {
    wait::enqueue_and_await(queue, jobs, Duration::from_secs(120)).await;
    wait::results(queue, jobs.iter().map(|j| &j.id)).await
}

#[test]
fn outputs_count_against_stored_bytes_and_only_the_hoarder_is_refused() {
    let fleet = Fleet::start("qout");
    let Fleet { rt, queue, .. } = &fleet;
    let module = fleet.put_module(TWO_MIB_OUT.as_bytes());
    let policy = TenantPolicy {
        max_stored_bytes: QUOTA,
        ..TenantPolicy::default()
    };
    rt.block_on(queue.tenants().create("hoarder", &policy))
        .unwrap();
    rt.block_on(queue.tenants().create("other", &policy))
        .unwrap();
    // One slot: the hoarder's jobs run one after another, so exactly two fit.
    let _worker = fleet.worker("w1", &["--concurrency", "1"]);

    let hoarded = rt.block_on(run(queue, &jobs(module, "hoarder", 4)));
    let (kept, refused): (Vec<&JobResult>, Vec<&JobResult>) = hoarded
        .iter()
        .partition(|r| r.outcome.kind() == OutcomeKind::Success);
    assert_eq!(kept.len(), 2, "{hoarded:?}");
    for result in &kept {
        assert!(
            matches!(result.output, JobOutput::Blob { len, .. } if len == OUTPUT_BYTES),
            "{:?}",
            result.output
        );
    }
    for result in &refused {
        sluice_tests::assert_refused_over_stored_quota(result);
    }

    // The other tenant's job on the same worker is unaffected.
    let other = rt.block_on(run(queue, &jobs(module, "other", 1)));
    assert_eq!(other[0].outcome.kind(), OutcomeKind::Success, "{other:?}");
    assert!(
        matches!(other[0].output, JobOutput::Blob { len, .. } if len == OUTPUT_BYTES),
        "{:?}",
        other[0].output
    );
}
