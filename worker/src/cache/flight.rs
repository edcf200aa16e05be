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
//!
//! An upload's precompile (`fleet/precompile.rs`) never waits: the worker that takes
//! the lock fetches, compiles and publishes ([`ArtifactCache::precompile_locked`]);
//! the others skip the request, fetching and loading nothing.
//!
//! Only a module's own faults are recorded as a refusal (the compile child's
//! invalid code, memory, CPU and artifact-size limits: the job's `invalid_module`);
//! a compile that ran out of wall clock depends on the host's load, ends as a
//! `host_error`, and releases the lock without recording anything.
//!
//! A refusal carries an HMAC tag made with the cache key, as artifacts do (over a
//! message of its own, so a refusal's tag never passes as an artifact's): one whose
//! tag does not match is counted as an integrity failure and ignored, so whoever can
//! write to Redis cannot make the fleet refuse a module.

use std::time::{Duration, Instant};

use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{ArtifactId, Artifacts};
use sluice_shared::{ModuleHash, Outcome};
use wasmtime::Module;

use super::key::ArtifactKey;
use super::mac::{Artifact, Tag};
use super::{ArtifactCache, Origin, Precompiled, Shared, Wasm};
use crate::metrics::Tier;
use crate::sandbox::Metering;

/// First wait for a lock held by another worker.
const WAIT_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between looks at a lock held by another worker.
const WAIT_MAX: Duration = Duration::from_millis(500);
/// What a refusal's tag is made over, before the reason: no artifact (an ELF file)
/// starts with it, so a refusal's tag never verifies an artifact.
const REFUSAL_DOMAIN: &[u8] = b"sluice compile refusal\0";

/// The message a refusal's tag is made over: [`REFUSAL_DOMAIN`], then the reason as
/// stored.
fn refusal_message(reason: &str) -> Vec<u8> {
    [REFUSAL_DOMAIN, reason.as_bytes()].concat()
}

impl ArtifactCache {
    /// How long a compile lock lives (the compile wall-clock limit plus
    /// [`super::LOCK_MARGIN`]).
    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// An upload's precompile by the worker that took the compile lock of module
    /// `hash` for engine `metering` as `token`: compiles `wasm`, publishes the artifact
    /// (L2, L3) or records the refusal, and releases the lock. Nothing waits, and
    /// nothing is added to L1. Runs on a blocking or run thread.
    pub fn precompile_locked(
        &self,
        hash: &ModuleHash,
        wasm: &[u8],
        metering: Metering,
        token: &str,
    ) -> Precompiled {
        let key = self.key(*hash, metering);
        let wasm = Wasm::Given(wasm);
        let compiled = match &self.l3 {
            Some(l3) => self.compile_locked(l3, &key, token, &wasm, metering),
            None => self.compile_unlocked(&key, &wasm, metering),
        };
        match compiled {
            Ok(_) => Precompiled::Compiled,
            Err(Outcome::InvalidModule { reason }) => Precompiled::Refused(reason),
            Err(other) => Precompiled::Failed(other.to_string()),
        }
    }

    /// The module compiled for `key` through L3 under the fleet's single flight (see
    /// the module doc). Runs on a run thread.
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
            if let Some(reason) = self.refusal(l3, key) {
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
                let stored = Artifacts::refusal_reason(reason);
                let tag = self.mac.sign(key, &refusal_message(stored));
                let refuse = l3
                    .handle
                    .block_on(l3.queue.artifacts().refuse(&id, &tag.0, stored, self.ttl));
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

    /// The refusal the fleet recorded for `key`, if any and its tag matches (a Redis
    /// failure, or a tag that does not match, reads as none: the worker then compiles,
    /// as it would without the fleet).
    fn refusal(&self, l3: &Shared, key: &ArtifactKey) -> Option<String> {
        let stored = match l3.handle.block_on(l3.queue.artifacts().refusal(&key.id())) {
            Ok(stored) => stored?,
            Err(error) => {
                tracing::warn!(artifact = %key, %error, "could not read a compile refusal");
                return None;
            }
        };
        let message = refusal_message(&stored.reason);
        match self
            .mac
            .verify(key, Artifact::Bytes(&message), &Tag(stored.tag))
        {
            Ok(_) => Some(stored.reason),
            Err(error) => {
                tracing::warn!(artifact = %key, tier = "l3", %error,
                    "compile refusal in Redis failed its integrity check; ignoring it");
                self.metrics.integrity_failure(Tier::L3);
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
