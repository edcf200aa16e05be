//! The single flight across the fleet: an L3 miss is compiled by one worker.
//!
//! A worker that misses L1, L2 and L3 takes the artifact's compile lock in Redis
//! (`SET NX PX`, a token of its own, living the compile wall-clock limit plus
//! [`super::LOCK_MARGIN`]), compiles, publishes the artifact (or, when the module is
//! refused for its own reasons, records the refusal), and releases the lock with a
//! compare-and-delete. A worker that does not get the lock waits until the lock is
//! gone (re-checking with [`Backoff`], 50 ms up to 500 ms), then looks again: the
//! artifact (an L3 hit), a refusal (the same `invalid_module`, nothing compiled), or
//! neither (the holder died or failed for reasons not the module's: the lock is free
//! again, and it takes it). Past the lock's lifetime without an answer it compiles
//! without the lock: a wait is bounded whatever Redis holds.

use std::time::{Duration, Instant};

use sluice_shared::Outcome;
use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::ArtifactId;
use wasmtime::Module;

use super::key::ArtifactKey;
use super::{ArtifactCache, Origin, Shared, Wasm};
use crate::metrics::Tier;
use crate::sandbox::Metering;

/// First wait for a lock held by another worker.
const WAIT_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between looks at a lock held by another worker.
const WAIT_MAX: Duration = Duration::from_millis(500);

impl ArtifactCache {
    /// The module compiled for `key` through L3 under the fleet's single flight (see
    /// the module doc). Runs on a blocking thread.
    pub(super) fn through_fleet(
        &self,
        l3: &Shared,
        key: &ArtifactKey,
        wasm: &Wasm<'_>,
        metering: Metering,
    ) -> Result<(Module, Origin), Outcome> {
        let id = key.id();
        let engine = self.sandbox.engine(metering);
        let deadline = Instant::now() + self.lock_ttl;
        let token = uuid::Uuid::new_v4().to_string();
        loop {
            if let Some(module) = self.load_from_redis(l3, key, engine) {
                return Ok((module, Origin::Cached));
            }
            if let Some(reason) = self.refusal(l3, &id) {
                self.metrics.miss(Tier::L3);
                tracing::info!(artifact = %key, %reason, "module refused by another worker's compile");
                return Err(Outcome::InvalidModule { reason }.capped());
            }
            if Instant::now() >= deadline {
                tracing::warn!(artifact = %key, wait = ?self.lock_ttl,
                    "no artifact from the fleet within the compile lock's lifetime; compiling");
                return self.compile_unlocked(key, wasm, metering);
            }
            match l3
                .handle
                .block_on(l3.queue.artifacts().lock(&id, &token, self.lock_ttl))
            {
                Ok(true) => return self.compile_locked(l3, key, &token, wasm, metering),
                Ok(false) => self.wait_unlocked(l3, &id, deadline),
                Err(error) => {
                    tracing::warn!(artifact = %key, %error,
                        "could not take the compile lock; compiling without it");
                    return self.compile_unlocked(key, wasm, metering);
                }
            }
        }
    }

    /// Compiles holding the lock: publishes the artifact, or records a refusal for the
    /// fleet, then releases the lock.
    fn compile_locked(
        &self,
        l3: &Shared,
        key: &ArtifactKey,
        token: &str,
        wasm: &Wasm<'_>,
        metering: Metering,
    ) -> Result<(Module, Origin), Outcome> {
        let id = key.id();
        let max_bytes = self.sandbox.config().max_module_bytes;
        // Only the compile's own refusal is recorded for the fleet: a module that could
        // not be fetched (Redis away, not stored) may well compile for the next worker.
        let compiled = wasm.bytes(&key.module, max_bytes).and_then(|bytes| {
            let compiled = self.compile_unlocked(key, &Wasm::Given(&bytes), metering);
            if let Err(Outcome::InvalidModule { reason }) = &compiled {
                let refuse = l3
                    .handle
                    .block_on(l3.queue.artifacts().refuse(&id, reason, self.ttl));
                if let Err(error) = refuse {
                    tracing::warn!(artifact = %key, %error, "could not record the refusal in Redis");
                }
            }
            compiled
        });
        if let Err(error) = l3.handle.block_on(l3.queue.artifacts().unlock(&id, token)) {
            // It expires by itself; meanwhile waiters find the artifact when it goes.
            tracing::warn!(artifact = %key, %error, "could not release the compile lock");
        }
        compiled
    }

    /// Compiles and publishes (an L3 miss).
    fn compile_unlocked(
        &self,
        key: &ArtifactKey,
        wasm: &Wasm<'_>,
        metering: Metering,
    ) -> Result<(Module, Origin), Outcome> {
        self.metrics.miss(Tier::L3);
        self.compile_and_publish(key, wasm, metering)
            .map(|module| (module, Origin::Compiled))
    }

    /// The refusal the fleet recorded for `id`, if any (a Redis failure reads as none:
    /// the worker then compiles, as it would without the fleet).
    fn refusal(&self, l3: &Shared, id: &ArtifactId) -> Option<String> {
        match l3.handle.block_on(l3.queue.artifacts().refusal(id)) {
            Ok(reason) => reason,
            Err(error) => {
                tracing::warn!(module = %id.module, %error, "could not read a compile refusal");
                None
            }
        }
    }

    /// Waits until nobody holds `id`'s compile lock, or `deadline`.
    fn wait_unlocked(&self, l3: &Shared, id: &ArtifactId, deadline: Instant) {
        let mut backoff = Backoff::new(WAIT_FIRST, WAIT_MAX);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(backoff.next_delay().min(left));
            match l3.handle.block_on(l3.queue.artifacts().is_locked(id)) {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(module = %id.module, %error, "could not read a compile lock");
                    return;
                }
            }
        }
    }
}
