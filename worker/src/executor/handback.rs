//! Results going back from the run threads to the async side in groups: a run thread
//! pushes its result, and wakes the one collector task only when the group was empty,
//! so a batch of short jobs drained by an awake thread costs one wakeup of the runtime,
//! not one per job. The collector hands each result to its job's task (a wakeup inside
//! the runtime, no thread switch).

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::guest::Ran;

/// Results waiting for the collector.
#[derive(Default)]
pub(super) struct Handback {
    ready: Mutex<Vec<(oneshot::Sender<Ran>, Ran)>>,
    arrived: Notify,
}

impl Handback {
    /// Hands `ran` to whoever waits on `to`'s receiver (from a run thread).
    pub(super) fn push(&self, to: oneshot::Sender<Ran>, ran: Ran) {
        let first = {
            let mut ready = self.ready.lock();
            ready.push((to, ran));
            ready.len() == 1
        };
        if first {
            // A permit is kept if the collector is not waiting yet: no group is missed.
            self.arrived.notify_one();
        }
    }

    /// The collector: delivers each group as it arrives, until aborted.
    pub(super) async fn deliver(&self) {
        loop {
            self.arrived.notified().await;
            let group = std::mem::take(&mut *self.ready.lock());
            for (to, ran) in group {
                // The receiver is gone only when the loop gave the run up.
                let _ = to.send(ran);
            }
        }
    }
}
