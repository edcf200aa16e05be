//! Batches: a module over every file of a directory, one job per file, each output
//! written to `OUT/<file>` and a line per finished job to `OUT/report.jsonl`.
//!
//! - this file: what a batch runs ([`BatchOptions`]), why it cannot run
//!   ([`BatchError`]) and what it did ([`BatchSummary`]);
//! - [`embedded`]: embedded mode, one process, an in-memory queue, in-process workers;
//! - [`outdir`]: the output directory: reserved names, refusing a rerun into a
//!   non-empty one unless `--force` or `--resume`, and sweeping partial files;
//! - [`interrupt`]: SIGINT/SIGTERM: the first stops starting jobs, the second aborts;
//! - [`output`]: `--output-format`: one file per input, or one tar archive
//!   (`archive.rs` writes it).
//!
//! Distributed mode (`--redis`) is [`crate::distributed`]; both write their report
//! through one writer (`report.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sluice_shared::{
    EntryPoint, Job, JobInput, Limits, ModuleHash, ModuleName, OutcomeKind, ProgramName, TenantId,
};
use sluice_worker::{SandboxConfig, SandboxError};

mod archive;
pub mod embedded;
pub mod interrupt;
pub mod outdir;
pub mod output;

pub use crate::report::REPORT_FILE;
pub use embedded::{run_batch, run_batch_with};
pub use interrupt::Interrupts;
pub use outdir::{OutMode, list_inputs};
pub use output::{ARCHIVE_FILE, OutputFormat};

/// Attempts per job by default, the first included: the same as `sluice-worker serve`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What a batch runs, and how.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The module file: a .wasm binary or .wat text.
    pub module: PathBuf,
    /// The directory whose regular files are the inputs, one job each.
    pub input_dir: PathBuf,
    /// Where the outputs and the report go.
    pub out_dir: PathBuf,
    /// What to do with an output directory that is not empty.
    pub out_mode: OutMode,
    /// One file per input, or one archive (embedded mode only).
    pub output_format: OutputFormat,
    /// What the outputs of all slots may hold in memory at once (embedded mode,
    /// [`embedded::output_memory_bound`]).
    pub output_memory: u64,
    /// Every job's limits (clamped to the tenant's policy in distributed mode).
    pub limits: Limits,
    /// `None`: the module's own (`_start` if exported, else the raw ABI's `process`).
    pub entry: Option<EntryPoint>,
    /// The arguments every job's guest gets.
    pub args: Vec<String>,
    /// The environment every job's guest gets.
    pub env: Vec<(String, String)>,
    /// The sandbox embedded mode runs jobs in (directory grants included).
    pub sandbox: SandboxConfig,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Attempts per job, the first included (only timeouts and host errors are
    /// retried); embedded mode only: a fleet worker retries by its own setting.
    pub max_attempts: u32,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// The tenant the jobs run for.
    pub tenant: TenantId,
    /// Distributed mode: how long without a result before the submitter looks for jobs
    /// Redis lost (and says what it is waiting for).
    pub stall_after: Duration,
}

impl BatchOptions {
    /// Default limits, one job per core, [`DEFAULT_MAX_ATTEMPTS`], a progress bar, and
    /// an output directory that must be empty.
    pub fn new(module: PathBuf, input_dir: PathBuf, out_dir: PathBuf) -> Self {
        let concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        BatchOptions {
            module,
            input_dir,
            out_dir,
            out_mode: OutMode::Fresh,
            output_format: OutputFormat::Files,
            output_memory: embedded::OUTPUT_MEMORY_BUDGET,
            limits: Limits::default(),
            entry: None,
            args: Vec::new(),
            env: Vec::new(),
            sandbox: SandboxConfig::default(),
            concurrency,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            progress: true,
            tenant: TenantId::default(),
            stall_after: Duration::from_secs(5),
        }
    }

    /// The job for one input, with this batch's entry point, args, env and limits, and
    /// the module's file name as the guest's `argv[0]` (as `wasmtime run` gives it;
    /// a fleet worker, which loads the module by hash, then passes the same name as an
    /// embedded one). A file name that is not a [`ModuleName`] leaves the hash, in
    /// both modes.
    pub(crate) fn job(
        &self,
        module: ModuleHash,
        input: JobInput,
        entry: &EntryPoint,
        label: &str,
    ) -> Job {
        let mut job = Job::new(module, input);
        job.entry = entry.clone();
        job.args = self.args.clone();
        job.env = self.env.clone();
        job.limits = self.limits.clone();
        job.label = label.to_owned();
        job.tenant = self.tenant.clone();
        job.program = self
            .module
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.parse::<ModuleName>().ok())
            .map(ProgramName::from);
        job
    }
}

/// Why a batch could not run at all (a job's own failure is an outcome, not this).
///
/// File errors name the path and say why once: the I/O error is part of the message,
/// not a source that a printer would append again.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The module file could not be read.
    #[error("cannot read module {path}: {error}")]
    Module {
        /// The module file.
        path: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// The module file is not a module this batch can run.
    #[error("module {path} cannot run: {reason}")]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// The inputs could not be listed or read.
    #[error("cannot read input {path}: {error}")]
    Inputs {
        /// The input directory or file.
        path: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// The input directory holds no regular file.
    #[error("no input files in {0}")]
    NoInputs(PathBuf),
    /// An input's name is one the batch keeps for itself.
    #[error(
        "input {path} has a name the batch keeps for itself ({why}); rename it or move it out of the input directory"
    )]
    ReservedName {
        /// The input.
        path: PathBuf,
        /// What the name is kept for.
        why: &'static str,
    },
    /// An input's file name is not valid UTF-8: it would name its output, report line
    /// and job label lossily, so two such names could write the same output.
    #[error("input {path}: the file name is not valid UTF-8 (rename it; no job was run)")]
    NonUtf8Name {
        /// The input.
        path: PathBuf,
    },
    /// Another `sluice batch` or `attach` is writing the output directory now.
    #[error(
        "{path} is being written by another sluice batch or attach (it holds the directory's lock); wait for it to end"
    )]
    OutLocked {
        /// The output directory.
        path: PathBuf,
    },
    /// The output directory is the input directory.
    #[error("the output directory must differ from the input directory")]
    OutIsInput,
    /// The output directory holds files already and neither `--force` nor `--resume`
    /// was given.
    #[error(
        "output directory {path} is not empty ({entries} entries); pass --resume to run only the inputs without a successful output, or --force to remove the previous run's outputs and report first"
    )]
    OutNotEmpty {
        /// The output directory.
        path: PathBuf,
        /// Entries in it.
        entries: usize,
    },
    /// `--resume` with `--output-format tar`, or into a directory holding a tar run's
    /// archive: an archive is not resumed.
    #[error(
        "--resume cannot continue a batch with --output-format tar (OUT/outputs.tar is written whole by one run); pass --force to run it again"
    )]
    ResumeArchive,
    /// An input's name is too long for its partial output file's name.
    #[error(
        "input {path}: the file name is {len} bytes, past the {max} an input may have (OUT/.<name>.part must be a valid file name); rename it (no job was run)",
        max = outdir::MAX_NAME_BYTES
    )]
    NameTooLong {
        /// The input.
        path: PathBuf,
        /// Its name's length in bytes.
        len: usize,
    },
    /// An output or the report could not be written.
    #[error("cannot write {path}: {error}")]
    Output {
        /// The file that could not be written.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The sandbox could not be built.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The queue failed.
    #[error("queue: {0}")]
    Queue(#[from] sluice_shared::QueueError),
    /// The in-process workers stopped (too many stuck runs, their run threads not
    /// started, or a background task ended).
    #[error(transparent)]
    Stuck(#[from] sluice_worker::executor::ExecutorError),
    /// Redis lost jobs whose inputs cannot be read again.
    #[error("{} {} lost by Redis and {} cannot be read again: {}{} (the other results are in {})",
        jobs(lost.len()), if lost.len() == 1 { "was" } else { "were" }, if lost.len() == 1 { "its input" } else { "their inputs" }, lost_list(lost), if lost.len() > LOST_NAMED { ", …" } else { "" }, report.display())]
    Lost {
        /// The report, with the other results.
        report: PathBuf,
        /// Input name and why it cannot be read.
        lost: Vec<(String, String)>,
    },
}

impl BatchError {
    /// An output or report write that failed.
    pub(crate) fn output(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        BatchError::Output {
            path: path.into(),
            error,
        }
    }
}

/// Lost inputs named in [`BatchError::Lost`]'s message (all are printed as found).
const LOST_NAMED: usize = 10;

fn lost_list(lost: &[(String, String)]) -> String {
    lost.iter()
        .take(LOST_NAMED)
        .map(|(name, why)| format!("{name} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a batch was interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interrupted {
    /// The first signal: no new job started; those running finished.
    Stopped,
    /// The second signal: the jobs still running were abandoned.
    Aborted,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct BatchSummary {
    /// Jobs this run was to run (inputs skipped by `--resume` not counted).
    pub total: usize,
    /// Finished jobs by how they ended.
    pub by_kind: BTreeMap<OutcomeKind, usize>,
    /// How long the batch took.
    pub elapsed: Duration,
    /// Where the report is.
    pub report: PathBuf,
    /// Inputs skipped because a previous run's successful output and report line
    /// exist (`--resume`).
    pub skipped: usize,
    /// Set when a signal stopped the batch before every job finished.
    pub interrupted: Option<Interrupted>,
    /// Distributed mode: the batch's id.
    pub batch_id: Option<String>,
    /// Lines telling what became of jobs not run here (cancelled, left to the fleet).
    pub notes: Vec<String>,
}

impl BatchSummary {
    /// Jobs that finished (each has its report line).
    pub fn finished(&self) -> usize {
        self.by_kind.values().sum()
    }

    /// Jobs that succeeded.
    pub fn succeeded(&self) -> usize {
        self.by_kind
            .get(&OutcomeKind::Success)
            .copied()
            .unwrap_or(0)
    }

    /// Jobs that finished and failed.
    pub fn failed(&self) -> usize {
        self.finished() - self.succeeded()
    }

    /// Whether every job ran and succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.interrupted.is_none() && self.succeeded() == self.total
    }
}

/// "1 job", "2 jobs".
pub fn jobs(n: usize) -> String {
    if n == 1 {
        "1 job".to_owned()
    } else {
        format!("{n} jobs")
    }
}

/// The protocol's role errors stop a batch as the queue's own do.
macro_rules! stops_batch_as_queue_error {
    ($($error:ty),*) => {$(
        impl From<$error> for BatchError {
            fn from(e: $error) -> Self {
                BatchError::Queue(e.into())
            }
        }
    )*};
}
stops_batch_as_queue_error!(
    sluice_shared::queue::redis::BlobError,
    sluice_shared::queue::redis::ModuleStoreError,
    sluice_shared::queue::redis::RecoveryError,
    sluice_shared::queue::redis::ResultsError,
    sluice_shared::queue::redis::StoreError
);
