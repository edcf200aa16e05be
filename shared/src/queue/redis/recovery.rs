//! Where jobs are: queued, running, delayed, finished, or nowhere. A submitter that
//! still holds its inputs asks this when its jobs stop finishing, to tell jobs that are
//! merely slow from jobs Redis lost (a restart without persistence, the last second of
//! an `everysec` AOF, a failover to a replica that lacked the last writes), which it
//! then enqueues again under the same id.
//!
//! The scan reads each place in pages (`locate_stream.lua`, `locate_delayed.lua`) and
//! brings back only the first bytes of each envelope, the job id, so looking through a
//! deep queue costs the server a few milliseconds per ten thousand entries and the wire
//! a few dozen bytes per entry, whatever the inputs weigh.

use std::collections::{HashMap, HashSet};

use redis::Value;

use super::error::{StoreError, unavailable};
use super::reply::bytes_of;
use super::scripts::SCRIPTS;
use super::{GROUP, RedisQueue};
use crate::job::JobId;
use crate::queue::QueueError;

/// Finding lost jobs and recreating what Redis lost (from [`RedisQueue::recovery`]).
#[derive(Clone, Copy)]
pub struct Recovery<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why looking for jobs (or recreating the group) failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A key searched holds another type of value (corrupted, or written by another
    /// application).
    #[error(
        "key {key} holds a {found}, not a {expected} (corrupted, or written by another application)"
    )]
    WrongType {
        /// The key at fault.
        key: String,
        /// What it holds.
        found: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RecoveryError> for QueueError {
    fn from(e: RecoveryError) -> Self {
        match e {
            RecoveryError::Store(e) => e.into(),
            other => QueueError::Protocol(other.to_string()),
        }
    }
}

/// Leading bytes of an envelope that hold the job id: the format version, postcard's
/// length prefix of the UUID's bytes (one byte: 16), and the 16 bytes. The id is the
/// first field of [`crate::Job`]; `the_id_prefix_decodes` below keeps that true.
const ID_PREFIX: usize = 18;

/// Entries (or members) looked at per script call: each call blocks the server only
/// briefly, however deep the queue.
const PAGE: usize = 2_000;

/// The job id at the start of an envelope, if it has one.
fn job_id_of(prefix: &[u8]) -> Option<JobId> {
    let (&version, body) = prefix.split_first()?;
    if !crate::codec::reads_version(version) {
        return None;
    }
    postcard::take_from_bytes::<JobId>(body)
        .ok()
        .map(|(id, _)| id)
}

/// Where each of a set of jobs was found. A job seen in two places (a duplicate
/// enqueue) is counted once, in the place furthest along.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Whereabouts {
    /// Waiting in the job stream (or its tenant's backlog), not claimed.
    pub queued: usize,
    /// Claimed by a worker (pending in the consumer group).
    pub running: usize,
    /// Waiting in the delayed set for a retry or a due time.
    pub delayed: usize,
    /// With a stored result (the submitter has not read it yet).
    pub finished: Vec<JobId>,
    /// Nowhere: Redis lost them (or something deleted them).
    pub vanished: Vec<JobId>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Delayed,
    Queued,
    Running,
}

fn wrong_type(key: &str, kind: &str, expected: &'static str) -> RecoveryError {
    RecoveryError::WrongType {
        key: key.to_owned(),
        found: kind.to_owned(),
        expected,
    }
}

fn text(v: &Value) -> String {
    bytes_of(v)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Recovery<'_> {
    /// Finds where each job of `ids` is. `tenant`'s backlog is searched too (jobs
    /// submitted through the service wait there before admission).
    ///
    /// The places are read one after the other, in the order jobs move between them
    /// reversed (backlog, delayed set, job stream, delayed set again, results), so a
    /// job moving while the scan runs is seen where it arrives; a job reported as
    /// vanished that was in fact moving is only enqueued twice, which results stored
    /// once (SET NX) make harmless.
    pub async fn locate(
        self,
        ids: &HashSet<JobId>,
        tenant: Option<&str>,
    ) -> Result<Whereabouts, RecoveryError> {
        let mut seen: HashMap<JobId, Place> = HashMap::new();
        let mut note = |id: JobId, place: Place| {
            if ids.contains(&id) {
                let at = seen.entry(id).or_insert(place);
                *at = (*at).max(place);
            }
        };
        if let Some(tenant) = tenant {
            let backlog = self.q.keys.backlog(tenant);
            self.scan_stream(&backlog, "", &mut note).await?;
        }
        self.scan_delayed(&mut note).await?;
        let jobs = self.q.keys.jobs.clone();
        self.scan_stream(&jobs, GROUP, &mut note).await?;
        self.scan_delayed(&mut note).await?;

        let mut whereabouts = Whereabouts::default();
        for place in seen.values() {
            match place {
                Place::Queued => whereabouts.queued += 1,
                Place::Running => whereabouts.running += 1,
                Place::Delayed => whereabouts.delayed += 1,
            }
        }
        let unseen: Vec<JobId> = ids
            .iter()
            .filter(|id| !seen.contains_key(id))
            .copied()
            .collect();
        for chunk in unseen.chunks(1_000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("EXISTS").arg(self.q.keys.result_key(*id));
            }
            let exists: Vec<i64> = pipe
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            for (id, exists) in chunk.iter().zip(exists) {
                if exists == 1 {
                    whereabouts.finished.push(*id);
                } else {
                    whereabouts.vanished.push(*id);
                }
            }
        }
        whereabouts.vanished.sort();
        Ok(whereabouts)
    }

    async fn scan_stream(
        self,
        stream: &str,
        group: &str,
        note: &mut impl FnMut(JobId, Place),
    ) -> Result<(), RecoveryError> {
        let mut start = "-".to_owned();
        loop {
            let reply: Vec<Value> = SCRIPTS
                .locate_stream
                .key(stream)
                .arg(group)
                .arg(&start)
                .arg(PAGE)
                .arg(ID_PREFIX)
                .invoke_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            let status = reply.first().map(text).unwrap_or_default();
            if status == "wrongtype" {
                let kind = reply.get(1).map(text).unwrap_or_default();
                return Err(wrong_type(stream, &kind, "stream"));
            }
            let last = reply.get(1).map(text).unwrap_or_default();
            for pair in reply.get(2..).unwrap_or_default().chunks(2) {
                if let [prefix, pending] = pair
                    && let Some(id) = bytes_of(prefix).as_deref().and_then(job_id_of)
                {
                    let running = matches!(pending, Value::Int(1));
                    note(
                        id,
                        if running {
                            Place::Running
                        } else {
                            Place::Queued
                        },
                    );
                }
            }
            if last.is_empty() {
                return Ok(());
            }
            start = format!("({last}");
        }
    }

    async fn scan_delayed(self, note: &mut impl FnMut(JobId, Place)) -> Result<(), RecoveryError> {
        let mut start = 0usize;
        loop {
            let reply: Vec<Value> = SCRIPTS
                .locate_delayed
                .key(&self.q.keys.delayed)
                .arg(start)
                .arg(PAGE)
                .arg(ID_PREFIX)
                .invoke_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            let status = reply.first().map(text).unwrap_or_default();
            if status == "wrongtype" {
                let kind = reply.get(1).map(text).unwrap_or_default();
                return Err(wrong_type(&self.q.keys.delayed, &kind, "sorted set"));
            }
            for prefix in reply.get(2..).unwrap_or_default() {
                if let Some(id) = bytes_of(prefix).as_deref().and_then(job_id_of) {
                    note(id, Place::Delayed);
                }
            }
            if !matches!(reply.get(1), Some(Value::Int(1))) {
                return Ok(());
            }
            start += PAGE;
        }
    }

    /// Makes sure the job stream and its consumer group exist, as `connect` does: for
    /// long-lived clients (a submitter enqueueing again, a readiness probe) after Redis
    /// lost its data. Idempotent.
    pub async fn recreate_group(self) -> Result<(), RecoveryError> {
        Ok(self.q.ensure_group().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::job::{Job, JobInput, ModuleHash};

    #[test]
    fn the_id_prefix_decodes() {
        let mut job = Job::new(ModuleHash::of(b"m"), JobInput::Inline(vec![7; 1000]));
        job.label = "x".repeat(300);
        let bytes = codec::encode(&job);
        assert_eq!(job_id_of(&bytes[..ID_PREFIX]), Some(job.id));
        assert_eq!(job_id_of(&bytes[..ID_PREFIX - 1]), None);
        assert_eq!(job_id_of(b""), None);
        let mut foreign = bytes.clone();
        foreign[0] = codec::FORMAT_VERSION + 1;
        assert_eq!(job_id_of(&foreign[..ID_PREFIX]), None);
        // A version-2 envelope (still decoded) has the same head.
        let mut older = bytes.clone();
        older[0] = codec::OLDEST_FORMAT_VERSION;
        assert_eq!(job_id_of(&older[..ID_PREFIX]), Some(job.id));
    }
}
