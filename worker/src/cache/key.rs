//! The artifact key: which module, compiled by which engine.
//!
//! A compiled artifact is only valid for the engine configuration that produced it, so
//! its key is the module's SHA-256 plus an [`EngineFingerprint`]: SHA-256 over
//! wasmtime's [`Engine::precompile_compatibility_hash`] (its version, target, compiler
//! flags and every tunable that changes code, fuel and epoch checks included) and the
//! metering flag. The compatibility hash is a `Hash` impl; it is fed into a hasher that
//! writes every byte into SHA-256 ([`Sha256Hasher`]), never `DefaultHasher`, whose
//! output is not promised to stay the same across Rust releases. Workers of another
//! wasmtime version or configuration therefore never load each other's artifacts: they
//! compile and publish under their own key.
//!
//! One module has one artifact per engine (metered, unmetered). They are built lazily:
//! a module's artifact for an engine is looked up (and compiled on a miss) the first
//! time a job needs that engine, so a module only ever run without a fuel budget is
//! compiled once, not twice.

use std::fmt;
use std::hash::{Hash, Hasher};

use sha2::{Digest, Sha256};
use sluice_shared::ModuleHash;
use sluice_shared::queue::redis::ArtifactId;
use wasmtime::Engine;

use crate::sandbox::Metering;

/// A [`Hasher`] that feeds every byte it is given into SHA-256: a `Hash` impl's output
/// made stable across processes and Rust releases.
#[derive(Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    /// The SHA-256 of everything written.
    pub fn digest(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The first 8 bytes of the digest so far (the `Hasher` contract; the key uses
    /// [`Sha256Hasher::digest`]).
    fn finish(&self) -> u64 {
        let digest: [u8; 32] = self.0.clone().finalize().into();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
}

/// What identifies an engine's compiled code: artifacts of two engines with the same
/// fingerprint are interchangeable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineFingerprint(pub [u8; 32]);

impl EngineFingerprint {
    /// The fingerprint of `engine`, the sandbox's engine for `metering`.
    pub fn of(engine: &Engine, metering: Metering) -> Self {
        let mut hasher = Sha256Hasher::default();
        b"sluice-engine-v1".hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        (metering == Metering::Fuel).hash(&mut hasher);
        EngineFingerprint(hasher.digest())
    }
}

impl fmt::Display for EngineFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EngineFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EngineFingerprint({self})")
    }
}

/// One artifact: a module compiled by one engine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ArtifactKey {
    /// The module's SHA-256.
    pub module: ModuleHash,
    /// The engine that compiled it.
    pub engine: EngineFingerprint,
}

impl ArtifactKey {
    /// The bytes the integrity tag covers besides the artifact: module hash, then
    /// engine fingerprint.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut bytes = [0; 64];
        bytes[..32].copy_from_slice(&self.module.0);
        bytes[32..].copy_from_slice(&self.engine.0);
        bytes
    }

    /// The key as the Redis protocol names it.
    pub fn id(&self) -> ArtifactId {
        ArtifactId {
            module: self.module,
            engine: self.engine.0,
        }
    }
}

impl fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.module, self.engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_and_tells_engines_apart() {
        let plain = Engine::default();
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let fuel = Engine::new(&config).unwrap();
        let a = EngineFingerprint::of(&plain, Metering::Off);
        // Another engine of the same configuration: the same fingerprint.
        assert_eq!(a, EngineFingerprint::of(&Engine::default(), Metering::Off));
        assert_ne!(a, EngineFingerprint::of(&fuel, Metering::Fuel));
        assert_ne!(a, EngineFingerprint::of(&plain, Metering::Fuel));
    }
}
