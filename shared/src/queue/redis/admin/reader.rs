//! [`GaugeReader`]: a read-only connection of its own for the exporter's queue-state
//! reads. Unlike [`RedisQueue::connect`](super::super::RedisQueue::connect) it creates
//! nothing (no stream, no consumer group), starts no completion flusher and opens no
//! blocking connection, so it works as a read-only ACL user, and a scrape never waits
//! behind the API's commands on the shared multiplexed connection.

use super::super::config::RedisConfig;
use super::super::connect::ConnectError;
use super::super::connection::{Connection, Connector};
use super::super::keys::Keys;
use super::AdminError;
use super::gauges::{QueueGauges, read};

/// The client for `config` (no I/O; one server or a cluster, with its TLS roots when
/// it has a CA): an unusable configuration or URL fails here. Every connection to a
/// queue's Redis (the queue's own and the gauge readers') is made from one.
pub fn gauge_client(config: &RedisConfig) -> Result<Connector, ConnectError> {
    Connector::new(config)
}

/// A read-only connection to one queue's Redis for [`QueueGauges`] reads. It
/// reconnects by itself once open.
pub struct GaugeReader {
    conn: Connection,
    keys: Keys,
}

impl GaugeReader {
    /// Opens the connection for the queue of `config` (authenticating: refused
    /// credentials say so here). Sends no command that writes.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        let conn = gauge_client(config)?.commands_checked(&config.url).await?;
        Ok(GaugeReader {
            conn,
            keys: Keys::new(&config.queue),
        })
    }

    /// The queue's state (see [`Admin::gauges`](super::Admin::gauges) for what reads
    /// as empty and what fails).
    pub async fn read(&self) -> Result<QueueGauges, AdminError> {
        read(&self.conn, &self.keys).await
    }
}
