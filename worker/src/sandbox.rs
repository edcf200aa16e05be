//! The sandbox: two wasmtime engines built for many short-lived guests, the module
//! loader, and [`Sandbox::run`], which runs one job under its limits and returns its
//! one typed outcome.
//!
//! Where code comes from: [`Sandbox::new`] compiles in process (`Module::new`; the
//! embedded `sluice batch` and `sluice-worker run`), [`Sandbox::with_compiler`] in a
//! limited child process ([`Compiler`]; `sluice-worker serve`), loading its artifact
//! through [`load_artifact`](crate::compile::load_artifact). Both engines are built
//! from [`code_config`], the function the compile child uses too.
//!
//! Why two engines: fuel metering is an engine-wide switch that costs 40–80% on compute
//! (measured on wasmtime 48; our own figures are in `docs/benchmarks.md`), so jobs that ask for an instruction budget run on
//! a metered engine and the rest on an unmetered one. Both use epoch interruption, so
//! every job has a wall-clock deadline.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_shared::{EntryPoint, Job, JobOutput, JobResult, ModuleHash, Outcome, RunStats};
use wasmtime::{
    Enabled, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker, Module, ModuleExport,
    PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

pub use crate::compile::engine::Metering;
use crate::compile::engine::{EngineSettings, code_config};
use crate::compile::{CompileError, Compiler};
use crate::config::{ConfigError, SandboxConfig};
use crate::hostcalls::{self, JobClock};
use crate::job_io::{JobReader, JobWriter, MemoryOutput};
use crate::limiter::GuestLimiter;
use crate::raw_abi;
use crate::streams::{FinishError, GuestOutput, GuestStdin, Overflow};

/// Wasm page size: the unit of a module's declared memory.
const WASM_PAGE_BYTES: u64 = 64 << 10;

/// Most frames of a wasm backtrace kept in an outcome: enough to see where a guest
/// stopped, without letting its name section fill the result.
const BACKTRACE_FRAMES_KEPT: usize = 5;
/// Longest function or module name kept per backtrace frame.
const FRAME_NAME_BYTES: usize = 120;

/// Why the sandbox itself could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime refused the engine or pooling allocator configuration.
    #[error("cannot configure wasmtime: {0}")]
    Engine(String),
    /// The [`SandboxConfig`](crate::SandboxConfig) is out of bounds.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Without the ticker no deadline would ever fire, so the sandbox refuses to run.
    #[error("cannot start the epoch ticker thread (it enforces every job's deadline): {0}")]
    EpochTicker(std::io::Error),
    /// The compiler was built for other engine settings than this sandbox's, so its
    /// artifacts would not load.
    #[error("the compiler's engine settings {compiler:?} differ from the sandbox's {sandbox:?}")]
    CompilerMismatch {
        /// What the compiler compiles for.
        compiler: EngineSettings,
        /// What the sandbox runs.
        sandbox: EngineSettings,
    },
}

/// What a store holds for one job.
pub(crate) struct StoreState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: GuestLimiter,
    /// When the job must end; host calls that wait stop here.
    pub(crate) deadline: Instant,
    /// The origin of the guest's monotonic clock.
    pub(crate) job_start: Instant,
}

/// Raised by the epoch callback to stop a guest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Interrupted {
    #[error("wall-clock deadline passed")]
    Timeout,
    #[error("output limit reached or output sink failed")]
    Output,
}

struct EngineSet {
    engine: Engine,
    linker: Linker<StoreState>,
}

/// The engine a job runs on: the metered one if it has a fuel budget.
fn metering_of(job: &Job) -> Metering {
    if job.limits.fuel.is_some() {
        Metering::Fuel
    } else {
        Metering::Off
    }
}

/// Where the sandbox gets a module's code.
enum CodeSource {
    /// `Module::new` in this process.
    InProcess,
    /// A compile child under limits, its artifact loaded.
    Child(Compiler),
}

/// Drives the engines' epochs from a thread; stops it on drop.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

type TickerBody = Box<dyn FnOnce() + Send>;

impl Ticker {
    fn start(engines: Vec<Engine>, tick: Duration) -> Result<Self, SandboxError> {
        Self::start_with(engines, tick, |body| {
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(body)
        })
    }

    /// Starts the ticker through `spawn` (a seam so the failure path can be tested).
    fn start_with(
        engines: Vec<Engine>,
        tick: Duration,
        spawn: impl FnOnce(TickerBody) -> std::io::Result<JoinHandle<()>>,
    ) -> Result<Self, SandboxError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = spawn(Box::new(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                for engine in &engines {
                    engine.increment_epoch();
                }
            }
        }))
        .map_err(SandboxError::EpochTicker)?;
        Ok(Ticker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A module compiled and linked for one engine, ready to instantiate cheaply.
type Prepared = Result<Linked, Outcome>;

/// A module linked for one engine, its `_start` export's index looked up once (a
/// lookup by name per job was a measurable share of a small job).
#[derive(Clone)]
struct Linked {
    pre: InstancePre<StoreState>,
    start: Option<ModuleExport>,
}

/// Where a module's compiled code for one engine comes from when it is not compiled
/// here from its bytes (the fleet's artifact cache).
pub trait CompiledSource: Send + Sync {
    /// The module compiled for `sandbox`'s engine `metering`, or the outcome the module
    /// earns.
    fn compiled(&self, sandbox: &Sandbox, metering: Metering) -> Result<Module, Outcome>;
}

/// Where a loaded module's code comes from.
enum Code {
    /// Compiled here from the module's bytes.
    Bytes(Arc<[u8]>),
    /// Compiled code from elsewhere (the artifact cache, which fetches the bytes only
    /// if it has to compile).
    Source(Box<dyn CompiledSource>),
}

/// A module accepted by the sandbox: validated, size-checked, and prepared (lazily per
/// engine) as an `InstancePre` so a job's instantiation is a copy-on-write map.
pub struct LoadedModule {
    hash: ModuleHash,
    prepared: [OnceLock<Prepared>; 2],
    code: Code,
    /// The guest's `argv[0]`: the module's file name where it was loaded from one
    /// (`run`, embedded batches), else its hash in hex (hex-encoded once here; the WASI
    /// builder still copies it into each job's context).
    argv0: String,
}

impl LoadedModule {
    /// The module's content address.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    /// The entry point this module offers when a job does not name one, by the rule
    /// the scheduler applies too ([`EntryPoint::default_for`]); a module that does not
    /// compile gets a command (whose run then reports why).
    pub fn default_entry(&self, sandbox: &Sandbox) -> EntryPoint {
        match self.prepared(sandbox, Metering::Off) {
            Ok(linked) => {
                EntryPoint::default_for(|name| linked.pre.module().get_export(name).is_some())
            }
            Err(_) => EntryPoint::Command,
        }
    }

    /// What the guest sees as `argv[0]`: the name it was loaded under, else its hash.
    pub fn program_name(&self) -> String {
        self.argv0.clone()
    }

    /// Loads (compiles, or gets from its source) the module's code for the engine
    /// `job` runs on, if not done yet; the outcome the module earns otherwise. The
    /// executor calls it before [`Sandbox::run`], so that the time this takes (a
    /// compile: seconds for a large module) is not counted against the job's timeout.
    pub fn load_code_for(&self, sandbox: &Sandbox, job: &Job) -> Result<(), Outcome> {
        self.prepared(sandbox, metering_of(job))
            .as_ref()
            .map(|_| ())
            .map_err(Outcome::clone)
    }

    fn prepared<'a>(&'a self, sandbox: &Sandbox, metering: Metering) -> &'a Prepared {
        self.prepared[metering.index()].get_or_init(|| match &self.code {
            Code::Source(source) => source
                .compiled(sandbox, metering)
                .and_then(|module| sandbox.link(metering, &module)),
            Code::Bytes(bytes) => sandbox.prepare(metering, bytes),
        })
    }
}

/// Runs jobs. One per process: build it once, share it (`Arc`) across worker threads.
pub struct Sandbox {
    config: SandboxConfig,
    engines: [EngineSet; 2],
    allowed_imports: HashSet<(String, String)>,
    code: CodeSource,
    _ticker: Ticker,
}

impl Sandbox {
    /// Checks the configuration, then builds the engines, the WASI linker and the
    /// epoch ticker. Modules are compiled in this process.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        Self::build(config, CodeSource::InProcess)
    }

    /// As [`Sandbox::new`], but modules are compiled by `compiler` in a child process
    /// under its limits; `compiler` must be built for this configuration's
    /// [`EngineSettings`].
    pub fn with_compiler(config: SandboxConfig, compiler: Compiler) -> Result<Self, SandboxError> {
        let sandbox = EngineSettings::of(&config);
        if compiler.settings() != sandbox {
            return Err(SandboxError::CompilerMismatch {
                compiler: compiler.settings(),
                sandbox,
            });
        }
        Self::build(config, CodeSource::Child(compiler))
    }

    fn build(config: SandboxConfig, code: CodeSource) -> Result<Self, SandboxError> {
        config.validate()?;
        let engines = [
            Self::engine_set(&config, Metering::Off)?,
            Self::engine_set(&config, Metering::Fuel)?,
        ];
        let allowed_imports = Self::linker_names(&engines[0])?;
        let ticker = Ticker::start(
            engines.iter().map(|set| set.engine.clone()).collect(),
            config.epoch_tick,
        )?;
        Ok(Sandbox {
            config,
            engines,
            allowed_imports,
            code,
            _ticker: ticker,
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// What the instance pools of both engines keep resident in their free slots now
    /// (`SandboxConfig::memory_keep_resident_bytes` and `table_keep_resident_bytes` at
    /// work): linear-memory bytes and table bytes.
    pub fn pool_resident_bytes(&self) -> PoolResident {
        let mut resident = PoolResident::default();
        for set in &self.engines {
            if let Some(metrics) = set.engine.pooling_allocator_metrics() {
                resident.memory += metrics.unused_memory_bytes_resident() as u64;
                resident.tables += metrics.unused_table_bytes_resident() as u64;
            }
        }
        resident
    }

    fn engine_set(config: &SandboxConfig, metering: Metering) -> Result<EngineSet, SandboxError> {
        let engine_err = |e: wasmtime::Error| SandboxError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(config.slots)
            .total_memories(config.slots)
            .total_tables(config.slots * 4)
            .max_tables_per_module(4)
            .max_memories_per_module(1)
            .total_component_instances(0)
            .total_stacks(0)
            .table_elements(config.max_table_elements)
            .max_memory_size(as_usize(config.max_guest_memory_bytes))
            // Decommit (and return to the free list) each slot's memory and tables as the
            // Store drops, on the job's own thread, before run/run_io returns and so before
            // the executor frees the job's permit: with a larger batch a freed slot waits in
            // a per-thread queue until that thread gathers a batch, and another thread can
            // find the pool empty with fewer jobs than slots in flight ("instance pool
            // full"). Kept-resident memory is reset with memset, so a guest within the kept
            // budget makes no system call here; a larger one makes one madvise.
            .decommit_batch_size(1)
            // Reset a slot's first bytes in place rather than decommit them: a real guest
            // then reuses its slot without page faults or cross-CPU TLB flushes (kernel
            // time went from two thirds of a C guest's job to ~1% in our measurements).
            .linear_memory_keep_resident(as_usize(config.memory_keep_resident_bytes))
            .table_keep_resident(as_usize(config.table_keep_resident_bytes))
            // Off by default: wasmtime 48's scan misses dirty pages not resident at
            // scan time, leaking them to the next tenant (SandboxConfig::pagemap_scan).
            .pagemap_scan(if config.pagemap_scan {
                Enabled::Auto
            } else {
                Enabled::No
            });
        // The code-shaping part is shared with the compile child; the pool is ours.
        let mut wasm = code_config(&EngineSettings::of(config), metering);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut StoreState| {
            &mut state.wasi
        })
        .map_err(engine_err)?;
        let grants = if config.dir_grants.is_empty() {
            hostcalls::Grants::None
        } else {
            hostcalls::Grants::Some
        };
        hostcalls::shadow_p1_calls(&mut linker, grants).map_err(engine_err)?;
        Ok(EngineSet { engine, linker })
    }

    /// Every `(module, name)` the linker defines: the only imports a guest may have.
    fn linker_names(set: &EngineSet) -> Result<HashSet<(String, String)>, SandboxError> {
        let mut store = Store::new(
            &set.engine,
            StoreState {
                wasi: WasiCtxBuilder::new().build_p1(),
                limiter: GuestLimiter::new(0, 0),
                deadline: Instant::now(),
                job_start: Instant::now(),
            },
        );
        Ok(set
            .linker
            .iter(&mut store)
            .map(|(module, name, _)| (module.to_owned(), name.to_owned()))
            .collect())
    }

    /// Accepts a module (wasm bytes or WAT text): checks the size cap, compiles it,
    /// checks its imports and links it. Fails with the job outcome the module earns.
    pub fn load_module(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, Outcome> {
        self.load_uncapped(bytes, None).map_err(Outcome::capped)
    }

    /// As [`Self::load_module`], the guest's `argv[0]` being `name` (the module's file
    /// name, as `wasmtime run` gives it) instead of the module's hash.
    pub fn load_named_module(
        &self,
        bytes: &[u8],
        name: &str,
    ) -> Result<Arc<LoadedModule>, Outcome> {
        self.load_uncapped(bytes, Some(name.to_owned()))
            .map_err(Outcome::capped)
    }

    fn load_uncapped(
        &self,
        bytes: &[u8],
        name: Option<String>,
    ) -> Result<Arc<LoadedModule>, Outcome> {
        let size = bytes.len() as u64;
        if size > self.config.max_module_bytes {
            return Err(Outcome::ModuleTooLarge {
                size,
                limit: self.config.max_module_bytes,
            });
        }
        let hash = ModuleHash::of(bytes);
        let loaded = LoadedModule {
            hash,
            prepared: [OnceLock::new(), OnceLock::new()],
            code: Code::Bytes(bytes.into()),
            argv0: name.unwrap_or_else(|| hash.to_hex()),
        };
        // Compile for the unmetered engine now so a bad module is refused at load.
        loaded.prepared(self, Metering::Off).clone()?;
        Ok(Arc::new(loaded))
    }

    /// The module's code for one engine, from wherever this sandbox compiles.
    fn compile(&self, metering: Metering, bytes: &[u8]) -> Result<Module, Outcome> {
        let engine = &self.engines[metering.index()].engine;
        match &self.code {
            CodeSource::InProcess => {
                Module::new(engine, bytes).map_err(|e| Outcome::InvalidModule {
                    // WAT parse errors span several lines; an outcome is reported on one.
                    reason: describe(&e)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                })
            }
            CodeSource::Child(compiler) => compiler
                .compile_module(engine, bytes, metering)
                .map_err(|e: CompileError| e.outcome()),
        }
    }

    /// The serialized artifact of a module for engine `metering`, compiled where this
    /// sandbox compiles (in process, or in its limited compile child): what the module
    /// cache stores. A module that does not compile, or breaks a compile limit, gets
    /// the outcome it earns.
    pub fn precompile(&self, metering: Metering, wasm: &[u8]) -> Result<Vec<u8>, Outcome> {
        match &self.code {
            CodeSource::InProcess => self.engines[metering.index()]
                .engine
                .precompile_module(wasm)
                .map_err(|e| Outcome::InvalidModule {
                    reason: describe(&e)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                }),
            CodeSource::Child(compiler) => compiler
                .precompile(wasm, metering)
                .map_err(|e: CompileError| e.outcome()),
        }
    }

    fn prepare(&self, metering: Metering, bytes: &[u8]) -> Prepared {
        let module = self.compile(metering, bytes)?;
        self.link(metering, &module)
    }

    /// Accepts module `hash` whose compiled code comes from `source`, per engine, when
    /// a job first needs that engine (nothing is compiled or read here, not even the
    /// module's bytes: a source that has to compile fetches them and checks their size
    /// and hash); imports are checked and the module linked as [`Self::load_module`]
    /// does.
    pub fn load_compiled(
        &self,
        hash: ModuleHash,
        source: Box<dyn CompiledSource>,
    ) -> Arc<LoadedModule> {
        Arc::new(LoadedModule {
            hash,
            prepared: [OnceLock::new(), OnceLock::new()],
            code: Code::Source(source),
            argv0: hash.to_hex(),
        })
    }

    /// The engine jobs of `metering` run on (to compile or load code for it).
    pub fn engine(&self, metering: Metering) -> &Engine {
        &self.engines[metering.index()].engine
    }

    /// Checks a compiled module's imports against the linker and links it.
    fn link(&self, metering: Metering, module: &Module) -> Prepared {
        let set = &self.engines[metering.index()];
        for import in module.imports() {
            let key = (import.module().to_owned(), import.name().to_owned());
            if !self.allowed_imports.contains(&key) {
                // Capped here too: names reach 100 kB, and the prepared result is kept.
                return Err(Outcome::ImportNotAllowed {
                    module: key.0,
                    name: key.1,
                }
                .capped());
            }
        }
        let pre = set.linker.instantiate_pre(module).map_err(|e| {
            Outcome::ImportNotAllowed {
                module: "wasi_snapshot_preview1".into(),
                name: describe(&e),
            }
            .capped()
        })?;
        Ok(Linked {
            pre,
            start: module.get_export_index("_start"),
        })
    }

    /// Runs `job` with `module` over `input`, streaming the output into `output`.
    /// Never panics on anything the module does: every end is a typed [`Outcome`].
    /// Both may stall: a helper thread reads and writes them, and the guest waits for
    /// it only until the job's deadline ([`Self::run_io`] with
    /// [`JobReader::Stream`] and [`JobWriter::Stream`]).
    pub fn run(
        &self,
        module: &LoadedModule,
        job: &Job,
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
    ) -> JobResult {
        self.run_io(
            module,
            job,
            JobReader::Stream(input),
            JobWriter::Stream(output),
        )
    }

    /// As [`Self::run`], with input and output that say whether they may stall: an
    /// input in memory ([`JobReader::Memory`]) and output collected in memory
    /// ([`JobWriter::Memory`], handed back as the result's [`JobOutput::Inline`]) are
    /// served on the guest's own thread, with no helper-thread hand-off per job.
    pub fn run_io(
        &self,
        module: &LoadedModule,
        job: &Job,
        input: JobReader,
        output: JobWriter,
    ) -> JobResult {
        let started = Instant::now();
        // A timeout past what an `Instant` holds is as good as none: a century.
        let deadline = started
            .checked_add(job.limits.timeout())
            .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
        let stop = Arc::new(AtomicBool::new(false));
        let stdin = match input {
            JobReader::Memory(bytes) => GuestStdin::from_bytes(bytes),
            JobReader::Stream(reader) => GuestStdin::with_deadline(reader, Some(deadline)),
        };
        let cap = job.limits.max_output_bytes;
        let (stdout, in_memory) = match output {
            JobWriter::Memory => {
                let buffer = MemoryOutput::default();
                let sink: Box<dyn Write + Send> = Box::new(buffer.clone());
                (
                    GuestOutput::new(sink, cap, Overflow::Stop, stop.clone()),
                    Some(buffer),
                )
            }
            JobWriter::Stream(sink) => (
                GuestOutput::with_deadline(sink, cap, Overflow::Stop, stop.clone(), deadline),
                None,
            ),
            JobWriter::Spill { keep, then } => (
                GuestOutput::spill_buffered(
                    then,
                    keep,
                    cap,
                    Overflow::Stop,
                    stop.clone(),
                    deadline,
                ),
                None,
            ),
        };
        let stderr = GuestOutput::new(
            Vec::new(),
            self.config.stderr_cap_bytes as u64,
            Overflow::Truncate,
            Arc::new(AtomicBool::new(false)),
        );
        let mut stats = RunStats::default();
        let outcome = self.run_guest(
            module, job, &stdin, &stdout, &stderr, stop, &mut stats, started, deadline,
        );
        let outcome = match (outcome, stdout.finish()) {
            (Outcome::Success, Err(FinishError::Deadline)) => Outcome::Timeout,
            (Outcome::Success, Err(FinishError::Sink(e))) => Outcome::HostError {
                reason: format!("writing output: {e}"),
            },
            (outcome, _) => outcome,
        };
        stats.wall_time_us = started.elapsed().as_micros() as u64;
        stats.output_bytes = stdout.written();
        stats.input_bytes = stdin.consumed();
        JobResult {
            job_id: job.id,
            outcome,
            stats,
            stderr: stderr.take_sink(),
            stderr_truncated: stderr.overflowed(),
            attempt: job.attempt + 1,
            output: match in_memory {
                Some(buffer) => JobOutput::Inline(buffer.take()),
                // Kept in memory when a `JobWriter::Spill` output never spilled.
                None => stdout
                    .take_kept()
                    .map_or(JobOutput::Written, JobOutput::Inline),
            },
        }
        .capped()
    }

    #[allow(clippy::too_many_arguments)]
    fn run_guest(
        &self,
        module: &LoadedModule,
        job: &Job,
        stdin: &GuestStdin,
        stdout: &GuestOutput<Box<dyn Write + Send>>,
        stderr: &GuestOutput<Vec<u8>>,
        stop: Arc<AtomicBool>,
        stats: &mut RunStats,
        started: Instant,
        deadline: Instant,
    ) -> Outcome {
        let metering = metering_of(job);
        let linked = match module.prepared(self, metering) {
            Ok(linked) => linked,
            Err(outcome) => return outcome.clone(),
        };
        let pre = &linked.pre;
        let memory_cap = job
            .limits
            .memory_bytes
            .min(self.config.max_guest_memory_bytes);
        let declared = pre
            .module()
            .resources_required()
            .max_initial_memory_size
            .unwrap_or(0)
            .saturating_mul(WASM_PAGE_BYTES);
        if declared > memory_cap {
            return Outcome::MemoryLimit {
                detail: format!(
                    "module declares {declared} bytes of initial memory, limit is {memory_cap} bytes"
                ),
            };
        }

        let mut wasi = WasiCtxBuilder::new();
        // With grants, file I/O runs on tokio's blocking pool, where the shadowed file
        // calls can abandon it at the deadline; without, there are no files to block on
        // and inline is fastest.
        wasi.allow_blocking_current_thread(self.config.dir_grants.is_empty())
            .monotonic_clock(JobClock(started))
            .stderr(stderr.clone())
            .arg(job.program.as_ref().map_or(&*module.argv0, |n| n.as_str()))
            .args(&job.args)
            .envs(&job.env);
        match &job.entry {
            EntryPoint::Command => {
                wasi.stdin(stdin.clone()).stdout(stdout.clone());
            }
            // The raw ABI's input and output travel through `process`; what the guest
            // prints is diagnostics.
            EntryPoint::Raw { .. } => {
                wasi.stdout(stderr.clone());
            }
        }
        for grant in &self.config.dir_grants {
            let perms = if grant.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            if let Err(e) = wasi.preopened_dir(&grant.host_path, &grant.guest_path, perms) {
                return Outcome::HostError {
                    reason: format!("granting {}: {}", grant.host_path.display(), describe(&e)),
                };
            }
        }

        let set = &self.engines[metering.index()];
        let mut store = Store::new(
            &set.engine,
            StoreState {
                wasi: wasi.build_p1(),
                limiter: GuestLimiter::new(memory_cap, self.config.max_table_elements),
                deadline,
                job_start: started,
            },
        );
        store.limiter(|state| &mut state.limiter);
        if let Some(fuel) = job.limits.fuel
            && let Err(e) = store.set_fuel(fuel)
        {
            return Outcome::HostError {
                reason: format!("setting fuel: {}", describe(&e)),
            };
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if stop.load(Ordering::Relaxed) {
                Err(Interrupted::Output.into())
            } else if Instant::now() >= deadline {
                Err(Interrupted::Timeout.into())
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });

        let ran = pre
            .instantiate(&mut store)
            .map_err(raw_abi::RunError::Wasm)
            .and_then(|instance| match &job.entry {
                EntryPoint::Command => {
                    // By the index found at link time; by name (for its error) when that
                    // finds no `() -> ()` function.
                    let start = match linked
                        .start
                        .as_ref()
                        .and_then(|export| instance.get_module_export(&mut store, export))
                        .and_then(Extern::into_func)
                        .and_then(|func| func.typed::<(), ()>(&store).ok())
                    {
                        Some(start) => start,
                        None => instance
                            .get_typed_func::<(), ()>(&mut store, "_start")
                            .map_err(|e| raw_abi::RunError::Outcome(missing_export("_start", e)))?,
                    };
                    start.call(&mut store, ()).map_err(raw_abi::RunError::Wasm)
                }
                EntryPoint::Raw { export } => raw_abi::run(
                    &mut store,
                    &instance,
                    export,
                    stdin,
                    stdout,
                    self.config.raw_chunk_bytes,
                ),
            });

        if let (Some(budget), Ok(left)) = (job.limits.fuel, store.get_fuel()) {
            stats.fuel_used = Some(budget.saturating_sub(left));
        }
        stats.peak_memory_bytes = store.data().limiter.peak_memory as u64;
        let limit_hit = store.data().limiter.exceeded.clone();
        let outcome = match ran {
            Ok(()) => Outcome::Success,
            Err(raw_abi::RunError::Outcome(outcome)) => outcome,
            Err(raw_abi::RunError::Wasm(error)) => classify(&error, limit_hit, job),
        };
        match outcome {
            // A write past the cap failed: however the guest then ended (it may report
            // the failed write with an exit status, or abort), the cap is why.
            Outcome::Success | Outcome::NonZeroExit { .. } | Outcome::Trap { .. }
                if stdout.overflowed() =>
            {
                Outcome::OutputLimit {
                    limit: job.limits.max_output_bytes,
                }
            }
            Outcome::Success if stdin.timed_out() => Outcome::Timeout,
            Outcome::Success if stdin.error().is_some() => Outcome::InputUnavailable {
                reason: stdin.error().unwrap_or_default(),
            },
            other => other,
        }
    }
}

/// A byte count for wasmtime, saturating where `usize` is narrower (the values are
/// validated far below that).
fn as_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

pub(crate) fn missing_export(name: &str, error: wasmtime::Error) -> Outcome {
    Outcome::MissingExport {
        name: name.to_owned(),
        reason: describe(&error),
    }
    .capped()
}

/// An error's message chain for an outcome: every cause, but a wasm backtrace cut to
/// its first frames with their names shortened (a guest's name section can make each
/// frame kilobytes long).
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    // wasmtime attaches the backtrace as a context of the error: it is one link of the
    // chain, rendered whole by its `Display`.
    let backtrace = error.downcast_ref::<wasmtime::WasmBacktrace>();
    let backtrace_text = backtrace.map(ToString::to_string);
    for cause in error.chain() {
        let text = cause.to_string();
        if backtrace_text.as_ref() == Some(&text) {
            continue;
        }
        // Contexts often repeat their cause's text; say it once.
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    let mut out = parts.join(": ");
    if let Some(trace) = backtrace {
        let frames = trace.frames();
        let shown: Vec<String> = frames
            .iter()
            .take(BACKTRACE_FRAMES_KEPT)
            .map(|frame| {
                let module = frame.module().name().unwrap_or("<module>");
                let func = frame
                    .func_name()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("<func {}>", frame.func_index()));
                format!(
                    "{}!{}",
                    sluice_shared::outcome::cut(module, FRAME_NAME_BYTES),
                    sluice_shared::outcome::cut(&func, FRAME_NAME_BYTES)
                )
            })
            .collect();
        if !shown.is_empty() {
            out.push_str(" (wasm backtrace: ");
            out.push_str(&shown.join(" <- "));
            if frames.len() > shown.len() {
                out.push_str(&format!(", {} more frames", frames.len() - shown.len()));
            }
            out.push(')');
        }
    }
    out
}

/// Maps how a guest stopped to its outcome.
fn classify(error: &wasmtime::Error, limit_hit: Option<String>, job: &Job) -> Outcome {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Outcome::Success,
            code => Outcome::NonZeroExit { code },
        };
    }
    if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
        return match interrupted {
            Interrupted::Timeout => Outcome::Timeout,
            Interrupted::Output => Outcome::OutputLimit {
                limit: job.limits.max_output_bytes,
            },
        };
    }
    if let Some(detail) = limit_hit {
        return Outcome::MemoryLimit { detail };
    }
    // The pool had no free slot for this instance (one just freed can still be waiting
    // in the decommit queue): the worker's doing, not the guest's, so a retryable host
    // error rather than a final trap.
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return Outcome::HostError {
            reason: format!("instance pool full: {error}"),
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::FuelExhausted,
        Some(Trap::Interrupt) => Outcome::Timeout,
        Some(trap) => Outcome::Trap {
            code: snake_case(&format!("{trap:?}")),
            message: trap.to_string(),
        },
        None => Outcome::Trap {
            code: "host_function".into(),
            message: describe(error),
        },
    }
}

/// `IntegerDivisionByZero` → `integer_division_by_zero`.
fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_names_become_snake_case() {
        assert_eq!(
            snake_case("IntegerDivisionByZero"),
            "integer_division_by_zero"
        );
        assert_eq!(snake_case("StackOverflow"), "stack_overflow");
    }

    #[test]
    fn a_failed_ticker_spawn_fails_the_sandbox() {
        let started = Ticker::start_with(Vec::new(), Duration::from_millis(5), |_| {
            Err(std::io::Error::other("no more threads"))
        });
        assert!(matches!(started, Err(SandboxError::EpochTicker(_))));
    }

    #[test]
    fn a_bad_config_value_fails_the_sandbox_naming_it() {
        let built = Sandbox::new(SandboxConfig {
            epoch_tick: Duration::ZERO,
            ..SandboxConfig::default()
        });
        match built {
            Err(SandboxError::Config(e)) => assert_eq!(e.field, "epoch_tick"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a zero epoch tick was accepted"),
        }
    }
}

/// Bytes the instance pools keep resident in free slots ([`Sandbox::pool_resident_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolResident {
    /// Linear-memory bytes.
    pub memory: u64,
    /// Table bytes.
    pub tables: u64,
}
