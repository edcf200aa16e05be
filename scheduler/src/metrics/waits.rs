//! The interactive path's metrics (`POST /v1/jobs?wait=…`): requests waiting for their
//! job now, and how each wait ended.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// How a waiting request ended (the `result` label of `sluice_api_waits_total`; a
/// closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// The job finished within the wait: its output or failure was answered.
    Finished,
    /// The wait ran out first: answered 202 with the job's id.
    Pending,
    /// Refused before anything was read: too many requests were waiting.
    Refused,
    /// The client went away before an answer.
    Abandoned,
    /// The request failed after taking its place (an unknown module, a full backlog,
    /// an upload that outlasted the wait, a Redis error before the enqueue, …).
    Failed,
}

impl WaitEnd {
    /// Every end, in label order.
    pub const ALL: [WaitEnd; 5] = [
        WaitEnd::Finished,
        WaitEnd::Pending,
        WaitEnd::Refused,
        WaitEnd::Abandoned,
        WaitEnd::Failed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Finished => "finished",
            WaitEnd::Pending => "pending",
            WaitEnd::Refused => "refused",
            WaitEnd::Abandoned => "abandoned",
            WaitEnd::Failed => "failed",
        }
    }
}

/// What told a waiting request that its job had finished (the `by` label of
/// `sluice_api_waits_woken_total`; a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WokenBy {
    /// The job's completion notice, handed over by the follower.
    Notice,
    /// A look-up of the job's result (after the follower took its position, at the end
    /// of the wait, or at shutdown).
    Lookup,
}

impl WokenBy {
    /// Every way, in label order.
    pub const ALL: [WokenBy; 2] = [WokenBy::Notice, WokenBy::Lookup];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WokenBy::Notice => "notice",
            WokenBy::Lookup => "lookup",
        }
    }
}

/// `sluice_api_waiters`, `sluice_api_waits_total{result}`,
/// `sluice_api_waits_woken_total{by}` and `sluice_api_wait_follower_errors_total`.
/// Clones share them.
#[derive(Clone)]
pub struct WaitMetrics {
    waiters: IntGauge,
    waits: IntCounterVec,
    woken: IntCounterVec,
    follower_errors: IntCounter,
}

impl WaitMetrics {
    /// The metrics (registered in `registry` when one is given).
    pub(super) fn new(registry: Option<&Registry>) -> Self {
        let waiters = IntGauge::new(
            "sluice_api_waiters",
            "job submissions waiting for their job's result now (POST /v1/jobs?wait=)",
        )
        .expect("valid metric");
        let waits = IntCounterVec::new(
            Opts::new(
                "sluice_api_waits_total",
                "waiting job submissions by how they ended: finished, pending (202 after the wait or at shutdown), refused (too many waiting, or shutting down), abandoned (client gone), failed (the request failed after taking its place)",
            ),
            &["result"],
        )
        .expect("valid metric");
        for end in WaitEnd::ALL {
            waits.with_label_values(&[end.as_str()]);
        }
        let woken = IntCounterVec::new(
            Opts::new(
                "sluice_api_waits_woken_total",
                "waiting job submissions answered with their finished job, by what found it: notice (the follower handed over its completion notice) or lookup (a read of its result)",
            ),
            &["by"],
        )
        .expect("valid metric");
        for by in WokenBy::ALL {
            woken.with_label_values(&[by.as_str()]);
        }
        let follower_errors = IntCounter::new(
            "sluice_api_wait_follower_errors_total",
            "failed reads of the completion notices by the follower that wakes waiting job submissions",
        )
        .expect("valid metric");
        if let Some(registry) = registry {
            for metric in [
                Box::new(waiters.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(waits.clone()),
                Box::new(woken.clone()),
                Box::new(follower_errors.clone()),
            ] {
                registry.register(metric).expect("unique metric");
            }
        }
        WaitMetrics {
            waiters,
            waits,
            woken,
            follower_errors,
        }
    }

    /// A waiting request was answered with its finished job, found `by`.
    pub fn woken(&self, by: WokenBy) {
        self.woken.with_label_values(&[by.as_str()]).inc();
    }

    /// The follower failed to read the notices.
    pub fn follower_error(&self) {
        self.follower_errors.inc();
    }

    /// A request started waiting (counted in `sluice_api_waiters` until [`Self::ended`]).
    pub fn started(&self) {
        self.waiters.inc();
    }

    /// A waiting request ended as `end`.
    pub fn ended(&self, end: WaitEnd) {
        self.waiters.dec();
        self.waits.with_label_values(&[end.as_str()]).inc();
    }

    /// A request was refused a wait (it never counted as waiting).
    pub fn refused(&self) {
        self.waits
            .with_label_values(&[WaitEnd::Refused.as_str()])
            .inc();
    }
}

impl Default for WaitMetrics {
    /// Metrics that count but are rendered nowhere (an API built without a registry).
    fn default() -> Self {
        Self::new(None)
    }
}
