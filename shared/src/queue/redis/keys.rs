//! Every Redis key Sluice uses, in one place: no key string is built anywhere else.
//! `docs/redis-protocol.md` describes what each holds.
//!
//! A queue's keys share the hash tag `{queue}` (`sluice:{default}:jobs`, …), so a queue
//! lives on one Redis Cluster slot and its scripts may touch all its keys. The tenant
//! store spans queues and has its own tag, `{tenants}`.

use crate::job::{JobId, ModuleHash};

/// The tenant store's policies: a hash of tenant → policy JSON.
pub const TENANT_POLICIES: &str = "sluice:{tenants}:policies";
/// The tenant store's tokens: a hash of token hash → tenant.
pub const TENANT_TOKENS: &str = "sluice:{tenants}:tokens";

/// The set of `tenant`'s token hashes (for revocation).
pub fn tenant_tokens(tenant: &str) -> String {
    format!("{TENANT_TOKENS}:{tenant}")
}

/// The keys of one queue: the fixed ones as fields, the per-job, per-module,
/// per-blob and per-tenant ones as methods.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    /// The job stream (with the consumer group every worker joins).
    pub jobs: String,
    /// The delayed set: envelopes scored by their due time.
    pub delayed: String,
    /// The counters hash (`completed`, `failed`, `retried`, `dead`, `dead:<outcome
    /// kind>`, …).
    pub stats: String,
    /// The completion-notice stream submitters follow.
    pub done: String,
    /// The dead-letter stream.
    pub dead: String,
    /// Worker heartbeats (hash: consumer name → server ms after which it is gone).
    pub workers: String,
}

impl Keys {
    /// The keys of queue `queue`.
    pub fn new(queue: &str) -> Self {
        let prefix = format!("sluice:{{{queue}}}:");
        Keys {
            jobs: format!("{prefix}jobs"),
            delayed: format!("{prefix}delayed"),
            stats: format!("{prefix}stats"),
            done: format!("{prefix}done"),
            dead: format!("{prefix}dead"),
            workers: format!("{prefix}workers"),
            prefix,
        }
    }

    /// `sluice:{queue}:`, which every key of the queue starts with (scripts that build
    /// per-job keys themselves get it as an argument).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A pattern matching every key of the queue (for `SCAN`).
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// The key a job's result is stored under.
    pub fn result_key(&self, job: JobId) -> String {
        format!("{}result:{job}", self.prefix)
    }

    /// Where the completion flusher stages a large result (a string with a short
    /// staging TTL) in the round trip that runs `complete.lua`, which renames it to the
    /// result key or deletes it. One per entry and holder: two consumers may hold the
    /// same entry after a takeover, and each stages its own copy. It holds no delivery
    /// count, so a consumer that takes over its own expired entry reuses the key; that
    /// is harmless, as its earlier copy was renamed or deleted by its own script call,
    /// or is its own result of the same job. The entry id is Redis's
    /// (`<ms>-<seq>`), the consumer name bounded by whoever claims (the worker's
    /// `--consumer` at most 128 printable ASCII bytes, its default host-pid name at most
    /// 64 + 11); neither comes from a tenant.
    pub fn staged_result(&self, entry_id: &str, consumer: &str) -> String {
        format!("{}staged:{entry_id}:{consumer}", self.prefix)
    }

    /// A pattern matching every staged result of the queue (for `SCAN`).
    pub fn staged_pattern(&self) -> String {
        format!("{}staged:*", self.prefix)
    }

    /// A module's bytes, content-addressed.
    pub fn module(&self, hash: &ModuleHash) -> String {
        format!("{}module:{hash}", self.prefix)
    }

    /// The set of tenants holding a module's bytes.
    pub fn module_owners(&self, hash: &ModuleHash) -> String {
        format!("{}:owners", self.module(hash))
    }

    /// A module's metadata (`ModuleMeta`, JSON behind a format version), with the
    /// bytes' lifetime.
    pub fn module_meta(&self, hash: &ModuleHash) -> String {
        format!("{}:meta", self.module(hash))
    }

    /// The set of keys derived from a module (its artifacts and compile refusals),
    /// deleted with the module's bytes.
    pub fn module_artifacts(&self, hash: &ModuleHash) -> String {
        format!("{}:artifacts", self.module(hash))
    }

    /// An alias naming a module's hash (an operator's name).
    pub fn alias(&self, name: &str) -> String {
        format!("{}alias:{name}", self.prefix)
    }

    /// A tenant's alias for a module (`alias:<tenant>/<name>`).
    pub fn tenant_alias(&self, tenant: &str, name: &str) -> String {
        self.alias(&format!("{tenant}/{name}"))
    }

    /// The sorted set of a tenant's module holds (hash → hold expiry).
    pub fn tenant_modules(&self, tenant: &str) -> String {
        format!("{}modules:{tenant}", self.prefix)
    }

    /// A blob's meta hash (`len`, `chunks`).
    pub fn blob_meta(&self, id: &str) -> String {
        format!("{}blob:{id}", self.prefix)
    }

    /// A blob's chunk `index`.
    pub fn blob_chunk(&self, id: &str, index: u64) -> String {
        format!("{}blob:{id}:{index}", self.prefix)
    }

    /// The prefix of job records, `job:<id>` after the queue's prefix (for
    /// `dispatch.lua`, which builds records' keys itself).
    pub fn job_record_prefix(&self) -> String {
        format!("{}job:", self.prefix)
    }

    /// A job's record (hash: `tenant`, `stream`, `entry`, `batch`, `state`, …).
    pub fn job_record(&self, id: JobId) -> String {
        format!("{}{id}", self.job_record_prefix())
    }

    /// A batch's hash (`tenant`, `total`, outcome counters).
    pub fn batch(&self, id: &str) -> String {
        format!("{}batch:{id}", self.prefix)
    }

    /// A batch's list of job ids.
    pub fn batch_jobs(&self, id: &str) -> String {
        format!("{}:jobs", self.batch(id))
    }

    /// A tenant's index of its jobs (a sorted set, every score 0, of job ids: UUIDv7s,
    /// so their lexical order is their submission order), for listing.
    pub fn tenant_jobs_index(&self, tenant: &str) -> String {
        format!("{}index:jobs:{tenant}", self.prefix)
    }

    /// A tenant's index of its batches (as [`Self::tenant_jobs_index`], of batch ids).
    pub fn tenant_batches_index(&self, tenant: &str) -> String {
        format!("{}index:batches:{tenant}", self.prefix)
    }

    /// A tenant's backlog stream (jobs waiting for admission).
    pub fn backlog(&self, tenant: &str) -> String {
        format!("{}backlog:{tenant}", self.prefix)
    }

    /// The set of tenants with a non-empty backlog.
    pub fn backlogs(&self) -> String {
        format!("{}backlogs", self.prefix)
    }

    /// The queue's `owned` flag (a string): set, never cleared, by `enqueue_owned.lua`
    /// and `enqueue_batch.lua` when they write the first job record; `complete.lua`
    /// looks for records and batches only while it is set.
    pub fn owned(&self) -> String {
        format!("{}owned", self.prefix)
    }

    /// The dispatcher role's holder (a string with a TTL).
    pub fn dispatcher(&self) -> String {
        format!("{}dispatcher", self.prefix)
    }

    /// The hash of admitted, unsettled jobs (job id → tenant).
    pub fn admitted(&self) -> String {
        format!("{}admitted", self.prefix)
    }

    /// A tenant's stored-bytes usage (hash: time bucket → bytes).
    pub fn usage(&self, tenant: &str) -> String {
        format!("{}usage:{tenant}", self.prefix)
    }

    /// A compiled artifact of a module for one engine (integrity tag + artifact).
    pub fn artifact(&self, module: &ModuleHash, engine: &[u8; 32]) -> String {
        format!(
            "{}artifact:{module}:{}",
            self.prefix,
            crate::queue::redis::artifacts::engine_hex(engine)
        )
    }

    /// The single-flight lock of one artifact: held (a string, the holder's token,
    /// with a TTL) by the worker compiling it.
    pub fn artifact_lock(&self, module: &ModuleHash, engine: &[u8; 32]) -> String {
        format!(
            "{}compiling:{module}:{}",
            self.prefix,
            crate::queue::redis::artifacts::engine_hex(engine)
        )
    }

    /// Why a module does not compile for one engine (a string with a TTL), recorded
    /// by the worker that tried, so the rest of the fleet does not try again.
    pub fn artifact_refusal(&self, module: &ModuleHash, engine: &[u8; 32]) -> String {
        format!(
            "{}refused:{module}:{}",
            self.prefix,
            crate::queue::redis::artifacts::engine_hex(engine)
        )
    }

    /// The stream of modules to precompile (module hashes, capped), added to by
    /// module uploads and read by every worker with the shared cache on.
    pub fn precompile(&self) -> String {
        format!("{}precompile", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_queue_carries_its_hash_tag() {
        let keys = Keys::new("q");
        let id: JobId = "0190a0a0-0000-7000-8000-000000000000".parse().unwrap();
        let hash = ModuleHash::of(b"m");
        for key in [
            keys.jobs.clone(),
            keys.result_key(id),
            keys.staged_result("1700000000000-0", "host-1"),
            keys.module_owners(&hash),
            keys.module_meta(&hash),
            keys.tenant_alias("t", "n"),
            keys.blob_chunk("b", 3),
            keys.job_record(id),
            keys.batch_jobs("b"),
            keys.backlog("t"),
            keys.usage("t"),
            keys.tenant_jobs_index("t"),
            keys.tenant_batches_index("t"),
            keys.artifact(&hash, &[0; 32]),
            keys.artifact_lock(&hash, &[0; 32]),
            keys.artifact_refusal(&hash, &[0; 32]),
            keys.module_artifacts(&hash),
            keys.precompile(),
        ] {
            assert!(key.starts_with("sluice:{q}:"), "{key}");
        }
        assert_eq!(keys.batch_jobs("b"), "sluice:{q}:batch:b:jobs");
        assert_eq!(
            keys.staged_result("1-0", "w{x}"),
            "sluice:{q}:staged:1-0:w{x}",
            "a brace in a consumer name comes after the queue's tag, which stays the slot's"
        );
        assert_eq!(keys.tenant_alias("t", "n"), "sluice:{q}:alias:t/n");
        assert_eq!(tenant_tokens("t"), "sluice:{tenants}:tokens:t");
    }
}
