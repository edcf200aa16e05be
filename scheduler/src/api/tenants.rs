//! The admin routes under `/v1/admin/tenants`: list tenants, create one, read one,
//! issue and revoke its tokens, replace (PUT) or change (PATCH) its policy. Policies
//! take sizes and durations as strings (`64MiB`, `2s`) or base-unit integers (bytes,
//! milliseconds) and are answered in base units.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_shared::TenantPolicy;

use super::Api;
use super::auth::Admin;
use super::error::{ApiError, ApiResult};
use super::jobs::created;
use super::params::{page_json, paging};
use super::units::policy_in_base_units;

/// `POST /v1/admin/tenants` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    name: String,
    #[serde(default)]
    policy: Option<Value>,
}

/// A policy from JSON in either unit convention (see `units`).
fn parse_policy(json: Value) -> ApiResult<TenantPolicy> {
    let json = policy_in_base_units(json)?;
    serde_json::from_value(json).map_err(|e| ApiError::bad_request(format!("policy: {e}")))
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
    let policy = policy_from(request.policy.map(parse_policy).transpose()?)?;
    let token = api
        .queue
        .tenants()
        .create(&request.name, &policy)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "exists", "the tenant exists"))?;
    Ok(created(
        &format!("/v1/admin/tenants/{}", request.name),
        json!({ "tenant": request.name, "token": token }),
    ))
}

/// `GET /v1/admin/tenants[?limit=N&cursor=C]`: every tenant with its policy, by name.
pub(super) async fn admin_list_tenants(
    State(api): State<Arc<Api>>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let paging = paging(query.as_deref())?;
    let after = paging.after.as_deref();
    if let Some(after) = after {
        sluice_shared::tenant::validate_name(after)
            .map_err(|_| ApiError::bad_request("cursor: not a cursor of this list"))?;
    }
    let page = api.queue.listing().tenants(after, paging.limit).await?;
    let items = page
        .items
        .iter()
        .map(|(name, policy)| json!({ "tenant": name, "policy": policy }))
        .collect();
    Ok(axum::Json(page_json(items, page.next)).into_response())
}

/// `GET /v1/admin/tenants/{name}`: the tenant's policy.
pub(super) async fn admin_get_tenant(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let policy = existing_tenant(&api, &name).await?;
    Ok(axum::Json(json!({ "tenant": name, "policy": policy })).into_response())
}

/// `POST /v1/admin/tenants/{name}/tokens`: another token for the tenant (201).
pub(super) async fn admin_issue_token(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    // A tenant that does not exist is the store's `TenantError::NotFound`: a 404.
    let token = api.queue.tenants().issue_token(tenant_path(&name)?).await?;
    Ok(created(
        &format!("/v1/admin/tenants/{name}"),
        json!({ "tenant": name, "token": token }),
    ))
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
    let json: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("policy body: {e}")))?;
    let policy = policy_from(Some(parse_policy(json)?))?;
    api.queue
        .tenants()
        .set_policy(tenant_path(&name)?, &policy)
        .await?;
    Ok(axum::Json(json!({ "tenant": name, "policy": policy })).into_response())
}

/// `PATCH /v1/admin/tenants/{name}/policy`: changes only the fields the body names (a
/// JSON merge patch: `null` puts a field back to its default); the rest stay.
pub(super) async fn admin_patch_policy(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("policy body: {e}")))?;
    let Value::Object(patch) = policy_in_base_units(patch)? else {
        return Err(ApiError::bad_request(
            "policy body: a JSON object of fields to change",
        ));
    };
    let current = existing_tenant(&api, &name).await?;
    let Value::Object(mut merged) = serde_json::to_value(&current).expect("a policy serializes")
    else {
        unreachable!("a policy serializes as an object");
    };
    for (field, value) in patch {
        if value.is_null() {
            merged.remove(&field);
        } else {
            merged.insert(field, value);
        }
    }
    let policy: TenantPolicy = serde_json::from_value(Value::Object(merged))
        .map_err(|e| ApiError::bad_request(format!("policy: {e}")))?;
    let policy = policy_from(Some(policy))?;
    // Read, merge and write are separate steps: two PATCHes of one tenant at once may
    // lose one's change (the last write wins, as with PUT).
    api.queue.tenants().set_policy(&name, &policy).await?;
    Ok(axum::Json(json!({ "tenant": name, "policy": policy })).into_response())
}
