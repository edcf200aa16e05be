//! Which workers serve the queue: heartbeats (`sluice:{q}:workers`, a hash of consumer
//! name → the server time after which it counts as gone), and forgetting a worker that
//! exits cleanly (its heartbeat, and its consumer when it holds nothing,
//! `consumer_forget.lua`).

use std::collections::HashMap;
use std::time::Duration;

use super::super::GROUP;
use super::super::error::{on_key, unavailable};
use super::super::reply::millis;
use super::super::scripts::SCRIPTS;
use super::{Admin, AdminError};

/// How long a gone worker's heartbeat is kept (shown as gone) before a beat of another
/// worker forgets it: workers that crash never remove their own, and the hash stays
/// bounded by the workers seen in the last day.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Admin<'_> {
    /// Records that worker `consumer` is alive, and counts as gone unless it beats
    /// again within `stale_after` (by the server's clock). A worker beats every third of
    /// that; `sluice status` lists only workers whose last beat has not run out.
    pub async fn heartbeat(self, consumer: &str, stale_after: Duration) -> Result<(), AdminError> {
        let key = &self.q.keys.workers;
        let _forgotten: i64 = SCRIPTS
            .heartbeat
            .key(key)
            .arg(consumer)
            .arg(millis(stale_after))
            .arg(millis(FORGET_AFTER))
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(on_key(key))?;
        Ok(())
    }

    /// Registered workers and when each counts as gone (server ms).
    pub(super) async fn heartbeats(self) -> Result<Vec<(String, u64)>, AdminError> {
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
}
