//! Embedded batch mode: one process, an in-memory queue, in-process workers.
//!
//! The module is checked before any job (the same `modules::prepare` as distributed
//! mode, then loaded): a file that is not a module fails the batch at once, naming it.
//! Interrupted ([`Interrupts`]), the batch starts no more jobs and lets the running
//! ones finish; interrupted again, it abandons them. Either way the report holds only
//! whole lines and no partial output stays behind.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
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

/// What the outputs of all slots may hold in memory at once by default
/// (`--output-memory`): a job's output is taken in memory ([`JobWriter::Memory`], then
/// written to its file or the archive in one go) when its `max_output_bytes` times the
/// slots is at most this, so with the default 64 MiB cap up to 16 slots, and with
/// `--max-output 1MiB` up to 1024; otherwise it streams to a partial file as the guest
/// writes it. A buffer grows only as the guest writes: this bounds the worst case,
/// every slot writing its whole cap at once.
pub const OUTPUT_MEMORY_BUDGET: u64 = 1 << 30;

/// The largest `max_output_bytes` a batch of `slots` slots takes in memory when all
/// its outputs may hold `budget` bytes.
pub fn output_memory_bound(budget: u64, slots: usize) -> u64 {
    budget / (slots.max(1) as u64)
}

/// A successful job's output, kept between its run and its report line.
enum Kept {
    /// Renamed into place as `OUT/<label>` (one file per input): the label.
    Renamed(String),
    /// In memory, for the archive.
    Bytes(Vec<u8>),
    /// In the job's partial file, for the archive.
    Part,
}

/// An archive entry past this many bytes is appended off the async runtime's threads
/// ([`off_runtime`]): a streamed output can be as large as `--max-output`.
const LARGE_ENTRY: usize = 1 << 20;

/// Runs `f`, which may block for long (a large archive append under the locks), so
/// that the runtime's other tasks go on: on a multi-threaded runtime the thread stops
/// being one of the runtime's while `f` runs. `sluice batch` itself runs on a
/// current-thread runtime, where `f` runs in place: the batch's other slots go on
/// running their guests on their own threads, and their results wait for the append.
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Files, one module, and the report: the batch's side of the worker loop.
struct FileEnv {
    module: Arc<LoadedModule>,
    out_dir: PathBuf,
    report: Mutex<Report>,
    /// `--output-format tar`: the archive. Locked before the report when both are.
    archive: Option<Mutex<Archive>>,
    /// Outputs up to this cap are taken in memory (`--output-memory` over the slots).
    memory_output_max: u64,
    finished: AtomicUsize,
    total: usize,
    all_done: CancellationToken,
    /// Set (under the write lock) when the batch is aborted, before its partial files
    /// are swept: a partial file is created, and an output renamed into place, only
    /// under the read lock while it is unset, so none appears after the sweep.
    closing: RwLock<bool>,
    /// Outputs kept (renamed into place, or waiting for the archive) by run, the job's
    /// and its attempt's, whose report line is not written yet.
    unlisted: Mutex<HashMap<(JobId, u32), Kept>>,
    /// Room in the queue: a permit per job that may be enqueued and not yet finished
    /// ([`feed`]); each finished job gives its permit back, and so does a job waiting
    /// out a retry's delay (a delayed job needs no place in the window).
    window: Arc<Semaphore>,
    /// Jobs waiting for (or in) a retry whose permit is back already: their final
    /// result gives none back.
    permit_back: Mutex<HashSet<JobId>>,
    /// The attempts a job may make (older runs' outputs are looked for up to it).
    max_attempts: u32,
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

/// Closed: the batch is over.
fn closed() -> Outcome {
    Outcome::HostError {
        reason: "the batch was aborted".into(),
    }
}

impl FileEnv {
    fn host_error(path: &Path, e: std::io::Error) -> Outcome {
        Outcome::HostError {
            reason: format!("{}: {e}", path.display()),
        }
    }

    /// One file per input: the output renamed into place (written first when it was in
    /// memory), unless the batch is aborted.
    fn keep_file(&self, job: &Job, attempt: u32, output: JobOutput) -> Result<(), Outcome> {
        let part = part_path(&self.out_dir, &job.label);
        // Held across the write and the rename: an aborted batch sweeps its partial
        // files and takes back unlisted outputs only once no write is under way.
        let closing = self.closing.read();
        if *closing {
            let _ = std::fs::remove_file(&part);
            return Err(closed());
        }
        if let JobOutput::Inline(bytes) = &output {
            write_part(&part, bytes).map_err(|e| {
                let _ = std::fs::remove_file(&part);
                Self::host_error(&part, e)
            })?;
        }
        std::fs::rename(&part, self.out_dir.join(&job.label)).map_err(|e| {
            let _ = std::fs::remove_file(&part);
            Self::host_error(&part, e)
        })?;
        self.unlisted
            .lock()
            .insert((job.id, attempt), Kept::Renamed(job.label.clone()));
        Ok(())
    }

    /// Appends a kept output to the archive.
    fn append(&self, archive: &mut Archive, label: &str, kept: Kept) -> Result<(), Outcome> {
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
            Kept::Renamed(_) => Ok(()),
        }
    }

    /// Removes what a kept output left on disk: it will not be listed as a success.
    fn discard(&self, label: &str, kept: Kept) {
        match kept {
            Kept::Renamed(_) => {
                let _ = std::fs::remove_file(self.out_dir.join(label));
            }
            Kept::Part => {
                let _ = std::fs::remove_file(part_path(&self.out_dir, label));
            }
            Kept::Bytes(_) => {}
        }
    }

    /// The output this run kept, if it is to be listed (the run succeeded), and any
    /// other run's of the job: a run abandoned by the watchdog that still kept its
    /// output is never listed under another attempt's line. Of a failure, nothing
    /// stays on disk. Outputs of one job share their file, so a success's is not
    /// removed for an older run's.
    fn take_kept(&self, job: &Job, result: &JobResult, max_attempts: u32) -> Option<Kept> {
        let mut unlisted = self.unlisted.lock();
        let mine = unlisted.remove(&(job.id, result.attempt));
        let mut others = Vec::new();
        if !unlisted.is_empty() {
            for attempt in 0..=max_attempts.saturating_add(1) {
                if let Some(kept) = unlisted.remove(&(job.id, attempt)) {
                    others.push(kept);
                }
            }
        }
        drop(unlisted);
        if result.outcome.is_success() {
            return mine;
        }
        for kept in mine.into_iter().chain(others) {
            self.discard(&job.label, kept);
        }
        None
    }

    /// Gives the job's window permit back, once per job: when it goes to wait for a
    /// retry, or when it is finished (if it did not already).
    fn give_permit_back(&self, job: Option<&Job>, disposition: Disposition) {
        let back = match (disposition, job) {
            (Disposition::Retrying(_), Some(job)) => self.permit_back.lock().insert(job.id),
            (Disposition::Retrying(_), None) => false,
            (disposition, _) if disposition.is_final() => {
                job.is_none_or(|job| !self.permit_back.lock().remove(&job.id))
            }
            _ => false,
        };
        if back {
            self.window.add_permits(1);
        }
    }

    /// Appends the entry, then writes the job's line: an entry the line cannot follow
    /// (the report is closed, or its write failed) is taken back, and an entry that
    /// cannot be written turns the job's line into that host error.
    fn append_and_record(
        &self,
        archive: &Mutex<Archive>,
        label: &str,
        result: &JobResult,
        kept: Kept,
    ) {
        let mut archive = archive.lock();
        let before = archive.end();
        let appended = self.append(&mut archive, label, kept);
        let mut report = self.report.lock();
        if report.is_closed() {
            if appended.is_ok() {
                let _ = archive.truncate_to(before);
            }
            return;
        }
        let recorded = match appended {
            Ok(()) => report.record(label, result),
            Err(outcome) => {
                let mut failed = result.clone();
                failed.outcome = outcome;
                // No entry to take back: a failed write of this line is answered by
                // the report when the batch finishes.
                let _ = report.record(label, &failed);
                return;
            }
        };
        if recorded.is_err() {
            let _ = archive.truncate_to(before);
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
        let closing = self.closing.read();
        if *closing {
            return Err(closed());
        }
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
            return self.keep_file(job, result.attempt, output);
        }
        let kept = match output {
            JobOutput::Inline(bytes) => Kept::Bytes(bytes),
            _ => Kept::Part,
        };
        self.unlisted.lock().insert((job.id, result.attempt), kept);
        Ok(())
    }

    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition) {
        let kept = job.and_then(|job| self.take_kept(job, result, self.max_attempts));
        let label = job.map_or("<undecodable>", |job| job.label.as_str());
        if !disposition.is_final() {
            // Not listed now (a retry, or a delivery the queue did not take): the job
            // runs again, and its output then.
            if let Some(kept) = kept {
                self.discard(label, kept);
            }
            self.give_permit_back(job, disposition);
            return;
        }
        match (&self.archive, kept) {
            (Some(archive), Some(kept)) => {
                let large = match &kept {
                    Kept::Bytes(bytes) => bytes.len() > LARGE_ENTRY,
                    Kept::Part | Kept::Renamed(_) => true,
                };
                if large {
                    off_runtime(|| self.append_and_record(archive, label, result, kept));
                } else {
                    self.append_and_record(archive, label, result, kept);
                }
            }
            (_, kept) => {
                let mut report = self.report.lock();
                // Closed: aborted between this job's output being kept and now; the
                // output it cannot list goes (a `--resume` runs the job again). A line
                // that cannot be written takes its output back too.
                let listed = !report.is_closed() && report.record(label, result).is_ok();
                drop(report);
                if let (false, Some(kept)) = (listed, kept) {
                    self.discard(label, kept);
                }
            }
        }
        self.give_permit_back(job, disposition);
        if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.total {
            self.all_done.cancel();
        }
    }
}

impl FileEnv {
    /// The batch is over: no partial file is created nor output renamed into place
    /// from now on, then the report is closed, the outputs whose line was not
    /// written go (their jobs are not listed; a `--resume` runs them again) and the
    /// partial files are swept.
    fn close(&self, total_jobs: usize, elapsed: Duration) -> Result<BatchSummary, BatchError> {
        *self.closing.write() = true;
        let summary = self.report.lock().finish(total_jobs, elapsed);
        let unlisted: Vec<Kept> = self.unlisted.lock().drain().map(|(_, kept)| kept).collect();
        for kept in unlisted {
            if let Kept::Renamed(label) = &kept {
                let label = label.clone();
                self.discard(&label, kept);
            }
        }
        outdir::remove_parts(&self.out_dir)?;
        summary
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
    let memory_output_max = output_memory_bound(options.output_memory, slots);
    // Every job has the batch's cap: one path for the whole batch.
    tracing::debug!(
        max_output = options.limits.max_output_bytes,
        memory_output_max,
        "outputs {}",
        if options.limits.max_output_bytes <= memory_output_max {
            "in memory"
        } else {
            "streamed"
        }
    );
    let all_done = CancellationToken::new();
    let env = Arc::new(FileEnv {
        module,
        out_dir: options.out_dir.clone(),
        report: Mutex::new(report),
        archive,
        memory_output_max,
        finished: AtomicUsize::new(0),
        total: inputs.len(),
        all_done: all_done.clone(),
        closing: RwLock::new(false),
        unlisted: Mutex::new(HashMap::new()),
        window: Arc::new(Semaphore::new(window(slots))),
        permit_back: Mutex::new(HashSet::new()),
        max_attempts: options.max_attempts.max(1),
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
    let mut summary = env.close(total_jobs, started.elapsed());
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
