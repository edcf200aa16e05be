//! Tenants' modules: a lifetime refreshed on use, holders, deletion and a per-tenant
//! count quota.
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

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{RedisQueue, millis, unavailable};
use crate::job::ModuleHash;
use crate::queue::QueueError;

// Built once: `Script::new` hashes the source, and these run per job or per round.
static MODULE_PUT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/module_put.lua")));
static MODULE_TOUCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/module_touch.lua")));
static MODULE_RM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/module_rm.lua")));

/// What storing a tenant's module did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModulePut {
    /// Stored (or already stored), held by the tenant, which now holds `held` modules.
    Stored { hash: ModuleHash, held: u64 },
    /// The tenant already holds `held` modules, its quota.
    OverQuota { held: u64 },
}

/// What a tenant's delete did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleRemoved {
    /// The tenant held the module (or the alias); false means nothing was deleted.
    pub held: bool,
    /// The bytes were deleted (no tenant holds them any more).
    pub bytes_deleted: bool,
}

impl RedisQueue {
    fn module_owners_key(&self, hash: &ModuleHash) -> String {
        format!("{}:owners", self.keys.module(hash))
    }

    fn tenant_modules_key(&self, tenant: &str) -> String {
        format!("{}modules:{tenant}", self.keys.prefix)
    }

    fn tenant_alias_key(&self, tenant: &str, name: &str) -> String {
        self.keys.alias(&format!("{tenant}/{name}"))
    }

    /// Stores `wasm` for `tenant` (named `name`, if given) with lifetime `ttl`, unless
    /// the tenant already holds `max_modules` other modules.
    pub async fn put_tenant_module(
        &self,
        tenant: &str,
        wasm: &[u8],
        name: Option<&str>,
        ttl: Duration,
        max_modules: u32,
    ) -> Result<ModulePut, QueueError> {
        let hash = ModuleHash::of(wasm);
        let alias = self.tenant_alias_key(tenant, name.unwrap_or(""));
        let script = &*MODULE_PUT;
        let reply: Vec<u64> = script
            .key(self.keys.module(&hash))
            .key(self.module_owners_key(&hash))
            .key(self.tenant_modules_key(tenant))
            .key(alias)
            .arg(tenant)
            .arg(hash.to_hex())
            .arg(wasm)
            .arg(millis(ttl))
            .arg(max_modules)
            .arg(if name.is_some() { "1" } else { "0" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [1, held] => Ok(ModulePut::Stored { hash, held: *held }),
            [0, held] => Ok(ModulePut::OverQuota { held: *held }),
            other => Err(QueueError::Protocol(format!(
                "module_put.lua answered {other:?}"
            ))),
        }
    }

    /// A job of `tenant` is about to use module `hash` (named `name`, if by alias):
    /// its lifetime starts again. Returns whether the module is stored.
    pub async fn touch_module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
        name: Option<&str>,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let script = &*MODULE_TOUCH;
        let stored: i64 = script
            .key(self.keys.module(hash))
            .key(self.module_owners_key(hash))
            .key(self.tenant_modules_key(tenant))
            .key(self.tenant_alias_key(tenant, name.unwrap_or("")))
            .arg(millis(ttl))
            .arg(hash.to_hex())
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(stored == 1)
    }

    /// `tenant` lets go of module `hash`, named by alias `name` if given.
    pub async fn remove_tenant_module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
        name: Option<&str>,
    ) -> Result<ModuleRemoved, QueueError> {
        let script = &*MODULE_RM;
        let reply: Vec<u64> = script
            .key(self.keys.module(hash))
            .key(self.module_owners_key(hash))
            .key(self.tenant_modules_key(tenant))
            .key(self.tenant_alias_key(tenant, name.unwrap_or("")))
            .arg(tenant)
            .arg(hash.to_hex())
            .arg(if name.is_some() { "1" } else { "0" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [held, deleted] => Ok(ModuleRemoved {
                held: *held == 1,
                bytes_deleted: *deleted == 1,
            }),
            other => Err(QueueError::Protocol(format!(
                "module_rm.lua answered {other:?}"
            ))),
        }
    }

    /// The operator's delete (`sluice module rm`): a hash deletes the bytes (whoever
    /// holds them), a name deletes that alias. Returns whether anything was deleted.
    pub async fn remove_module(&self, name_or_hash: &str) -> Result<bool, QueueError> {
        let keys = match name_or_hash.parse::<ModuleHash>() {
            Ok(hash) => vec![self.keys.module(&hash), self.module_owners_key(&hash)],
            Err(_) => vec![self.keys.alias(name_or_hash)],
        };
        let deleted: u64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(deleted > 0)
    }
}
