//! Distributed mode from the submitter's side: upload modules and inputs to Redis,
//! enqueue jobs, follow their completion notices, and collect results and outputs.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{
    EntryPoint, JobId, JobInput, JobOutput, JobResult, Limits, ModuleHash, OutcomeKind, Queue,
    QueueError, ReportLine, codec,
};
use tokio::io::AsyncWriteExt;

use crate::batch::{BatchError, BatchOptions, BatchSummary, REPORT_FILE, progress_bar};
use crate::modules;

/// The blob-URI scheme workers read (see `sluice_worker::fleet`).
const BLOB_URI_PREFIX: &str = "blob:";

/// Reads a module file, validates it and stores it; returns its hash and the entry
/// point it offers.
pub async fn put_module(
    queue: &RedisQueue,
    path: &Path,
    alias: Option<&str>,
) -> Result<(ModuleHash, EntryPoint), BatchError> {
    let bytes = std::fs::read(path).map_err(|source| BatchError::Module {
        path: path.to_owned(),
        source,
    })?;
    let (wasm, _) = modules::prepare(&bytes)?;
    let entry = modules::default_entry(&wasm);
    Ok((queue.put_module(&wasm, alias).await?, entry))
}

/// `limits` clamped to `tenant`'s policy (the fleet default for a tenant without one),
/// as every submitter must: workers refuse jobs over the policy.
pub async fn clamp_to_policy(
    queue: &RedisQueue,
    tenant: &str,
    limits: &Limits,
) -> Result<Limits, QueueError> {
    Ok(queue
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
    let mut blob = queue.blob_writer();
    blob.write_from(tokio::io::BufReader::with_capacity(1 << 20, file))
        .await?;
    let (id, len) = blob.finish().await?;
    Ok(JobInput::Blob {
        uri: format!("{BLOB_URI_PREFIX}{id}"),
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
            let mut reader = queue.blob_reader(id);
            while let Some(chunk) = reader.next_chunk().await? {
                out.write_all(&chunk).await.map_err(io)?;
            }
        }
    }
    out.flush().await.map_err(io)
}

/// Waits for jobs to finish: follows the completion notices, and, should notices be
/// missed (Redis restarted without them), looks the results up directly.
pub struct Follower {
    last_notice: String,
    outstanding: HashMap<JobId, ()>,
}

impl Follower {
    /// Starts following from the newest notice now (call before enqueueing).
    pub async fn start(queue: &RedisQueue) -> Result<Self, QueueError> {
        let last_notice = queue.notices_from_now().await?;
        Ok(Follower {
            last_notice,
            outstanding: HashMap::new(),
        })
    }

    /// Adds jobs to wait for.
    pub fn expect(&mut self, ids: impl IntoIterator<Item = JobId>) {
        self.outstanding.extend(ids.into_iter().map(|id| (id, ())));
    }

    /// Jobs not finished yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The next finished jobs (waiting up to `wait`), with their results.
    pub async fn next(
        &mut self,
        queue: &RedisQueue,
        wait: Duration,
    ) -> Result<Vec<JobResult>, QueueError> {
        let (last, notices) = queue.completions(&self.last_notice, wait).await?;
        self.last_notice = last;
        let mut finished: Vec<JobId> = notices
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| self.outstanding.contains_key(id))
            .collect();
        if finished.is_empty() && !self.outstanding.is_empty() {
            // Quiet: check directly, in case notices were lost.
            finished = self.outstanding.keys().take(1000).copied().collect();
        }
        let results = fetch_results(queue, &finished).await?;
        for result in &results {
            self.outstanding.remove(&result.job_id);
        }
        Ok(results)
    }
}

/// Fetches stored results (MGET in batches); missing ones are skipped.
pub async fn fetch_results(
    queue: &RedisQueue,
    ids: &[JobId],
) -> Result<Vec<JobResult>, QueueError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| queue.keys().result_key(*id))
            .collect();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut queue.connection())
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        for bytes in values.into_iter().flatten() {
            let result: JobResult = codec::decode_value(&bytes)
                .map_err(|e| QueueError::Protocol(format!("stored result: {e}")))?;
            out.push(result);
        }
    }
    Ok(out)
}

/// `sluice batch --redis`: the same outputs and `report.jsonl` as embedded mode, the
/// jobs run by whatever workers serve the queue.
pub async fn run_batch(
    queue: Arc<RedisQueue>,
    options: BatchOptions,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let inputs = options.prepare_dirs()?;
    let (module, module_entry) = put_module(&queue, &options.module, None).await?;
    let mut options = options;
    options.limits = clamp_to_policy(&queue, &options.tenant.0, &options.limits).await?;
    let entry = options.entry.clone().unwrap_or(module_entry);

    let mut follower = Follower::start(&queue).await?;
    let mut labels = HashMap::new();
    let mut jobs = Vec::with_capacity(inputs.len());
    for (name, path, len) in &inputs {
        let job = options.job(
            module,
            upload_input(&queue, path, *len).await?,
            &entry,
            name,
        );
        labels.insert(job.id, name.clone());
        jobs.push(job);
    }
    follower.expect(jobs.iter().map(|j| j.id));
    queue.enqueue(&jobs).await?;
    drop(jobs);

    let progress = if options.progress {
        progress_bar(inputs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    let report_path = options.out_dir.join(REPORT_FILE);
    let report_io = |source| BatchError::Output {
        path: report_path.clone(),
        source,
    };
    let mut report =
        std::io::BufWriter::new(std::fs::File::create(&report_path).map_err(report_io)?);
    let mut by_kind: BTreeMap<OutcomeKind, usize> = BTreeMap::new();
    let mut backoff = Duration::from_millis(100);
    while follower.outstanding() > 0 {
        let finished = match follower.next(&queue, Duration::from_secs(1)).await {
            Ok(finished) => {
                backoff = Duration::from_millis(100);
                finished
            }
            Err(QueueError::Unavailable(reason)) => {
                // Redis is restarting or unreachable: the jobs are safe there; wait.
                progress.println(format!(
                    "redis unavailable ({reason}); retrying in {backoff:?}"
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
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
                write_output(&queue, &result, tokio::io::BufWriter::new(file)).await?;
            } else {
                progress.println(format!("{label}: {}", result.outcome));
            }
            serde_json::to_writer(&mut report, &ReportLine::new(label, &result))
                .map_err(std::io::Error::from)
                .map_err(report_io)?;
            report.write_all(b"\n").map_err(report_io)?;
            *by_kind.entry(result.outcome.kind()).or_default() += 1;
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    report.flush().map_err(report_io)?;
    Ok(BatchSummary {
        total: inputs.len(),
        by_kind,
        elapsed: started.elapsed(),
        report: report_path,
    })
}
