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
//!
//! Only batches the HTTP service submitted are the API's: their hash carries
//! [`ORIGIN_FIELD`] = [`API_ORIGIN`] (written by `enqueue_owned.lua`). A command-line
//! batch's hash also names a tenant (its `--tenant`), but no HTTP tenant of that name
//! may read or cancel it: it reads as missing.

use std::collections::BTreeMap;

use redis::Value;

use super::RedisQueue;
use super::error::{StoreError, bad_reply, on_key, unavailable};
use super::keys::TENANT_POLICIES;
use crate::job::{JobId, ModuleHash};
use crate::outcome::OutcomeKind;
use crate::queue::QueueError;
use crate::tenant::TenantPolicy;

/// The most items one page holds, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// The most module holds read for one tenant's listing (its `max_modules` quota bounds
/// them; this bounds a policy that allows more).
const MAX_MODULES_READ: usize = 100_000;

/// The batch hash field naming who submitted the batch.
pub const ORIGIN_FIELD: &str = "origin";

/// [`ORIGIN_FIELD`]'s value in a batch the HTTP service submitted.
pub const API_ORIGIN: &str = "api";

/// The batch hash counter of its jobs cancelled before they ran (`cancel_batch.lua`).
const CANCELLED_COUNTER: &str = "n:cancelled";

/// The job record field holding the attempts already made at a job waiting to run
/// again (`retry.lua`).
const ATTEMPTS_FIELD: &str = "attempts";

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
    /// Jobs that will not run again: finished (each counted once) or cancelled.
    pub done: u64,
    /// Jobs cancelled before a worker claimed them.
    pub cancelled: u64,
}

/// A batch's counters, whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchTotals {
    /// Jobs submitted in it.
    pub total: u64,
    /// Finished jobs per outcome kind, each job counted once.
    pub by_outcome: BTreeMap<String, u64>,
    /// Jobs cancelled before a worker claimed them.
    pub cancelled: u64,
}

impl BatchTotals {
    /// Jobs that will not run again: finished or cancelled.
    pub fn done(&self) -> u64 {
        self.by_outcome.values().sum::<u64>() + self.cancelled
    }

    fn of(fields: &[(String, String)], listed: u64) -> Self {
        BatchTotals {
            total: field(fields, "total")
                .and_then(|t| t.parse().ok())
                .unwrap_or(listed),
            by_outcome: outcome_counts(fields),
            cancelled: counter(fields, CANCELLED_COUNTER),
        }
    }
}

/// A job of a batch as the batch's page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedBatchJob {
    /// The job.
    pub id: JobId,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Its final outcome, once it has one.
    pub outcome: Option<OutcomeKind>,
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

/// A counter field's value (absent, negative or not a number: 0).
fn counter(fields: &[(String, String)], name: &str) -> u64 {
    field(fields, name)
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |n| n.max(0) as u64)
}

/// Whether a batch hash's fields are those of a batch the HTTP service submitted for
/// `tenant` (a command-line batch's, or another tenant's, are not).
fn api_batch_of(fields: &[(String, String)], tenant: &str) -> bool {
    field(fields, "tenant") == Some(tenant) && field(fields, ORIGIN_FIELD) == Some(API_ORIGIN)
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
    /// The hashes under `keys`, read in one pipeline; a key that is not a hash answers
    /// its own error (read as empty by `pairs`), not the whole read's.
    async fn hashes(
        &self,
        keys: impl ExactSizeIterator<Item = String>,
    ) -> Result<Vec<Result<Value, redis::RedisError>>, ListingError> {
        if keys.len() == 0 {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGETALL").arg(key);
        }
        Ok(pipe
            .ignore_errors()
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?)
    }

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
        let records = self
            .hashes(ids.iter().map(|id| self.q.keys.job_record(*id)))
            .await?;
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
        let hashes = self
            .hashes(ids.iter().map(|id| self.q.keys.batch(id)))
            .await?;
        let mut items = Vec::with_capacity(ids.len());
        for (id, hash) in ids.into_iter().zip(hashes) {
            let fields = pairs(hash);
            if !api_batch_of(&fields, tenant) {
                continue;
            }
            let totals = BatchTotals::of(&fields, 0);
            items.push(BatchSummary {
                id,
                total: totals.total,
                done: totals.done(),
                cancelled: totals.cancelled,
            });
        }
        Ok(Page { items, next })
    }

    /// Whether batch `id` is one the HTTP service submitted for `tenant` (one read of
    /// its hash; another tenant's batch, a command-line batch and an unknown one are
    /// all `false`). Checked before anything reads the batch's job list.
    pub async fn api_batch(self, id: &str, tenant: &str) -> Result<bool, ListingError> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(false);
        }
        let key = self.q.keys.batch(id);
        let (owner, origin): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("tenant")
            .arg(ORIGIN_FIELD)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        Ok(owner.as_deref() == Some(tenant) && origin.as_deref() == Some(API_ORIGIN))
    }

    /// Batch `id`'s counters (whole) and `limit` of its jobs from `offset` on, in
    /// submission order, if it is one the HTTP service submitted for `tenant` (another
    /// tenant's batch, or a command-line batch, reads as missing); the next page's
    /// offset when more follow.
    pub async fn batch_with_page(
        self,
        id: &str,
        tenant: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Option<(BatchTotals, Page<ListedBatchJob>)>, ListingError> {
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
        if !api_batch_of(&fields, tenant) {
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
                pipe.cmd("HMGET")
                    .arg(self.q.keys.job_record(*job))
                    .arg("outcome")
                    .arg("state");
            }
            type Fields = (Option<String>, Option<String>);
            let records: Vec<Result<Fields, redis::RedisError>> = pipe
                .ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            for (id, record) in ids.into_iter().zip(records) {
                // A corrupt record hides that job's outcome, not the batch's.
                let (outcome, state) = record.unwrap_or_default();
                jobs.push(ListedBatchJob {
                    id,
                    cancelled: state.as_deref() == Some("cancelled"),
                    outcome: outcome.as_deref().and_then(kind_named),
                });
            }
        }
        let end = offset.saturating_add(limit as u64);
        let next = (end < listed).then(|| end.to_string());
        let totals = BatchTotals::of(&fields, listed);
        Ok(Some((totals, Page { items: jobs, next })))
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
        // Every name is read (the operator's set, one hash): a page is the smallest
        // names after `after`, so none is skipped or repeated however many there are.
        let mut names: Vec<String> = redis::cmd("HKEYS")
            .arg(TENANT_POLICIES)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(TENANT_POLICIES))?;
        names.retain(|n| after.is_none_or(|a| n.as_str() > a));
        let page = Self::first(smallest(names, limit + 1), limit, String::clone);
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

    /// Attempts already made at job `id` while it waits to run again, as `retry.lua`
    /// noted them in its record: 0 for a job never retried (or whose record is gone),
    /// `None` when the field is not a number.
    pub async fn attempts_made(self, id: JobId) -> Result<Option<u32>, ListingError> {
        let key = self.q.keys.job_record(id);
        let attempts: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(ATTEMPTS_FIELD)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        Ok(match attempts {
            None => Some(0),
            Some(n) => n.parse().ok(),
        })
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

/// The `n` smallest of `names`, sorted.
fn smallest(mut names: Vec<String>, n: usize) -> Vec<String> {
    if names.len() > n {
        names.select_nth_unstable(n);
        names.truncate(n);
    }
    names.sort_unstable();
    names
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

    #[test]
    fn cancelled_jobs_count_as_done() {
        let fields = vec![
            ("tenant".to_owned(), "t".to_owned()),
            ("total".to_owned(), "5".to_owned()),
            ("n:success".to_owned(), "2".to_owned()),
            ("n:cancelled".to_owned(), "3".to_owned()),
        ];
        let totals = BatchTotals::of(&fields, 0);
        assert_eq!((totals.total, totals.cancelled, totals.done()), (5, 3, 5));
        assert!(!totals.by_outcome.contains_key("cancelled"));
    }

    #[test]
    fn only_the_api_s_own_batches_are_its() {
        let mut fields = vec![("tenant".to_owned(), "local".to_owned())];
        // A command-line batch names its --tenant but has no API origin.
        assert!(!api_batch_of(&fields, "local"));
        fields.push((ORIGIN_FIELD.to_owned(), API_ORIGIN.to_owned()));
        assert!(api_batch_of(&fields, "local"));
        assert!(!api_batch_of(&fields, "other"));
    }

    #[test]
    fn the_smallest_names_are_picked_from_any_order() {
        let names: Vec<String> = (0..50).rev().map(|i| format!("t{i:02}")).collect();
        assert_eq!(smallest(names.clone(), 3), vec!["t00", "t01", "t02"]);
        assert_eq!(smallest(names, 60).len(), 50);
    }
}
