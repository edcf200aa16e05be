//! A fleet worker under tight compile limits: a module built to make the compiler work
//! hard ends as `invalid_module` naming the limit, is not compiled again, the worker's
//! memory stays bounded, and it runs the next job.

use std::time::Duration;

use sluice_shared::{Job, JobInput, JobOutput, Outcome, OutcomeKind};
use sluice_tests::{Fleet, guest, wait};

/// How long a test waits for its jobs to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(120);

/// The worker's own compile_limits module: 57 KB that takes Cranelift over a minute
/// and more than a gigabyte.
fn hard_to_compile() -> Vec<u8> {
    sluice_tests::wasm_gen::hard_to_compile(1000, 1000, 4)
}

#[test]
fn a_worker_with_tight_compile_limits_survives_a_hostile_module_and_runs_the_next_job() {
    let fleet = Fleet::start("compile");
    let mut worker = fleet.worker("w0", &["--concurrency", "2", "--compile-memory", "256MiB"]);
    let hostile = fleet.put_module(&hard_to_compile());
    let good = fleet.put_module(&std::fs::read(guest("uppercase.wasm")).unwrap());

    // Three jobs of the hostile module: the first compile breaks the memory limit, the
    // others find it remembered.
    let hostile_jobs: Vec<Job> = (0..3)
        .map(|_| Job::new(hostile, JobInput::Inline(Vec::new())))
        .collect();
    let finished = fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        &hostile_jobs,
        FINISH_WITHIN,
    ));
    assert!(
        finished
            .values()
            .all(|kind| *kind == OutcomeKind::InvalidModule),
        "{finished:?}"
    );
    let results = fleet.rt.block_on(wait::results(
        &fleet.queue,
        hostile_jobs.iter().map(|j| &j.id),
    ));
    for result in &results {
        match &result.outcome {
            Outcome::InvalidModule { reason } => {
                assert!(reason.contains("memory limit"), "{reason}")
            }
            other => panic!("expected invalid_module, got {other}"),
        }
    }

    // The next job runs, on the same worker.
    let next = Job::new(good, JobInput::Inline(b"still alive".to_vec()));
    let finished = fleet.rt.block_on(wait::enqueue_and_await(
        &fleet.queue,
        std::slice::from_ref(&next),
        FINISH_WITHIN,
    ));
    assert_eq!(finished[&next.id], OutcomeKind::Success);
    let result = &fleet.rt.block_on(wait::results(&fleet.queue, [&next.id]))[0];
    assert_eq!(result.output, JobOutput::Inline(b"STILL ALIVE".to_vec()));
    assert!(worker.is_running());
    // The compiler needed more than 256 MiB; the worker, which only fed it, did not.
    let peak = worker.peak_rss_bytes();
    assert!(peak < 400 << 20, "worker peak RSS {peak} bytes");
}
