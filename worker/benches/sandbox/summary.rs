//! The issue-13 figures in one table, one run, rows interleaved: per job on one thread,
//! bare wasmtime with pooling as wasmtime 48 sets it by default, bare wasmtime with the
//! settings the sandbox chose, and the sandbox with them, both ways a fleet job's I/O
//! goes (`Sandbox::run_io` with the input in memory and the output in memory, or
//! spill-buffered as the fleet runs it now, or streamed as it ran before), for three
//! guests: the no-op module, the C uppercase guest over [`INPUT_BYTES`], and an echo
//! whose initial memory (1.06 MiB) is past the memory kept resident (where the chosen
//! `memset` reset costs most). With the kernel share, the bytes each setting keeps
//! resident per slot, the guest's own work sampled in the same runs, and what the
//! sandboxes' epoch tickers cost the process while idle.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::procfs::{self, Cpu};
use crate::real_guest::{
    Bare, GUEST, GuestWork, INPUT_BYTES, Io, JOBS, Pool, RUNS, Row, Setting, Sluice, input, row,
    sandbox_config,
};

/// A WASI echo whose initial memory is 17 pages (1.06 MiB, about where a small Rust
/// guest starts): it reads stdin in 64 KiB chunks and writes each back, touching only
/// its first page and the pages its reads fill. With the chosen settings the slot's
/// reset `memset`s all that is kept whatever the guest touched (wasmtime 48 without
/// `pagemap_scan` resets `min(keep_resident, accessible)`).
pub const BIG_MEMORY_ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (func (export "_start")
    (local $n i32)
    (loop $more
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 65536))
      (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (local.set $n (i32.load (i32.const 16)))
      (if (local.get $n)
        (then
          (i32.store (i32.const 4) (local.get $n))
          (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))
          (br $more))))))"#;

/// One guest's engines and sandboxes.
struct Guest {
    name: String,
    input: Bytes,
    bare_default: Bare,
    bare_chosen: Bare,
    sluice: Sluice,
    /// The pre-issue-13 sandbox settings (nothing kept resident), where the row is
    /// wanted.
    sluice_before: Option<Sluice>,
}

impl Guest {
    fn new(name: String, wasm: &[u8], input: Bytes, before: bool) -> Guest {
        Guest {
            name,
            input,
            bare_default: Bare::new(Pool::WasmtimeDefault, wasm),
            bare_chosen: Bare::new(Pool::KeepResident, wasm),
            sluice: Sluice::new(sandbox_config(Setting::Chosen), wasm, false),
            sluice_before: before
                .then(|| Sluice::new(sandbox_config(Setting::Before), wasm, false)),
        }
    }

    /// The guest's own work per job, sampled once per run (none for the no-op).
    fn work(&self) -> Option<GuestWork> {
        (!self.input.is_empty()).then(|| GuestWork::new(&self.input))
    }
}

/// The guest's own work per job: the median of its samples, 0 for the no-op.
fn own_us(work: &Option<GuestWork>) -> f64 {
    work.as_ref().map_or(0.0, GuestWork::median_us)
}

/// What a row runs.
#[derive(Clone, Copy)]
enum Config {
    BareDefault,
    BareChosen,
    Sluice(Io),
    SluiceBefore,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::BareDefault => {
                "bare wasmtime, pooling as wasmtime 48 sets it by default (decommit batch 1, nothing kept resident; Sluice's pool limits)"
            }
            Config::BareChosen => {
                "bare wasmtime, the chosen settings (`SandboxConfig`'s default memory and tables kept resident, `memset` reset)"
            }
            Config::Sluice(Io::Memory) => {
                "**Sluice `run_io`, the chosen settings, input and output in memory** (embedded `sluice batch` with outputs in memory; the floor the fleet's spill-buffered row is judged against)"
            }
            Config::Sluice(Io::MemoryInStreamOut) => {
                "Sluice `run_io`, the chosen settings, input in memory, output streamed (the fleet before its env kept outputs up to the inline limit in memory)"
            }
            Config::Sluice(Io::MemoryInSpillOut) => {
                "**Sluice `run_io`, the chosen settings, input in memory, output spill-buffered** (the fleet now: kept on the guest's thread up to the 256 KiB inline limit, streamed past it)"
            }
            Config::Sluice(Io::Streams) => "Sluice `run`, the chosen settings, both streamed",
            Config::SluiceBefore => {
                "Sluice `run_io`, the pre-issue-13 settings (nothing kept resident), input and output in memory"
            }
        }
    }

    fn resident_bytes(self, guest: &Guest) -> u64 {
        match self {
            Config::BareDefault => guest.bare_default.resident_bytes(),
            Config::BareChosen => guest.bare_chosen.resident_bytes(),
            Config::Sluice(_) => guest.sluice.resident_bytes(),
            Config::SluiceBefore => guest
                .sluice_before
                .as_ref()
                .map_or(0, Sluice::resident_bytes),
        }
    }
}

/// What the process spends per second of wall time while idle: the epoch tickers of
/// the sandboxes alive (each wakes every `epoch_tick`), charged to every row alike.
fn idle_cpu_us_per_s() -> f64 {
    const IDLE: Duration = Duration::from_secs(1);
    let before = Cpu::now();
    let started = Instant::now();
    std::thread::sleep(IDLE);
    Cpu::since(before).total_us() / started.elapsed().as_secs_f64()
}

/// Prints the summary table: `upper` is the C uppercase guest, `noop` the no-op module.
pub fn summary(upper: &[u8], noop: &[u8]) {
    // Every row runs on a thread inside a multi-threaded Tokio runtime's context, as a
    // worker's run threads do (`executor/threads.rs` enters the worker's runtime for the
    // thread's life): a WASI call then finds its ambient runtime on the thread instead
    // of entering wasmtime-wasi's global one per call. Bare and Sluice rows alike.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("a Tokio runtime for the bench thread");
    let _in_runtime = runtime.enter();
    let guests = [
        Guest::new(
            "no-op (noop.wat, no input)".into(),
            noop,
            Bytes::new(),
            false,
        ),
        Guest::new(
            format!("C uppercase ({GUEST}, {} KiB)", INPUT_BYTES >> 10),
            upper,
            input(),
            false,
        ),
        Guest::new(
            format!(
                "WAT echo, 1.06 MiB initial memory ({} KiB)",
                INPUT_BYTES >> 10
            ),
            BIG_MEMORY_ECHO.as_bytes(),
            input(),
            true,
        ),
    ];
    let sandboxes = guests.len() + guests.iter().filter(|g| g.sluice_before.is_some()).count();
    let idle_us = idle_cpu_us_per_s();

    let mut rows: Vec<(usize, Config, Row)> = Vec::new();
    for (g, guest) in guests.iter().enumerate() {
        let mut configs = vec![
            Config::BareDefault,
            Config::BareChosen,
            Config::Sluice(Io::Memory),
        ];
        if guest.sluice_before.is_some() {
            configs.push(Config::SluiceBefore);
        } else {
            configs.push(Config::Sluice(Io::MemoryInStreamOut));
            configs.push(Config::Sluice(Io::MemoryInSpillOut));
        }
        for config in configs {
            let input = &guest.input;
            let job: Box<dyn Fn() + Sync> = match config {
                Config::BareDefault => Box::new(move || guest.bare_default.job(input, true)),
                Config::BareChosen => Box::new(move || guest.bare_chosen.job(input, true)),
                Config::Sluice(io) => Box::new(move || guest.sluice.job(input, io)),
                Config::SluiceBefore => {
                    let before = guest.sluice_before.as_ref().expect("built for this row");
                    Box::new(move || before.job(input, Io::Memory))
                }
            };
            rows.push((g, config, row(config.label(), 1, job)));
        }
    }
    let mut works: Vec<Option<GuestWork>> = guests.iter().map(Guest::work).collect();
    let load_before = procfs::load_average();
    for _ in 0..RUNS {
        for (_, _, row) in &mut rows {
            row.sample();
        }
        for (guest, work) in guests.iter().zip(&mut works) {
            if let Some(work) = work {
                work.sample(&guest.bare_chosen);
            }
        }
    }
    let load_after = procfs::load_average();
    println!(
        "## sandbox overhead per job, one thread (issue 13 target: ≤ 10 µs beyond the guest's own code, kernel ≤ 5%)"
    );
    println!(
        "(process CPU per job from clock_gettime(CLOCK_PROCESS_CPUTIME_ID), median of {RUNS} interleaved runs of at least {JOBS} jobs and 1 s of CPU; kernel share from /proc/self/stat clock ticks, \"< 1%\" = no kernel tick in ≥ 100; load average {load_before} before, {load_after} after)"
    );
    println!(
        "| guest | configuration | CPU µs/job | kernel share | kernel / all ticks (all runs) | beyond the guest's own work | kept resident per slot (KiB) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (g, config, row) in &rows {
        let guest = &guests[*g];
        let (_, cpu, kernel) = row.medians();
        let (kernel_ticks, ticks) = row.ticks();
        println!(
            "| {} | {} | {cpu:.1} | {} | {kernel_ticks} / {ticks} | {:.1} | {} |",
            guest.name,
            row.label,
            procfs::share_text(kernel),
            cpu - own_us(&works[*g]),
            config.resident_bytes(guest) >> 10
        );
    }
    for (guest, work) in guests.iter().zip(&works) {
        if let Some(samples) = work {
            println!(
                "{}: the guest's own work {:.2} µs/job (one instance streaming the job's input repeated to 256 MiB, per job input; median of {RUNS}, one per run: {:?})",
                guest.name,
                own_us(work),
                samples
                    .samples
                    .iter()
                    .map(|us| format!("{us:.2}"))
                    .collect::<Vec<_>>()
            );
        } else {
            println!("{}: no guest work (0)", guest.name);
        }
    }
    println!(
        "the process while idle, with the {sandboxes} sandboxes of this table alive (their epoch tickers): {idle_us:.0} µs CPU per second, charged to every row (bare ones too) in proportion to its wall time"
    );
    println!(
        "kept resident per slot: wasmtime's count of bytes resident in the pool's free slots after the run (one slot warm: a module gets back the slot it last used), memory + tables"
    );
    println!(
        "memory protection keys available on this CPU: {} (`grep -c pku /proc/cpuinfo`)",
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" pku"))
    );
    println!();
}
