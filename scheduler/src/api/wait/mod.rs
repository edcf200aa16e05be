//! The interactive path, `POST /v1/jobs?wait=DURATION`: the request answers with the
//! job's output (200) or its failure (422) when the job finishes within the wait, and
//! with the usual job id (202) when it does not.
//!
//! One follower per process reads the completion notices (over a connection of its
//! own, `NoticeReader`) and hands each to the request waiting for that job (a map of
//! job id → oneshot sender), so a thousand waiting requests cost one blocking read, not
//! a thousand. The follower reads only while someone waits: the first waiter after a
//! quiet spell has it take a fresh position in the stream, waits until it has and then
//! looks its job's result up once; every waiter registers before its job is enqueued,
//! so no completion can slip between the enqueue and the wait. It stops `LINGER` after
//! the last waiter arrived and nobody waits. When the wait runs out (or the follower cannot read) the
//! result is looked up once more, so a lost notice costs a 202, never a wrong answer.
//!
//! Waiting requests are bounded: at most `max_waiters` in the process (503 past it) and
//! `max_waiters_per_tenant` per tenant (429), both refused before the upload is read;
//! a waiter is released when its request ends, however it ends (a client that
//! disconnects drops the request, and with it the waiter).

//! On shutdown every waiting request answers 202 with its job's id at once.
//!
//! | part | where |
//! | --- | --- |
//! | the waiting requests, their caps and places (`Waiters`, `Slot`, `Watch`) | `registry.rs` |
//! | the one follower of the completion notices | `follower.rs` |
//! | waiting for one job and answering (200 / 422 / 202) | `answer.rs` |

use std::time::Duration;

use axum::http::HeaderName;

mod answer;
mod follower;
mod registry;

pub(super) use registry::{Slot, Waiters, Watch};

/// The longest `?wait=` a server accepts unless told otherwise (`--max-wait`).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Most requests waiting at once in one process unless told otherwise
/// (`--max-waiters`): half the default connection cap, so waiting requests cannot hold
/// every connection.
pub const DEFAULT_MAX_WAITERS: usize = 512;

/// Most requests one tenant may have waiting at once unless told otherwise
/// (`--max-waiters-per-tenant`).
pub const DEFAULT_MAX_WAITERS_PER_TENANT: usize = 64;

/// The header naming the job a waited-for answer is about.
pub const JOB_ID_HEADER: HeaderName = HeaderName::from_static("sluice-job-id");

/// The header giving a finished job's outcome kind (`success`, `trap`, …).
pub const OUTCOME_HEADER: HeaderName = HeaderName::from_static("sluice-outcome");

/// How long one blocking read of the notices lasts (the follower notices that nobody
/// waits any more at most this late).
const BLOCK: Duration = Duration::from_secs(1);

/// How long the follower goes on reading after the last waiter arrived, before it
/// stops: a steady trickle of waiting requests then never pays for a fresh start.
const LINGER: Duration = Duration::from_secs(5);

/// How often an idle follower checks that its API still exists.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// The bounds on waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitLimits {
    /// The longest wait a request may ask for (a longer one is a 400 naming it).
    pub max_wait: Duration,
    /// Most requests waiting at once in this process (503 past it).
    pub max_waiters: usize,
    /// Most requests one tenant may have waiting at once (429 past it).
    pub max_per_tenant: usize,
}

impl Default for WaitLimits {
    fn default() -> Self {
        WaitLimits {
            max_wait: DEFAULT_MAX_WAIT,
            max_waiters: DEFAULT_MAX_WAITERS,
            max_per_tenant: DEFAULT_MAX_WAITERS_PER_TENANT,
        }
    }
}
