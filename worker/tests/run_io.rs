//! `Sandbox::run_io` with an input in memory and a sink written on the guest's thread
//! (no helper-thread hand-off) gives the same results as `Sandbox::run`: the output, the
//! byte counts, the output cap, and the outcome of a guest that floods its stdout.

mod common;

use std::sync::Arc;

use common::{Captured, guest};
use sluice_shared::{Job, JobInput, Limits, Outcome};
use sluice_worker::{JobReader, JobWriter, LoadedModule, Sandbox, SandboxConfig};

fn job(module: &LoadedModule, max_output_bytes: u64) -> Job {
    let mut job = Job::new(module.hash(), JobInput::Inline(Vec::new()));
    job.limits = Limits {
        timeout_ms: 5_000,
        max_output_bytes,
        ..Limits::default()
    };
    job
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("sandbox")
}

fn load(sandbox: &Sandbox, name: &str) -> Arc<LoadedModule> {
    sandbox.load_module(&guest(name)).expect("loads")
}

#[test]
fn in_memory_io_gives_what_streamed_io_gives() {
    let sandbox = sandbox();
    let module = load(&sandbox, "uppercase.wasm");
    let input: Vec<u8> = b"Hello, pool slot! "
        .iter()
        .copied()
        .cycle()
        .take(10_000)
        .collect();
    let job = job(&module, 1 << 20);
    let memory_out = Captured::default();
    let memory = sandbox.run_io(
        &module,
        &job,
        JobReader::Memory(input.clone().into()),
        JobWriter::Direct(Box::new(memory_out.clone())),
    );
    let streamed_out = Captured::default();
    let streamed = sandbox.run(
        &module,
        &job,
        Box::new(std::io::Cursor::new(input.clone())),
        Box::new(streamed_out.clone()),
    );
    assert_eq!(memory.outcome, Outcome::Success, "{}", memory.outcome);
    assert_eq!(streamed.outcome, Outcome::Success, "{}", streamed.outcome);
    assert_eq!(memory_out.bytes(), input.to_ascii_uppercase());
    assert_eq!(memory_out.bytes(), streamed_out.bytes());
    assert_eq!(memory.stats.input_bytes, input.len() as u64);
    assert_eq!(memory.stats.output_bytes, input.len() as u64);
}

#[test]
fn a_direct_sink_still_enforces_the_output_cap() {
    let sandbox = sandbox();
    let module = load(&sandbox, "uppercase.wasm");
    let out = Captured::default();
    let result = sandbox.run_io(
        &module,
        &job(&module, 100),
        JobReader::Memory(vec![b'a'; 10_000].into()),
        JobWriter::Direct(Box::new(out.clone())),
    );
    assert_eq!(result.outcome, Outcome::OutputLimit { limit: 100 });
    assert!(
        out.bytes().len() <= 100,
        "{} bytes written",
        out.bytes().len()
    );
}

#[test]
fn a_guest_flooding_a_direct_sink_ends_at_the_cap() {
    let sandbox = sandbox();
    let module = load(&sandbox, "stdout_flood.wasm");
    let out = Captured::default();
    let result = sandbox.run_io(
        &module,
        &job(&module, 1 << 20),
        JobReader::Memory(Vec::new().into()),
        JobWriter::Direct(Box::new(out.clone())),
    );
    assert_eq!(result.outcome, Outcome::OutputLimit { limit: 1 << 20 });
    assert!(out.bytes().len() <= 1 << 20);
}
