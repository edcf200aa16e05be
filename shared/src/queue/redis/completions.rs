//! The completion flusher: one task per queue client sends the completions its callers
//! queue in batches, each batch one round trip to Redis: the `SET`s of the results it
//! stages (those of [`STAGE_THRESHOLD`] bytes or more), then `complete.lua`, which
//! renames each staged result to its result key or deletes it, and stores the small
//! results from its arguments. Retries after a connection error, reloads the script
//! after a `NOSCRIPT`, sends a result whose staged copy was missing again inline (its
//! entry is still pending), and turns each job's reply into its caller's result.

use std::time::Duration;

use redis::{RedisError, Value};
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::error::{bad_reply, corrupt, unavailable};
use super::keys::Keys;
use super::reply::{bytes_of, millis};
use super::scripts::SCRIPTS;
use super::{GROUP, RedisConfig};
use crate::backoff::Backoff;
use crate::job::JobId;
use crate::outcome::OutcomeKind;
use crate::queue::{Completion, Lease, QueueError, StagedLoss};

/// One completion waiting for the batch flusher: the result already encoded (by the
/// caller's task, from its result as lent), and what the script's arguments name.
pub(super) struct PendingCompletion {
    pub(super) lease: Lease,
    pub(super) job_id: JobId,
    pub(super) kind: OutcomeKind,
    pub(super) encoded: Vec<u8>,
    /// Sent inline whatever its size: its staged copy was missing on a first send.
    pub(super) inline: bool,
    pub(super) done: oneshot::Sender<Result<Completion, QueueError>>,
}

impl PendingCompletion {
    /// Whether the result goes to Redis staged beside the script rather than in its
    /// arguments ([`STAGE_THRESHOLD`]), unless it is being sent again inline.
    fn staged(&self) -> bool {
        !self.inline && self.encoded.len() >= STAGE_THRESHOLD
    }
}

/// Results whose encoded length is at least this many bytes are staged: the flusher
/// pipelines `SET <staged key> <result> PX <staging TTL>` ([`staged_ttl`]) before
/// `complete.lua`, which moves the staged key onto the result key with `RENAMENX` (no
/// copy through Lua) and gives it the result TTL, instead of passing the result in
/// ARGV, where Redis's Lua hashes every byte of it into a Lua string and copies it
/// again into the stored value. Smaller results go inline: staging costs a command of
/// its own per job.
///
/// Measured with `scripts/redis-probe-staged`, whose staged mode does what complete.lua
/// does (`SET PX` the staging TTL, `RENAMENX`, `PEXPIRE` the result TTL) with keys as
/// long as the real ones (Redis CPU per result, 2,000 batches of 16, three rounds,
/// 2026-11-29, redis 7.0.15), inline / staged:
/// `--size 256,512,768,1024,2048,4096,16384 2000 3` (load 1.3–1.4): 256 B 3.6–4.2 /
/// 5.1–5.9 µs (staging costs 1.0–2.2); 512 B costs 1.0–1.1; 768 B costs 0.5–0.6;
/// 1 KiB 6.5–6.6 / 6.6–6.8 (costs 0.1–0.2); 2 KiB 9.7–10.1 / 8.6–8.9 (saves 1.0–1.2);
/// 4 KiB 14.1–15.6 / 9.2–11.3 (saves 3.2–4.9); 16 KiB 47–49 / 24–26 (saves 23–24).
/// `--size 1024,1280,1536,1792,2048 2000 3` (load 1.6–1.9): saves 1 KiB 0.0–0.2,
/// 1,280 B 0.0–0.6, 1,536 B −0.2–0.7, 1,792 B 1.0–1.6, 2 KiB 0.3–1.8.
/// Break-even lies between 1 and 2 KiB, within the noise of a shared machine; 2 KiB is
/// the cautious choice: the first size that saved in every round of both runs. The
/// no-op's result (about 20 bytes) stays inline.
pub const STAGE_THRESHOLD: usize = 2048;

/// Tries of one completion batch before its jobs are left to run again: Redis may be
/// restarting, and a batch given up on is run again after its leases expire.
const FLUSH_TRIES: usize = 9;

/// The wait before a completion batch's second try; doubled for each try after.
const RETRY_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between two tries of a completion batch.
const RETRY_CAP: Duration = Duration::from_secs(2);

/// The shortest TTL of a staged copy. A copy lives only from its `SET` to the script
/// that renames or deletes it, normally the same round trip; the TTL bounds what a copy
/// never renamed costs (the worker crashed between the two, the connection dropped and
/// every try failed, the script failed part-way): at most `completion_batch` results
/// for this long, instead of for the result TTL (24 hours by default). A minute, or the
/// flush's retry span if longer ([`staged_ttl`]), so that no copy expires while its
/// batch is still being tried.
pub const STAGED_TTL_FLOOR: Duration = Duration::from_secs(60);

/// The TTL of a staged copy: [`STAGED_TTL_FLOOR`], or the longest a batch's tries can
/// take if that is more (each try up to the response timeout, the waits between them
/// up to [`RETRY_CAP`]). A renamed copy gets the result TTL (`complete.lua`).
pub fn staged_ttl(config: &RedisConfig) -> Duration {
    let tries = u32::try_from(FLUSH_TRIES).unwrap_or(u32::MAX);
    let span = config
        .response_timeout
        .saturating_mul(tries)
        .saturating_add(RETRY_CAP.saturating_mul(tries - 1));
    span.max(STAGED_TTL_FLOOR)
}

/// The round trip of one completion batch: each staged result's `SET`, then the
/// script's `EVALSHA`, in one pipeline (replies in that order; errors kept per
/// command, so a refused `SET` is told from a failed script).
fn completion_pipeline(
    batch: &[PendingCompletion],
    keys: &Keys,
    config: &RedisConfig,
) -> redis::Pipeline {
    let ttl = millis(config.result_ttl);
    let staged_ttl = millis(staged_ttl(config));
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let staged_keys: Vec<Option<String>> = batch
        .iter()
        .map(|item| {
            item.staged()
                .then(|| keys.staged_result(&item.lease.entry_id, &item.lease.consumer))
        })
        .collect();
    for (item, staged) in batch.iter().zip(&staged_keys) {
        if let Some(staged) = staged {
            pipe.cmd("SET")
                .arg(staged)
                .arg(&item.encoded)
                .arg("PX")
                .arg(staged_ttl);
        }
    }
    // `ScriptInvocation` sends itself only alone; in a pipeline the EVALSHA is spelled
    // out (NOSCRIPT is handled by the caller, which loads the script and sends again).
    let eval = pipe.cmd("EVALSHA");
    let declared = batch.len() + staged_keys.iter().flatten().count();
    eval.arg(SCRIPTS.complete.get_hash())
        .arg(4 + declared)
        .arg(&keys.jobs)
        .arg(&keys.stats)
        .arg(&keys.done)
        .arg(keys.owned());
    for (item, staged) in batch.iter().zip(&staged_keys) {
        eval.arg(keys.result_key(item.job_id));
        if let Some(staged) = staged {
            eval.arg(staged);
        }
    }
    eval.arg(GROUP)
        .arg(ttl)
        .arg(millis(config.notice_ttl))
        .arg(keys.prefix());
    for item in batch {
        let (value, flag): (&[u8], &str) = if item.staged() {
            (&[], "1")
        } else {
            (&item.encoded, "0")
        };
        eval.arg(&item.lease.entry_id)
            .arg(item.job_id.to_string())
            .arg(item.kind.as_str())
            .arg(value)
            .arg(&item.lease.consumer)
            .arg(flag);
    }
    pipe
}

/// What one send of a completion batch came back with: the script's per-job replies
/// and each staged `SET`'s error (in the batch's order, `None` for inline jobs and
/// stored copies), or why the batch failed as a whole.
type FlushReply = Result<(Vec<Value>, Vec<Option<RedisError>>), RedisError>;

/// Sends `pipe` once; a `NOSCRIPT` (Redis restarted and lost its script cache) loads
/// the script and sends it all again (the staged `SET`s too: a restart loses them).
async fn send_completions(
    pipe: &redis::Pipeline,
    batch: &[PendingCompletion],
    conn: &mut Connection,
) -> FlushReply {
    let mut replies = pipe
        .query_async::<Vec<Result<Value, RedisError>>>(conn)
        .await?;
    if matches!(replies.last(), Some(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
    {
        SCRIPTS.complete.load_async(conn).await?;
        replies = pipe
            .query_async::<Vec<Result<Value, RedisError>>>(conn)
            .await?;
    }
    let script = replies.pop().unwrap_or_else(|| Ok(Value::Nil))?;
    let Value::Array(per_job) = script else {
        return Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "complete.lua reply is not an array",
        )));
    };
    let mut set_errors = replies.into_iter();
    let staging = batch
        .iter()
        .map(|item| {
            if item.staged() {
                set_errors.next().and_then(Result::err)
            } else {
                None
            }
        })
        .collect();
    Ok((per_job, staging))
}

/// Sends completions in batches: whatever has queued up while the previous batch was
/// in flight goes in the next script call, so under load one round trip completes many
/// jobs, and a lone completion goes at once. Results of [`STAGE_THRESHOLD`] bytes or
/// more are staged in the same round trip (see there).
pub(super) async fn flush_completions(
    mut pending: mpsc::Receiver<PendingCompletion>,
    mut conn: Connection,
    keys: Keys,
    config: RedisConfig,
) {
    let mut batch = Vec::with_capacity(config.completion_batch);
    while let Some(first) = pending.recv().await {
        batch.push(first);
        while batch.len() < config.completion_batch {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Redis may be restarting: keep trying for a while rather than fail the batch,
        // whose jobs would otherwise run again after their leases expire.
        match send_with_retries(&batch, &keys, &config, &mut conn).await {
            Ok((replies, staging)) => {
                let mut replies = replies.into_iter();
                let mut again = Vec::new();
                for (item, set_error) in batch.drain(..).zip(staging) {
                    match replies.next() {
                        // The entry is still pending: its result goes again, inline.
                        Some(Value::Int(3)) => again.push((item, loss_of(set_error))),
                        reply => {
                            let status = completion_status(&item, reply);
                            let _ = item.done.send(status);
                        }
                    }
                }
                if !again.is_empty() {
                    resend_inline(again, &keys, &config, &mut conn).await;
                }
            }
            Err(e) => {
                let error = unavailable(e);
                tracing::warn!(jobs = batch.len(), %error, "results not stored; the jobs stay queued");
                for item in batch.drain(..) {
                    let _ = item.done.send(Err(error.clone().into()));
                }
            }
        }
    }
}

/// Sends a batch, trying again after a failure up to [`FLUSH_TRIES`] times in all.
/// Each try sends the staged `SET`s again with the script (a restarted Redis lost
/// them; a try whose reply was lost after the script ran finds its results stored, and
/// deletes the copies staged again). A corrupt key stays corrupt: no point waiting.
async fn send_with_retries(
    batch: &[PendingCompletion],
    keys: &Keys,
    config: &RedisConfig,
    conn: &mut Connection,
) -> FlushReply {
    let pipe = completion_pipeline(batch, keys, config);
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
    let mut outcome = send_completions(&pipe, batch, conn).await;
    for _ in 1..FLUSH_TRIES {
        match &outcome {
            Ok(_) => break,
            Err(e) if e.code() == Some("CORRUPT") => break,
            Err(_) => {}
        }
        tokio::time::sleep(backoff.next_delay()).await;
        outcome = send_completions(&pipe, batch, conn).await;
    }
    outcome
}

/// Why a job's staged copy was missing: its `SET` was refused, or the copy was gone.
fn loss_of(set_error: Option<RedisError>) -> StagedLoss {
    match set_error {
        Some(e) => StagedLoss::Refused {
            code: e.code().unwrap_or("unknown").to_owned(),
        },
        None => StagedLoss::Gone,
    }
}

/// Sends the results whose staged copies were missing again, inline, in one script
/// call (once: their entries are still pending, so a failure here only means the jobs
/// run again). The usual cause is Redis being full: it refuses the staged `SET`
/// (`OOM` under `noeviction`), while a script that has written once (complete.lua's
/// `XCLAIM`) may store past the cap, as inline results always have been.
async fn resend_inline(
    again: Vec<(PendingCompletion, StagedLoss)>,
    keys: &Keys,
    config: &RedisConfig,
    conn: &mut Connection,
) {
    let (mut batch, losses): (Vec<_>, Vec<_>) = again.into_iter().unzip();
    for item in &mut batch {
        item.inline = true;
    }
    let pipe = completion_pipeline(&batch, keys, config);
    match send_completions(&pipe, &batch, conn).await {
        Ok((replies, _)) => {
            let mut replies = replies.into_iter();
            for (item, why) in batch.into_iter().zip(losses) {
                let status = match replies.next() {
                    // Not an inline reply; kept typed all the same.
                    Some(Value::Int(3)) => Err(missing(&item, why, "staged again".into())),
                    reply => completion_status(&item, reply),
                };
                let _ = item.done.send(status);
            }
        }
        Err(e) => {
            let resend = e.to_string();
            for (item, why) in batch.into_iter().zip(losses) {
                let error = missing(&item, why, resend.clone());
                let _ = item.done.send(Err(error));
            }
        }
    }
}

/// The error of a job whose staged copy was missing and whose inline resend failed.
fn missing(item: &PendingCompletion, why: StagedLoss, resend: String) -> QueueError {
    QueueError::StagedResultMissing {
        entry_id: item.lease.entry_id.clone(),
        why,
        resend,
    }
}

/// What `complete.lua` answered for one job (see its header), as the caller's result
/// (reply 3, a missing staged copy, is answered by [`resend_inline`] instead).
fn completion_status(
    item: &PendingCompletion,
    reply: Option<Value>,
) -> Result<Completion, QueueError> {
    match reply {
        Some(Value::Int(1)) => Ok(Completion::Recorded),
        Some(Value::Int(0)) => Ok(Completion::AlreadyDone),
        Some(Value::Int(2)) => Err(QueueError::LeaseLost {
            entry_id: item.lease.entry_id.clone(),
        }),
        Some(Value::Int(3)) => Err(missing(item, StagedLoss::Gone, "not sent again".into())),
        Some(other) => {
            let text = bytes_of(&other).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let error = QueueError::from(corrupt(text.strip_prefix("CORRUPT ").unwrap_or(&text)));
            tracing::warn!(job = %item.job_id, %error, "result not stored; the job stays queued");
            Err(error)
        }
        None => Err(bad_reply("complete.lua replied for fewer jobs than sent").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(encoded_len: usize) -> PendingCompletion {
        PendingCompletion {
            lease: Lease {
                entry_id: "1-0".into(),
                job_id: None,
                deliveries: 1,
                consumer: "c1".into(),
            },
            job_id: "0190a0a0-0000-7000-8000-000000000000".parse().unwrap(),
            kind: OutcomeKind::Success,
            encoded: vec![0; encoded_len],
            inline: false,
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn results_from_the_threshold_up_are_staged() {
        assert!(!pending(STAGE_THRESHOLD - 1).staged());
        assert!(pending(STAGE_THRESHOLD).staged());
        let mut again = pending(STAGE_THRESHOLD);
        again.inline = true;
        assert!(!again.staged(), "a resend goes inline whatever its size");
    }

    #[test]
    fn a_staged_copy_outlives_the_flushs_tries_but_not_by_hours() {
        let mut config = RedisConfig::new("redis://127.0.0.1");
        config.response_timeout = Duration::from_secs(1);
        assert_eq!(staged_ttl(&config), STAGED_TTL_FLOOR);
        config.response_timeout = Duration::from_secs(10);
        // Nine tries of 10 s and eight waits of at most 2 s.
        assert_eq!(staged_ttl(&config), Duration::from_secs(106));
    }

    #[test]
    fn a_missing_staged_result_is_a_typed_error_saying_why() {
        assert_eq!(loss_of(None), StagedLoss::Gone);
        // (The client builds no OOM error by hand; the e2e test meets a real one.)
        let refused = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "refused",
        ));
        let why = loss_of(Some(refused));
        assert_eq!(why, StagedLoss::Refused { code: "ERR".into() });
        let item = pending(STAGE_THRESHOLD);
        let error = missing(&item, why, "NOPERM no SET".into());
        let QueueError::StagedResultMissing { entry_id, why, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(entry_id, "1-0");
        assert!(matches!(why, StagedLoss::Refused { code } if code == "ERR"));
        let text = error.to_string();
        for said in ["refused its SET (ERR)", "NOPERM no SET", "runs again"] {
            assert!(text.contains(said), "{text}");
        }
    }

    #[test]
    fn the_other_replies_keep_their_meaning() {
        let item = pending(10);
        assert!(matches!(
            completion_status(&item, Some(Value::Int(1))),
            Ok(Completion::Recorded)
        ));
        assert!(matches!(
            completion_status(&item, Some(Value::Int(0))),
            Ok(Completion::AlreadyDone)
        ));
        assert!(matches!(
            completion_status(&item, Some(Value::Int(2))),
            Err(QueueError::LeaseLost { .. })
        ));
        let corrupt = Value::BulkString(b"CORRUPT sluice:{q}:result:x holds a hash".to_vec());
        let error = completion_status(&item, Some(corrupt)).unwrap_err();
        assert!(
            error.to_string().contains("result:x holds a hash"),
            "{error}"
        );
        assert!(completion_status(&item, None).is_err());
    }
}
