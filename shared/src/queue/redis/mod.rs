//! The Redis backend: the [`Queue`] on Redis Streams, plus the blob, module, result and
//! dead-letter stores a fleet shares. Every Redis command and script Sluice sends lives
//! in this module; `docs/redis-protocol.md` describes the key schema and argues crash
//! safety.
//!
//! All keys of one queue share the hash tag `{queue}` (`sluice:{default}:jobs`, …), so a
//! queue lives on one Redis Cluster slot and its scripts may touch all its keys.
//!
//! Time is always the server's: stream idle times measure leases, and scripts read
//! `TIME` for due dates and trimming, so worker clock skew changes nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Claimed, Completion, DeadLetter, Lease, Queue, QueueError, QueueStats, ReleaseKind};
use crate::codec::{self, DecodeError};
use crate::job::{Job, JobId, ModuleHash};
use crate::outcome::{JobResult, OutcomeKind};

mod admission;
mod blob;
mod blocking;
mod locate;
mod modules_store;
mod outcomes;
mod quotas;
mod records;
mod tenants;
mod validate;

pub use admission::{AdmissionError, Hold, envelope_job_id};
pub use blob::{BlobReadStream, BlobReader, BlobWriteStream, BlobWriter};
pub use locate::Whereabouts;
pub use modules_store::{ModulePut, ModuleRemoved};
pub use outcomes::BatchCounts;
pub use quotas::Reservation;
pub use records::{Cancelled, Enqueued, JobRecord};
pub use validate::{RedisConfigError, validate_queue_name};

/// The consumer group every worker of a queue joins.
const GROUP: &str = "workers";
/// The stream field that holds an envelope.
const ENVELOPE_FIELD: &[u8] = b"e";

/// How to reach Redis and how long things are kept.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    pub url: String,
    /// The queue's name; its keys are `sluice:{name}:…`.
    pub queue: String,
    /// How long results are kept.
    pub result_ttl: Duration,
    /// How long completion notices are kept (submitters follow them).
    pub notice_ttl: Duration,
    /// How long dead letters are kept (trimmed by age, never by count).
    pub dead_ttl: Duration,
    /// How long input and output blobs are kept.
    pub blob_ttl: Duration,
    /// Inputs and outputs up to this size travel inline; larger ones are chunked blobs.
    pub inline_limit: usize,
    /// Blob chunk size.
    pub chunk_bytes: usize,
    /// How often a claimer promotes due delayed jobs and takes over expired leases.
    pub maintenance_interval: Duration,
    /// Most completions sent in one script call.
    pub completion_batch: usize,
    /// Time allowed for a (non-blocking) command's reply.
    pub response_timeout: Duration,
    /// PEM certificate(s) of the CA that signed the server's TLS certificate, for a
    /// `rediss://` URL whose server is not signed by a public CA.
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl RedisConfig {
    /// Defaults for `url`: queue `default`, results and blobs kept a day, dead letters a
    /// week, 256 KiB inline limit, 1 MiB chunks.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            queue: "default".into(),
            result_ttl: Duration::from_secs(24 * 3600),
            notice_ttl: Duration::from_secs(3600),
            dead_ttl: Duration::from_secs(7 * 24 * 3600),
            blob_ttl: Duration::from_secs(24 * 3600),
            inline_limit: 256 << 10,
            chunk_bytes: 1 << 20,
            maintenance_interval: Duration::from_millis(100),
            completion_batch: 256,
            response_timeout: Duration::from_secs(10),
            tls_ca_pem: None,
        }
    }
}

/// The keys of one queue.
#[derive(Clone, Debug)]
pub struct Keys {
    pub(crate) prefix: String,
    pub jobs: String,
    pub delayed: String,
    pub stats: String,
    pub done: String,
    pub dead: String,
    pub workers: String,
}

impl Keys {
    fn new(queue: &str) -> Self {
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

    fn result(&self, job: JobId) -> String {
        format!("{}result:{job}", self.prefix)
    }

    /// The key a job's result is stored under.
    pub fn result_key(&self, job: JobId) -> String {
        self.result(job)
    }

    fn module(&self, hash: &ModuleHash) -> String {
        format!("{}module:{hash}", self.prefix)
    }

    fn alias(&self, name: &str) -> String {
        format!("{}alias:{name}", self.prefix)
    }

    fn blob_meta(&self, id: &str) -> String {
        format!("{}blob:{id}", self.prefix)
    }

    fn blob_chunk(&self, id: &str, index: u64) -> String {
        format!("{}blob:{id}:{index}", self.prefix)
    }
}

struct Scripts {
    promote: Script,
    takeover: Script,
    owner: Script,
    complete: Script,
    retry: Script,
    dead: Script,
    release: Script,
    dlq_retry: Script,
}

/// A script with the key checks of `check.lua` in front (see that file).
fn checked_script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("scripts/check.lua")))
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            promote: Script::new(include_str!("scripts/promote.lua")),
            takeover: checked_script(include_str!("scripts/takeover.lua")),
            owner: checked_script(include_str!("scripts/owner.lua")),
            complete: checked_script(include_str!("scripts/complete.lua")),
            retry: checked_script(include_str!("scripts/retry.lua")),
            dead: checked_script(include_str!("scripts/dead.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            dlq_retry: checked_script(include_str!("scripts/dlq_retry.lua")),
        }
    }
}

/// A failed command as a queue error. A script's `CORRUPT` reply (a key of the queue
/// holds something foreign; the script changed nothing) names the key, and is a
/// protocol error: retrying does not help until an operator repairs the key.
fn unavailable(e: RedisError) -> QueueError {
    if e.code() == Some("CORRUPT") {
        return corrupt(e.detail().unwrap_or_default());
    }
    QueueError::Unavailable(e.to_string())
}

/// A key of the queue holds something this build did not write there.
fn corrupt(what: &str) -> QueueError {
    QueueError::Protocol(format!("corrupt Redis contents: {what}"))
}

/// A failed command on `key` as a queue error that names the key.
fn on_key(key: &str) -> impl Fn(RedisError) -> QueueError + '_ {
    move |e| {
        if e.code() == Some("WRONGTYPE") {
            corrupt(&format!("{key} holds a value of the wrong type"))
        } else {
            match unavailable(e) {
                QueueError::Unavailable(m) => QueueError::Unavailable(format!("{key}: {m}")),
                other => other,
            }
        }
    }
}

fn protocol(what: impl Into<String>) -> QueueError {
    QueueError::Protocol(what.into())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// One completion waiting for the batch flusher.
struct PendingCompletion {
    lease: Lease,
    result: JobResult,
    done: oneshot::Sender<Result<Completion, QueueError>>,
}

/// The [`Queue`] on Redis, with the fleet's shared stores.
pub struct RedisQueue {
    config: RedisConfig,
    keys: Keys,
    conn: ConnectionManager,
    /// Blocking reads get their own connection: a `BLOCK` holds up everything behind it.
    blocking: blocking::BlockingConnection,
    scripts: std::sync::Arc<Scripts>,
    completions: mpsc::Sender<PendingCompletion>,
    last_maintenance: Mutex<Option<Instant>>,
    /// Where the next takeover scan of the pending list starts: `XAUTOCLAIM` looks at
    /// a bounded number of entries per call, so scanning always from the start could
    /// never reach expired entries behind many live ones.
    takeover_cursor: Mutex<String>,
    /// When a failing maintenance step was last logged: it fails on every claim until
    /// repaired, and one line per few seconds says as much as thousands.
    maintenance_warned: Mutex<HashMap<&'static str, Instant>>,
}

/// Counters and sizes of a queue, for `sluice status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RedisStatus {
    pub stats: QueueStats,
    pub retried: u64,
    pub duplicates: u64,
    /// Completions refused because the job had moved on (retried, dead-lettered,
    /// released or cancelled) before a stale holder finished it.
    pub stale: u64,
    pub dlq_retried: u64,
    /// Consumers of the group with their pending (leased) counts and idle times.
    pub consumers: Vec<ConsumerInfo>,
}

/// One consumer of the queue's group.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

impl RedisQueue {
    /// Connects (reconnecting by itself later when Redis goes away) and makes sure the
    /// job stream and its consumer group exist.
    pub async fn connect(config: RedisConfig) -> Result<Self, QueueError> {
        config
            .validate()
            .map_err(|e| QueueError::Protocol(format!("Redis configuration: {e}")))?;
        // rustls needs one process-wide crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match &config.tls_ca_pem {
            Some(ca) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(config.url.as_str()),
        }
        .map_err(unavailable)?;
        let manager = |timeout: Option<Duration>| {
            let mut cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            cfg = cfg.set_response_timeout(timeout);
            cfg
        };
        let conn = client
            .get_connection_manager_with_config(manager(Some(config.response_timeout)))
            .await
            .map_err(unavailable)?;
        // No response timeout of its own (a reply takes as long as the block): each read
        // is bounded by its block plus this margin instead.
        let blocking =
            blocking::BlockingConnection::connect(client, manager(None), config.response_timeout)
                .await
                .map_err(unavailable)?;
        let keys = Keys::new(&config.queue);
        let scripts = std::sync::Arc::new(Scripts::load());
        let (completions, pending) = mpsc::channel(config.completion_batch * 4);
        tokio::spawn(flush_completions(
            pending,
            conn.clone(),
            keys.clone(),
            scripts.clone(),
            config.clone(),
        ));
        let queue = RedisQueue {
            config,
            keys,
            conn,
            blocking,
            scripts,
            completions,
            last_maintenance: Mutex::new(None),
            takeover_cursor: Mutex::new("0-0".to_owned()),
            maintenance_warned: Mutex::new(HashMap::new()),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// The queue's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// A connection for callers' own commands (shares the multiplexed connection).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn ensure_group(&self) -> Result<(), QueueError> {
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
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Promotes due delayed jobs and takes over entries idle longer than `lease_for`,
    /// at most once per maintenance interval. A step that fails is logged with the key
    /// it concerns and skipped, so a corrupt delayed set or job stream never stops
    /// claims of new jobs.
    async fn maintain(&self, consumer: &str, max: usize, lease_for: Duration) -> Vec<Claimed> {
        {
            let mut last = self
                .last_maintenance
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.config.maintenance_interval) {
                return Vec::new();
            }
            *last = Some(Instant::now());
        }
        let promoted: Result<i64, RedisError> = self
            .scripts
            .promote
            .key(&self.keys.delayed)
            .key(&self.keys.jobs)
            .arg(1000)
            .arg(millis(self.config.result_ttl))
            .arg(crate::codec::FORMAT_VERSION)
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(e) = promoted {
            self.maintenance_failed(
                "promote",
                &self.keys.delayed,
                &on_key(&self.keys.delayed)(e),
            );
        }
        match self.take_over(consumer, max, lease_for).await {
            Ok(claimed) => claimed,
            Err(e) => {
                self.maintenance_failed("takeover", &self.keys.jobs, &e);
                Vec::new()
            }
        }
    }

    fn maintenance_failed(&self, step: &'static str, key: &str, error: &QueueError) {
        let mut warned = self
            .maintenance_warned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if warned
            .get(step)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        warned.insert(step, Instant::now());
        tracing::warn!(step, key, %error, "queue maintenance step failed; claiming new jobs goes on");
    }

    /// Takes over entries idle longer than `lease_for`, with their delivery counts, in
    /// one script (`takeover.lua`): either all of it happens and is returned, or none.
    async fn take_over(
        &self,
        consumer: &str,
        max: usize,
        lease_for: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        let cursor = self
            .takeover_cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let reply: Result<Value, RedisError> = self
            .scripts
            .takeover
            .key(&self.keys.jobs)
            .arg(GROUP)
            .arg(consumer)
            .arg(millis(lease_for))
            .arg(&cursor)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await;
        let reply = match reply {
            // Redis lost the group (with the stream): recreate it here, or once claims
            // back off past the maintenance interval every claim fails on this step
            // and never reaches the read that would recreate it. (An error raised by
            // `redis.call` inside the script keeps its NOGROUP prefix on Redis 7.)
            Err(e) if is_nogroup(&e) => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other.map_err(|e| self.group_error(e))?,
        };
        let Value::Array(parts) = reply else {
            return Err(protocol("takeover reply is not an array"));
        };
        if let Some(next) = parts.first().and_then(bytes_of) {
            *self
                .takeover_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = String::from_utf8_lossy(&next).into_owned();
        }
        let Some(Value::Array(rows)) = parts.get(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(cols) = row else { continue };
            let Some(id) = cols.first().and_then(bytes_of) else {
                continue;
            };
            let mut fields = Vec::new();
            if let Some(Value::Array(kv)) = cols.get(1) {
                for pair in kv.chunks(2) {
                    if let [k, v] = pair
                        && let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v))
                    {
                        fields.push((k, v));
                    }
                }
            }
            let deliveries = match cols.get(2) {
                Some(Value::Int(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
                _ => 1,
            };
            out.push(claimed(
                String::from_utf8_lossy(&id).into_owned(),
                fields,
                deliveries,
                consumer,
            ));
        }
        Ok(out)
    }

    /// Runs one of the scripts that act on an entry only while `lease` still holds it
    /// (`owner.lua`, `retry.lua`, `release.lua`: KEYS = the job stream, then
    /// `extra_keys`; ARGV = group, consumer, entry id, deliveries, then `extra_args`).
    /// Their `0` reply is a lost lease.
    async fn as_holder(
        &self,
        script: &Script,
        lease: &Lease,
        extra_keys: &[&str],
        extra_args: Vec<Vec<u8>>,
    ) -> Result<(), QueueError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.keys.jobs);
        for key in extra_keys {
            invocation.key(*key);
        }
        invocation
            .arg(GROUP)
            .arg(&lease.consumer)
            .arg(&lease.entry_id)
            .arg(lease.deliveries);
        for arg in extra_args {
            invocation.arg(arg);
        }
        let held: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if held == 1 {
            Ok(())
        } else {
            Err(QueueError::LeaseLost {
                entry_id: lease.entry_id.clone(),
            })
        }
    }

    fn group_error(&self, e: RedisError) -> QueueError {
        if is_nogroup(&e) {
            QueueError::Unavailable(format!(
                "consumer group missing on {} (Redis lost its data?): {e}",
                self.keys.jobs
            ))
        } else {
            on_key(&self.keys.jobs)(e)
        }
    }

    async fn read_new(
        &self,
        consumer: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Claimed>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS").arg(&self.keys.jobs).arg(">");
        let mut reply: Result<Value, RedisError> = self.blocking.query(&cmd, block).await;
        if reply
            .as_ref()
            .is_err_and(|e| e.is_io_error() || e.is_connection_dropped())
        {
            // The connection manager reconnects after the error that revealed the broken
            // connection; one more try spares the caller a backoff. (A read whose reply
            // was lost leaves its entries pending, to be taken over after the lease.)
            reply = self.blocking.query(&cmd, block).await;
        }
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                // Redis restarted without our data: recreate the group and carry on.
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(on_key(&self.keys.jobs)(e)),
        };
        let streams = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams,
            Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
            other => return Err(protocol(format!("XREADGROUP reply: {other:?}"))),
        };
        let mut out = Vec::new();
        for stream in streams {
            let entries = match &stream {
                Value::Array(parts) if parts.len() == 2 => parse_entries(&parts[1])?,
                entries @ Value::Array(_) => parse_entries(entries)?,
                other => return Err(protocol(format!("XREADGROUP stream: {other:?}"))),
            };
            out.extend(
                entries
                    .into_iter()
                    .map(|(id, fields)| claimed(id, fields, 1, consumer)),
            );
        }
        Ok(out)
    }

    /// Adds jobs to run at `due_ms` (milliseconds since the Unix epoch) or later.
    pub async fn schedule(&self, jobs: &[Job], due_ms: u64) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for job in jobs {
            pipe.cmd("ZADD")
                .arg(&self.keys.delayed)
                .arg(due_ms)
                .arg(codec::encode(job))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(on_key(&self.keys.delayed))
    }

    /// The server's clock, in milliseconds since the Unix epoch.
    pub async fn server_time_ms(&self) -> Result<u64, QueueError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Stores a module's bytes under their hash (and `alias`, if given).
    pub async fn put_module(
        &self,
        wasm: &[u8],
        alias: Option<&str>,
    ) -> Result<ModuleHash, QueueError> {
        let hash = ModuleHash::of(wasm);
        let key = self.keys.module(&hash);
        let mut pipe = redis::pipe();
        // Not NX: the key is content-addressed, so overwriting changes nothing unless
        // the stored value was damaged, and then an upload repairs it.
        pipe.cmd("SET").arg(&key).arg(wasm).ignore();
        if let Some(alias) = alias {
            pipe.cmd("SET")
                .arg(self.keys.alias(alias))
                .arg(hash.to_hex())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(on_key(&key))?;
        Ok(hash)
    }

    /// A module's bytes, if stored. Bytes that do not hash to `hash` are a corrupt key
    /// (an error naming it), not a module: callers must not cache them as invalid, since
    /// an upload of the real module repairs the key.
    pub async fn get_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, QueueError> {
        let key = self.keys.module(hash);
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&key))?;
        match bytes {
            Some(b) if ModuleHash::of(&b) != *hash => Err(corrupt(&format!(
                "{key} holds {} bytes that do not hash to its name",
                b.len()
            ))),
            other => Ok(other),
        }
    }

    /// The hash an alias (or a hash in hex) names.
    pub async fn resolve_module(&self, name: &str) -> Result<Option<ModuleHash>, QueueError> {
        if let Ok(hash) = name.parse::<ModuleHash>() {
            return Ok(Some(hash));
        }
        let key = self.keys.alias(name);
        let hex: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&key))?;
        Ok(hex.and_then(|h| h.parse().ok()))
    }

    /// A position in the completion-notice stream meaning "now": notices from it on are
    /// those of completions after this call (stream ids are the server's clock).
    pub async fn notices_from_now(&self) -> Result<String, QueueError> {
        Ok(format!("{}-0", self.server_time_ms().await?))
    }

    /// Completion notices after stream id `after` (`"0"` for all, `"$"` for new ones),
    /// waiting up to `block`: the last id read and each `(job id, outcome kind)`.
    pub async fn completions(
        &self,
        after: &str,
        block: Duration,
    ) -> Result<(String, Vec<(JobId, OutcomeKind)>), QueueError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(10_000)
            .arg("BLOCK")
            .arg(millis(block))
            .arg("STREAMS")
            .arg(&self.keys.done)
            .arg(after);
        let reply = self
            .blocking
            .query(&cmd, Some(block))
            .await
            .map_err(on_key(&self.keys.done))?;
        let mut last = after.to_owned();
        let mut notices = Vec::new();
        let streams = match reply {
            Value::Nil => return Ok((last, notices)),
            Value::Array(streams) => streams,
            Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
            other => return Err(protocol(format!("XREAD reply: {other:?}"))),
        };
        for stream in streams {
            let Value::Array(parts) = &stream else {
                continue;
            };
            let Some(entries) = parts.get(1) else {
                continue;
            };
            for (id, fields) in parse_entries(entries)? {
                for (job, kind) in fields {
                    let job = std::str::from_utf8(&job).ok().and_then(|s| s.parse().ok());
                    let kind = std::str::from_utf8(&kind)
                        .ok()
                        .and_then(|k| OutcomeKind::ALL.into_iter().find(|c| c.as_str() == k));
                    if let (Some(job), Some(kind)) = (job, kind) {
                        notices.push((job, kind));
                    }
                }
                last = id;
            }
        }
        Ok((last, notices))
    }

    /// Puts dead letters back on the queue: one (`Some(id)`) or all.
    /// Only failed jobs go back: a letter whose job has a stored success, or one of
    /// whose keys is corrupt, stays (logged; an error when it was the one asked for).
    pub async fn dlq_retry(&self, id: Option<&str>) -> Result<u64, QueueError> {
        // All of them: page by page (`DLQ_PAGE` letters a script), up to the newest
        // letter at the start, so no one script blocks Redis over days of letters.
        let (mut start, stop) = match id {
            Some(id) => (id.to_owned(), id.to_owned()),
            None => {
                let newest: Value = redis::cmd("XREVRANGE")
                    .arg(&self.keys.dead)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(on_key(&self.keys.dead))?;
                match parse_entries(&newest)?.into_iter().next() {
                    Some((newest, _)) => ("-".to_owned(), newest),
                    None => return Ok(0),
                }
            }
        };
        let (mut moved, mut problems) = (0u64, Vec::new());
        loop {
            let reply: Vec<Value> = self
                .scripts
                .dlq_retry
                .key(&self.keys.dead)
                .key(&self.keys.jobs)
                .key(&self.keys.stats)
                .arg(id.unwrap_or(""))
                .arg(&self.keys.prefix)
                .arg(millis(self.config.result_ttl))
                .arg(&start)
                .arg(&stop)
                .arg(DLQ_PAGE)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            match reply.first() {
                Some(Value::Int(n)) => moved += u64::try_from(*n).unwrap_or(0),
                _ => return Err(protocol("dlq_retry.lua reply has no count")),
            }
            let next = reply
                .get(1)
                .and_then(bytes_of)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            problems.extend(
                reply
                    .iter()
                    .skip(2)
                    .filter_map(bytes_of)
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
            );
            if id.is_some() || next.is_empty() {
                break;
            }
            start = format!("({next}");
        }
        if id.is_some() && moved == 0 && !problems.is_empty() {
            return Err(protocol(format!(
                "dead letter not retried: {}",
                problems.join("; ")
            )));
        }
        for problem in &problems {
            tracing::warn!(%problem, "dead letter not retried");
        }
        Ok(moved)
    }

    /// Deletes every dead letter.
    pub async fn dlq_purge(&self) -> Result<u64, QueueError> {
        let len: u64 = redis::cmd("XLEN")
            .arg(&self.keys.dead)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&self.keys.dead))?;
        redis::cmd("DEL")
            .arg(&self.keys.dead)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(on_key(&self.keys.dead))?;
        Ok(len)
    }

    /// Counters, depths and consumers.
    pub async fn status(&self) -> Result<RedisStatus, QueueError> {
        let stats = self.stats().await?;
        let counters: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.stats)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&self.keys.stats))?;
        let get = |k: &str| counters.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let consumers: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.keys.jobs)
            .arg(GROUP)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap_or(Value::Nil);
        let mut infos = Vec::new();
        if let Value::Array(items) = consumers {
            for item in items {
                let fields = flat_pairs(&item);
                let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
                infos.push(ConsumerInfo {
                    name: text("name"),
                    pending: text("pending").parse().unwrap_or(0),
                    idle_ms: text("idle").parse().unwrap_or(0),
                });
            }
        }
        Ok(RedisStatus {
            stats,
            retried: get("retried"),
            duplicates: get("duplicates"),
            stale: get("stale"),
            dlq_retried: get("dlq_retried"),
            consumers: infos,
        })
    }

    /// Writes a blob from `reader` in chunks; returns its id and length.
    pub fn blob_writer(&self) -> BlobWriter {
        BlobWriter::new(
            self.conn.clone(),
            self.keys.clone(),
            self.config.chunk_bytes,
            self.config.blob_ttl,
        )
    }

    /// Reads a blob chunk by chunk, prefetching one chunk ahead.
    pub fn blob_reader(&self, id: &str) -> BlobReader {
        BlobReader::new(self.conn.clone(), self.keys.clone(), id.to_owned())
    }

    /// A blob as a blocking `Read` (for code on blocking threads); `handle` is the
    /// runtime the fetches run on.
    pub fn blob_read_stream(&self, handle: tokio::runtime::Handle, id: &str) -> BlobReadStream {
        let _runtime = handle.enter();
        BlobReadStream::new(handle.clone(), self.blob_reader(id))
    }

    /// A new blob as a blocking `Write` (for code on blocking threads).
    pub fn blob_write_stream(&self, handle: tokio::runtime::Handle) -> BlobWriteStream {
        BlobWriteStream::new(handle, self.blob_writer())
    }
}

fn claimed(
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    deliveries: u32,
    consumer: &str,
) -> Claimed {
    let delivery = fields
        .into_iter()
        .find(|(k, _)| k == ENVELOPE_FIELD)
        .map(|(_, v)| v)
        .ok_or_else(|| DecodeError::Malformed("stream entry has no envelope field `e`".into()))
        .and_then(|bytes| codec::decode(&bytes));
    Claimed {
        lease: Lease {
            entry_id: id,
            job_id: delivery.as_ref().ok().map(|job| job.id),
            deliveries,
            consumer: consumer.to_owned(),
        },
        delivery,
    }
}

/// An integer reply (or a numeric string, as `HGET` returns counters); 0 otherwise.
fn count_of(v: &Value) -> u64 {
    match v {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Dead letters looked at by one `dlq_retry.lua` call.
const DLQ_PAGE: usize = 500;

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// A stream entry's field-value pairs.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `[[id, [k, v, …]], …]` → `(id, [(k, v), …])`; an entry deleted while pending (nil
/// fields) comes back with no fields, and so decodes as a missing envelope.
fn parse_entries(v: &Value) -> Result<Vec<(String, Fields)>, QueueError> {
    let Value::Array(entries) = v else {
        return Err(protocol(format!("stream entries: {v:?}")));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let Some(id) = parts.first().and_then(bytes_of) else {
            continue;
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        let mut fields = Vec::new();
        if let Some(Value::Array(kv)) = parts.get(1) {
            for pair in kv.chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v))
                {
                    fields.push((k, v));
                }
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// A flat `[k, v, k, v]` (or a map) reply as text.
fn flat_pairs(v: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    match v {
        Value::Array(kv) => {
            for pair in kv.chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v))
                {
                    out.insert(
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v)) {
                    out.insert(
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
        }
        _ => {}
    }
    out
}

/// Sends completions in batches: whatever has queued up while the previous batch was
/// in flight goes in the next script call, so under load one round trip completes many
/// jobs, and a lone completion goes at once.
async fn flush_completions(
    mut pending: mpsc::Receiver<PendingCompletion>,
    mut conn: ConnectionManager,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    config: RedisConfig,
) {
    let mut batch = Vec::with_capacity(config.completion_batch);
    while let Some(first) = pending.recv().await {
        batch.push(first);
        while batch.len() < config.completion_batch {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut invocation = scripts.complete.prepare_invoke();
        invocation
            .key(&keys.jobs)
            .key(&keys.stats)
            .key(&keys.done)
            .arg(GROUP)
            .arg(millis(config.result_ttl))
            .arg(millis(config.notice_ttl))
            .arg(&keys.prefix);
        for item in &batch {
            invocation
                .key(keys.result(item.result.job_id))
                .arg(&item.lease.entry_id)
                .arg(item.result.job_id.to_string())
                .arg(item.result.outcome.kind().as_str())
                .arg(codec::encode_value(&item.result))
                .arg(&item.lease.consumer);
        }
        // Redis may be restarting: keep trying for a while rather than fail the batch,
        // whose jobs would otherwise run again after their leases expire. A corrupt key
        // stays corrupt: no point waiting.
        let mut delay = Duration::from_millis(50);
        let mut outcome = invocation.invoke_async::<Vec<Value>>(&mut conn).await;
        for _ in 0..8 {
            match &outcome {
                Ok(_) => break,
                Err(e) if e.code() == Some("CORRUPT") => break,
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            outcome = invocation.invoke_async::<Vec<Value>>(&mut conn).await;
        }
        match outcome {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                for item in batch.drain(..) {
                    let status = match replies.next() {
                        Some(Value::Int(1)) => Ok(Completion::Recorded),
                        Some(Value::Int(0)) => Ok(Completion::AlreadyDone),
                        Some(Value::Int(2)) => Err(QueueError::LeaseLost {
                            entry_id: item.lease.entry_id.clone(),
                        }),
                        Some(other) => {
                            let text = bytes_of(&other).unwrap_or_default();
                            let text = String::from_utf8_lossy(&text);
                            let error = corrupt(text.strip_prefix("CORRUPT ").unwrap_or(&text));
                            tracing::warn!(job = %item.result.job_id, %error, "result not stored; the job stays queued");
                            Err(error)
                        }
                        None => Err(protocol("complete.lua replied for fewer jobs than sent")),
                    };
                    let _ = item.done.send(status);
                }
            }
            Err(e) => {
                let error = unavailable(e);
                tracing::warn!(jobs = batch.len(), %error, "results not stored; the jobs stay queued");
                for item in batch.drain(..) {
                    let _ = item.done.send(Err(match &error {
                        QueueError::Protocol(m) => QueueError::Protocol(m.clone()),
                        QueueError::Unavailable(m) => QueueError::Unavailable(m.clone()),
                        QueueError::LeaseLost { entry_id } => QueueError::LeaseLost {
                            entry_id: entry_id.clone(),
                        },
                    }));
                }
            }
        }
    }
}

impl Queue for RedisQueue {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        for chunk in jobs.chunks(1000) {
            let mut pipe = redis::pipe();
            for job in chunk {
                pipe.cmd("XADD")
                    .arg(&self.keys.jobs)
                    .arg("*")
                    .arg(ENVELOPE_FIELD)
                    .arg(codec::encode(job))
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(on_key(&self.keys.jobs))?;
        }
        Ok(())
    }

    async fn enqueue_raw(&self, envelope: Vec<u8>) -> Result<(), QueueError> {
        redis::cmd("XADD")
            .arg(&self.keys.jobs)
            .arg("*")
            .arg(ENVELOPE_FIELD)
            .arg(envelope)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(on_key(&self.keys.jobs))
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        let give_up = Instant::now() + wait;
        loop {
            let mut claimed = self.maintain(consumer, max, lease_for).await;
            if claimed.len() < max {
                let left = give_up.saturating_duration_since(Instant::now());
                // Blocking reads are cut into slices so expired leases and due delayed
                // jobs are noticed while waiting; new entries wake the read at once.
                let block = (!left.is_zero() && claimed.is_empty())
                    .then(|| left.min(self.config.maintenance_interval));
                match self.read_new(consumer, max - claimed.len(), block).await {
                    Ok(more) => claimed.extend(more),
                    // Entries already taken over are this consumer's now: dropping them
                    // would leave them to expire once more before anyone runs them.
                    Err(error) if !claimed.is_empty() => {
                        tracing::warn!(key = %self.keys.jobs, %error, "reading new jobs failed; returning the jobs taken over");
                        return Ok(claimed);
                    }
                    Err(error) => return Err(error),
                }
            }
            if !claimed.is_empty() || Instant::now() >= give_up {
                return Ok(claimed);
            }
        }
    }

    async fn extend_lease(&self, lease: &Lease, _lease_for: Duration) -> Result<(), QueueError> {
        self.as_holder(&self.scripts.owner, lease, &[], Vec::new())
            .await
    }

    async fn complete(&self, lease: &Lease, result: JobResult) -> Result<Completion, QueueError> {
        let (done, reply) = oneshot::channel();
        self.completions
            .send(PendingCompletion {
                lease: lease.clone(),
                result,
                done,
            })
            .await
            .map_err(|_| QueueError::Unavailable("completion flusher stopped".into()))?;
        reply
            .await
            .map_err(|_| QueueError::Unavailable("completion flusher stopped".into()))?
    }

    async fn retry(&self, lease: &Lease, job: &Job, delay: Duration) -> Result<(), QueueError> {
        // A duplicate copy failing after another copy's result was stored must not
        // run again: `retry.lua` checks the result key (reply 2, a lost lease here,
        // as for `dead.lua`).
        let result_key = self.keys.result(job.id);
        let keys = [
            self.keys.delayed.as_str(),
            self.keys.stats.as_str(),
            result_key.as_str(),
        ];
        let args = vec![millis(delay).to_string().into_bytes(), codec::encode(job)];
        self.as_holder(&self.scripts.retry, lease, &keys, args)
            .await
    }

    async fn dead_letter(&self, lease: &Lease, result: JobResult) -> Result<(), QueueError> {
        let result_key = lease
            .job_id
            .map_or_else(|| self.keys.stats.clone(), |id| self.keys.result(id));
        let moved: i64 = self
            .scripts
            .dead
            .key(&self.keys.jobs)
            .key(&self.keys.dead)
            .key(&self.keys.stats)
            .key(&self.keys.done)
            .key(result_key)
            .arg(GROUP)
            .arg(&lease.entry_id)
            .arg(millis(self.config.dead_ttl))
            .arg(millis(self.config.result_ttl))
            .arg(millis(self.config.notice_ttl))
            .arg(lease.job_id.map(|id| id.to_string()).unwrap_or_default())
            .arg(result.outcome.kind().as_str())
            .arg(result.outcome.to_string())
            .arg(result.attempt)
            .arg(codec::encode_value(&result))
            .arg(&lease.consumer)
            .arg(lease.deliveries)
            .arg(&self.keys.prefix)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if moved == 1 {
            Ok(())
        } else {
            // 0: another delivery holds it now; 2: it already has a result (a stale
            // holder's success), so it is finished and not dead.
            Err(QueueError::LeaseLost {
                entry_id: lease.entry_id.clone(),
            })
        }
    }

    async fn release(
        &self,
        lease: &Lease,
        job: Option<&Job>,
        kind: ReleaseKind,
    ) -> Result<(), QueueError> {
        // The fresh entry starts its delivery count again, so the envelope carries the
        // attempts made so far: those before this entry, its earlier deliveries, and
        // this one when it counts.
        let envelope = job.map(|job| {
            let uncounted = u32::from(kind == ReleaseKind::Drain);
            let mut again = job.clone();
            again.attempt = job
                .attempt
                .saturating_add(lease.deliveries)
                .saturating_sub(uncounted);
            codec::encode(&again)
        });
        // The job's record follows the fresh entry (`release.lua`), so a cancel finds
        // the queued job; without a job id the stream key stands in and is skipped.
        let record = lease
            .job_id
            .map_or_else(|| self.keys.jobs.clone(), |id| self.job_record_key(id));
        self.as_holder(
            &self.scripts.release,
            lease,
            &[record.as_str()],
            envelope.into_iter().collect(),
        )
        .await
    }

    async fn result(&self, job_id: JobId) -> Result<Option<JobResult>, QueueError> {
        let key = self.keys.result(job_id);
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&key))?;
        bytes
            .map(|b| codec::decode_value(&b).map_err(|e| corrupt(&format!("{key}: {e}"))))
            .transpose()
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.keys.dead)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&self.keys.dead))?;
        Ok(parse_entries(&reply)?
            .into_iter()
            .map(|(id, fields)| {
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name.as_bytes())
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let kind_name = field("kind");
                DeadLetter {
                    entry_id: id,
                    job_id: field("job").parse().ok(),
                    reason: field("reason"),
                    kind: OutcomeKind::ALL
                        .into_iter()
                        .find(|k| k.as_str() == kind_name)
                        .unwrap_or(OutcomeKind::BadEnvelope),
                    attempts: field("attempts").parse().unwrap_or(0),
                }
            })
            .collect())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(&self.keys.jobs);
        pipe.cmd("XPENDING").arg(&self.keys.jobs).arg(GROUP);
        pipe.cmd("ZCARD").arg(&self.keys.delayed);
        pipe.cmd("HGET").arg(&self.keys.stats).arg("completed");
        pipe.cmd("XLEN").arg(&self.keys.dead);
        let replies: Vec<Result<Value, RedisError>> = pipe
            .ignore_errors()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let mut replies = replies.into_iter();
        let mut next = |key: &str| -> Result<Value, QueueError> {
            replies
                .next()
                .unwrap_or(Ok(Value::Nil))
                .map_err(on_key(key))
        };
        // The job stream's depths are what claimers and the dispatcher act on: an
        // error there is an error. The other figures are reported; a corrupt key
        // among them reads as 0 (logged, by name) rather than stopping the callers.
        let len = count_of(&next(&self.keys.jobs)?);
        let leased = match next(&self.keys.jobs)? {
            Value::Array(parts) => parts.first().map_or(0, count_of),
            _ => 0,
        };
        let mut lenient = |key: &str| match next(key) {
            Ok(Value::Nil) => 0,
            Ok(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            Ok(Value::BulkString(b))
                if std::str::from_utf8(&b).is_ok_and(|t| t.parse::<u64>().is_ok()) =>
            {
                count_of(&Value::BulkString(b))
            }
            Ok(other) => {
                tracing::warn!(key, reply = ?other, "not a count; read as 0");
                0
            }
            Err(error) => {
                tracing::warn!(key, %error, "read as 0");
                0
            }
        };
        let delayed = lenient(&self.keys.delayed);
        let completed = lenient(&self.keys.stats);
        let dead = lenient(&self.keys.dead);
        Ok(QueueStats {
            ready: len.saturating_sub(leased),
            leased,
            delayed,
            completed,
            dead,
        })
    }
}

/// Whether Redis says the consumer group (or its stream) is gone, whether the command
/// ran alone or inside a script.
fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}
