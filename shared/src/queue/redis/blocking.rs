//! The connection for blocking reads (`XREADGROUP BLOCK`, `XREAD BLOCK`).
//!
//! It cannot carry the usual response timeout (a reply legitimately takes as long as
//! the block), yet with none a half-open TCP connection (a failover, a dropped NAT
//! entry) hangs a read until the kernel gives up, about 15 minutes, and a worker waiting
//! in a claim meanwhile neither runs jobs nor answers SIGTERM. So each read is bounded
//! by its block time plus a response margin, and a read that overruns replaces the
//! connection: the stalled one would otherwise hold every later read queued behind it
//! (the client library does not reconnect after a timeout, only after an I/O error).

use std::time::Duration;

use parking_lot::Mutex;
use redis::{Cmd, RedisError, Value};

use super::connection::{Connection, Connector};

/// A connection for blocking reads, replaced when a read overruns its bound. On a
/// cluster it is a cluster connection of its own (one connection per node, apart from
/// the commands' ones), so a `BLOCK` never holds up other commands to that node.
pub(super) struct BlockingConnection {
    connector: Connector,
    /// Extra time a reply may take beyond the block itself (queueing behind another
    /// blocking read on this connection included).
    margin: Duration,
    current: Mutex<Connection>,
}

impl BlockingConnection {
    pub(super) async fn connect(
        connector: Connector,
        margin: Duration,
    ) -> Result<Self, RedisError> {
        let current = connector.blocking().await?;
        Ok(BlockingConnection {
            connector,
            margin,
            current: Mutex::new(current),
        })
    }

    /// Runs `cmd`, which blocks in Redis for at most `block`; an overrun is an I/O error
    /// (`TimedOut`), retryable, after which the next read goes over a new connection.
    pub(super) async fn query(
        &self,
        cmd: &Cmd,
        block: Option<Duration>,
    ) -> Result<Value, RedisError> {
        let mut conn = self.current.lock().clone();
        let bound = block.unwrap_or_default().saturating_add(self.margin);
        match tokio::time::timeout(bound, cmd.query_async::<Value>(&mut conn)).await {
            Ok(reply) => reply,
            Err(_) => {
                tracing::warn!(
                    timeout_ms = bound.as_millis() as u64,
                    "a blocking Redis read got no reply in time; reconnecting"
                );
                // Lazily connected: the next read connects, so this never waits here.
                // A reconnect after a concurrent overrun already replaced it is harmless.
                if let Ok(fresh) = self.connector.blocking_lazy() {
                    *self.current.lock() = fresh;
                }
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply to a blocking read within {bound:?}"),
                )
                .into())
            }
        }
    }
}
