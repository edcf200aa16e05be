//! Admission: the Redis side of the dispatcher in `sluice serve` (see `docs/admission.md`).
//!
//! Jobs submitted through the service wait in their tenant's backlog stream
//! (`sluice:{q}:backlog:<tenant>`, listed in the set `sluice:{q}:backlogs`) until the
//! dispatcher admits them onto the shared job stream (`dispatch.lua`). Every admitted
//! job that has not settled is listed in the hash `sluice:{q}:admitted` (job id →
//! tenant), written in the same script that admits it: that hash, not the dispatcher's
//! memory, is what a tenant's concurrency is counted from, so a dispatcher that takes
//! over after a restart or failover counts what its predecessor admitted. A retried
//! API job leaves the hash when `promote.lua` puts it back in its tenant's backlog;
//! the dispatcher removes settled jobs (a result, cancelled, or no record any more).
//!
//! One process holds the dispatcher role at a time: `sluice:{q}:dispatcher` holds its
//! name with a TTL (`hold.lua`), and `dispatch.lua` admits only for the holder.
//!
//! The per-tenant quotas that need Redis live here too: stored bytes (inputs the API
//! accepts, outputs and results workers store) over a rolling window in
//! `sluice:{q}:usage:<tenant>` (hash: time bucket → bytes reserved in it; see
//! `scripts/quota_stored.lua`), and backlog length (checked in `enqueue_owned.lua`).

use std::collections::HashMap;
use std::time::Duration;

use redis::{RedisError, Value};

use super::error::{StoreError, bad_reply, unavailable};
use super::keys::TENANT_POLICIES;
use super::reply::{excerpt, into_entries, millis, text};
use super::scripts::SCRIPTS;
use super::tenants::TenantError;
use super::{ENVELOPE_FIELD, GROUP, RedisQueue};
use crate::codec;
use crate::job::{Job, JobId};
use crate::queue::QueueError;
use crate::tenant::TenantPolicy;

/// Admission of a queue: backlogs, the dispatcher role, dispatch and quotas (from
/// [`RedisQueue::admission`]).
#[derive(Clone, Copy)]
pub struct Admission<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Most stream entries a takeover scans for admitted jobs missing from the admitted
/// hash (jobs admitted by an older build, or a hash that had to be rebuilt).
const TAKEOVER_SCAN_LIMIT: usize = 20_000;
/// Entries read per page of that scan (envelopes may be up to the inline limit each).
const TAKEOVER_SCAN_PAGE: usize = 200;

/// Why an admission step failed. Each names the key at fault, so an operator can find
/// corrupt or foreign contents; none carries Redis's own error text to HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// A key holds the wrong type of value (corruption, or another application's key).
    #[error("key {key} holds a {found}, not a {expected}")]
    WrongType {
        /// The key at fault.
        key: String,
        /// What it holds.
        found: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A tenant's stored policy does not parse.
    #[error("policy of tenant {tenant:?} (field of {TENANT_POLICIES}) is invalid: {reason}")]
    BadPolicy {
        /// The tenant (an excerpt of its name).
        tenant: String,
        /// Why the policy does not parse.
        reason: String,
    },
    /// Another process holds the dispatcher role now; nothing was admitted.
    #[error("this process no longer holds the dispatcher role")]
    NotHolder,
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AdmissionError> for QueueError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Store(e) => e.into(),
            other => QueueError::Protocol(other.to_string()),
        }
    }
}

/// What [`Admission::hold_dispatcher`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The caller holds the role (taken or renewed).
    Held,
    /// Another process holds it, with a proper expiry.
    Other {
        /// Who holds it (an excerpt).
        holder: String,
    },
    /// The role's key was not a live hold (no expiry, an expiry longer than a hold, or
    /// not a string): it was given one hold's expiry, so the role is free again within
    /// one hold unless a live holder renews it. `found` says what was there.
    Repaired {
        /// What the key held (an excerpt).
        found: String,
    },
}

/// The job id at the head of an envelope, without decoding the rest: the format
/// version byte, then postcard's encoding of the UUID (its length, 16, then its bytes).
/// `promote.lua` reads the same head.
pub fn envelope_job_id(envelope: &[u8]) -> Option<JobId> {
    match envelope {
        [version, 16, id @ ..] if codec::reads_version(*version) && id.len() >= 16 => {
            uuid::Uuid::from_slice(&id[..16]).ok().map(JobId)
        }
        _ => None,
    }
}

fn wrong_type<'a>(
    key: &'a str,
    expected: &'static str,
) -> impl Fn(RedisError) -> AdmissionError + 'a {
    move |e| {
        if e.code() == Some("WRONGTYPE") {
            AdmissionError::WrongType {
                key: key.to_owned(),
                found: "value of another type".to_owned(),
                expected,
            }
        } else {
            AdmissionError::Store(unavailable(e))
        }
    }
}

/// What [`Admission::enqueue_owned_within`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Every job is in the tenant's backlog.
    Yes,
    /// The backlog holds `waiting` jobs, and the request's would pass the quota:
    /// nothing was enqueued.
    BacklogFull {
        /// Jobs waiting in the backlog now.
        waiting: u64,
    },
}

/// Buckets per blob lifetime in the stored-bytes window: bytes are counted for between
/// one and `1 + 1/BUCKETS` blob lifetimes, never less than the blobs can live.
const BUCKETS: u64 = 24;

/// The index of a time bucket of the stored-bytes window (Redis's clock, in bucket
/// lengths since the epoch), as a reservation counted its bytes in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoredBucket(pub u64);

/// What a stored-bytes reservation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved; the tenant now has this many bytes counted.
    Granted {
        /// Bytes counted for the tenant, these included.
        used: u64,
        /// The time bucket these bytes are counted in: bytes not used after all can be
        /// given back to it with [`Admission::release_stored`].
        bucket: StoredBucket,
    },
    /// Over the quota: `used` bytes are counted; the oldest leave the window in
    /// `retry_after`.
    Refused {
        /// Bytes counted for the tenant.
        used: u64,
        /// When the oldest counted bytes leave the window.
        retry_after: Duration,
    },
}

impl Admission<'_> {
    /// Takes the dispatcher role for `hold` if no one holds it, or renews it for
    /// `holder`; repairs a role key that would never expire (see [`Hold::Repaired`]).
    pub async fn hold_dispatcher(
        self,
        holder: &str,
        hold: Duration,
    ) -> Result<Hold, AdmissionError> {
        let reply: Vec<Value> = SCRIPTS
            .hold
            .key(self.q.keys.dispatcher())
            .arg(holder)
            .arg(millis(hold))
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let code = match reply.first() {
            Some(Value::Int(code)) => *code,
            other => return Err(bad_reply(format!("hold.lua answered {other:?}")).into()),
        };
        let said = reply
            .get(1)
            .and_then(text)
            .map(|s| excerpt(&s))
            .unwrap_or_default();
        Ok(match code {
            1 => Hold::Held,
            0 => Hold::Other { holder: said },
            _ => Hold::Repaired { found: said },
        })
    }

    /// Gives up the dispatcher role if `holder` has it, so a standby takes over at once;
    /// whether it had it.
    pub async fn release_dispatcher(self, holder: &str) -> Result<bool, AdmissionError> {
        let released: i64 = SCRIPTS
            .unhold
            .key(self.q.keys.dispatcher())
            .arg(holder)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(released == 1)
    }

    /// Tenants with jobs waiting in their backlogs (in no particular order).
    pub async fn backlogged_tenants(self) -> Result<Vec<String>, AdmissionError> {
        let key = self.q.keys.backlogs();
        redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(wrong_type(&key, "set"))
    }

    /// A tenant's policy for admission: the default when the tenant has none stored.
    pub async fn admission_policy(self, tenant: &str) -> Result<TenantPolicy, AdmissionError> {
        match self.q.tenants().policy(tenant).await {
            Ok(policy) => Ok(policy.unwrap_or_default()),
            Err(TenantError::Store(StoreError::Unavailable(reason)))
                if reason.contains("WRONGTYPE") =>
            {
                Err(AdmissionError::WrongType {
                    key: TENANT_POLICIES.to_owned(),
                    found: "value of another type".to_owned(),
                    expected: "hash",
                })
            }
            Err(TenantError::Store(e @ StoreError::Unavailable(_))) => Err(e.into()),
            Err(TenantError::BadPolicy { reason, .. }) => Err(AdmissionError::BadPolicy {
                tenant: excerpt(tenant),
                reason: excerpt(&reason),
            }),
            Err(other) => Err(AdmissionError::BadPolicy {
                tenant: excerpt(tenant),
                reason: excerpt(&other.to_string()),
            }),
        }
    }

    /// Admits up to `max` of `tenant`'s oldest backlog jobs onto the job stream, if
    /// `holder` holds the dispatcher role; returns their ids.
    pub async fn dispatch(
        self,
        holder: &str,
        tenant: &str,
        max: usize,
    ) -> Result<Vec<JobId>, AdmissionError> {
        let reply: Vec<Value> = SCRIPTS
            .dispatch
            .key(&self.q.keys.jobs)
            .key(self.q.keys.backlog(tenant))
            .key(self.q.keys.backlogs())
            .key(self.q.keys.admitted())
            .key(self.q.keys.dispatcher())
            .arg(tenant)
            .arg(self.q.keys.job_record_prefix())
            .arg(max)
            .arg(holder)
            .arg(millis(self.q.config.result_ttl))
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let mut reply = reply.iter().filter_map(text);
        match reply.next().as_deref() {
            Some("ok") => Ok(reply.filter_map(|id| id.parse().ok()).collect()),
            Some("notholder") => Err(AdmissionError::NotHolder),
            Some("corrupt") => {
                let key = reply.next().unwrap_or_default();
                let found = reply.next().unwrap_or_default();
                let expected = if key == self.q.keys.admitted() {
                    "hash"
                } else {
                    "stream"
                };
                Err(AdmissionError::WrongType {
                    key: excerpt(&key),
                    found,
                    expected,
                })
            }
            other => Err(bad_reply(format!("dispatch.lua answered {other:?}")).into()),
        }
    }

    /// For each job, whether it is settled: finished (a result is stored), cancelled, or
    /// its record is gone (expired, or not a record any more).
    pub async fn settled(self, ids: &[JobId]) -> Result<Vec<bool>, AdmissionError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Types first: a command on a wrong-typed key would fail the whole pipeline.
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EXISTS").arg(self.q.keys.result_key(*id));
            pipe.cmd("TYPE").arg(self.q.keys.job_record(*id));
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let mut settled = Vec::with_capacity(ids.len());
        let mut ask = Vec::new();
        for (i, pair) in replies.chunks(2).enumerate() {
            let has_result = matches!(pair.first(), Some(Value::Int(1)));
            let record = pair.get(1).and_then(text).unwrap_or_default();
            settled.push(has_result || record != "hash");
            if !settled[i] {
                ask.push(i);
            }
        }
        if ask.is_empty() {
            return Ok(settled);
        }
        let mut pipe = redis::pipe();
        for &i in &ask {
            pipe.cmd("HGET")
                .arg(self.q.keys.job_record(ids[i]))
                .arg("state");
        }
        let states: Vec<Option<String>> = pipe
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        for (i, state) in ask.into_iter().zip(states) {
            settled[i] = state.as_deref() == Some("cancelled");
        }
        Ok(settled)
    }

    /// Jobs on the shared stream that no worker has claimed yet. Reads only the stream
    /// and its group (never the stats hash, whose contents do not matter here).
    pub async fn ready_depth(self) -> Result<u64, AdmissionError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(&self.q.keys.jobs);
        pipe.cmd("XPENDING").arg(&self.q.keys.jobs).arg(GROUP);
        let reply: Result<(u64, Value), RedisError> =
            pipe.query_async(&mut self.q.connection()).await;
        let (len, pending) = match reply {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost the group (a restart without persistence): recreate it, as
                // workers do, so admission does not wait for one of them.
                self.q.ensure_group().await?;
                return Ok(0);
            }
            Err(e) => return Err(wrong_type(&self.q.keys.jobs, "stream")(e)),
        };
        let leased = match pending {
            Value::Array(parts) => match parts.first() {
                Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        };
        Ok(len.saturating_sub(leased))
    }

    /// The admitted jobs that have not settled (as far as this hash knows), with their
    /// tenants. Fields that are not job ids are dropped from the hash.
    pub async fn admitted(self) -> Result<HashMap<JobId, String>, AdmissionError> {
        let key = self.q.keys.admitted();
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(wrong_type(&key, "hash"))?;
        let mut out = HashMap::with_capacity(all.len());
        let mut garbage = Vec::new();
        for (id, tenant) in all {
            match id.parse() {
                Ok(id) => {
                    out.insert(id, tenant);
                }
                Err(_) => garbage.push(id),
            }
        }
        if !garbage.is_empty() {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&garbage)
                .query_async::<()>(&mut self.q.connection())
                .await
                .map_err(wrong_type(&key, "hash"))?;
        }
        Ok(out)
    }

    /// Removes settled jobs from the admitted hash.
    pub async fn forget_admitted(self, ids: &[JobId]) -> Result<(), AdmissionError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.q.keys.admitted();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        redis::cmd("HDEL")
            .arg(&key)
            .arg(ids)
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(wrong_type(&key, "hash"))
    }

    /// Deletes a wrong-typed admitted hash so it can be rebuilt (it is the dispatcher's
    /// own index, rebuilt from the job stream and records by [`Self::admitted_on_stream`]).
    /// Does nothing if the key is a hash.
    pub async fn reset_corrupt_admitted(self) -> Result<bool, AdmissionError> {
        let key = self.q.keys.admitted();
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        if kind == "hash" || kind == "none" {
            return Ok(false);
        }
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(true)
    }

    /// API jobs on the shared stream (unclaimed or running) that the admitted hash
    /// does not list, found from the stream's envelopes and the jobs' records, and added
    /// to the hash; for a dispatcher taking over. Scans at most the stream's first
    /// 20,000 entries.
    pub async fn admitted_on_stream(
        self,
        known: &HashMap<JobId, String>,
    ) -> Result<Vec<(JobId, String)>, AdmissionError> {
        let mut found = Vec::new();
        let mut start = "-".to_owned();
        let mut scanned = 0;
        while scanned < TAKEOVER_SCAN_LIMIT {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&self.q.keys.jobs)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(TAKEOVER_SCAN_PAGE)
                .query_async(&mut self.q.connection())
                .await
                .map_err(wrong_type(&self.q.keys.jobs, "stream"))?;
            let entries = into_entries(reply)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            start = format!("({last}");
            scanned += entries.len();
            let page = entries.len();
            let ids: Vec<JobId> = entries
                .iter()
                .filter_map(|(_, fields)| {
                    fields
                        .iter()
                        .find(|(k, _)| k == ENVELOPE_FIELD)
                        .and_then(|(_, v)| envelope_job_id(v))
                })
                .filter(|id| !known.contains_key(id))
                .collect();
            found.extend(self.stream_owners(&ids).await?);
            if page < TAKEOVER_SCAN_PAGE {
                break;
            }
        }
        if !found.is_empty() {
            let key = self.q.keys.admitted();
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key);
            for (id, tenant) in &found {
                cmd.arg(id.to_string()).arg(tenant);
            }
            cmd.query_async::<()>(&mut self.q.connection())
                .await
                .map_err(wrong_type(&key, "hash"))?;
        }
        Ok(found)
    }

    /// Of `ids`, those whose record says they are on the shared stream, with tenants.
    async fn stream_owners(self, ids: &[JobId]) -> Result<Vec<(JobId, String)>, AdmissionError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("TYPE").arg(self.q.keys.job_record(*id));
        }
        let kinds: Vec<String> = pipe
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let records: Vec<JobId> = ids
            .iter()
            .zip(kinds)
            .filter(|(_, kind)| kind == "hash")
            .map(|(id, _)| *id)
            .collect();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &records {
            pipe.cmd("HMGET")
                .arg(self.q.keys.job_record(*id))
                .arg("tenant")
                .arg("stream")
                .arg("state");
        }
        let fields: Vec<(Option<String>, Option<String>, Option<String>)> = pipe
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(records
            .into_iter()
            .zip(fields)
            .filter_map(|(id, (tenant, stream, state))| {
                let tenant = tenant.filter(|t| !t.is_empty())?;
                (stream.as_deref() == Some(self.q.keys.jobs.as_str())
                    && state.as_deref() != Some("cancelled"))
                .then_some((id, tenant))
            })
            .collect())
    }

    /// Enqueues `jobs` owned by `tenant` (optionally as batch `batch`) into the
    /// tenant's backlog, to be admitted fairly by the dispatcher, with each job's record
    /// (owner, entry, batch) written in the same script (`enqueue_owned.lua`).
    pub async fn enqueue_owned(
        self,
        jobs: &[Job],
        tenant: &str,
        batch: Option<&str>,
    ) -> Result<(), AdmissionError> {
        self.enqueue_owned_within(jobs, tenant, batch, None)
            .await
            .map(|_| ())
    }

    /// [`Self::enqueue_owned`], refused as a whole ([`Enqueued::BacklogFull`], nothing
    /// written) when the tenant's backlog would hold more than `max_backlog` jobs. The
    /// script checks the length and enqueues in one step, so concurrent requests
    /// cannot together pass the quota (a request of more than one chunk is checked
    /// whole with its first chunk).
    pub async fn enqueue_owned_within(
        self,
        jobs: &[Job],
        tenant: &str,
        batch: Option<&str>,
        max_backlog: Option<u64>,
    ) -> Result<Enqueued, AdmissionError> {
        let ttl = millis(self.q.config.result_ttl);
        let backlog = self.q.keys.backlog(tenant);
        let batch_key = batch.map(|b| self.q.keys.batch(b));
        // Chunks bound one script's argument list (envelopes travel inline).
        for (index, chunk) in jobs.chunks(200).enumerate() {
            let limit = max_backlog
                .filter(|_| index == 0)
                .map(|max| max.to_string())
                .unwrap_or_default();
            let mut invocation = SCRIPTS.enqueue_owned.prepare_invoke();
            invocation
                .key(&backlog)
                .key(self.q.keys.backlogs())
                .key(batch_key.as_deref().unwrap_or(&backlog))
                .key(batch.map_or_else(|| backlog.clone(), |b| self.q.keys.batch_jobs(b)))
                .key(self.q.keys.owned())
                .key(self.q.keys.tenant_jobs_index(tenant))
                .key(self.q.keys.tenant_batches_index(tenant))
                .arg(tenant)
                .arg(batch.unwrap_or(""))
                .arg(ttl)
                .arg(jobs.len())
                .arg(limit);
            for job in chunk {
                invocation
                    .key(self.q.keys.job_record(job.id))
                    .arg(codec::encode(job))
                    .arg(job.id.to_string())
                    .arg(serde_json::to_string(&job.limits).unwrap_or_default());
            }
            let reply = invocation
                .invoke_async::<Vec<String>>(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            if reply.first().is_some_and(|r| r == "full") {
                let waiting = reply.get(1).and_then(|w| w.parse().ok()).unwrap_or(0);
                return Ok(Enqueued::BacklogFull { waiting });
            }
        }
        Ok(Enqueued::Yes)
    }

    /// The length of one time bucket of the stored-bytes window: bytes reserved now
    /// count until this bucket leaves the window, so a reservation held unused for
    /// less than this counts its later use at most one bucket early.
    pub fn stored_bucket(self) -> Duration {
        Duration::from_millis((millis(self.q.config.blob_ttl) / BUCKETS).max(1))
    }

    /// Counts `bytes` more stored for `tenant` (a request's input, arguments and
    /// environment, or a run's output and result) against `max` stored bytes (0 bytes
    /// only reads; `u64::MAX` counts without refusing). Bytes stay counted for one blob
    /// lifetime (`blob_ttl`), the longest an input, output or result occupies Redis.
    pub async fn reserve_stored(
        self,
        tenant: &str,
        bytes: u64,
        max: u64,
    ) -> Result<Reservation, AdmissionError> {
        let bucket = (millis(self.q.config.blob_ttl) / BUCKETS).max(1);
        let reply: Vec<u64> = SCRIPTS
            .quota_stored
            .key(self.q.keys.usage(tenant))
            .arg(bytes)
            .arg(max)
            .arg(bucket)
            .arg(BUCKETS + 1)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [1, used, bucket] => Ok(Reservation::Granted {
                used: *used,
                bucket: StoredBucket(*bucket),
            }),
            [0, used, retry_ms] => Ok(Reservation::Refused {
                used: *used,
                retry_after: Duration::from_millis(*retry_ms),
            }),
            other => Err(bad_reply(format!("quota_stored.lua answered {other:?}")).into()),
        }
    }

    /// Gives back `bytes` counted for `tenant` by a reservation that answered `bucket`
    /// and not used (a worker's credit it drops): the bucket loses up to `bytes`, never
    /// going below 0, and nothing happens once it has left the window. Returns the bytes
    /// given back.
    pub async fn release_stored(
        self,
        tenant: &str,
        bytes: u64,
        bucket: StoredBucket,
    ) -> Result<u64, AdmissionError> {
        let len = (millis(self.q.config.blob_ttl) / BUCKETS).max(1);
        let key = self.q.keys.usage(tenant);
        SCRIPTS
            .quota_release
            .key(&key)
            .arg(bytes)
            .arg(bucket.0)
            .arg(len)
            .arg(BUCKETS + 1)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(|e| {
                if e.to_string().contains("not a hash") {
                    AdmissionError::WrongType {
                        key: excerpt(&key),
                        found: "value of another type".to_owned(),
                        expected: "hash",
                    }
                } else {
                    AdmissionError::Store(unavailable(e))
                }
            })
    }

    /// Jobs waiting in `tenant`'s backlog: one `XLEN` (a missing key is 0; a key of
    /// another type fails with `WRONGTYPE`, answered as [`AdmissionError::WrongType`],
    /// so no `TYPE` round trip goes first).
    pub async fn backlog_len(self, tenant: &str) -> Result<u64, AdmissionError> {
        let key = self.q.keys.backlog(tenant);
        redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(wrong_type(&key, "stream"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::job::{Job, JobInput, ModuleHash};

    #[test]
    fn the_job_id_is_read_from_the_envelope_head_as_promote_lua_reads_it() {
        let job = Job::new(ModuleHash::of(b"m"), JobInput::Inline(vec![1, 2, 3]));
        let envelope = codec::encode(&job);
        // promote.lua relies on exactly this layout (a job without a program name is
        // written as version 2).
        assert_eq!(envelope[0], codec::OLDEST_FORMAT_VERSION);
        assert_eq!(envelope[1], 16);
        // A version-3 envelope has the same head.
        let mut newer = envelope.clone();
        newer[0] = codec::FORMAT_VERSION;
        assert_eq!(envelope_job_id(&newer), Some(job.id));
        assert_eq!(&envelope[2..18], job.id.0.as_bytes());
        assert_eq!(envelope_job_id(&envelope), Some(job.id));
        assert_eq!(envelope_job_id(&envelope[..17]), None);
        assert_eq!(envelope_job_id(b""), None);
        let mut foreign = envelope.clone();
        foreign[0] = 9;
        assert_eq!(envelope_job_id(&foreign), None);
    }
}
