//! The interactive path's metrics (`POST /v1/jobs?wait=…`): requests waiting for their
//! job now, and how each wait ended.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

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
    /// The client went away (or the request failed) before an answer.
    Abandoned,
}

impl WaitEnd {
    /// Every end, in label order.
    pub const ALL: [WaitEnd; 4] = [
        WaitEnd::Finished,
        WaitEnd::Pending,
        WaitEnd::Refused,
        WaitEnd::Abandoned,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Finished => "finished",
            WaitEnd::Pending => "pending",
            WaitEnd::Refused => "refused",
            WaitEnd::Abandoned => "abandoned",
        }
    }
}

/// `sluice_api_waiters` and `sluice_api_waits_total{result}`. Clones share them.
#[derive(Clone)]
pub struct WaitMetrics {
    waiters: IntGauge,
    waits: IntCounterVec,
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
                "waiting job submissions by how they ended: finished, pending (202 after the wait), refused (too many waiting), abandoned (client gone)",
            ),
            &["result"],
        )
        .expect("valid metric");
        for end in WaitEnd::ALL {
            waits.with_label_values(&[end.as_str()]);
        }
        if let Some(registry) = registry {
            registry
                .register(Box::new(waiters.clone()))
                .expect("unique metric");
            registry
                .register(Box::new(waits.clone()))
                .expect("unique metric");
        }
        WaitMetrics { waiters, waits }
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
