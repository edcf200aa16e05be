//! Listing a tenant's jobs, batches and modules, every tenant, and a batch's jobs, a
//! page at a time (the HTTP API's list routes).
//!
//! Keys: `sluice:{q}:index:jobs:<tenant>` and `sluice:{q}:index:batches:<tenant>`
//! (sorted sets, every score 0, of UUIDv7 ids: lexical order is submission order),
//! written by `enqueue_owned.lua` with the records they list and trimmed to the record
//! TTL there; `sluice:{q}:modules:<tenant>` (the tenant's module holds, hash → hold
//! expiry); `sluice:{tenants}:policies`; a batch's hash and job list.
//!
//! Every page is bounded by the caller's `limit` (capped here at [`MAX_PAGE`]) and
//! resumes after a position the previous page returned: an id for jobs, batches,
//! modules and tenants (so a page never repeats or skips an item that stays listed),
//! an offset into a batch's job list. Newest jobs and batches come first.

use std::collections::BTreeMap;

use redis::Value;

use super::error::{StoreError, bad_reply, on_key, unavailable};
use super::keys::TENANT_POLICIES;
use super::results::BatchCounts;
use super::{ENVELOPE_FIELD, RedisQueue};
use crate::codec;
use crate::job::{JobId, ModuleHash};
use crate::outcome::OutcomeKind;
use crate::queue::QueueError;
use crate::tenant::TenantPolicy;

/// The most items one page holds, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// The most module holds read for one tenant's listing (its `max_modules` quota bounds
/// them; this bounds a policy that allows more).
const MAX_MODULES_READ: usize = 100_000;

/// The most tenants read for one listing page (an operator's set; names are sorted
/// here, so the whole set is read).
const MAX_TENANTS_READ: usize = 100_000;

/// A stream entry as `XRANGE` answers it: its id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The most `ZSCAN` steps (of about 1,000 members each) spent looking for a job in the
/// delayed set.
const MAX_DELAYED_SCANS: usize = 20;

/// Listing (from [`RedisQueue::listing`]).
#[derive(Clone, Copy)]
pub struct Listing<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// A tenant's stored policy does not parse (a damaged or foreign value).
    #[error("corrupt Redis contents: {TENANT_POLICIES} field {tenant}: {reason}")]
    BadPolicy {
        /// The tenant.
        tenant: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ListingError> for QueueError {
    fn from(e: ListingError) -> Self {
        match e {
            ListingError::Store(e) => e.into(),
            other => QueueError::Protocol(other.to_string()),
        }
    }
}

/// One page: its items and, when more may follow, the position to resume after.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// Where the next page starts (after this), or `None` on the last page.
    pub next: Option<String>,
}

/// A job as its tenant's listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job.
    pub id: JobId,
    /// The batch it was submitted in, if any.
    pub batch: Option<String>,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Its final outcome, once it has one.
    pub outcome: Option<OutcomeKind>,
}

/// A batch as its tenant's listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    /// The batch id.
    pub id: String,
    /// Jobs submitted in it.
    pub total: u64,
    /// Jobs finished, each counted once.
    pub done: u64,
}

/// A module the tenant holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleHold {
    /// The module's hash.
    pub hash: ModuleHash,
    /// When the hold ends unless a job uses the module (ms since the epoch).
    pub expires_at_ms: u64,
}

/// The counter field prefix in a batch hash (as `results.rs` reads it).
const COUNTER: &str = "n:";

fn kind_named(name: &str) -> Option<OutcomeKind> {
    name.parse().ok()
}

/// The finished counts of a batch hash's fields, by outcome kind.
fn outcome_counts(fields: &[(String, String)]) -> BTreeMap<String, u64> {
    let mut by_outcome = BTreeMap::new();
    for (name, value) in fields {
        if let Some(kind) = name.strip_prefix(COUNTER).and_then(kind_named) {
            // A counter that is not a number was not written by Sluice; it counts 0.
            let n: i64 = value.parse().unwrap_or(0);
            if n > 0 {
                by_outcome.insert(kind.as_str().to_owned(), n as u64);
            }
        }
    }
    by_outcome
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The field pairs of an `HGETALL` reply inside a pipeline (a wrong-typed key reads as
/// empty: one corrupt record hides that item, not the page).
fn pairs(reply: Result<Value, redis::RedisError>) -> Vec<(String, String)> {
    let Ok(value) = reply else {
        return Vec::new();
    };
    redis::from_redis_value::<Vec<(String, String)>>(value).unwrap_or_default()
}

/// `limit` within 1..=[`MAX_PAGE`].
fn capped(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

impl Listing<'_> {
    /// Members of a lexically ordered index, newest first, after `after` (exclusive):
    /// up to `limit`, and the position of the next page when more follow.
    async fn index_page(
        self,
        key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let max = after.map_or_else(|| "+".to_owned(), |a| format!("({a}"));
        let mut members: Vec<String> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(max)
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(key))?;
        let next = if members.len() > limit {
            members.truncate(limit);
            members.last().cloned()
        } else {
            None
        };
        Ok((members, next))
    }

    /// A page of `tenant`'s jobs, newest first, after job `after`.
    pub async fn jobs(
        self,
        tenant: &str,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Page<JobSummary>, ListingError> {
        let key = self.q.keys.tenant_jobs_index(tenant);
        let after = after.map(|a| a.to_string());
        let (members, next) = self
            .index_page(&key, after.as_deref(), capped(limit))
            .await?;
        let ids: Vec<JobId> = members.iter().filter_map(|m| m.parse().ok()).collect();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.q.keys.job_record(*id));
        }
        let records: Vec<Result<Value, redis::RedisError>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?
        };
        let mut items = Vec::with_capacity(ids.len());
        for (id, record) in ids.into_iter().zip(records) {
            let fields = pairs(record);
            // An expired record (or another tenant's, were the index ever wrong) is not
            // listed.
            if field(&fields, "tenant") != Some(tenant) {
                continue;
            }
            items.push(JobSummary {
                id,
                batch: field(&fields, "batch")
                    .filter(|b| !b.is_empty())
                    .map(str::to_owned),
                cancelled: field(&fields, "state") == Some("cancelled"),
                outcome: field(&fields, "outcome").and_then(kind_named),
            });
        }
        Ok(Page { items, next })
    }

    /// A page of `tenant`'s batches, newest first, after batch `after`.
    pub async fn batches(
        self,
        tenant: &str,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Page<BatchSummary>, ListingError> {
        let key = self.q.keys.tenant_batches_index(tenant);
        let after = after.map(|a| a.to_string());
        let (members, next) = self
            .index_page(&key, after.as_deref(), capped(limit))
            .await?;
        let ids: Vec<String> = members
            .into_iter()
            .filter(|m| uuid::Uuid::parse_str(m).is_ok())
            .collect();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.q.keys.batch(id));
        }
        let hashes: Vec<Result<Value, redis::RedisError>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?
        };
        let mut items = Vec::with_capacity(ids.len());
        for (id, hash) in ids.into_iter().zip(hashes) {
            let fields = pairs(hash);
            if field(&fields, "tenant") != Some(tenant) {
                continue;
            }
            let total = field(&fields, "total")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let done = outcome_counts(&fields).values().sum();
            items.push(BatchSummary { id, total, done });
        }
        Ok(Page { items, next })
    }

    /// Batch `id`'s counters (whole) and `limit` of its jobs from `offset` on, in
    /// submission order (also in the counts' `jobs`), if it exists and belongs to
    /// `tenant` (another tenant's batch reads as missing); the next page's offset when
    /// more follow.
    pub async fn batch_with_page(
        self,
        id: &str,
        tenant: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Option<(BatchCounts, Page<(JobId, Option<OutcomeKind>)>)>, ListingError> {
        // Batch ids are UUIDs; anything else (`<id>:jobs`, say) names another key.
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        let limit = capped(limit);
        let key = self.q.keys.batch(id);
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        if field(&fields, "tenant") != Some(tenant) {
            return Ok(None);
        }
        let list = self.q.keys.batch_jobs(id);
        let (listed, ids): (u64, Vec<String>) = redis::pipe()
            .cmd("LLEN")
            .arg(&list)
            .cmd("LRANGE")
            .arg(&list)
            .arg(offset)
            .arg(offset.saturating_add(limit as u64 - 1))
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&list))?;
        let ids: Vec<JobId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let mut jobs = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for job in &ids {
                pipe.cmd("HGET")
                    .arg(self.q.keys.job_record(*job))
                    .arg("outcome");
            }
            let outcomes: Vec<Result<Option<String>, redis::RedisError>> = pipe
                .ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            for (job, outcome) in ids.into_iter().zip(outcomes) {
                // A corrupt record hides that job's outcome, not the batch's.
                let kind = outcome.ok().flatten().as_deref().and_then(kind_named);
                jobs.push((job, kind));
            }
        }
        let end = offset.saturating_add(limit as u64);
        let next = (end < listed).then(|| end.to_string());
        let counts = BatchCounts {
            tenant: tenant.to_owned(),
            total: field(&fields, "total")
                .and_then(|t| t.parse().ok())
                .unwrap_or(listed),
            by_outcome: outcome_counts(&fields),
            jobs: jobs.clone(),
        };
        Ok(Some((counts, Page { items: jobs, next })))
    }

    /// A page of the modules `tenant` holds (holds not yet expired), by hash, after
    /// hash `after`.
    pub async fn modules(
        self,
        tenant: &str,
        after: Option<ModuleHash>,
        limit: usize,
    ) -> Result<Page<ModuleHold>, ListingError> {
        let limit = capped(limit);
        let key = self.q.keys.tenant_modules(tenant);
        let now = self.q.server_time_ms().await?;
        let holds: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(MAX_MODULES_READ - 1)
            .arg("WITHSCORES")
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        let mut holds: Vec<ModuleHold> = holds
            .into_iter()
            .filter(|(_, expiry)| *expiry >= now as f64)
            .filter_map(|(hash, expiry)| {
                Some(ModuleHold {
                    hash: hash.parse().ok()?,
                    expires_at_ms: expiry as u64,
                })
            })
            .filter(|hold| after.is_none_or(|a| hold.hash.to_hex() > a.to_hex()))
            .collect();
        holds.sort_by_key(|hold| hold.hash.to_hex());
        Ok(Self::first(holds, limit, |hold| hold.hash.to_hex()))
    }

    /// `tenant`'s hold on module `hash`, if it holds it (and the hold has not expired).
    pub async fn module_hold(
        self,
        tenant: &str,
        hash: &ModuleHash,
    ) -> Result<Option<ModuleHold>, ListingError> {
        let key = self.q.keys.tenant_modules(tenant);
        let now = self.q.server_time_ms().await?;
        let expiry: Option<f64> = redis::cmd("ZSCORE")
            .arg(&key)
            .arg(hash.to_hex())
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        Ok(expiry.filter(|e| *e >= now as f64).map(|e| ModuleHold {
            hash: *hash,
            expires_at_ms: e as u64,
        }))
    }

    /// A page of every tenant with its policy, by name, after tenant `after`.
    pub async fn tenants(
        self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<(String, TenantPolicy)>, ListingError> {
        let limit = capped(limit);
        let mut names: Vec<String> = redis::cmd("HKEYS")
            .arg(TENANT_POLICIES)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(TENANT_POLICIES))?;
        names.truncate(MAX_TENANTS_READ);
        names.retain(|n| after.is_none_or(|a| n.as_str() > a));
        names.sort();
        let page = Self::first(names, limit, String::clone);
        if page.items.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let policies: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(TENANT_POLICIES)
            .arg(&page.items)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(TENANT_POLICIES))?;
        if policies.len() != page.items.len() {
            return Err(bad_reply(format!("HMGET answered {} values", policies.len())).into());
        }
        let mut items = Vec::with_capacity(page.items.len());
        for (name, json) in page.items.into_iter().zip(policies) {
            // Deleted between the two reads: not listed.
            let Some(json) = json else { continue };
            let policy = serde_json::from_str(&json).map_err(|e| ListingError::BadPolicy {
                tenant: name.clone(),
                reason: e.to_string(),
            })?;
            items.push((name, policy));
        }
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// Attempts already made at job `id` while it waits to run again: read from its
    /// envelope, in its record's stream (`stream`, `entry`; the tenant's backlog
    /// `backlog` or the job stream) or, while it waits out a retry delay, in the
    /// delayed set (scanned in bounded steps). `None` when the envelope is in neither.
    pub async fn attempts_made(
        self,
        id: JobId,
        backlog: &str,
        stream: &str,
        entry: &str,
    ) -> Result<Option<u32>, ListingError> {
        // The record's stream is one of these two; nothing else is read.
        if (stream == backlog || stream == self.q.keys.jobs) && !entry.is_empty() {
            let found: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(stream)
                .arg(entry)
                .arg(entry)
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.q.connection())
                .await
                .map_err(on_key(stream))?;
            let envelope = found.into_iter().next().and_then(|(_, fields)| {
                fields
                    .into_iter()
                    .find(|(f, _)| f.as_bytes() == ENVELOPE_FIELD)
                    .map(|(_, e)| e)
            });
            if let Some(envelope) = envelope {
                return Ok(codec::decode(&envelope).ok().map(|job| job.attempt));
            }
        }
        // The envelope's head is the format version, the id's length and its bytes
        // (see `envelope_job_id`); glob metacharacters among them are escaped.
        let mut pattern = vec![codec::FORMAT_VERSION, 16];
        for byte in id.0.as_bytes() {
            if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
                pattern.push(b'\\');
            }
            pattern.push(*byte);
        }
        pattern.push(b'*');
        let key = &self.q.keys.delayed;
        let mut cursor = 0u64;
        for _ in 0..MAX_DELAYED_SCANS {
            let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("ZSCAN")
                .arg(key)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.q.connection())
                .await
                .map_err(on_key(key))?;
            // ZSCAN answers member, score pairs.
            if let Some(job) = found
                .iter()
                .step_by(2)
                .filter_map(|e| codec::decode(e).ok())
                .find(|job| job.id == id)
            {
                return Ok(Some(job.attempt));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(None)
    }

    /// The first `limit` of `sorted`, and the position after the last when more follow.
    fn first<T>(mut sorted: Vec<T>, limit: usize, position: impl Fn(&T) -> String) -> Page<T> {
        let next = if sorted.len() > limit {
            sorted.truncate(limit);
            sorted.last().map(position)
        } else {
            None
        };
        Page {
            items: sorted,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_capped_and_says_where_the_next_starts() {
        assert_eq!(capped(0), 1);
        assert_eq!(capped(5000), MAX_PAGE);
        let page = Listing::first(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next.as_deref(), Some("2"));
        let page = Listing::first(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(page.next, None);
    }

    #[test]
    fn finished_counts_come_from_counter_fields_only() {
        let fields = vec![
            ("tenant".to_owned(), "t".to_owned()),
            ("n:success".to_owned(), "2".to_owned()),
            ("n:timeout".to_owned(), "x".to_owned()),
            ("n:bogus".to_owned(), "5".to_owned()),
        ];
        let counts = outcome_counts(&fields);
        assert_eq!(counts.get("success"), Some(&2));
        assert_eq!(counts.len(), 1);
    }
}
