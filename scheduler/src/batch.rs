//! Embedded batch mode: one process, an in-memory queue, in-process workers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::{
    EntryPoint, Job, JobInput, JobResult, Limits, MemoryQueue, ModuleHash, Outcome, OutcomeKind,
    Queue, RetryPolicy, TenantId,
};
use sluice_worker::executor::{self, Disposition, ExecutorConfig, JobEnv};
use sluice_worker::{LoadedModule, Sandbox, SandboxConfig, SandboxError};
use tokio_util::sync::CancellationToken;

pub use crate::report::REPORT_FILE;
use crate::report::Report;

/// What a batch runs, and how.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The module file: a .wasm binary or .wat text.
    pub module: PathBuf,
    /// The directory whose regular files are the inputs, one job each.
    pub input_dir: PathBuf,
    /// Where the outputs and the report go.
    pub out_dir: PathBuf,
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
    /// Attempts per job, the first included (only timeouts and host errors are retried).
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
    /// Default limits, one job per core, one attempt, a progress bar.
    pub fn new(module: PathBuf, input_dir: PathBuf, out_dir: PathBuf) -> Self {
        let concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        BatchOptions {
            module,
            input_dir,
            out_dir,
            limits: Limits::default(),
            entry: None,
            args: Vec::new(),
            env: Vec::new(),
            sandbox: SandboxConfig::default(),
            concurrency,
            max_attempts: 1,
            progress: true,
            tenant: TenantId::default(),
            stall_after: Duration::from_secs(5),
        }
    }
}

impl BatchOptions {
    /// Lists the inputs (at least one) and creates the output directory, which must not
    /// be the input directory.
    pub(crate) fn prepare_dirs(&self) -> Result<Vec<(String, PathBuf, u64)>, BatchError> {
        let inputs = list_inputs(&self.input_dir)?;
        if inputs.is_empty() {
            return Err(BatchError::NoInputs(self.input_dir.clone()));
        }
        let out_err = |source| BatchError::Output {
            path: self.out_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.out_dir).map_err(out_err)?;
        if std::fs::canonicalize(&self.out_dir).map_err(out_err)?
            == std::fs::canonicalize(&self.input_dir).map_err(out_err)?
        {
            return Err(BatchError::OutIsInput);
        }
        Ok(inputs)
    }

    /// The job for one input, with this batch's entry point, args, env and limits.
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
        job
    }
}

/// Why a batch could not run at all (a job's own failure is an outcome, not this).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The module file could not be read.
    #[error("cannot read module {path}: {source}")]
    Module {
        /// The module file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The inputs could not be listed or read.
    #[error("cannot list inputs in {path}: {source}")]
    Inputs {
        /// The input directory or file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The input directory holds no regular file.
    #[error("no input files in {0}")]
    NoInputs(PathBuf),
    /// The output directory is the input directory.
    #[error("the output directory must differ from the input directory")]
    OutIsInput,
    /// An output or the report could not be written.
    #[error("cannot write to {path}: {source}")]
    Output {
        /// The file that could not be written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sandbox could not be built.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The queue failed.
    #[error("queue: {0}")]
    Queue(#[from] sluice_shared::QueueError),
    /// The module is not valid WebAssembly (distributed mode validates it first).
    #[error(transparent)]
    InvalidModule(#[from] crate::modules::ModuleError),
    /// The in-process workers stopped (too many stuck runs).
    #[error(transparent)]
    Stuck(#[from] sluice_worker::executor::ExecutorError),
    /// Redis lost jobs whose inputs cannot be read again.
    #[error("{} jobs were lost by Redis and their inputs cannot be read again: {}{} (the other results are in {})",
        lost.len(), lost_list(lost), if lost.len() > LOST_NAMED { ", …" } else { "" }, report.display())]
    Lost {
        /// The report, with the other results.
        report: PathBuf,
        /// Input name and why it cannot be read.
        lost: Vec<(String, String)>,
    },
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

/// What a batch did.
#[derive(Debug, Default)]
pub struct BatchSummary {
    /// Jobs run.
    pub total: usize,
    /// Jobs by how they ended.
    pub by_kind: BTreeMap<OutcomeKind, usize>,
    /// How long the batch took.
    pub elapsed: Duration,
    /// Where the report is.
    pub report: PathBuf,
}

impl BatchSummary {
    /// Jobs that succeeded.
    pub fn succeeded(&self) -> usize {
        self.by_kind
            .get(&OutcomeKind::Success)
            .copied()
            .unwrap_or(0)
    }

    /// Whether every job succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.succeeded() == self.total
    }
}

/// Files, one module, and the report: the batch's side of the worker loop.
struct FileEnv {
    module: Result<Arc<LoadedModule>, Outcome>,
    out_dir: PathBuf,
    report: Mutex<Report>,
    finished: AtomicUsize,
    total: usize,
    all_done: CancellationToken,
}

impl FileEnv {
    fn part_path(&self, job: &Job) -> PathBuf {
        self.out_dir.join(format!(".{}.part", job.label))
    }
}

impl JobEnv for FileEnv {
    fn module(&self, _hash: &ModuleHash) -> Result<Arc<LoadedModule>, Outcome> {
        self.module.clone()
    }

    fn open_input(&self, job: &Job) -> Result<Box<dyn Read + Send>, Outcome> {
        let unavailable = |reason: String| Outcome::InputUnavailable { reason };
        match &job.input {
            JobInput::Inline(bytes) => Ok(Box::new(std::io::Cursor::new(bytes.clone()))),
            JobInput::File { path, .. } => File::open(path)
                .map(|file| Box::new(file) as Box<dyn Read + Send>)
                .map_err(|e| unavailable(format!("{}: {e}", path.display()))),
            other => Err(unavailable(format!(
                "an embedded batch reads file inputs, not {}",
                other.kind()
            ))),
        }
    }

    fn open_output(&self, job: &Job) -> Result<Box<dyn Write + Send>, Outcome> {
        let path = self.part_path(job);
        File::create(&path)
            .map(|file| Box::new(BufWriter::with_capacity(64 << 10, file)) as Box<dyn Write + Send>)
            .map_err(|e| Outcome::HostError {
                reason: format!("{}: {e}", path.display()),
            })
    }

    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome> {
        let part = self.part_path(job);
        if result.outcome.is_success() {
            std::fs::rename(&part, self.out_dir.join(&job.label)).map_err(|e| Outcome::HostError {
                reason: format!("{}: {e}", part.display()),
            })
        } else {
            // A failed job leaves no output behind; the report says why.
            let _ = std::fs::remove_file(&part);
            Ok(())
        }
    }

    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition) {
        if !disposition.is_final() {
            return;
        }
        let label = job.map_or("<undecodable>", |job| job.label.as_str());
        // A failed write is kept by the report, and fails the batch when it finishes.
        let _ = self.report.lock().record(label, result);
        if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.total {
            self.all_done.cancel();
        }
    }
}

/// The regular files of `dir`, sorted by name.
pub(crate) fn list_inputs(dir: &Path) -> Result<Vec<(String, PathBuf, u64)>, BatchError> {
    let err = |source| BatchError::Inputs {
        path: dir.to_owned(),
        source,
    };
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let meta = entry.metadata().map_err(err)?;
        if meta.is_file() {
            let path = std::fs::canonicalize(entry.path()).map_err(err)?;
            inputs.push((
                entry.file_name().to_string_lossy().into_owned(),
                path,
                meta.len(),
            ));
        }
    }
    inputs.sort();
    Ok(inputs)
}

/// Runs the batch to completion.
pub async fn run_batch(options: BatchOptions) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let bytes = std::fs::read(&options.module).map_err(|source| BatchError::Module {
        path: options.module.clone(),
        source,
    })?;
    let inputs = options.prepare_dirs()?;
    let report = Report::create(&options.out_dir, inputs.len(), options.progress)?;

    let slots = options.concurrency.max(1);
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        slots: u32::try_from(slots).unwrap_or(u32::MAX),
        ..options.sandbox.clone()
    })?);
    // The guest's argv[0] is the module's file name, as under `wasmtime run`.
    let module = match options.module.file_name() {
        Some(name) => sandbox.load_named_module(&bytes, &name.to_string_lossy()),
        None => sandbox.load_module(&bytes),
    };
    let entry = match (&options.entry, &module) {
        (Some(entry), _) => entry.clone(),
        (None, Ok(module)) => module.default_entry(&sandbox),
        (None, Err(_)) => EntryPoint::Command,
    };

    let all_done = CancellationToken::new();
    let env = Arc::new(FileEnv {
        module,
        out_dir: options.out_dir.clone(),
        report: Mutex::new(report),
        finished: AtomicUsize::new(0),
        total: inputs.len(),
        all_done: all_done.clone(),
    });

    let hash = ModuleHash::of(&bytes);
    let jobs: Vec<Job> = inputs
        .iter()
        .map(|(name, path, len)| {
            let input = JobInput::File {
                path: path.clone(),
                len: *len,
            };
            options.job(hash, input, &entry, name)
        })
        .collect();
    let queue = Arc::new(MemoryQueue::new());
    queue.enqueue(&jobs).await?;

    let config = ExecutorConfig {
        slots,
        consumer: "embedded".into(),
        // The loop notices the batch is over only between claims; an in-memory claim is
        // cheap, so wait briefly rather than add the fleet's half second to every batch.
        claim_wait: Duration::from_millis(20),
        retry: RetryPolicy {
            max_attempts: options.max_attempts.max(1),
            ..RetryPolicy::default()
        },
        ..ExecutorConfig::default()
    };
    executor::run(queue, sandbox, env.clone(), config, all_done).await?;
    env.report.lock().finish(jobs.len(), started.elapsed())
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
