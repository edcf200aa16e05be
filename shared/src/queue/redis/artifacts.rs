//! Compiled module artifacts shared by the fleet (the workers' L3 cache): any worker
//! loads what another compiled.
//!
//! `sluice:{q}:artifact:<module hash>:<engine fingerprint>` is a string: the 32-byte
//! integrity tag, then the artifact. One key holds both, so a reader never sees one
//! without the other. Every write sets a TTL of [`ARTIFACT_TTL`] and every read
//! refreshes it (`GETEX ... PX`), so an artifact no job uses goes after a week. This
//! role stores and returns bytes only: the worker checks the tag before it loads
//! anything (the protocol never trusts what Redis holds).

use std::time::Duration;

use super::RedisQueue;
use super::error::{StoreError, corrupt, on_key};
use crate::job::ModuleHash;
use crate::units::millis_at_least_one;

/// How long an artifact is kept after it was last stored or read.
pub const ARTIFACT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest artifact stored (a 32 MiB module compiles to well under this).
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;
/// Bytes of the integrity tag in front of the artifact.
const TAG_BYTES: usize = 32;

/// Which artifact: a module compiled by one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArtifactId {
    /// The module's SHA-256.
    pub module: ModuleHash,
    /// The fingerprint of the engine that compiled it.
    pub engine: [u8; 32],
}

/// An artifact as stored: its tag (unchecked here) and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredArtifact {
    /// The integrity tag stored with it.
    pub tag: [u8; 32],
    /// The artifact.
    pub bytes: Vec<u8>,
}

/// The artifact store of a queue (from [`RedisQueue::artifacts`]).
#[derive(Clone, Copy)]
pub struct Artifacts<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why an artifact operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The artifact is bigger than [`MAX_ARTIFACT_BYTES`]; it is not stored.
    #[error(
        "artifact of module {module} is {len} bytes, more than the {MAX_ARTIFACT_BYTES} stored"
    )]
    TooLarge {
        /// The module.
        module: ModuleHash,
        /// The artifact's size.
        len: usize,
    },
    /// Redis failed, the key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An engine fingerprint as it appears in a key.
pub(crate) fn engine_hex(engine: &[u8; 32]) -> String {
    hex::encode(engine)
}

impl Artifacts<'_> {
    /// The artifact under `id`, if stored, its lifetime refreshed.
    pub async fn get(self, id: &ArtifactId) -> Result<Option<StoredArtifact>, ArtifactError> {
        let key = self.q.keys.artifact(&id.module, &id.engine);
        let value: Option<Vec<u8>> = redis::cmd("GETEX")
            .arg(&key)
            .arg("PX")
            .arg(millis_at_least_one(ARTIFACT_TTL))
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        let Some(mut value) = value else {
            return Ok(None);
        };
        if value.len() < TAG_BYTES {
            return Err(corrupt(&format!(
                "{key} holds {} bytes, less than a tag",
                value.len()
            ))
            .into());
        }
        let bytes = value.split_off(TAG_BYTES);
        let tag = value.try_into().expect("split at the tag's length");
        Ok(Some(StoredArtifact { tag, bytes }))
    }

    /// Stores `bytes` with their `tag` under `id` for [`ARTIFACT_TTL`].
    pub async fn put(
        self,
        id: &ArtifactId,
        tag: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), ArtifactError> {
        if bytes.len() > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge {
                module: id.module,
                len: bytes.len(),
            });
        }
        let key = self.q.keys.artifact(&id.module, &id.engine);
        let mut value = Vec::with_capacity(TAG_BYTES + bytes.len());
        value.extend_from_slice(tag);
        value.extend_from_slice(bytes);
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("PX")
            .arg(millis_at_least_one(ARTIFACT_TTL))
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        Ok(())
    }
}
