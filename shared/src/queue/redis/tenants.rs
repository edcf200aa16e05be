//! The tenant store: policies and bearer tokens. Tokens are stored only as SHA-256
//! hashes (they are 256 random bits, so no salt is needed): reading Redis does not
//! reveal a token.
//!
//! Keys share the hash tag `{tenants}` (tenants span queues):
//! `sluice:{tenants}:policies` (hash: tenant → policy JSON), `sluice:{tenants}:tokens`
//! (hash: token hash → tenant), `sluice:{tenants}:tokens:<tenant>` (set of that tenant's
//! token hashes, for revocation).

use sha2::{Digest, Sha256};

use super::{RedisQueue, checked_script, corrupt, on_key, unavailable};
use crate::queue::QueueError;
use crate::tenant::{TenantPolicy, validate_name};

const POLICIES: &str = "sluice:{tenants}:policies";
const TOKENS: &str = "sluice:{tenants}:tokens";

fn tenant_tokens(tenant: &str) -> String {
    format!("{TOKENS}:{tenant}")
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    // Two v4 UUIDs: 244 bits from the OS's CSPRNG.
    format!(
        "slc_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn bad_name(e: crate::tenant::BadTenantName) -> QueueError {
    QueueError::Protocol(e.to_string())
}

impl RedisQueue {
    /// Creates a tenant with `policy` and returns its first token; `None` if the tenant
    /// already exists.
    pub async fn create_tenant(
        &self,
        tenant: &str,
        policy: &TenantPolicy,
    ) -> Result<Option<String>, QueueError> {
        validate_name(tenant).map_err(bad_name)?;
        let json =
            serde_json::to_string(policy).map_err(|e| QueueError::Protocol(e.to_string()))?;
        let created: bool = redis::cmd("HSETNX")
            .arg(POLICIES)
            .arg(tenant)
            .arg(json)
            .query_async(&mut self.connection())
            .await
            .map_err(on_key(POLICIES))?;
        if !created {
            return Ok(None);
        }
        self.issue_token(tenant).await.map(Some)
    }

    /// A new token for an existing tenant (older tokens stay valid until revoked).
    pub async fn issue_token(&self, tenant: &str) -> Result<String, QueueError> {
        if self.policy(tenant).await?.is_none() {
            return Err(QueueError::Protocol(format!("no tenant {tenant}")));
        }
        let token = new_token();
        let hash = token_hash(&token);
        checked_script(include_str!("scripts/issue.lua"))
            .key(TOKENS)
            .key(tenant_tokens(tenant))
            .arg(&hash)
            .arg(tenant)
            .invoke_async::<i64>(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(token)
    }

    /// Revokes every token of `tenant`; returns how many. One script
    /// (`revoke.lua`): a token issued at the same moment is revoked too or issued after.
    pub async fn revoke_tokens(&self, tenant: &str) -> Result<u64, QueueError> {
        checked_script(include_str!("scripts/revoke.lua"))
            .key(TOKENS)
            .key(tenant_tokens(tenant))
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    /// The tenant a bearer token belongs to.
    pub async fn tenant_for_token(&self, token: &str) -> Result<Option<String>, QueueError> {
        redis::cmd("HGET")
            .arg(TOKENS)
            .arg(token_hash(token))
            .query_async(&mut self.connection())
            .await
            .map_err(on_key(TOKENS))
    }

    /// Replaces an existing tenant's policy.
    pub async fn set_policy(&self, tenant: &str, policy: &TenantPolicy) -> Result<(), QueueError> {
        if self.policy(tenant).await?.is_none() {
            return Err(QueueError::Protocol(format!("no tenant {tenant}")));
        }
        let json =
            serde_json::to_string(policy).map_err(|e| QueueError::Protocol(e.to_string()))?;
        redis::cmd("HSET")
            .arg(POLICIES)
            .arg(tenant)
            .arg(json)
            .query_async::<()>(&mut self.connection())
            .await
            .map_err(on_key(POLICIES))
    }

    /// A tenant's policy, if the tenant exists.
    pub async fn policy(&self, tenant: &str) -> Result<Option<TenantPolicy>, QueueError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(POLICIES)
            .arg(tenant)
            .query_async(&mut self.connection())
            .await
            .map_err(on_key(POLICIES))?;
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|e| corrupt(&format!("{POLICIES} field {tenant}: {e}")))
        })
        .transpose()
    }

    /// Every tenant with its policy, sorted by name.
    pub async fn tenants(&self) -> Result<Vec<(String, TenantPolicy)>, QueueError> {
        let all: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(POLICIES)
            .query_async(&mut self.connection())
            .await
            .map_err(on_key(POLICIES))?;
        all.into_iter()
            .map(|(name, json)| {
                serde_json::from_str(&json)
                    .map(|policy| (name.clone(), policy))
                    .map_err(|e| corrupt(&format!("{POLICIES} field {name}: {e}")))
            })
            .collect()
    }
}
