//! Helpers for the worker's integration tests: guest paths and a capturing runner.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sluice_shared::{Job, JobInput, JobResult, Limits};
use sluice_worker::Sandbox;

/// A `.wat` guest from `tests/guests/` or a built `.wasm` from `tests/guests/build/`
/// or `examples/build/`.
pub fn guest(name: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        root.join("tests/guests").join(name),
        root.join("tests/guests/build").join(name),
        root.join("examples/build").join(name),
        root.join("examples/raw").join(name),
    ];
    for path in &candidates {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes;
        }
    }
    panic!("guest {name} not found (C guests are built by `bash scripts/setup`)");
}

/// A `Write` whose bytes the test can read afterwards.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Every byte written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that never delivers: each read waits until the test drops the sender
/// (standing in for a Redis blob that stopped arriving, or a silent pipe).
pub struct Stalled(pub std::sync::mpsc::Receiver<()>);

impl std::io::Read for Stalled {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        let _ = self.0.recv();
        Ok(0)
    }
}

/// A writer that never takes a byte, until the test drops the sender.
pub struct StalledSink(pub std::sync::mpsc::Receiver<()>);

impl Write for StalledSink {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.recv();
        Err(std::io::Error::other("released"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Loads `module` and runs it with `input` as its reader and `output` as its writer;
/// returns the result. A module the sandbox refuses comes back as a result without a
/// run.
pub fn run_with(
    sandbox: &Sandbox,
    module: &[u8],
    input: Box<dyn std::io::Read + Send>,
    output: Box<dyn Write + Send>,
    tweak: impl FnOnce(&mut Job),
) -> JobResult {
    run_job(sandbox, module, Vec::new(), input, output, tweak)
}

/// Loads `module` and runs it over `input` with `limits`; returns the result and the
/// output. A module the sandbox refuses comes back as a result without a run.
pub fn run(
    sandbox: &Sandbox,
    module: &[u8],
    input: &[u8],
    tweak: impl FnOnce(&mut Job),
) -> (JobResult, Vec<u8>) {
    let output = Captured::default();
    let result = run_job(
        sandbox,
        module,
        input.to_vec(),
        Box::new(std::io::Cursor::new(input.to_vec())),
        Box::new(output.clone()),
        tweak,
    );
    (result, output.bytes())
}

/// Loads `module` and runs a job of it (inline input `job_input`, the module's default
/// entry point, a 5 s deadline, then `tweak`) over `input` and `output`. A module the
/// sandbox refuses comes back as a result without a run.
fn run_job(
    sandbox: &Sandbox,
    module: &[u8],
    job_input: Vec<u8>,
    input: Box<dyn std::io::Read + Send>,
    output: Box<dyn Write + Send>,
    tweak: impl FnOnce(&mut Job),
) -> JobResult {
    let loaded = match sandbox.load_module(module) {
        Ok(loaded) => loaded,
        Err(outcome) => {
            let job = Job::new(
                sluice_shared::ModuleHash::of(module),
                JobInput::Inline(vec![]),
            );
            return JobResult::without_run(job.id, outcome, 1);
        }
    };
    let mut job = Job::new(loaded.hash(), JobInput::Inline(job_input));
    job.entry = loaded.default_entry(sandbox);
    job.limits = Limits {
        timeout_ms: 5_000,
        ..Limits::default()
    };
    tweak(&mut job);
    sandbox.run(&loaded, &job, input, output)
}

/// Reads one chunk of stdin (one `fd_read`) and writes it back.
pub const ECHO_ONE_READ: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
