//! `POST /v1/jobs` (the input streamed inline or into a blob; with `?wait=` answered
//! with the job's output when it finishes in time, `wait.rs`), `GET /v1/jobs` (the
//! tenant's jobs, a page at a time), `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/output`
//! and `DELETE /v1/jobs/{id}`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_shared::queue::redis::{Cancelled, Enqueued};
use sluice_shared::{
    BlobId, EntryPoint, Job, JobId, JobInput, JobOutput, Limits, ModuleHash, ModuleName,
    OutcomeKind, ProgramName, Queue, ReportLine, TenantId, TenantPolicy,
};
use tokio::time::Instant;

use super::Api;
use super::auth::Tenant;
use super::error::{ApiError, ApiResult};
use super::params::{JobParams, JobQuery, job_params, page_json, paging};
use super::quotas::{check_args_env, input_too_large};
use super::wait::{Slot, Watch};

impl Api {
    /// A template for this tenant's jobs: the module resolved, the parameters checked
    /// against the policy's argument quotas and the limits clamped to it; `Job`
    /// instances follow with `template(input)`.
    pub(super) async fn job_template(
        &self,
        tenant: &str,
        policy: &TenantPolicy,
        params: &JobParams,
    ) -> ApiResult<impl Fn(JobInput) -> Job + use<>> {
        check_args_env(policy, &params.args, &params.env)?;
        let module = self.module_and_program(tenant, &params.module).await?;
        Ok(Self::template_of(tenant, module, policy, params))
    }

    /// The template for a module already resolved (`module_and_program`) and a policy
    /// whose argument quotas `params` already passed.
    fn template_of(
        tenant: &str,
        (module, default_entry, program): (ModuleHash, EntryPoint, Option<ProgramName>),
        policy: &TenantPolicy,
        params: &JobParams,
    ) -> impl Fn(JobInput) -> Job + use<> {
        let entry = params.entry.clone().unwrap_or(default_entry);
        let (args, env) = (params.args.clone(), params.env.clone());
        let limits = policy.clamp(&params.requested);
        let tenant = TenantId(tenant.to_owned());
        move |input| {
            let mut job = Job::new(module, input);
            job.entry = entry.clone();
            job.args = args.clone();
            job.env = env.clone();
            job.limits = limits.clone();
            job.tenant = tenant.clone();
            job.program = program.clone();
            job
        }
    }

    /// The module a job names and its guest's `argv[0]`: the name when it follows the
    /// module-name rule, none for a hash or for an alias stored before the rule (it
    /// still runs, its guest seeing the hash); a name that breaks the rule and names
    /// nothing is a 400 saying why.
    async fn module_and_program(
        &self,
        tenant: &str,
        name: &str,
    ) -> ApiResult<(ModuleHash, EntryPoint, Option<ProgramName>)> {
        let rule = ModuleName::of_reference(name);
        match self.module(tenant, name).await {
            Ok((module, entry)) => Ok((module, entry, rule.ok().flatten().map(Into::into))),
            Err(e) if e.status == StatusCode::NOT_FOUND => match rule {
                Err(broken) => Err(ApiError::bad_request(format!("module: {broken}"))),
                Ok(_) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The record of a job if `tenant` owns it; 404 otherwise.
    pub(super) async fn owned(
        &self,
        tenant: &str,
        id: &str,
    ) -> ApiResult<(JobId, sluice_shared::queue::redis::JobRecord)> {
        let id: JobId = id.parse().map_err(|_| ApiError::not_found("job"))?;
        match self.queue.results().job_record(id).await? {
            Some(record) if record.tenant == tenant => Ok((id, record)),
            _ => Err(ApiError::not_found("job")),
        }
    }
}

/// `POST /v1/jobs?module=…`: one job, its input the request body (201 with its id).
/// With `wait=DURATION` the answer waits for the job (`api/wait.rs`): its output (200)
/// or failure (422) if it finishes within the wait, else 202 with its id.
pub(super) async fn post_job(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let JobQuery { params, wait } = job_params(query.as_deref())?;
    // A waiting request's place is taken first (and its deadline starts, the upload's
    // time included): past the waiter caps nothing else is read.
    let mut waiting = match wait {
        Some(wait) => Some((api.reserve_wait(&tenant, wait)?, Instant::now() + wait)),
        None => None,
    };
    let submitted = submit_job(&api, &tenant, &params, &headers, body, waiting.as_mut()).await;
    let (id, limits, watch) = match submitted {
        Ok(submitted) => submitted,
        Err(e) => {
            if let Some((slot, _)) = waiting.as_mut() {
                slot.failed();
            }
            return Err(e);
        }
    };
    // Only the id and limits outlive the enqueue: a waiting request holds no input.
    if let (Some((slot, until)), Some(watch)) = (waiting, watch) {
        return Ok(api.answer_waited(slot, watch, id, limits, until).await);
    }
    let body = json!({ "id": id.to_string(), "limits": limits });
    Ok(created(&format!("/v1/jobs/{id}"), body))
}

/// Checks, uploads and enqueues one job: its id, limits and, for a waiting request
/// (its place and deadline in `waiting`), the wait registered before the enqueue. An
/// upload still running at the wait's deadline is cut (408).
async fn submit_job(
    api: &Arc<Api>,
    tenant: &str,
    params: &JobParams,
    headers: &HeaderMap,
    body: Body,
    waiting: Option<&mut (Slot, Instant)>,
) -> ApiResult<(JobId, Limits, Option<Watch>)> {
    // The policy, the module (alias, then the touch that checks it is stored) and the
    // backlog's length do not depend on each other: asked at once, they share round
    // trips on the multiplexed connection (three sequential waits on Redis become
    // two). Their answers are still judged in the order below, so a request refused
    // for two reasons gets the same answer as before.
    let (policy, module, backlogged) = tokio::join!(
        api.policy(tenant),
        api.module_and_program(tenant, &params.module),
        api.queue.admission().backlog_len(tenant),
    );
    let policy = policy?;
    // Everything that can refuse the job is checked before the body is read: a refused
    // request costs no upload.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > policy.max_input_bytes
    {
        api.metrics.quota_refused("max_input_bytes");
        return Err(input_too_large(&policy));
    }
    check_args_env(&policy, &params.args, &params.env)?;
    let template = Api::template_of(tenant, module?, &policy, params);
    api.judge_backlog(&policy, backlogged?, 1)?;
    // The arguments, environment and module name travel in the envelope, and a declared length is
    // reserved whole before the upload starts; a streamed body is reserved as it
    // arrives.
    let envelope = sluice_shared::tenant::args_env_bytes(&params.args, &params.env)
        + program_bytes(&params.module);
    let reserved = declared.unwrap_or(0);
    if reserved + envelope > 0 {
        api.reserve_stored(tenant, &policy, reserved + envelope)
            .await?;
    }
    let deadline = waiting.as_ref().map(|(_, until)| *until);
    let input = stream_input(api, tenant, &policy, reserved, body, deadline).await?;
    let job = template(input);
    // The wait is registered before the job exists on the queue, so its notice cannot
    // come first (nothing awaits between here and the enqueue).
    let watch = waiting.map(|(slot, _)| slot.watch(job.id, &api.queue));
    let enqueued = api
        .queue
        .admission()
        .enqueue_owned_within(
            std::slice::from_ref(&job),
            tenant,
            None,
            Some(policy.max_backlog_jobs),
        )
        .await?;
    if let Enqueued::BacklogFull { waiting } = enqueued {
        if let JobInput::Blob { id, len } = &job.input {
            let _ = api.queue.blobs().delete(id.as_str(), *len).await;
        }
        return Err(api.backlog_full(&policy, waiting, 1));
    }
    api.submitted.notify_one();
    Ok((job.id, job.limits, watch))
}

/// The answer to a waiting request whose upload was still running at its deadline.
fn upload_outlasted_wait() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "upload_outlasted_wait",
        "the upload was still running when the wait ran out (a wait counts from the request's start); no job was submitted",
    )
}

/// A 201 with `body` and a `Location` header naming the new resource.
pub(super) fn created(location: &str, body: Value) -> Response {
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(value) = location.parse() {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `GET /v1/jobs[?limit=N&cursor=C]`: the tenant's jobs, newest first, a page at a
/// time (`state`: `done`, `cancelled` or `pending`, which is queued or running).
pub(super) async fn list_jobs(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let paging = paging(query.as_deref())?;
    let after: Option<JobId> = paging.after_as()?;
    let page = api
        .queue
        .listing()
        .jobs(&tenant, after, paging.limit)
        .await?;
    let items = page
        .items
        .iter()
        .map(|job| {
            json!({
                "id": job.id.to_string(),
                "state": listed_state(job.outcome, job.cancelled),
                "batch": job.batch,
                "outcome": job.outcome.map(|o| o.as_str()),
            })
        })
        .collect();
    Ok(axum::Json(page_json(items, page.next)).into_response())
}

/// A listed job's state: `done` once it has an outcome, `cancelled`, or `pending`
/// (queued, retrying or running).
pub(super) fn listed_state(outcome: Option<OutcomeKind>, cancelled: bool) -> &'static str {
    match (outcome, cancelled) {
        (Some(_), _) => "done",
        (None, true) => "cancelled",
        (None, false) => "pending",
    }
}

/// The bytes a job's module name adds to its envelope (charged to the stored-bytes
/// quota with its arguments and environment): the name's length when the job carries
/// it as its program name, else 0 (a hash, or an alias older than the rule).
pub(super) fn program_bytes(module: &str) -> u64 {
    ModuleName::of_reference(module)
        .ok()
        .flatten()
        .map_or(0, |name| name.as_str().len() as u64)
}

/// Input bytes reserved against the stored-bytes quota at a time while an upload
/// streams: one quota call per this many bytes.
pub(super) const RESERVE_STEP: u64 = 1 << 20;

/// Reads a request body into a job input: inline up to the inline limit, else chunk by
/// chunk into a blob, so a large upload never sits in memory. The bytes are counted as
/// they arrive: past the tenant's input or stored-bytes quota the upload stops, what
/// was written is deleted, and the client gets a 413 or 429. A waiting request's upload
/// still running at its wait's `deadline` is cut the same way (408).
pub(super) async fn stream_input(
    api: &Api,
    tenant: &str,
    policy: &TenantPolicy,
    mut reserved: u64,
    body: Body,
    deadline: Option<Instant>,
) -> ApiResult<JobInput> {
    let queue = &api.queue;
    let limit = queue.config().inline_limit;
    let mut inline = Vec::new();
    let mut blob = None;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    let outcome: ApiResult<()> = async {
        loop {
            let idle_until = Instant::now() + api.config.body_idle_timeout;
            let next = match deadline {
                Some(deadline) if deadline < idle_until => {
                    tokio::time::timeout_at(deadline, stream.next())
                        .await
                        .map_err(|_| upload_outlasted_wait())?
                }
                _ => tokio::time::timeout_at(idle_until, stream.next())
                    .await
                    .map_err(|_| ApiError::timeout("the input stopped arriving"))?,
            };
            let Some(frame) = next else { return Ok(()) };
            let bytes = frame.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
            total += bytes.len() as u64;
            if total > policy.max_input_bytes {
                api.metrics.quota_refused("max_input_bytes");
                return Err(input_too_large(policy));
            }
            if total > reserved {
                let step = (total - reserved).max(RESERVE_STEP);
                api.reserve_stored(tenant, policy, step).await?;
                reserved += step;
            }
            if blob.is_none() && inline.len() + bytes.len() <= limit {
                inline.extend_from_slice(&bytes);
                continue;
            }
            let writer = blob.get_or_insert_with(|| queue.blobs().writer());
            if !inline.is_empty() {
                writer.write(&std::mem::take(&mut inline)).await?;
            }
            writer.write(&bytes).await?;
        }
    }
    .await;
    match (outcome, blob) {
        (Ok(()), None) => Ok(JobInput::Inline(inline)),
        (Ok(()), Some(writer)) => {
            let (id, len) = writer.finish().await?;
            Ok(JobInput::Blob {
                id: BlobId::new(id),
                len,
            })
        }
        (Err(e), None) => Err(e),
        (Err(e), Some(writer)) => {
            // Finishing waits for the chunk upload in flight, so deleting afterwards
            // leaves nothing of the refused upload behind.
            if let Ok((id, len)) = writer.finish().await
                && let Err(cleanup) = queue.blobs().delete(&id, len).await
            {
                tracing::warn!(blob = %id, error = %cleanup, "deleting a refused upload");
            }
            Err(e)
        }
    }
}

/// A job's state (`queued`, `retrying`, `running`, `cancelled`, `done`), attempts made
/// (runs that ended, once known: a waiting job's from its record, where each retry
/// notes it, a finished job's from its result; `null` while running), limits and
/// result, as JSON.
pub(super) async fn job_status(
    api: &Api,
    id: JobId,
    record: &sluice_shared::queue::redis::JobRecord,
) -> ApiResult<Value> {
    let result = api.queue.result(id).await?;
    let mut attempts = result.as_ref().map(|r| r.attempt);
    let state = if result.is_some() {
        "done"
    } else if record.cancelled {
        "cancelled"
    } else if api.queue.results().is_running(record).await? {
        "running"
    } else {
        // Waiting: in its backlog or on the job stream (a new job, or one a retry
        // put back), or in the delayed set until its retry is due. The attempts made
        // are in its record (one read, whatever the delayed set holds); the count is a
        // detail: a record field it cannot read leaves it unknown rather than failing
        // the job's status.
        let made = api
            .queue
            .listing()
            .attempts_made(id)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(job = %id, error = %e, "reading a waiting job's attempts");
                None
            });
        attempts = made;
        if made.is_some_and(|n| n > 0) {
            "retrying"
        } else {
            "queued"
        }
    };
    let limits: Value = serde_json::from_str(&record.limits).unwrap_or(Value::Null);
    Ok(json!({
        "id": id.to_string(),
        "state": state,
        "attempts": attempts,
        "batch": record.batch,
        "limits": limits,
        "result": result.map(|r| ReportLine::new("", &r)),
    }))
}

/// `GET /v1/jobs/{id}`: the job's state and result.
pub(super) async fn get_job(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, record) = api.owned(&tenant, &id).await?;
    Ok(axum::Json(job_status(&api, id, &record).await?).into_response())
}

/// `GET /v1/jobs/{id}/output`: a finished job's output, streamed.
pub(super) async fn get_output(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, record) = api.owned(&tenant, &id).await?;
    let Some(result) = api.queue.result(id).await? else {
        return Err(if record.cancelled {
            ApiError::new(
                StatusCode::CONFLICT,
                "cancelled",
                "the job was cancelled; it has no output",
            )
        } else {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_finished",
                "the job has not finished",
            )
        });
    };
    if !result.outcome.is_success() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "failed",
            format!("the job failed ({}); it has no output", result.outcome),
        ));
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("static header"),
    );
    Ok((headers, output_body(&api, result.output)).into_response())
}

/// A finished job's output as a response body: the inline bytes, nothing for output
/// written elsewhere, or the output blob streamed chunk by chunk.
pub(super) fn output_body(api: &Api, output: JobOutput) -> Body {
    match output {
        JobOutput::Inline(bytes) => Body::from(bytes),
        JobOutput::Written => Body::empty(),
        JobOutput::Blob { id, .. } => {
            let reader = api.queue.blobs().reader(&id);
            let chunks = futures_util::stream::unfold(reader, |mut reader| async move {
                match reader.next_chunk().await {
                    Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), reader)),
                    Ok(None) => None,
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), reader)),
                }
            });
            Body::from_stream(chunks)
        }
    }
}

/// `DELETE /v1/jobs/{id}`: cancels a job that is still queued.
pub(super) async fn cancel_job(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, _) = api.owned(&tenant, &id).await?;
    match api.queue.results().cancel(id).await? {
        Cancelled::Yes => {
            Ok(axum::Json(json!({ "id": id.to_string(), "state": "cancelled" })).into_response())
        }
        Cancelled::Running => Err(ApiError::new(
            StatusCode::CONFLICT,
            "running",
            "the job is running",
        )),
        Cancelled::Gone => Err(ApiError::new(
            StatusCode::CONFLICT,
            "finished",
            "the job is no longer queued",
        )),
    }
}
