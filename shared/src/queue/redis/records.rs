//! Job and batch records: who owns a job (the tenant), where its entry is, and which
//! batch it belongs to. The HTTP API answers only a job's own tenant from these.
//!
//! Keys: `sluice:{q}:job:<id>` (hash: `tenant`, `stream`, `entry`, `batch`, `state`,
//! `limits`), `sluice:{q}:batch:<id>` (hash: `tenant`, `total`) and
//! `sluice:{q}:batch:<id>:jobs` (list of job ids); all expire with the result TTL.
//!
//! Jobs submitted through the service wait in their tenant's backlog stream
//! (`sluice:{q}:backlog:<tenant>`, listed in the set `sluice:{q}:backlogs`) until the
//! dispatcher admits them onto the shared job stream (`admission.rs`).

use std::collections::HashMap;

use super::{GROUP, RedisQueue, checked_script, millis, on_key, unavailable};
use crate::codec;
use crate::job::{Job, JobId};
use crate::queue::QueueError;

/// What the record of a job says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub tenant: String,
    /// The stream its entry is in: its tenant's backlog, or the shared job stream.
    pub stream: String,
    pub entry: String,
    pub batch: Option<String>,
    pub cancelled: bool,
    /// The limits the job was enqueued with (JSON).
    pub limits: String,
}

/// What [`RedisQueue::enqueue_owned_within`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Every job is in the tenant's backlog.
    Yes,
    /// The backlog holds `waiting` jobs, and the request's would pass the quota:
    /// nothing was enqueued.
    BacklogFull { waiting: u64 },
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

impl RedisQueue {
    pub(super) fn job_record_key(&self, id: JobId) -> String {
        format!("{}job:{id}", self.keys.prefix)
    }

    pub(super) fn batch_key(&self, id: &str) -> String {
        format!("{}batch:{id}", self.keys.prefix)
    }

    pub(super) fn backlog_key(&self, tenant: &str) -> String {
        format!("{}backlog:{tenant}", self.keys.prefix)
    }

    pub(super) fn backlogs_key(&self) -> String {
        format!("{}backlogs", self.keys.prefix)
    }

    /// Enqueues `jobs` owned by `tenant` (optionally as batch `batch`) into the
    /// tenant's backlog, to be admitted fairly by the dispatcher, with each job's record
    /// (owner, entry, batch) written in the same script (`enqueue_owned.lua`).
    pub async fn enqueue_owned(
        &self,
        jobs: &[Job],
        tenant: &str,
        batch: Option<&str>,
    ) -> Result<(), QueueError> {
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
        &self,
        jobs: &[Job],
        tenant: &str,
        batch: Option<&str>,
        max_backlog: Option<u64>,
    ) -> Result<Enqueued, QueueError> {
        let ttl = millis(self.config.result_ttl);
        let backlog = self.backlog_key(tenant);
        let batch_key = batch.map(|b| self.batch_key(b));
        let script = checked_script(include_str!("scripts/enqueue_owned.lua"));
        // Chunks bound one script's argument list (envelopes travel inline).
        for (index, chunk) in jobs.chunks(200).enumerate() {
            let limit = max_backlog
                .filter(|_| index == 0)
                .map(|max| max.to_string())
                .unwrap_or_default();
            let mut invocation = script.prepare_invoke();
            invocation
                .key(&backlog)
                .key(self.backlogs_key())
                .key(batch_key.as_deref().unwrap_or(&backlog))
                .key(
                    batch_key
                        .as_ref()
                        .map_or_else(|| backlog.clone(), |k| format!("{k}:jobs")),
                )
                .key(format!("{}owned", self.keys.prefix))
                .arg(tenant)
                .arg(batch.unwrap_or(""))
                .arg(ttl)
                .arg(jobs.len())
                .arg(limit);
            for job in chunk {
                invocation
                    .key(self.job_record_key(job.id))
                    .arg(codec::encode(job))
                    .arg(job.id.to_string())
                    .arg(serde_json::to_string(&job.limits).unwrap_or_default());
            }
            let reply = invocation
                .invoke_async::<Vec<String>>(&mut self.connection())
                .await
                .map_err(unavailable)?;
            if reply.first().is_some_and(|r| r == "full") {
                let waiting = reply.get(1).and_then(|w| w.parse().ok()).unwrap_or(0);
                return Ok(Enqueued::BacklogFull { waiting });
            }
        }
        Ok(Enqueued::Yes)
    }

    /// A job's record, if it exists.
    pub async fn job_record(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        let key = self.job_record_key(id);
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.connection())
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
    pub async fn is_running(&self, record: &JobRecord) -> Result<bool, QueueError> {
        if record.stream != self.keys.jobs {
            return Ok(false);
        }
        let entry = &record.entry;
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&self.keys.jobs)
            .arg(GROUP)
            .arg(entry)
            .arg(entry)
            .arg(1)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(matches!(pending, redis::Value::Array(rows) if !rows.is_empty()))
    }

    /// Cancels a job that no worker has claimed yet.
    pub async fn cancel(&self, id: JobId) -> Result<Cancelled, QueueError> {
        let script = checked_script(include_str!("scripts/cancel.lua"));
        let answer: String = script
            .key(&self.keys.jobs)
            .key(self.job_record_key(id))
            .arg(GROUP)
            .arg(&self.keys.prefix)
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(match answer.as_str() {
            "cancelled" => Cancelled::Yes,
            "running" => Cancelled::Running,
            _ => Cancelled::Gone,
        })
    }

    /// A batch's tenant and job ids, if it exists.
    pub async fn batch(&self, id: &str) -> Result<Option<(String, Vec<JobId>)>, QueueError> {
        let key = self.batch_key(id);
        let tenant: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("tenant")
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let Some(tenant) = tenant else {
            return Ok(None);
        };
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{key}:jobs"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(Some((
            tenant,
            ids.iter().filter_map(|i| i.parse().ok()).collect(),
        )))
    }
}
