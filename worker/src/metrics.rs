//! Every metric the worker exports, declared in one place (listed in `docs/metrics.md`),
//! and the endpoint that serves them.
//! Names follow Prometheus conventions: base units, `_total` counters, `_seconds` and
//! `_bytes`; the labels are closed sets: the outcome kind (15 values), the compile
//! limit (4), the module cache tier (`l1`, `l2`, `l3`), the precompile result (4) and
//! the instance pool's resident `kind` (`memory`, `table`),
//! or bounded: the tenant, by the folding rule of [`tenants`].

pub mod pool;
pub mod tenants;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use sluice_shared::{Job, JobId, JobResult, OutcomeKind, QueueError};

pub use pool::PoolMetrics;
pub use tenants::{DEFAULT_MAX_TENANTS, TenantLabels, TenantMetrics};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::queue::redis::ClaimStep;

use crate::executor::QueueOp;

/// The worker's metrics and the registry that exports them.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    /// `sluice_jobs_total{outcome}`: finished runs by outcome kind.
    pub jobs: IntCounterVec,
    /// `sluice_job_duration_seconds`: wall time of a run.
    pub duration: Histogram,
    /// `sluice_jobs_running`: runs in flight.
    pub running: IntGauge,
    /// `sluice_job_fuel_consumed_total`: fuel of metered runs.
    pub fuel: IntCounter,
    /// `sluice_job_input_bytes_total`: input bytes the guests read.
    pub input_bytes: IntCounter,
    /// `sluice_job_output_bytes_total`: output bytes the guests wrote.
    pub output_bytes: IntCounter,
    /// `sluice_job_retries_total`: failed runs that will run again.
    pub retries: IntCounter,
    /// `sluice_job_dead_letters_total`: jobs given up into the dead letters.
    pub dead_letters: IntCounter,
    /// `sluice_job_duplicates_total`: results dropped because another delivery of the
    /// same job finished first.
    pub duplicates: IntCounter,
    /// `sluice_queue_errors_total{op}`: queue operations that failed, by operation.
    pub queue_errors: IntCounterVec,
    /// `sluice_jobs_stuck`: runs the watchdog gave up (recorded as `timeout`) whose
    /// threads are still blocked, each holding a job slot.
    pub stuck: IntGauge,
    /// `sluice_jobs_stuck_total`: runs the watchdog has given up.
    pub stuck_total: IntCounter,
    /// The out-of-process compiler's metrics.
    pub compile: CompileMetrics,
    /// The module cache's metrics.
    pub cache: CacheMetrics,
    /// `sluice_sandbox_pool_idle_resident_bytes{kind}`: the memory the sandbox's instance
    /// pools keep resident in their free slots, read at each scrape once
    /// [`PoolMetrics::watch`] is given the sandbox.
    pub pool: PoolMetrics,
    /// `sluice_job_queue_wait_seconds`: from the job's entry into the queue's stream to
    /// its claim by this worker (its run starts right after).
    pub queue_wait: Histogram,
    /// `sluice_lease_renewals_total`: lease renewals the queue accepted.
    pub lease_renewals: IntCounter,
    /// `sluice_lease_takeovers_total`: entries claimed after another consumer's lease
    /// on them expired.
    pub lease_takeovers: IntCounter,
    /// `sluice_worker_slots`: job slots (the concurrency).
    pub slots: IntGauge,
    /// `sluice_worker_slots_busy`: slots holding a job now (preparing, running, being
    /// recorded, or stuck).
    pub slots_busy: IntGauge,
    /// `sluice_redis_reconnects_total`: recoveries after failed Redis calls (claims
    /// that succeeded after one or more failed ones); the client's own reconnects are
    /// not visible to the worker.
    pub redis_reconnects: IntCounter,
    /// `sluice_claim_duration_seconds`: wall time of one claim call, including the time
    /// it blocks waiting for work (not a Redis round trip).
    pub claim_duration: Histogram,
    /// `sluice_worker_stored_credit_dropped_bytes_total`: stored-bytes credit (bytes
    /// counted against a tenant's `max_stored_bytes` ahead of use) this worker dropped
    /// unused: aged out, reserved against a quota since lowered, left at shutdown, or
    /// blob output reserved ahead and not written.
    pub credit_dropped: IntCounter,
    /// `sluice_worker_stored_credit_released_bytes_total`: of the dropped credit, the
    /// bytes given back to the tenant's window (`quota_release.lua`); the rest stays
    /// counted until its bucket leaves the window.
    pub credit_released: IntCounter,
    /// `sluice_tenant_*`: runs, run seconds and fuel by tenant (folded).
    pub tenants: TenantMetrics,
    /// `sluice_worker_endpoint_connections_open`: connections open now on this
    /// endpoint (`/metrics`, `/healthz`, `/readyz`; capped, see [`serve_endpoint`]).
    pub endpoint_connections: IntGauge,
    /// `sluice_worker_endpoint_connections_evicted_total`: connections the endpoint
    /// closed to make room for a new one with all 64 open (see [`serve_endpoint`]).
    pub endpoint_evicted: IntCounter,
    /// When a failing claim step's warning was last logged: it fails at every
    /// maintenance round (10 a second) until repaired, and is counted each time.
    step_warned: Arc<Mutex<HashMap<QueueOp, Instant>>>,
}

/// How often a failing claim step (promote, takeover) is logged at most.
const STEP_WARN_EVERY: Duration = Duration::from_secs(10);

/// What the out-of-process compiler ([`crate::compile::Compiler`]) counts.
#[derive(Clone)]
pub struct CompileMetrics {
    /// `sluice_module_compiles_total`: compile children started.
    pub compiles: IntCounter,
    /// `sluice_module_compile_seconds`: wall time of a compile, child start to artifact
    /// (or failure).
    pub seconds: Histogram,
    /// `sluice_module_compile_limit_failures_total{limit}`: compiles stopped by a limit
    /// (`memory`, `cpu`, `wall_clock`, `artifact_size`).
    pub limit_failures: IntCounterVec,
}

impl CompileMetrics {
    fn register(registry: &Registry) -> Self {
        let compiles = IntCounter::new(
            "sluice_module_compiles_total",
            "Module compiles run in a compile child",
        )
        .expect("valid metric");
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_module_compile_seconds",
                "Wall time of a module compile in a compile child",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        let limit_failures = IntCounterVec::new(
            Opts::new(
                "sluice_module_compile_limit_failures_total",
                "Module compiles stopped by a compile limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        for limit in crate::compile::CompileLimit::ALL {
            limit_failures.with_label_values(&[limit.as_str()]);
        }
        registry
            .register(Box::new(compiles.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(seconds.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(limit_failures.clone()))
            .expect("unique metric");
        CompileMetrics {
            compiles,
            seconds,
            limit_failures,
        }
    }
}

/// Builds a histogram named `name` with `buckets` and registers it.
fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

/// Registers `sluice_queue_errors_total{op}`, every operation's series at zero.
fn queue_errors(registry: &Registry) -> IntCounterVec {
    let errors = IntCounterVec::new(
        Opts::new(
            "sluice_queue_errors_total",
            "Queue operations that failed, by operation",
        ),
        &["op"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(errors.clone()))
        .expect("unique metric");
    for op in QueueOp::ALL {
        errors.with_label_values(&[op.as_str()]);
    }
    errors
}

/// Registers `sluice_build_info{version}`, always 1.
fn build_info(registry: &Registry) {
    let info = IntGaugeVec::new(
        Opts::new(
            "sluice_build_info",
            "Always 1; the version label is the running build's",
        ),
        &["version"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(info.clone()))
        .expect("unique metric");
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
}

impl WorkerMetrics {
    /// Registers every metric, with each outcome kind's series present from the start,
    /// keeping [`DEFAULT_MAX_TENANTS`] tenant names.
    pub fn new() -> Self {
        Self::with_max_tenants(DEFAULT_MAX_TENANTS)
    }

    /// As [`WorkerMetrics::new`], keeping the first `max_tenants` tenant names (the
    /// rest fold into `other`).
    pub fn with_max_tenants(max_tenants: usize) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let jobs = IntCounterVec::new(
            Opts::new("sluice_jobs_total", "Finished job runs by outcome kind"),
            &["outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(jobs.clone()))
            .expect("unique metric");
        for kind in OutcomeKind::ALL {
            jobs.with_label_values(&[kind.as_str()]);
        }
        let duration = Histogram::with_opts(
            HistogramOpts::new("sluice_job_duration_seconds", "Wall time of a job run").buckets(
                vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
                ],
            ),
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        let running =
            IntGauge::new("sluice_jobs_running", "Job runs in flight").expect("valid metric");
        registry
            .register(Box::new(running.clone()))
            .expect("unique metric");
        let stuck = IntGauge::new(
            "sluice_jobs_stuck",
            "Runs given up by the watchdog whose threads are still blocked",
        )
        .expect("valid metric");
        registry
            .register(Box::new(stuck.clone()))
            .expect("unique metric");
        let compile = CompileMetrics::register(&registry);
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        build_info(&registry);
        WorkerMetrics {
            queue_wait: histogram(
                &registry,
                "sluice_job_queue_wait_seconds",
                "Time from a job's entry into the queue stream to its claim by a worker",
                vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                    3600.0,
                ],
            ),
            claim_duration: histogram(
                &registry,
                "sluice_claim_duration_seconds",
                "Wall time of one claim call, including the time it blocks waiting for work (not a Redis round trip)",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            ),
            lease_renewals: counter("sluice_lease_renewals_total", "Lease renewals accepted"),
            lease_takeovers: counter(
                "sluice_lease_takeovers_total",
                "Entries claimed after another consumer's lease on them expired",
            ),
            redis_reconnects: counter(
                "sluice_redis_reconnects_total",
                "Recoveries after failed Redis calls: claims that succeeded after failed ones",
            ),
            credit_dropped: counter(
                "sluice_worker_stored_credit_dropped_bytes_total",
                "Stored-bytes credit counted ahead against tenant quotas and dropped unused",
            ),
            credit_released: counter(
                "sluice_worker_stored_credit_released_bytes_total",
                "Dropped stored-bytes credit given back to the tenant's quota window",
            ),
            slots: gauge("sluice_worker_slots", "Job slots (concurrency)"),
            slots_busy: gauge("sluice_worker_slots_busy", "Job slots holding a job now"),
            endpoint_connections: gauge(
                "sluice_worker_endpoint_connections_open",
                "Connections open now on the worker's metrics and health endpoint",
            ),
            endpoint_evicted: counter(
                "sluice_worker_endpoint_connections_evicted_total",
                "Oldest connections the worker's metrics and health endpoint closed to accept a new one with all open",
            ),
            tenants: TenantMetrics::register(&registry, TenantLabels::FirstSeen(max_tenants)),
            compile,
            jobs,
            stuck,
            stuck_total: counter(
                "sluice_jobs_stuck_total",
                "Runs given up by the watchdog past their deadline and grace",
            ),
            duration,
            running,
            fuel: counter(
                "sluice_job_fuel_consumed_total",
                "Fuel consumed by metered runs",
            ),
            input_bytes: counter("sluice_job_input_bytes_total", "Input bytes read by guests"),
            output_bytes: counter(
                "sluice_job_output_bytes_total",
                "Output bytes written by guests",
            ),
            retries: counter(
                "sluice_job_retries_total",
                "Failed runs scheduled to run again",
            ),
            dead_letters: counter(
                "sluice_job_dead_letters_total",
                "Jobs moved to the dead letters",
            ),
            duplicates: counter(
                "sluice_job_duplicates_total",
                "Runs whose job another delivery had already finished",
            ),
            queue_errors: queue_errors(&registry),
            cache: CacheMetrics::register(&registry),
            pool: PoolMetrics::register(&registry),
            step_warned: Arc::default(),
            registry,
        }
    }

    /// Records a finished run of `job` (`None`: its envelope did not decode).
    /// A `host_error` (the worker's side failed: Redis, the module store, a thread) is
    /// logged here too, with its reason, where it is counted.
    pub fn record(&self, job: Option<&Job>, result: &JobResult) {
        if let sluice_shared::Outcome::HostError { reason } = &result.outcome {
            tracing::warn!(job = %result.job_id, reason = ?reason, "job failed on the worker's side (host_error)");
        }
        self.tenants.record(job, result);
        self.jobs
            .with_label_values(&[result.outcome.kind().as_str()])
            .inc();
        self.duration
            .observe(result.stats.wall_time_us as f64 / 1e6);
        self.fuel.inc_by(result.stats.fuel_used.unwrap_or(0));
        self.input_bytes.inc_by(result.stats.input_bytes);
        self.output_bytes.inc_by(result.stats.output_bytes);
    }

    /// Logs a failed queue operation with its context and counts it in
    /// `sluice_queue_errors_total`: the one place doing both.
    pub fn queue_error(&self, op: QueueOp, job: Option<JobId>, error: &QueueError) {
        crate::executor::log_queue_error(op, job, error);
        self.queue_errors.with_label_values(&[op.as_str()]).inc();
    }

    /// A step of a claim that failed while the claim went on (promoting due delayed
    /// jobs, taking over expired leases, reading new entries after a takeover): counted
    /// each time, as `promote`, `takeover` or `claim`; a promote or takeover failure
    /// logged at most once per 10 s.
    pub fn claim_step_failed(&self, step: ClaimStep, error: &QueueError) {
        let op = match step {
            ClaimStep::Promote => QueueOp::Promote,
            ClaimStep::Takeover => QueueOp::Takeover,
            ClaimStep::ReadNew => QueueOp::Claim,
        };
        if op != QueueOp::Claim {
            let mut warned = self.step_warned.lock();
            if warned
                .get(&op)
                .is_some_and(|at| at.elapsed() < STEP_WARN_EVERY)
            {
                self.queue_errors.with_label_values(&[op.as_str()]).inc();
                return;
            }
            warned.insert(op, Instant::now());
        }
        self.queue_error(op, None, error);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.pool.refresh();
        sluice_shared::metrics::render(&self.registry)
    }
}

// --- module cache metrics (issue 9: the artifact cache tiers) ---

/// A module cache tier, the `tier` label's closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Loaded modules in process.
    L1,
    /// Artifacts on local disk.
    L2,
    /// Artifacts in Redis.
    L3,
}

impl Tier {
    /// Every tier.
    pub const ALL: [Tier; 3] = [Tier::L1, Tier::L2, Tier::L3];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::L3 => "l3",
        }
    }
}

/// The module cache's metrics, each by tier.
#[derive(Clone)]
pub struct CacheMetrics {
    /// `sluice_module_cache_hits_total{tier}`: lookups the tier answered.
    pub hits: IntCounterVec,
    /// `sluice_module_cache_misses_total{tier}`: lookups the tier could not answer (a
    /// miss in the last tier in use is a compile).
    pub misses: IntCounterVec,
    /// `sluice_module_cache_integrity_failures_total{tier}`: artifacts whose integrity
    /// tag did not match (discarded, the module recompiled).
    pub integrity_failures: IntCounterVec,
    /// `sluice_module_cache_bytes{tier}`: bytes held (`l1`: wasm and artifacts of the
    /// loaded modules; `l2`: artifact files).
    pub bytes: IntGaugeVec,
    /// `sluice_module_precompiles_total{result}`: uploaded modules this worker was
    /// asked to precompile, by result (see [`PrecompileResult`]).
    pub precompiles: IntCounterVec,
}

/// What a precompile request came to, the `result` label's closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecompileResult {
    /// Compiled by this worker and published.
    Compiled,
    /// Already compiled (or refused) by the fleet, or another worker holds its
    /// compile lock: nothing fetched, compiled or loaded here.
    Present,
    /// The module does not compile (invalid, or a compile limit).
    Refused,
    /// Not the module's fault: Redis, the compile child, a module no longer stored.
    Failed,
}

impl PrecompileResult {
    /// Every result.
    pub const ALL: [PrecompileResult; 4] = [
        PrecompileResult::Compiled,
        PrecompileResult::Present,
        PrecompileResult::Refused,
        PrecompileResult::Failed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PrecompileResult::Compiled => "compiled",
            PrecompileResult::Present => "present",
            PrecompileResult::Refused => "refused",
            PrecompileResult::Failed => "failed",
        }
    }
}

impl CacheMetrics {
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["tier"]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            for tier in Tier::ALL {
                c.with_label_values(&[tier.as_str()]);
            }
            c
        };
        let bytes = IntGaugeVec::new(
            Opts::new(
                "sluice_module_cache_bytes",
                "Bytes held by the module cache tier",
            ),
            &["tier"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(bytes.clone()))
            .expect("unique metric");
        for tier in [Tier::L1, Tier::L2] {
            bytes.with_label_values(&[tier.as_str()]);
        }
        let precompiles = IntCounterVec::new(
            Opts::new(
                "sluice_module_precompiles_total",
                "Uploaded modules this worker was asked to precompile, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(precompiles.clone()))
            .expect("unique metric");
        for result in PrecompileResult::ALL {
            precompiles.with_label_values(&[result.as_str()]);
        }
        CacheMetrics {
            precompiles,
            hits: counter(
                "sluice_module_cache_hits_total",
                "Module cache lookups answered by the tier",
            ),
            misses: counter(
                "sluice_module_cache_misses_total",
                "Module cache lookups the tier could not answer",
            ),
            integrity_failures: counter(
                "sluice_module_cache_integrity_failures_total",
                "Cached artifacts whose integrity tag did not match",
            ),
            bytes,
        }
    }

    /// Counts a hit in `tier`.
    pub fn hit(&self, tier: Tier) {
        self.hits.with_label_values(&[tier.as_str()]).inc();
    }

    /// Counts a miss in `tier`.
    pub fn miss(&self, tier: Tier) {
        self.misses.with_label_values(&[tier.as_str()]).inc();
    }

    /// Counts an integrity failure in `tier`.
    pub fn integrity_failure(&self, tier: Tier) {
        self.integrity_failures
            .with_label_values(&[tier.as_str()])
            .inc();
    }

    /// Counts a precompile request's `result`.
    pub fn precompiled(&self, result: PrecompileResult) {
        self.precompiles.with_label_values(&[result.as_str()]).inc();
    }

    /// Sets the bytes `tier` holds.
    pub fn set_bytes(&self, tier: Tier, bytes: u64) {
        self.bytes
            .with_label_values(&[tier.as_str()])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

// --- end of module cache metrics ---

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` (and `/healthz`, `/readyz`: [`crate::health`]) on `listener`
/// (bound by the caller, so that the endpoint answers as soon as the worker says it is
/// ready) until `shutdown`, through the bounded server ([`crate::http`]) with
/// [`ServerConfig::ENDPOINT`](crate::http::ServerConfig::ENDPOINT)'s bounds: at most 64
/// connections (`sluice_worker_endpoint_connections_open`), the oldest evicted for a new
/// one when all are open (`sluice_worker_endpoint_connections_evicted_total`), 30 s per
/// connection, 10 s for a request's headers.
pub async fn serve_endpoint(
    listener: tokio::net::TcpListener,
    metrics: WorkerMetrics,
    health: Arc<crate::health::WorkerHealth>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use axum::routing::get;
    let connections = metrics.endpoint_connections.clone();
    let evicted = metrics.endpoint_evicted.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", sluice_shared::metrics::CONTENT_TYPE)],
                        metrics.render(),
                    )
                }
            }),
        )
        .merge(crate::health::routes(health));
    crate::http::serve(
        listener,
        app,
        crate::http::ServerConfig::ENDPOINT,
        crate::http::Hooks {
            opened: Box::new(move || OpenConnection::new(&connections)),
            evicted: Box::new(move || evicted.inc()),
        },
        async move { shutdown.cancelled().await },
    )
    .await;
}

/// Holds the endpoint's open-connections gauge up by one until dropped.
struct OpenConnection(IntGauge);

impl OpenConnection {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
