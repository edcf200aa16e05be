//! Cold start of a large module through the module cache, for `docs/benchmarks.md`:
//! `cargo bench -p sluice-worker --bench cold_start` (needs `redis-server` and clang
//! with wasi-libc on the PATH, like the end-to-end tests; build the binaries first
//! with `cargo build --release --bins`).
//!
//! The module is `examples/bench/hashbank.c` (4096 distinct functions, a 1.46 MB code
//! section), built by `examples/build.sh --bench`. Two parts:
//! 1. in process (`in_process.rs`): `ArtifactCache` driven directly, each tier from an
//!    empty L1 (compile in the limited child, L3, L2, L1), what an L3 load is made of,
//!    and the per-job instantiate-and-run after the load;
//! 2. processes (`processes.rs`): fresh `sluice-worker serve` processes whose first
//!    claim brings the module's first job, its code compiled, from Redis, from disk,
//!    then from L1.
//!
//! `COLD_START_TRIALS` (default 3) sets the process trials, `COLD_START_REPS` (default
//! 20) the in-process loads per tier; `COLD_START_PERF=<file>` also runs, in the first
//! trial, one more fresh L3 worker under `perf record --call-graph dwarf` writing
//! `<file>` (its times are not in the tables).

mod in_process;
mod module;
mod processes;
mod stats;

use std::time::Duration;

/// A number from the environment variable `name`, or `default`.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let trials = setting("COLD_START_TRIALS", 3);
    let reps = setting("COLD_START_REPS", 20);
    let module = module::build();
    println!("# Cold start of a large module (module cache)");
    println!(
        "module: examples/build/hashbank.wasm, {} bytes of wasm, code section {} bytes ({:.2} MiB), {} functions",
        module.wasm.len(),
        module.code_bytes,
        module.code_bytes as f64 / f64::from(1 << 20),
        module.functions
    );

    let redis = sluice_tests::RedisServer::start();
    let rt = sluice_tests::runtime();
    let queue = rt.block_on(sluice_tests::connect(&redis.url(), "inproc"));
    let bench = in_process::Bench::new(rt, queue, &module.wasm);
    let (compile, l3) = bench.run_all(reps, reps.div_ceil(4).max(3));
    let expected = bench.expected.clone();
    drop(bench);

    let scratch = tempfile::tempdir().expect("temp dir");
    let mut fleet = processes::Processes::new(
        sluice_tests::runtime(),
        redis.url(),
        &module.wasm,
        &expected,
    );
    for n in 0..trials {
        fleet.trial(n, scratch.path(), 200);
    }
    let fresh = fleet.report(trials);
    summary(compile, l3, fresh);
}

/// The targets, once more, from both parts.
fn summary(compile: Duration, l3: Duration, fresh: Duration) {
    println!(
        "\nsummary: in process, L3 load {} ms vs compile {} ms = {:.0}x (target ≥ 20x); \
         fresh replica's first job {} ms claim → result (target ≤ 50 ms)",
        stats::ms(l3),
        stats::ms(compile),
        stats::ratio(compile, l3),
        stats::ms(fresh)
    );
}
