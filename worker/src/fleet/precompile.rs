//! Warm on upload: a fleet worker with the shared cache (L3) on follows the queue's
//! precompile stream, which module uploads add to (`sluice module put`,
//! `PUT /v1/modules`), and compiles each new module for the engine its jobs use by
//! default (the cache's module doc says why one): the unmetered one, or the metered one
//! for a tenant whose policy sets `max_fuel` (all its jobs run metered), so a module's
//! first job is an L3 hit.
//!
//! One task per worker, one precompile at a time, on its own Redis connections (a
//! `RedisQueue` of its own: its `XREAD BLOCK` never waits behind claims, nor claims
//! behind it), reconnecting with [`Backoff`]. Every worker reads every request, so
//! each decides before fetching anything: a module whose artifact (or refusal) the
//! fleet already has is skipped, and so is one whose compile lock another worker
//! holds. Only the worker that takes the lock fetches the module, compiles it and
//! publishes the artifact ([`ArtifactCache::precompile_locked`]); the others neither
//! wait nor download or load the artifact (a worker loads it at its first job). A
//! compile bomb thus costs the fleet one compile and blocks no other worker's warm-up.
//! Compiles go through the cache's compile function (the limited compile child) on a
//! blocking thread, so claims and jobs never wait for them.

use std::sync::Arc;
use std::time::Duration;

use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{Artifacts, PrecompileRequest, RedisConfig, RedisQueue};
use tokio_util::sync::CancellationToken;

use crate::cache::{ArtifactCache, Precompiled};
use crate::metrics::{CacheMetrics, PrecompileResult};
use crate::sandbox::Metering;

/// How long one read of the stream blocks.
const READ_BLOCK: Duration = Duration::from_secs(5);
/// How far before its start (by its own clock) a worker reads requests: an upload
/// just before the worker was ready is still precompiled (what the fleet already has
/// is skipped).
const LOOKBACK: Duration = Duration::from_secs(1);
/// First wait after Redis failed; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Starts the precompile task; it stops when `stop` is cancelled.
pub(super) fn spawn(
    config: RedisConfig,
    cache: Arc<ArtifactCache>,
    metrics: CacheMetrics,
    stop: CancellationToken,
) {
    let cursor = Artifacts::precompile_cursor(LOOKBACK);
    tokio::spawn(async move {
        tokio::select! {
            () = follow(config, cache, metrics, cursor) => {}
            () = stop.cancelled() => {}
        }
    });
}

/// Reads the stream from `cursor` for ever, reconnecting when Redis fails.
async fn follow(
    config: RedisConfig,
    cache: Arc<ArtifactCache>,
    metrics: CacheMetrics,
    mut cursor: String,
) {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let queue = match RedisQueue::connect(config.clone()).await {
            Ok(queue) => Arc::new(queue),
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "precompile: cannot reach Redis");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        loop {
            match queue
                .artifacts()
                .precompile_requests(&cursor, READ_BLOCK)
                .await
            {
                Ok((last, requests)) => {
                    backoff.reset();
                    cursor = last;
                    for request in requests {
                        let result = precompile(&queue, &cache, request).await;
                        metrics.precompiled(result);
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay,
                        "precompile: cannot read the precompile stream; reconnecting");
                    tokio::time::sleep(delay).await;
                    break;
                }
            }
        }
    }
}

/// The engine the uploader's jobs use by default: metered for a tenant whose policy
/// sets `max_fuel`, else unmetered (jobs without a fuel budget).
async fn engine_for(queue: &RedisQueue, tenant: Option<&str>) -> Metering {
    let Some(tenant) = tenant else {
        return Metering::Off;
    };
    match queue.tenants().policy(tenant).await {
        Ok(Some(policy)) if policy.max_fuel.is_some() => Metering::Fuel,
        Ok(_) => Metering::Off,
        Err(error) => {
            tracing::warn!(tenant = %crate::logging::tenant_field(tenant), %error, "precompile: cannot read the tenant's policy");
            Metering::Off
        }
    }
}

/// Precompiles the requested module if the fleet has no answer for it yet and no other
/// worker holds its compile lock (see the module doc).
async fn precompile(
    queue: &Arc<RedisQueue>,
    cache: &Arc<ArtifactCache>,
    request: PrecompileRequest,
) -> PrecompileResult {
    let module = request.module;
    let metering = engine_for(queue, request.tenant.as_deref()).await;
    let id = cache.artifact_id(&module, metering);
    let artifacts = queue.artifacts();
    match artifacts.known(&id).await {
        Ok(true) => return PrecompileResult::Present,
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%module, %error, "precompile: cannot check the artifact");
            return PrecompileResult::Failed;
        }
    }
    let token = uuid::Uuid::new_v4().to_string();
    match artifacts.lock(&id, &token, cache.lock_ttl()).await {
        Ok(true) => {}
        // Another worker compiles it: nothing to fetch, wait for or load here.
        Ok(false) => return PrecompileResult::Present,
        Err(error) => {
            tracing::warn!(%module, %error, "precompile: cannot take the compile lock");
            return PrecompileResult::Failed;
        }
    }
    let (held, holder) = (&id, token.as_str());
    let release = |why: &'static str| async move {
        if let Err(error) = artifacts.unlock(held, holder).await {
            tracing::warn!(%module, %error, why, "precompile: could not release the compile lock");
        }
    };
    // The winner of a previous flight may have published and released just before.
    match artifacts.known(&id).await {
        Ok(false) => {}
        Ok(true) => {
            release("present").await;
            return PrecompileResult::Present;
        }
        Err(error) => {
            tracing::warn!(%module, %error, "precompile: cannot check the artifact");
            release("failed").await;
            return PrecompileResult::Failed;
        }
    }
    // The fetch checks the module's hash (SHA-256 over up to the module size limit: tens
    // of ms for the largest), and the compile is blocking: both on the blocking pool,
    // never on the async side, which may be the worker's one thread running every
    // claim, renewal and watchdog (`--async-threads 1`).
    let (cache, handle) = (cache.clone(), tokio::runtime::Handle::current());
    let (modules, lock) = (Arc::clone(queue), token.clone());
    let done = tokio::task::spawn_blocking(move || {
        match handle.block_on(modules.modules().get(&module)) {
            Ok(Some(wasm)) => Ok(cache.precompile_locked(&module, &wasm, metering, &lock)),
            Ok(None) => Err(None),
            Err(error) => Err(Some(error)),
        }
    })
    .await;
    let done = match done {
        Ok(Ok(precompiled)) => Ok(precompiled),
        Ok(Err(None)) => {
            tracing::info!(%module, "precompile: module no longer stored");
            release("gone").await;
            return PrecompileResult::Failed;
        }
        Ok(Err(Some(error))) => {
            tracing::warn!(%module, %error, "precompile: cannot fetch the module");
            release("failed").await;
            return PrecompileResult::Failed;
        }
        Err(error) => Err(error),
    };
    match done {
        Ok(Precompiled::Compiled) => {
            tracing::info!(%module, "precompiled");
            PrecompileResult::Compiled
        }
        Ok(Precompiled::Present) => PrecompileResult::Present,
        Ok(Precompiled::Refused(reason)) => {
            tracing::warn!(%module, ?reason, "precompile: module refused");
            PrecompileResult::Refused
        }
        Ok(Precompiled::Failed(error)) => {
            tracing::warn!(%module, %error, "precompile failed");
            PrecompileResult::Failed
        }
        Err(error) => {
            // The lock expires by itself.
            tracing::error!(%module, %error, "precompile task failed");
            PrecompileResult::Failed
        }
    }
}
