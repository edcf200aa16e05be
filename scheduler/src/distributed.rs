//! Distributed mode from the submitter's side: upload modules and inputs to Redis,
//! enqueue jobs, follow their completion notices, and collect results and outputs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{RecoveryError, RedisQueue, StoreError, Whereabouts};
use sluice_shared::{
    BlobId, EntryPoint, JobId, JobInput, JobOutput, JobResult, Limits, ModuleHash, Queue,
    QueueError,
};
use tokio::io::AsyncWriteExt;

use sluice_shared::module_meta::ModuleMeta;

use crate::batch::{BatchError, BatchOptions, BatchSummary};
use crate::modules;
use crate::report::{Report, say};

/// Reads a module file and validates it; returns its wasm, hash and metadata.
fn read_module(path: &Path) -> Result<(Vec<u8>, ModuleHash, ModuleMeta), BatchError> {
    let bytes = std::fs::read(path).map_err(|source| BatchError::Module {
        path: path.to_owned(),
        source,
    })?;
    let (wasm, hash) = modules::prepare(&bytes)?;
    let meta = modules::metadata(&wasm);
    Ok((wasm, hash, meta))
}

/// Reads a module file, validates it and stores it with its metadata; returns its hash
/// and the entry point it offers.
pub async fn put_module(
    queue: &RedisQueue,
    path: &Path,
    alias: Option<&str>,
) -> Result<(ModuleHash, EntryPoint), BatchError> {
    let (wasm, _, meta) = read_module(path)?;
    let hash = queue.modules().put_with_meta(&wasm, &meta, alias).await?;
    Ok((hash, meta.default_entry))
}

/// `limits` clamped to `tenant`'s policy (the fleet default for a tenant without one),
/// as every submitter must: workers refuse jobs over the policy.
pub async fn clamp_to_policy(
    queue: &RedisQueue,
    tenant: &str,
    limits: &Limits,
) -> Result<Limits, QueueError> {
    Ok(queue
        .tenants()
        .policy(tenant)
        .await?
        .unwrap_or_default()
        .clamp(limits))
}

/// The input for a file: inline when small, else a chunked blob streamed from disk.
pub async fn upload_input(
    queue: &RedisQueue,
    path: &Path,
    len: u64,
) -> Result<JobInput, BatchError> {
    let read_err = |source| BatchError::Inputs {
        path: path.to_owned(),
        source,
    };
    if len <= queue.config().inline_limit as u64 {
        return Ok(JobInput::Inline(std::fs::read(path).map_err(read_err)?));
    }
    let file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut blob = queue.blobs().writer();
    blob.write_from(tokio::io::BufReader::with_capacity(1 << 20, file))
        .await?;
    let (id, len) = blob.finish().await?;
    Ok(JobInput::Blob {
        id: BlobId::new(id),
        len,
    })
}

/// Writes a finished job's output to `out` (inline bytes, or the blob streamed chunk by
/// chunk).
pub async fn write_output(
    queue: &RedisQueue,
    result: &JobResult,
    mut out: impl tokio::io::AsyncWrite + Unpin,
) -> Result<(), BatchError> {
    let io = |source| BatchError::Output {
        path: "output".into(),
        source,
    };
    match &result.output {
        JobOutput::Written => {}
        JobOutput::Inline(bytes) => out.write_all(bytes).await.map_err(io)?,
        JobOutput::Blob { id, .. } => {
            let mut reader = queue.blobs().reader(id);
            while let Some(chunk) = reader.next_chunk().await? {
                out.write_all(&chunk).await.map_err(io)?;
            }
        }
    }
    out.flush().await.map_err(io)
}

/// Waits for jobs to finish: follows the completion notices, and, should notices be
/// missed (Redis restarted without them) or the notice stream be unusable (a key of
/// another type in its place), looks the results up directly.
pub struct Follower {
    last_notice: String,
    /// Ordered, so that direct look-ups can go round all of them in turn.
    outstanding: BTreeSet<JobId>,
    /// Where the next direct look-up starts.
    poll_from: Option<JobId>,
    /// Why notices are not followed any more (results are polled instead).
    polling: Option<String>,
    /// A warning for the caller to show, once.
    warning: Option<String>,
}

/// Results looked up directly per quiet round while notices are followed (a backstop
/// for lost notices), and per round once they are not (the only way then).
const LOOKUPS_WHILE_FOLLOWING: usize = 1_000;
const LOOKUPS_WHILE_POLLING: usize = 5_000;

impl Follower {
    /// Starts following from the newest notice now (call before enqueueing).
    pub async fn start(queue: &RedisQueue) -> Result<Self, QueueError> {
        let last_notice = queue.results().notices_from_now().await?;
        Ok(Follower {
            last_notice,
            outstanding: BTreeSet::new(),
            poll_from: None,
            polling: None,
            warning: None,
        })
    }

    /// Adds jobs to wait for.
    pub fn expect(&mut self, ids: impl IntoIterator<Item = JobId>) {
        self.outstanding.extend(ids);
    }

    /// Stops waiting for jobs (they were lost and cannot be enqueued again).
    pub fn forget(&mut self, ids: &[JobId]) {
        for id in ids {
            self.outstanding.remove(id);
        }
    }

    /// Jobs not finished yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The jobs not finished yet.
    pub fn outstanding_ids(&self) -> HashSet<JobId> {
        self.outstanding.iter().copied().collect()
    }

    /// Something the caller should tell the user about the way results are followed.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// The next finished jobs (waiting up to `wait`), with their results.
    ///
    /// A wrong-typed notice key fails every read alike, so it is told apart from Redis
    /// being away (which the caller waits out): the follower then polls results, and
    /// warns once with the key's name.
    pub async fn next(
        &mut self,
        queue: &RedisQueue,
        wait: Duration,
    ) -> Result<Vec<JobResult>, QueueError> {
        let mut finished = Vec::new();
        if self.polling.is_none() {
            match queue.results().completions(&self.last_notice, wait).await {
                Ok((last, notices)) => {
                    self.last_notice = last;
                    finished = notices
                        .into_iter()
                        .map(|(id, _)| id)
                        .filter(|id| self.outstanding.contains(id))
                        .collect();
                }
                Err(error) => {
                    let key = &queue.keys().done;
                    let kind = queue.admin().key_type(key).await?;
                    if kind == "stream" || kind == "none" {
                        return Err(error.into());
                    }
                    let why = format!(
                        "key {key} holds a {kind}, not a stream of completion notices \
                         (corrupted, or written by another application): \
                         looking results up directly instead"
                    );
                    self.warning = Some(why.clone());
                    self.polling = Some(why);
                }
            }
        } else {
            tokio::time::sleep(wait).await;
        }
        if finished.is_empty() && !self.outstanding.is_empty() {
            // Quiet: look results up directly, in case notices were lost.
            let budget = if self.polling.is_some() {
                LOOKUPS_WHILE_POLLING
            } else {
                LOOKUPS_WHILE_FOLLOWING
            };
            finished = self.next_lookups(budget);
        }
        let results = fetch_results(queue, &finished).await?;
        for result in &results {
            self.outstanding.remove(&result.job_id);
        }
        Ok(results)
    }

    /// Results of `ids` that are stored now (found by a scan, say).
    pub async fn collect(
        &mut self,
        queue: &RedisQueue,
        ids: &[JobId],
    ) -> Result<Vec<JobResult>, QueueError> {
        let ids: Vec<JobId> = ids
            .iter()
            .filter(|id| self.outstanding.contains(id))
            .copied()
            .collect();
        let results = fetch_results(queue, &ids).await?;
        for result in &results {
            self.outstanding.remove(&result.job_id);
        }
        Ok(results)
    }

    /// Up to `budget` outstanding ids, going round all of them over successive calls.
    fn next_lookups(&mut self, budget: usize) -> Vec<JobId> {
        let after = self.poll_from.take();
        let mut ids: Vec<JobId> = match after {
            Some(after) => self
                .outstanding
                .range((Bound::Excluded(after), Bound::Unbounded))
                .take(budget)
                .copied()
                .collect(),
            None => Vec::new(),
        };
        if ids.len() < budget {
            let wrap = budget - ids.len();
            ids.extend(
                self.outstanding
                    .iter()
                    .take_while(|id| after.is_none_or(|after| **id <= after))
                    .take(wrap)
                    .copied(),
            );
        }
        self.poll_from = ids.last().copied();
        ids
    }
}

/// Fetches stored results; missing ones are skipped.
pub async fn fetch_results(
    queue: &RedisQueue,
    ids: &[JobId],
) -> Result<Vec<JobResult>, QueueError> {
    Ok(queue.results().fetch(ids).await?)
}

/// When the next check for lost jobs is due: after `stall_after` without a result,
/// then at doubling intervals (up to a minute) while nothing arrives, so that a batch
/// of long jobs costs a scan now and then, not one per second.
struct StallWatch {
    /// How long without progress before the next check: `first`, doubling up to a
    /// minute while checks find nothing to redo.
    every: Backoff,
    since: Instant,
}

impl StallWatch {
    fn new(first: Duration) -> Self {
        StallWatch {
            every: Backoff::new(first, Duration::from_secs(60)),
            since: Instant::now(),
        }
    }

    fn progress(&mut self) {
        self.every.reset();
        self.since = Instant::now();
    }

    fn due(&self) -> bool {
        self.since.elapsed() >= self.every.peek()
    }

    fn checked(&mut self, redid: bool) {
        self.since = Instant::now();
        if redid {
            self.every.reset();
        } else {
            self.every.next_delay();
        }
    }
}

/// The most lost inputs named one per line; the rest are counted.
const LOST_LINES: usize = 100;

/// What a batch submitter holds, to enqueue again any job Redis lost.
struct Resubmitter<'a> {
    options: &'a BatchOptions,
    wasm: Vec<u8>,
    /// The module's metadata, stored with it again.
    meta: ModuleMeta,
    module: ModuleHash,
    entry: EntryPoint,
    /// Job id → (input name, path).
    inputs: HashMap<JobId, (String, PathBuf)>,
    redone: usize,
    /// Every input lost for good: name and why it cannot be read.
    lost: Vec<(String, String)>,
    /// Ids of jobs lost for good since the caller last took them.
    unreadable: Vec<JobId>,
}

impl Resubmitter<'_> {
    /// Enqueues `vanished` again under their own ids, after storing the module again
    /// if it is gone too; inputs are read from disk again (and blobs uploaded again).
    /// Jobs whose inputs are unreadable now go to `lost` and `unreadable`.
    async fn redo(
        &mut self,
        queue: &RedisQueue,
        vanished: &[JobId],
        progress: &ProgressBar,
    ) -> Result<(), BatchError> {
        // Workers recreate the group themselves; doing it here too means the jobs
        // are claimable the moment they are back, whoever looks first.
        queue.recovery().recreate_group().await?;
        if !queue.modules().is_stored(&self.module).await? {
            queue
                .modules()
                .put_with_meta(&self.wasm, &self.meta, None)
                .await?;
            say(
                progress,
                &format!("module {} was lost by Redis: stored it again", self.module),
            );
        }
        let mut jobs = Vec::new();
        for id in vanished {
            let Some((name, path)) = self.inputs.get(id) else {
                continue;
            };
            let input = match std::fs::metadata(path) {
                Ok(meta) => upload_input(queue, path, meta.len()).await,
                Err(source) => Err(BatchError::Inputs {
                    path: path.clone(),
                    source,
                }),
            };
            match input {
                Ok(input) => {
                    let mut job = self.options.job(self.module, input, &self.entry, name);
                    job.id = *id;
                    jobs.push(job);
                }
                Err(BatchError::Inputs { source, .. }) => {
                    if self.lost.len() < LOST_LINES {
                        say(
                            progress,
                            &format!(
                                "lost {name}: Redis lost the job and the input cannot be read again ({source})"
                            ),
                        );
                    }
                    self.lost.push((name.clone(), source.to_string()));
                    self.unreadable.push(*id);
                }
                Err(e) => return Err(e),
            }
            if jobs.len() == 1_000 {
                queue.enqueue(&jobs).await?;
                self.redone += jobs.len();
                jobs.clear();
            }
        }
        queue.enqueue(&jobs).await?;
        self.redone += jobs.len();
        Ok(())
    }
}

/// One line on what a stalled batch is waiting for. `workers` counts consumers that
/// took a job lately (Redis before 7.2 lists a consumer only once it got an entry), so
/// it is 0 for idle workers: the hint to start one is given only when jobs are queued
/// and nobody takes them.
fn waiting_line(
    queue: &RedisQueue,
    outstanding: usize,
    at: &Whereabouts,
    workers: usize,
) -> String {
    let name = &queue.config().queue;
    let mut line = format!(
        "waiting for {outstanding} jobs: {} queued, {} running, {} delayed, {} finished; \
         {workers} workers active on queue {name}",
        at.queued,
        at.running,
        at.delayed,
        at.finished.len()
    );
    if !at.vanished.is_empty() {
        line += &format!(
            "; {} lost by Redis, enqueueing them again",
            at.vanished.len()
        );
    }
    if workers == 0 && at.queued > 0 {
        line += &format!(" (start one: sluice-worker serve --queue {name})");
    }
    line
}

/// `sluice batch --redis`: the same outputs and `report.jsonl` as embedded mode, the
/// jobs run by whatever workers serve the queue.
///
/// The submitter holds every input, so no job is lost to Redis losing data: when no
/// result has arrived for a while it looks for its jobs (queued, running, delayed,
/// finished) and enqueues those found nowhere again under the same id. A job that
/// had in fact finished only turns into a duplicate, which results stored once make
/// harmless. Inputs that cannot be read again are listed, and the batch fails.
pub async fn run_batch(
    queue: Arc<RedisQueue>,
    options: BatchOptions,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let inputs = options.prepare_dirs()?;
    let (wasm, module, module_meta) = read_module(&options.module)?;
    queue
        .modules()
        .put_with_meta(&wasm, &module_meta, None)
        .await?;
    let module_entry = module_meta.default_entry.clone();
    let mut options = options;
    options.limits = clamp_to_policy(&queue, &options.tenant.0, &options.limits).await?;
    let entry = options.entry.clone().unwrap_or(module_entry);
    let mut report = Report::create(&options.out_dir, inputs.len(), options.progress)?;
    let progress = report.progress().clone();

    let mut follower = Follower::start(&queue).await?;
    let mut labels = HashMap::with_capacity(inputs.len());
    let mut resubmitter = Resubmitter {
        options: &options,
        wasm,
        meta: module_meta,
        module,
        entry: entry.clone(),
        inputs: HashMap::with_capacity(inputs.len()),
        redone: 0,
        lost: Vec::new(),
        unreadable: Vec::new(),
    };
    // Enqueued a chunk at a time, so inline inputs are never all in memory at once.
    // Should Redis go away meanwhile, the remaining jobs are only registered: they are
    // found missing when results stop arriving, and enqueued then like any lost job.
    let mut interrupted = None;
    for chunk in inputs.chunks(1_000) {
        let mut jobs = Vec::with_capacity(chunk.len());
        for (name, path, len) in chunk {
            let id = JobId::new();
            labels.insert(id, name.clone());
            resubmitter.inputs.insert(id, (name.clone(), path.clone()));
            follower.expect([id]);
            if interrupted.is_some() {
                continue;
            }
            match upload_input(&queue, path, *len).await {
                Ok(input) => {
                    let mut job = options.job(module, input, &entry, name);
                    job.id = id;
                    jobs.push(job);
                }
                Err(BatchError::Queue(e @ QueueError::Unavailable(_))) => interrupted = Some(e),
                Err(e) => return Err(e),
            }
        }
        if interrupted.is_none()
            && let Err(e) = queue.enqueue(&jobs).await
        {
            interrupted = Some(e);
        }
    }
    match interrupted {
        Some(e) => say(
            &progress,
            &format!(
                "enqueueing was interrupted ({e}); the jobs not enqueued will be once Redis is back"
            ),
        ),
        // Redis may have lost the module while the jobs went in (a restart
        // mid-enqueue): workers would fail every job that names it as not stored.
        // Should Redis be away now, the first check for lost jobs stores it.
        None => {
            if let Ok(false) = queue.modules().is_stored(&module).await
                && queue
                    .modules()
                    .put_with_meta(&resubmitter.wasm, &resubmitter.meta, None)
                    .await
                    .is_ok()
            {
                say(
                    &progress,
                    &format!("module {module} was lost by Redis: stored it again"),
                );
            }
        }
    }

    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut stall = StallWatch::new(options.stall_after);
    while follower.outstanding() > 0 {
        let mut finished = match follower.next(&queue, Duration::from_secs(1)).await {
            Ok(finished) => {
                backoff.reset();
                finished
            }
            Err(QueueError::Unavailable(reason)) => {
                // Redis is restarting or unreachable: wait; whatever it lost is
                // enqueued again once it is back.
                let delay = backoff.next_delay();
                say(
                    &progress,
                    &format!("redis unavailable ({reason}); retrying in {delay:?}"),
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(warning) = follower.take_warning() {
            say(&progress, &warning);
        }
        if !finished.is_empty() {
            stall.progress();
        } else if stall.due() {
            let outstanding = follower.outstanding_ids();
            let at = match queue
                .recovery()
                .locate(&outstanding, Some(&options.tenant.0))
                .await
            {
                Ok(at) => at,
                Err(RecoveryError::Store(StoreError::Unavailable(_))) => {
                    stall.checked(false);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let workers = queue
                .admin()
                .live_workers(Duration::from_secs(10))
                .await
                .unwrap_or(0);
            say(
                &progress,
                &waiting_line(&queue, outstanding.len(), &at, workers),
            );
            let redone = async {
                finished = follower.collect(&queue, &at.finished).await?;
                if !at.vanished.is_empty() {
                    resubmitter.redo(&queue, &at.vanished, &progress).await?;
                }
                Ok::<_, BatchError>(())
            }
            .await;
            let unreadable = std::mem::take(&mut resubmitter.unreadable);
            follower.forget(&unreadable);
            progress.set_length(
                progress
                    .length()
                    .unwrap_or(0)
                    .saturating_sub(unreadable.len() as u64),
            );
            match redone {
                Ok(()) => {}
                // Redis went away again: what was not enqueued is found at the next check.
                Err(BatchError::Queue(QueueError::Unavailable(reason))) => {
                    say(
                        &progress,
                        &format!("redis unavailable ({reason}); will look again"),
                    );
                    stall.checked(false);
                    continue;
                }
                Err(e) => return Err(e),
            }
            stall.checked(!at.vanished.is_empty());
        }
        for result in finished {
            let label = labels.get(&result.job_id).cloned().unwrap_or_default();
            if result.outcome.is_success() {
                let path = options.out_dir.join(&label);
                let file =
                    tokio::fs::File::create(&path)
                        .await
                        .map_err(|source| BatchError::Output {
                            path: path.clone(),
                            source,
                        })?;
                match write_output(&queue, &result, tokio::io::BufWriter::new(file)).await {
                    Ok(()) => {}
                    // Redis went away while the output streamed: wait for the job
                    // again; its result is read again, or the job is redone if lost.
                    Err(BatchError::Queue(QueueError::Unavailable(reason))) => {
                        say(
                            &progress,
                            &format!(
                                "{label}: reading its output failed ({reason}); will read it again"
                            ),
                        );
                        follower.expect([result.job_id]);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            report.record(&label, &result)?;
        }
    }
    let summary = report.finish(inputs.len(), started.elapsed())?;
    if resubmitter.redone > 0 {
        say(
            &progress,
            &format!(
                "{} jobs lost by Redis were enqueued again",
                resubmitter.redone
            ),
        );
    }
    if !resubmitter.lost.is_empty() {
        return Err(BatchError::Lost {
            report: summary.report,
            lost: resubmitter.lost,
        });
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(n: usize) -> (Follower, Vec<JobId>) {
        let ids: Vec<JobId> = (0..n).map(|_| JobId::new()).collect();
        let mut follower = Follower {
            last_notice: "0-0".into(),
            outstanding: BTreeSet::new(),
            poll_from: None,
            polling: None,
            warning: None,
        };
        follower.expect(ids.iter().copied());
        (follower, ids)
    }

    /// Lost notices used to be made up for by looking up the same first 1,000 ids on
    /// every quiet round; the rest could never be found.
    #[test]
    fn direct_lookups_go_round_every_outstanding_job() {
        let (mut follower, ids) = follower(2_500);
        let mut seen = HashSet::new();
        for _ in 0..3 {
            let batch = follower.next_lookups(1_000);
            assert!(!batch.is_empty() && batch.len() <= 1_000);
            seen.extend(batch);
        }
        assert_eq!(
            seen.len(),
            ids.len(),
            "three rounds of 1,000 cover 2,500 jobs"
        );

        // Jobs finishing between rounds never stop the rotation.
        follower.forget(&ids[..2_000]);
        let mut seen = HashSet::new();
        for _ in 0..2 {
            seen.extend(follower.next_lookups(300));
        }
        assert_eq!(seen.len(), 500);
        assert!(seen.iter().all(|id| !ids[..2_000].contains(id)));
    }

    #[test]
    fn a_stall_check_backs_off_while_nothing_arrives() {
        let mut watch = StallWatch::new(Duration::ZERO);
        assert!(watch.due());
        let mut watch2 = StallWatch::new(Duration::from_secs(5));
        assert!(!watch2.due());
        watch2.checked(false);
        assert_eq!(watch2.every.peek(), Duration::from_secs(10));
        for _ in 0..10 {
            watch2.checked(false);
        }
        assert_eq!(watch2.every.peek(), Duration::from_secs(60));
        watch2.checked(true);
        assert_eq!(watch2.every.peek(), Duration::from_secs(5));
        watch.progress();
        assert_eq!(watch.every.peek(), Duration::ZERO);
    }
}
