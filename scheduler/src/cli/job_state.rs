//! How `sluice result` and `sluice wait` report a job that has no result: a message
//! and an exit status for each state (queued, running, delayed, cancelled, expired,
//! unknown), and the same as one JSON document for `--json`.
//!
//! Exit statuses (also in `docs/cli.md` through `--help`): 0 succeeded, 1 failed, 2 an
//! error (usage, Redis), 3 unknown id, 4 result expired, 5 queued or running, 6 delayed
//! (a retry, or a job scheduled for later), 7 cancelled, 124 `--wait` ran out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sluice_shared::JobId;
use sluice_shared::queue::redis::{JobState, RedisConfig};

/// The job finished and failed.
pub const EXIT_FAILED: u8 = 1;
/// No such job on the queue (and its id is too recent for an expired result).
pub const EXIT_UNKNOWN: u8 = 3;
/// The job's id is older than the result TTL and it is nowhere: its result expired.
pub const EXIT_EXPIRED: u8 = 4;
/// Queued (in the job stream or its tenant's backlog) or running.
pub const EXIT_PENDING: u8 = 5;
/// Delayed: a retry waiting for its time, or a job scheduled for later.
pub const EXIT_DELAYED: u8 = 6;
/// Cancelled before it ran.
pub const EXIT_CANCELLED: u8 = 7;
/// `--wait` ran out before the job finished (as timeout(1)).
pub const EXIT_TIMED_OUT: u8 = 124;

/// The exit statuses, for `--help` texts.
pub const EXIT_HELP: &str = "Exit status: 0 succeeded, 1 failed, 2 error (usage, Redis), \
3 unknown job id, 4 result expired, 5 queued or running, 6 delayed (a retry or a \
scheduled job), 7 cancelled, 124 the wait ran out.";

/// A job without a result, as reported.
pub struct Described {
    /// The exit status this state gives.
    pub code: u8,
    /// One line for a person.
    pub message: String,
    /// The same as a JSON document (`job_id`, `state`, and what the state carries).
    pub json: serde_json::Value,
}

/// When job `id` was created (its UUIDv7 timestamp), if it carries one.
fn created(id: JobId) -> Option<SystemTime> {
    let (secs, nanos) = id.0.get_timestamp()?.to_unix();
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn rounded(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// Describes job `id` in `state` (not `Finished`) on queue `queue`, at server time
/// `now_ms`; `waited` says whether a `--wait` ran out first.
pub fn describe(id: JobId, state: &JobState, queue: &str, now_ms: u64, waited: bool) -> Described {
    let pending_code = if waited { EXIT_TIMED_OUT } else { EXIT_PENDING };
    let still = if waited { "still " } else { "" };
    let (code, message, json) = match state {
        JobState::Finished => (
            0,
            format!("job {id} has finished"),
            json!({ "job_id": id, "state": "finished" }),
        ),
        JobState::Backlogged { tenant } => (
            pending_code,
            format!("job {id} is {still}waiting in tenant {tenant}'s backlog for admission"),
            json!({ "job_id": id, "state": "backlogged", "tenant": tenant }),
        ),
        JobState::Queued { attempt } => (
            pending_code,
            format!("job {id} is {still}queued (attempt {attempt} has not started)"),
            json!({ "job_id": id, "state": "queued", "attempt": attempt }),
        ),
        JobState::Running {
            attempt,
            worker,
            idle_ms,
        } => (
            pending_code,
            format!("job {id} is {still}running (attempt {attempt}, on worker {worker})"),
            json!({ "job_id": id, "state": "running", "attempt": attempt,
                    "worker": worker, "lease_idle_ms": idle_ms }),
        ),
        JobState::Delayed {
            due_ms,
            attempts_made,
        } => {
            let due = UNIX_EPOCH + Duration::from_millis(*due_ms);
            let left = Duration::from_millis(due_ms.saturating_sub(now_ms));
            let when = format!("{} (in {})", rfc3339(due), rounded(left));
            let message = if *attempts_made == 0 {
                format!("job {id} is {still}scheduled to run at {when}")
            } else {
                format!(
                    "job {id} failed attempt {attempts_made} and is {still}delayed: attempt {} at {when}",
                    attempts_made + 1
                )
            };
            (
                if waited { EXIT_TIMED_OUT } else { EXIT_DELAYED },
                message,
                json!({ "job_id": id, "state": "delayed", "due_ms": due_ms,
                        "attempts_made": attempts_made }),
            )
        }
        JobState::Cancelled => (
            EXIT_CANCELLED,
            format!("job {id} was cancelled before it ran"),
            json!({ "job_id": id, "state": "cancelled" }),
        ),
        JobState::Missing => missing(id, queue, now_ms),
    };
    Described {
        code,
        message,
        json,
    }
}

/// A job found nowhere: expired when its id is older than the default result TTL,
/// else unknown (a typo, another queue, or a worker with a shorter `--ttl`).
fn missing(id: JobId, queue: &str, now_ms: u64) -> (u8, String, serde_json::Value) {
    let ttl = RedisConfig::new("").result_ttl;
    let now = UNIX_EPOCH + Duration::from_millis(now_ms);
    match created(id) {
        Some(at) if now.duration_since(at).is_ok_and(|age| age > ttl) => (
            EXIT_EXPIRED,
            format!(
                "job {id} was created at {} ({} ago) and has no result any more: results are \
                 kept {} (`sluice-worker serve --ttl`)",
                rfc3339(at),
                rounded(now.duration_since(at).unwrap_or_default()),
                rounded(ttl)
            ),
            json!({ "job_id": id, "state": "expired", "created": rfc3339(at) }),
        ),
        _ => (
            EXIT_UNKNOWN,
            format!(
                "no job {id} on queue {queue}: it is not queued, running, delayed or finished \
                 (another queue? a worker with a --ttl shorter than its age?)"
            ),
            json!({ "job_id": id, "state": "unknown", "queue": queue }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_its_own_exit_status() {
        let id = JobId::new();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let code = |state: JobState, waited| describe(id, &state, "q", now, waited).code;
        assert_eq!(code(JobState::Queued { attempt: 1 }, false), EXIT_PENDING);
        assert_eq!(code(JobState::Queued { attempt: 1 }, true), EXIT_TIMED_OUT);
        let delayed = JobState::Delayed {
            due_ms: now + 60_000,
            attempts_made: 1,
        };
        assert_eq!(code(delayed.clone(), false), EXIT_DELAYED);
        assert!(
            describe(id, &delayed, "q", now, false)
                .message
                .contains("attempt 2")
        );
        assert_eq!(code(JobState::Cancelled, false), EXIT_CANCELLED);
        assert_eq!(code(JobState::Missing, false), EXIT_UNKNOWN);
        // Two days later the same id is past the default result TTL.
        let later = now + 2 * 24 * 3600 * 1000;
        assert_eq!(
            describe(id, &JobState::Missing, "q", later, false).code,
            EXIT_EXPIRED
        );
    }
}
