//! Embedded batch mode: one process, an in-memory queue, in-process workers.
//!
//! The module is checked before any job (the same `modules::prepare` as distributed
//! mode, then loaded): a file that is not a module fails the batch at once, naming it.
//! Interrupted ([`Interrupts`]), the batch starts no more jobs and lets the running
//! ones finish; interrupted again, it abandons them. Either way the report holds only
//! whole lines and no partial output stays behind.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::{
    Job, JobId, JobInput, JobResult, MemoryQueue, ModuleHash, Outcome, Queue, RetryPolicy,
};
use sluice_worker::executor::{self, Disposition, ExecutorConfig, JobEnv};
use sluice_worker::{JobReader, JobWriter, LoadedModule, Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;

use super::outdir::{self, part_path};
use super::{BatchError, BatchOptions, BatchSummary, Interrupted, Interrupts};
use crate::modules;
use crate::report::Report;

/// How long jobs in flight may take to finish after the first signal: as long as they
/// need (each has its own deadline); the second signal is the way to cut it short.
const DRAIN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Files, one module, and the report: the batch's side of the worker loop.
struct FileEnv {
    module: Arc<LoadedModule>,
    out_dir: PathBuf,
    report: Mutex<Report>,
    finished: AtomicUsize,
    total: usize,
    all_done: CancellationToken,
    /// Jobs whose output was renamed into place and whose report line is not written
    /// yet (both happen under the report's lock, one after the other).
    unlisted: Mutex<HashSet<JobId>>,
}

impl JobEnv for FileEnv {
    fn module(&self, _hash: &ModuleHash) -> Result<Arc<LoadedModule>, Outcome> {
        Ok(self.module.clone())
    }

    fn open_input(&self, job: &Job) -> Result<JobReader, Outcome> {
        let unavailable = |reason: String| Outcome::InputUnavailable { reason };
        match &job.input {
            JobInput::Inline(bytes) => Ok(JobReader::Memory(bytes.clone().into())),
            JobInput::File { path, .. } => File::open(path)
                .map(|file| JobReader::Stream(Box::new(file)))
                .map_err(|e| unavailable(format!("{}: {e}", path.display()))),
            other => Err(unavailable(format!(
                "an embedded batch reads file inputs, not {}",
                other.kind()
            ))),
        }
    }

    fn open_output(&self, job: &Job) -> Result<JobWriter, Outcome> {
        let path = part_path(&self.out_dir, &job.label);
        outdir::create_part(&path)
            .map(|file| JobWriter::Stream(Box::new(BufWriter::with_capacity(64 << 10, file))))
            .map_err(|e| Outcome::HostError {
                reason: format!("{}: {e}", path.display()),
            })
    }

    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome> {
        let part = part_path(&self.out_dir, &job.label);
        // Under the report's lock: once the batch is over (interrupted), no output
        // appears that the report does not list.
        let report = self.report.lock();
        if result.outcome.is_success() && !report.is_closed() {
            std::fs::rename(&part, self.out_dir.join(&job.label)).map_err(|e| {
                Outcome::HostError {
                    reason: format!("{}: {e}", part.display()),
                }
            })?;
            self.unlisted.lock().insert(job.id);
            Ok(())
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
        let mut report = self.report.lock();
        let renamed = job.is_some_and(|job| self.unlisted.lock().remove(&job.id));
        if report.is_closed() {
            // Aborted between this job's output rename and now: the report no longer
            // takes lines, so the output it cannot list goes (a `--resume` runs it again).
            if renamed && let Some(job) = job {
                let _ = std::fs::remove_file(self.out_dir.join(&job.label));
            }
        } else {
            // A failed write is kept by the report, and fails the batch when it finishes.
            let _ = report.record(label, result);
        }
        drop(report);
        if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.total {
            self.all_done.cancel();
        }
    }
}

/// Reads and checks the module (as `--redis` does, then loads it): its wasm and hash.
fn load(
    options: &BatchOptions,
    sandbox: &Sandbox,
) -> Result<(Arc<LoadedModule>, ModuleHash), BatchError> {
    let path = &options.module;
    let bytes = std::fs::read(path).map_err(|error| BatchError::Module {
        path: path.clone(),
        error,
    })?;
    let bad = |reason: String| BatchError::BadModule {
        path: path.clone(),
        reason,
    };
    let (wasm, hash) = modules::prepare(&bytes).map_err(|e| bad(e.to_string()))?;
    // The guest's argv[0] is the job's program name (the module's file name when it
    // follows the module-name rule, see `BatchOptions::job`), else the hash: the same
    // rule as a distributed batch's.
    let module = sandbox.load_module(&wasm).map_err(|e| bad(e.to_string()))?;
    Ok((module, hash))
}

/// Runs the batch to completion, without signal handling.
pub async fn run_batch(options: BatchOptions) -> Result<BatchSummary, BatchError> {
    run_batch_with(options, &Interrupts::never()).await
}

/// Runs the batch until it completes or `interrupts` stop it.
pub async fn run_batch_with(
    options: BatchOptions,
    interrupts: &Interrupts,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let slots = options.concurrency.max(1);
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        slots: u32::try_from(slots).unwrap_or(u32::MAX),
        ..options.sandbox.clone()
    })?);
    let (module, hash) = load(&options, &sandbox)?;
    let prepared = outdir::prepare(&options)?;
    let inputs = prepared.inputs;
    let report = Report::create(
        &options.out_dir,
        inputs.len(),
        options.progress,
        prepared.append,
    )?;
    if prepared.skipped > 0 {
        report.say(&format!(
            "--resume: {} already done, {} to run",
            super::jobs(prepared.skipped),
            inputs.len()
        ));
    }
    let entry = options
        .entry
        .clone()
        .unwrap_or_else(|| module.default_entry(&sandbox));
    let all_done = CancellationToken::new();
    let env = Arc::new(FileEnv {
        module,
        out_dir: options.out_dir.clone(),
        report: Mutex::new(report),
        finished: AtomicUsize::new(0),
        total: inputs.len(),
        all_done: all_done.clone(),
        unlisted: Mutex::new(HashSet::new()),
    });
    if inputs.is_empty() {
        all_done.cancel();
    }
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
        grace: DRAIN_FOR,
        ..ExecutorConfig::default()
    };
    let mut workers = tokio::spawn(executor::run(
        queue,
        sandbox,
        env.clone(),
        config,
        all_done.clone(),
    ));
    let mut interrupted = None;
    let ran = loop {
        tokio::select! {
            // Biased: with both signals in, the stop is handled first, then the abort.
            biased;
            ran = &mut workers => break Some(ran),
            () = interrupts.stop.cancelled(), if interrupted.is_none() => {
                interrupted = Some(Interrupted::Stopped);
                if !all_done.is_cancelled() {
                    env.report.lock().say(
                        "interrupted: starting no more jobs, letting the running ones finish (interrupt again to abort them)",
                    );
                }
                all_done.cancel();
            }
            () = interrupts.abort.cancelled() => {
                // The runs go on in their threads until the process exits; their
                // outputs are not kept (the report is closed first). The executor
                // claims no more jobs (no new partial files after they are swept).
                interrupted = Some(Interrupted::Aborted);
                all_done.cancel();
                break None;
            }
        }
    };
    let mut summary = env.report.lock().finish(jobs.len(), started.elapsed());
    outdir::remove_parts(&options.out_dir)?;
    if let Some(ran) = ran {
        match ran {
            Ok(stopped) => stopped?,
            Err(panicked) => {
                return Err(BatchError::Queue(sluice_shared::QueueError::Protocol(
                    format!("the in-process workers failed: {panicked}"),
                )));
            }
        }
    }
    if let Ok(summary) = &mut summary {
        summary.skipped = prepared.skipped;
        if summary.finished() < summary.total {
            summary.interrupted = interrupted;
        }
    }
    summary
}
