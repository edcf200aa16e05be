//! The admin routes under `/v1/admin/tenants`: create a tenant, issue and revoke its
//! tokens, set its policy.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sluice_shared::TenantPolicy;

use super::Api;
use super::auth::Admin;
use super::error::{ApiError, ApiResult};

/// `POST /v1/admin/tenants` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    name: String,
    #[serde(default)]
    policy: Option<TenantPolicy>,
}

/// A policy from a request body, checked value by value.
pub(super) fn policy_from(body: Option<TenantPolicy>) -> ApiResult<TenantPolicy> {
    let policy = body.unwrap_or_default();
    policy
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(policy)
}

/// A tenant's name from a path: 404 for a name that cannot be a tenant's (no tenant
/// has it), rather than a 400 for the name's form.
fn tenant_path(name: &str) -> ApiResult<&str> {
    sluice_shared::tenant::validate_name(name).map_err(|_| ApiError::not_found("tenant"))?;
    Ok(name)
}

/// An existing tenant's name from a path: 404 for a name that cannot be a tenant's or
/// names none.
pub(super) async fn existing_tenant(api: &Api, name: &str) -> ApiResult<TenantPolicy> {
    tenant_path(name)?;
    api.queue
        .tenants()
        .policy(name)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

/// `POST /v1/admin/tenants`: creates a tenant; answers its first token (201).
pub(super) async fn admin_create_tenant(
    State(api): State<Arc<Api>>,
    _: Admin,
    body: Bytes,
) -> ApiResult<Response> {
    let request: NewTenant = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("tenant body: {e}")))?;
    sluice_shared::tenant::validate_name(&request.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let policy = policy_from(request.policy)?;
    let token = api
        .queue
        .tenants()
        .create(&request.name, &policy)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "exists", "the tenant exists"))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "tenant": request.name, "token": token })),
    )
        .into_response())
}

/// `POST /v1/admin/tenants/{name}/tokens`: another token for the tenant (201).
pub(super) async fn admin_issue_token(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    // A tenant that does not exist is the store's `TenantError::NotFound`: a 404.
    let token = api.queue.tenants().issue_token(tenant_path(&name)?).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "tenant": name, "token": token })),
    )
        .into_response())
}

/// `DELETE /v1/admin/tenants/{name}/tokens`: revokes every token of the tenant.
pub(super) async fn admin_revoke(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    existing_tenant(&api, &name).await?;
    let revoked = api.queue.tenants().revoke_tokens(&name).await?;
    Ok(axum::Json(json!({ "tenant": name, "revoked": revoked })).into_response())
}

/// `PUT /v1/admin/tenants/{name}/policy`: replaces the tenant's policy.
pub(super) async fn admin_set_policy(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let policy: TenantPolicy = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("policy body: {e}")))?;
    let policy = policy_from(Some(policy))?;
    api.queue
        .tenants()
        .set_policy(tenant_path(&name)?, &policy)
        .await?;
    Ok(axum::Json(json!({ "tenant": name, "policy": policy })).into_response())
}
