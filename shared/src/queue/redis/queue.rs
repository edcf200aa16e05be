//! The queue itself: the [`Queue`] trait on Redis Streams (enqueue, claim with
//! takeover of expired leases, renew, complete in batches, retry, dead-letter, release,
//! results, stats) and the delayed set (`schedule`). A job's life here: `XADD` onto the
//! job stream, `XREADGROUP` (or `takeover.lua`) to claim, then `complete.lua`,
//! `retry.lua`, `dead.lua` or `release.lua`; `promote.lua` moves due delayed jobs.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::completions::{PendingCompletion, flush_completions};
use super::connection::Connection;
use parking_lot::Mutex;
use redis::{RedisError, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::error::{StoreError, bad_reply, corrupt, is_nogroup, on_key, unavailable};
use super::keys::Keys;
use super::reply::{bytes_of, count_of, into_bytes, into_entries, into_field_pairs, millis};
use super::scripts::SCRIPTS;
use super::{ENVELOPE_FIELD, GROUP, RedisConfig, RedisQueue};
use crate::codec::{self, DecodeError};
use crate::job::{Job, JobId};
use crate::outcome::{JobResult, OutcomeKind};
use crate::queue::{
    Claimed, Completion, DeadLetter, Lease, Queue, QueueError, QueueStats, ReleaseKind,
};

/// A step inside a claim that can fail while the claim goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// Moving due delayed jobs onto the job stream (`promote.lua`).
    Promote,
    /// Taking over entries whose lease expired (`takeover.lua`).
    Takeover,
    /// Reading new entries after some were taken over (those are returned anyway).
    ReadNew,
}

/// Told of every claim step that failed while its claim went on
/// ([`RedisQueue::on_claim_step_failed`]): the hook then logs and counts it, and the
/// queue logs nothing of its own.
pub type ClaimErrorHook = Arc<dyn Fn(ClaimStep, &QueueError) + Send + Sync>;

/// The claim side's state: the completion flusher's inbox and the maintenance clocks.
pub(super) struct ClaimState {
    completions: mpsc::Sender<PendingCompletion>,
    last_maintenance: Mutex<Option<Instant>>,
    /// Where the next takeover scan of the pending list starts: `XAUTOCLAIM` looks at
    /// a bounded number of entries per call, so scanning always from the start could
    /// never reach expired entries behind many live ones.
    takeover_cursor: Mutex<String>,
    /// When a failing maintenance step was last logged: it fails on every claim until
    /// repaired, and one line per few seconds says as much as thousands.
    maintenance_warned: Mutex<HashMap<&'static str, Instant>>,
    /// Who is told of failed claim steps (else they are logged here, rate-limited).
    step_failed: OnceLock<ClaimErrorHook>,
}

impl ClaimState {
    /// Starts the completion flusher for the queue of `keys`.
    pub(super) fn start(conn: Connection, keys: Keys, config: RedisConfig) -> Self {
        let (completions, pending) = mpsc::channel(config.completion_batch * 4);
        tokio::spawn(flush_completions(pending, conn, keys, config));
        ClaimState {
            completions,
            last_maintenance: Mutex::new(None),
            takeover_cursor: Mutex::new("0-0".to_owned()),
            maintenance_warned: Mutex::new(HashMap::new()),
            step_failed: OnceLock::new(),
        }
    }
}

impl RedisQueue {
    /// Installs the hook told of claim steps that fail while the claim goes on (a
    /// worker counts them); only the first call takes effect.
    pub fn on_claim_step_failed(&self, hook: ClaimErrorHook) {
        let _ = self.claims.step_failed.set(hook);
    }

    /// Promotes due delayed jobs and takes over entries idle longer than `lease_for`,
    /// at most once per maintenance interval. A step that fails is logged with the key
    /// it concerns and skipped, so a corrupt delayed set or job stream never stops
    /// claims of new jobs.
    async fn maintain(&self, consumer: &str, max: usize, lease_for: Duration) -> Vec<Claimed> {
        {
            let mut last = self.claims.last_maintenance.lock();
            if last.is_some_and(|at| at.elapsed() < self.config.maintenance_interval) {
                return Vec::new();
            }
            *last = Some(Instant::now());
        }
        let promoted: Result<i64, RedisError> = SCRIPTS
            .promote
            .key(&self.keys.delayed)
            .key(&self.keys.jobs)
            .arg(1000)
            .arg(millis(self.config.result_ttl))
            .arg(crate::codec::OLDEST_FORMAT_VERSION)
            .arg(crate::codec::FORMAT_VERSION)
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(e) = promoted {
            self.maintenance_failed(
                ClaimStep::Promote,
                &self.keys.delayed,
                &on_key(&self.keys.delayed)(e).into(),
            );
        }
        match self.take_over(consumer, max, lease_for).await {
            Ok(claimed) => claimed,
            Err(e) => {
                self.maintenance_failed(ClaimStep::Takeover, &self.keys.jobs, &e);
                Vec::new()
            }
        }
    }

    fn maintenance_failed(&self, step: ClaimStep, key: &str, error: &QueueError) {
        if let Some(hook) = self.claims.step_failed.get() {
            return hook(step, error);
        }
        let step = match step {
            ClaimStep::Promote => "promote",
            ClaimStep::Takeover => "takeover",
            ClaimStep::ReadNew => "read",
        };
        let mut warned = self.claims.maintenance_warned.lock();
        if warned
            .get(step)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        warned.insert(step, Instant::now());
        tracing::warn!(step, key, %error, "queue maintenance step failed; claiming new jobs goes on");
    }

    /// Takes over entries idle longer than `lease_for`, with their delivery counts, in
    /// one script (`takeover.lua`): either all of it happens and is returned, or none.
    async fn take_over(
        &self,
        consumer: &str,
        max: usize,
        lease_for: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        let cursor = self.claims.takeover_cursor.lock().clone();
        let reply: Result<Value, RedisError> = SCRIPTS
            .takeover
            .key(&self.keys.jobs)
            .arg(GROUP)
            .arg(consumer)
            .arg(millis(lease_for))
            .arg(&cursor)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await;
        let reply = match reply {
            // Redis lost the group (with the stream): recreate it here, or once claims
            // back off past the maintenance interval every claim fails on this step
            // and never reaches the read that would recreate it. (An error raised by
            // `redis.call` inside the script keeps its NOGROUP prefix on Redis 7.)
            Err(e) if is_nogroup(&e) => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other.map_err(|e| self.group_error(e))?,
        };
        let Value::Array(parts) = reply else {
            return Err(bad_reply("takeover reply is not an array").into());
        };
        if let Some(next) = parts.first().and_then(bytes_of) {
            *self.claims.takeover_cursor.lock() = String::from_utf8_lossy(&next).into_owned();
        }
        let Some(Value::Array(rows)) = parts.into_iter().nth(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(cols) = row else { continue };
            let mut cols = cols.into_iter();
            let Some(id) = cols.next().and_then(into_bytes) else {
                continue;
            };
            let fields = into_field_pairs(cols.next());
            let deliveries = match cols.next() {
                Some(Value::Int(n)) => u32::try_from(n).unwrap_or(u32::MAX),
                _ => 1,
            };
            out.push(claimed(
                String::from_utf8_lossy(&id).into_owned(),
                fields,
                deliveries,
                consumer,
            ));
        }
        Ok(out)
    }

    /// Runs one of the scripts that act on an entry only while `lease` still holds it
    /// (`owner.lua`, `retry.lua`, `release.lua`: KEYS = the job stream, then
    /// `extra_keys`; ARGV = group, consumer, entry id, deliveries, then `extra_args`).
    /// Their `0` reply is a lost lease.
    async fn as_holder(
        &self,
        script: &Script,
        lease: &Lease,
        extra_keys: &[&str],
        extra_args: Vec<Vec<u8>>,
    ) -> Result<(), QueueError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.keys.jobs);
        for key in extra_keys {
            invocation.key(*key);
        }
        invocation
            .arg(GROUP)
            .arg(&lease.consumer)
            .arg(&lease.entry_id)
            .arg(lease.deliveries);
        for arg in extra_args {
            invocation.arg(arg);
        }
        let held: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if held == 1 {
            Ok(())
        } else {
            Err(QueueError::LeaseLost {
                entry_id: lease.entry_id.clone(),
            })
        }
    }

    fn group_error(&self, e: RedisError) -> QueueError {
        if is_nogroup(&e) {
            QueueError::Unavailable(format!(
                "consumer group missing on {} (Redis lost its data?): {e}",
                self.keys.jobs
            ))
        } else {
            on_key(&self.keys.jobs)(e).into()
        }
    }

    async fn read_new(
        &self,
        consumer: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Claimed>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS").arg(&self.keys.jobs).arg(">");
        let mut reply: Result<Value, RedisError> = self.blocking.query(&cmd, block).await;
        if reply
            .as_ref()
            .is_err_and(|e| e.is_io_error() || e.is_connection_dropped())
        {
            // The connection manager reconnects after the error that revealed the broken
            // connection; one more try spares the caller a backoff. (A read whose reply
            // was lost leaves its entries pending, to be taken over after the lease.)
            reply = self.blocking.query(&cmd, block).await;
        }
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                // Redis restarted without our data: recreate the group and carry on.
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(on_key(&self.keys.jobs)(e).into()),
        };
        let streams = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams,
            Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
            other => return Err(bad_reply(format!("XREADGROUP reply: {other:?}")).into()),
        };
        let mut out = Vec::new();
        for stream in streams {
            // Moved out of the reply: each envelope goes to the decoder uncopied.
            let entries = match stream {
                Value::Array(parts) if parts.len() == 2 => {
                    into_entries(parts.into_iter().nth(1).unwrap_or(Value::Nil))?
                }
                entries @ Value::Array(_) => into_entries(entries)?,
                other => return Err(bad_reply(format!("XREADGROUP stream: {other:?}")).into()),
            };
            out.extend(
                entries
                    .into_iter()
                    .map(|(id, fields)| claimed(id, fields, 1, consumer)),
            );
        }
        Ok(out)
    }

    /// Adds jobs to run at `due_ms` (milliseconds since the Unix epoch) or later.
    pub async fn schedule(&self, jobs: &[Job], due_ms: u64) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for job in jobs {
            pipe.cmd("ZADD")
                .arg(&self.keys.delayed)
                .arg(due_ms)
                .arg(codec::encode(job))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| on_key(&self.keys.delayed)(e).into())
    }

    /// The server's clock, in milliseconds since the Unix epoch.
    pub async fn server_time_ms(&self) -> Result<u64, StoreError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(secs * 1000 + micros / 1000)
    }
}

fn claimed(
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    deliveries: u32,
    consumer: &str,
) -> Claimed {
    let delivery = fields
        .into_iter()
        .find(|(k, _)| k == ENVELOPE_FIELD)
        .map(|(_, v)| v)
        .ok_or_else(|| DecodeError::Malformed("stream entry has no envelope field `e`".into()))
        .and_then(|bytes| codec::decode(&bytes));
    Claimed {
        lease: Lease {
            entry_id: id,
            job_id: delivery.as_ref().ok().map(|job| job.id),
            deliveries,
            consumer: consumer.to_owned(),
        },
        delivery,
    }
}

impl RedisQueue {
    /// Entry counts ([`Queue::stats`]).
    pub(super) async fn depths(&self) -> Result<QueueStats, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(&self.keys.jobs);
        pipe.cmd("XPENDING").arg(&self.keys.jobs).arg(GROUP);
        pipe.cmd("ZCARD").arg(&self.keys.delayed);
        pipe.cmd("HGET").arg(&self.keys.stats).arg("completed");
        pipe.cmd("XLEN").arg(&self.keys.dead);
        let replies: Vec<Result<Value, RedisError>> = pipe
            .ignore_errors()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let mut replies = replies.into_iter();
        let mut next = |key: &str| -> Result<Value, StoreError> {
            replies
                .next()
                .unwrap_or(Ok(Value::Nil))
                .map_err(on_key(key))
        };
        // The job stream's depths are what claimers and the dispatcher act on: an
        // error there is an error. The other figures are reported; a corrupt key
        // among them reads as 0 (logged, by name) rather than stopping the callers.
        let len = count_of(&next(&self.keys.jobs)?);
        let leased = match next(&self.keys.jobs)? {
            Value::Array(parts) => parts.first().map_or(0, count_of),
            _ => 0,
        };
        let mut lenient = |key: &str| match next(key) {
            Ok(Value::Nil) => 0,
            Ok(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            Ok(Value::BulkString(b))
                if std::str::from_utf8(&b).is_ok_and(|t| t.parse::<u64>().is_ok()) =>
            {
                count_of(&Value::BulkString(b))
            }
            Ok(other) => {
                tracing::warn!(key, reply = ?other, "not a count; read as 0");
                0
            }
            Err(error) => {
                tracing::warn!(key, %error, "read as 0");
                0
            }
        };
        let delayed = lenient(&self.keys.delayed);
        let completed = lenient(&self.keys.stats);
        let dead = lenient(&self.keys.dead);
        Ok(QueueStats {
            ready: len.saturating_sub(leased),
            leased,
            delayed,
            completed,
            dead,
        })
    }
}

impl Queue for RedisQueue {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        for chunk in jobs.chunks(1000) {
            let mut pipe = redis::pipe();
            for job in chunk {
                pipe.cmd("XADD")
                    .arg(&self.keys.jobs)
                    .arg("*")
                    .arg(ENVELOPE_FIELD)
                    .arg(codec::encode(job))
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(on_key(&self.keys.jobs))?;
        }
        Ok(())
    }

    async fn enqueue_raw(&self, envelope: Vec<u8>) -> Result<(), QueueError> {
        redis::cmd("XADD")
            .arg(&self.keys.jobs)
            .arg("*")
            .arg(ENVELOPE_FIELD)
            .arg(envelope)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| on_key(&self.keys.jobs)(e).into())
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        let give_up = Instant::now() + wait;
        loop {
            let mut claimed = self.maintain(consumer, max, lease_for).await;
            if claimed.len() < max {
                let left = give_up.saturating_duration_since(Instant::now());
                // Blocking reads are cut into slices so expired leases and due delayed
                // jobs are noticed while waiting; new entries wake the read at once.
                let block = (!left.is_zero() && claimed.is_empty())
                    .then(|| left.min(self.config.maintenance_interval));
                match self.read_new(consumer, max - claimed.len(), block).await {
                    Ok(more) => claimed.extend(more),
                    // Entries already taken over are this consumer's now: dropping them
                    // would leave them to expire once more before anyone runs them.
                    Err(error) if !claimed.is_empty() => {
                        if let Some(hook) = self.claims.step_failed.get() {
                            hook(ClaimStep::ReadNew, &error);
                            return Ok(claimed);
                        }
                        tracing::warn!(key = %self.keys.jobs, %error, "reading new jobs failed; returning the jobs taken over");
                        return Ok(claimed);
                    }
                    Err(error) => return Err(error),
                }
            }
            if !claimed.is_empty() || Instant::now() >= give_up {
                return Ok(claimed);
            }
        }
    }

    async fn extend_lease(&self, lease: &Lease, _lease_for: Duration) -> Result<(), QueueError> {
        self.as_holder(&SCRIPTS.owner, lease, &[], Vec::new()).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> Result<Completion, QueueError> {
        let (done, reply) = oneshot::channel();
        let result = result.borrow();
        let pending = PendingCompletion {
            lease: lease.clone(),
            job_id: result.job_id,
            kind: result.outcome.kind(),
            encoded: codec::encode_result(result),
            inline: false,
            done,
        };
        self.claims
            .completions
            .send(pending)
            .await
            .map_err(|_| QueueError::Unavailable("completion flusher stopped".into()))?;
        reply
            .await
            .map_err(|_| QueueError::Unavailable("completion flusher stopped".into()))?
    }

    async fn retry(&self, lease: &Lease, job: &Job, delay: Duration) -> Result<(), QueueError> {
        // A duplicate copy failing after another copy's result was stored must not
        // run again: `retry.lua` checks the result key (reply 2, a lost lease here,
        // as for `dead.lua`).
        let result_key = self.keys.result_key(job.id);
        let record = self.keys.job_record(job.id);
        let keys = [
            self.keys.delayed.as_str(),
            self.keys.stats.as_str(),
            result_key.as_str(),
            record.as_str(),
        ];
        let args = vec![
            millis(delay).to_string().into_bytes(),
            codec::encode(job),
            job.attempt.to_string().into_bytes(),
        ];
        self.as_holder(&SCRIPTS.retry, lease, &keys, args).await
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> Result<(), QueueError> {
        let result = result.borrow();
        let result_key = lease
            .job_id
            .map_or_else(|| self.keys.stats.clone(), |id| self.keys.result_key(id));
        let moved: i64 = SCRIPTS
            .dead
            .key(&self.keys.jobs)
            .key(&self.keys.dead)
            .key(&self.keys.stats)
            .key(&self.keys.done)
            .key(result_key)
            .arg(GROUP)
            .arg(&lease.entry_id)
            .arg(millis(self.config.dead_ttl))
            .arg(millis(self.config.result_ttl))
            .arg(millis(self.config.notice_ttl))
            .arg(lease.job_id.map(|id| id.to_string()).unwrap_or_default())
            .arg(result.outcome.kind().as_str())
            .arg(result.outcome.to_string())
            .arg(result.attempt)
            .arg(codec::encode_result(result))
            .arg(&lease.consumer)
            .arg(lease.deliveries)
            .arg(self.keys.prefix())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if moved == 1 {
            Ok(())
        } else {
            // 0: another delivery holds it now; 2: it already has a result (a stale
            // holder's success), so it is finished and not dead.
            Err(QueueError::LeaseLost {
                entry_id: lease.entry_id.clone(),
            })
        }
    }

    async fn release(
        &self,
        lease: &Lease,
        job: Option<&Job>,
        kind: ReleaseKind,
    ) -> Result<(), QueueError> {
        // The fresh entry starts its delivery count again, so the envelope carries the
        // attempts made so far: those before this entry, its earlier deliveries, and
        // this one when it counts.
        let envelope = job.map(|job| {
            let uncounted = u32::from(kind == ReleaseKind::Drain);
            let mut again = job.clone();
            again.attempt = job
                .attempt
                .saturating_add(lease.deliveries)
                .saturating_sub(uncounted);
            codec::encode(&again)
        });
        // The job's record follows the fresh entry (`release.lua`), so a cancel finds
        // the queued job; without a job id the stream key stands in and is skipped.
        let record = lease
            .job_id
            .map_or_else(|| self.keys.jobs.clone(), |id| self.keys.job_record(id));
        self.as_holder(
            &SCRIPTS.release,
            lease,
            &[record.as_str()],
            envelope.into_iter().collect(),
        )
        .await
    }

    async fn result(&self, job_id: JobId) -> Result<Option<JobResult>, QueueError> {
        let key = self.keys.result_key(job_id);
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&key))?;
        bytes
            .map(|b| codec::decode_result(&b).map_err(|e| corrupt(&format!("{key}: {e}")).into()))
            .transpose()
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.keys.dead)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(on_key(&self.keys.dead))?;
        Ok(into_entries(reply)?
            .into_iter()
            .map(|(id, fields)| {
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name.as_bytes())
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let kind_name = field("kind");
                DeadLetter {
                    entry_id: id,
                    job_id: field("job").parse().ok(),
                    reason: field("reason"),
                    kind: kind_name.parse().unwrap_or(OutcomeKind::BadEnvelope),
                    attempts: field("attempts").parse().unwrap_or(0),
                }
            })
            .collect())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        Ok(self.depths().await?)
    }
}
