//! A fleet for a test: a real redis-server, a queue client on one named queue with a
//! runtime to drive it, and real `sluice-worker serve` processes started on demand.
//! Everything it starts is stopped when dropped (workers are the caller's to hold).

use std::process::Command;

use sluice_shared::ModuleHash;
use sluice_shared::queue::redis::{RedisConfig, RedisQueue, Reservation};
use tokio::runtime::Runtime;

use crate::{RedisServer, WorkerProcess, bin, connect, runtime};

/// Enqueues `jobs` as one API batch of `tenant` (into its backlog, with job and batch
/// records, as `POST /v1/batches` does); returns the batch's id.
pub async fn api_batch(queue: &RedisQueue, tenant: &str, jobs: &[sluice_shared::Job]) -> String {
    let batch = uuid::Uuid::now_v7().to_string();
    queue
        .admission()
        .enqueue_owned(jobs, tenant, Some(&batch))
        .await
        .unwrap();
    batch
}

/// Admits up to `max` of `tenant`'s backlogged jobs onto the job stream now, as the
/// dispatcher would (holding its role as `test`); returns how many were admitted.
pub async fn admit(queue: &RedisQueue, tenant: &str, max: usize) -> usize {
    queue
        .admission()
        .hold_dispatcher("test", std::time::Duration::from_secs(60))
        .await
        .expect("hold the dispatcher role");
    queue
        .admission()
        .dispatch("test", tenant, max)
        .await
        .expect("dispatch")
        .len()
}

/// A fresh redis-server and an async client on it, configured by `configure` from the
/// defaults for the server's URL.
pub async fn fresh_queue(configure: impl FnOnce(&mut RedisConfig)) -> (RedisServer, RedisQueue) {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    configure(&mut config);
    let queue = RedisQueue::connect(config).await.expect("connect");
    (server, queue)
}

/// A Redis server and a client on one queue of it. Fields drop in order: the client,
/// its runtime, then the server.
pub struct Fleet {
    /// The queue client.
    pub queue: RedisQueue,
    /// A two-thread runtime to drive `queue` from sync test code.
    pub rt: Runtime,
    /// The server.
    pub redis: RedisServer,
    name: String,
}

impl Fleet {
    /// Stored bytes counted for `tenant` in its quota window (a zero-byte
    /// reservation, which changes nothing).
    pub fn stored_bytes(&self, tenant: &str) -> u64 {
        match self
            .rt
            .block_on(self.queue.admission().reserve_stored(tenant, 0, u64::MAX))
            .unwrap()
        {
            Reservation::Granted { used, .. } => used,
            other => panic!("a read of the usage was refused: {other:?}"),
        }
    }

    /// A server without persistence and a client on queue `name`.
    pub fn start(name: &str) -> Self {
        Self::on(RedisServer::start(), name)
    }

    /// A server that logs every write to an append-only file (a restart loses
    /// nothing) and a client on queue `name`.
    pub fn start_with_aof(name: &str) -> Self {
        Self::on(RedisServer::start_with_aof(), name)
    }

    fn on(redis: RedisServer, name: &str) -> Self {
        let rt = runtime();
        let queue = rt.block_on(connect(&redis.url(), name));
        Fleet {
            queue,
            rt,
            redis,
            name: name.to_owned(),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.redis.url()
    }

    /// Stores `module` (WAT or WASM) in the queue's module store, unnamed.
    pub fn put_module(&self, module: &[u8]) -> ModuleHash {
        self.rt
            .block_on(self.queue.modules().put(module, None))
            .expect("store the module")
    }

    /// A `sluice ARGS --redis <url> --queue <name>` command on this fleet.
    pub fn sluice(&self, args: &[&str]) -> Command {
        let mut command = bin("sluice");
        command
            .args(args)
            .args(["--redis", &self.url(), "--queue", &self.name]);
        command
    }

    /// Starts worker `consumer` on the queue with `extra` flags, once it is ready.
    pub fn worker(&self, consumer: &str, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::start(&self.url(), &self.name, consumer, extra)
    }

    /// Starts `n` workers named `<prefix>0`, `<prefix>1`, … with `extra` flags.
    pub fn workers(&self, prefix: &str, n: usize, extra: &[&str]) -> Vec<WorkerProcess> {
        (0..n)
            .map(|i| self.worker(&format!("{prefix}{i}"), extra))
            .collect()
    }
}

/// Asserts that `result` is a run refused for its tenant's stored-bytes quota: an
/// `output_limit` outcome naming `max_stored_bytes`, with no output kept.
pub fn assert_refused_over_stored_quota(result: &sluice_shared::JobResult) {
    assert_eq!(
        result.outcome.kind(),
        sluice_shared::OutcomeKind::OutputLimit,
        "{result:?}"
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("max_stored_bytes"), "{stderr}");
    assert!(
        matches!(&result.output, sluice_shared::JobOutput::Inline(bytes) if bytes.is_empty()),
        "a refused job keeps no output: {:?}",
        result.output
    );
}
