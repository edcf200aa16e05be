//! The Redis protocol: every Redis command and script Sluice sends lives in this
//! module; `docs/redis-protocol.md` describes the key schema and argues crash safety.
//!
//! One connection-and-keys type, [`RedisQueue`] (the multiplexed connection, the
//! blocking-read connection, the configuration and the queue's [`Keys`]), and one file
//! per role over it, each with its own error enum:
//!
//! | role | where | reached by | error |
//! | --- | --- | --- | --- |
//! | the queue: enqueue, claim, renew, complete, retry, dead-letter, release, delayed jobs | `queue.rs` | [`Queue`](crate::queue::Queue) on [`RedisQueue`], [`RedisQueue::schedule`] | [`QueueError`] |
//! | the module store | `modules.rs` | [`RedisQueue::modules`] | [`ModuleStoreError`] |
//! | completion notices, results, job and batch records, cancel | `results.rs` | [`RedisQueue::results`] | [`ResultsError`] |
//! | completion notices on a connection of their own (long followers) | `notices.rs` | [`RedisQueue::notice_reader`] | [`NoticeError`] |
//! | dead letters, status, server figures | `admin.rs` | [`RedisQueue::admin`] | [`AdminError`] |
//! | chunked blobs | `blobs.rs` | [`RedisQueue::blobs`] | [`BlobError`] |
//! | tenants and their tokens | `tenants.rs` | [`RedisQueue::tenants`] | [`TenantError`] |
//! | admission: backlogs, dispatcher role, dispatch, quotas | `admission.rs` | [`RedisQueue::admission`] | [`AdmissionError`] |
//! | locating lost jobs, recreating the group | `recovery.rs` | [`RedisQueue::recovery`] | [`RecoveryError`] |
//! | compiled module artifacts (the fleet's L3 cache) | `artifacts.rs` | [`RedisQueue::artifacts`] | [`ArtifactError`] |
//!
//! Every key is built in `keys.rs`, every script is loaded once in `scripts.rs`; the
//! transport failure all role errors share is [`StoreError`] (`error.rs`).
//!
//! Time is always the server's: stream idle times measure leases, and scripts read
//! `TIME` for due dates and trimming, so worker clock skew changes nothing.

use redis::{RedisError, Value};

use crate::queue::QueueError;

mod admin;
mod admission;
mod artifacts;
mod blobs;
mod blocking;
mod completions;
mod config;
mod connect;
mod connection;
mod error;
pub mod keys;
mod listing;
mod modules;
mod notices;
mod queue;
mod recovery;
mod reply;
mod results;
mod scripts;
mod tenants;

pub use admin::{
    Admin, AdminError, ConsumerInfo, GaugeReader, JobState, MAX_ADMITTED_READ, MAX_GAUGE_TENANTS,
    MAX_LISTED_MODULES, QueueCounters, QueueGauges, RedisStatus, StoredModule, TenantBacklog,
    TenantLoad, entry_id_ms, gauge_client, parse_info_memory,
};
pub use admission::{
    Admission, AdmissionError, Enqueued, Hold, Reservation, StoredBucket, envelope_job_id,
};
pub use artifacts::{
    ARTIFACT_TTL, ArtifactError, ArtifactId, Artifacts, MAX_ARTIFACT_BYTES, MAX_REFUSAL_BYTES,
    MAX_REFUSAL_TTL, PRECOMPILE_STREAM_CAP, PrecompileRequest, StoredArtifact, StoredRefusal,
};
pub use blobs::{BlobError, BlobReadStream, BlobReader, BlobWriteStream, BlobWriter, Blobs};
pub use completions::STAGE_THRESHOLD;
pub use config::{
    RedisConfig, RedisConfigError, Topology, redacted_url, scrubbed, seed_urls, validate_queue_name,
};
pub use connect::ConnectError;
pub use connection::{
    CLUSTER_MAX_RETRY_WAIT, CLUSTER_MIN_RETRY_WAIT, CLUSTER_RETRIES, CONNECT_TIMEOUT, Connection,
    Connector, home_route,
};
pub use error::StoreError;
pub use keys::Keys;
pub use listing::{
    API_ORIGIN, BatchSummary, BatchTotals, JobSummary, ListedBatchJob, Listing, ListingError,
    MAX_PAGE, ModuleHold, ORIGIN_FIELD, Page,
};
pub use modules::{ModulePut, ModuleRemoved, ModuleStoreError, Modules};
pub use notices::{NoticeError, NoticeReader};
pub use queue::{ClaimErrorHook, ClaimStep};
pub use recovery::{Recovery, RecoveryError, Whereabouts};
pub use results::{
    BatchCancelled, BatchCounts, BatchJob, CANCELLED, Cancelled, JobRecord, Results, ResultsError,
};
pub use tenants::{TenantError, Tenants};

/// The consumer group every worker of a queue joins.
const GROUP: &str = "workers";
/// The stream field that holds an envelope.
const ENVELOPE_FIELD: &[u8] = b"e";

/// The connection to one queue's Redis, its configuration and keys: the core every
/// role works over. Implements [`Queue`](crate::queue::Queue); the other roles are
/// reached through [`Self::modules`], [`Self::results`], [`Self::admin`],
/// [`Self::blobs`], [`Self::tenants`], [`Self::admission`], [`Self::recovery`] and
/// [`Self::artifacts`].
pub struct RedisQueue {
    config: RedisConfig,
    keys: Keys,
    conn: Connection,
    /// Blocking reads get their own connection: a `BLOCK` holds up everything behind it.
    blocking: blocking::BlockingConnection,
    /// The claim side's state (completion flusher, maintenance clocks).
    claims: queue::ClaimState,
}

impl RedisQueue {
    /// Connects (reconnecting by itself later when Redis goes away) and makes sure the
    /// job stream and its consumer group exist. A caller that must tell refused
    /// credentials from an unreachable server uses [`Self::connect_checked`].
    pub async fn connect(config: RedisConfig) -> Result<Self, QueueError> {
        Ok(Self::connect_checked(config).await?)
    }

    /// As [`Self::connect`], saying why it failed: an unusable configuration or URL,
    /// refused credentials (never worth retrying) or an unreachable server (perhaps
    /// worth it). No message holds the URL's password.
    pub async fn connect_checked(config: RedisConfig) -> Result<Self, ConnectError> {
        let connector = Connector::new(&config)?;
        let failed = |e: RedisError| ConnectError::from_redis(&e, &config.url);
        let conn = connector.commands_checked(&config.url).await?;
        // No response timeout of its own (a reply takes as long as the block): each read
        // is bounded by its block plus this margin instead.
        let blocking = blocking::BlockingConnection::connect(connector, config.response_timeout)
            .await
            .map_err(failed)?;
        let keys = Keys::new(&config.queue);
        let claims = queue::ClaimState::start(conn.clone(), keys.clone(), config.clone());
        let queue = RedisQueue {
            config,
            keys,
            conn,
            blocking,
            claims,
        };
        // The first command: where a server that wants a password, or an ACL user
        // without the queue's commands, says so (NOAUTH, NOPERM).
        queue
            .create_group()
            .await
            .map_err(|e| ConnectError::from_redis(&e, &queue.config.url))?;
        Ok(queue)
    }

    /// A new connection for blocking reads, set up exactly as the queue's own (for a
    /// long follower that must not queue behind, or in front of, the queue's other
    /// blocking reads).
    async fn new_blocking_connection(&self) -> Result<blocking::BlockingConnection, ConnectError> {
        let connector = Connector::new(&self.config)?;
        blocking::BlockingConnection::connect(connector, self.config.response_timeout)
            .await
            .map_err(|e| ConnectError::from_redis(&e, &self.config.url))
    }

    /// The queue's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The shared multiplexed connection (one server's or a cluster's), for tests that
    /// corrupt or inspect keys on purpose. Sluice's own code sends every command
    /// through the role types.
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    /// The module store.
    pub fn modules(&self) -> Modules<'_> {
        Modules { q: self }
    }

    /// Completion notices, stored results, job and batch records.
    pub fn results(&self) -> Results<'_> {
        Results { q: self }
    }

    /// Dead letters, status and server figures.
    pub fn admin(&self) -> Admin<'_> {
        Admin { q: self }
    }

    /// Chunked blobs.
    pub fn blobs(&self) -> Blobs<'_> {
        Blobs { q: self }
    }

    /// Tenants and their tokens.
    pub fn tenants(&self) -> Tenants<'_> {
        Tenants { q: self }
    }

    /// Backlogs, the dispatcher role, dispatch and quotas.
    pub fn admission(&self) -> Admission<'_> {
        Admission { q: self }
    }

    /// Listing jobs, batches, modules and tenants a page at a time.
    pub fn listing(&self) -> Listing<'_> {
        Listing { q: self }
    }

    /// Locating lost jobs and recreating the consumer group.
    pub fn recovery(&self) -> Recovery<'_> {
        Recovery { q: self }
    }

    /// Compiled module artifacts shared by the fleet.
    pub fn artifacts(&self) -> Artifacts<'_> {
        Artifacts { q: self }
    }

    /// Makes sure the job stream and its consumer group exist.
    async fn ensure_group(&self) -> Result<(), StoreError> {
        self.create_group().await.map_err(error::unavailable)
    }

    /// Creates the job stream and its consumer group unless they exist.
    async fn create_group(&self) -> Result<(), RedisError> {
        let created: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.jobs)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
