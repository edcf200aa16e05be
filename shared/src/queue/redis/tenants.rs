//! The tenant store: policies and bearer tokens. Tokens are stored only as SHA-256
//! hashes (they are 256 random bits, so no salt is needed): reading Redis does not
//! reveal a token.
//!
//! Keys share the hash tag `{tenants}` (tenants span queues):
//! `sluice:{tenants}:policies` (hash: tenant → policy JSON), `sluice:{tenants}:tokens`
//! (hash: token hash → tenant), `sluice:{tenants}:tokens:<tenant>` (set of that tenant's
//! token hashes, for revocation).

use sha2::{Digest, Sha256};

use super::RedisQueue;
use super::error::{StoreError, on_key, unavailable};
use super::keys::{TENANT_POLICIES as POLICIES, TENANT_TOKENS as TOKENS, tenant_tokens};
use super::scripts::SCRIPTS;
use crate::queue::QueueError;
use crate::tenant::{BadTenantName, TenantPolicy, validate_name};

/// The tenant store (from [`RedisQueue::tenants`]).
#[derive(Clone, Copy)]
pub struct Tenants<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why a tenant-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// No tenant of that name exists.
    #[error("no tenant {0}")]
    NotFound(String),
    /// The name cannot be a tenant's.
    #[error(transparent)]
    BadName(#[from] BadTenantName),
    /// The tenant's stored policy does not parse (a damaged or foreign value).
    #[error("corrupt Redis contents: {POLICIES} field {tenant}: {reason}")]
    BadPolicy {
        /// The tenant.
        tenant: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TenantError> for QueueError {
    /// For callers that speak [`QueueError`] (a submitter clamping limits to a policy).
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::Store(e) => e.into(),
            other => QueueError::Protocol(other.to_string()),
        }
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A policy as stored (serializing plain data cannot fail).
fn policy_json(policy: &TenantPolicy) -> String {
    serde_json::to_string(policy).expect("a tenant policy serializes")
}

fn new_token() -> String {
    // Two v4 UUIDs: 244 bits from the OS's CSPRNG.
    format!(
        "slc_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Tenants<'_> {
    /// Creates a tenant with `policy` and returns its first token; `None` if the tenant
    /// already exists.
    pub async fn create(
        self,
        tenant: &str,
        policy: &TenantPolicy,
    ) -> Result<Option<String>, TenantError> {
        validate_name(tenant)?;
        let json = policy_json(policy);
        let created: bool = redis::cmd("HSETNX")
            .arg(POLICIES)
            .arg(tenant)
            .arg(json)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(POLICIES))?;
        if !created {
            return Ok(None);
        }
        self.issue_token(tenant).await.map(Some)
    }

    /// A new token for an existing tenant (older tokens stay valid until revoked).
    pub async fn issue_token(self, tenant: &str) -> Result<String, TenantError> {
        if self.policy(tenant).await?.is_none() {
            return Err(TenantError::NotFound(tenant.to_owned()));
        }
        let token = new_token();
        let hash = token_hash(&token);
        SCRIPTS
            .issue
            .key(TOKENS)
            .key(tenant_tokens(tenant))
            .arg(&hash)
            .arg(tenant)
            .invoke_async::<i64>(&mut self.q.connection())
            .await
            .map_err(unavailable)?;
        Ok(token)
    }

    /// Revokes every token of `tenant`; returns how many. One script
    /// (`revoke.lua`): a token issued at the same moment is revoked too or issued after.
    pub async fn revoke_tokens(self, tenant: &str) -> Result<u64, TenantError> {
        SCRIPTS
            .revoke
            .key(TOKENS)
            .key(tenant_tokens(tenant))
            .invoke_async(&mut self.q.connection())
            .await
            .map_err(|e| unavailable(e).into())
    }

    /// The tenant a bearer token belongs to.
    pub async fn for_token(self, token: &str) -> Result<Option<String>, TenantError> {
        redis::cmd("HGET")
            .arg(TOKENS)
            .arg(token_hash(token))
            .query_async(&mut self.q.connection())
            .await
            .map_err(|e| on_key(TOKENS)(e).into())
    }

    /// Replaces an existing tenant's policy.
    pub async fn set_policy(self, tenant: &str, policy: &TenantPolicy) -> Result<(), TenantError> {
        if self.policy(tenant).await?.is_none() {
            return Err(TenantError::NotFound(tenant.to_owned()));
        }
        let json = policy_json(policy);
        redis::cmd("HSET")
            .arg(POLICIES)
            .arg(tenant)
            .arg(json)
            .query_async::<()>(&mut self.q.connection())
            .await
            .map_err(|e| on_key(POLICIES)(e).into())
    }

    /// A tenant's policy, if the tenant exists.
    pub async fn policy(self, tenant: &str) -> Result<Option<TenantPolicy>, TenantError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(POLICIES)
            .arg(tenant)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(POLICIES))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| TenantError::BadPolicy {
                tenant: tenant.to_owned(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Every tenant with its policy, sorted by name.
    pub async fn all(self) -> Result<Vec<(String, TenantPolicy)>, TenantError> {
        let all: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(POLICIES)
            .query_async(&mut self.q.connection())
            .await
            .map_err(on_key(POLICIES))?;
        all.into_iter()
            .map(|(name, json)| {
                serde_json::from_str(&json)
                    .map(|policy| (name.clone(), policy))
                    .map_err(|e| TenantError::BadPolicy {
                        tenant: name.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }
}
