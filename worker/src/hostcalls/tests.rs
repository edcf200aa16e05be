//! The shadowed p1 calls give a guest exactly what wasmtime-wasi's own give it: one
//! guest makes each shadowed call (ready at once, failing, faulting, and, with a
//! granted directory, finished on tokio's blocking pool after a first poll that is not
//! ready) and writes every errno and result to stdout; its bytes and outcome must be
//! the same under wasmtime-wasi's linker and the sandbox's, with and without a Tokio
//! runtime on the calling thread.

use std::time::{Duration, Instant};

use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{Grants, shadow_p1_calls};
use crate::limiter::GuestLimiter;
use crate::sandbox::StoreState;

/// Makes each shadowed call, storing its errno (and what it returned) as the `i32`s of
/// a record at 512, then writes memory 256..600 (read data, file data, the record) to
/// stdout.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_pread" (func $pread (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovecs: two stdin reads into 256 and 260, the data written back, a file read
  ;; into 300, the record, a pread into 320
  (data (i32.const 0) "\00\01\00\00\04\00\00\00\04\01\00\00\04\00\00\00")
  (data (i32.const 64) "\00\01\00\00\58\01\00\00")
  (data (i32.const 72) "\00\01\00\00\08\00\00\00")
  (data (i32.const 80) "\2c\01\00\00\10\00\00\00")
  ;; the opened fd; 42 (no such fd) while path_open has not given one
  (data (i32.const 88) "\2a\00\00\00")
  (data (i32.const 96) "in.txt")
  (data (i32.const 104) "\40\01\00\00\02\00\00\00")
  (func $put (param $k i32) (param $v i32)
    (i32.store (i32.add (i32.const 512) (i32.mul (local.get $k) (i32.const 4))) (local.get $v)))
  (func (export "_start")
    (call $put (i32.const 0) (call $fdstat (i32.const 1) (i32.const 16)))
    (call $put (i32.const 1) (i32.load8_u (i32.const 16)))
    (call $put (i32.const 2) (i32.load16_u (i32.const 18)))
    (call $put (i32.const 3) (i32.wrap_i64 (i64.load (i32.const 24))))
    (call $put (i32.const 4) (call $fdstat (i32.const 42) (i32.const 16)))
    (call $put (i32.const 5) (call $seek (i32.const 0) (i64.const 0) (i32.const 1) (i32.const 48)))
    (call $put (i32.const 6) (call $seek (i32.const 42) (i64.const 0) (i32.const 0) (i32.const 48)))
    (call $put (i32.const 7) (call $read (i32.const 0) (i32.const 0) (i32.const 2) (i32.const 40)))
    (call $put (i32.const 8) (i32.load (i32.const 40)))
    (call $put (i32.const 10) (call $write (i32.const 1) (i32.const 72) (i32.const 1) (i32.const 40)))
    (call $put (i32.const 11) (i32.load (i32.const 40)))
    (call $put (i32.const 12) (call $close (i32.const 42)))
    (call $put (i32.const 13) (call $open (i32.const 3) (i32.const 0) (i32.const 96) (i32.const 6)
      (i32.const 0) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 88)))
    (call $put (i32.const 14) (call $read (i32.load (i32.const 88)) (i32.const 80) (i32.const 1) (i32.const 40)))
    (call $put (i32.const 15) (i32.load (i32.const 40)))
    (call $put (i32.const 16) (call $pread (i32.load (i32.const 88)) (i32.const 104) (i32.const 1)
      (i64.const 1) (i32.const 40)))
    (call $put (i32.const 17) (i32.load (i32.const 40)))
    (call $put (i32.const 18) (call $close (i32.load (i32.const 88))))
    (call $put (i32.const 19) (call $close (i32.const 0)))
    (call $put (i32.const 20) (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 40)))
    (drop (call $write (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 40)))))"#;

/// Hands `fd_write` iovecs past the end of memory: wasmtime-wasi traps.
const FAULT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $write (i32.const 1) (i32.const 65528) (i32.const 2) (i32.const 40)))))"#;

/// Which linker serves the guest.
#[derive(Clone, Copy, Debug)]
enum Calls {
    /// wasmtime-wasi's `add_to_linker_sync` alone.
    WasmtimeWasi,
    /// With the sandbox's shadows.
    Shadowed(Grants),
}

fn linker(engine: &Engine, calls: Calls) -> Linker<StoreState> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut StoreState| &mut state.wasi)
        .expect("wasmtime-wasi's calls");
    if let Calls::Shadowed(grants) = calls {
        shadow_p1_calls(&mut linker, grants).expect("shadows");
    }
    linker
}

/// The guest's outcome (`ok` or the error) and stdout. With `dir`, the directory is
/// granted as fd 3 and file I/O goes to tokio's blocking pool, as the sandbox sets it.
fn run(
    engine: &Engine,
    module: &Module,
    calls: Calls,
    dir: Option<&std::path::Path>,
) -> (String, Vec<u8>) {
    let stdout = MemoryOutputPipe::new(1 << 16);
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(MemoryInputPipe::new(&b"abcdefghij"[..]))
        .stdout(stdout.clone())
        .allow_blocking_current_thread(dir.is_none());
    if let Some(dir) = dir {
        wasi.preopened_dir(dir, "/data", FsPerms::ReadWrite)
            .expect("preopen");
    }
    let now = Instant::now();
    let mut store = Store::new(
        engine,
        StoreState {
            wasi: wasi.build_p1(),
            limiter: GuestLimiter::new(1 << 20, 1 << 10),
            deadline: now + Duration::from_secs(60),
            job_start: now,
        },
    );
    let linker = linker(engine, calls);
    let outcome = linker
        .instantiate(&mut store, module)
        .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
        .and_then(|start| start.call(&mut store, ()));
    let outcome = match outcome {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    (outcome, stdout.contents().to_vec())
}

/// The `k`th `i32` of the record (after the 8 data bytes written first).
fn record(stdout: &[u8], k: usize) -> i32 {
    let at = 8 + (512 - 256) + 4 * k;
    i32::from_le_bytes(stdout[at..at + 4].try_into().expect("4 bytes"))
}

/// Runs every combination on the calling thread; asserts they agree and returns
/// wasmtime-wasi's (no grant, granted directory).
fn agree() -> ((String, Vec<u8>), (String, Vec<u8>)) {
    let engine = Engine::default();
    let fault = Module::new(&engine, FAULT).expect("fault guest compiles");
    let (trap, _) = run(&engine, &fault, Calls::WasmtimeWasi, None);
    assert!(trap.contains("out of bounds"), "{trap}");
    for grants in [Grants::None, Grants::Some] {
        let (shadowed, _) = run(&engine, &fault, Calls::Shadowed(grants), None);
        assert_eq!(shadowed, trap, "the same trap, shadows for {grants:?}");
    }
    let module = Module::new(&engine, GUEST).expect("guest compiles");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("in.txt"), b"file data").expect("file");

    let plain = run(&engine, &module, Calls::WasmtimeWasi, None);
    for grants in [Grants::None, Grants::Some] {
        let shadowed = run(&engine, &module, Calls::Shadowed(grants), None);
        assert_eq!(shadowed, plain, "no grant, shadows for {grants:?}");
    }
    let granted = run(&engine, &module, Calls::WasmtimeWasi, Some(dir.path()));
    let shadowed = run(
        &engine,
        &module,
        Calls::Shadowed(Grants::Some),
        Some(dir.path()),
    );
    assert_eq!(shadowed, granted, "granted directory");
    (plain, granted)
}

fn check(plain: &(String, Vec<u8>), granted: &(String, Vec<u8>)) {
    let badf = 8;
    for (outcome, stdout) in [plain, granted] {
        assert_eq!(outcome, "ok");
        // wasmtime-wasi's p1 reads into the first non-empty iovec only.
        assert_eq!(
            &stdout[..8],
            b"abcd\0\0\0\0",
            "stdin read back through stdout"
        );
        assert_eq!(record(stdout, 0), 0, "fd_fdstat_get(stdout)");
        assert_eq!(record(stdout, 4), badf, "fd_fdstat_get(42)");
        assert_eq!(record(stdout, 6), badf, "fd_seek(42)");
        assert_eq!(
            (record(stdout, 7), record(stdout, 8)),
            (0, 4),
            "fd_read(stdin)"
        );
        assert_eq!((record(stdout, 10), record(stdout, 11)), (0, 8), "fd_write");
        assert_eq!(record(stdout, 12), badf, "fd_close(42)");
        assert_eq!(record(stdout, 19), 0, "fd_close(stdin)");
        assert_eq!(record(stdout, 20), badf, "fd_read after closing stdin");
    }
    let (_, plain) = plain;
    assert_eq!(record(plain, 13), badf, "path_open without a grant");
    let (_, granted) = granted;
    assert_eq!(record(granted, 13), 0, "path_open in the granted directory");
    assert_eq!(
        (record(granted, 14), record(granted, 15)),
        (0, 9),
        "fd_read(file)"
    );
    assert_eq!(&granted[8 + 44..8 + 53], b"file data");
    assert_eq!(
        (record(granted, 16), record(granted, 17)),
        (0, 2),
        "fd_pread(file, 1)"
    );
    assert_eq!(&granted[8 + 64..8 + 66], b"il");
    assert_eq!(record(granted, 18), 0, "fd_close(file)");
}

#[test]
fn shadowed_calls_match_wasmtime_wasi_without_a_runtime() {
    let (plain, granted) = agree();
    check(&plain, &granted);
}

#[test]
fn shadowed_calls_match_wasmtime_wasi_on_a_runtime_blocking_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (plain, granted) = runtime
        .block_on(runtime.spawn_blocking(agree))
        .expect("joins");
    check(&plain, &granted);
}
