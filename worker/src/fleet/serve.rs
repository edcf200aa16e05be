//! `sluice-worker serve` as a library call: connect to Redis (with backoff, until it
//! answers or the worker is told to stop; refused credentials or an unusable URL stop
//! it at once), build the sandbox (compiling in a limited
//! child process), start the `/metrics`, `/healthz` and `/readyz`
//! endpoint, and run the executor over the queue until shutdown (the endpoint answering
//! through the drain).

use std::sync::Arc;
use std::time::Duration;

use sluice_shared::RetryPolicy;
use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{ConnectError, RedisConfig, RedisQueue, Topology, redacted_url};
use tokio_util::sync::CancellationToken;

use super::RedisEnv;
use super::config::FleetConfig;
use crate::compile::{Compiler, EngineSettings};
use crate::config::SandboxConfig;
use crate::executor::{self, ExecutorConfig, ExecutorError};
use crate::health::{WorkerHealth, liveness_bound};
use crate::metrics::{self, WorkerMetrics};
use crate::sandbox::{Sandbox, SandboxError};

/// The message of the line `serve` logs once it is connected and about to claim (at
/// info, target [`READY_TARGET`]); `sluice bench` waits for it, as does the test harness
/// (tests/src/worker.rs, by its text).
pub const READY_MESSAGE: &str = "worker ready";

/// The log target of that line: this module.
pub const READY_TARGET: &str = module_path!();

/// The first wait after Redis could not be reached; it doubles up to
/// [`CONNECT_RETRY_MAX`].
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between connection attempts.
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why `serve` stopped other than by a shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The sandbox could not be built (wasmtime refused its configuration, or the
    /// epoch ticker thread could not start).
    #[error("cannot build the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// The executor stopped claiming: too many runs are stuck (the worker wants a
    /// restart).
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// The module cache could not be set up (its directory is unusable).
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// Redis refused the credentials, or the URL or queue settings are unusable:
    /// retrying cannot help, so the worker stops at start instead of retrying forever.
    #[error("cannot connect to {url}: {source}")]
    Redis {
        /// The Redis URL, its password redacted.
        url: String,
        /// Why.
        source: ConnectError,
    },
}

/// Runs jobs from the configured queue until `shutdown` is cancelled, then drains (see
/// [`executor::run`]) and returns `Ok`. While Redis is away at start it keeps trying,
/// and returns `Ok` if told to stop meanwhile; refused credentials
/// ([`ConnectError::Auth`]) or an unusable URL end it at once with
/// [`ServeError::Redis`].
pub async fn serve(config: FleetConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let Some(queue) = connect(redis_config(&config), &shutdown).await? else {
        return Ok(());
    };
    let metrics = WorkerMetrics::with_max_tenants(config.metrics_max_tenants);
    // The sandbox has as many pool slots, so the executor runs exactly this many.
    metrics
        .slots
        .set(i64::try_from(config.slots).unwrap_or(i64::MAX));
    // Steps of a claim that fail while the claim goes on are logged and counted here.
    queue.on_claim_step_failed({
        let metrics = metrics.clone();
        Arc::new(move |step, error| metrics.claim_step_failed(step, error))
    });
    let sandbox_config = SandboxConfig {
        slots: u32::try_from(config.slots).unwrap_or(u32::MAX),
        dir_grants: config.dir_grants.clone(),
        ..SandboxConfig::default()
    };
    // Modules are compiled in a `sluice-worker compile` child under the compile limits,
    // so a hostile one cannot take this process's memory or CPU.
    let compiler = Compiler::new(config.compile, EngineSettings::of(&sandbox_config))
        .map_err(|e| ServeError::Sandbox(SandboxError::Engine(e.to_string())))?
        .with_max_module_bytes(sandbox_config.max_module_bytes)
        .with_metrics(metrics.compile.clone());
    let sandbox = Arc::new(Sandbox::with_compiler(sandbox_config, compiler)?);
    let _ = metrics.pool.watch(&sandbox);
    let mut executor = executor_config(&config);
    // The slots the claim loop runs (clamped here so health judges the loop's real size).
    executor.fit_to(&sandbox);
    let health = Arc::new(WorkerHealth::new(
        executor.slots,
        executor.stuck_bound(),
        liveness_bound(
            executor.claim_wait,
            queue.config().response_timeout,
            executor::CLAIM_RETRY_MAX,
        ),
    ));
    // The endpoint outlives the shutdown signal: while jobs in flight finish, `/readyz`
    // answers 503 (draining) and `/metrics` goes on; it stops when `serve` returns.
    let endpoint_stop = CancellationToken::new();
    let _endpoint_stop = endpoint_stop.clone().drop_guard();
    tokio::spawn({
        let (health, shutdown, stop) = (health.clone(), shutdown.clone(), endpoint_stop.clone());
        async move {
            tokio::select! {
                () = shutdown.cancelled() => health.drain(),
                () = stop.cancelled() => {}
            }
        }
    });
    if let Some(addr) = config.metrics_addr {
        // Bound before the worker says it is ready; a failure is logged and the worker
        // runs without its endpoint, as before.
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tokio::spawn(metrics::serve_endpoint(
                    listener,
                    metrics.clone(),
                    health.clone(),
                    endpoint_stop,
                ));
            }
            Err(error) => tracing::error!(%error, %addr, "metrics endpoint failed"),
        }
    }
    let env = Arc::new(RedisEnv::new(
        queue.clone(),
        sandbox.clone(),
        metrics,
        health.clone(),
        &config.cache,
    )?);
    tracing::info!(
        consumer = %executor.consumer,
        slots = executor.slots,
        liveness_bound = ?health.bound(),
        max_stuck = config.max_stuck,
        queue = %queue.config().queue,
        "{READY_MESSAGE}"
    );
    let beat = heartbeat(queue.clone(), executor.consumer.clone(), config.lease);
    let consumer = executor.consumer.clone();
    let ran = executor::run(queue.clone(), sandbox, env.clone(), executor, shutdown).await;
    beat.abort();
    // Credit counted ahead and not used stops counting against the tenants' quotas.
    env.release_credit().await;
    ran?;
    // A clean exit: `sluice status` stops listing this worker (its consumer is removed
    // only if it holds nothing; what it holds is taken over when the leases run out).
    if let Err(error) = queue.admin().forget_consumer(&consumer).await {
        tracing::warn!(%error, "could not remove this worker from the queue's workers");
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// Beats `consumer`'s heartbeat every third of `lease` (it counts as gone one `lease`
/// after its last beat) until aborted; a failed beat is retried at the next one.
fn heartbeat(
    queue: Arc<RedisQueue>,
    consumer: String,
    lease: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(lease / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(error) = queue.admin().heartbeat(&consumer, lease).await {
                tracing::debug!(%error, "heartbeat failed");
            }
        }
    })
}

/// The queue's connection settings: `--ttl` sets the result and blob TTLs, and the
/// notice TTL where it is shorter than the notices' own.
fn redis_config(config: &FleetConfig) -> RedisConfig {
    let mut redis = RedisConfig::new(config.redis_url.clone());
    if let Some(queue) = &config.queue {
        redis.queue = queue.clone();
    }
    redis.tls_ca_pem = config.redis_ca_pem.clone();
    if config.redis_cluster {
        redis.topology = Topology::Cluster;
    }
    if let Some(ttl) = config.ttl {
        redis.result_ttl = ttl;
        redis.blob_ttl = ttl;
        redis.notice_ttl = ttl.min(redis.notice_ttl);
    }
    redis
}

/// The worker loop's settings; what the fleet does not set keeps
/// [`ExecutorConfig::default`].
fn executor_config(config: &FleetConfig) -> ExecutorConfig {
    ExecutorConfig {
        slots: config.slots,
        consumer: config.consumer.clone().unwrap_or_else(default_consumer),
        lease: config.lease,
        grace: config.grace,
        watchdog_grace: config.watchdog_grace,
        // A compile may take up to its wall-clock limit (one per engine the job
        // needs), after waiting up to a compile lock's lifetime for another worker's
        // (the cache's single flight), before the guest starts; the compile limit and
        // the lock's lifetime end them, not the watchdog.
        prepare_budget: config
            .compile
            .wall_clock
            .saturating_add(config.cache.lock_ttl())
            .saturating_mul(2),
        max_stuck: Some(config.max_stuck),
        retry: RetryPolicy {
            max_attempts: config.max_attempts,
            ..RetryPolicy::default()
        },
        ..ExecutorConfig::default()
    }
}

/// `host-pid`: unique per worker process on a host, and says where it runs.
fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(char::is_ascii_graphic)
        .take(64)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Connects to Redis, which may not be up yet (or be restarting): keeps trying until
/// it answers, or returns `None` once `shutdown` is cancelled. An error that trying
/// again cannot mend (refused credentials, an unusable URL) is returned at once.
async fn connect(
    config: RedisConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<RedisQueue>>, ServeError> {
    let mut backoff = Backoff::new(CONNECT_RETRY_FIRST, CONNECT_RETRY_MAX);
    loop {
        match RedisQueue::connect_checked(config.clone()).await {
            Ok(queue) => return Ok(Some(Arc::new(queue))),
            Err(source) if !source.is_transient() => {
                return Err(ServeError::Redis {
                    url: redacted_url(&config.url),
                    source,
                });
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "cannot reach Redis");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FleetConfig {
        crate::fleet::FleetArgs {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            concurrency: Some(4),
            ..Default::default()
        }
        .load()
        .unwrap()
    }

    #[test]
    fn the_ttl_sets_results_and_blobs_and_shortens_notices() {
        let defaults = RedisConfig::new("redis://x");
        let unset = redis_config(&config());
        assert_eq!(
            (unset.result_ttl, unset.blob_ttl, unset.notice_ttl),
            (defaults.result_ttl, defaults.blob_ttl, defaults.notice_ttl)
        );
        let short = Duration::from_secs(120);
        let set = redis_config(&FleetConfig {
            ttl: Some(short),
            ..config()
        });
        assert_eq!((set.result_ttl, set.blob_ttl), (short, short));
        assert_eq!(set.notice_ttl, short.min(defaults.notice_ttl));
        let long = Duration::from_secs(30 * 24 * 3600);
        let set = redis_config(&FleetConfig {
            ttl: Some(long),
            ..config()
        });
        assert_eq!(set.notice_ttl, defaults.notice_ttl);
    }

    #[test]
    fn the_executor_gets_every_setting() {
        let config = FleetConfig {
            consumer: Some("w1".into()),
            max_attempts: 7,
            ..config()
        };
        let executor = executor_config(&config);
        assert_eq!(executor.slots, 4);
        assert_eq!(executor.consumer, "w1");
        assert_eq!(executor.lease, config.lease);
        assert_eq!(executor.grace, config.grace);
        assert_eq!(executor.watchdog_grace, config.watchdog_grace);
        assert_eq!(executor.stuck_bound(), config.max_stuck);
        assert_eq!(executor.retry.max_attempts, 7);
        let unnamed = executor_config(&FleetConfig {
            consumer: None,
            ..config
        });
        assert!(
            unnamed
                .consumer
                .ends_with(&format!("-{}", std::process::id())),
            "{}",
            unnamed.consumer
        );
    }
}
