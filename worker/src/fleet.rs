//! The fleet worker: the worker loop on the Redis queue, with modules, inputs and
//! outputs in Redis, and a `/metrics` endpoint.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::{BlobWriteStream, RedisQueue};
use sluice_shared::{Job, JobInput, JobOutput, JobResult, ModuleHash, Outcome, TenantPolicy};
use tokio::runtime::Handle;

use crate::executor::{Disposition, JobEnv};
use crate::metrics::WorkerMetrics;
use crate::sandbox::{LoadedModule, Sandbox};

/// The URI scheme of an input stored as a blob in the queue's Redis.
pub const BLOB_URI_PREFIX: &str = "blob:";

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Output of one job: kept in memory while small, spilled to a chunked blob once it
/// passes the inline limit, so a large output never sits in worker memory.
struct OutputState {
    inline: Vec<u8>,
    blob: Option<BlobWriteStream>,
}

#[derive(Clone)]
struct RedisOutput {
    state: Arc<Mutex<OutputState>>,
    queue: Arc<RedisQueue>,
    handle: Handle,
}

impl Write for RedisOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = lock(&self.state);
        let state = &mut *state;
        if state.blob.is_none() {
            if state.inline.len() + buf.len() <= self.queue.config().inline_limit {
                state.inline.extend_from_slice(buf);
                return Ok(buf.len());
            }
            let mut blob = self.queue.blob_write_stream(self.handle.clone());
            blob.write_all(&std::mem::take(&mut state.inline))?;
            state.blob = Some(blob);
        }
        match &mut state.blob {
            Some(blob) => blob.write(buf),
            None => Ok(0),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Modules, inputs and outputs in the queue's Redis.
pub struct RedisEnv {
    queue: Arc<RedisQueue>,
    sandbox: Arc<Sandbox>,
    handle: Handle,
    modules: Mutex<HashMap<ModuleHash, Result<Arc<LoadedModule>, Outcome>>>,
    /// Open outputs by job id and the thread running it: the executor opens and finishes
    /// a run's output on the one blocking thread that runs it, and two runs of the same
    /// job can be on one worker at once (a run the watchdog gave up on still going, a
    /// takeover, a job a submitter enqueued again), so the job id alone would let one
    /// run take or finish the other's output.
    outputs: Mutex<HashMap<(sluice_shared::JobId, std::thread::ThreadId), RedisOutput>>,
    /// Tenant policies, each re-read from Redis after `POLICY_CACHE_FOR`.
    policies: Mutex<HashMap<String, (Instant, TenantPolicy)>>,
    metrics: WorkerMetrics,
}

/// How long a worker trusts a tenant policy it read before reading it again.
const POLICY_CACHE_FOR: Duration = Duration::from_secs(5);

impl RedisEnv {
    /// An environment over `queue`; must be created inside the tokio runtime.
    pub fn new(queue: Arc<RedisQueue>, sandbox: Arc<Sandbox>, metrics: WorkerMetrics) -> Self {
        RedisEnv {
            queue,
            sandbox,
            handle: Handle::current(),
            modules: Mutex::default(),
            outputs: Mutex::default(),
            policies: Mutex::default(),
            metrics,
        }
    }
}

impl RedisEnv {
    /// The tenant's policy (the fleet default for a tenant without one).
    fn policy(&self, tenant: &str) -> Result<TenantPolicy, Outcome> {
        if let Some((read_at, policy)) = lock(&self.policies).get(tenant)
            && read_at.elapsed() < POLICY_CACHE_FOR
        {
            return Ok(policy.clone());
        }
        let policy = self
            .handle
            .block_on(self.queue.policy(tenant))
            .map_err(|e| Outcome::HostError {
                reason: format!("reading the policy of tenant {tenant}: {e}"),
            })?
            .unwrap_or_default();
        lock(&self.policies).insert(tenant.to_owned(), (Instant::now(), policy.clone()));
        Ok(policy)
    }
}

impl JobEnv for RedisEnv {
    fn admit(&self, job: &Job) -> Result<(), Outcome> {
        // The envelope is not trusted: its limits, input size, arguments and
        // environment are checked against the policy as stored, whatever the submitter
        // claims to have checked.
        self.policy(&job.tenant.0)?
            .check_job(job)
            .map_err(|violation| Outcome::PolicyViolation {
                reason: format!("tenant {}: {violation}", job.tenant),
            })
    }

    fn module(&self, hash: &ModuleHash) -> Result<Arc<LoadedModule>, Outcome> {
        if let Some(known) = lock(&self.modules).get(hash) {
            return known.clone();
        }
        let bytes = self
            .handle
            .block_on(self.queue.get_module(hash))
            .map_err(|e| Outcome::HostError {
                reason: format!("fetching module {hash}: {e}"),
            })?
            .ok_or_else(|| Outcome::InvalidModule {
                reason: format!("module {hash} is not stored (upload it with `sluice module put`)"),
            })?;
        let loaded = if ModuleHash::of(&bytes) == *hash {
            self.sandbox.load_module(&bytes)
        } else {
            Err(Outcome::InvalidModule {
                reason: format!("stored bytes of module {hash} do not match its hash"),
            })
        };
        lock(&self.modules).insert(*hash, loaded.clone());
        loaded
    }

    fn open_input(&self, job: &Job) -> Result<Box<dyn Read + Send>, Outcome> {
        match &job.input {
            JobInput::Inline(bytes) => Ok(Box::new(std::io::Cursor::new(bytes.clone()))),
            JobInput::Blob { uri, .. } => {
                let id =
                    uri.strip_prefix(BLOB_URI_PREFIX)
                        .ok_or_else(|| Outcome::InputUnavailable {
                            reason: format!("a fleet worker reads `blob:` inputs, not {uri}"),
                        })?;
                Ok(Box::new(
                    self.queue.blob_read_stream(self.handle.clone(), id),
                ))
            }
        }
    }

    fn open_output(&self, job: &Job) -> Result<Box<dyn Write + Send>, Outcome> {
        let output = RedisOutput {
            state: Arc::new(Mutex::new(OutputState {
                inline: Vec::new(),
                blob: None,
            })),
            queue: self.queue.clone(),
            handle: self.handle.clone(),
        };
        lock(&self.outputs).insert((job.id, std::thread::current().id()), output.clone());
        Ok(Box::new(output))
    }

    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome> {
        let Some(output) = lock(&self.outputs).remove(&(job.id, std::thread::current().id()))
        else {
            return Ok(());
        };
        if !result.outcome.is_success() {
            // A failed job's partial blob chunks expire with the blob TTL. Not locking
            // the state first: a helper thread stuck in a stalled blob write may hold it.
            return Ok(());
        }
        let mut state = lock(&output.state);
        result.output = match state.blob.take() {
            None => JobOutput::Inline(std::mem::take(&mut state.inline)),
            Some(blob) => {
                let (id, len) = blob.finish().map_err(|e| Outcome::HostError {
                    reason: format!("storing output: {e}"),
                })?;
                JobOutput::Blob { id, len }
            }
        };
        Ok(())
    }

    fn on_started(&self, _job: &Job) {
        self.metrics.running.inc();
    }

    fn on_stuck(&self, _job: &Job, stuck: bool) {
        if stuck {
            self.metrics.stuck.inc();
            self.metrics.stuck_total.inc();
        } else {
            self.metrics.stuck.dec();
        }
    }

    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition) {
        if job.is_some() {
            self.metrics.running.dec();
        }
        self.metrics.record(result);
        match disposition {
            Disposition::Retrying(_) => self.metrics.retries.inc(),
            Disposition::DeadLettered => self.metrics.dead_letters.inc(),
            Disposition::Duplicate => self.metrics.duplicates.inc(),
            Disposition::Unrecorded => self.metrics.queue_errors.inc(),
            Disposition::Completed => {}
        }
    }
}

/// Serves `/metrics` (and `/healthz`) on `addr` until `shutdown`.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: WorkerMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
