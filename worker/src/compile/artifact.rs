//! Turning serialized compiled code back into a module: the crate's one `unsafe`.
//!
//! `Module::deserialize` maps the bytes as native code and runs it, so whoever chose
//! the bytes chooses what the worker executes. [`load_artifact`] therefore only takes a
//! [`Verified`] token, and a token can only be made by a caller that states why the
//! bytes are trusted: they came over the pipe from this process's own compile child
//! ([`Verified::from_own_child`]), or their HMAC tag was checked
//! ([`Verified::after_mac_check`]).

use wasmtime::{Engine, Module};

/// Why artifact bytes may be loaded as code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// Produced by a `sluice-worker compile` child this process spawned, read from the
    /// pipe it created: nothing else writes to it.
    OwnChild,
    /// Read from a cache (disk or Redis) and its HMAC-SHA256 tag, under this fleet's
    /// secret over key and bytes, matched before loading.
    MacChecked,
}

/// Artifact bytes together with the check that makes them trusted. Only this crate can
/// make one, and only through a constructor that names the check.
#[derive(Clone, Copy, Debug)]
pub struct Verified<'a> {
    bytes: &'a [u8],
    provenance: Provenance,
}

impl<'a> Verified<'a> {
    /// Bytes read from the stdout pipe of a compile child this process spawned.
    pub(crate) fn from_own_child(bytes: &'a [u8]) -> Self {
        Verified {
            bytes,
            provenance: Provenance::OwnChild,
        }
    }

    /// Bytes from a cache whose HMAC tag over key and bytes the caller has just
    /// compared (in constant time) with the one it computed. Call it nowhere else.
    #[allow(dead_code)] // the cache's caller arrives with the shared module cache
    pub(crate) fn after_mac_check(bytes: &'a [u8]) -> Self {
        Verified {
            bytes,
            provenance: Provenance::MacChecked,
        }
    }

    /// Why these bytes are trusted.
    pub fn provenance(&self) -> Provenance {
        self.provenance
    }

    /// The artifact bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Loads a serialized artifact into `engine`. wasmtime still refuses bytes built for
/// another engine configuration or version (its own header and compatibility check).
pub fn load_artifact(engine: &Engine, artifact: Verified<'_>) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize` requires bytes produced by `Engine::precompile_module`
    // (or `Module::serialize`) that nobody else could have altered. A `Verified` exists
    // only for bytes read from the pipe of a compile child this process spawned and
    // whose stdout nothing else holds (`Provenance::OwnChild`), or bytes whose HMAC tag
    // under the fleet's secret was checked just before (`Provenance::MacChecked`).
    #[allow(unsafe_code)]
    unsafe {
        Module::deserialize(engine, artifact.bytes)
    }
}
