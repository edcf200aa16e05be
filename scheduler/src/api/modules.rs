//! `PUT /v1/modules`, `GET /v1/modules` (the tenant's modules, a page at a time),
//! `GET` and `DELETE /v1/modules/{name}`, and resolving the module a job
//! names (with its entry point, remembered by hash).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_shared::queue::redis::ModulePut;
use sluice_shared::{EntryPoint, ModuleHash};

use super::auth::Tenant;
use super::error::{ApiError, ApiResult};
use super::jobs::created;
use super::params::{MAX_NAME, module_name, page_json, paging, path_segment};
use super::turns::{buffered_turn, read_body};
use super::{Api, MAX_ENTRY_POINTS};
use crate::{module_meta, modules};

impl Api {
    /// The hash of the module a tenant names (a hash, or an alias of its own), and the
    /// alias if it gave one; 404 for a name that cannot be an alias or names none.
    async fn resolve<'n>(
        &self,
        tenant: &str,
        name: &'n str,
    ) -> ApiResult<(ModuleHash, Option<&'n str>)> {
        match name.parse::<ModuleHash>() {
            Ok(hash) => Ok((hash, None)),
            Err(_) => {
                if name.is_empty() || name.len() > MAX_NAME || name.contains('/') {
                    return Err(ApiError::not_found("module"));
                }
                let hash = self
                    .queue
                    .modules()
                    .resolve(&format!("{tenant}/{name}"))
                    .await?
                    .ok_or_else(|| ApiError::not_found("module"))?;
                Ok((hash, Some(name)))
            }
        }
    }

    /// The module a tenant names: a hash, or an alias of its own. Using it starts its
    /// lifetime again.
    pub(super) async fn module(
        &self,
        tenant: &str,
        name: &str,
    ) -> ApiResult<(ModuleHash, EntryPoint)> {
        let (hash, alias) = self.resolve(tenant, name).await?;
        if !self
            .queue
            .modules()
            .touch(tenant, &hash, alias, self.config.module_ttl)
            .await?
        {
            return Err(ApiError::not_found("module"));
        }
        // The touch just checked that the module is stored.
        if let Some(entry) = self.known_entry(&hash) {
            return Ok((hash, entry));
        }
        // Its metadata, recorded on upload: the module itself is never downloaded.
        let entry = module_meta::stored_meta(&self.queue, &hash)
            .await?
            .ok_or_else(|| ApiError::not_found("module"))?
            .default_entry;
        self.remember_entry(hash, entry.clone());
        Ok((hash, entry))
    }

    pub(super) fn known_entry(&self, hash: &ModuleHash) -> Option<EntryPoint> {
        let known = self.entry_points.lock();
        known.get(hash).cloned()
    }

    pub(super) fn remember_entry(&self, hash: ModuleHash, entry: EntryPoint) {
        let mut known = self.entry_points.lock();
        if known.len() >= MAX_ENTRY_POINTS
            && !known.contains_key(&hash)
            && let Some(evicted) = known.keys().next().copied()
        {
            known.remove(&evicted);
        }
        known.insert(hash, entry);
    }
}

/// `PUT /v1/modules[?name=]`: validates and stores a module for the tenant (201).
pub(super) async fn put_module(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let name = module_name(query.as_deref())?;
    let policy = api.policy(&tenant).await?;
    let _turn = buffered_turn(&api, &tenant).await?;
    let bytes = read_body(&api, body, modules::MAX_MODULE_BYTES, "module").await?;
    let gauge = api.metrics.clone();
    let (wasm, _, meta) =
        modules::prepare_off_thread(bytes, move || gauge.validation_started()).await?;
    let stored = api
        .queue
        .modules()
        .put_for_tenant(
            &tenant,
            &wasm,
            &meta,
            name.as_deref(),
            api.config.module_ttl,
            policy.max_modules,
        )
        .await?;
    let hash = match stored {
        ModulePut::Stored { hash, .. } => {
            api.remember_entry(hash, meta.default_entry.clone());
            hash
        }
        ModulePut::OverQuota { held } => {
            api.metrics.quota_refused("max_modules");
            return Err(ApiError::quota_exceeded(
                "max_modules",
                format!(
                    "the tenant holds {held} modules, its quota; delete one with DELETE /v1/modules/{{name}}"
                ),
                None,
            ));
        }
    };
    let body = json!({
        "hash": hash.to_hex(),
        "name": name,
        "bytes": wasm.len(),
        "ttl_seconds": api.config.module_ttl.as_secs(),
    });
    let location = format!(
        "/v1/modules/{}",
        path_segment(name.as_deref().unwrap_or(&hash.to_hex()))
    );
    Ok(created(&location, body))
}

/// `GET /v1/modules[?limit=N&cursor=C]`: the modules the tenant holds, by hash, with
/// when each hold ends unless a job uses it.
pub(super) async fn list_modules(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let paging = paging(query.as_deref())?;
    let after: Option<ModuleHash> = paging.after_as()?;
    let page = api
        .queue
        .listing()
        .modules(&tenant, after, paging.limit)
        .await?;
    let items = page
        .items
        .iter()
        .map(|m| json!({ "hash": m.hash.to_hex(), "expires_at_ms": m.expires_at_ms }))
        .collect();
    Ok(axum::Json(page_json(items, page.next)).into_response())
}

/// `GET /v1/modules/{name}`: a module the tenant holds (by its name or hash).
pub(super) async fn get_module(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (hash, alias) = api.resolve(&tenant, &name).await?;
    let hold = api
        .queue
        .listing()
        .module_hold(&tenant, &hash)
        .await?
        .ok_or_else(|| ApiError::not_found("module"))?;
    Ok(axum::Json(json!({
        "hash": hash.to_hex(),
        "name": alias,
        "expires_at_ms": hold.expires_at_ms,
    }))
    .into_response())
}

/// `DELETE /v1/modules/{name}`: a name deletes that alias; a hash deletes the tenant's hold on the bytes.
pub(super) async fn delete_module(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (hash, alias) = api.resolve(&tenant, &name).await?;
    let removed = api
        .queue
        .modules()
        .remove_for_tenant(&tenant, &hash, alias)
        .await?;
    if !removed.held {
        return Err(ApiError::not_found("module"));
    }
    Ok(axum::Json(json!({
        "hash": hash.to_hex(),
        "name": alias,
        "bytes_deleted": removed.bytes_deleted,
    }))
    .into_response())
}
