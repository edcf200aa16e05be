//! `POST /v1/batches`, `GET /v1/batches` (the tenant's batches, a page at a time) and
//! `GET /v1/batches/{id}` (whole counts, the jobs a page at a time) and
//! `DELETE /v1/batches/{id}` (cancels the jobs no worker has claimed).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_shared::parse::LimitField;
use sluice_shared::queue::redis::{Enqueued, ResultsError};
use sluice_shared::{BlobId, JobInput, Limits};

use super::auth::Tenant;
use super::error::{ApiError, ApiResult};
use super::jobs::created;
use super::params::{JobParams, page_json, paging};
use super::quotas::{check_args_env, input_too_large};
use super::turns::{buffered_turn, read_body};
use super::units::{UnitValue, set_limit_value};
use super::{Api, MAX_BUFFERED_BODY};

/// `POST /v1/batches` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    module: String,
    inputs: Vec<BatchInput>,
    #[serde(default)]
    limits: Option<BatchLimits>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchInput {
    name: String,
    /// The input, base64.
    data: String,
}

/// A batch's limits: sizes and durations as strings (`64MiB`, `2s`) or integers in base
/// units (bytes, milliseconds); fuel in units.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchLimits {
    fuel: Option<UnitValue>,
    memory: Option<UnitValue>,
    timeout: Option<UnitValue>,
    max_output: Option<UnitValue>,
}

/// Longest name of one batch input (it becomes the job's label).
pub(super) const MAX_INPUT_NAME: usize = 1024;

/// `POST /v1/batches`: many jobs of one module, inputs base64 in a JSON body (201 with the batch's and the jobs' ids).
pub(super) async fn post_batch(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    body: Body,
) -> ApiResult<Response> {
    use base64::Engine;
    let policy = api.policy(&tenant).await?;
    let _turn = buffered_turn(&api, &tenant).await?;
    let body = read_body(&api, body, MAX_BUFFERED_BODY, "batch body").await?;
    let request: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("batch body: {e}")))?;
    drop(body);
    if request.inputs.is_empty() {
        return Err(ApiError::bad_request("a batch has at least one input"));
    }
    if request.inputs.len() as u64 > u64::from(policy.max_batch_jobs) {
        api.metrics.quota_refused("max_batch_jobs");
        return Err(ApiError::too_large(
            "max_batch_jobs",
            format!(
                "{} inputs are over the quota of {} per batch",
                request.inputs.len(),
                policy.max_batch_jobs
            ),
        ));
    }
    let mut requested = Limits::default();
    let limits = request.limits.unwrap_or_default();
    let given = [
        (LimitField::Fuel, &limits.fuel),
        (LimitField::Memory, &limits.memory),
        (LimitField::Timeout, &limits.timeout),
        (LimitField::MaxOutput, &limits.max_output),
    ];
    for (field, value) in given {
        if let Some(value) = value {
            set_limit_value(&mut requested, field, value)
                .map_err(|e| ApiError::bad_request(format!("limits.{e}")))?;
        }
    }
    for key in request.env.keys() {
        if key.is_empty() || key.contains('=') {
            return Err(ApiError::bad_request(format!(
                "env: a key is non-empty and has no `=`; got {key:?}"
            )));
        }
    }
    let params = JobParams {
        module: request.module,
        requested,
        entry: None,
        args: request.args,
        env: request.env.into_iter().collect(),
    };
    check_args_env(&policy, &params.args, &params.env)?;
    // Arguments, environment and the module's name are copied into every job: they
    // count once per input.
    let per_job = sluice_shared::tenant::args_env_bytes(&params.args, &params.env)
        + super::jobs::program_bytes(&params.module);
    let per_job_total = per_job.saturating_mul(request.inputs.len() as u64);
    let mut batch_bytes = per_job_total;
    for input in &request.inputs {
        if input.name.len() > MAX_INPUT_NAME {
            return Err(ApiError::bad_request(format!(
                "an input name is over {MAX_INPUT_NAME} bytes"
            )));
        }
        // base64's decoded size, without decoding yet.
        batch_bytes = batch_bytes.saturating_add(input.data.len() as u64 / 4 * 3);
    }
    if batch_bytes > policy.max_batch_bytes {
        api.metrics.quota_refused("max_batch_bytes");
        return Err(ApiError::too_large(
            "max_batch_bytes",
            format!(
                "the batch would enqueue {batch_bytes} bytes (inputs plus each job's arguments, environment and module name), over the quota of {}",
                policy.max_batch_bytes
            ),
        ));
    }
    let template = api.job_template(&tenant, &policy, &params).await?;
    api.check_backlog(&tenant, &policy, request.inputs.len() as u64)
        .await?;
    let mut decoded = Vec::with_capacity(request.inputs.len());
    let mut input_bytes: u64 = 0;
    for input in request.inputs {
        let data = base64::engine::general_purpose::STANDARD
            .decode(input.data.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("input {:?}: {e}", input.name)))?;
        if data.len() as u64 > policy.max_input_bytes {
            api.metrics.quota_refused("max_input_bytes");
            return Err(input_too_large(&policy));
        }
        input_bytes += data.len() as u64;
        decoded.push((input.name, data));
    }
    api.reserve_stored(&tenant, &policy, input_bytes.saturating_add(per_job_total))
        .await?;
    // Inputs over the inline limit become blobs, as a single job's do: envelopes stay
    // small however large a batch's inputs are.
    let inline_limit = api.queue.config().inline_limit;
    let mut jobs = Vec::with_capacity(decoded.len());
    let mut blobs = Vec::new();
    let mut failed = None;
    for (name, data) in decoded {
        let input = if data.len() > inline_limit {
            let mut writer = api.queue.blobs().writer();
            let written = match writer.write(&data).await {
                Ok(()) => writer.finish().await,
                Err(e) => Err(e),
            };
            match written {
                Ok((id, len)) => {
                    blobs.push((id.clone(), len));
                    JobInput::Blob {
                        id: BlobId::new(id),
                        len,
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        } else {
            JobInput::Inline(data)
        };
        let mut job = template(input);
        job.label = name;
        jobs.push(job);
    }
    if let Some(e) = failed {
        // Nothing was enqueued yet: the blobs written so far belong to no job.
        for (id, len) in &blobs {
            let _ = api.queue.blobs().delete(id.as_str(), *len).await;
        }
        return Err(e.into());
    }
    let batch = uuid::Uuid::now_v7().to_string();
    let enqueued = api
        .queue
        .admission()
        .enqueue_owned_within(&jobs, &tenant, Some(&batch), Some(policy.max_backlog_jobs))
        .await?;
    if let Enqueued::BacklogFull { waiting } = enqueued {
        // Nothing was enqueued: the blobs written belong to no job.
        for (id, len) in &blobs {
            let _ = api.queue.blobs().delete(id.as_str(), *len).await;
        }
        return Err(api.backlog_full(&policy, waiting, jobs.len() as u64));
    }
    api.submitted.notify_one();
    let listed: Vec<Value> = jobs
        .iter()
        .map(|j| json!({ "name": j.label, "id": j.id.to_string() }))
        .collect();
    Ok(created(
        &format!("/v1/batches/{batch}"),
        json!({ "id": batch, "jobs": listed }),
    ))
}

/// `GET /v1/batches[?limit=N&cursor=C]`: the tenant's batches, newest first, a page at
/// a time.
pub(super) async fn list_batches(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let paging = paging(query.as_deref())?;
    let after: Option<uuid::Uuid> = paging.after_as()?;
    let page = api
        .queue
        .listing()
        .batches(&tenant, after, paging.limit)
        .await?;
    let items = page
        .items
        .iter()
        .map(|b| json!({ "id": b.id, "total": b.total, "done": b.done, "cancelled": b.cancelled }))
        .collect();
    Ok(axum::Json(page_json(items, page.next)).into_response())
}

/// `GET /v1/batches/{id}[?limit=N&cursor=C]`: the batch's counts by outcome and of
/// cancelled jobs (always whole; `done` counts both) and a page of its jobs in
/// submission order.
pub(super) async fn get_batch(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    // A batch id is a UUID; anything else never reaches a Redis key (`<id>:jobs` would
    // name another key type, and its error would tell existing ids from unknown ones).
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found("batch"))?
        .to_string();
    let paging = paging(query.as_deref())?;
    let offset: u64 = paging.after_as()?.unwrap_or(0);
    // No batch has more jobs than a policy's `max_batch_jobs` (a u32): a larger offset
    // is no cursor of ours (and Redis would refuse it as a list index).
    if offset > u64::from(u32::MAX) {
        return Err(ApiError::bad_request("cursor: not a cursor of this list"));
    }
    // From the batch's outcome counters (kept by the queue scripts), not its results.
    let (counts, page) = api
        .queue
        .listing()
        .batch_with_page(&id, &tenant, offset, paging.limit)
        .await?
        .ok_or_else(|| ApiError::not_found("batch"))?;
    let jobs: Vec<Value> = page
        .items
        .iter()
        .map(|job| {
            json!({
                "id": job.id.to_string(),
                "state": super::jobs::listed_state(job.outcome, job.cancelled),
                "outcome": job.outcome,
            })
        })
        .collect();
    let cursor = super::params::cursor_of(page.next);
    Ok(axum::Json(json!({
        "id": id,
        "total": counts.total,
        "done": counts.done(),
        "cancelled": counts.cancelled,
        "by_outcome": counts.by_outcome,
        "jobs": jobs,
        "next_cursor": cursor,
    }))
    .into_response())
}

/// `DELETE /v1/batches/{id}`: cancels every job of the batch no worker has claimed yet;
/// running jobs run to their end. Answers how many were cancelled, running, finished.
pub(super) async fn cancel_batch(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found("batch"))?
        .to_string();
    // Another tenant's batch, or a command-line batch, is a 404 as an unknown one: the
    // owner is checked from the batch hash alone, before its job list is read (once,
    // by the cancel).
    if !api.queue.listing().api_batch(&id, &tenant).await? {
        return Err(ApiError::not_found("batch"));
    }
    let done = match api.queue.results().cancel_batch(&id).await {
        Ok(done) => done,
        // Expired between the two reads.
        Err(ResultsError::UnknownBatch { .. }) => return Err(ApiError::not_found("batch")),
        Err(e) => return Err(e.into()),
    };
    if done.corrupt > 0 {
        tracing::warn!(batch = %id, corrupt = done.corrupt, "cancelling a batch left jobs with corrupt records alone");
    }
    Ok(axum::Json(json!({
        "id": id,
        "cancelled": done.cancelled,
        "running": done.running,
        "finished": done.finished,
    }))
    .into_response())
}
