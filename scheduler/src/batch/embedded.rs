//! Embedded batch mode: one process, an in-memory queue, in-process workers.
//!
//! The module is checked before any job (the same `modules::prepare` as distributed
//! mode, then loaded): a file that is not a module fails the batch at once, naming it.
//! Interrupted ([`Interrupts`]), the batch starts no more jobs and lets the running
//! ones finish; interrupted again, it abandons them. Either way the report holds only
//! whole lines and no partial output stays behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::{
    Job, JobId, JobInput, JobOutput, JobResult, MemoryQueue, ModuleHash, Outcome, Queue,
    RetryPolicy,
};
use sluice_worker::executor::{self, Disposition, ExecutorConfig, JobEnv};
use sluice_worker::{JobReader, JobWriter, LoadedModule, Sandbox, SandboxConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::archive::Archive;
use super::outdir::{self, part_path};
use super::output::{ARCHIVE_FILE, OutputFormat};
use super::{BatchError, BatchOptions, BatchSummary, Interrupted, Interrupts};
use crate::modules;
use crate::report::Report;

/// How long jobs in flight may take to finish after the first signal: as long as they
/// need (each has its own deadline); the second signal is the way to cut it short.
const DRAIN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Inputs of at most this many bytes are read whole before their run and handed to
/// the guest from memory ([`JobReader::Memory`]: no helper thread per job); larger
/// ones stream from their file. At most one such input per slot is held at once.
pub const INPUT_MEMORY_BOUND: u64 = 1 << 20;

/// What the outputs of all slots may hold in memory at once: a job's output is taken
/// in memory ([`JobWriter::Memory`], then written to its file or the archive in one
/// go) when its `max_output_bytes` times the slots is at most this, so with the default
/// 64 MiB cap up to 16 slots, and with `--max-output 1MiB` up to 1024; otherwise it
/// streams to a partial file as the guest writes it. A buffer grows only as the guest
/// writes: this bounds the worst case, every slot writing its whole cap at once.
pub const OUTPUT_MEMORY_BUDGET: u64 = 1 << 30;

/// The largest `max_output_bytes` a batch of `slots` slots takes in memory.
pub fn output_memory_bound(slots: usize) -> u64 {
    OUTPUT_MEMORY_BUDGET / (slots.max(1) as u64)
}

/// A successful job's output, kept between its run and its report line.
enum Kept {
    /// Renamed into place as `OUT/<label>` (one file per input).
    Renamed,
    /// In memory, for the archive.
    Bytes(Vec<u8>),
    /// In the job's partial file, for the archive.
    Part,
}

/// Files, one module, and the report: the batch's side of the worker loop.
struct FileEnv {
    module: Arc<LoadedModule>,
    out_dir: PathBuf,
    report: Mutex<Report>,
    /// `--output-format tar`: the archive, locked only while the report's lock is held.
    archive: Option<Mutex<Archive>>,
    /// Outputs up to this cap are taken in memory ([`output_memory_bound`]).
    memory_output_max: u64,
    finished: AtomicUsize,
    total: usize,
    all_done: CancellationToken,
    /// Jobs whose output is kept (renamed into place, or waiting for the archive) and
    /// whose report line is not written yet.
    unlisted: Mutex<HashMap<JobId, Kept>>,
    /// Room in the queue: a permit per job that may be enqueued and not yet finished
    /// ([`feed`]); each finished job gives its permit back.
    window: Arc<Semaphore>,
}

/// Jobs in the in-memory queue at once, at most: enough that no slot waits for work,
/// few enough that the queue's per-claim and per-completion scans (linear in what it
/// holds) stay short whatever the batch's size (with all 20,000 jobs of a batch
/// enqueued at once they were a fifth of the batch's CPU time, `docs/benchmarks.md`).
fn window(slots: usize) -> usize {
    slots.saturating_mul(4).saturating_add(32)
}

/// Chunk of jobs enqueued at a time.
const FEED_CHUNK: usize = 16;

/// Enqueues the batch's jobs a chunk at a time as the window has room.
async fn feed(queue: Arc<MemoryQueue>, jobs: Vec<Job>, window: Arc<Semaphore>) {
    for chunk in jobs.chunks(FEED_CHUNK) {
        let Ok(permits) = window.acquire_many(chunk.len() as u32).await else {
            return;
        };
        permits.forget();
        // The in-memory queue's enqueue cannot fail.
        if queue.enqueue(chunk).await.is_err() {
            return;
        }
    }
}

/// A job's input: read whole when it is at most [`INPUT_MEMORY_BOUND`] bytes (a file
/// that grew past it since it was listed streams, its start read already included).
fn open_file_input(path: &Path, listed_len: u64) -> std::io::Result<JobReader> {
    let file = File::open(path)?;
    if listed_len > INPUT_MEMORY_BOUND {
        return Ok(JobReader::Stream(Box::new(file)));
    }
    let mut head = Vec::with_capacity(usize::try_from(listed_len).unwrap_or(0) + 1);
    let mut file = file;
    (&mut file)
        .take(INPUT_MEMORY_BOUND + 1)
        .read_to_end(&mut head)?;
    if head.len() as u64 <= INPUT_MEMORY_BOUND {
        Ok(JobReader::Memory(head.into()))
    } else {
        Ok(JobReader::Stream(Box::new(Cursor::new(head).chain(file))))
    }
}

/// Writes a job's output held in memory to its partial file, in one go.
fn write_part(part: &Path, bytes: &[u8]) -> std::io::Result<()> {
    outdir::create_part(part)?.write_all(bytes)
}

impl FileEnv {
    fn host_error(path: &Path, e: std::io::Error) -> Outcome {
        Outcome::HostError {
            reason: format!("{}: {e}", path.display()),
        }
    }

    /// One file per input: the output renamed into place (written first when it was in
    /// memory), unless the batch is over.
    fn keep_file(&self, job: &Job, output: JobOutput) -> Result<(), Outcome> {
        let part = part_path(&self.out_dir, &job.label);
        if let JobOutput::Inline(bytes) = &output {
            write_part(&part, bytes).map_err(|e| {
                let _ = std::fs::remove_file(&part);
                Self::host_error(&part, e)
            })?;
        }
        // Under the report's lock: once the batch is over (interrupted), no output
        // appears that the report does not list.
        let report = self.report.lock();
        if report.is_closed() {
            let _ = std::fs::remove_file(&part);
            return Ok(());
        }
        std::fs::rename(&part, self.out_dir.join(&job.label))
            .map_err(|e| Self::host_error(&part, e))?;
        self.unlisted.lock().insert(job.id, Kept::Renamed);
        Ok(())
    }

    /// Appends a kept output to the archive (the caller holds the report's lock).
    fn append(&self, archive: &Mutex<Archive>, label: &str, kept: Kept) -> Result<(), Outcome> {
        let mut archive = archive.lock();
        match kept {
            Kept::Bytes(bytes) => archive
                .append(label, bytes.len() as u64, &bytes[..])
                .map_err(|e| Self::host_error(archive.path(), e)),
            Kept::Part => {
                let part = part_path(&self.out_dir, label);
                let appended = File::open(&part).and_then(|file| {
                    let len = file.metadata()?.len();
                    archive.append(label, len, file)
                });
                let _ = std::fs::remove_file(&part);
                appended.map_err(|e| Self::host_error(archive.path(), e))
            }
            Kept::Renamed => Ok(()),
        }
    }
}

impl JobEnv for FileEnv {
    fn module(&self, _hash: &ModuleHash) -> Result<Arc<LoadedModule>, Outcome> {
        Ok(self.module.clone())
    }

    fn open_input(&self, job: &Job) -> Result<JobReader, Outcome> {
        let unavailable = |reason: String| Outcome::InputUnavailable { reason };
        match &job.input {
            JobInput::Inline(bytes) => Ok(JobReader::Memory(bytes.clone().into())),
            JobInput::File { path, len } => open_file_input(path, *len)
                .map_err(|e| unavailable(format!("{}: {e}", path.display()))),
            other => Err(unavailable(format!(
                "an embedded batch reads file inputs, not {}",
                other.kind()
            ))),
        }
    }

    fn open_output(&self, job: &Job) -> Result<JobWriter, Outcome> {
        if job.limits.max_output_bytes <= self.memory_output_max {
            return Ok(JobWriter::Memory);
        }
        let path = part_path(&self.out_dir, &job.label);
        outdir::create_part(&path)
            .map(|file| JobWriter::Stream(Box::new(BufWriter::with_capacity(64 << 10, file))))
            .map_err(|e| Self::host_error(&path, e))
    }

    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome> {
        // The bytes leave the result here: the in-memory queue keeps results, and the
        // report needs only their count.
        let output = std::mem::take(&mut result.output);
        let streamed = !matches!(output, JobOutput::Inline(_));
        if !result.outcome.is_success() {
            // A failed job leaves no output behind; the report says why.
            if streamed {
                let _ = std::fs::remove_file(part_path(&self.out_dir, &job.label));
            }
            return Ok(());
        }
        if self.archive.is_none() {
            return self.keep_file(job, output);
        }
        let kept = match output {
            JobOutput::Inline(bytes) => Kept::Bytes(bytes),
            _ => Kept::Part,
        };
        self.unlisted.lock().insert(job.id, kept);
        Ok(())
    }

    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition) {
        let kept = job.and_then(|job| self.unlisted.lock().remove(&job.id));
        if !disposition.is_final() {
            if let (Some(Kept::Part), Some(job)) = (&kept, job) {
                let _ = std::fs::remove_file(part_path(&self.out_dir, &job.label));
            }
            return;
        }
        let label = job.map_or("<undecodable>", |job| job.label.as_str());
        let mut report = self.report.lock();
        if report.is_closed() {
            // Aborted between this job's output being kept and now: the report no longer
            // takes lines, so the output it cannot list goes (a `--resume` runs it again).
            match kept {
                Some(Kept::Renamed) => {
                    let _ = std::fs::remove_file(self.out_dir.join(label));
                }
                Some(Kept::Part) => {
                    let _ = std::fs::remove_file(part_path(&self.out_dir, label));
                }
                Some(Kept::Bytes(_)) | None => {}
            }
        } else {
            // The archive's entry goes in right before the job's line, under the lock: an
            // archive holds only jobs the report lists. An entry that cannot be written
            // turns the job's line into that host error.
            let appended = match (&self.archive, kept) {
                (Some(archive), Some(kept)) => self.append(archive, label, kept),
                _ => Ok(()),
            };
            // A failed write is kept by the report, and fails the batch when it finishes.
            let _ = match appended {
                Ok(()) => report.record(label, result),
                Err(outcome) => {
                    let mut failed = result.clone();
                    failed.outcome = outcome;
                    report.record(label, &failed)
                }
            };
        }
        drop(report);
        self.window.add_permits(1);
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
    let archive = match options.output_format {
        OutputFormat::Files => None,
        OutputFormat::Tar => {
            let path = options.out_dir.join(ARCHIVE_FILE);
            let archive = Archive::create(&path).map_err(|e| BatchError::output(&path, e))?;
            Some(Mutex::new(archive))
        }
    };
    let all_done = CancellationToken::new();
    let env = Arc::new(FileEnv {
        module,
        out_dir: options.out_dir.clone(),
        report: Mutex::new(report),
        archive,
        memory_output_max: output_memory_bound(slots),
        finished: AtomicUsize::new(0),
        total: inputs.len(),
        all_done: all_done.clone(),
        unlisted: Mutex::new(HashMap::new()),
        window: Arc::new(Semaphore::new(window(slots))),
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
    let total_jobs = jobs.len();
    let queue = Arc::new(MemoryQueue::new());
    let feeder = tokio::spawn(feed(queue.clone(), jobs, env.window.clone()));

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
    feeder.abort();
    let mut summary = env.report.lock().finish(total_jobs, started.elapsed());
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
