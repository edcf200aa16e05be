//! Dead letters and status: what an operator reads and repairs (`sluice dlq`, `sluice
//! status`, `sluice module ls`, the service's readiness probe), where one job is
//! (`sluice result`, `sluice wait`: [`find`]), and the server figures the benchmark
//! reads.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};

use super::error::{StoreError, bad_reply, on_key, unavailable};
use super::reply::{bytes_of, count_of, flat_pairs, millis, parse_entries};
use super::results::ResultsError;
use super::scripts::SCRIPTS;
use super::{GROUP, RedisQueue};
use crate::job::{JobId, ModuleHash};
use crate::queue::{QueueError, QueueStats};

mod find;

pub use find::JobState;

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

/// A stored module and the names that point at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredModule {
    /// Its content address.
    pub hash: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The names pointing at it: an operator's (`NAME`) and tenants' (`TENANT/NAME`).
    pub names: Vec<String>,
}

/// Most modules and aliases `module_list` reads (an operator's listing, not an export).
pub const MAX_LISTED_MODULES: usize = 10_000;

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

/// Whether `id` is a stream entry id (`<ms>` or `<ms>-<seq>`), as dead letters have.
fn is_entry_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let digits = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let ms = parts.next();
    let seq = parts.next();
    digits(ms) && (seq.is_none() || digits(seq))
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
                match parse_entries(&newest)?.into_iter().next() {
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
        let get = |k: &str| counters.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
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
            retried: get("retried"),
            duplicates: get("duplicates"),
            stale: get("stale"),
            dlq_retried: get("dlq_retried"),
            consumers: infos,
            backlogs: self.backlogs().await?,
            heartbeats: self.heartbeats().await?,
            server_time_ms: self.q.server_time_ms().await?,
        })
    }

    /// Records that worker `consumer` is alive, and counts as gone unless it beats
    /// again within `stale_after` (by the server's clock). A worker beats every third of
    /// that; `sluice status` lists only workers whose last beat has not run out.
    pub async fn heartbeat(self, consumer: &str, stale_after: Duration) -> Result<(), AdminError> {
        let now = self.q.server_time_ms().await?;
        let key = &self.q.keys.workers;
        redis::cmd("HSET")
            .arg(key)
            .arg(consumer)
            .arg(now.saturating_add(millis(stale_after)))
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(on_key(key))?;
        Ok(())
    }

    /// Registered workers and when each counts as gone (server ms).
    async fn heartbeats(self) -> Result<Vec<(String, u64)>, AdminError> {
        let key = &self.q.keys.workers;
        let beats: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.q.connection())
            .await
            // A foreign value under the key hides heartbeats; status still reports.
            .unwrap_or_default();
        let mut beats: Vec<(String, u64)> = beats
            .into_iter()
            .map(|(name, until)| (name, until.parse().unwrap_or(0)))
            .collect();
        beats.sort();
        Ok(beats)
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
            let entries = parse_entries(&reply)?;
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

    /// Removes worker `consumer`'s heartbeat, and its consumer from the job stream's
    /// group if it holds no jobs (a worker calls this when it exits cleanly, so `sluice
    /// status` stops listing it); whether the consumer was removed.
    pub async fn forget_consumer(self, consumer: &str) -> Result<bool, AdminError> {
        let key = &self.q.keys.workers;
        redis::cmd("HDEL")
            .arg(key)
            .arg(consumer)
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(on_key(key))?;
        let removed: i64 = SCRIPTS
            .consumer_forget
            .key(&self.q.keys.jobs)
            .arg(GROUP)
            .arg(consumer)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(removed == 1)
    }

    /// Every stored module (up to [`MAX_LISTED_MODULES`]) with the names pointing at it,
    /// by hash; names whose module is gone are listed with size 0.
    pub async fn modules(self) -> Result<Vec<StoredModule>, AdminError> {
        let prefix = self.q.keys.prefix();
        let mut by_hash: std::collections::BTreeMap<String, StoredModule> = Default::default();
        let hashes = self.scan(&format!("{prefix}module:*")).await?;
        let hashes: Vec<String> = hashes
            .iter()
            .filter_map(|key| key.strip_prefix(&format!("{prefix}module:")))
            .filter(|rest| rest.parse::<ModuleHash>().is_ok())
            .map(str::to_owned)
            .collect();
        let mut pipe = redis::pipe();
        for hash in &hashes {
            pipe.cmd("STRLEN").arg(format!("{prefix}module:{hash}"));
        }
        let sizes: Vec<Result<Value, redis::RedisError>> = if hashes.is_empty() {
            Vec::new()
        } else {
            pipe.ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?
        };
        for (hash, size) in hashes.into_iter().zip(sizes) {
            let bytes = size.as_ref().map_or(0, count_of);
            by_hash.insert(
                hash.clone(),
                StoredModule {
                    hash,
                    bytes,
                    names: Vec::new(),
                },
            );
        }
        let aliases = self.scan(&format!("{prefix}alias:*")).await?;
        let mut pipe = redis::pipe();
        for key in &aliases {
            pipe.cmd("GET").arg(key);
        }
        let targets: Vec<Result<Option<String>, redis::RedisError>> = if aliases.is_empty() {
            Vec::new()
        } else {
            pipe.ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?
        };
        for (key, target) in aliases.iter().zip(targets) {
            let (Some(name), Ok(Some(hash))) =
                (key.strip_prefix(&format!("{prefix}alias:")), target)
            else {
                continue;
            };
            by_hash
                .entry(hash.clone())
                .or_insert_with(|| StoredModule {
                    hash,
                    bytes: 0,
                    names: Vec::new(),
                })
                .names
                .push(name.to_owned());
        }
        let mut out: Vec<StoredModule> = by_hash.into_values().collect();
        for module in &mut out {
            module.names.sort();
        }
        Ok(out)
    }

    /// Keys matching `pattern` (`SCAN`), at most [`MAX_LISTED_MODULES`].
    async fn scan(self, pattern: &str) -> Result<Vec<String>, AdminError> {
        let (mut cursor, mut out) = (0u64, Vec::new());
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            out.extend(keys);
            cursor = next;
            if cursor == 0 || out.len() >= MAX_LISTED_MODULES {
                out.sort();
                out.dedup();
                out.truncate(MAX_LISTED_MODULES);
                return Ok(out);
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
