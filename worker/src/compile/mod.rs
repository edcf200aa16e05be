//! Compilation out of the worker process.
//!
//! Compiling is the one step of a job that wasmtime does not bound: a hostile module
//! can make Cranelift spend gigabytes and minutes. [`Compiler::precompile`] therefore
//! runs `sluice-worker compile` ([`child`]) as a child process, which limits its own
//! address space (`RLIMIT_AS`) and CPU time (`RLIMIT_CPU`) before reading the module;
//! the parent feeds it the wasm, reads the artifact with a size cap and kills it at a
//! wall-clock limit ([`CompileLimits`]). The artifact becomes a module only through
//! [`load_artifact`], which takes a [`Verified`] token.
//!
//! The child builds its engine with [`engine::code_config`], the same function the
//! sandbox builds its engines with; the parent passes it the [`EngineSettings`] on its
//! command line.

pub mod artifact;
pub mod child;
pub mod engine;
pub mod limits;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::{ModuleHash, Outcome};

pub use artifact::{Artifact, Provenance, Verified, load_artifact};
pub use child::CompileArgs;
pub use engine::{EngineSettings, Metering};
pub use limits::{CompileLimits, CompileLimitsError};

use crate::metrics::CompileMetrics;

/// Most stderr read from a child: its one-line reason, and Rust's allocation-failure
/// message.
const STDERR_KEPT: u64 = 8 << 10;
/// Most modules remembered as bad; past it the memory starts over, so it stays bounded
/// whatever a tenant uploads.
const MAX_REMEMBERED_BAD: usize = 4096;
/// `SIGXCPU` on Linux: the kernel's signal at the soft CPU limit.
const SIGXCPU: i32 = 24;
/// `SIGABRT`: how Rust ends a process whose allocation failed.
const SIGABRT: i32 = 6;

/// Which compile limit a module broke: the label of
/// `sluice_module_compile_limit_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompileLimit {
    /// The child's address space.
    Memory,
    /// The child's CPU time.
    Cpu,
    /// The parent's wall-clock wait.
    WallClock,
    /// The artifact's size.
    ArtifactSize,
}

impl CompileLimit {
    /// Every limit, in label order.
    pub const ALL: [CompileLimit; 4] = [
        CompileLimit::Memory,
        CompileLimit::Cpu,
        CompileLimit::WallClock,
        CompileLimit::ArtifactSize,
    ];

    /// The metric label: `memory`, `cpu`, `wall_clock` or `artifact_size`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompileLimit::Memory => "memory",
            CompileLimit::Cpu => "cpu",
            CompileLimit::WallClock => "wall_clock",
            CompileLimit::ArtifactSize => "artifact_size",
        }
    }
}

/// Why a module was not compiled.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// The child ran out of its address space.
    #[error("compiling the module needed more than the compile memory limit ({limit} bytes)")]
    Memory {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The child used up its CPU time.
    #[error("compiling the module used more than the compile CPU limit ({seconds} s)")]
    Cpu {
        /// The limit, in seconds.
        seconds: u64,
    },
    /// The child did not finish in time and was killed.
    #[error("compiling the module took longer than the compile wall-clock limit ({limit:?})")]
    WallClock {
        /// The limit.
        limit: Duration,
    },
    /// The artifact grew past the cap and the child was killed.
    #[error("the module's compiled code is larger than the artifact cap ({limit} bytes)")]
    ArtifactSize {
        /// The cap, in bytes.
        limit: u64,
    },
    /// The compiler refused the module; its message (one line, capped).
    #[error("{0}")]
    Invalid(String),
    /// The child could not be started or fed (not the module's fault).
    #[error("cannot run the compiler {program}: {reason}")]
    Spawn {
        /// The program that was started.
        program: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The child ended in a way that names no limit (not counted against the module).
    #[error("the compiler failed ({status}): {stderr}")]
    Crashed {
        /// How it exited.
        status: String,
        /// What it said (capped).
        stderr: String,
    },
}

impl CompileError {
    /// The limit this error reports, if it reports one.
    pub fn limit(&self) -> Option<CompileLimit> {
        match self {
            CompileError::Memory { .. } => Some(CompileLimit::Memory),
            CompileError::Cpu { .. } => Some(CompileLimit::Cpu),
            CompileError::WallClock { .. } => Some(CompileLimit::WallClock),
            CompileError::ArtifactSize { .. } => Some(CompileLimit::ArtifactSize),
            _ => None,
        }
    }

    /// Whether the module is at fault: invalid code, or a limit that measures the
    /// module's own demands (memory, CPU time, artifact size). It will fail the same
    /// way again, so it is remembered, recorded as the fleet's refusal, and the job
    /// ends as `invalid_module`. The wall clock is not one: how long a compile takes
    /// depends on the host's load (another tenant's compiles), so a module that ran
    /// out of it is not condemned for it (a compile bomb still meets the CPU limit).
    pub fn is_module_fault(&self) -> bool {
        match self {
            CompileError::Invalid(_)
            | CompileError::Memory { .. }
            | CompileError::Cpu { .. }
            | CompileError::ArtifactSize { .. } => true,
            CompileError::WallClock { .. }
            | CompileError::Spawn { .. }
            | CompileError::Crashed { .. } => false,
        }
    }

    /// The job outcome: `invalid_module` for the module's faults (naming the limit),
    /// a retryable `host_error` otherwise (the wall clock named in its reason).
    pub fn outcome(&self) -> Outcome {
        if self.is_module_fault() {
            Outcome::InvalidModule {
                reason: self.to_string(),
            }
        } else {
            Outcome::HostError {
                reason: self.to_string(),
            }
        }
        .capped()
    }
}

/// Compiles modules in child processes under [`CompileLimits`]. One per sandbox.
pub struct Compiler {
    program: PathBuf,
    limits: CompileLimits,
    settings: EngineSettings,
    max_module_bytes: u64,
    metrics: Option<CompileMetrics>,
    /// Modules at fault ([`CompileError::is_module_fault`]), by hash: never compiled
    /// again. A wall-clock failure is not kept: the next job tries again.
    bad: Mutex<HashMap<ModuleHash, CompileError>>,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("program", &self.program)
            .field("limits", &self.limits)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Compiler {
    /// A compiler for engines of `settings` under `limits`, running this executable as
    /// the child: `/proc/self/exe`, which stays the running binary even when the file
    /// was replaced by an upgrade (another build's artifacts would not load), or
    /// `std::env::current_exe` where there is no procfs.
    pub fn new(
        limits: CompileLimits,
        settings: EngineSettings,
    ) -> Result<Self, CompileLimitsError> {
        limits.validate()?;
        let own = PathBuf::from("/proc/self/exe");
        let program = if own.exists() {
            own
        } else {
            std::env::current_exe().unwrap_or(own)
        };
        Ok(Compiler {
            program,
            limits,
            settings,
            max_module_bytes: sluice_shared::job::MAX_MODULE_BYTES,
            metrics: None,
            bad: Mutex::default(),
        })
    }

    /// Runs `program` (a `sluice-worker` binary) as the child instead of this
    /// executable: for tests and embedders whose executable is not `sluice-worker`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Counts compiles, their seconds and limit failures in `metrics`.
    pub fn with_metrics(mut self, metrics: CompileMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Largest module the child accepts (the sandbox's own cap).
    pub fn with_max_module_bytes(mut self, max: u64) -> Self {
        self.max_module_bytes = max;
        self
    }

    /// The engine settings this compiler compiles for.
    pub fn settings(&self) -> EngineSettings {
        self.settings
    }

    /// The limits each compile runs under.
    pub fn limits(&self) -> CompileLimits {
        self.limits
    }

    /// Compiles `wasm` (binary or WAT) for the `metering` engine in a child and returns
    /// the serialized artifact. A module at fault before (invalid, or over the memory,
    /// CPU or artifact-size limit) gets the same error at once, without a child.
    pub fn precompile(&self, wasm: &[u8], metering: Metering) -> Result<Vec<u8>, CompileError> {
        let hash = ModuleHash::of(wasm);
        if let Some(known) = self.bad.lock().get(&hash) {
            return Err(known.clone());
        }
        let started = Instant::now();
        if let Some(metrics) = &self.metrics {
            metrics.compiles.inc();
        }
        let compiled = self.run_child(wasm, metering);
        if let Some(metrics) = &self.metrics {
            metrics.seconds.observe(started.elapsed().as_secs_f64());
            if let Some(limit) = compiled.as_ref().err().and_then(CompileError::limit) {
                metrics
                    .limit_failures
                    .with_label_values(&[limit.as_str()])
                    .inc();
            }
        }
        match compiled {
            Err(error) if error.is_module_fault() => {
                tracing::warn!(module = %hash, %error, "module refused by the compiler");
                let mut bad = self.bad.lock();
                if bad.len() >= MAX_REMEMBERED_BAD {
                    bad.clear();
                }
                bad.insert(hash, error.clone());
                Err(error)
            }
            other => other,
        }
    }

    /// Compiles and loads into `engine` (built by [`engine::code_config`] with this
    /// compiler's settings): the module a sandbox runs.
    pub(crate) fn compile_module(
        &self,
        engine: &wasmtime::Engine,
        wasm: &[u8],
        metering: Metering,
    ) -> Result<wasmtime::Module, CompileError> {
        let artifact = self.precompile(wasm, metering)?;
        load_artifact(engine, Verified::from_own_child(&artifact)).map_err(|e| {
            CompileError::Crashed {
                status: "artifact refused by the engine".into(),
                stderr: format!("{e:#}"),
            }
        })
    }

    fn child_args(&self, metering: Metering) -> CompileArgs {
        CompileArgs {
            metering,
            max_wasm_stack: self.settings.max_wasm_stack_bytes,
            memory: self.limits.memory_bytes,
            cpu_seconds: self.limits.cpu_seconds(),
            max_module_bytes: self.max_module_bytes,
        }
    }

    fn run_child(&self, wasm: &[u8], metering: Metering) -> Result<Vec<u8>, CompileError> {
        let spawn_error = |reason: String| CompileError::Spawn {
            program: self.program.clone(),
            reason,
        };
        let mut child = Command::new(&self.program)
            .arg("compile")
            .args(self.child_args(metering).to_args())
            // The child parses untrusted wasm: it gets none of this process's
            // environment (the Redis URL with its password, SLUICE_CACHE_KEY); it reads
            // only its arguments and stdin. The program is an absolute path: no PATH.
            .env_clear()
            // The binary's allocator is mimalloc (3.x), which reserves 1 GiB of address
            // space for its first arena by default: under a small `--compile-memory`
            // that leaves too little for the compiler's thread stacks (rayon fails to
            // start; the compile_limits test). Without the reservation it maps as it
            // needs. Measured on the 1.5 MB hashbank.wasm: same CPU as with glibc's
            // malloc (2.3 s user at 1 GiB), peak RSS 90 against 88 MB, but it compiles
            // from 256 MiB of address space where glibc's needed 128 MiB (a 32 MiB
            // reserve: RSS 144 MB; mimalloc 2.x: more than 256 MiB).
            .env("MIMALLOC_ARENA_RESERVE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let deadline = Instant::now() + self.limits.wall_clock;
        let (stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(stdin), Some(stdout), Some(stderr)) => (stdin, stdout, stderr),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_error("the child's pipes are missing".into()));
                }
            };
        let cap = self.limits.artifact_bytes;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut stdin = stdin;
                // A child that died early closes the pipe: its status says why.
                let _ = stdin.write_all(wasm);
            });
            let said = scope.spawn(move || {
                let mut text = Vec::new();
                let mut stderr = stderr;
                let _ = (&mut stderr).take(STDERR_KEPT).read_to_end(&mut text);
                // The rest is drained, not kept, so the child never blocks on it.
                let _ = std::io::copy(&mut stderr, &mut std::io::sink());
                String::from_utf8_lossy(&text).into_owned()
            });
            let (sender, read) = mpsc::channel();
            scope.spawn(move || {
                let mut artifact = Vec::new();
                let got = stdout
                    .take(cap.saturating_add(1))
                    .read_to_end(&mut artifact)
                    .map(|_| artifact);
                let _ = sender.send(got);
            });
            let waited = deadline.saturating_duration_since(Instant::now());
            let artifact = match read.recv_timeout(waited) {
                Ok(Ok(artifact)) if artifact.len() as u64 > cap => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CompileError::ArtifactSize { limit: cap });
                }
                Ok(Ok(artifact)) => artifact,
                Ok(Err(e)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_error(format!("reading the artifact: {e}")));
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CompileError::WallClock {
                        limit: self.limits.wall_clock,
                    });
                }
            };
            // stdout closed: the child is exiting.
            let status = child
                .wait()
                .map_err(|e| spawn_error(format!("waiting for the child: {e}")))?;
            let stderr = said.join().unwrap_or_default();
            self.classify(status, stderr.trim(), artifact)
        })
    }

    /// How the child ended → the artifact or the error naming the limit.
    fn classify(
        &self,
        status: ExitStatus,
        stderr: &str,
        artifact: Vec<u8>,
    ) -> Result<Vec<u8>, CompileError> {
        use std::os::unix::process::ExitStatusExt;
        let said_out_of_memory = stderr.contains("memory allocation of")
            || stderr.contains("Cannot allocate memory")
            || stderr.contains("os error 12");
        let memory = CompileError::Memory {
            limit: self.limits.memory_bytes,
        };
        match (status.code(), status.signal()) {
            (Some(0), _) if !artifact.is_empty() => Ok(artifact),
            (Some(code), _) if code == i32::from(child::status::OUT_OF_MEMORY) => Err(memory),
            (Some(code), _) if code == i32::from(child::status::INVALID) => {
                if said_out_of_memory {
                    Err(memory)
                } else {
                    Err(CompileError::Invalid(sluice_shared::outcome::cut(
                        stderr,
                        sluice_shared::outcome::MAX_REASON_BYTES,
                    )))
                }
            }
            (_, Some(SIGXCPU)) => Err(CompileError::Cpu {
                seconds: self.limits.cpu_seconds(),
            }),
            (_, Some(SIGABRT)) if said_out_of_memory => Err(memory),
            // A panic (101) on a failed allocation or thread start.
            (Some(101), _) if said_out_of_memory => Err(memory),
            _ => Err(CompileError::Crashed {
                status: status.to_string(),
                stderr: sluice_shared::outcome::cut(stderr, 1024),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_modules_own_faults_are_refusals_not_the_wall_clock() {
        let faults = [
            CompileError::Invalid("bad section".into()),
            CompileError::Memory { limit: 1 << 30 },
            CompileError::Cpu { seconds: 120 },
            CompileError::ArtifactSize { limit: 1 << 20 },
        ];
        for error in faults {
            assert!(error.is_module_fault(), "{error}");
            assert!(
                matches!(error.outcome(), Outcome::InvalidModule { .. }),
                "{error}"
            );
        }
        let not_faults = [
            CompileError::WallClock {
                limit: Duration::from_secs(60),
            },
            CompileError::Spawn {
                program: "sluice-worker".into(),
                reason: "gone".into(),
            },
            CompileError::Crashed {
                status: "signal 9".into(),
                stderr: String::new(),
            },
        ];
        for error in not_faults {
            assert!(!error.is_module_fault(), "{error}");
            assert!(
                matches!(error.outcome(), Outcome::HostError { .. }),
                "{error}"
            );
        }
        // The wall clock is still a limit (counted as one), and its reason names it.
        let wall = CompileError::WallClock {
            limit: Duration::from_secs(60),
        };
        assert_eq!(wall.limit(), Some(CompileLimit::WallClock));
        assert!(wall.outcome().to_string().contains("wall-clock limit"));
    }
}
