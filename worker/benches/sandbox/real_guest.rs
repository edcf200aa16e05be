//! A real wasi-libc C guest per job (issue 13): `uppercase.wasm` (`getchar`/`putchar`)
//! over a 4 KiB input, one fresh instance and WASI context per job, bare wasmtime
//! beside `Sandbox::run`, under each pooling setting worth weighing.
//!
//! Every figure is CPU time of the whole process per job (user + kernel, from
//! `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, so the sandbox's stdio helper threads
//! count, and so do the epoch tickers of the sandboxes alive: `summary.rs` measures
//! those), the median of [`RUNS`] runs of [`JOBS`] jobs, the settings interleaved within
//! each run so a change in the machine's load touches all of them alike. The guest's own
//! work is measured in the same runs (the same guest streaming the same input, repeated,
//! through one instance), so what is left of a job is the sandbox's fixed cost:
//! instantiation, the WASI context, the guest's start-up and exit, teardown and the
//! slot's reset.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_shared::{EntryPoint, Limits};
use sluice_worker::compile::engine::{EngineSettings, code_config};
use sluice_worker::{JobReader, JobWriter, LoadedModule, Metering, Sandbox, SandboxConfig};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, SinkOutputStream};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::procfs::{self, Cpu};

/// Jobs per run and thread.
pub const JOBS: u32 = 20_000;
/// Runs per figure; the median is shown.
pub const RUNS: usize = 5;
/// The input each job uppercases.
pub const INPUT_BYTES: usize = 4 << 10;
/// The guest.
pub const GUEST: &str = "uppercase.wasm";

/// The input each job gets: [`INPUT_BYTES`] of mixed-case text, the same in every
/// table, profile and probe.
pub fn input() -> Bytes {
    Bytes::from(
        b"Hello, World! the quick brown fox 0123456789\n"
            .iter()
            .copied()
            .cycle()
            .take(INPUT_BYTES)
            .collect::<Vec<u8>>(),
    )
}

/// An instance-allocation setting for the bare engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Pooling as wasmtime 48 configures it by default, with the sandbox's pool limits
    /// (so the guests fit): decommits not batched (`decommit_batch_size` 1), nothing kept
    /// resident, no `pagemap_scan`.
    WasmtimeDefault,
    /// The sandbox's pool before issue 13: its limits, decommits batched over half the
    /// slots, nothing kept.
    Default,
    /// As `Default`, keeping the sandbox's default resident memory and table bytes.
    KeepResident,
    /// As `KeepResident`, resetting only the pages the guest dirtied (`PAGEMAP_SCAN`).
    KeepResidentPagemap,
    /// As `KeepResident`, with the batched decommits the sandbox had before it
    /// returned each slot as the job ends (`decommit_batch_size(slots / 2)`).
    KeepResidentBatched,
    /// No pool: every instance maps and unmaps its own memory.
    OnDemand,
}

impl Pool {
    /// Every setting, in table order.
    pub const ALL: [Pool; 6] = [
        Pool::WasmtimeDefault,
        Pool::Default,
        Pool::KeepResident,
        Pool::KeepResidentPagemap,
        Pool::KeepResidentBatched,
        Pool::OnDemand,
    ];

    /// The name used on the command line (`--rss-probe NAME`, `--profile bare-NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Pool::WasmtimeDefault => "wasmtime-default",
            Pool::Default => "default",
            Pool::KeepResident => "keep-resident",
            Pool::KeepResidentPagemap => "keep-resident-pagemap",
            Pool::KeepResidentBatched => "keep-resident-batched",
            Pool::OnDemand => "on-demand",
        }
    }

    /// The setting named `name`.
    pub fn named(name: &str) -> Option<Pool> {
        Pool::ALL.into_iter().find(|pool| pool.name() == name)
    }

    /// The setting in words, for a table row.
    pub fn label(self) -> String {
        let kept = SandboxConfig::default();
        let keep = format!(
            "keep_resident(memory {} KiB, table {} KiB)",
            kept.memory_keep_resident_bytes >> 10,
            kept.table_keep_resident_bytes >> 10
        );
        match self {
            Pool::WasmtimeDefault => "pooling as wasmtime 48 sets it by default (decommit batch 1, nothing kept resident, no pagemap_scan; Sluice's pool limits)".into(),
            Pool::Default => "pooling, nothing kept resident, decommits batched over slots / 2 (the pre-issue-13 pool)".into(),
            Pool::KeepResident => format!("pooling, {keep}"),
            Pool::KeepResidentPagemap => format!("pooling, {keep} + pagemap_scan(Auto)"),
            Pool::KeepResidentBatched => {
                format!("pooling, {keep}, decommit_batch_size(slots / 2)")
            }
            Pool::OnDemand => "on-demand allocator".into(),
        }
    }

    /// The pre-issue-13 pool and `KeepResidentBatched` batch decommits over half the
    /// slots; the others return each slot as its instance drops, as the sandbox does.
    fn decommit_batch_size(self) -> usize {
        match self {
            Pool::Default | Pool::KeepResidentBatched => {
                (SandboxConfig::default().slots as usize / 2).max(1)
            }
            _ => 1,
        }
    }

    /// The allocation strategy: the sandbox's own pool limits (as `Sandbox` builds them
    /// from the default `SandboxConfig`), with this setting's reset behaviour.
    fn strategy(self) -> InstanceAllocationStrategy {
        let config = SandboxConfig::default();
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(config.slots)
            .total_memories(config.slots)
            .total_tables(config.slots * 4)
            .max_tables_per_module(4)
            .max_memories_per_module(1)
            .total_component_instances(0)
            .total_stacks(0)
            .table_elements(config.max_table_elements)
            .max_memory_size(config.max_guest_memory_bytes as usize)
            .decommit_batch_size(self.decommit_batch_size());
        if matches!(
            self,
            Pool::KeepResident | Pool::KeepResidentPagemap | Pool::KeepResidentBatched
        ) {
            pool.linear_memory_keep_resident(config.memory_keep_resident_bytes as usize)
                .table_keep_resident(config.table_keep_resident_bytes as usize);
        }
        pool.pagemap_scan(if self == Pool::KeepResidentPagemap {
            Enabled::Auto
        } else {
            Enabled::No
        });
        match self {
            Pool::OnDemand => InstanceAllocationStrategy::OnDemand,
            _ => InstanceAllocationStrategy::Pooling(pool),
        }
    }
}

/// The sandbox settings compared.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// Before issue 13: nothing kept resident.
    Before,
    /// The chosen defaults: memory and tables kept resident, reset by `memset`.
    Chosen,
    /// As `Chosen`, dirty pages found by `PAGEMAP_SCAN` (opt-in; unsafe on wasmtime 48:
    /// see `SandboxConfig::pagemap_scan`).
    Pagemap,
}

/// The `SandboxConfig` of `setting`.
pub fn sandbox_config(setting: Setting) -> SandboxConfig {
    let chosen = SandboxConfig::default();
    match setting {
        Setting::Chosen => chosen,
        Setting::Pagemap => SandboxConfig {
            pagemap_scan: true,
            ..chosen
        },
        Setting::Before => SandboxConfig {
            memory_keep_resident_bytes: 0,
            table_keep_resident_bytes: 0,
            pagemap_scan: false,
            ..chosen
        },
    }
}

/// The guest on bare wasmtime: the sandbox's unmetered engine configuration, the WASI
/// linker, an `InstancePre`.
pub struct Bare {
    engine: Engine,
    linker: Linker<WasiP1Ctx>,
    module: Module,
    pre: InstancePre<WasiP1Ctx>,
}

impl Bare {
    /// Compiles the guest for an engine with `pool`.
    pub fn new(pool: Pool, wasm: &[u8]) -> Bare {
        let mut config = code_config(
            &EngineSettings::of(&SandboxConfig::default()),
            Metering::Off,
        );
        config.allocation_strategy(pool.strategy());
        let engine = Engine::new(&config).expect("engine");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut WasiP1Ctx| s).unwrap();
        let module = Module::new(&engine, wasm).expect("guest compiles");
        let pre = linker.instantiate_pre(&module).unwrap();
        Bare {
            engine,
            linker,
            module,
            pre,
        }
    }

    /// A job's WASI context: `input` on stdin, stdout discarded.
    pub fn wasi(input: &Bytes) -> WasiP1Ctx {
        WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(input.clone()))
            .stdout(SinkOutputStream)
            .arg(GUEST)
            .build_p1()
    }

    /// A store for one job, ready to instantiate into.
    pub fn store(&self, input: &Bytes) -> Store<WasiP1Ctx> {
        let mut store = Store::new(&self.engine, Self::wasi(input));
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    /// Instantiates the guest into `store` (through the `InstancePre`, or the linker
    /// when `pre` is false) and runs it to the end.
    pub fn run_in(&self, store: &mut Store<WasiP1Ctx>, pre: bool) {
        let instance = if pre {
            self.pre.instantiate(&mut *store)
        } else {
            self.linker.instantiate(&mut *store, &self.module)
        }
        .expect("instantiates");
        let start = instance
            .get_typed_func::<(), ()>(&mut *store, "_start")
            .unwrap();
        match start.call(&mut *store, ()) {
            Ok(()) => {}
            Err(e) => assert_eq!(e.downcast_ref::<I32Exit>().map(|x| x.0), Some(0), "{e}"),
        }
    }

    /// One job: a fresh store and WASI context over `input`.
    pub fn job(&self, input: &Bytes, pre: bool) {
        let mut store = self.store(input);
        self.run_in(&mut store, pre);
    }

    /// Bytes the pool keeps resident in its free slots now (memory + tables, wasmtime's
    /// own count); 0 for the on-demand allocator.
    pub fn resident_bytes(&self) -> u64 {
        self.engine.pooling_allocator_metrics().map_or(0, |m| {
            (m.unused_memory_bytes_resident() + m.unused_table_bytes_resident()) as u64
        })
    }
}

/// How a Sluice job's input and output are passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// `Sandbox::run`: input and output that may stall, served by helper threads.
    Streams,
    /// `Sandbox::run_io` with the input in memory and the output streamed
    /// (`JobReader::Memory` + `JobWriter::Stream`, the output through a helper thread):
    /// what the fleet runs for an inline input when its env streams the output.
    MemoryInStreamOut,
    /// `Sandbox::run_io` with the input in memory and the output spill-buffered
    /// (`JobReader::Memory` + `JobWriter::Spill` keeping the queue's default inline
    /// limit, 256 KiB, past which it would stream): what the fleet runs for an inline input since its env keeps outputs up
    /// to the inline limit on the guest's thread.
    MemoryInSpillOut,
    /// `Sandbox::run_io` with both in memory (`JobReader::Memory` + `JobWriter::Memory`):
    /// what the fleet runs for an inline input once its env collects a small-capped
    /// output in memory.
    Memory,
}

/// The guest in a `Sandbox`.
pub struct Sluice {
    sandbox: Arc<Sandbox>,
    module: Arc<LoadedModule>,
    job: sluice_shared::Job,
}

impl Sluice {
    /// A sandbox with `config` and the guest loaded; `fuel` makes the job metered.
    pub fn new(config: SandboxConfig, wasm: &[u8], fuel: bool) -> Sluice {
        let sandbox = Arc::new(Sandbox::new(config).expect("sandbox"));
        let module = sandbox.load_named_module(wasm, GUEST).expect("guest loads");
        let limits = Limits {
            fuel: fuel.then_some(1 << 40),
            ..Limits::default()
        };
        Sluice {
            sandbox,
            module,
            job: crate::job(EntryPoint::Command, limits),
        }
    }

    /// One job over `input`, its output discarded, passed as `io` says.
    pub fn job(&self, input: &Bytes, io: Io) {
        let result = match io {
            Io::Memory => self.sandbox.run_io(
                &self.module,
                &self.job,
                JobReader::Memory(input.clone()),
                JobWriter::Memory,
            ),
            Io::MemoryInStreamOut => self.sandbox.run_io(
                &self.module,
                &self.job,
                JobReader::Memory(input.clone()),
                JobWriter::Stream(Box::new(std::io::sink())),
            ),
            Io::MemoryInSpillOut => self.sandbox.run_io(
                &self.module,
                &self.job,
                JobReader::Memory(input.clone()),
                JobWriter::Spill {
                    keep: *DEFAULT_INLINE_LIMIT,
                    then: Box::new(std::io::sink()),
                },
            ),
            Io::Streams => self.sandbox.run(
                &self.module,
                &self.job,
                Box::new(Cursor::new(input.clone())),
                Box::new(std::io::sink()),
            ),
        };
        assert!(result.outcome.is_success(), "{}", result.outcome);
        assert_eq!(result.stats.output_bytes, input.len() as u64);
    }

    /// Bytes the sandbox's pools keep resident in their free slots now.
    pub fn resident_bytes(&self) -> u64 {
        let resident = self.sandbox.pool_resident_bytes();
        resident.memory + resident.tables
    }
}

/// One run's cost per job.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall-clock µs per job (per job of one thread when several run).
    wall_us: f64,
    /// Process CPU µs per job.
    cpu_us: f64,
    /// Kernel share of that CPU time.
    kernel: f64,
    /// Kernel clock ticks seen.
    system_ticks: u64,
    /// User + kernel clock ticks seen.
    ticks: u64,
}

/// CPU time a sample runs for at least: 1 s, a hundred clock ticks, so the kernel
/// share (counted in ticks) is known to 1%.
const MIN_SAMPLE_TICKS: u64 = 100;

/// Runs `job` on each of `threads` threads (a tenth of [`JOBS`] to warm up, then at
/// least [`JOBS`], more until the process has used [`MIN_SAMPLE_TICKS`]) and takes the
/// process's CPU time.
pub fn sample(threads: usize, job: &(dyn Fn() + Sync)) -> Sample {
    let run = |n: u32| {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| (0..n).for_each(|_| job()));
            }
        })
    };
    run(JOBS / 10);
    let before = Cpu::now();
    let started = Instant::now();
    let mut per_thread = 0;
    while per_thread < JOBS {
        run(JOBS);
        per_thread += JOBS;
    }
    while Cpu::since(before).ticks_total() < MIN_SAMPLE_TICKS {
        run(JOBS / 4);
        per_thread += JOBS / 4;
    }
    let wall = started.elapsed().as_secs_f64() * 1e6;
    let cpu = Cpu::since(before);
    let jobs = f64::from(per_thread) * threads as f64;
    Sample {
        wall_us: wall / f64::from(per_thread),
        cpu_us: cpu.total_us() / jobs,
        kernel: cpu.kernel_share(),
        system_ticks: cpu.system,
        ticks: cpu.ticks_total(),
    }
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A row of the table: a label and how to run one job.
pub struct Row<'a> {
    /// What the row measures.
    pub label: String,
    threads: usize,
    job: Box<dyn Fn() + Sync + 'a>,
    samples: Vec<Sample>,
}

impl Row<'_> {
    /// Takes one more sample (one run).
    pub fn sample(&mut self) {
        self.samples.push(sample(self.threads, &*self.job));
    }

    /// The medians over the runs: (wall µs, CPU µs, kernel share) per job.
    pub fn medians(&self) -> (f64, f64, f64) {
        let of = |f: fn(&Sample) -> f64| median(self.samples.iter().map(f).collect());
        (of(|s| s.wall_us), of(|s| s.cpu_us), of(|s| s.kernel))
    }

    /// Kernel and total clock ticks over all runs, the counts the share is taken from.
    pub fn ticks(&self) -> (u64, u64) {
        self.samples
            .iter()
            .fold((0, 0), |(k, t), s| (k + s.system_ticks, t + s.ticks))
    }
}

/// A row: `label`, `job` run on `threads` threads.
pub fn row<'a>(label: &str, threads: usize, job: Box<dyn Fn() + Sync + 'a>) -> Row<'a> {
    Row {
        label: label.to_owned(),
        threads,
        job,
        samples: Vec::new(),
    }
}

/// The guest's own work on a job's input, measured once per run beside the jobs: one
/// instance streams the job's input repeated to [`GuestWork::STREAM`] bytes, and its
/// process CPU per job input is the guest's work per job. It includes the
/// `fd_read`/`fd_write` calls its stdio buffers make, which scale with the input, not
/// with the job count.
pub struct GuestWork {
    stream: Bytes,
    job_bytes: usize,
    /// µs per job input, one per run.
    pub samples: Vec<f64>,
}

impl GuestWork {
    /// Bytes streamed per sample: 256 MiB.
    pub const STREAM: usize = 256 << 20;

    /// Prepares the stream of `input` repeated.
    pub fn new(input: &Bytes) -> GuestWork {
        GuestWork {
            stream: input
                .iter()
                .copied()
                .cycle()
                .take(Self::STREAM)
                .collect::<Vec<u8>>()
                .into(),
            job_bytes: input.len(),
            samples: Vec::new(),
        }
    }

    /// One sample on `bare`.
    pub fn sample(&mut self, bare: &Bare) {
        let mut store = bare.store(&self.stream);
        let before = Cpu::now();
        bare.run_in(&mut store, true);
        let us = Cpu::since(before).total_us();
        self.samples
            .push(us * self.job_bytes as f64 / self.stream.len() as f64);
    }

    /// The median over the samples.
    pub fn median_us(&self) -> f64 {
        median(self.samples.clone())
    }
}

/// The WASI context alone: built and dropped, no instance (µs, median of runs).
fn wasi_ctx_us(input: &Bytes) -> f64 {
    median(
        (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..JOBS {
                    drop(std::hint::black_box(Bare::wasi(input)));
                }
                started.elapsed().as_secs_f64() * 1e6 / f64::from(JOBS)
            })
            .collect(),
    )
}

/// Prints the real-guest section.
pub fn run(wasm: &[u8]) {
    let input = input();
    let bare: Vec<(Pool, Bare)> = Pool::ALL
        .into_iter()
        .map(|pool| (pool, Bare::new(pool, wasm)))
        .collect();
    let sluice_default = Sluice::new(sandbox_config(Setting::Before), wasm, false);
    let sluice_pagemap = Sluice::new(sandbox_config(Setting::Pagemap), wasm, false);
    let sluice_chosen = Sluice::new(sandbox_config(Setting::Chosen), wasm, false);
    let sluice_fuel = Sluice::new(sandbox_config(Setting::Chosen), wasm, true);
    let at = |pool: Pool| &bare.iter().find(|(p, _)| *p == pool).expect("every pool").1;
    let keep = at(Pool::KeepResident);
    let pagemap = at(Pool::KeepResidentPagemap);
    let default = at(Pool::Default);
    let mut guest_work = GuestWork::new(&input);

    let input = &input;
    let mut rows: Vec<Row> = bare
        .iter()
        .map(|(pool, engine)| {
            row(
                &format!("bare wasmtime, {}", pool.label()),
                1,
                Box::new(move || engine.job(input, true)),
            )
        })
        .collect();
    rows.extend([
        row(
            "bare wasmtime, keep_resident, `Linker::instantiate` (no `InstancePre`)",
            1,
            Box::new(move || keep.job(input, false)),
        ),
        row(
            "sluice `Sandbox::run` (stdio by helper threads), pre-issue-13 pool",
            1,
            Box::new(|| sluice_default.job(input, Io::Streams)),
        ),
        row(
            "sluice `Sandbox::run` (stdio by helper threads), chosen defaults",
            1,
            Box::new(|| sluice_chosen.job(input, Io::Streams)),
        ),
        row(
            "sluice `Sandbox::run_io` (memory in, output streamed by a helper thread), chosen defaults",
            1,
            Box::new(|| sluice_chosen.job(input, Io::MemoryInStreamOut)),
        ),
        row(
            "sluice `Sandbox::run_io` (memory in, direct out), pre-issue-13 pool",
            1,
            Box::new(|| sluice_default.job(input, Io::Memory)),
        ),
        row(
            "sluice `Sandbox::run_io` (memory in, direct out), chosen defaults (keep_resident, memset reset)",
            1,
            Box::new(|| sluice_chosen.job(input, Io::Memory)),
        ),
        row(
            "sluice `Sandbox::run_io` (memory in, direct out), keep_resident + pagemap_scan (opt-in, unsafe on wasmtime 48)",
            1,
            Box::new(|| sluice_pagemap.job(input, Io::Memory)),
        ),
        row(
            "sluice `Sandbox::run_io`, chosen defaults, fuel-metered job",
            1,
            Box::new(|| sluice_fuel.job(input, Io::Memory)),
        ),
        row(
            "bare wasmtime, pre-issue-13 pool, 2 threads",
            2,
            Box::new(move || default.job(input, true)),
        ),
        row(
            "bare wasmtime, keep_resident, 2 threads",
            2,
            Box::new(move || keep.job(input, true)),
        ),
        row(
            "sluice `Sandbox::run_io`, pre-issue-13 pool, 2 threads",
            2,
            Box::new(|| sluice_default.job(input, Io::Memory)),
        ),
        row(
            "sluice `Sandbox::run_io`, chosen defaults, 2 threads",
            2,
            Box::new(|| sluice_chosen.job(input, Io::Memory)),
        ),
    ]);

    let load_before = procfs::load_average();
    for _ in 0..RUNS {
        for row in &mut rows {
            row.sample();
        }
        guest_work.sample(pagemap);
    }
    let guest_us = guest_work.median_us();
    let ctx_us = wasi_ctx_us(input);
    let load_after = procfs::load_average();

    println!(
        "## real C guest per job: {GUEST} over {} KiB, fresh instance and WASI context per job",
        INPUT_BYTES >> 10
    );
    println!(
        "(at least {JOBS} jobs per thread per run, more until 1 s of CPU; median of {RUNS} interleaved runs, the guest's own work sampled in each; wall figures depend on the load: load average {load_before} before, {load_after} after)"
    );
    println!(
        "| configuration | wall µs/job | CPU µs/job | kernel share | CPU beyond the guest's work | jobs/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        let (wall, cpu, kernel) = row.medians();
        let per_second = row.threads as f64 * 1e6 / wall;
        println!(
            "| {} | {wall:.1} | {cpu:.1} | {} | {:.1} | {per_second:.0} |",
            row.label,
            procfs::share_text(kernel),
            cpu - guest_us
        );
    }
    println!(
        "the guest's own work on its {} KiB input (CPU of one instance streaming it repeated to 256 MiB, per job input; median of {RUNS}, one per run): {guest_us:.1} µs",
        INPUT_BYTES >> 10
    );
    println!("building and dropping a WASI p1 context alone: {ctx_us:.2} µs");
    println!(
        "memory protection keys available on this CPU: {}",
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" pku"))
    );
    println!();
    rss_table();
}

/// Runs the resident-memory probe of every setting in a child process of its own (so
/// one setting's freed memory does not hide another's) and prints the table.
fn rss_table() {
    let slots = SandboxConfig::DEFAULT_SLOTS;
    println!(
        "## resident memory per pool slot after a warm run ({GUEST}, {slots} slots in use at once, then freed)"
    );
    println!("| setting | RSS per slot (KiB) | of which anonymous | file-backed |");
    println!("| --- | --- | --- | --- |");
    let exe = std::env::current_exe().expect("own path");
    for pool in Pool::ALL {
        let out = std::process::Command::new(&exe)
            .args(["--rss-probe", pool.name()])
            .output()
            .expect("rss probe runs");
        let line = String::from_utf8_lossy(&out.stdout);
        println!("| {} | {} |", pool.label(), line.trim());
    }
    println!();
}

/// The probe run in a child: one warm job in one slot, then every slot held by an
/// instance at once, each run to its end, all freed; prints the resident memory added
/// per slot (`total | anonymous | file-backed`, KiB).
pub fn rss_probe(pool: Pool, wasm: &[u8]) {
    let slots = SandboxConfig::DEFAULT_SLOTS as usize;
    let bare = Bare::new(pool, wasm);
    let input = input();
    bare.job(&input, true);
    let before = procfs::rss_kib();
    let mut stores: Vec<Store<WasiP1Ctx>> = (0..slots).map(|_| bare.store(&input)).collect();
    for store in &mut stores {
        bare.run_in(store, true);
    }
    drop(stores);
    let after = procfs::rss_kib();
    // The first instance took the warm slot again; the others each warmed one.
    let per_slot = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / (slots - 1) as f64;
    println!(
        "{:.0} | {:.0} | {:.0}",
        per_slot(after.0, before.0),
        per_slot(after.1, before.1),
        per_slot(after.2, before.2)
    );
}

/// Runs one setting's loop for a long time, for `perf record`: `bare-NAME` (a [`Pool`]
/// name), `sluice-default` / `sluice-chosen` / `sluice-pagemap` (`Sandbox::run_io`,
/// input and output in memory), `sluice-chosen-stream-out` (input in memory, output
/// streamed) or `sluice-default-run` / `sluice-chosen-run` (`Sandbox::run`, stdio by
/// helper threads).
pub fn profile(what: &str, wasm: &[u8]) {
    const PROFILED_JOBS: u32 = 200_000;
    let input = input();
    let job: Box<dyn Fn()> = match what {
        "sluice-default"
        | "sluice-chosen"
        | "sluice-pagemap"
        | "sluice-chosen-run"
        | "sluice-default-run"
        | "sluice-chosen-stream-out" => {
            let setting = match what {
                "sluice-default" | "sluice-default-run" => Setting::Before,
                "sluice-pagemap" => Setting::Pagemap,
                _ => Setting::Chosen,
            };
            let sluice = Sluice::new(sandbox_config(setting), wasm, false);
            let io = if what.ends_with("-run") {
                Io::Streams
            } else if what.ends_with("-stream-out") {
                Io::MemoryInStreamOut
            } else {
                Io::Memory
            };
            Box::new(move || sluice.job(&input, io))
        }
        other => {
            let pool = other
                .strip_prefix("bare-")
                .and_then(Pool::named)
                .unwrap_or_else(|| panic!("unknown profile target {other}"));
            let bare = Bare::new(pool, wasm);
            Box::new(move || bare.job(&input, true))
        }
    };
    let cpu = Cpu::now();
    for _ in 0..PROFILED_JOBS {
        job();
    }
    let cpu = Cpu::since(cpu);
    println!(
        "{what}: {:.1} CPU µs/job, kernel {}",
        cpu.total_us() / f64::from(PROFILED_JOBS),
        procfs::share_text(cpu.kernel_share())
    );
}

/// The inline limit a queue has unless configured otherwise: what the fleet's env keeps
/// outputs in memory up to (`RedisEnv::open_output`). Read from the queue config's
/// defaults once (the URL is never used), so the bench follows a change to them.
static DEFAULT_INLINE_LIMIT: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    sluice_shared::queue::redis::RedisConfig::new("redis://unused").inline_limit
});
