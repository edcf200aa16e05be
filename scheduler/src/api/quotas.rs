//! The tenant's policy applied to a request: argument quotas, the backlog quota and
//! the stored-bytes quota, each refusal answered 413 or 429.

use std::time::Duration;

use sluice_shared::TenantPolicy;
use sluice_shared::queue::redis::Reservation;

use super::Api;
use super::error::{ApiError, ApiResult};

impl Api {
    /// The tenant's policy; a tenant whose record vanished (deleted while its token
    /// lived) gets the fleet default, as the worker does.
    pub(super) async fn policy(&self, tenant: &str) -> ApiResult<TenantPolicy> {
        Ok(self
            .queue
            .tenants()
            .policy(tenant)
            .await?
            .unwrap_or_default())
    }

    /// Refuses `jobs` more jobs when the tenant's backlog would pass its quota.
    pub(super) async fn check_backlog(
        &self,
        tenant: &str,
        policy: &TenantPolicy,
        jobs: u64,
    ) -> ApiResult<()> {
        let waiting = self.queue.admission().backlog_len(tenant).await?;
        self.judge_backlog(policy, waiting, jobs)
    }

    /// Refuses `jobs` more jobs when `waiting` (the backlog's length, read by the
    /// caller) plus them would pass the backlog quota.
    pub(super) fn judge_backlog(
        &self,
        policy: &TenantPolicy,
        waiting: u64,
        jobs: u64,
    ) -> ApiResult<()> {
        if waiting.saturating_add(jobs) > policy.max_backlog_jobs {
            return Err(self.backlog_full(policy, waiting, jobs));
        }
        Ok(())
    }

    /// The 429 for a backlog quota refusal: by the early check above (a refused request
    /// costs no upload), or by `enqueue_owned.lua`, which checks again atomically with
    /// the enqueue so concurrent requests cannot together pass the quota.
    pub(super) fn backlog_full(&self, policy: &TenantPolicy, waiting: u64, jobs: u64) -> ApiError {
        self.metrics.quota_refused("max_backlog_jobs");
        // The backlog drains at the tenant's admission rate; a second is the
        // shortest wait after which trying again can succeed.
        let wait = policy
            .rate_per_second
            .map(|rate| Duration::from_secs_f64((jobs as f64 / rate).clamp(1.0, 3600.0)))
            .unwrap_or(Duration::from_secs(1));
        ApiError::quota_exceeded(
            "max_backlog_jobs",
            format!(
                "{waiting} jobs are waiting and {jobs} more would pass the backlog quota of {}",
                policy.max_backlog_jobs
            ),
            Some(wait),
        )
    }

    /// Counts `bytes` of the tenant's input against its stored-bytes quota.
    pub(super) async fn reserve_stored(
        &self,
        tenant: &str,
        policy: &TenantPolicy,
        bytes: u64,
    ) -> ApiResult<()> {
        match self
            .queue
            .admission()
            .reserve_stored(tenant, bytes, policy.max_stored_bytes)
            .await?
        {
            Reservation::Granted { .. } => Ok(()),
            Reservation::Refused { used, retry_after } => {
                self.metrics.quota_refused("max_stored_bytes");
                Err(ApiError::quota_exceeded(
                    "max_stored_bytes",
                    format!(
                        "{used} bytes are stored for the tenant and {bytes} more would pass the quota of {}",
                        policy.max_stored_bytes
                    ),
                    Some(retry_after),
                ))
            }
        }
    }
}

/// Refuses arguments and environment over the policy's quotas (413).
pub(super) fn check_args_env(
    policy: &TenantPolicy,
    args: &[String],
    env: &[(String, String)],
) -> ApiResult<()> {
    if args.len() as u64 > u64::from(policy.max_args) {
        return Err(ApiError::too_large(
            "max_args",
            format!(
                "{} arguments are over the quota of {}",
                args.len(),
                policy.max_args
            ),
        ));
    }
    if env.len() as u64 > u64::from(policy.max_env) {
        return Err(ApiError::too_large(
            "max_env",
            format!(
                "{} environment variables are over the quota of {}",
                env.len(),
                policy.max_env
            ),
        ));
    }
    let bytes = sluice_shared::tenant::args_env_bytes(args, env);
    if bytes > policy.max_args_env_bytes {
        return Err(ApiError::too_large(
            "max_args_env_bytes",
            format!(
                "arguments and environment of {bytes} bytes are over the quota of {}",
                policy.max_args_env_bytes
            ),
        ));
    }
    Ok(())
}

pub(super) fn input_too_large(policy: &TenantPolicy) -> ApiError {
    ApiError::too_large(
        "max_input_bytes",
        format!("the input is over {} bytes", policy.max_input_bytes),
    )
}
