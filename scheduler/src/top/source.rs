//! Where `sluice top` reads from: the queue the `--redis`/`--queue` flags name,
//! connected on first use and again after a failed connection, so the view outlives
//! Redis restarts (an established connection reconnects by itself).

use std::time::Duration;

use sluice_shared::queue::redis::RedisQueue;

use super::sample::Sample;
use crate::cli::RedisArgs;

/// The queue being watched, and how a worker counts as gone.
pub struct Source {
    redis: RedisArgs,
    stale_after: Duration,
    queue: Option<RedisQueue>,
}

impl Source {
    /// A source for the queue `redis` names; nothing is connected yet.
    pub fn new(redis: RedisArgs, stale_after: Duration) -> Self {
        Source {
            redis,
            stale_after,
            queue: None,
        }
    }

    /// Reads the queue now, connecting first if no connection is up.
    pub async fn read(&mut self) -> anyhow::Result<Sample> {
        let queue = match &self.queue {
            Some(queue) => queue,
            None => self.queue.insert(self.redis.connect().await?),
        };
        Ok(Sample::read(queue, self.stale_after).await?)
    }
}
