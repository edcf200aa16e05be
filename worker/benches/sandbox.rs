//! Sandbox figures for `docs/benchmarks.md`: `cargo bench -p sluice-worker --bench sandbox`.
//!
//! Each Sluice figure stands beside a bare-wasmtime baseline built with the same engine
//! settings, so the ratio is what Sluice's own machinery (limits, streams, outcome
//! classification) costs:
//! 1. a no-op job's instantiate-and-run on one thread (and on two);
//! 2. fuel metering and epoch interruption on a compute loop, against neither;
//! 3. streaming the uppercase filter over 256 MiB (WASI and raw ABI), with peak RSS;
//! 4. a real wasi-libc C guest per job (uppercase over 4 KiB) under each pooling
//!    setting, CPU time and kernel share per job, and the resident memory per pool slot
//!    each setting costs (`real_guest.rs`).
//!
//! Every run starts with the issue-13 summary: per job on one thread, bare wasmtime with
//! pooling as wasmtime 48 sets it by default, bare wasmtime with the chosen settings and
//! the sandbox with them (input in memory; output in memory, and streamed as the fleet
//! streams it now), for the no-op module, the C uppercase guest at 4 KiB and an echo
//! with 1.06 MiB of initial memory, with the kernel share and the bytes kept resident
//! per slot (`summary.rs`).
//!
//! `cargo bench -p sluice-worker --bench sandbox -- summary` runs only the summary;
//! `cargo bench -p sluice-worker --bench sandbox -- real` the summary and the fourth;
//! `-- keep-resident` runs only the price of each memory keep-resident size
//! (`keep_resident.rs`); `-- --profile sluice-chosen` (or `sluice-default`,
//! `bare-keep-resident`, …) runs one loop of it for `perf record`.

/// The allocator `sluice-worker` runs with (worker/src/main.rs), so bare and Sluice rows
/// alike measure what a worker's run threads pay.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::{EntryPoint, Job, JobInput, Limits};
use sluice_worker::{Sandbox, SandboxConfig};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{InputFile, OutputFile};
use wasmtime_wasi::p1::WasiP1Ctx;

#[path = "sandbox/keep_resident.rs"]
mod keep_resident;
#[path = "sandbox/procfs.rs"]
mod procfs;
#[path = "sandbox/real_guest.rs"]
mod real_guest;
#[path = "sandbox/summary.rs"]
mod summary;

fn guest(name: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["tests/guests", "examples/build", "examples/raw"] {
        if let Ok(bytes) = std::fs::read(root.join(dir).join(name)) {
            return bytes;
        }
    }
    panic!("{name} not found: run `bash scripts/setup` first");
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// The bare baseline's engine: the same pooling (with the resident memory and tables
/// the sandbox keeps), copy-on-write and epoch settings as the sandbox's unmetered
/// engine.
fn bare_engine(fuel: bool, epochs: bool) -> Engine {
    let defaults = SandboxConfig::default();
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(16)
        .total_memories(16)
        .total_tables(64)
        .max_memory_size(4 << 30)
        .decommit_batch_size(1)
        .linear_memory_keep_resident(defaults.memory_keep_resident_bytes as usize)
        .table_keep_resident(defaults.table_keep_resident_bytes as usize)
        .pagemap_scan(if defaults.pagemap_scan {
            wasmtime::Enabled::Auto
        } else {
            wasmtime::Enabled::No
        });
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .epoch_interruption(epochs)
        .consume_fuel(fuel);
    Engine::new(&config).unwrap()
}

fn bare_store(engine: &Engine, wasi: WasiP1Ctx, fuel: bool, epochs: bool) -> Store<WasiP1Ctx> {
    let mut store = Store::new(engine, wasi);
    if fuel {
        store.set_fuel(u64::MAX).unwrap();
    }
    if epochs {
        store.set_epoch_deadline(u64::MAX / 2);
    }
    store
}

fn job(entry: EntryPoint, limits: Limits) -> Job {
    let mut job = Job::new(
        sluice_shared::ModuleHash::of(b""),
        JobInput::Inline(Vec::new()),
    );
    job.entry = entry;
    job.limits = limits;
    job
}

fn per_job_us(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed().as_secs_f64() * 1e6 / iterations as f64
}

fn noop(sandbox: &Arc<Sandbox>) {
    const N: u32 = 20_000;
    let wasm = guest("noop.wat");
    let engine = bare_engine(false, true);
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut WasiP1Ctx| s).unwrap();
    let pre = linker
        .instantiate_pre(&Module::new(&engine, &wasm).unwrap())
        .unwrap();
    let bare = per_job_us(N, || {
        let mut store = bare_store(&engine, WasiCtxBuilder::new().build_p1(), false, true);
        let instance = pre.instantiate(&mut store).unwrap();
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .unwrap();
        start.call(&mut store, ()).unwrap();
    });

    let module = sandbox.load_module(&wasm).unwrap();
    let noop_job = job(EntryPoint::Command, Limits::default());
    let sluice = per_job_us(N, || {
        let result = sandbox.run(
            &module,
            &noop_job,
            Box::new(std::io::empty()),
            Box::new(std::io::sink()),
        );
        assert!(result.outcome.is_success());
    });
    let metered_job = job(
        EntryPoint::Command,
        Limits {
            fuel: Some(1_000_000),
            ..Limits::default()
        },
    );
    let metered = per_job_us(N, || {
        let result = sandbox.run(
            &module,
            &metered_job,
            Box::new(std::io::empty()),
            Box::new(std::io::sink()),
        );
        assert!(result.outcome.is_success());
    });

    // Two threads, each its own loop over the shared sandbox.
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (sandbox, module, job) = (sandbox.clone(), module.clone(), noop_job.clone());
            std::thread::spawn(move || {
                for _ in 0..N {
                    sandbox.run(
                        &module,
                        &job,
                        Box::new(std::io::empty()),
                        Box::new(std::io::sink()),
                    );
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let two_threads = 2.0 * N as f64 / started.elapsed().as_secs_f64();

    println!("## no-op job: instantiate + run, one thread ({N} jobs)");
    println!("| configuration | µs/job | jobs/s |");
    println!("| --- | --- | --- |");
    println!(
        "| bare wasmtime (pooling, InstancePre, WASI ctx, epochs) | {bare:.2} | {:.0} |",
        1e6 / bare
    );
    println!(
        "| sluice Sandbox::run (unmetered) | {sluice:.2} | {:.0} |",
        1e6 / sluice
    );
    println!(
        "| sluice Sandbox::run (fuel) | {metered:.2} | {:.0} |",
        1e6 / metered
    );
    println!("| sluice, 2 threads | — | {two_threads:.0} |");
    println!("ratio sluice/bare: {:.2}x (target ≤ 1.5x)\n", sluice / bare);
}

/// Recursive fib(30): call-heavy, where fuel's per-call bookkeeping shows most.
const FIB: &str = r#"(module
  (func $fib (param $n i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
      (then (local.get $n))
      (else (i32.add (call $fib (i32.sub (local.get $n) (i32.const 1)))
                     (call $fib (i32.sub (local.get $n) (i32.const 2)))))))
  (memory (export "memory") 1)
  (func (export "_start") (i32.store (i32.const 0) (call $fib (i32.const 30)))))"#;

/// Byte-wise sum over 1 MiB of memory, 64 times: a load-heavy loop.
const MEMSUM: &str = r#"(module
  (memory (export "memory") 16)
  (func (export "_start")
    (local $round i32) (local $i i32) (local $sum i32)
    (local.set $round (i32.const 64))
    (loop $rounds
      (local.set $i (i32.const 0))
      (loop $bytes
        (local.set $sum (i32.add (local.get $sum) (i32.load8_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $bytes (i32.lt_u (local.get $i) (i32.const 1048576))))
      (local.set $round (i32.sub (local.get $round) (i32.const 1)))
      (br_if $rounds (local.get $round)))
    (i32.store (i32.const 0) (local.get $sum))))"#;

fn compute() {
    println!("## interruption overhead on compute, bare wasmtime (best of 5, ms)");
    println!("| workload | neither | epochs | fuel | fuel + epochs |");
    println!("| --- | --- | --- | --- | --- |");
    let workloads = [
        (
            "LCG loop, 50M iterations (compute_loop.wat)",
            guest("compute_loop.wat"),
        ),
        ("recursive fib(30)", FIB.as_bytes().to_vec()),
        ("byte-wise sum over 64 MiB", MEMSUM.as_bytes().to_vec()),
    ];
    for (label, wasm) in workloads {
        let mut cells = Vec::new();
        let mut baseline = None;
        for (fuel, epochs) in [(false, false), (false, true), (true, false), (true, true)] {
            let engine = bare_engine(fuel, epochs);
            let linker = Linker::<WasiP1Ctx>::new(&engine);
            let pre = linker
                .instantiate_pre(&Module::new(&engine, &wasm).unwrap())
                .unwrap();
            let mut best = Duration::MAX;
            for _ in 0..5 {
                let mut store = bare_store(&engine, WasiCtxBuilder::new().build_p1(), fuel, epochs);
                let started = Instant::now();
                let instance = pre.instantiate(&mut store).unwrap();
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .unwrap();
                start.call(&mut store, ()).unwrap();
                best = best.min(started.elapsed());
            }
            let ms = best.as_secs_f64() * 1e3;
            let base = *baseline.get_or_insert(ms);
            cells.push(if fuel || epochs {
                format!("{ms:.1} ({:+.0}%)", (ms / base - 1.0) * 100.0)
            } else {
                format!("{ms:.1}")
            });
        }
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!();
}

/// An endless, cheap input: a repeated line of mixed-case text.
struct Text {
    left: u64,
    block: Vec<u8>,
}

impl Text {
    fn new(bytes: u64) -> Self {
        Text {
            left: bytes,
            block: b"The Quick Brown Fox jumps over the lazy dog, 0123456789!\n"
                .iter()
                .copied()
                .cycle()
                .take(64 << 10)
                .collect(),
        }
    }
}

impl Read for Text {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.block.len()).min(self.left as usize);
        buf[..n].copy_from_slice(&self.block[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn streaming(sandbox: &Sandbox) {
    const BYTES: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let input_path = dir.path().join("input.txt");
    std::io::copy(
        &mut Text::new(BYTES),
        &mut File::create(&input_path).unwrap(),
    )
    .unwrap();
    let mib = BYTES as f64 / (1 << 20) as f64;
    let limits = Limits {
        max_output_bytes: 1 << 40,
        timeout_ms: 600_000,
        ..Limits::default()
    };

    let wasm = guest("uppercase.wasm");
    let engine = bare_engine(false, true);
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut WasiP1Ctx| s).unwrap();
    let pre = linker
        .instantiate_pre(&Module::new(&engine, &wasm).unwrap())
        .unwrap();
    let mut bare_best = f64::MAX;
    for _ in 0..3 {
        let wasi = WasiCtxBuilder::new()
            .stdin(InputFile::new(File::open(&input_path).unwrap()))
            .stdout(OutputFile::new(File::create("/dev/null").unwrap()))
            .build_p1();
        let mut store = bare_store(&engine, wasi, false, true);
        let started = Instant::now();
        let instance = pre.instantiate(&mut store).unwrap();
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .unwrap();
        start.call(&mut store, ()).unwrap();
        bare_best = bare_best.min(started.elapsed().as_secs_f64());
    }

    let run = |wasm: &[u8], entry: EntryPoint| {
        let module = sandbox.load_module(wasm).unwrap();
        let job = job(entry, limits.clone());
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let result = sandbox.run(
                &module,
                &job,
                Box::new(File::open(&input_path).unwrap()),
                Box::new(std::io::BufWriter::with_capacity(
                    64 << 10,
                    File::create("/dev/null").unwrap(),
                )),
            );
            assert!(result.outcome.is_success(), "{}", result.outcome);
            assert_eq!(result.stats.output_bytes, BYTES);
            best = best.min(started.elapsed().as_secs_f64());
        }
        best
    };
    let sluice = run(&wasm, EntryPoint::Command);
    let raw = run(
        &guest("upper_raw.wat"),
        EntryPoint::Raw {
            export: "process".into(),
        },
    );
    std::io::stdout().flush().unwrap();

    println!("## streaming the uppercase filter over {mib:.0} MiB (file → /dev/null)");
    println!("| path | MiB/s |");
    println!("| --- | --- |");
    println!(
        "| bare wasmtime, WASI InputFile/OutputFile (uppercase.wasm) | {:.0} |",
        mib / bare_best
    );
    println!(
        "| sluice, WASI command (uppercase.wasm) | {:.0} |",
        mib / sluice
    );
    println!(
        "| sluice, raw ABI, 64 KiB chunks (upper_raw.wat) | {:.0} |",
        mib / raw
    );
    println!(
        "ratio sluice/bare: {:.2}x (target ≥ 0.9x)",
        bare_best / sluice
    );
    println!(
        "peak RSS of this whole bench process: {} MiB\n",
        peak_rss_mib()
    );
}

fn main() {
    // `cargo bench` passes `--bench`. Every run starts with the summary; `summary` stops
    // after it, `real` adds only the real-guest section, and the two options below are
    // this bench re-run for one measurement.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    if let Some(pool) = option("--rss-probe") {
        let pool = real_guest::Pool::named(pool).expect("a pool setting name");
        return real_guest::rss_probe(pool, &guest(real_guest::GUEST));
    }
    if let Some(target) = option("--profile") {
        return real_guest::profile(target, &guest(real_guest::GUEST));
    }
    if args.iter().any(|a| a == "keep-resident") {
        return keep_resident::keep_resident(&guest(real_guest::GUEST));
    }
    summary::summary(&guest(real_guest::GUEST), &guest("noop.wat"));
    if args.iter().any(|a| a == "summary") {
        return;
    }
    if !args.iter().any(|a| a == "real") {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
        noop(&sandbox);
        compute();
        streaming(&sandbox);
    }
    real_guest::run(&guest(real_guest::GUEST));
}
