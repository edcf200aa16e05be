//! The scheduler's own metrics: jobs admitted by the dispatcher, job submissions the
//! API refused (by reason), and the dispatcher's rounds and their duration.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Why the API refused a job submission (the `reason` label of
/// `sluice_jobs_refused_total`; a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// Over a per-request cap of the tenant's policy (413: inputs, arguments,
    /// environment, batch size, body size).
    Policy,
    /// The tenant holds as much as its policy allows (429 `quota_exceeded`: backlog
    /// jobs, stored bytes).
    Quota,
    /// The tenant sends faster than the service buffers for it (429 `busy`), or the
    /// server holds as many waiting submissions as it may (503 `too_many_waiters`).
    Rate,
    /// Anything else the client got wrong (every other 4xx: a malformed request, an
    /// unknown module, missing or bad credentials, a body that stopped arriving).
    Invalid,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; 4] = [
        RefusalReason::Policy,
        RefusalReason::Quota,
        RefusalReason::Rate,
        RefusalReason::Invalid,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Policy => "policy",
            RefusalReason::Quota => "quota",
            RefusalReason::Rate => "rate",
            RefusalReason::Invalid => "invalid",
        }
    }

    /// The reason a submission answered `status` with the API error `code` was
    /// refused; `None` when it was not refused (a success, a server error, which
    /// is the service's failure and not a refusal, or a waited-for job that ran and
    /// failed: 422 `job_failed`).
    pub fn of(status: u16, code: Option<&str>) -> Option<Self> {
        match (status, code) {
            (422, Some("job_failed")) => None,
            (503, Some("too_many_waiters")) => Some(RefusalReason::Rate),
            (413, _) => Some(RefusalReason::Policy),
            (429, Some("busy")) => Some(RefusalReason::Rate),
            (429, _) => Some(RefusalReason::Quota),
            (400..=499, _) => Some(RefusalReason::Invalid),
            _ => None,
        }
    }
}

/// Admission and dispatch counters of `sluice serve`.
#[derive(Clone)]
pub struct SchedulerMetrics {
    admitted: IntCounter,
    refused: IntCounterVec,
    rounds: IntCounter,
    round_duration: Histogram,
}

impl SchedulerMetrics {
    /// The metrics (registered in `registry` when one is given).
    pub(super) fn new(registry: Option<&Registry>) -> Self {
        let admitted = IntCounter::new(
            "sluice_jobs_admitted_total",
            "jobs the dispatcher admitted from tenant backlogs onto the queue",
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "sluice_jobs_refused_total",
                "job submissions refused at the API, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in RefusalReason::ALL {
            refused.with_label_values(&[reason.as_str()]);
        }
        let rounds = IntCounter::new("sluice_dispatch_rounds_total", "dispatcher rounds run")
            .expect("valid metric");
        let round_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_dispatch_round_duration_seconds",
                "duration of a dispatcher round",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        if let Some(registry) = registry {
            for metric in [
                Box::new(admitted.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(refused.clone()),
                Box::new(rounds.clone()),
                Box::new(round_duration.clone()),
            ] {
                registry.register(metric).expect("unique metric");
            }
        }
        SchedulerMetrics {
            admitted,
            refused,
            rounds,
            round_duration,
        }
    }

    /// The dispatcher admitted `jobs` jobs.
    pub fn admitted(&self, jobs: usize) {
        self.admitted.inc_by(jobs as u64);
    }

    /// The API refused a submission for `reason`.
    pub fn refused(&self, reason: RefusalReason) {
        self.refused.with_label_values(&[reason.as_str()]).inc();
    }

    /// The dispatcher ran a round that took `took`.
    pub fn round(&self, took: Duration) {
        self.rounds.inc();
        self.round_duration.observe(took.as_secs_f64());
    }
}

impl Default for SchedulerMetrics {
    /// Metrics that count but are rendered nowhere (a dispatcher run without a
    /// service, in tests).
    fn default() -> Self {
        Self::new(None)
    }
}

#[cfg(test)]
mod tests {
    use super::RefusalReason::{self, *};

    #[test]
    fn refusals_are_told_apart_by_status_and_code() {
        assert_eq!(RefusalReason::of(413, Some("too_large")), Some(Policy));
        assert_eq!(RefusalReason::of(429, Some("quota_exceeded")), Some(Quota));
        assert_eq!(RefusalReason::of(429, Some("busy")), Some(Rate));
        assert_eq!(RefusalReason::of(429, None), Some(Quota));
        assert_eq!(RefusalReason::of(400, Some("bad_request")), Some(Invalid));
        assert_eq!(RefusalReason::of(404, Some("not_found")), Some(Invalid));
        assert_eq!(RefusalReason::of(401, None), Some(Invalid));
        assert_eq!(RefusalReason::of(201, None), None);
        assert_eq!(RefusalReason::of(503, Some("unavailable")), None);
        assert_eq!(RefusalReason::of(422, Some("job_failed")), None);
        assert_eq!(RefusalReason::of(503, Some("too_many_waiters")), Some(Rate));
        assert_eq!(RefusalReason::of(503, Some("shutting_down")), None);
    }
}
