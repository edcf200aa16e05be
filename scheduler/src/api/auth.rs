//! Who is asking: the tenant a bearer token names, or the admin token.

use std::sync::Arc;

use axum::http::header;

use super::Api;
use super::error::{ApiError, ApiResult};
use super::log::Caller;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

pub(super) fn bearer(parts: &Parts) -> ApiResult<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing bearer token"))
}

/// The tenant the request's token belongs to.
pub struct Tenant(pub(super) String);

impl FromRequestParts<Arc<Api>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> ApiResult<Self> {
        let token = bearer(parts)?;
        let tenant = api
            .queue
            .tenants()
            .for_token(token)
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        Caller::set(parts, &tenant);
        Ok(Tenant(tenant))
    }
}

/// A request made with the admin token.
pub struct Admin;

impl FromRequestParts<Arc<Api>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> ApiResult<Self> {
        let token = bearer(parts)?;
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Comparing hashes (not tokens) keeps the comparison's timing independent of
        // how much of the secret a guess got right.
        if api.admin_token_sha256 == Some(given) {
            Caller::set(parts, "admin");
            return Ok(Admin);
        }
        // A tenant's valid token is known credentials without the right: 403, not 401.
        match api.queue.tenants().for_token(token).await? {
            Some(tenant) => {
                Caller::set(parts, &tenant);
                Err(ApiError::forbidden(
                    "this route needs the admin token; a tenant's token may not use it",
                ))
            }
            None => Err(ApiError::unauthorized("admin token required")),
        }
    }
}
