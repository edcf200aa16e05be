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

/// Where artifact code is: bytes in memory, or an open file read through the same
/// descriptor that will be mapped (a rename of the path after a check changes
/// nothing; artifact files are never rewritten in place).
#[derive(Debug)]
pub enum Artifact<'a> {
    /// Artifact bytes.
    Bytes(&'a [u8]),
    /// An open artifact file.
    File(std::fs::File),
}

/// An artifact together with the check that makes it trusted. Only this crate can make
/// one, and only through a constructor that names the check.
#[derive(Debug)]
pub struct Verified<'a> {
    artifact: Artifact<'a>,
    provenance: Provenance,
}

impl<'a> Verified<'a> {
    /// Bytes read from the stdout pipe of a compile child this process spawned.
    pub(crate) fn from_own_child(bytes: &'a [u8]) -> Self {
        Verified {
            artifact: Artifact::Bytes(bytes),
            provenance: Provenance::OwnChild,
        }
    }

    /// An artifact from a cache whose HMAC tag over key and contents was just compared
    /// (in constant time) with the one computed: only `cache::mac::Mac::verify` calls
    /// it.
    pub(crate) fn after_mac_check(artifact: Artifact<'a>) -> Self {
        Verified {
            artifact,
            provenance: Provenance::MacChecked,
        }
    }

    /// Why this artifact is trusted.
    pub fn provenance(&self) -> Provenance {
        self.provenance
    }
}

/// Loads an artifact into `engine`: the crate's one deserialization of compiled code.
/// wasmtime still refuses an artifact built for another engine configuration or
/// version (its own header and compatibility check).
#[allow(unsafe_code)]
pub fn load_artifact(engine: &Engine, verified: Verified<'_>) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize*` requires code produced by `Engine::precompile_module`
    // (or `Module::serialize`) that nobody else could have altered. A `Verified` exists
    // only for bytes read from the pipe of a compile child this process spawned and
    // whose stdout nothing else holds (`Provenance::OwnChild`), or for an artifact whose
    // HMAC-SHA256 tag under the fleet's secret, over its key and these exact contents,
    // was checked just before (`Provenance::MacChecked`; a file is checked through the
    // same descriptor that is then mapped).
    match verified.artifact {
        Artifact::Bytes(bytes) => unsafe { Module::deserialize(engine, bytes) },
        Artifact::File(file) => unsafe { Module::deserialize_open_file(engine, file) },
    }
}
