//! The module store: modules' bytes under their content hash, aliases, and tenants'
//! modules with a lifetime refreshed on use, holders, deletion and a per-tenant count
//! quota. Everything that touches a module key is here.
//!
//! Module bytes stay content-addressed and shared (`sluice:{q}:module:<hash>`): two
//! tenants uploading the same bytes store them once. Around them:
//! `sluice:{q}:module:<hash>:owners` (set of the tenants holding the bytes) and
//! `sluice:{q}:modules:<tenant>` (sorted set: hash → when the tenant's hold expires).
//! An upload through the API, and every job that names the module, sets the bytes',
//! the holders', the hold's and the alias's lifetime to the module lifetime again; a
//! tenant's delete drops its hold (and the alias it named), and the bytes go when the
//! last holder lets go, or one lifetime after their last use. Modules an operator
//! stored with `sluice module put` (no lifetime) are never deleted by a tenant.
//!
//! Beside the bytes, `sluice:{q}:module:<hash>:meta` holds the module's [`ModuleMeta`]
//! (written in the same atomic step as the bytes, with their lifetime, refreshed and
//! deleted with them), so a submitter reads what a module offers without fetching it.
//!
//! Keys derived from a module (its compiled artifacts and compile refusals, written by
//! the `artifacts` role) are listed in `sluice:{q}:module:<hash>:artifacts` and deleted
//! with the bytes: the set is read first and its members passed to the deleting script
//! as declared keys (Redis Cluster's rule), which re-checks them (a key added since makes
//! it read again). An upload with metadata (`put_with_meta`, `put_for_tenant`) also adds
//! the module's hash to the capped `sluice:{q}:precompile` stream, which fleet workers
//! with the shared cache follow to compile it before its first job.

use std::time::Duration;

use super::RedisQueue;
use super::artifacts::PRECOMPILE_STREAM_CAP;
use super::error::{StoreError, bad_reply, on_key, unavailable};
use super::reply::millis;
use super::scripts::SCRIPTS;
use crate::job::ModuleHash;
use crate::module_meta::{MetaDecodeError, ModuleMeta};
use crate::queue::QueueError;

/// The module store of a queue (from [`RedisQueue::modules`]).
#[derive(Clone, Copy)]
pub struct Modules<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why a module-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleStoreError {
    /// The bytes stored under a module's hash do not hash to it: the key is damaged (an
    /// upload of the real module repairs it). Not an invalid module: do not cache it.
    #[error("corrupt Redis contents: {key} holds {len} bytes that do not hash to its name")]
    NotItsHash {
        /// The module's key.
        key: String,
        /// How many bytes it holds.
        len: usize,
    },
    /// A module's metadata key holds something this build cannot read: garbage (a
    /// damaged key, repaired by recording the metadata again) or another format
    /// version.
    #[error("module metadata at {key} cannot be read: {source}")]
    BadMeta {
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        source: MetaDecodeError,
    },
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ModuleStoreError> for QueueError {
    fn from(e: ModuleStoreError) -> Self {
        match e {
            ModuleStoreError::Store(e) => e.into(),
            other => QueueError::Protocol(other.to_string()),
        }
    }
}

/// What storing a tenant's module did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModulePut {
    /// Stored (or already stored), held by the tenant, which now holds `held` modules.
    Stored {
        /// The module's hash.
        hash: ModuleHash,
        /// Modules the tenant holds now.
        held: u64,
    },
    /// The tenant already holds `held` modules, its quota.
    OverQuota {
        /// Modules the tenant holds.
        held: u64,
    },
}

/// What a tenant's delete did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleRemoved {
    /// The tenant held the module (or the alias); false means nothing was deleted.
    pub held: bool,
    /// The bytes were deleted (no tenant holds them any more).
    pub bytes_deleted: bool,
}

impl Modules<'_> {
    /// Stores a module's bytes under their hash (and `alias`, if given), with no
    /// lifetime, and its metadata beside them, in one transaction, then asks the fleet
    /// to precompile it (the precompile stream): how the scheduler stores a module.
    pub async fn put_with_meta(
        self,
        wasm: &[u8],
        meta: &ModuleMeta,
        alias: Option<&str>,
    ) -> Result<ModuleHash, ModuleStoreError> {
        let hash = self.put_bytes(wasm, Some(meta), alias).await?;
        let stream = self.q.keys.precompile();
        redis::cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(PRECOMPILE_STREAM_CAP)
            .arg("*")
            .arg("module")
            .arg(hash.to_hex())
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(on_key(&stream))?;
        Ok(hash)
    }

    /// Stores a module's bytes as [`put_with_meta`](Self::put_with_meta) does but
    /// records no metadata (a submitter computes it from the bytes on first use) and
    /// asks for no precompile: for callers with no WebAssembly parser (tests, tools).
    /// Metadata recorded before loses its lifetime with the bytes.
    pub async fn put(
        self,
        wasm: &[u8],
        alias: Option<&str>,
    ) -> Result<ModuleHash, ModuleStoreError> {
        self.put_bytes(wasm, None, alias).await
    }

    /// The one MULTI of [`put_with_meta`](Self::put_with_meta) and [`put`](Self::put).
    async fn put_bytes(
        self,
        wasm: &[u8],
        meta: Option<&ModuleMeta>,
        alias: Option<&str>,
    ) -> Result<ModuleHash, ModuleStoreError> {
        let hash = ModuleHash::of(wasm);
        let key = self.q.keys.module(&hash);
        let meta_key = self.q.keys.module_meta(&hash);
        let mut pipe = redis::pipe();
        pipe.atomic();
        // Not NX: the key is content-addressed, so overwriting changes nothing unless
        // the stored value was damaged, and then an upload repairs it.
        pipe.cmd("SET").arg(&key).arg(wasm).ignore();
        match meta {
            Some(meta) => pipe.cmd("SET").arg(&meta_key).arg(meta.encode()).ignore(),
            // The bytes have no lifetime now; metadata kept from before follows them.
            None => pipe.cmd("PERSIST").arg(&meta_key).ignore(),
        };
        if let Some(alias) = alias {
            pipe.cmd("SET")
                .arg(self.q.keys.alias(alias))
                .arg(hash.to_hex())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        Ok(hash)
    }

    /// A stored module's metadata, or `None` when none is recorded (the module is not
    /// stored, or was stored without it) or it was written by another format version.
    /// Garbage under the key is [`ModuleStoreError::BadMeta`].
    pub async fn meta(self, hash: &ModuleHash) -> Result<Option<ModuleMeta>, ModuleStoreError> {
        let key = self.q.keys.module_meta(hash);
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match ModuleMeta::decode(&bytes) {
            Ok(meta) => Ok(Some(meta)),
            Err(MetaDecodeError::UnknownVersion { .. }) => Ok(None),
            Err(source) => Err(ModuleStoreError::BadMeta { key, source }),
        }
    }

    /// Records the metadata of module `hash` (computed from its verified bytes), with
    /// the bytes' lifetime; returns false, writing nothing, when the module is not
    /// stored. For modules stored before metadata was recorded on upload.
    pub async fn record_meta(
        self,
        hash: &ModuleHash,
        meta: &ModuleMeta,
    ) -> Result<bool, ModuleStoreError> {
        let recorded: i64 = SCRIPTS
            .module_meta
            .key(self.q.keys.module(hash))
            .key(self.q.keys.module_meta(hash))
            .arg(meta.encode())
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(recorded == 1)
    }

    /// A module's bytes, if stored. Bytes that do not hash to `hash` are a corrupt key
    /// (an error naming it), not a module: callers must not cache them as invalid, since
    /// an upload of the real module repairs the key.
    pub async fn get(self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, ModuleStoreError> {
        let key = self.q.keys.module(hash);
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        match bytes {
            Some(b) if ModuleHash::of(&b) != *hash => {
                Err(ModuleStoreError::NotItsHash { key, len: b.len() })
            }
            other => Ok(other),
        }
    }

    /// The hash an alias (or a hash in hex) names.
    pub async fn resolve(self, name: &str) -> Result<Option<ModuleHash>, ModuleStoreError> {
        if let Ok(hash) = name.parse::<ModuleHash>() {
            return Ok(Some(hash));
        }
        let key = self.q.keys.alias(name);
        let hex: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?;
        Ok(hex.and_then(|h| h.parse().ok()))
    }

    /// Whether the module is stored (a worker fetching it now would find it).
    pub async fn is_stored(self, hash: &ModuleHash) -> Result<bool, ModuleStoreError> {
        Ok(redis::cmd("EXISTS")
            .arg(self.q.keys.module(hash))
            .query_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?)
    }

    /// Stores `wasm` and its metadata for `tenant` (named `name`, if given) with
    /// lifetime `ttl`, unless the tenant already holds `max_modules` other modules.
    pub async fn put_for_tenant(
        self,
        tenant: &str,
        wasm: &[u8],
        meta: &ModuleMeta,
        name: Option<&str>,
        ttl: Duration,
        max_modules: u32,
    ) -> Result<ModulePut, ModuleStoreError> {
        let hash = ModuleHash::of(wasm);
        let alias = self.q.keys.tenant_alias(tenant, name.unwrap_or(""));
        let reply: Vec<u64> = SCRIPTS
            .module_put
            .key(self.q.keys.module(&hash))
            .key(self.q.keys.module_owners(&hash))
            .key(self.q.keys.tenant_modules(tenant))
            .key(alias)
            .key(self.q.keys.module_meta(&hash))
            .key(self.q.keys.precompile())
            .arg(tenant)
            .arg(hash.to_hex())
            .arg(wasm)
            .arg(millis(ttl))
            .arg(max_modules)
            .arg(if name.is_some() { "1" } else { "0" })
            .arg(meta.encode())
            .arg(PRECOMPILE_STREAM_CAP)
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [1, held] => Ok(ModulePut::Stored { hash, held: *held }),
            [0, held] => Ok(ModulePut::OverQuota { held: *held }),
            other => Err(bad_reply(format!("module_put.lua answered {other:?}")).into()),
        }
    }

    /// A job of `tenant` is about to use module `hash` (named `name`, if by alias):
    /// its lifetime starts again. Returns whether the module is stored.
    pub async fn touch(
        self,
        tenant: &str,
        hash: &ModuleHash,
        name: Option<&str>,
        ttl: Duration,
    ) -> Result<bool, ModuleStoreError> {
        let stored: i64 = SCRIPTS
            .module_touch
            .key(self.q.keys.module(hash))
            .key(self.q.keys.module_owners(hash))
            .key(self.q.keys.tenant_modules(tenant))
            .key(self.q.keys.tenant_alias(tenant, name.unwrap_or("")))
            .key(self.q.keys.module_meta(hash))
            .arg(millis(ttl))
            .arg(hash.to_hex())
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(stored == 1)
    }

    /// The keys derived from module `hash` (its artifacts and compile refusals), as
    /// listed now: the deleting scripts take them as declared keys and refuse to run
    /// when one was added since (then they are read again).
    async fn derived_keys(self, hash: &ModuleHash) -> Result<Vec<String>, ModuleStoreError> {
        let key = self.q.keys.module_artifacts(hash);
        Ok(redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(&key))?)
    }

    /// `tenant` lets go of module `hash`, named by alias `name` if given.
    pub async fn remove_for_tenant(
        self,
        tenant: &str,
        hash: &ModuleHash,
        name: Option<&str>,
    ) -> Result<ModuleRemoved, ModuleStoreError> {
        for _ in 0..DERIVED_KEYS_TRIES {
            let mut script = SCRIPTS.module_rm.prepare_invoke();
            script
                .key(self.q.keys.module(hash))
                .key(self.q.keys.module_owners(hash))
                .key(self.q.keys.tenant_modules(tenant))
                .key(self.q.keys.tenant_alias(tenant, name.unwrap_or("")))
                .key(self.q.keys.module_meta(hash))
                .key(self.q.keys.module_artifacts(hash));
            for derived in self.derived_keys(hash).await? {
                script.key(derived);
            }
            let reply: Vec<i64> = script
                .arg(tenant)
                .arg(hash.to_hex())
                .arg(if name.is_some() { "1" } else { "0" })
                .invoke_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            return match reply.as_slice() {
                [-1] => continue,
                [held, deleted] => Ok(ModuleRemoved {
                    held: *held == 1,
                    bytes_deleted: *deleted == 1,
                }),
                other => Err(bad_reply(format!("module_rm.lua answered {other:?}")).into()),
            };
        }
        Err(changing_derived_keys(hash))
    }

    /// The operator's delete (`sluice module rm`): a hash deletes the bytes (whoever
    /// holds them) with their metadata and compiled artifacts, a name deletes that
    /// alias. Returns whether anything was deleted.
    pub async fn remove(self, name_or_hash: &str) -> Result<bool, ModuleStoreError> {
        let Ok(hash) = name_or_hash.parse::<ModuleHash>() else {
            let deleted: u64 = redis::cmd("DEL")
                .arg(self.q.keys.alias(name_or_hash))
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            return Ok(deleted > 0);
        };
        for _ in 0..DERIVED_KEYS_TRIES {
            let mut script = SCRIPTS.module_del.prepare_invoke();
            script
                .key(self.q.keys.module(&hash))
                .key(self.q.keys.module_owners(&hash))
                .key(self.q.keys.module_meta(&hash))
                .key(self.q.keys.module_artifacts(&hash));
            for derived in self.derived_keys(&hash).await? {
                script.key(derived);
            }
            let deleted: i64 = script
                .invoke_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            if deleted >= 0 {
                return Ok(deleted > 0);
            }
        }
        Err(changing_derived_keys(&hash))
    }
}

/// Times a delete reads a module's derived keys again when one was added meanwhile (a
/// worker publishing an artifact for another engine); a new engine each time is not
/// a fleet that exists.
const DERIVED_KEYS_TRIES: usize = 8;

/// A delete that never saw a still list of the module's derived keys.
fn changing_derived_keys(hash: &ModuleHash) -> ModuleStoreError {
    bad_reply(format!(
        "module {hash}'s compiled artifacts kept changing during {DERIVED_KEYS_TRIES} attempts \
         to delete them; try again"
    ))
    .into()
}
