//! Compiled module artifacts shared by the fleet (the workers' L3 cache): any worker
//! loads what another compiled, and one module is compiled once per fleet.
//!
//! - `sluice:{q}:artifact:<module hash>:<engine fingerprint>` is a string: the 32-byte
//!   integrity tag, then the artifact. One key holds both, so a reader never sees one
//!   without the other. A write (`artifact_put.lua`) and every read (`artifact_get.lua`)
//!   set its TTL to the worker's artifact lifetime (default [`ARTIFACT_TTL`]), or to
//!   the module's remaining lifetime when that is shorter, so an artifact no job uses
//!   goes, and none outlives its module. An artifact of a module that is not stored is
//!   not stored.
//! - `sluice:{q}:module:<hash>:artifacts` lists the keys derived from a module
//!   (artifacts, refusals); the module's deletion (`module_rm.lua`, `module_del.lua`)
//!   deletes them.
//! - `sluice:{q}:compiling:<module>:<engine>` is the single-flight lock: the worker that
//!   sets it (`SET NX PX`, its token) compiles; the others wait for the artifact. It
//!   expires by itself if its holder dies, and is released with a compare-and-delete
//!   (`unhold.lua`).
//! - `sluice:{q}:refused:<module>:<engine>` says why a module does not compile (for the
//!   module's own reasons: invalid, or a compile limit), for at most
//!   [`MAX_REFUSAL_TTL`], so the fleet compiles a compile bomb once: a 32-byte
//!   integrity tag, then the reason (the worker checks the tag, as an artifact's).
//! - `sluice:{q}:precompile` is a stream of [`PrecompileRequest`]s (field `module`, the
//!   hash; `tenant` for a tenant's upload), capped near [`PRECOMPILE_STREAM_CAP`], that
//!   uploads add to and workers follow.
//!
//! This role stores and returns bytes only: the worker checks the tag before it loads
//! anything (the protocol never trusts what Redis holds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RedisQueue;
use super::error::{StoreError, corrupt, on_key, unavailable};
use super::reply::xread_entries;
use super::scripts::SCRIPTS;
use crate::job::ModuleHash;
use crate::outcome::MAX_REASON_BYTES;
use crate::units::millis_at_least_one;

/// How long an artifact is kept after it was last stored or read, by default (a
/// worker's `--cache-ttl`).
pub const ARTIFACT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest a compile refusal is kept (less when the artifact lifetime or the module's
/// is shorter): long enough that a fleet does not compile a compile bomb again and
/// again, short enough that raised compile limits take effect.
pub const MAX_REFUSAL_TTL: Duration = Duration::from_secs(3600);
/// Largest artifact stored (a 32 MiB module compiles to well under this).
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;
/// Largest refusal reason stored, in bytes (longer ones are cut).
pub const MAX_REFUSAL_BYTES: usize = MAX_REASON_BYTES;
/// Entries the precompile stream keeps, about (`XADD MAXLEN ~`).
pub const PRECOMPILE_STREAM_CAP: u64 = 1000;
/// Most precompile requests one read returns.
const PRECOMPILE_READ_COUNT: u64 = 100;
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

/// A compile refusal as stored: its tag (unchecked here) and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRefusal {
    /// The integrity tag stored with it.
    pub tag: [u8; 32],
    /// Why the module does not compile (at most [`MAX_REFUSAL_BYTES`]; bytes that are
    /// not UTF-8 replaced).
    pub reason: String,
}

/// An upload's request that the fleet precompile a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrecompileRequest {
    /// The module.
    pub module: ModuleHash,
    /// The tenant that uploaded it (its policy says which engine its jobs use); `None`
    /// for an operator's upload.
    pub tenant: Option<String>,
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

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Artifacts<'_> {
    /// The artifact under `id`, if stored, its lifetime started again: `ttl`, or the
    /// module's remaining lifetime when shorter.
    pub async fn get(
        self,
        id: &ArtifactId,
        ttl: Duration,
    ) -> Result<Option<StoredArtifact>, ArtifactError> {
        let key = self.q.keys.artifact(&id.module, &id.engine);
        let value: Option<Vec<u8>> = SCRIPTS
            .artifact_get
            .key(&key)
            .key(self.q.keys.module(&id.module))
            .key(self.q.keys.module_artifacts(&id.module))
            .arg(millis_at_least_one(ttl))
            .invoke_async(&mut self.q.connection())
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
        // The tag moves out and the artifact down in place: no second buffer of the
        // artifact's size (megabytes) on a fresh worker's first job.
        let mut tag = [0; TAG_BYTES];
        for (to, from) in tag.iter_mut().zip(value.drain(..TAG_BYTES)) {
            *to = from;
        }
        Ok(Some(StoredArtifact { tag, bytes: value }))
    }

    /// Stores `bytes` with their `tag` under `id` for `ttl` (the module's remaining
    /// lifetime when shorter). Returns false, storing nothing, when the module is not
    /// stored (it was deleted, or expired, while it compiled).
    pub async fn put(
        self,
        id: &ArtifactId,
        tag: &[u8; 32],
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<bool, ArtifactError> {
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
        self.put_derived(&key, &id.module, &value, ttl).await
    }

    /// `artifact_put.lua`: `value` under `key`, derived from `module`.
    async fn put_derived(
        self,
        key: &str,
        module: &ModuleHash,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, ArtifactError> {
        let stored: i64 = SCRIPTS
            .artifact_put
            .key(key)
            .key(self.q.keys.module(module))
            .key(self.q.keys.module_artifacts(module))
            .arg(value)
            .arg(millis_at_least_one(ttl))
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(on_key(key))?;
        Ok(stored == 1)
    }

    /// Whether the fleet has an answer for `id` already: its artifact, or a refusal.
    pub async fn known(self, id: &ArtifactId) -> Result<bool, ArtifactError> {
        let count: u64 = redis::cmd("EXISTS")
            .arg(self.q.keys.artifact(&id.module, &id.engine))
            .arg(self.q.keys.artifact_refusal(&id.module, &id.engine))
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(count > 0)
    }

    /// Takes the compile lock of `id` as `token` for `ttl`; false when another worker
    /// holds it.
    pub async fn lock(
        self,
        id: &ArtifactId,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, ArtifactError> {
        let key = self.q.keys.artifact_lock(&id.module, &id.engine);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis_at_least_one(ttl))
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        Ok(set.is_some())
    }

    /// Releases the compile lock of `id` if `token` still holds it (a lock that expired
    /// and was taken by another worker is left alone); returns whether it did.
    pub async fn unlock(self, id: &ArtifactId, token: &str) -> Result<bool, ArtifactError> {
        let released: i64 = SCRIPTS
            .unhold
            .key(self.q.keys.artifact_lock(&id.module, &id.engine))
            .arg(token)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(released == 1)
    }

    /// Whether some worker holds the compile lock of `id`.
    pub async fn is_locked(self, id: &ArtifactId) -> Result<bool, ArtifactError> {
        Ok(redis::cmd("EXISTS")
            .arg(self.q.keys.artifact_lock(&id.module, &id.engine))
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?)
    }

    /// Records why module `id` does not compile (for its own reasons) with its `tag`
    /// (which the caller made over [`refusal_reason`](Self::refusal_reason) of
    /// `reason`: the reason as stored, cut to [`MAX_REFUSAL_BYTES`]), for `ttl` capped
    /// to [`MAX_REFUSAL_TTL`] (and to the module's remaining lifetime). Returns false,
    /// storing nothing, when the module is not stored.
    pub async fn refuse(
        self,
        id: &ArtifactId,
        tag: &[u8; 32],
        reason: &str,
        ttl: Duration,
    ) -> Result<bool, ArtifactError> {
        let key = self.q.keys.artifact_refusal(&id.module, &id.engine);
        let reason = Self::refusal_reason(reason);
        let mut value = Vec::with_capacity(TAG_BYTES + reason.len());
        value.extend_from_slice(tag);
        value.extend_from_slice(reason.as_bytes());
        self.put_derived(&key, &id.module, &value, ttl.min(MAX_REFUSAL_TTL))
            .await
    }

    /// `reason` as [`refuse`](Self::refuse) stores it (cut to [`MAX_REFUSAL_BYTES`]):
    /// what its tag is made over.
    pub fn refusal_reason(reason: &str) -> &str {
        cut(reason, MAX_REFUSAL_BYTES)
    }

    /// The refusal recorded for module `id`, if any: its tag (unchecked) and reason.
    /// A value shorter than a tag is a corrupt key.
    pub async fn refusal(self, id: &ArtifactId) -> Result<Option<StoredRefusal>, ArtifactError> {
        let key = self.q.keys.artifact_refusal(&id.module, &id.engine);
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
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
        let reason = value.split_off(TAG_BYTES);
        let tag = value.try_into().expect("split at the tag's length");
        let reason = cut(&String::from_utf8_lossy(&reason), MAX_REFUSAL_BYTES).to_owned();
        Ok(Some(StoredRefusal { tag, reason }))
    }

    /// A cursor for [`precompile_requests`](Self::precompile_requests) from shortly
    /// before now by this host's clock (`lookback` earlier), so a request added just
    /// before a worker started following the stream is not missed. Stream ids are the
    /// server's clock: a skewed host reads a little more (requests already answered
    /// are skipped by their reader) or a little less (compiled at first use instead).
    pub fn precompile_cursor(lookback: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(lookback);
        format!("{}-0", now.as_millis())
    }

    /// Modules uploads asked the fleet to precompile after stream id `after`, waiting
    /// up to `block`: the last id read and each request (at most 100 a read; entries
    /// that do not name a hash are skipped, a tenant name that is not UTF-8 is
    /// dropped). Reads over this queue's
    /// blocking connection: give the reader its own [`RedisQueue`], so it never waits
    /// behind claims.
    pub async fn precompile_requests(
        self,
        after: &str,
        block: Duration,
    ) -> Result<(String, Vec<PrecompileRequest>), ArtifactError> {
        let stream = self.q.keys.precompile();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(PRECOMPILE_READ_COUNT)
            .arg("BLOCK")
            .arg(millis_at_least_one(block))
            .arg("STREAMS")
            .arg(&stream)
            .arg(after);
        let reply = self
            .q
            .blocking
            .query(&cmd, Some(block))
            .await
            .map_err(on_key(&stream))?;
        let mut last = after.to_owned();
        let mut requests = Vec::new();
        for (id, fields) in xread_entries(reply)? {
            let field = |want: &[u8]| {
                fields
                    .iter()
                    .find(|(name, _)| name == want)
                    .and_then(|(_, value)| std::str::from_utf8(value).ok())
            };
            if let Some(module) = field(b"module").and_then(|m| m.parse().ok()) {
                requests.push(PrecompileRequest {
                    module,
                    tenant: field(b"tenant").map(str::to_owned),
                });
            }
            last = id;
        }
        Ok((last, requests))
    }
}
