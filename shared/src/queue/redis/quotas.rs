//! Per-tenant quotas that need Redis: stored bytes (inputs the API accepts, outputs
//! and results workers store) over a rolling window, backlog
//! length, and cleaning up an upload refused part-way.
//!
//! Keys: `sluice:{q}:usage:<tenant>` (hash: time bucket → bytes reserved in it;
//! see `scripts/quota_stored.lua`).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{RedisQueue, millis, unavailable};
use crate::queue::{Queue, QueueError, QueueStats};

// Built once: `Script::new` hashes the source, and these run per job or per round.
static QUOTA_STORED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/quota_stored.lua")));

/// Buckets per blob lifetime in the stored-bytes window: bytes are counted for between
/// one and `1 + 1/BUCKETS` blob lifetimes, never less than the blobs can live.
const BUCKETS: u64 = 24;

/// What a stored-bytes reservation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved; the tenant now has this many bytes counted.
    Granted { used: u64 },
    /// Over the quota: `used` bytes are counted; the oldest leave the window in
    /// `retry_after`.
    Refused { used: u64, retry_after: Duration },
}

impl RedisQueue {
    fn usage_key(&self, tenant: &str) -> String {
        format!("{}usage:{tenant}", self.keys.prefix)
    }

    fn tenant_backlog_key(&self, tenant: &str) -> String {
        format!("{}backlog:{tenant}", self.keys.prefix)
    }

    /// Counts `bytes` more stored for `tenant` (a request's input, arguments and
    /// environment, or a run's output and result) against `max` stored bytes (0 bytes
    /// only reads; `u64::MAX` counts without refusing). Bytes stay counted for one blob
    /// lifetime (`blob_ttl`), the longest an input, output or result occupies Redis.
    pub async fn reserve_stored(
        &self,
        tenant: &str,
        bytes: u64,
        max: u64,
    ) -> Result<Reservation, QueueError> {
        let bucket = (millis(self.config.blob_ttl) / BUCKETS).max(1);
        let script = &*QUOTA_STORED;
        let reply: Vec<u64> = script
            .key(self.usage_key(tenant))
            .arg(bytes)
            .arg(max)
            .arg(bucket)
            .arg(BUCKETS + 1)
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [1, used] => Ok(Reservation::Granted { used: *used }),
            [0, used, retry_ms] => Ok(Reservation::Refused {
                used: *used,
                retry_after: Duration::from_millis(*retry_ms),
            }),
            other => Err(QueueError::Protocol(format!(
                "quota_stored.lua answered {other:?}"
            ))),
        }
    }

    /// Jobs waiting in `tenant`'s backlog.
    pub async fn backlog_len(&self, tenant: &str) -> Result<u64, QueueError> {
        let key = self.tenant_backlog_key(tenant);
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        match kind.as_str() {
            "none" => Ok(0),
            "stream" => redis::cmd("XLEN")
                .arg(&key)
                .query_async(&mut self.connection())
                .await
                .map_err(unavailable),
            other => Err(QueueError::Protocol(format!(
                "backlog key {key} is a {other}, not a stream"
            ))),
        }
    }

    /// Deletes a finished blob of `len` bytes (an upload refused after it was written).
    pub async fn delete_blob(&self, id: &str, len: u64) -> Result<(), QueueError> {
        let chunk = self.config.chunk_bytes.max(1) as u64;
        let chunks = len.div_ceil(chunk);
        let mut keys = vec![self.keys.blob_meta(id)];
        keys.extend((0..chunks).map(|i| self.keys.blob_chunk(id, i)));
        for batch in keys.chunks(512) {
            redis::cmd("DEL")
                .arg(batch)
                .query_async::<()>(&mut self.connection())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// The queue's depths, recreating the job stream and its consumer group first if
    /// Redis lost them (a restart without persistence, a failover): a readiness probe
    /// that only reported `NOGROUP` would keep the service unready until some other
    /// client happened to recreate them.
    pub async fn stats_recreating_group(&self) -> Result<QueueStats, QueueError> {
        match self.stats().await {
            Err(QueueError::Unavailable(reason)) if reason.contains("NOGROUP") => {
                self.ensure_group().await?;
                self.stats().await
            }
            other => other,
        }
    }
}
