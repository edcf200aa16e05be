//! `sluice serve`: the HTTP API. Every request under `/v1` carries a bearer token; the
//! token names the tenant, never the request body, and a tenant sees only its own jobs
//! and batches (anything else answers 404, as if it did not exist). Bad input of any
//! kind is a 4xx with a JSON body `{"error": {"code", "message"}}`; only Redis being
//! away is a 503.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_shared::queue::redis::{Cancelled, RedisQueue};
use sluice_shared::{
    EntryPoint, Job, JobId, JobInput, JobOutput, Limits, ModuleHash, Queue, QueueError, ReportLine,
    TenantId, TenantPolicy, units,
};

use crate::modules;

/// The OpenAPI document served at `/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// The API's state: the queue, the admin token's hash, and the dispatcher's doorbell.
pub struct Api {
    queue: Arc<RedisQueue>,
    admin_token_sha256: Option<[u8; 32]>,
    submitted: Arc<tokio::sync::Notify>,
    dispatcher: Option<Arc<crate::dispatch::Health>>,
}

impl Api {
    /// An API over `queue`; `admin_token` (if any) may manage tenants over HTTP;
    /// `submitted` is notified whenever jobs enter a backlog.
    pub fn new(
        queue: Arc<RedisQueue>,
        admin_token: Option<&str>,
        submitted: Arc<tokio::sync::Notify>,
    ) -> Self {
        Api {
            queue,
            admin_token_sha256: admin_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            submitted,
            dispatcher: None,
        }
    }

    /// Makes `/readyz` answer 503 while this dispatcher is stuck or failing.
    pub fn with_dispatcher_health(mut self, health: Arc<crate::dispatch::Health>) -> Self {
        self.dispatcher = Some(health);
        self
    }
}

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Unavailable(reason) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
            }
            other => Self::new(StatusCode::BAD_GATEWAY, "queue_error", other.to_string()),
        }
    }
}

impl From<modules::ModuleError> for ApiError {
    fn from(e: modules::ModuleError) -> Self {
        let status = match e {
            modules::ModuleError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, "invalid_module", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bearer(parts: &Parts) -> ApiResult<&str> {
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
pub struct Tenant(String);

impl FromRequestParts<Arc<Api>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> ApiResult<Self> {
        let token = bearer(parts)?;
        api.queue
            .tenant_for_token(token)
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

/// Job parameters from the query string (`module`, `fuel`, `memory`, `timeout`,
/// `max_output`, `invoke`, and repeatable `arg` and `env=K=V`).
struct JobParams {
    module: String,
    requested: Limits,
    entry: Option<EntryPoint>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn job_params(query: Option<&str>) -> ApiResult<JobParams> {
    let mut params = JobParams {
        module: String::new(),
        requested: Limits::default(),
        entry: None,
        args: Vec::new(),
        env: Vec::new(),
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(format!("{key}: {e}"));
        match key.as_ref() {
            "module" => params.module = value.into_owned(),
            "fuel" => params.requested.fuel = Some(value.parse().map_err(|e| bad(&e))?),
            "memory" => {
                params.requested.memory_bytes = units::parse_size(&value).map_err(|e| bad(&e))?
            }
            "timeout" => {
                let d = units::parse_duration(&value).map_err(|e| bad(&e))?;
                params.requested.timeout_ms =
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
            }
            "max_output" => {
                params.requested.max_output_bytes =
                    units::parse_size(&value).map_err(|e| bad(&e))?
            }
            "invoke" => {
                params.entry = Some(match value.as_ref() {
                    "_start" => EntryPoint::Command,
                    other => EntryPoint::Raw {
                        export: other.to_owned(),
                    },
                })
            }
            "arg" => params.args.push(value.into_owned()),
            "env" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| ApiError::bad_request("env: expected KEY=VALUE"))?;
                params.env.push((k.to_owned(), v.to_owned()));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    if params.module.is_empty() {
        return Err(ApiError::bad_request(
            "module is required (a hash or a name)",
        ));
    }
    Ok(params)
}

impl Api {
    /// The module a tenant names: a hash, or an alias of its own.
    async fn module(&self, tenant: &str, name: &str) -> ApiResult<(ModuleHash, EntryPoint)> {
        let hash = match name.parse::<ModuleHash>() {
            Ok(hash) => hash,
            Err(_) => self
                .queue
                .resolve_module(&format!("{tenant}/{name}"))
                .await?
                .ok_or_else(|| ApiError::not_found("module"))?,
        };
        let wasm = self
            .queue
            .get_module(&hash)
            .await?
            .ok_or_else(|| ApiError::not_found("module"))?;
        Ok((hash, modules::default_entry(&wasm)))
    }

    /// A template for this tenant's jobs: the module resolved and the parameters
    /// clamped to its policy; `Job` instances follow with `template(input)`.
    async fn job_template(
        &self,
        tenant: &str,
        params: &JobParams,
    ) -> ApiResult<impl Fn(JobInput) -> Job + use<>> {
        let (module, default_entry) = self.module(tenant, &params.module).await?;
        let policy = self.queue.policy(tenant).await?.unwrap_or_default();
        let entry = params.entry.clone().unwrap_or(default_entry);
        let (args, env) = (params.args.clone(), params.env.clone());
        let limits = policy.clamp(&params.requested);
        let tenant = TenantId(tenant.to_owned());
        Ok(move |input| {
            let mut job = Job::new(module, input);
            job.entry = entry.clone();
            job.args = args.clone();
            job.env = env.clone();
            job.limits = limits.clone();
            job.tenant = tenant.clone();
            job
        })
    }

    /// The record of a job if `tenant` owns it; 404 otherwise.
    async fn owned(
        &self,
        tenant: &str,
        id: &str,
    ) -> ApiResult<(JobId, sluice_shared::queue::redis::JobRecord)> {
        let id: JobId = id.parse().map_err(|_| ApiError::not_found("job"))?;
        match self.queue.job_record(id).await? {
            Some(record) if record.tenant == tenant => Ok((id, record)),
            _ => Err(ApiError::not_found("job")),
        }
    }
}

async fn put_module(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let (wasm, _) = modules::prepare(&body)?;
    let name = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned());
    if let Some(name) = &name
        && (name.is_empty() || name.len() > 128 || name.contains('/'))
    {
        return Err(ApiError::bad_request("name: 1-128 characters, no `/`"));
    }
    let alias = name.as_ref().map(|n| format!("{tenant}/{n}"));
    let hash = api.queue.put_module(&wasm, alias.as_deref()).await?;
    let body = json!({ "hash": hash.to_hex(), "name": name, "bytes": wasm.len() });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn post_job(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let params = job_params(query.as_deref())?;
    // Resolve the module and policy before reading the body: a bad request costs no
    // upload.
    let template = api.job_template(&tenant, &params).await?;
    let input = stream_input(&api.queue, body).await?;
    let job = template(input);
    api.queue
        .enqueue_owned(std::slice::from_ref(&job), &tenant, None)
        .await?;
    api.submitted.notify_one();
    let body = json!({ "id": job.id.to_string(), "limits": job.limits });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// Reads a request body into a job input: inline up to the inline limit, else chunk by
/// chunk into a blob, so a large upload never sits in memory.
async fn stream_input(queue: &RedisQueue, body: Body) -> ApiResult<JobInput> {
    let limit = queue.config().inline_limit;
    let mut inline = Vec::new();
    let mut blob = None;
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let bytes = frame.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
        if blob.is_none() && inline.len() + bytes.len() <= limit {
            inline.extend_from_slice(&bytes);
            continue;
        }
        let writer = blob.get_or_insert_with(|| queue.blob_writer());
        if !inline.is_empty() {
            writer.write(&std::mem::take(&mut inline)).await?;
        }
        writer.write(&bytes).await?;
    }
    Ok(match blob {
        None => JobInput::Inline(inline),
        Some(writer) => {
            let (id, len) = writer.finish().await?;
            JobInput::Blob {
                uri: format!("blob:{id}"),
                len,
            }
        }
    })
}

/// `POST /v1/batches` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
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
struct BatchInput {
    name: String,
    /// The input, base64.
    data: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BatchLimits {
    fuel: Option<u64>,
    memory: Option<String>,
    timeout: Option<String>,
    max_output: Option<String>,
}

/// Most inputs in one batch request.
const MAX_BATCH_INPUTS: usize = 10_000;

async fn post_batch(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    body: Bytes,
) -> ApiResult<Response> {
    use base64::Engine;
    let request: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("batch body: {e}")))?;
    if request.inputs.is_empty() || request.inputs.len() > MAX_BATCH_INPUTS {
        return Err(ApiError::bad_request(format!(
            "a batch has 1 to {MAX_BATCH_INPUTS} inputs"
        )));
    }
    let mut requested = Limits::default();
    let limits = request.limits.unwrap_or_default();
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
    requested.fuel = limits.fuel;
    if let Some(m) = &limits.memory {
        requested.memory_bytes = units::parse_size(m).map_err(|e| bad(&e))?;
    }
    if let Some(t) = &limits.timeout {
        requested.timeout_ms = units::parse_duration(t)
            .map_err(|e| bad(&e))?
            .as_millis()
            .max(1) as u64;
    }
    if let Some(o) = &limits.max_output {
        requested.max_output_bytes = units::parse_size(o).map_err(|e| bad(&e))?;
    }
    let params = JobParams {
        module: request.module,
        requested,
        entry: None,
        args: request.args,
        env: request.env.into_iter().collect(),
    };
    let template = api.job_template(&tenant, &params).await?;
    let mut jobs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let data = base64::engine::general_purpose::STANDARD
            .decode(input.data.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("input {:?}: {e}", input.name)))?;
        let mut job = template(JobInput::Inline(data));
        job.label = input.name;
        jobs.push(job);
    }
    let batch = uuid::Uuid::now_v7().to_string();
    api.queue
        .enqueue_owned(&jobs, &tenant, Some(&batch))
        .await?;
    api.submitted.notify_one();
    let listed: Vec<Value> = jobs
        .iter()
        .map(|j| json!({ "name": j.label, "id": j.id.to_string() }))
        .collect();
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": batch, "jobs": listed })),
    )
        .into_response())
}

async fn job_status(
    api: &Api,
    id: JobId,
    record: &sluice_shared::queue::redis::JobRecord,
) -> ApiResult<Value> {
    let result = api.queue.result(id).await?;
    let state = if result.is_some() {
        "done"
    } else if record.cancelled {
        "cancelled"
    } else if api.queue.is_running(record).await? {
        "running"
    } else {
        "queued"
    };
    let limits: Value = serde_json::from_str(&record.limits).unwrap_or(Value::Null);
    Ok(json!({
        "id": id.to_string(),
        "state": state,
        "batch": record.batch,
        "limits": limits,
        "result": result.map(|r| ReportLine::new("", &r)),
    }))
}

async fn get_job(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, record) = api.owned(&tenant, &id).await?;
    Ok(axum::Json(job_status(&api, id, &record).await?).into_response())
}

async fn get_output(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, _) = api.owned(&tenant, &id).await?;
    let result = api.queue.result(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_finished",
            "the job has not finished",
        )
    })?;
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
    let body = match result.output {
        JobOutput::Inline(bytes) => Body::from(bytes),
        JobOutput::Written => Body::empty(),
        JobOutput::Blob { id, .. } => {
            let reader = api.queue.blob_reader(&id);
            let chunks = futures_util::stream::unfold(reader, |mut reader| async move {
                match reader.next_chunk().await {
                    Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), reader)),
                    Ok(None) => None,
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), reader)),
                }
            });
            Body::from_stream(chunks)
        }
    };
    Ok((headers, body).into_response())
}

async fn cancel_job(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, _) = api.owned(&tenant, &id).await?;
    match api.queue.cancel(id).await? {
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

async fn get_batch(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // From the batch's outcome counters (kept by the queue scripts), not its results.
    let counts = api
        .queue
        .batch_counts(&id, &tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("batch"))?;
    let jobs: Vec<Value> = counts
        .jobs
        .iter()
        .map(|(job, outcome)| json!({ "id": job.to_string(), "outcome": outcome }))
        .collect();
    let (total, done, by_outcome) = (counts.total, counts.done(), counts.by_outcome);
    Ok(axum::Json(json!({
        "id": id,
        "total": total,
        "done": done,
        "by_outcome": by_outcome,
        "jobs": jobs,
    }))
    .into_response())
}

/// `POST /v1/admin/tenants` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default)]
    policy: Option<TenantPolicy>,
}

async fn admin_create_tenant(
    State(api): State<Arc<Api>>,
    _: Admin,
    body: Bytes,
) -> ApiResult<Response> {
    let request: NewTenant = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("tenant body: {e}")))?;
    sluice_shared::tenant::validate_name(&request.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let token = api
        .queue
        .create_tenant(&request.name, &request.policy.unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "exists", "the tenant exists"))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "tenant": request.name, "token": token })),
    )
        .into_response())
}

async fn admin_issue_token(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if api.queue.policy(&name).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    let token = api.queue.issue_token(&name).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "tenant": name, "token": token })),
    )
        .into_response())
}

async fn admin_revoke(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let revoked = api.queue.revoke_tokens(&name).await?;
    Ok(axum::Json(json!({ "tenant": name, "revoked": revoked })).into_response())
}

async fn admin_set_policy(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let policy: TenantPolicy = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("policy body: {e}")))?;
    if api.queue.policy(&name).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    api.queue.set_policy(&name, &policy).await?;
    Ok(axum::Json(json!({ "tenant": name, "policy": policy })).into_response())
}

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if let Some(Err(reason)) = api.dispatcher.as_ref().map(|h| h.check()) {
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    match api.queue.stats().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn fallback() -> ApiError {
    ApiError::not_found("route")
}

/// The service's routes.
pub fn router(api: Arc<Api>, metrics: crate::api_metrics::ApiMetrics) -> Router {
    let v1 = Router::new()
        .route("/v1/modules", put(put_module))
        .route("/v1/jobs", post(post_job))
        .route("/v1/batches", post(post_batch))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/jobs/{id}/output", get(get_output))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/admin/tenants", post(admin_create_tenant))
        .route(
            "/v1/admin/tenants/{name}/tokens",
            post(admin_issue_token).delete(admin_revoke),
        )
        .route("/v1/admin/tenants/{name}/policy", put(admin_set_policy))
        // Buffered bodies (modules, batches, admin JSON) are capped; a job's input is
        // read as a stream, chunk by chunk, and is not subject to this limit.
        .layer(DefaultBodyLimit::max(modules::MAX_MODULE_BYTES + 1024));
    let render = metrics.clone();
    Router::new()
        .merge(v1)
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render.render(),
                    )
                }
            }),
        )
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::api_metrics::track,
        ))
        .with_state(api)
}
