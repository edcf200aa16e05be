//! `sluice serve`: the HTTP API. Every request under `/v1` carries a bearer token; the
//! token names the tenant, never the request body, and a tenant sees only its own jobs
//! and batches (anything else answers 404, as if it did not exist). Bad input of any
//! kind is a 4xx with a JSON body `{"error": {"code", "message"}}`; only Redis being
//! away is a 503, and no Redis error text ever reaches a client (it is logged).
//!
//! Every request is bounded: bodies are read with an idle timeout and a size cap, a
//! tenant's policy caps what one request may enqueue (413) and what the tenant may hold
//! (429 with `Retry-After`), and module validation runs off the async threads
//! (`docs/quotas.md`). The server itself (`server`) caps connections and header reads.

mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_shared::queue::redis::{
    AdmissionError, BlobError, Cancelled, Enqueued, ModulePut, ModuleStoreError, RedisQueue,
    Reservation, ResultsError, StoreError, TenantError,
};
use sluice_shared::{
    EntryPoint, Job, JobId, JobInput, JobOutput, Limits, ModuleHash, Queue, QueueError, ReportLine,
    TenantId, TenantPolicy, units,
};

use crate::modules;

pub use server::{ServerConfig, serve};

/// The OpenAPI document served at `/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// The API's state: the queue, the admin token's hash, the dispatcher's doorbell and
/// the bounds on requests.
pub struct Api {
    queue: Arc<RedisQueue>,
    admin_token_sha256: Option<[u8; 32]>,
    submitted: Arc<tokio::sync::Notify>,
    dispatcher: Option<Arc<crate::dispatch::Health>>,
    config: ApiConfig,
    /// Requests whose bodies are buffered whole (modules, batches) at once: each may
    /// hold up to [`MAX_BUFFERED_BODY`] bytes, so this bounds their memory together.
    buffered: Arc<tokio::sync::Semaphore>,
    /// Buffered-body turns each tenant holds: one tenant trickling bodies must not
    /// hold every turn of [`Api::buffered`].
    buffered_by_tenant: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Entry points of modules already read, by hash: modules are content-addressed, so
    /// an entry never goes stale, and a job POST need not fetch (up to 32 MiB) and walk
    /// the module again.
    entry_points: std::sync::Mutex<std::collections::HashMap<ModuleHash, EntryPoint>>,
    metrics: crate::api_metrics::ApiMetrics,
}

/// Most entry points remembered; past it, an arbitrary one is forgotten (a miss costs
/// one module read, as before).
const MAX_ENTRY_POINTS: usize = 4096;

/// The largest buffered request body (a module, a batch, admin JSON).
pub const MAX_BUFFERED_BODY: usize = modules::MAX_MODULE_BYTES + 1024;

/// Bounds on requests that do not depend on the tenant.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// A request body that sends nothing for this long is refused (408).
    pub body_idle_timeout: Duration,
    /// A buffered body (module, batch) must arrive whole within this.
    pub buffered_body_timeout: Duration,
    /// Most buffered bodies being read or processed at once.
    pub max_buffered_requests: usize,
    /// Most of those one tenant may hold at once (429 with `Retry-After` past it).
    pub max_buffered_per_tenant: usize,
    /// How long a stored module lives after its upload or its last use by a job.
    pub module_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            body_idle_timeout: Duration::from_secs(30),
            buffered_body_timeout: Duration::from_secs(120),
            max_buffered_requests: 8,
            max_buffered_per_tenant: 2,
            module_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Api {
    /// An API over `queue`; `admin_token` (if any) may manage tenants over HTTP;
    /// `submitted` is notified whenever jobs enter a backlog.
    pub fn new(
        queue: Arc<RedisQueue>,
        admin_token: Option<&str>,
        submitted: Arc<tokio::sync::Notify>,
    ) -> Self {
        let config = ApiConfig::default();
        Api {
            queue,
            admin_token_sha256: admin_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            submitted,
            dispatcher: None,
            buffered: Arc::new(tokio::sync::Semaphore::new(config.max_buffered_requests)),
            buffered_by_tenant: Arc::default(),
            entry_points: std::sync::Mutex::default(),
            config,
            metrics: crate::api_metrics::ApiMetrics::new(),
        }
    }

    /// Makes `/readyz` answer 503 while this dispatcher is stuck or failing.
    pub fn with_dispatcher_health(mut self, health: Arc<crate::dispatch::Health>) -> Self {
        self.dispatcher = Some(health);
        self
    }

    /// The same API with other request bounds.
    pub fn with_config(mut self, config: ApiConfig) -> Self {
        self.buffered = Arc::new(tokio::sync::Semaphore::new(
            config.max_buffered_requests.max(1),
        ));
        self.config = config;
        self
    }

    /// The same API reporting into `metrics` (the ones `/metrics` renders).
    pub fn with_metrics(mut self, metrics: crate::api_metrics::ApiMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

/// The longest error message answered: messages may quote what a client sent.
const MAX_ERROR_MESSAGE: usize = 1024;

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        ApiError {
            status,
            code,
            message,
            retry_after: None,
        }
    }

    /// A request over a per-request quota of the tenant's policy (413).
    fn too_large(quota: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{message} (tenant policy {quota})"),
        )
    }

    /// The tenant holds as much as its policy allows (429), for now.
    fn quota_exceeded(
        quota: &str,
        message: impl std::fmt::Display,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("{message} (tenant policy {quota})"),
        );
        e.retry_after = retry_after;
        e
    }

    fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout", message)
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
        // Redis's own words stay in the log: they describe the fleet's internals (key
        // names, types, other tenants' ids), never the client's request.
        tracing::warn!(error = %e, "queue error answering a request");
        match e {
            QueueError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the queue backend is unavailable; try again",
            ),
            _ => Self::new(
                StatusCode::BAD_GATEWAY,
                "queue_error",
                "the queue backend answered unexpectedly; the operator has the details",
            ),
        }
    }
}

/// A missing tenant is a 404 and a bad name a 400; the other protocol errors answer as
/// the queue's own do (503 when Redis is unavailable, 502 otherwise), Redis's words
/// staying in the log.
impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::NotFound(_) => Self::not_found("tenant"),
            TenantError::BadName(e) => Self::bad_request(e.to_string()),
            TenantError::Store(e) => QueueError::from(e).into(),
            other => QueueError::Protocol(other.to_string()).into(),
        }
    }
}

/// The protocol's role errors answer as the queue's own do (see `From<QueueError>`).
macro_rules! answers_as_queue_error {
    ($($error:ty),*) => {$(
        impl From<$error> for ApiError {
            fn from(e: $error) -> Self {
                QueueError::from(e).into()
            }
        }
    )*};
}
answers_as_queue_error!(
    AdmissionError,
    BlobError,
    ModuleStoreError,
    ResultsError,
    StoreError
);

impl From<modules::ModuleError> for ApiError {
    fn from(e: modules::ModuleError) -> Self {
        let status = match e {
            modules::ModuleError::TooLarge { .. } | modules::ModuleError::TextTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, "invalid_module", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long finds room.
            let secs = after.as_millis().div_ceil(1000).max(1);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("digits are a header value"),
            );
        }
        response
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
            "module" => {
                if value.len() > 2 * MAX_NAME {
                    return Err(bad(&"longer than a module name or hash can be"));
                }
                params.module = value.into_owned()
            }
            "fuel" => params.requested.fuel = Some(value.parse().map_err(|e| bad(&e))?),
            "memory" => {
                params.requested.memory_bytes = units::parse_size(&value).map_err(|e| bad(&e))?
            }
            "timeout" => {
                let d = units::parse_duration(&value).map_err(|e| bad(&e))?;
                params.requested.timeout_ms = units::millis_at_least_one(d);
            }
            "max_output" => {
                params.requested.max_output_bytes =
                    units::parse_size(&value).map_err(|e| bad(&e))?
            }
            "invoke" => {
                if value.is_empty() || value.len() > MAX_NAME {
                    return Err(bad(&format!("an export name is 1-{MAX_NAME} bytes")));
                }
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

/// Longest module name (an alias) or export name a request may give.
const MAX_NAME: usize = 128;

/// Reads a whole request body of at most `limit` bytes; each read must deliver within
/// the idle timeout and the whole body within `total`.
async fn read_body(api: &Api, body: Body, limit: usize, what: &str) -> ApiResult<Bytes> {
    let deadline = tokio::time::Instant::now() + api.config.buffered_body_timeout;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    loop {
        let idle = tokio::time::Instant::now() + api.config.body_idle_timeout;
        let next = tokio::time::timeout_at(idle.min(deadline), stream.next())
            .await
            .map_err(|_| ApiError::timeout(format!("the {what} did not arrive in time")))?;
        let Some(frame) = next else { break };
        let bytes = frame.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
        if out.len() + bytes.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the {what} is over {limit} bytes"),
            ));
        }
        out.extend_from_slice(&bytes);
    }
    Ok(Bytes::from(out))
}

/// A turn to buffer a large body, held until dropped.
struct BufferedTurn {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _tenant: TenantTurn,
}

/// One of a tenant's buffered-body turns; gives it back when dropped.
struct TenantTurn {
    held: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for TenantTurn {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

/// A turn to buffer a large body for `tenant`; waits for one (a client's connection is
/// already bounded by the body timeouts while it waits), unless the tenant already
/// holds its share of the turns, which answers 429 at once.
async fn buffered_turn(api: &Api, tenant: &str) -> ApiResult<BufferedTurn> {
    let busy = |message: &str| {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message);
        e.retry_after = Some(Duration::from_secs(1));
        e
    };
    let tenant_turn = {
        let mut held = api
            .buffered_by_tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = held.entry(tenant.to_owned()).or_insert(0);
        if *n >= api.config.max_buffered_per_tenant.max(1) {
            return Err(busy(&format!(
                "this tenant already has {n} large uploads (modules, batches) in progress, \
                 its share; try again when one ends"
            )));
        }
        *n += 1;
        TenantTurn {
            held: api.buffered_by_tenant.clone(),
            tenant: tenant.to_owned(),
        }
    };
    let permit = tokio::time::timeout(
        api.config.buffered_body_timeout,
        api.buffered.clone().acquire_owned(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| busy("too many large uploads in progress; try again"))?;
    Ok(BufferedTurn {
        _permit: permit,
        _tenant: tenant_turn,
    })
}

impl Api {
    /// The module a tenant names: a hash, or an alias of its own. Using it starts its
    /// lifetime again.
    async fn module(&self, tenant: &str, name: &str) -> ApiResult<(ModuleHash, EntryPoint)> {
        let (hash, alias) = match name.parse::<ModuleHash>() {
            Ok(hash) => (hash, None),
            Err(_) => {
                if name.len() > MAX_NAME || name.contains('/') {
                    return Err(ApiError::not_found("module"));
                }
                let hash = self
                    .queue
                    .modules()
                    .resolve(&format!("{tenant}/{name}"))
                    .await?
                    .ok_or_else(|| ApiError::not_found("module"))?;
                (hash, Some(name))
            }
        };
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
        let wasm = self
            .queue
            .modules()
            .get(&hash)
            .await?
            .ok_or_else(|| ApiError::not_found("module"))?;
        // Reading the exports walks the module: off the async threads, like validation.
        let entry = tokio::task::spawn_blocking(move || modules::default_entry(&wasm))
            .await
            .unwrap_or_default();
        self.remember_entry(hash, entry.clone());
        Ok((hash, entry))
    }

    fn known_entry(&self, hash: &ModuleHash) -> Option<EntryPoint> {
        let known = self.entry_points.lock().unwrap_or_else(|p| p.into_inner());
        known.get(hash).cloned()
    }

    fn remember_entry(&self, hash: ModuleHash, entry: EntryPoint) {
        let mut known = self.entry_points.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_ENTRY_POINTS
            && !known.contains_key(&hash)
            && let Some(evicted) = known.keys().next().copied()
        {
            known.remove(&evicted);
        }
        known.insert(hash, entry);
    }

    /// The tenant's policy; a tenant whose record vanished (deleted while its token
    /// lived) gets the fleet default, as the worker does.
    async fn policy(&self, tenant: &str) -> ApiResult<TenantPolicy> {
        Ok(self
            .queue
            .tenants()
            .policy(tenant)
            .await?
            .unwrap_or_default())
    }

    /// A template for this tenant's jobs: the module resolved, the parameters checked
    /// against the policy's argument quotas and the limits clamped to it; `Job`
    /// instances follow with `template(input)`.
    async fn job_template(
        &self,
        tenant: &str,
        policy: &TenantPolicy,
        params: &JobParams,
    ) -> ApiResult<impl Fn(JobInput) -> Job + use<>> {
        check_args_env(policy, &params.args, &params.env)?;
        let (module, default_entry) = self.module(tenant, &params.module).await?;
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

    /// Refuses `jobs` more jobs when the tenant's backlog would pass its quota.
    async fn check_backlog(&self, tenant: &str, policy: &TenantPolicy, jobs: u64) -> ApiResult<()> {
        let waiting = self.queue.admission().backlog_len(tenant).await?;
        if waiting.saturating_add(jobs) > policy.max_backlog_jobs {
            return Err(self.backlog_full(policy, waiting, jobs));
        }
        Ok(())
    }

    /// The 429 for a backlog quota refusal: by the early check above (a refused request
    /// costs no upload), or by `enqueue_owned.lua`, which checks again atomically with
    /// the enqueue so concurrent requests cannot together pass the quota.
    fn backlog_full(&self, policy: &TenantPolicy, waiting: u64, jobs: u64) -> ApiError {
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
    async fn reserve_stored(
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

    /// The record of a job if `tenant` owns it; 404 otherwise.
    async fn owned(
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

/// Refuses arguments and environment over the policy's quotas (413).
fn check_args_env(
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

/// A module name from the query: 1-128 characters, no `/`.
fn module_name(query: Option<&str>) -> ApiResult<Option<String>> {
    let name = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned());
    if let Some(name) = &name
        && (name.is_empty()
            || name.len() > MAX_NAME
            || name.contains('/')
            || name.parse::<ModuleHash>().is_ok())
    {
        return Err(ApiError::bad_request(
            "name: 1-128 characters, no `/`, not a module hash",
        ));
    }
    Ok(name)
}

async fn put_module(
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
    let (wasm, _, entry) =
        modules::prepare_off_thread(bytes, move || gauge.validation_started()).await?;
    let stored = api
        .queue
        .modules()
        .put_for_tenant(
            &tenant,
            &wasm,
            name.as_deref(),
            api.config.module_ttl,
            policy.max_modules,
        )
        .await?;
    let hash = match stored {
        ModulePut::Stored { hash, .. } => {
            api.remember_entry(hash, entry);
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
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn delete_module(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (hash, alias) = match name.parse::<ModuleHash>() {
        Ok(hash) => (hash, None),
        Err(_) => {
            if name.is_empty() || name.len() > MAX_NAME || name.contains('/') {
                return Err(ApiError::not_found("module"));
            }
            let hash = api
                .queue
                .modules()
                .resolve(&format!("{tenant}/{name}"))
                .await?
                .ok_or_else(|| ApiError::not_found("module"))?;
            (hash, Some(name.as_str()))
        }
    };
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

async fn post_job(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let params = job_params(query.as_deref())?;
    let policy = api.policy(&tenant).await?;
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
    let template = api.job_template(&tenant, &policy, &params).await?;
    api.check_backlog(&tenant, &policy, 1).await?;
    // The arguments and environment travel in the envelope, and a declared length is
    // reserved whole before the upload starts; a streamed body is reserved as it
    // arrives.
    let envelope = sluice_shared::tenant::args_env_bytes(&params.args, &params.env);
    let reserved = declared.unwrap_or(0);
    if reserved + envelope > 0 {
        api.reserve_stored(&tenant, &policy, reserved + envelope)
            .await?;
    }
    let input = stream_input(&api, &tenant, &policy, reserved, body).await?;
    let job = template(input);
    let enqueued = api
        .queue
        .admission()
        .enqueue_owned_within(
            std::slice::from_ref(&job),
            &tenant,
            None,
            Some(policy.max_backlog_jobs),
        )
        .await?;
    if let Enqueued::BacklogFull { waiting } = enqueued {
        if let JobInput::Blob { uri, len } = &job.input
            && let Some(id) = uri.strip_prefix("blob:")
        {
            let _ = api.queue.blobs().delete(id, *len).await;
        }
        return Err(api.backlog_full(&policy, waiting, 1));
    }
    api.submitted.notify_one();
    let body = json!({ "id": job.id.to_string(), "limits": job.limits });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

fn input_too_large(policy: &TenantPolicy) -> ApiError {
    ApiError::too_large(
        "max_input_bytes",
        format!("the input is over {} bytes", policy.max_input_bytes),
    )
}

/// Input bytes reserved against the stored-bytes quota at a time while an upload
/// streams: one quota call per this many bytes.
const RESERVE_STEP: u64 = 1 << 20;

/// Reads a request body into a job input: inline up to the inline limit, else chunk by
/// chunk into a blob, so a large upload never sits in memory. The bytes are counted as
/// they arrive: past the tenant's input or stored-bytes quota the upload stops, what
/// was written is deleted, and the client gets a 413 or 429.
async fn stream_input(
    api: &Api,
    tenant: &str,
    policy: &TenantPolicy,
    mut reserved: u64,
    body: Body,
) -> ApiResult<JobInput> {
    let queue = &api.queue;
    let limit = queue.config().inline_limit;
    let mut inline = Vec::new();
    let mut blob = None;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    let outcome: ApiResult<()> = async {
        loop {
            let next = tokio::time::timeout(api.config.body_idle_timeout, stream.next())
                .await
                .map_err(|_| ApiError::timeout("the input stopped arriving"))?;
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
                uri: format!("blob:{id}"),
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

/// Longest name of one batch input (it becomes the job's label).
const MAX_INPUT_NAME: usize = 1024;

async fn post_batch(
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
    let bad = |field: &str, e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!("limits.{field}: {e}"))
    };
    requested.fuel = limits.fuel;
    if let Some(m) = &limits.memory {
        requested.memory_bytes = units::parse_size(m).map_err(|e| bad("memory", &e))?;
    }
    if let Some(t) = &limits.timeout {
        requested.timeout_ms =
            units::millis_at_least_one(units::parse_duration(t).map_err(|e| bad("timeout", &e))?);
    }
    if let Some(o) = &limits.max_output {
        requested.max_output_bytes = units::parse_size(o).map_err(|e| bad("max_output", &e))?;
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
    // Arguments and environment are copied into every job: they count once per input.
    let per_job = sluice_shared::tenant::args_env_bytes(&params.args, &params.env);
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
                "the batch would enqueue {batch_bytes} bytes (inputs plus each job's arguments and environment), over the quota of {}",
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
                        uri: format!("blob:{id}"),
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
            let _ = api.queue.blobs().delete(id, *len).await;
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
            let _ = api.queue.blobs().delete(id, *len).await;
        }
        return Err(api.backlog_full(&policy, waiting, jobs.len() as u64));
    }
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
    } else if api.queue.results().is_running(record).await? {
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
    };
    Ok((headers, body).into_response())
}

async fn cancel_job(
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

async fn get_batch(
    State(api): State<Arc<Api>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // A batch id is a UUID; anything else never reaches a Redis key (`<id>:jobs` would
    // name another key type, and its error would tell existing ids from unknown ones).
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found("batch"))?
        .to_string();
    // From the batch's outcome counters (kept by the queue scripts), not its results.
    let counts = api
        .queue
        .results()
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

/// A policy from a request body, checked value by value.
fn policy_from(body: Option<TenantPolicy>) -> ApiResult<TenantPolicy> {
    let policy = body.unwrap_or_default();
    policy
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(policy)
}

/// An existing tenant's name from a path: 404 for a name that cannot be a tenant's or
/// names none.
async fn existing_tenant(api: &Api, name: &str) -> ApiResult<TenantPolicy> {
    if sluice_shared::tenant::validate_name(name).is_err() {
        return Err(ApiError::not_found("tenant"));
    }
    api.queue
        .tenants()
        .policy(name)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))
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

async fn admin_issue_token(
    State(api): State<Arc<Api>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    existing_tenant(&api, &name).await?;
    let token = api.queue.tenants().issue_token(&name).await?;
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
    existing_tenant(&api, &name).await?;
    let revoked = api.queue.tenants().revoke_tokens(&name).await?;
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
    let policy = policy_from(Some(policy))?;
    existing_tenant(&api, &name).await?;
    api.queue.tenants().set_policy(&name, &policy).await?;
    Ok(axum::Json(json!({ "tenant": name, "policy": policy })).into_response())
}

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if let Some(Err(reason)) = api.dispatcher.as_ref().map(|h| h.check()) {
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    match api.queue.admin().stats_recreating_group().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the queue backend is unavailable",
            )
                .into_response()
        }
    }
}

async fn fallback() -> ApiError {
    ApiError::not_found("route")
}

/// The service's routes.
pub fn router(api: Arc<Api>, metrics: crate::api_metrics::ApiMetrics) -> Router {
    let v1 = Router::new()
        .route("/v1/modules", put(put_module))
        .route("/v1/modules/{name}", delete(delete_module))
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
        // Modules and batches are read by `read_body` (capped, timed) and a job's input
        // by `stream_input` (counted against the tenant's quotas); this caps the rest
        // (admin JSON).
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10));
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
                        [(header::CONTENT_TYPE, sluice_shared::metrics::CONTENT_TYPE)],
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
