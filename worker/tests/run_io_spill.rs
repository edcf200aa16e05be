//! `Sandbox::run_io` with a spill-buffered output (`JobWriter::Spill`, what the fleet
//! runs): an output within the bound comes back inline and never reaches the writer;
//! one past it goes to the writer whole and in order; the output cap and a writer that
//! stalls after the spill end the job as before (`output_limit`, `timeout`).

mod common;

use std::sync::Arc;

use common::{Captured, StalledSink, guest};
use sluice_shared::{Job, JobInput, JobOutput, JobResult, Limits, Outcome};
use sluice_worker::{JobReader, JobWriter, LoadedModule, Sandbox, SandboxConfig};

fn job(module: &LoadedModule, max_output_bytes: u64, timeout_ms: u64) -> Job {
    let mut job = Job::new(module.hash(), JobInput::Inline(Vec::new()));
    job.limits = Limits {
        timeout_ms,
        max_output_bytes,
        ..Limits::default()
    };
    job
}

fn uppercase() -> (Sandbox, Arc<LoadedModule>) {
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let module = sandbox
        .load_module(&guest("uppercase.wasm"))
        .expect("loads");
    (sandbox, module)
}

fn input(len: usize) -> Vec<u8> {
    b"spill me, pool slot! "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// `job` over `input` with its output kept up to `keep` bytes, then sent to `then`.
fn run_spill(
    sandbox: &Sandbox,
    module: &LoadedModule,
    job: &Job,
    input: Vec<u8>,
    keep: usize,
    then: Box<dyn std::io::Write + Send>,
) -> JobResult {
    sandbox.run_io(
        module,
        job,
        JobReader::Memory(input.into()),
        JobWriter::Spill { keep, then },
    )
}

#[test]
fn an_output_within_the_bound_comes_back_inline_and_one_past_it_goes_to_the_writer() {
    let (sandbox, module) = uppercase();
    let job = job(&module, 1 << 20, 5_000);
    let data = input(10_000);
    let upper = data.to_ascii_uppercase();

    // Exactly the bound: inline, the writer never touched.
    let writer = Captured::default();
    let result = run_spill(
        &sandbox,
        &module,
        &job,
        data.clone(),
        10_000,
        Box::new(writer.clone()),
    );
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert!(
        matches!(&result.output, JobOutput::Inline(bytes) if *bytes == upper),
        "{:?}",
        result.output
    );
    assert!(
        writer.bytes().is_empty(),
        "an output within the bound never reaches the writer"
    );
    assert_eq!(result.stats.output_bytes, 10_000);

    // One byte under the output: spilled, every byte at the writer in order.
    let writer = Captured::default();
    let result = run_spill(
        &sandbox,
        &module,
        &job,
        data,
        9_999,
        Box::new(writer.clone()),
    );
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert_eq!(result.output, JobOutput::Written);
    assert!(
        writer.bytes() == upper,
        "the spilled output differs from the guest's"
    );
    assert_eq!(result.stats.output_bytes, 10_000);
}

#[test]
fn the_output_cap_ends_the_job_as_output_limit_either_side_of_the_bound() {
    let (sandbox, module) = uppercase();
    let upper = input(10_000).to_ascii_uppercase();
    for keep in [100, 1 << 20] {
        let job = job(&module, 1_000, 5_000);
        let writer = Captured::default();
        let result = run_spill(
            &sandbox,
            &module,
            &job,
            input(10_000),
            keep,
            Box::new(writer.clone()),
        );
        assert_eq!(
            result.outcome.kind(),
            sluice_shared::OutcomeKind::OutputLimit,
            "keep {keep}: {result:?}"
        );
        assert_eq!(result.stats.output_bytes, 1_000, "keep {keep}");
        // The cap hit in memory sends nothing on; hit after the spill, the writer has
        // exactly the bytes under the cap (the sandbox flushes it before it returns).
        let sent = writer.bytes();
        if keep >= 1_000 {
            assert!(sent.is_empty(), "keep {keep}: {} bytes sent", sent.len());
        } else {
            assert_eq!(sent.len(), 1_000, "keep {keep}");
            assert!(sent == upper[..1_000], "keep {keep}: the bytes sent differ");
        }
    }
}

#[test]
fn a_writer_stalled_after_the_spill_times_the_job_out() {
    let (sandbox, module) = uppercase();
    let job = job(&module, 1 << 20, 300);
    let (release, never) = std::sync::mpsc::channel::<()>();
    let result = run_spill(
        &sandbox,
        &module,
        &job,
        input(1 << 20),
        4096,
        Box::new(StalledSink(never)),
    );
    assert_eq!(result.outcome, Outcome::Timeout, "{result:?}");
    // The sandbox runs the next job while the old helper is still stuck, and that job
    // spills too (keep 10 < 100 bytes), so it needs a helper of its own.
    let writer = Captured::default();
    let next = run_spill(
        &sandbox,
        &module,
        &job,
        input(100),
        10,
        Box::new(writer.clone()),
    );
    assert_eq!(next.outcome, Outcome::Success, "{next:?}");
    assert_eq!(next.output, JobOutput::Written);
    assert!(
        writer.bytes() == input(100).to_ascii_uppercase(),
        "the next job's spilled output differs from the guest's"
    );
    // Only now is the stuck helper let go.
    drop(release);
}
