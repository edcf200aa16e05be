//! `sluice serve`: the HTTP API. Every request under `/v1` carries a bearer token; the
//! token names the tenant, never the request body, and a tenant sees only its own jobs
//! and batches (anything else answers 404, as if it did not exist). Bad input of any
//! kind is a 4xx with a JSON body `{"error": {"code", "message"}}`; only Redis being
//! away is a 503, and no Redis error text ever reaches a client (it is logged).
//!
//! Every request is bounded: bodies are read with an idle timeout and a size cap, a
//! tenant's policy caps what one request may enqueue (413) and what the tenant may hold
//! (429 with `Retry-After`), and module validation runs off the async threads
//! (`docs/quotas.md`). The server itself (`sluice_worker::http`, re-exported here) caps
//! connections and header reads.

//!
//! One file per resource: modules (`/v1/modules`), jobs (`/v1/jobs`), batches
//! (`/v1/batches`), tenants (`/v1/admin/tenants`), health (`/readyz`); beside them the
//! error type and the JSON error answers (`error`), the request log (`log`), who is
//! asking (`auth`), query parameters and list paging (`params`), the
//! tenant's quotas applied to a request (`quotas`), buffered-body turns (`turns`) and
//! requests waiting for their job's result (`wait`).

mod auth;
mod batches;
mod error;
mod health;
mod jobs;
mod log;
mod modules;
mod params;
mod quotas;
mod tenants;
mod turns;
mod units;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::{get, post, put};
use sha2::{Digest, Sha256};
use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{EntryPoint, ModuleHash};

pub use auth::{Admin, Tenant};
pub use error::ApiError;
pub use sluice_worker::http::{Hooks, ServerConfig, serve};
pub use wait::{DEFAULT_MAX_WAIT, DEFAULT_MAX_WAITERS, DEFAULT_MAX_WAITERS_PER_TENANT, WaitLimits};

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
    buffered_by_tenant: Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
    /// Entry points of modules already read, by hash: modules are content-addressed, so
    /// an entry never goes stale, and a job POST need not fetch (up to 32 MiB) and walk
    /// the module again.
    entry_points: parking_lot::Mutex<std::collections::HashMap<ModuleHash, EntryPoint>>,
    /// Requests waiting for their jobs (`POST /v1/jobs?wait=`) and their follower.
    waiters: Arc<wait::Waiters>,
    metrics: crate::metrics::Metrics,
}

/// Most entry points remembered; past it, an arbitrary one is forgotten (a miss costs
/// one module read, as before).
const MAX_ENTRY_POINTS: usize = 4096;

/// The largest buffered request body (a module, a batch, admin JSON).
pub const MAX_BUFFERED_BODY: usize = crate::modules::MAX_MODULE_BYTES + 1024;

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
    /// The bounds on requests waiting for their jobs (`POST /v1/jobs?wait=`).
    pub waits: WaitLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            body_idle_timeout: Duration::from_secs(30),
            buffered_body_timeout: Duration::from_secs(120),
            max_buffered_requests: 8,
            max_buffered_per_tenant: 2,
            module_ttl: Duration::from_secs(30 * 24 * 3600),
            waits: WaitLimits::default(),
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
            entry_points: parking_lot::Mutex::default(),
            waiters: Arc::new(wait::Waiters::new(config.waits)),
            config,
            metrics: crate::metrics::Metrics::new(),
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
        self.waiters = Arc::new(wait::Waiters::new(config.waits));
        self.config = config;
        self
    }

    /// The same API reporting into `metrics` (the ones `/metrics` renders).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// The service's routes.
pub fn router(api: Arc<Api>, metrics: crate::metrics::Metrics) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/modules",
            get(modules::list_modules).put(modules::put_module),
        )
        .route(
            "/v1/modules/{name}",
            get(modules::get_module).delete(modules::delete_module),
        )
        .route("/v1/jobs", get(jobs::list_jobs).post(jobs::post_job))
        .route(
            "/v1/batches",
            get(batches::list_batches).post(batches::post_batch),
        )
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/v1/jobs/{id}/output", get(jobs::get_output))
        .route(
            "/v1/batches/{id}",
            get(batches::get_batch).delete(batches::cancel_batch),
        )
        .route(
            "/v1/admin/tenants",
            get(tenants::admin_list_tenants).post(tenants::admin_create_tenant),
        )
        .route("/v1/admin/tenants/{name}", get(tenants::admin_get_tenant))
        .route(
            "/v1/admin/tenants/{name}/tokens",
            post(tenants::admin_issue_token).delete(tenants::admin_revoke),
        )
        .route(
            "/v1/admin/tenants/{name}/policy",
            put(tenants::admin_set_policy).patch(tenants::admin_patch_policy),
        )
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
        .route("/readyz", get(health::readyz))
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, sluice_shared::metrics::CONTENT_TYPE)],
                        render.render_public().await,
                    )
                }
            }),
        )
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::no_method)
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(log::request_log))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .with_state(api)
}
