//! The fleet worker: the worker loop on the Redis queue, with modules, inputs and
//! outputs in Redis, and a `/metrics` endpoint.
//!
//! - [`config`]: the `serve` settings ([`FleetArgs`] as given, [`FleetConfig`] checked).
//! - [`serve()`]: connect, build the sandbox, start the metrics endpoint, run the loop.
//! - [`RedisEnv`] (here): the [`JobEnv`] that reads modules (through the
//!   [`ArtifactCache`]) and inputs from Redis and stores outputs there, counted against
//!   the tenant's quota.
//! - `credit`: per-tenant stored-bytes credit, so a job's result is counted against
//!   `max_stored_bytes` without a Redis round trip per job.
//! - `precompile`: with the shared cache on, the task that compiles uploaded modules
//!   before their first job (started with the [`RedisEnv`], stopped when it drops).

pub mod config;
mod credit;
mod precompile;
mod runtime;
mod serve;

pub use config::{ConfigError, FleetArgs, FleetConfig};
pub use runtime::runtime;
pub use serve::{READY_MESSAGE, READY_TARGET, ServeError, serve};

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::queue::redis::{BlobWriteStream, RedisQueue, Reservation, StoredBucket};
use sluice_shared::{Job, JobInput, JobOutput, JobResult, ModuleHash, Outcome, TenantPolicy};
use tokio::runtime::Handle;

use crate::cache::{ArtifactCache, CacheConfig, CacheError, compile_with};
use crate::executor::{ClaimReport, Disposition, JobEnv, QueueOp};
use crate::health::WorkerHealth;
use crate::job_io::{JobReader, JobWriter};
use crate::metrics::WorkerMetrics;
use crate::sandbox::{LoadedModule, Sandbox};

/// Output of one job that passed the inline limit (the sandbox keeps a smaller one on
/// the guest's thread, `JobWriter::Spill`, and only writes here once the output is
/// past it): streamed into a chunked blob from the first write, so a large output never
/// sits in worker memory and the bytes the sandbox kept are not copied again.
struct OutputState {
    blob: Option<BlobWriteStream>,
    /// Bytes written to `blob` so far.
    blob_len: u64,
    /// Bytes already counted against the tenant's `max_stored_bytes` for this run.
    reserved: u64,
    /// The window bucket the last reservation was counted in (`None` when it failed
    /// open, so nothing was counted): what is reserved and not written is given back
    /// there (it is less than that last reservation).
    reserved_in: Option<StoredBucket>,
}

/// Blob output is counted against the stored-bytes quota ahead of writing it, this
/// many bytes at a time: one Redis round trip per MiB, and a tenant over its quota
/// stores at most this much more per running job.
const OUTPUT_RESERVE_STEP: u64 = 1 << 20;

/// Bytes counted for a stored result besides its output and stderr (ids, outcome,
/// stats, the completion notice); outcome texts are capped at 4 KiB, stderr is counted
/// by its length.
const RESULT_OVERHEAD: u64 = 512;

/// Whose quota a run's stored output is counted against.
struct StoredQuota {
    tenant: String,
    max: u64,
    /// Set (to the bytes counted in the window) once a reservation was refused: the
    /// run's output is then not kept and the job ends as `output_limit`. Outside the
    /// state lock so that `finish_output` can read it while a stalled write holds that.
    refused: OnceLock<u64>,
}

#[derive(Clone)]
struct RedisOutput {
    state: Arc<Mutex<OutputState>>,
    queue: Arc<RedisQueue>,
    handle: Handle,
    quota: Arc<StoredQuota>,
}

impl RedisOutput {
    fn over_quota(&self) -> std::io::Error {
        std::io::Error::other(format!(
            "tenant {} is over its max_stored_bytes quota",
            self.quota.tenant
        ))
    }

    /// Makes sure `total` bytes of blob output are counted against the tenant's quota
    /// before they are written.
    fn cover(&self, state: &mut OutputState, total: u64) -> std::io::Result<()> {
        if self.quota.refused.get().is_some() {
            return Err(self.over_quota());
        }
        if total <= state.reserved {
            return Ok(());
        }
        let step = (total - state.reserved)
            .div_ceil(OUTPUT_RESERVE_STEP)
            .saturating_mul(OUTPUT_RESERVE_STEP);
        let reply = self.handle.block_on(self.queue.admission().reserve_stored(
            &self.quota.tenant,
            step,
            self.quota.max,
        ));
        match reply {
            Ok(Reservation::Granted { bucket, .. }) => {
                state.reserved = state.reserved.saturating_add(step);
                state.reserved_in = Some(bucket);
                Ok(())
            }
            Ok(Reservation::Refused { used, .. }) => {
                let _ = self.quota.refused.set(used);
                Err(self.over_quota())
            }
            Err(e) => {
                // Fails open: a broken usage key must not fail the tenant's jobs (the
                // API refuses its requests on the same key), and an unreachable Redis
                // fails the blob write that follows anyway.
                tracing::warn!(tenant = %crate::logging::tenant_field(&self.quota.tenant), error = %e,
                    "could not count output against max_stored_bytes; keeping it");
                state.reserved = state.reserved.saturating_add(step);
                state.reserved_in = None;
                Ok(())
            }
        }
    }
}

impl Write for RedisOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.state.lock();
        let state = &mut *state;
        self.cover(state, state.blob_len.saturating_add(buf.len() as u64))?;
        if state.blob.is_none() {
            // Only a spilled output is written here (`JobWriter::Spill` keeps the rest
            // on the guest's thread), so its first write opens the blob: no inline
            // buffer to fill and copy again.
            state.blob = Some(self.queue.blobs().write_stream(self.handle.clone()));
        }
        match &mut state.blob {
            Some(blob) => {
                let n = blob.write(buf)?;
                state.blob_len = state.blob_len.saturating_add(n as u64);
                Ok(n)
            }
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
    handle: Handle,
    /// Loaded modules and their compiled code (L1, L2, L3).
    modules: Arc<ArtifactCache>,
    /// Open outputs by job id and the thread running it: the executor opens and finishes
    /// a run's output on the one run thread that runs it, and two runs of the same
    /// job can be on one worker at once (a run the watchdog gave up on still going, a
    /// takeover, a job a submitter enqueued again), so the job id alone would let one
    /// run take or finish the other's output.
    outputs: Mutex<HashMap<(sluice_shared::JobId, std::thread::ThreadId), RedisOutput>>,
    /// Stored-bytes already counted against each tenant's quota and not used yet.
    credit: Arc<credit::StoredCredit>,
    /// Tenant policies, each re-read from Redis after `POLICY_CACHE_FOR` (and
    /// forgotten by the credit sweep once that old, so the map holds recent tenants).
    policies: Arc<Policies>,
    metrics: WorkerMetrics,
    /// What `/healthz` and `/readyz` answer, fed by the claim loop's hooks.
    health: Arc<WorkerHealth>,
    /// Stops the precompile task (when there is one) with the environment.
    _precompile: Option<tokio_util::sync::DropGuard>,
    /// Stops the task that drops stale credit with the environment.
    _sweep: tokio_util::sync::DropGuard,
}

/// Tenant policies by tenant, with when each was read.
type Policies = Mutex<HashMap<String, (Instant, TenantPolicy)>>;

/// How long a worker trusts a tenant policy it read before reading it again.
const POLICY_CACHE_FOR: Duration = Duration::from_secs(5);

impl RedisEnv {
    /// An environment over `queue` with the module cache `cache` configures (L3 in
    /// `queue`'s Redis when it has a key, and then the precompile task following
    /// uploads); must be created inside the tokio runtime.
    pub fn new(
        queue: Arc<RedisQueue>,
        sandbox: Arc<Sandbox>,
        metrics: WorkerMetrics,
        health: Arc<WorkerHealth>,
        cache: &CacheConfig,
    ) -> Result<Self, CacheError> {
        let modules = ArtifactCache::new(
            sandbox.clone(),
            cache,
            Some(queue.clone()),
            compile_with(sandbox),
            metrics.cache.clone(),
        )?;
        let precompile = cache.secret.is_some().then(|| {
            let stop = tokio_util::sync::CancellationToken::new();
            precompile::spawn(
                queue.config().clone(),
                modules.clone(),
                metrics.cache.clone(),
                stop.clone(),
            );
            stop.drop_guard()
        });
        let credit = Arc::new(credit::StoredCredit::new(queue.admission().stored_bucket()));
        let policies = Arc::new(Policies::default());
        let sweep = tokio_util::sync::CancellationToken::new();
        tokio::spawn(sweep_credit(
            credit.clone(),
            policies.clone(),
            queue.clone(),
            metrics.clone(),
            sweep.clone(),
        ));
        Ok(RedisEnv {
            _precompile: precompile,
            _sweep: sweep.drop_guard(),
            credit,
            queue,
            handle: Handle::current(),
            modules,
            outputs: Mutex::default(),
            policies,
            metrics,
            health,
        })
    }
}

impl RedisEnv {
    /// The tenant's policy (the fleet default for a tenant without one).
    fn policy(&self, tenant: &str) -> Result<TenantPolicy, Outcome> {
        if let Some((read_at, policy)) = self.policies.lock().get(tenant)
            && read_at.elapsed() < POLICY_CACHE_FOR
        {
            return Ok(policy.clone());
        }
        let policy = self
            .handle
            .block_on(self.queue.tenants().policy(tenant))
            .map_err(|e| Outcome::HostError {
                reason: format!("reading the policy of tenant {tenant}: {e}"),
            })?
            .unwrap_or_default();
        self.policies
            .lock()
            .insert(tenant.to_owned(), (Instant::now(), policy.clone()));
        Ok(policy)
    }
}

impl RedisEnv {
    /// Counts `need` bytes stored for `tenant` against `limit` from the worker's
    /// credit, reserving more in Redis when it runs short (and giving back credit it
    /// drops on the way).
    fn draw_stored(
        &self,
        tenant: &str,
        need: u64,
        limit: credit::Limit,
    ) -> Result<credit::Draw, sluice_shared::queue::redis::AdmissionError> {
        self.credit.draw(
            tenant,
            need,
            limit,
            |ask| {
                self.handle.block_on(self.queue.admission().reserve_stored(
                    tenant,
                    ask,
                    limit.max(),
                ))
            },
            |dropped| {
                self.handle
                    .block_on(release_credit(&self.queue, &self.metrics, dropped))
            },
        )
    }

    /// Gives back all the worker's credit (it stops running jobs): what each tenant
    /// has counted ahead and not used stops counting against its quota.
    pub async fn release_credit(&self) {
        for dropped in self.credit.drain() {
            release_credit(&self.queue, &self.metrics, dropped).await;
        }
    }
}

/// Gives `dropped` credit back to its tenant's window, counting it in the metrics;
/// best effort (what is not given back stays counted until its bucket leaves the
/// window).
async fn release_credit(queue: &RedisQueue, metrics: &WorkerMetrics, dropped: credit::Dropped) {
    metrics.credit_dropped.inc_by(dropped.bytes);
    match queue
        .admission()
        .release_stored(&dropped.tenant, dropped.bytes, dropped.bucket)
        .await
    {
        Ok(released) => metrics.credit_released.inc_by(released),
        Err(e) => {
            tracing::debug!(tenant = %crate::logging::tenant_field(&dropped.tenant), error = %e,
                bytes = dropped.bytes, "could not give back unused stored-bytes credit");
        }
    }
}

/// Drops stale credit once per credit lifetime and gives it back, and forgets policies
/// past `POLICY_CACHE_FOR`, until `stop`.
async fn sweep_credit(
    credit: Arc<credit::StoredCredit>,
    policies: Arc<Policies>,
    queue: Arc<RedisQueue>,
    metrics: WorkerMetrics,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(credit.max_age());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = Instant::now();
        policies
            .lock()
            .retain(|_, (read_at, _)| now.saturating_duration_since(*read_at) < POLICY_CACHE_FOR);
        for dropped in credit.sweep_at(now) {
            release_credit(&queue, &metrics, dropped).await;
        }
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
        // Called by the cache only when it has to compile.
        let (queue, handle, hash) = (self.queue.clone(), self.handle.clone(), *hash);
        self.modules.module(&hash, move || {
            let hash = &hash;
            let bytes = handle
                .block_on(queue.modules().get(hash))
                .map_err(|e| Outcome::HostError {
                    reason: format!("fetching module {hash}: {e}"),
                })?
                .ok_or_else(|| Outcome::InvalidModule {
                    reason: format!(
                        "module {hash} is not stored (upload it with `sluice module put`)"
                    ),
                })?;
            // `get` refuses bytes that do not hash to their key; the cache checks again
            // before it compiles (it keys compiled code by this hash).
            Ok(bytes)
        })
    }

    fn open_input(&self, job: &Job) -> Result<JobReader, Outcome> {
        match &job.input {
            JobInput::Inline(bytes) => Ok(JobReader::Memory(bytes.clone().into())),
            JobInput::Blob { id, .. } => Ok(JobReader::Stream(Box::new(
                self.queue
                    .blobs()
                    .read_stream(self.handle.clone(), id.as_str()),
            ))),
            other => Err(Outcome::InputUnavailable {
                reason: format!("a fleet worker reads blob inputs, not {}", other.kind()),
            }),
        }
    }

    fn open_output(&self, job: &Job) -> Result<JobWriter, Outcome> {
        let max = self.policy(&job.tenant.0)?.max_stored_bytes;
        let output = RedisOutput {
            state: Arc::new(Mutex::new(OutputState {
                blob: None,
                blob_len: 0,
                reserved: 0,
                reserved_in: None,
            })),
            queue: self.queue.clone(),
            handle: self.handle.clone(),
            quota: Arc::new(StoredQuota {
                tenant: job.tenant.0.clone(),
                max,
                refused: OnceLock::new(),
            }),
        };
        self.outputs
            .lock()
            .insert((job.id, std::thread::current().id()), output.clone());
        // Kept on the guest's thread while it fits the inline limit (most outputs: no
        // helper thread, no Redis); past it, through a helper into `RedisOutput`, which
        // spills to a blob counted against the quota.
        Ok(JobWriter::Spill {
            keep: self.queue.config().inline_limit,
            then: Box::new(output),
        })
    }

    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome> {
        // An output that never spilled came back in `result.output`; one that did went
        // to `RedisOutput` (the result says `Written`). A failed job keeps no output
        // either way, as before outputs were kept on the guest's thread. Taken before
        // the lookup: without its entry nothing counted the kept bytes against the
        // quota, so they must not be stored.
        let kept = match std::mem::replace(&mut result.output, JobOutput::Written) {
            JobOutput::Inline(bytes) => bytes,
            _ => Vec::new(),
        };
        let Some(output) = self
            .outputs
            .lock()
            .remove(&(job.id, std::thread::current().id()))
        else {
            return Ok(());
        };
        if let Some(&used) = output.quota.refused.get()
            && result.outcome != Outcome::Timeout
        {
            // Whatever the guest made of its refused write, the quota is why it ended.
            refuse_stored(&output.quota, used, result);
            return Ok(());
        }
        let result_bytes = (result.stderr.len() as u64).saturating_add(RESULT_OVERHEAD);
        let tenant = &output.quota.tenant;
        if !result.outcome.is_success() {
            // A failed job's result (and dead letter) is stored whatever the quota says:
            // it is counted, never refused. Best effort: the completion that follows
            // fails on its own if Redis is away. A failed job's partial blob chunks
            // expire with the blob TTL. Not locking the state: a helper thread stuck in
            // a stalled blob write may hold it.
            let _ = self.draw_stored(tenant, result_bytes, credit::Limit::CountOnly);
            return Ok(());
        }
        let mut state = output.state.lock();
        let stored = match &state.blob {
            None => kept.len() as u64,
            Some(_) => state.blob_len,
        };
        let total = stored.saturating_add(result_bytes);
        // Blob output reserved ahead and not written is given back to the bucket the
        // last reservation was counted in (the surplus is less than that reservation).
        let surplus = state.reserved.saturating_sub(total);
        if surplus > 0
            && let Some(bucket) = state.reserved_in
        {
            let dropped = credit::Dropped {
                tenant: tenant.clone(),
                bytes: surplus,
                bucket,
            };
            self.handle
                .block_on(release_credit(&self.queue, &self.metrics, dropped));
        }
        let need = total.saturating_sub(state.reserved);
        if need > 0 {
            match self.draw_stored(tenant, need, credit::Limit::Max(output.quota.max)) {
                Ok(credit::Draw::Granted | credit::Draw::Unavailable) => {}
                Ok(credit::Draw::Refused { used }) => {
                    // The blob's chunks expire with the blob TTL; nothing points at them.
                    state.blob = None;
                    refuse_stored(&output.quota, used, result);
                    return Ok(());
                }
                Err(e) => {
                    // Fails open, as `RedisOutput::cover` does.
                    tracing::warn!(tenant = %crate::logging::tenant_field(tenant), error = %e,
                        "could not count output against max_stored_bytes; keeping it");
                }
            }
        }
        result.output = match state.blob.take() {
            None => JobOutput::Inline(kept),
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
        self.health.stuck(stuck);
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
        self.metrics.record(job, result);
        match disposition {
            Disposition::Retrying(_) => self.metrics.retries.inc(),
            Disposition::DeadLettered => self.metrics.dead_letters.inc(),
            Disposition::Duplicate => self.metrics.duplicates.inc(),
            // Logged and counted where the queue refused it (`on_queue_error`).
            Disposition::Unrecorded | Disposition::Completed => {}
        }
    }

    fn on_claimed(&self, claim: &ClaimReport<'_>) {
        self.health.claim_succeeded(Instant::now());
        let metrics = &self.metrics;
        metrics.claim_duration.observe(claim.took.as_secs_f64());
        if claim.after_failures > 0 {
            metrics.redis_reconnects.inc();
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for claimed in claim.claimed {
            // Entries are delivered once by XREADGROUP; a later delivery is a takeover
            // of a lease that expired (a release adds a fresh entry).
            if claimed.lease.deliveries > 1 {
                metrics.lease_takeovers.inc();
            }
            // Waited once: on an entry's first delivery, when it gets a slot (a takeover
            // or an entry given back at shutdown already waited, or does not run here).
            if claimed.lease.deliveries == 1
                && !claim.given_back
                && claimed.delivery.is_ok()
                && let Some(entered_ms) = stream_entry_ms(&claimed.lease.entry_id)
            {
                // Redis's clock wrote the id; a worker clock behind it counts as 0.
                let waited_ms = now_ms.saturating_sub(entered_ms);
                metrics.queue_wait.observe(waited_ms as f64 / 1e3);
            }
        }
    }

    fn on_lease_renewed(&self) {
        self.health.reached_redis();
        self.metrics.lease_renewals.inc();
    }

    fn on_slot(&self, busy: bool) {
        self.health.slot(Instant::now(), busy);
        if busy {
            self.metrics.slots_busy.inc();
        } else {
            self.metrics.slots_busy.dec();
        }
    }

    fn on_queue_error(
        &self,
        op: QueueOp,
        job: Option<sluice_shared::JobId>,
        error: &sluice_shared::QueueError,
    ) {
        self.health.queue_error(Instant::now(), op, error);
        self.metrics.queue_error(op, job, error);
    }
}

/// The milliseconds since the epoch at which Redis added a stream entry: the first
/// part of its id (`<ms>-<seq>`). `None` for an id of another form.
fn stream_entry_ms(entry_id: &str) -> Option<u64> {
    let (ms, seq) = entry_id.split_once('-')?;
    seq.parse::<u64>().ok()?;
    ms.parse().ok()
}

/// Ends `result` as `output_limit` because its tenant is over `max_stored_bytes`: its
/// output is not kept, and a line at the head of its stderr names the quota (the
/// outcome's own fields are fixed by the stored result format).
fn refuse_stored(quota: &StoredQuota, used: u64, result: &mut JobResult) {
    result.outcome = Outcome::OutputLimit { limit: quota.max };
    result.output = JobOutput::Inline(Vec::new());
    let mut stderr = format!(
        "sluice: output not kept: tenant {} is over its max_stored_bytes quota \
         ({} bytes; {used} bytes counted in the current window)\n",
        quota.tenant, quota.max
    )
    .into_bytes();
    stderr.append(&mut result.stderr);
    result.stderr = stderr;
}
