//! [`GaugeReader`]: a read-only connection of its own for the exporter's queue-state
//! reads. Unlike [`RedisQueue::connect`](super::super::RedisQueue::connect) it creates
//! nothing (no stream, no consumer group), starts no completion flusher and opens no
//! blocking connection, so it works as a read-only ACL user, and a scrape never waits
//! behind the API's commands on the shared multiplexed connection.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::super::config::RedisConfig;
use super::super::connect::ConnectError;
use super::super::keys::Keys;
use super::AdminError;
use super::gauges::{QueueGauges, read};

/// Time allowed to open the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis client for `config` (no I/O), with its TLS roots when it has a CA: an
/// unusable configuration or URL fails here. Every connection to a queue's Redis
/// (the queue's own and the gauge readers') is made from one.
pub fn gauge_client(config: &RedisConfig) -> Result<redis::Client, ConnectError> {
    config.validate()?;
    let failed = |e: redis::RedisError| ConnectError::from_redis(&e, &config.url);
    // rustls needs one process-wide crypto provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &config.tls_ca_pem {
        Some(ca) => redis::Client::build_with_tls(
            config.url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => redis::Client::open(config.url.as_str()),
    }
    .map_err(failed)
}

/// A read-only connection to one queue's Redis for [`QueueGauges`] reads. It
/// reconnects by itself once open.
pub struct GaugeReader {
    conn: ConnectionManager,
    keys: Keys,
}

impl GaugeReader {
    /// Opens the connection for the queue of `config` (authenticating: refused
    /// credentials say so here). Sends no command that writes.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        let client = gauge_client(config)?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
            .set_response_timeout(Some(config.response_timeout));
        let conn = client
            .get_connection_manager_with_config(settings)
            .await
            .map_err(|e| ConnectError::from_redis(&e, &config.url))?;
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
