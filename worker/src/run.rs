//! `sluice-worker run`: one module over stdin → stdout under the sandbox's limits,
//! mirroring `wasmtime run`, with an optional JSON report of the run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use sluice_shared::{Job, JobInput, JobResult, ModuleHash, Outcome, ReportLine};

use crate::cli::GuestArgs;
use crate::config::{DirGrant, DirGrantError, SandboxConfig};
use crate::sandbox::{Sandbox, SandboxError};

/// `run`'s arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The module: a .wasm binary or .wat text.
    pub module: PathBuf,
    /// Limits, environment, directory grants and entry point of the guest.
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Also write the job's report (outcome, fuel, wall time, memory, the worker's peak
    /// RSS) as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Arguments passed to the guest after its argv[0] (the module's file name), as
    /// `wasmtime run` passes them: `run m.wasm a b`; after `--` for ones that look like
    /// flags (`run m.wasm -- -n 3`).
    #[arg(value_name = "ARGS")]
    pub args: Vec<String>,
}

/// How a run ended, when it ran (or its module was refused) and was reported.
#[derive(Clone, Debug, PartialEq)]
pub enum RunExit {
    /// The guest exited on its own: 0 for success, else its status (1 where it does
    /// not fit in a process exit status).
    Guest {
        /// The status to exit with.
        status: u8,
    },
    /// The sandbox, not the guest, ended the run (a limit, a trap, a refused module);
    /// `outcome: <kind>` was written to stderr.
    SandboxStopped {
        /// Why.
        outcome: Outcome,
    },
}

/// Why `run` could not run the module or report it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A `--dir` grant is malformed or names a directory that cannot be granted.
    #[error("--dir: {0}")]
    DirGrant(#[from] DirGrantError),
    /// The module file cannot be read.
    #[error("reading module {path}: {source}")]
    ReadModule {
        /// The module path as given.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The sandbox could not be built.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The process's own stdin, stdout or stderr failed.
    #[error("{what}: {source}")]
    Stdio {
        /// Which handle, doing what.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The report could not be written.
    #[error("writing report {path}: {source}")]
    WriteReport {
        /// The report path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The report could not be encoded.
    #[error("encoding the report: {0}")]
    EncodeReport(#[from] serde_json::Error),
}

impl RunError {
    /// Whether the operator's input is at fault (a bad `--dir`, an unreadable module),
    /// as opposed to the worker failing.
    pub fn is_usage(&self) -> bool {
        matches!(self, RunError::DirGrant(_) | RunError::ReadModule { .. })
    }
}

/// The `--report` file: the run's report line plus the worker's peak memory.
#[derive(serde::Serialize)]
struct RunReport {
    #[serde(flatten)]
    line: ReportLine,
    /// The worker process's peak resident set size (VmHWM), in bytes.
    peak_rss_bytes: Option<u64>,
}

/// The process's peak RSS from `/proc/self/status` (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn stdio(what: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Stdio { what, source }
}

/// Runs `args.module` with the process's stdin as its input and stdout as its output,
/// writes the guest's stderr (and `outcome: …` when the sandbox stopped it) to stderr,
/// and the report if asked for.
pub fn run(args: RunArgs) -> Result<RunExit, RunError> {
    let dir_grants = args
        .guest
        .dirs
        .iter()
        .map(|spec| DirGrant::parse(spec, args.guest.read_only_dirs))
        .collect::<Result<Vec<_>, _>>()?;
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 1,
        dir_grants,
        ..SandboxConfig::default()
    })?;
    let bytes = std::fs::read(&args.module).map_err(|source| RunError::ReadModule {
        path: args.module.clone(),
        source,
    })?;

    // Our own handles on fds 0 and 1: unbuffered reads of whole chunks in, and one
    // buffer out instead of std's line buffering.
    let stdin = File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(stdio("duplicating stdin"))?,
    );
    let stdout = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(stdio("duplicating stdout"))?,
    );
    let output = BufWriter::with_capacity(64 << 10, stdout);

    let name = args.module.file_name().map_or_else(
        || args.module.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let (mut job, result) = match sandbox.load_named_module(&bytes, &name) {
        Ok(module) => {
            let mut job = Job::new(module.hash(), JobInput::Stdin);
            job.entry = args
                .guest
                .entry()
                .unwrap_or_else(|| module.default_entry(&sandbox));
            job.args = args.args.clone();
            job.env = args.guest.env.clone();
            job.limits = args.guest.limits();
            let result = sandbox.run(&module, &job, Box::new(stdin), Box::new(output));
            (job, result)
        }
        Err(outcome) => {
            let job = Job::new(ModuleHash::of(&bytes), JobInput::Inline(Vec::new()));
            let result = JobResult::without_run(job.id, outcome, 1);
            (job, result)
        }
    };
    job.label = args.module.display().to_string();

    std::io::stderr()
        .write_all(&result.stderr)
        .map_err(stdio("writing the guest's stderr"))?;
    if let Some(path) = &args.report {
        let report = RunReport {
            line: ReportLine::new(job.label.clone(), &result),
            peak_rss_bytes: peak_rss_bytes(),
        };
        let json = serde_json::to_vec(&report)?;
        std::fs::write(path, json).map_err(|source| RunError::WriteReport {
            path: path.clone(),
            source,
        })?;
    }
    Ok(match result.outcome {
        Outcome::Success => RunExit::Guest { status: 0 },
        Outcome::NonZeroExit { code } => RunExit::Guest {
            status: u8::try_from(code).unwrap_or(1),
        },
        outcome => {
            eprintln!("outcome: {outcome}");
            RunExit::SandboxStopped { outcome }
        }
    })
}
