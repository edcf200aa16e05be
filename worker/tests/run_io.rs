//! `Sandbox::run_io` with an input in memory and the output collected in memory (both
//! on the guest's thread, no helper-thread hand-off) gives the same results as
//! `Sandbox::run`: the output, the byte counts, the output cap, the outcome of a guest
//! that floods its stdout, traps after some output, or spins; and the raw ABI.

mod common;

use std::sync::Arc;

use common::{Captured, guest};
use sluice_shared::{EntryPoint, Job, JobInput, JobOutput, JobResult, Limits, Outcome};
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

/// `job` over `input` in memory, output in memory: the result and the output bytes.
fn run_in_memory(
    sandbox: &Sandbox,
    module: &LoadedModule,
    job: &Job,
    input: Vec<u8>,
) -> (JobResult, Vec<u8>) {
    let result = sandbox.run_io(
        module,
        job,
        JobReader::Memory(input.into()),
        JobWriter::Memory,
    );
    let output = match &result.output {
        JobOutput::Inline(bytes) => bytes.clone(),
        other => panic!("in-memory output comes back inline, got {other:?}"),
    };
    (result, output)
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
    let (memory, memory_out) = run_in_memory(&sandbox, &module, &job, input.clone());
    let streamed_out = Captured::default();
    let streamed = sandbox.run(
        &module,
        &job,
        Box::new(std::io::Cursor::new(input.clone())),
        Box::new(streamed_out.clone()),
    );
    assert_eq!(memory.outcome, Outcome::Success, "{}", memory.outcome);
    assert_eq!(streamed.outcome, Outcome::Success, "{}", streamed.outcome);
    assert_eq!(memory_out, input.to_ascii_uppercase());
    assert_eq!(memory_out, streamed_out.bytes());
    assert_eq!(memory.stats.input_bytes, input.len() as u64);
    assert_eq!(memory.stats.output_bytes, input.len() as u64);
}

#[test]
fn in_memory_output_still_enforces_the_output_cap() {
    let sandbox = sandbox();
    let module = load(&sandbox, "uppercase.wasm");
    let (result, out) = run_in_memory(&sandbox, &module, &job(&module, 100), vec![b'a'; 10_000]);
    assert_eq!(result.outcome, Outcome::OutputLimit { limit: 100 });
    assert_eq!(out, vec![b'A'; 100], "exactly the bytes up to the cap");
    assert_eq!(result.stats.output_bytes, 100);
}

#[test]
fn a_guest_flooding_in_memory_output_ends_at_the_cap() {
    let sandbox = sandbox();
    let module = load(&sandbox, "stdout_flood.wasm");
    let (result, out) = run_in_memory(&sandbox, &module, &job(&module, 1 << 20), Vec::new());
    assert_eq!(result.outcome, Outcome::OutputLimit { limit: 1 << 20 });
    assert_eq!(out.len(), 1 << 20);
    assert_eq!(result.stats.output_bytes, 1 << 20);
}

/// A guest that writes "partial" to stdout, then traps.
const TRAPS_AFTER_OUTPUT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "partial")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 7))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
    unreachable))"#;

#[test]
fn a_trap_after_some_output_keeps_that_output() {
    let sandbox = sandbox();
    let module = sandbox
        .load_module(TRAPS_AFTER_OUTPUT.as_bytes())
        .expect("loads");
    let (result, out) = run_in_memory(&sandbox, &module, &job(&module, 1 << 20), Vec::new());
    assert!(
        matches!(&result.outcome, Outcome::Trap { code, .. } if code == "unreachable_code_reached"),
        "{:?}",
        result.outcome
    );
    assert_eq!(out, b"partial");
    assert_eq!(result.stats.output_bytes, out.len() as u64);
}

#[test]
fn a_spinning_guest_with_in_memory_io_times_out() {
    let sandbox = sandbox();
    let module = load(&sandbox, "infinite_loop.wat");
    let mut job = job(&module, 1 << 20);
    job.limits.timeout_ms = 200;
    let (result, out) = run_in_memory(&sandbox, &module, &job, b"input".to_vec());
    assert_eq!(result.outcome, Outcome::Timeout);
    assert!(out.is_empty());
}

#[test]
fn a_raw_abi_guest_reads_and_writes_memory() {
    let sandbox = Sandbox::new(SandboxConfig {
        raw_chunk_bytes: 7,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let module = load(&sandbox, "upper_raw.wat");
    let mut job = job(&module, 1 << 20);
    job.entry = module.default_entry(&sandbox);
    assert_eq!(
        job.entry,
        EntryPoint::Raw {
            export: "process".into()
        }
    );
    let input = b"raw abi over an input in memory, several chunks".to_vec();
    let (result, out) = run_in_memory(&sandbox, &module, &job, input.clone());
    assert_eq!(result.outcome, Outcome::Success, "{}", result.outcome);
    assert_eq!(out, input.to_ascii_uppercase());
    assert_eq!(result.stats.input_bytes, input.len() as u64);
    assert_eq!(result.stats.output_bytes, input.len() as u64);
}
