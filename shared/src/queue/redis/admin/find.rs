//! Where one job is now (`sluice result`, `sluice wait`): finished, waiting in its
//! tenant's backlog, queued, running (attempt N, on which worker), delayed (until
//! when), cancelled, or nowhere.
//!
//! A job submitted over HTTP has a record that names its stream and entry, read
//! directly; any other job is searched for a page at a time (`find_job.lua`) in the
//! order jobs move (delayed set, job stream, delayed set again, then its result), so a
//! job that moves while it is searched for is found where it arrives.

use redis::Value;

use super::super::GROUP;
use super::super::error::{StoreError, bad_reply, unavailable};
use super::super::reply::{bytes_of, count_of, text};
use super::super::scripts::SCRIPTS;
use super::{Admin, AdminError};
use crate::codec;
use crate::job::JobId;

/// Entries (or delayed members) looked at per `find_job.lua` call.
const PAGE: usize = 2_000;

/// Where a job is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// It has a stored result.
    Finished,
    /// Waiting in its tenant's backlog for admission (a job submitted over HTTP).
    Backlogged {
        /// The tenant whose backlog holds it.
        tenant: String,
    },
    /// On the job stream, not claimed yet.
    Queued {
        /// The attempt it starts next (1 for a new job).
        attempt: u32,
    },
    /// A worker holds it.
    Running {
        /// The attempt running (counting runs of workers that died).
        attempt: u32,
        /// The worker (consumer) holding it.
        worker: String,
        /// Milliseconds since its lease was taken or last renewed.
        idle_ms: u64,
    },
    /// In the delayed set until its due time: a retry, or a job scheduled for later.
    Delayed {
        /// When it becomes due (Redis server clock, ms since the Unix epoch).
        due_ms: u64,
        /// Attempts already made (0: a job submitted with `--at`/`--delay`).
        attempts_made: u32,
    },
    /// Cancelled before a worker claimed it.
    Cancelled,
    /// Nowhere on this queue: never submitted to it, or finished and its result expired.
    Missing,
}

/// What one `find_job.lua` page answered.
enum Page {
    /// Found: the reply's fields after `found`.
    Found(Vec<Value>),
    /// Not in this page; the next one starts here (`None`: that was the last).
    Next(Option<String>),
}

/// The bytes after the format version byte of every envelope of job `id`, in every
/// version this build reads (2 and 3): the id as postcard writes it (its length, 16,
/// and its bytes). `find_job.lua` compares them from an envelope's second byte, so a
/// job enqueued before an upgrade is found too.
fn envelope_prefix(id: JobId) -> Vec<u8> {
    postcard::to_stdvec(&id).unwrap_or_default()
}

/// Attempts made before an envelope was enqueued (0 when it does not decode).
fn attempts_before(envelope: Option<&Value>) -> u32 {
    envelope
        .and_then(bytes_of)
        .and_then(|bytes| codec::decode(&bytes).ok())
        .map_or(0, |job| job.attempt)
}

impl Admin<'_> {
    /// Where job `id` is now.
    pub async fn job_state(self, id: JobId) -> Result<JobState, AdminError> {
        let q = self.q;
        if self.has_result(id).await? {
            return Ok(JobState::Finished);
        }
        if let Some(record) = q.results().job_record(id).await? {
            if record.cancelled {
                return Ok(JobState::Cancelled);
            }
            if record.stream != q.keys.jobs
                && self.entry_exists(&record.stream, &record.entry).await?
            {
                return Ok(JobState::Backlogged {
                    tenant: record.tenant,
                });
            }
        }
        let prefix = envelope_prefix(id);
        let delayed = q.keys.delayed.clone();
        let jobs = q.keys.jobs.clone();
        if let Some(state) = self.search_delayed(&delayed, &prefix).await? {
            return Ok(state);
        }
        if let Some(found) = self.search(&jobs, GROUP, "-", &prefix).await? {
            let before = attempts_before(found.get(1));
            let worker = found.get(2).and_then(text).unwrap_or_default();
            let deliveries = found.get(4).map_or(0, count_of);
            return Ok(if worker.is_empty() {
                JobState::Queued {
                    attempt: before.saturating_add(1),
                }
            } else {
                JobState::Running {
                    attempt: before.saturating_add(u32::try_from(deliveries).unwrap_or(u32::MAX)),
                    worker,
                    idle_ms: found.get(3).map_or(0, count_of),
                }
            });
        }
        if let Some(state) = self.search_delayed(&delayed, &prefix).await? {
            return Ok(state);
        }
        Ok(if self.has_result(id).await? {
            JobState::Finished
        } else {
            JobState::Missing
        })
    }

    async fn has_result(self, id: JobId) -> Result<bool, StoreError> {
        let key = self.q.keys.result_key(id);
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(exists == 1)
    }

    async fn entry_exists(self, stream: &str, entry: &str) -> Result<bool, StoreError> {
        if entry.is_empty() {
            return Ok(false);
        }
        // A record naming a key of another type, or a malformed id, names no entry.
        let reply: Result<Value, redis::RedisError> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(entry)
            .arg(entry)
            .query_async(&mut self.q.connection())
            .await;
        match reply {
            Ok(Value::Array(rows)) => Ok(!rows.is_empty()),
            Ok(_) => Ok(false),
            Err(e) if e.code().is_some() => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn search_delayed(
        self,
        delayed: &str,
        prefix: &[u8],
    ) -> Result<Option<JobState>, AdminError> {
        Ok(self.search(delayed, "", "0", prefix).await?.map(|found| {
            let due_ms = found
                .first()
                .and_then(text)
                .and_then(|score| score.parse::<f64>().ok())
                .map_or(0, |score| score.max(0.0) as u64);
            JobState::Delayed {
                due_ms,
                attempts_made: attempts_before(found.get(1)),
            }
        }))
    }

    /// Searches `key` (a stream from `-`, or the delayed set from rank `0`) page by page
    /// for the job whose envelopes hold `prefix` after their version byte.
    async fn search(
        self,
        key: &str,
        group: &str,
        first: &str,
        prefix: &[u8],
    ) -> Result<Option<Vec<Value>>, StoreError> {
        let mut start = first.to_owned();
        loop {
            match self.page(key, group, &start, prefix).await? {
                Page::Found(fields) => return Ok(Some(fields)),
                Page::Next(Some(next)) => start = next,
                Page::Next(None) => return Ok(None),
            }
        }
    }

    async fn page(
        self,
        key: &str,
        group: &str,
        start: &str,
        prefix: &[u8],
    ) -> Result<Page, StoreError> {
        let reply: Vec<Value> = SCRIPTS
            .find_job
            .key(key)
            .arg(group)
            .arg(start)
            .arg(PAGE)
            .arg(prefix)
            .arg(codec::OLDEST_FORMAT_VERSION)
            .arg(codec::FORMAT_VERSION)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let status = reply.first().and_then(text).unwrap_or_default();
        match status.as_str() {
            "found" => Ok(Page::Found(reply.into_iter().skip(1).collect())),
            "next" => {
                let next = reply.get(1).and_then(text).unwrap_or_default();
                Ok(Page::Next((!next.is_empty()).then_some(next)))
            }
            "wrongtype" => Err(StoreError::Corrupt(format!(
                "{key} holds a {}, not a stream or sorted set of jobs",
                reply.get(1).and_then(text).unwrap_or_default()
            ))),
            _ => Err(bad_reply(format!("find_job.lua reply: {reply:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Job, JobInput, ModuleHash};

    #[test]
    fn every_envelope_of_a_job_starts_with_its_prefix() {
        let mut job = Job::new(ModuleHash::of(b"m"), JobInput::Inline(b"x".to_vec()));
        job.attempt = 3;
        let envelope = codec::encode(&job);
        assert!(codec::reads_version(envelope[0]));
        assert!(envelope[1..].starts_with(&envelope_prefix(job.id)));
        assert_eq!(envelope_prefix(job.id).len(), 17);
    }
}
