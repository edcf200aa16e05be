//! What became of jobs: completion notices (the `done` stream submitters follow),
//! stored results, job and batch records (who owns a job, where its entry is, which
//! batch it belongs to; the HTTP API answers only a job's own tenant from these), a
//! batch's progress from its outcome counters, and cancelling a job not yet claimed.
//!
//! Keys: `sluice:{q}:done` (stream of `job id → outcome kind`), `sluice:{q}:result:<id>`,
//! `sluice:{q}:job:<id>` (hash: `tenant`, `stream`, `entry`, `batch`, `state`,
//! `limits`, `outcome`), `sluice:{q}:batch:<id>` (hash: `tenant`, `total`, `n:<kind>`
//! counters) and `sluice:{q}:batch:<id>:jobs` (list of job ids); all expire with the
//! result TTL.
//!
//! `complete.lua` and `dead.lua` count a job's final outcome in its batch hash and note
//! it in the job's record in the same script that stores the result, once per job
//! (results are never replaced; `dlq_retry.lua` takes the count back with the failure
//! it deletes). Reading a batch's status is then one `HGETALL` and one `HGET` per job,
//! never a decoded result.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::Value;

use super::error::{StoreError, bad_reply, on_key, unavailable};
use super::reply::{millis, xread_entries};
use super::scripts::SCRIPTS;
use super::{GROUP, RedisQueue};
use crate::codec;
use crate::job::{Job, JobId};
use crate::outcome::{JobResult, OutcomeKind};
use crate::queue::QueueError;

/// Completion notices, stored results and job records of a queue (from
/// [`RedisQueue::results`]).
#[derive(Clone, Copy)]
pub struct Results<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why reading notices, results or records failed.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// A stored result does not decode (a damaged or foreign value under its key).
    #[error("corrupt Redis contents: stored result {key}: {reason}")]
    BadResult {
        /// The result's key.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// No batch of that id exists (never did, expired, or the id is not a batch id).
    #[error("no batch {id} (unknown, or expired with its results)")]
    UnknownBatch {
        /// The id asked for (capped).
        id: String,
    },
    /// The batch was cancelled (`sluice batch cancel`, `DELETE /v1/batches/{id}`): no
    /// more of its jobs are enqueued.
    #[error("batch {id} was cancelled: no more of its jobs are enqueued")]
    BatchCancelled {
        /// The batch's id (capped).
        id: String,
    },
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ResultsError> for QueueError {
    fn from(e: ResultsError) -> Self {
        match e {
            ResultsError::Store(e) => e.into(),
            other => QueueError::Protocol(other.to_string()),
        }
    }
}

/// What the record of a job says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// The tenant that owns the job.
    pub tenant: String,
    /// The stream its entry is in: its tenant's backlog, or the shared job stream.
    pub stream: String,
    /// The entry's id in that stream.
    pub entry: String,
    /// The batch it was submitted in, if any.
    pub batch: Option<String>,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// The limits the job was enqueued with (JSON).
    pub limits: String,
}

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// Removed before any worker claimed it.
    Yes,
    /// A worker is running it.
    Running,
    /// It finished, was cancelled before, or is unknown.
    Gone,
}

/// What cancelling a batch did, counted job by job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCancelled {
    /// Jobs removed before any worker claimed them.
    pub cancelled: u64,
    /// Jobs a worker is running now (they run to their end).
    pub running: u64,
    /// Jobs already finished, cancelled before, or whose record expired.
    pub finished: u64,
    /// Jobs left alone because their record, or the stream it names, is corrupt.
    pub corrupt: u64,
}

impl BatchCancelled {
    /// Every job of the batch that was looked at.
    pub fn total(&self) -> u64 {
        self.cancelled + self.running + self.finished + self.corrupt
    }
}

/// A job of a batch, as its record says (see [`Results::batch_jobs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchJob {
    /// The job's id.
    pub id: JobId,
    /// Its label (a command-line batch's input name); empty when the record has none
    /// or has expired.
    pub label: String,
    /// Whether it was cancelled.
    pub cancelled: bool,
}

/// A record's `label` and `state` fields.
type LabelState = (Option<String>, Option<String>);

/// Jobs per `enqueue_batch.lua` call (envelopes travel inline in its arguments).
const ENQUEUE_CHUNK: usize = 200;

/// Jobs cancelled per `cancel_batch.lua` call (one script holds Redis for its page).
const CANCEL_PAGE: usize = 500;

/// Longest batch id quoted back in an error.
const MAX_ID_IN_ERROR: usize = 64;

/// The counter field prefix in a batch hash.
const COUNTER: &str = "n:";

/// The `by_outcome` key (and `n:<key>` counter) of a batch's cancelled jobs, counted by
/// `cancel_batch.lua`; not an outcome kind (a cancelled job has no result).
pub const CANCELLED: &str = "cancelled";

/// What a batch's counters say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchCounts {
    /// The tenant that owns the batch.
    pub tenant: String,
    /// Jobs submitted in the batch.
    pub total: u64,
    /// Finished jobs per outcome kind, each job counted once; the cancelled ones under
    /// [`CANCELLED`].
    pub by_outcome: BTreeMap<String, u64>,
    /// Each job of the batch, in submission order, with its outcome once finished.
    pub jobs: Vec<(JobId, Option<OutcomeKind>)>,
}

impl BatchCounts {
    /// Finished jobs, the cancelled counted (under [`CANCELLED`] in `by_outcome`): a
    /// cancelled batch ends with `done == total` once its running jobs finish.
    pub fn done(&self) -> u64 {
        self.by_outcome.values().sum()
    }
}

fn kind_named(name: &str) -> Option<OutcomeKind> {
    name.parse().ok()
}

/// The `XREAD` command reading the notice stream `key` after `after` for up to `block`.
pub(super) fn notices_cmd(key: &str, after: &str, block: Duration) -> redis::Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(10_000)
        .arg("BLOCK")
        .arg(millis(block))
        .arg("STREAMS")
        .arg(key)
        .arg(after);
    cmd
}

/// An `XREAD` reply of the notice stream: the last id read (`after` when none) and each
/// `(job id, outcome kind)`; fields that are not a job id and an outcome kind are
/// skipped.
pub(super) fn notices_of(
    reply: Value,
    after: &str,
) -> Result<(String, Vec<(JobId, OutcomeKind)>), StoreError> {
    let mut last = after.to_owned();
    let mut notices = Vec::new();
    for (id, fields) in xread_entries(reply)? {
        for (job, kind) in fields {
            let job = std::str::from_utf8(&job).ok().and_then(|s| s.parse().ok());
            let kind = std::str::from_utf8(&kind).ok().and_then(kind_named);
            if let (Some(job), Some(kind)) = (job, kind) {
                notices.push((job, kind));
            }
        }
        last = id;
    }
    Ok((last, notices))
}

impl Results<'_> {
    /// A position in the completion-notice stream meaning "now": notices from it on are
    /// those of completions after this call (stream ids are the server's clock). It is
    /// the last id of the previous millisecond: `XREAD` returns ids strictly after its
    /// cursor, so `<now>-0` would miss a notice added within the same millisecond.
    pub async fn notices_from_now(self) -> Result<String, StoreError> {
        let now = self.q.server_time_ms().await?;
        Ok(match now.checked_sub(1) {
            Some(before) => format!("{before}-{}", u64::MAX),
            None => "0".to_owned(),
        })
    }

    /// Completion notices after stream id `after` (`"0"` for all, `"$"` for new ones),
    /// waiting up to `block`: the last id read and each `(job id, outcome kind)`.
    pub async fn completions(
        self,
        after: &str,
        block: Duration,
    ) -> Result<(String, Vec<(JobId, OutcomeKind)>), ResultsError> {
        let cmd = notices_cmd(&self.q.keys.done, after, block);
        let reply = self
            .q
            .blocking
            .query(&cmd, Some(block))
            .await
            .map_err(on_key(&self.q.keys.done))?;
        Ok(notices_of(reply, after)?)
    }

    /// The stored results of `ids` (read in batches of 500); missing ones are skipped.
    pub async fn fetch(self, ids: &[JobId]) -> Result<Vec<JobResult>, ResultsError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| self.q.keys.result_key(*id)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            for (key, bytes) in keys.into_iter().zip(values) {
                let Some(bytes) = bytes else { continue };
                let result: JobResult =
                    codec::decode_result(&bytes).map_err(|e| ResultsError::BadResult {
                        key,
                        reason: e.to_string(),
                    })?;
                out.push(result);
            }
        }
        Ok(out)
    }

    /// A job's record, if it exists.
    pub async fn job_record(self, id: JobId) -> Result<Option<JobRecord>, ResultsError> {
        let key = self.q.keys.job_record(id);
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        let Some(tenant) = fields.get("tenant") else {
            return Ok(None);
        };
        Ok(Some(JobRecord {
            tenant: tenant.clone(),
            stream: fields.get("stream").cloned().unwrap_or_default(),
            entry: fields.get("entry").cloned().unwrap_or_default(),
            batch: fields.get("batch").filter(|b| !b.is_empty()).cloned(),
            cancelled: fields.get("state").is_some_and(|s| s == "cancelled"),
            limits: fields.get("limits").cloned().unwrap_or_default(),
        }))
    }

    /// Whether a worker holds the job's entry now (a job still in its backlog does not).
    pub async fn is_running(self, record: &JobRecord) -> Result<bool, ResultsError> {
        if record.stream != self.q.keys.jobs {
            return Ok(false);
        }
        let entry = &record.entry;
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&self.q.keys.jobs)
            .arg(GROUP)
            .arg(entry)
            .arg(entry)
            .arg(1)
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(matches!(pending, redis::Value::Array(rows) if !rows.is_empty()))
    }

    /// Cancels a job that no worker has claimed yet (queued, in its tenant's backlog,
    /// or waiting to be retried).
    pub async fn cancel(self, id: JobId) -> Result<Cancelled, ResultsError> {
        let record = self.q.keys.job_record(id);
        // A record's tenant and batch never change: its backlog (the one stream besides
        // the job stream the record may name) and its batch hash (which counts the
        // cancel) are declared to the script. A record that cannot be read here is
        // reported by the script.
        let (tenant, batch): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&record)
            .arg("tenant")
            .arg("batch")
            .query_async(&mut self.q.connection())
            .await
            .unwrap_or_default();
        let backlog = match tenant.filter(|t| !t.is_empty()) {
            Some(tenant) => self.q.keys.backlog(&tenant),
            None => self.q.keys.jobs.clone(),
        };
        let batch = match batch.filter(|b| uuid::Uuid::parse_str(b).is_ok()) {
            Some(batch) => self.q.keys.batch(&batch),
            None => self.q.keys.jobs.clone(),
        };
        let answer: String = SCRIPTS
            .cancel
            .key(&self.q.keys.jobs)
            .key(&record)
            .key(self.q.keys.result_key(id))
            .key(backlog)
            .key(batch)
            .key(&self.q.keys.delayed)
            .arg(GROUP)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(match answer.as_str() {
            "cancelled" => Cancelled::Yes,
            "running" => Cancelled::Running,
            _ => Cancelled::Gone,
        })
    }

    /// Cancels batch `id`: marks it cancelled (no more of its jobs are enqueued, see
    /// [`Self::enqueue_batch`]) and cancels every job of it that no worker has claimed
    /// yet, each atomically (`cancel_batch.lua`, a page of jobs per call, which also
    /// counts them in the batch hash's `n:cancelled`); jobs running now run to their
    /// end. Jobs a submitter enqueued while the list was read are cancelled too. The
    /// caller checks who owns the batch first ([`Self::batch`] names its tenant).
    pub async fn cancel_batch(self, id: &str) -> Result<BatchCancelled, ResultsError> {
        let unknown = || ResultsError::UnknownBatch {
            id: id.chars().take(MAX_ID_IN_ERROR).collect(),
        };
        // Batch ids are UUIDs; anything else (`<id>:jobs`, say) names another key.
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(unknown());
        }
        let Some((tenant, jobs)) = self.batch(id).await? else {
            return Err(unknown());
        };
        let backlog = self.q.keys.backlog(&tenant);
        let mut done = BatchCancelled::default();
        // The first call sets the flag even for a batch listing no job yet.
        self.cancel_page(id, &backlog, &[], &mut done).await?;
        for page in jobs.chunks(CANCEL_PAGE) {
            self.cancel_page(id, &backlog, page, &mut done).await?;
        }
        // A chunk enqueued between the list's read and the flag: after the flag no
        // chunk goes in, so one more read finds all the rest.
        let list = self.q.keys.batch_jobs(id);
        let later: Vec<String> = redis::cmd("LRANGE")
            .arg(&list)
            .arg(jobs.len())
            .arg(-1)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&list))?;
        let later: Vec<JobId> = later.iter().filter_map(|i| i.parse().ok()).collect();
        for page in later.chunks(CANCEL_PAGE) {
            self.cancel_page(id, &backlog, page, &mut done).await?;
        }
        Ok(done)
    }

    /// One `cancel_batch.lua` call over `page` of batch `id`, its counts added to `done`.
    async fn cancel_page(
        self,
        id: &str,
        backlog: &str,
        page: &[JobId],
        done: &mut BatchCancelled,
    ) -> Result<(), ResultsError> {
        let mut invocation = SCRIPTS.cancel_batch.prepare_invoke();
        invocation
            .key(&self.q.keys.jobs)
            .key(self.q.keys.batch(id))
            .key(backlog)
            .key(&self.q.keys.delayed);
        for job in page {
            invocation
                .key(self.q.keys.job_record(*job))
                .key(self.q.keys.result_key(*job));
        }
        let counts: Vec<u64> = invocation
            .arg(GROUP)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let [cancelled, running, finished, corrupt] = counts[..] else {
            return Err(bad_reply(format!("cancel_batch.lua reply: {counts:?}")).into());
        };
        done.cancelled += cancelled;
        done.running += running;
        done.finished += finished;
        done.corrupt += corrupt;
        Ok(())
    }

    /// Enqueues a command-line batch's `jobs` onto the job stream with their records
    /// (label, entry) and batch `id`'s hash and job list (`enqueue_batch.lua`, a chunk
    /// of jobs per call, each job atomically with its record). `total` is the whole
    /// batch's job count; `again`: the jobs were enqueued before (Redis lost them) and
    /// are already listed in the batch (a job cancelled meanwhile is skipped). Once the
    /// batch is cancelled ([`Self::cancel_batch`]) every chunk is refused:
    /// [`ResultsError::BatchCancelled`] (the chunks before it are enqueued).
    pub async fn enqueue_batch(
        self,
        id: &str,
        tenant: &str,
        total: usize,
        jobs: &[Job],
        again: bool,
    ) -> Result<(), ResultsError> {
        let ttl = millis(self.q.config.result_ttl);
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let mut invocation = SCRIPTS.enqueue_batch.prepare_invoke();
            invocation
                .key(&self.q.keys.jobs)
                .key(self.q.keys.batch(id))
                .key(self.q.keys.batch_jobs(id))
                .key(self.q.keys.owned())
                .arg(tenant)
                .arg(id)
                .arg(ttl)
                .arg(total)
                .arg(if again { "0" } else { "1" });
            for job in chunk {
                invocation
                    .key(self.q.keys.job_record(job.id))
                    .arg(codec::encode(job))
                    .arg(job.id.to_string())
                    .arg(&job.label);
            }
            let reply: Value = invocation
                .invoke_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            if matches!(&reply, Value::BulkString(b) if b == b"cancelled")
                || matches!(&reply, Value::SimpleString(s) if s == "cancelled")
            {
                return Err(ResultsError::BatchCancelled {
                    id: id.chars().take(MAX_ID_IN_ERROR).collect(),
                });
            }
        }
        Ok(())
    }

    /// The label and state of each of `ids` from its record (read in pages of 1,000).
    pub async fn batch_jobs(self, ids: &[JobId]) -> Result<Vec<BatchJob>, ResultsError> {
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for job in chunk {
                pipe.cmd("HMGET")
                    .arg(self.q.keys.job_record(*job))
                    .arg("label")
                    .arg("state");
            }
            let fields: Vec<Result<LabelState, redis::RedisError>> = pipe
                .ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            for (id, fields) in chunk.iter().zip(fields) {
                // A corrupt record reads as one without a label, not as a failed batch.
                let (label, state) = fields.unwrap_or_default();
                jobs.push(BatchJob {
                    id: *id,
                    label: label.unwrap_or_default(),
                    cancelled: state.is_some_and(|s| s == "cancelled"),
                });
            }
        }
        Ok(jobs)
    }

    /// A batch's tenant and job ids, if it exists.
    pub async fn batch(self, id: &str) -> Result<Option<(String, Vec<JobId>)>, ResultsError> {
        let key = self.q.keys.batch(id);
        let tenant: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("tenant")
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let Some(tenant) = tenant else {
            return Ok(None);
        };
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(self.q.keys.batch_jobs(id))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(Some((
            tenant,
            ids.iter().filter_map(|i| i.parse().ok()).collect(),
        )))
    }

    /// Batch `id`'s counters, if it exists and belongs to `tenant` (another tenant's
    /// batch reads as missing, and costs no more than a missing one).
    pub async fn batch_counts(
        self,
        id: &str,
        tenant: &str,
    ) -> Result<Option<BatchCounts>, ResultsError> {
        // Batch ids are UUIDs; anything else (`<id>:jobs`, say) names another key.
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        let key = self.q.keys.batch(id);
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if field("tenant").is_none_or(|owner| owner != tenant) {
            return Ok(None);
        }
        let mut by_outcome = BTreeMap::new();
        for (name, value) in &fields {
            let Some(counter) = name.strip_prefix(COUNTER) else {
                continue;
            };
            let key = match kind_named(counter) {
                Some(kind) => kind.as_str(),
                None if counter == CANCELLED => CANCELLED,
                None => continue,
            };
            // A counter that is not a number was not written by Sluice; it counts 0.
            let n: i64 = value.parse().unwrap_or(0);
            if n > 0 {
                by_outcome.insert(key.to_owned(), n as u64);
            }
        }
        let list = self.q.keys.batch_jobs(id);
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(&list)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&list))?;
        let ids: Vec<JobId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for job in chunk {
                pipe.cmd("HGET")
                    .arg(self.q.keys.job_record(*job))
                    .arg("outcome");
            }
            let outcomes: Vec<Result<Option<String>, redis::RedisError>> = pipe
                .ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            for (job, outcome) in chunk.iter().zip(outcomes) {
                // A corrupt record hides that job's outcome, not the batch's.
                let kind = outcome.ok().flatten().as_deref().and_then(kind_named);
                jobs.push((*job, kind));
            }
        }
        Ok(Some(BatchCounts {
            tenant: tenant.to_owned(),
            total: field("total")
                .and_then(|t| t.parse().ok())
                .unwrap_or(ids.len() as u64),
            by_outcome,
            jobs,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::codec;
    use crate::job::JobId;
    use crate::outcome::{JobResult, Outcome};

    /// `dlq_retry.lua` tells a stored success from a failure by byte 18 of the result
    /// (version, id length, 16 id bytes, then the outcome's variant): this pins that.
    #[test]
    fn a_stored_success_has_variant_zero_at_byte_18() {
        let id = JobId(uuid::Uuid::now_v7());
        let success = codec::encode_result(&JobResult::without_run(id, Outcome::Success, 1));
        assert_eq!(success[18], 0);
        let failed = codec::encode_result(&JobResult::without_run(id, Outcome::Timeout, 1));
        assert_ne!(failed[18], 0);
        assert_eq!(&success[2..18], id.0.as_bytes());
    }
}
