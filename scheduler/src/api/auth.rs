//! Who is asking: the tenant a bearer token names, or the admin token.

use std::sync::Arc;

use axum::http::{StatusCode, header};

use super::Api;
use super::error::{ApiError, ApiResult};
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
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token",
            )
        })
}

/// The tenant the request's token belongs to.
pub struct Tenant(pub(super) String);

impl FromRequestParts<Arc<Api>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> ApiResult<Self> {
        let token = bearer(parts)?;
        api.queue
            .tenants()
            .for_token(token)
            .await?
            .map(Tenant)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "unknown or revoked token",
                )
            })
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
        match api.admin_token_sha256 {
            Some(admin) if admin == given => Ok(Admin),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin token required",
            )),
        }
    }
}
