//! The one connection seam: [`Connector`] (a client for one queue's Redis, no I/O yet)
//! opens [`Connection`]s to either one Redis server or a Redis Cluster
//! ([`Topology`]), and every role sends its commands through a [`Connection`] without
//! knowing which.
//!
//! On a cluster, the client routes a keyed command (and a script, by its first key; a
//! pipeline, by its first keyed command) to the master owning that key's slot. Every
//! key of a queue carries the hash tag `{queue}`, so a queue's commands, scripts and
//! pipelines all land on one master; the tenant store's keys (`{tenants}`) on
//! whichever master owns that tag. A command without a key (`TIME`, `INFO`, `SCAN`,
//! `DBSIZE`, `PING`, `WAIT`) would go to a random node, where a `SCAN` silently lists
//! nothing and `INFO memory` describes another node: [`Connection`] sends those to the
//! master owning the queue's slot (its *home*), as a pipeline of only such commands.
//! `SCRIPT LOAD` keeps the client's own routing (every node), so the `NOSCRIPT`
//! recovery of `EVALSHA` works on whichever master a script's keys live on.
//!
//! Cluster settings (`ClusterClientBuilder`): each node's replies are bounded by the
//! configured response timeout, and so is a whole request (redirections and retries
//! included); a request meeting `MOVED` (a failover, a resharding) refreshes the slot
//! map and follows it, retrying up to [`CLUSTER_RETRIES`] times with a wait between
//! [`CLUSTER_MIN_RETRY_WAIT`] and [`CLUSTER_MAX_RETRY_WAIT`]. Blocking reads get a
//! cluster connection of their own without those timeouts (bounded per read by
//! `blocking.rs`).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::config::{RedisConfig, Topology, scrubbed, seed_urls};
use super::connect::ConnectError;
use super::keys::Keys;

/// Time allowed to open a connection to one server or node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of one cluster request (after `MOVED`, `TRYAGAIN`, `CLUSTERDOWN` or a lost
/// node connection) before it fails.
pub const CLUSTER_RETRIES: u32 = 6;
/// Shortest wait before a cluster request's retry, in milliseconds.
pub const CLUSTER_MIN_RETRY_WAIT: u64 = 50;
/// Longest wait before a cluster request's retry, in milliseconds.
pub const CLUSTER_MAX_RETRY_WAIT: u64 = 1000;

/// The commands without a key Sluice may send; on a cluster they go to the queue's
/// home master (see the module doc).
const KEYLESS: [&[u8]; 6] = [b"TIME", b"INFO", b"SCAN", b"DBSIZE", b"PING", b"WAIT"];

/// A client for one queue's Redis (one server or a cluster), checked but not
/// connected: every connection to that queue's Redis is opened from one.
#[derive(Clone)]
pub struct Connector {
    kind: Kind,
    /// The queue's master: where keyless commands go on a cluster.
    home: Route,
    response_timeout: Duration,
    /// The CA to trust (TLS), for [`Self::probe`].
    tls_ca_pem: Option<Vec<u8>>,
}

/// The client of each topology.
#[derive(Clone)]
enum Kind {
    Single(Box<redis::Client>),
    Cluster {
        /// Commands, their replies bounded by the response timeout.
        commands: Box<ClusterClient>,
        /// Blocking reads: no response timeout (each read is bounded by its caller).
        blocking: Box<ClusterClient>,
    },
}

impl Connector {
    /// The client for `config` (no I/O), with its TLS roots when it has a CA: an
    /// unusable configuration or URL fails here.
    pub fn new(config: &RedisConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let failed = |e: RedisError| ConnectError::from_redis(&e, &config.url);
        // rustls needs one process-wide crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kind = match config.topology {
            Topology::Single => Kind::Single(Box::new(
                match &config.tls_ca_pem {
                    Some(ca) => redis::Client::build_with_tls(config.url.as_str(), certs(ca)),
                    None => redis::Client::open(config.url.as_str()),
                }
                .map_err(failed)?,
            )),
            Topology::Cluster => Kind::Cluster {
                commands: Box::new(
                    cluster_builder(config)
                        .response_timeout(config.response_timeout)
                        .build()
                        .map_err(failed)?,
                ),
                blocking: Box::new(
                    cluster_builder(config)
                        .overall_response_timeout(None)
                        .build()
                        .map_err(failed)?,
                ),
            },
        };
        let keys = Keys::new(&config.queue);
        Ok(Connector {
            kind,
            home: home_route(&keys),
            response_timeout: config.response_timeout,
            tls_ca_pem: config.tls_ca_pem.clone(),
        })
    }

    /// Opens the connection for commands, its replies bounded by the response timeout;
    /// it reconnects by itself once open.
    pub async fn commands(&self) -> Result<Connection, RedisError> {
        match &self.kind {
            Kind::Single(client) => Ok(Connection::Single(
                client
                    .get_connection_manager_with_config(manager(Some(self.response_timeout)))
                    .await?,
            )),
            Kind::Cluster { commands, .. } => Ok(Connection::Cluster {
                conn: commands.get_async_connection().await?,
                home: self.home,
            }),
        }
    }

    /// Opens the connection for commands as [`Self::commands`] does, its failure
    /// classified ([`ConnectError`]). A cluster client reports every failure to
    /// connect as an I/O error (refused credentials included), so on a cluster a
    /// failure is classified by [`Self::probe`] of the first seed.
    pub async fn commands_checked(&self, url: &str) -> Result<Connection, ConnectError> {
        match self.commands().await {
            Ok(conn) => Ok(conn),
            Err(e) => Err(self.classify(&e, url).await),
        }
    }

    /// `error` (a failure to connect to `url`) classified; on a cluster a transient
    /// failure is checked against a plain connection to the first seed.
    pub(super) async fn classify(&self, error: &RedisError, url: &str) -> ConnectError {
        let classified = ConnectError::from_redis(error, url);
        match (&self.kind, &classified) {
            (Kind::Cluster { .. }, ConnectError::Unavailable(_)) => {
                self.probe(url).await.unwrap_or(classified)
            }
            _ => classified,
        }
    }

    /// Connects to the first seed of `url` as one server (with the seed's credentials
    /// and TLS) and asks `CLUSTER INFO`: refused credentials ([`ConnectError::Auth`])
    /// or a server without cluster support ([`ConnectError::NotCluster`]) are what
    /// they are; `None` when the probe finds neither (the seed is unreachable, or it
    /// answers as a cluster node: the failure was elsewhere).
    async fn probe(&self, url: &str) -> Option<ConnectError> {
        let seed = *seed_urls(url).first()?;
        let client = match &self.tls_ca_pem {
            Some(ca) => redis::Client::build_with_tls(seed, certs(ca)),
            None => redis::Client::open(seed),
        }
        .ok()?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.response_timeout));
        let refused = |e: RedisError| {
            let e = ConnectError::from_redis(&e, url);
            (!e.is_transient()).then_some(e)
        };
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(e) => return refused(e),
        };
        match redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async::<String>(&mut conn)
            .await
        {
            Ok(_) => None,
            Err(e) if e.to_string().contains("cluster support disabled") => {
                Some(ConnectError::NotCluster(scrubbed(&e.to_string(), url)))
            }
            Err(e) => refused(e),
        }
    }

    /// Opens a connection for blocking reads: no response timeout of its own.
    pub(super) async fn blocking(&self) -> Result<Connection, RedisError> {
        match &self.kind {
            Kind::Single(client) => Ok(Connection::Single(
                client
                    .get_connection_manager_with_config(manager(None))
                    .await?,
            )),
            Kind::Cluster { blocking, .. } => Ok(Connection::Cluster {
                conn: blocking
                    .get_async_connection_with_config(ClusterConfig::new())
                    .await?,
                home: self.home,
            }),
        }
    }

    /// A new connection for blocking reads that connects on its first use (so making
    /// one never waits).
    pub(super) fn blocking_lazy(&self) -> Result<Connection, RedisError> {
        match &self.kind {
            Kind::Single(client) => Ok(Connection::Single(
                ConnectionManager::new_lazy_with_config((**client).clone(), manager(None))?,
            )),
            Kind::Cluster { blocking, .. } => Ok(Connection::Cluster {
                conn: blocking.get_pending_async_connection_with_config(ClusterConfig::new()),
                home: self.home,
            }),
        }
    }
}

/// TLS roots from a CA's PEM.
fn certs(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

/// The settings both cluster clients share: the seeds, TLS roots, connect timeout
/// and retries (credentials and TLS mode come from the seed URLs).
fn cluster_builder(config: &RedisConfig) -> ClusterClientBuilder {
    let mut builder = ClusterClientBuilder::new(seed_urls(&config.url))
        .connection_timeout(CONNECT_TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_MIN_RETRY_WAIT)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT);
    if let Some(ca) = &config.tls_ca_pem {
        builder = builder.certs(certs(ca));
    }
    builder
}

/// A single server's connection settings; `response` bounds each reply.
fn manager(response: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
        .set_response_timeout(response)
}

/// The master owning the queue's slot (every key of the queue shares the hash tag
/// `{queue}`).
pub fn home_route(keys: &Keys) -> Route {
    Route::with_key(keys.jobs.as_bytes(), SlotAddr::Master)
}

/// A connection to one queue's Redis: cheap to clone (clones share it), reconnecting
/// by itself. On a cluster, keyless commands go to the queue's home master.
#[derive(Clone)]
pub enum Connection {
    /// One server, through the client's connection manager.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster {
        /// The cluster client's connection (one multiplexed connection per node).
        conn: ClusterConnection,
        /// The queue's master.
        home: Route,
    },
}

/// Whether `cmd` is one of [`KEYLESS`].
fn keyless(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => KEYLESS.iter().any(|k| k.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

/// Routing to the queue's master.
fn to(home: Route) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(home)
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster { conn, home } => {
                if keyless(cmd) {
                    let route = RoutingInfo::SingleNode(to(*home));
                    Box::pin(conn.route_command(cmd.clone(), route))
                } else {
                    conn.req_packed_command(cmd)
                }
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster { conn, home } => {
                // Only keyless commands: the client would pick a random node.
                if pipeline.cmd_iter().all(keyless) {
                    Box::pin(conn.route_pipeline(pipeline.clone(), offset, count, to(*home)))
                } else {
                    conn.req_packed_commands(pipeline, offset, count)
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster { conn, .. } => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_route_is_the_master_of_the_queues_slot() {
        let keys = Keys::new("default");
        for key in [
            keys.stats.clone(),
            keys.result_key(crate::job::JobId::new()),
        ] {
            assert_eq!(home_route(&keys), Route::with_key(key, SlotAddr::Master));
        }
    }

    #[test]
    fn only_keyless_commands_are_sent_home() {
        assert!(keyless(&redis::cmd("TIME")));
        assert!(keyless(redis::cmd("info").arg("memory")));
        assert!(!keyless(redis::cmd("XLEN").arg("k")));
        assert!(!keyless(redis::cmd("SCRIPT").arg("LOAD")));
    }
}
