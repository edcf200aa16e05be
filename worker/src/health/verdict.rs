//! What a probe answers: a typed verdict, printed as the plain-text body.

use std::fmt;
use std::time::Duration;

/// Why the last failed Redis call failed, the only detail `/readyz` gives of it (never
/// the URL nor the error's text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Redis could not be reached, or did not answer in time.
    Unreachable,
    /// Redis answered with something this build does not understand.
    Protocol,
    /// Redis answered with an error reply of this code (`OOM`, `READONLY`, …, from
    /// [`super::reply::REDIS_CODES`]).
    Replied(&'static str),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Unreachable => f.write_str("Redis unreachable or not answering in time"),
            FailureKind::Protocol => f.write_str("Redis answered with an unexpected reply"),
            FailureKind::Replied(code) => write!(f, "Redis replied {code}"),
        }
    }
}

/// A healthy probe's answer (200).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Healthy {
    /// Liveness: the claim loop progresses; when it last completed a claim call.
    Live {
        /// The age of the last completed claim call, `None` before the first.
        last_claim: Option<Duration>,
    },
    /// Liveness: every slot holds a job, so the loop rightly waits for one.
    EverySlotBusy,
    /// Liveness while the worker stops (a stop signal, or too many stuck runs): jobs
    /// in flight are finishing and a restart would cut them short.
    Stopping,
    /// Readiness: Redis answers and the claim loop progresses.
    Ready,
}

impl fmt::Display for Healthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Healthy::Live { last_claim: None } => f.write_str("ok (no claim yet)"),
            Healthy::Live {
                last_claim: Some(age),
            } => write!(f, "ok (last claim {:.1}s ago)", age.as_secs_f64()),
            Healthy::EverySlotBusy => f.write_str("ok: every slot busy"),
            Healthy::Stopping => f.write_str("ok: stopping, finishing jobs in flight"),
            Healthy::Ready => f.write_str("ready"),
        }
    }
}

/// An unhealthy probe's answer (503), with its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unhealthy {
    /// A claim was due and none completed within the bound.
    Stuck {
        /// How long since the loop last progressed.
        since: Duration,
        /// The liveness bound.
        bound: Duration,
    },
    /// A stop signal (SIGTERM or SIGINT) came: no more claims, jobs in flight finishing.
    Draining,
    /// More runs are stuck than the worker tolerates: it stopped claiming and drains.
    TooManyStuck,
    /// Redis calls kept failing.
    RedisFailing {
        /// Failures in a row, counted at most once per [`super::FAILURE_SPACING`].
        count: u32,
        /// The last one's kind.
        kind: FailureKind,
    },
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unhealthy::Stuck { since, bound } => write!(
                f,
                "claim loop stuck: no claim completed for {:.1}s (bound {:.1}s)",
                since.as_secs_f64(),
                bound.as_secs_f64()
            ),
            Unhealthy::Draining => {
                f.write_str("not ready: draining after a stop signal (finishing jobs in flight)")
            }
            Unhealthy::TooManyStuck => {
                f.write_str("not ready: stopping: too many stuck runs (finishing jobs in flight)")
            }
            Unhealthy::RedisFailing { count, kind } => {
                write!(
                    f,
                    "not ready: Redis failing, {count} failures in a row (last: {kind})"
                )
            }
        }
    }
}

/// A probe's verdict.
pub type Verdict = Result<Healthy, Unhealthy>;
