//! Dead letters and status: what an operator reads and repairs (`sluice dlq`, `sluice
//! status`, `sluice module ls`, the service's readiness probe), where one job is
//! (`sluice result`, `sluice wait`: [`find`]), and the server figures the benchmark
//! reads.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};

use super::error::{StoreError, bad_reply, on_key, unavailable};
use super::reply::{bytes_of, count_of, flat_pairs, into_entries, millis};
use super::results::ResultsError;
use super::scripts::SCRIPTS;
use super::{GROUP, RedisQueue};
use crate::job::JobId;
use crate::queue::{QueueError, QueueStats};

mod find;
mod gauges;
mod listing;
mod reader;
mod workers;

pub use find::JobState;
pub use gauges::{
    MAX_ADMITTED_READ, MAX_GAUGE_TENANTS, QueueCounters, QueueGauges, TenantLoad, entry_id_ms,
    parse_info_memory,
};
pub use listing::{MAX_LISTED_MODULES, StoredModule};
pub use reader::{GaugeReader, gauge_client};

/// Dead letters looked at by one `dlq_retry.lua` call.
const DLQ_PAGE: usize = 500;

/// Dead letters, status and server figures of a queue (from [`RedisQueue::admin`]).
#[derive(Clone, Copy)]
pub struct Admin<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why an operator's read or repair failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The dead letter asked for stays: its job has a stored success, or one of its
    /// keys is corrupt (each reason given).
    #[error("dead letter not retried: {0}")]
    NotRetried(String),
    /// No dead letter has this entry id (or is of this job).
    #[error("no dead letter {0} (see `sluice dlq list`)")]
    NoSuchDeadLetter(String),
    /// What was given is neither a dead letter's entry id (`<ms>-<seq>`) nor a job id.
    #[error("{0:?} is not a dead letter id (`<ms>-<seq>`, from `sluice dlq list`) nor a job id")]
    BadDeadLetterId(String),
    /// A job's record could not be read.
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AdminError> for QueueError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Store(e) => e.into(),
            other => QueueError::Protocol(other.to_string()),
        }
    }
}

/// Counters and sizes of a queue, for `sluice status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RedisStatus {
    /// Entry counts.
    pub stats: QueueStats,
    /// Jobs retried (counter).
    pub retried: u64,
    /// Duplicate completions ignored (counter).
    pub duplicates: u64,
    /// Completions refused because the job had moved on (retried, dead-lettered,
    /// released or cancelled) before a stale holder finished it.
    pub stale: u64,
    /// Dead letters put back on the queue (counter).
    pub dlq_retried: u64,
    /// Jobs that ended in failure: dead-letterings (counter; a dead letter retried
    /// and dead again counts again).
    #[serde(default)]
    pub failed: u64,
    /// Jobs moved to the dead letters by outcome kind (counters; every kind, in
    /// [`OutcomeKind::ALL`](crate::outcome::OutcomeKind::ALL) order).
    #[serde(default)]
    pub dead_by_reason: Vec<(crate::outcome::OutcomeKind, u64)>,
    /// Consumers of the group with their pending (leased) counts and idle times.
    pub consumers: Vec<ConsumerInfo>,
    /// Tenants with jobs waiting in their backlogs for admission (jobs submitted over
    /// HTTP), with how many wait.
    pub backlogs: Vec<TenantBacklog>,
    /// Workers that registered a heartbeat ([`Admin::heartbeat`]): name and the
    /// server time (ms) after which it counts as gone unless it beats again.
    pub heartbeats: Vec<(String, u64)>,
    /// The server's clock when this was read (ms since the Unix epoch).
    pub server_time_ms: u64,
}

/// Jobs waiting in one tenant's backlog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantBacklog {
    /// The tenant.
    pub tenant: String,
    /// Jobs waiting in its backlog.
    pub waiting: u64,
}

/// One consumer of the queue's group.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConsumerInfo {
    /// The consumer's name.
    pub name: String,
    /// Entries it holds (leased).
    pub pending: u64,
    /// Milliseconds since it last claimed (or tried to).
    pub idle_ms: u64,
}

/// Whether `id` is a stream entry id (`<ms>` or `<ms>-<seq>`, each a u64), as dead
/// letters have.
fn is_entry_id(id: &str) -> bool {
    let number = |p: &str| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok();
    match id.split_once('-') {
        Some((ms, seq)) => number(ms) && number(seq),
        None => number(id),
    }
}

impl Admin<'_> {
    /// Puts dead letters back on the queue: one (`Some(id)`) or all.
    /// Only failed jobs go back: a letter whose job has a stored success, or one of
    /// whose keys is corrupt, stays (logged; an error when it was the one asked for).
    /// An id that is not an entry id, or names no dead letter, is an error saying so.
    pub async fn dlq_retry(self, id: Option<&str>) -> Result<u64, AdminError> {
        if let Some(id) = id
            && !is_entry_id(id)
        {
            return Err(AdminError::BadDeadLetterId(id.to_owned()));
        }
        // All of them: page by page (`DLQ_PAGE` letters a script), up to the newest
        // letter at the start, so no one script blocks Redis over days of letters.
        let (mut start, stop) = match id {
            Some(id) => (id.to_owned(), id.to_owned()),
            None => {
                let newest: Value = redis::cmd("XREVRANGE")
                    .arg(&self.q.keys.dead)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.q.connection())
                    .await
                    .map_err(on_key(&self.q.keys.dead))?;
                match into_entries(newest)?.into_iter().next() {
                    Some((newest, _)) => ("-".to_owned(), newest),
                    None => return Ok(0),
                }
            }
        };
        let (mut moved, mut problems) = (0u64, Vec::new());
        loop {
            let reply: Vec<Value> = SCRIPTS
                .dlq_retry
                .key(&self.q.keys.dead)
                .key(&self.q.keys.jobs)
                .key(&self.q.keys.stats)
                .arg(id.unwrap_or(""))
                .arg(self.q.keys.prefix())
                .arg(millis(self.q.config.result_ttl))
                .arg(&start)
                .arg(&stop)
                .arg(DLQ_PAGE)
                .invoke_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            match reply.first() {
                Some(Value::Int(n)) => moved += u64::try_from(*n).unwrap_or(0),
                _ => return Err(bad_reply("dlq_retry.lua reply has no count").into()),
            }
            let next = reply
                .get(1)
                .and_then(bytes_of)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            problems.extend(
                reply
                    .iter()
                    .skip(2)
                    .filter_map(bytes_of)
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
            );
            if id.is_some() || next.is_empty() {
                break;
            }
            start = format!("({next}");
        }
        if let Some(id) = id
            && moved == 0
        {
            return Err(if problems.is_empty() {
                AdminError::NoSuchDeadLetter(id.to_owned())
            } else {
                AdminError::NotRetried(problems.join("; "))
            });
        }
        for problem in &problems {
            tracing::warn!(%problem, "dead letter not retried");
        }
        Ok(moved)
    }

    /// Deletes every dead letter.
    pub async fn dlq_purge(self) -> Result<u64, AdminError> {
        let len: u64 = redis::cmd("XLEN")
            .arg(&self.q.keys.dead)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&self.q.keys.dead))?;
        redis::cmd("DEL")
            .arg(&self.q.keys.dead)
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(on_key(&self.q.keys.dead))?;
        Ok(len)
    }

    /// Counters, depths and consumers.
    pub async fn status(self) -> Result<RedisStatus, AdminError> {
        let stats = self.q.depths().await?;
        let counters: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.q.keys.stats)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&self.q.keys.stats))?;
        let counters = QueueCounters::from_fields(&counters);
        let consumers: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.q.keys.jobs)
            .arg(GROUP)
            .query_async(&mut self.q.connection())
            .await
            .unwrap_or(Value::Nil);
        let mut infos = Vec::new();
        if let Value::Array(items) = consumers {
            for item in items {
                let fields = flat_pairs(&item);
                let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
                infos.push(ConsumerInfo {
                    name: text("name"),
                    pending: text("pending").parse().unwrap_or(0),
                    idle_ms: text("idle").parse().unwrap_or(0),
                });
            }
        }
        Ok(RedisStatus {
            stats,
            retried: counters.retried,
            duplicates: counters.duplicates,
            stale: counters.stale,
            dlq_retried: counters.dlq_retried,
            failed: counters.failed,
            dead_by_reason: counters.dead_by_reason,
            consumers: infos,
            backlogs: self.backlogs().await?,
            heartbeats: self.heartbeats().await?,
            server_time_ms: self.q.server_time_ms().await?,
        })
    }

    /// Tenants with jobs in their backlogs and how many, largest first.
    pub async fn backlogs(self) -> Result<Vec<TenantBacklog>, AdminError> {
        let set = self.q.keys.backlogs();
        let tenants: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&set))?;
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for tenant in &tenants {
            pipe.cmd("XLEN").arg(self.q.keys.backlog(tenant));
        }
        // A backlog key of another type counts 0 here: status reports, it does not judge.
        let lens: Vec<Result<Value, redis::RedisError>> = pipe
            .ignore_errors()
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        let mut out: Vec<TenantBacklog> = tenants
            .into_iter()
            .zip(lens)
            .map(|(tenant, len)| TenantBacklog {
                tenant,
                waiting: len.as_ref().map_or(0, count_of),
            })
            .filter(|b| b.waiting > 0)
            .collect();
        out.sort_by(|a, b| b.waiting.cmp(&a.waiting).then(a.tenant.cmp(&b.tenant)));
        Ok(out)
    }

    /// The entry id of job `job`'s dead letter (the oldest, should there be several).
    pub async fn dead_letter_of(self, job: JobId) -> Result<Option<String>, AdminError> {
        let key = &self.q.keys.dead;
        let wanted = job.to_string();
        let mut start = "-".to_owned();
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(DLQ_PAGE)
                .query_async(&mut self.q.connection())
                .await
                .map_err(on_key(key))?;
            let entries = into_entries(reply)?;
            for (id, fields) in &entries {
                if fields
                    .iter()
                    .any(|(k, v)| k == b"job" && v == wanted.as_bytes())
                {
                    return Ok(Some(id.clone()));
                }
            }
            match entries.last() {
                Some((last, _)) if entries.len() >= DLQ_PAGE => start = format!("({last}"),
                _ => return Ok(None),
            }
        }
    }

    /// The queue's depths, recreating the job stream and its consumer group first if
    /// Redis lost them (a restart without persistence, a failover): a readiness probe
    /// that only reported `NOGROUP` would keep the service unready until some other
    /// client happened to recreate them.
    pub async fn stats_recreating_group(self) -> Result<QueueStats, AdminError> {
        match self.q.depths().await {
            Err(e) if e.is_nogroup() => {
                self.q.ensure_group().await?;
                Ok(self.q.depths().await?)
            }
            other => Ok(other?),
        }
    }

    /// Consumers of the queue's group that claimed (or tried to) within `within`: the
    /// workers serving the queue now. None when the group is missing.
    pub async fn live_workers(self, within: Duration) -> Result<usize, AdminError> {
        let reply: Result<Value, redis::RedisError> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.q.keys.jobs)
            .arg(GROUP)
            .query_async(&mut self.q.connection())
            .await;
        let consumers = match reply {
            Ok(Value::Array(consumers)) => consumers,
            Ok(_) => return Ok(0),
            // NOGROUP, or no stream at all: nobody has claimed since Redis lost it.
            Err(e) if e.code().is_some() => return Ok(0),
            Err(e) => return Err(unavailable(e).into()),
        };
        let within = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        Ok(consumers
            .iter()
            .map(flat_pairs)
            .filter(|c| {
                c.get("idle")
                    .and_then(|idle| idle.parse::<u64>().ok())
                    .is_some_and(|idle| idle <= within)
            })
            .count())
    }

    /// The type of `key` as Redis names it (`none` when it does not exist).
    pub async fn key_type(self, key: &str) -> Result<String, AdminError> {
        Ok(redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?)
    }

    /// A section of the server's `INFO` (`memory`, `commandstats`, …), as text.
    pub async fn server_info(self, section: &str) -> Result<String, AdminError> {
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?)
    }

    /// Visits every key of the queue (`SCAN` over its prefix), which makes Redis
    /// delete the expired ones now rather than whenever active expiry samples them.
    /// Returns how many keys were seen.
    pub async fn touch_all_keys(self) -> Result<u64, AdminError> {
        let pattern = self.q.keys.pattern();
        let (mut cursor, mut seen) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            seen += keys.len() as u64;
            cursor = next;
            if cursor == 0 {
                return Ok(seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_entry_id;

    #[test]
    fn entry_ids_are_told_from_anything_else() {
        for good in ["1", "1-0", "1732800000000-18446744073709551615"] {
            assert!(is_entry_id(good), "{good}");
        }
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "99999999999999999999-0",
            "+",
        ] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }
}
