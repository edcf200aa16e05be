//! Results are counted against the stored-bytes quota from a worker's per-tenant credit
//! (no Redis round trip per job), and the count never falls below what was stored nor
//! runs ahead of it by more than one credit step per worker process: a real
//! redis-server and a real `sluice-worker serve`.

use std::time::Duration;

use sluice_shared::queue::redis::{RedisQueue, Reservation};
use sluice_shared::{Job, JobInput, JobResult, OutcomeKind, TenantId};
use sluice_tests::{Fleet, wait};

/// Writes nothing and ends.
const NOOP: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// What the worker counts per result besides output and stderr (`RESULT_OVERHEAD`).
const RESULT_OVERHEAD: u64 = 512;

/// The most a worker process reserves ahead for one tenant (`CREDIT_STEP`).
const CREDIT_STEP: u64 = 64 << 10;

async fn run(queue: &RedisQueue, jobs: &[Job]) -> Vec<JobResult> {
    wait::enqueue_and_await(queue, jobs, Duration::from_secs(120)).await;
    wait::results(queue, jobs.iter().map(|j| &j.id)).await
}

#[test]
fn results_are_counted_from_credit_within_one_step() {
    let fleet = Fleet::start("qcredit");
    let Fleet { rt, queue, .. } = &fleet;
    let module = fleet.put_module(NOOP.as_bytes());
    let _worker = fleet.worker("w1", &["--concurrency", "4"]);
    let jobs: Vec<Job> = (0..300)
        .map(|_| {
            let mut job = Job::new(module, JobInput::Inline(Vec::new()));
            job.tenant = TenantId("counted".to_owned());
            job
        })
        .collect();
    let results = rt.block_on(run(queue, &jobs));
    let mut stored = 0;
    for result in &results {
        assert_eq!(result.outcome.kind(), OutcomeKind::Success, "{result:?}");
        stored += result.stderr.len() as u64 + RESULT_OVERHEAD;
    }
    let used = match rt
        .block_on(queue.admission().reserve_stored("counted", 0, u64::MAX))
        .unwrap()
    {
        Reservation::Granted { used, .. } => used,
        other => panic!("a read of the usage was refused: {other:?}"),
    };
    assert!(used >= stored, "counted {used} < stored {stored}");
    assert!(
        used <= stored + CREDIT_STEP,
        "counted {used} runs ahead of stored {stored} by more than one step"
    );
}
