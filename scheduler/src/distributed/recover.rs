//! Recovering from Redis losing jobs: when results stall, the batch says what it waits
//! for and enqueues again, under the same ids, the jobs found nowhere (reading their
//! inputs from disk again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sluice_shared::backoff::Backoff;
use sluice_shared::module_meta::ModuleMeta;
use sluice_shared::queue::redis::{RedisQueue, ResultsError, Whereabouts};
use sluice_shared::{EntryPoint, Job, JobId, ModuleHash};

use super::upload_input;
use crate::batch::{BatchError, BatchOptions};
use crate::report::say;

/// When the next check for lost jobs is due: after `stall_after` without a result,
/// then at doubling intervals (up to a minute) while nothing arrives, so that a batch
/// of long jobs costs a scan now and then, not one per second.
pub(super) struct StallWatch {
    /// How long without progress before the next check: `first`, doubling up to a
    /// minute while checks find nothing to redo.
    every: Backoff,
    since: Instant,
}

impl StallWatch {
    pub(super) fn new(first: Duration) -> Self {
        StallWatch {
            every: Backoff::new(first, Duration::from_secs(60)),
            since: Instant::now(),
        }
    }

    pub(super) fn progress(&mut self) {
        self.every.reset();
        self.since = Instant::now();
    }

    pub(super) fn due(&self) -> bool {
        self.since.elapsed() >= self.every.peek()
    }

    pub(super) fn checked(&mut self, redid: bool) {
        self.since = Instant::now();
        if redid {
            self.every.reset();
        } else {
            self.every.next_delay();
        }
    }
}

/// The most lost inputs named one per line; the rest are counted.
const LOST_LINES: usize = 100;

/// What a batch submitter holds, to enqueue again any job Redis lost.
pub(super) struct Resubmitter<'a> {
    pub(super) options: &'a BatchOptions,
    /// The batch's id and job count.
    pub(super) batch_id: String,
    pub(super) total: usize,
    pub(super) wasm: Vec<u8>,
    /// The module's metadata, stored with it again.
    pub(super) meta: ModuleMeta,
    pub(super) module: ModuleHash,
    pub(super) entry: EntryPoint,
    /// Job id → (input name, path).
    pub(super) inputs: HashMap<JobId, (String, PathBuf)>,
    pub(super) redone: usize,
    /// Every input lost for good: name and why it cannot be read.
    pub(super) lost: Vec<(String, String)>,
    /// Ids of jobs lost for good since the caller last took them.
    pub(super) unreadable: Vec<JobId>,
    /// Whether Redis refused to enqueue again because the batch was cancelled: the
    /// caller stops redoing jobs.
    pub(super) cancelled: bool,
}

impl Resubmitter<'_> {
    /// Enqueues jobs of this batch again (already in its job list); none once the
    /// batch is cancelled (then [`Self::cancelled`] is set).
    async fn enqueue(&mut self, queue: &RedisQueue, jobs: &[Job]) -> Result<(), BatchError> {
        if self.cancelled || jobs.is_empty() {
            return Ok(());
        }
        match queue
            .results()
            .enqueue_batch(
                &self.batch_id,
                &self.options.tenant.0,
                self.total,
                jobs,
                true,
            )
            .await
        {
            Ok(()) => {
                self.redone += jobs.len();
                Ok(())
            }
            Err(ResultsError::BatchCancelled { .. }) => {
                self.cancelled = true;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Enqueues `vanished` again under their own ids, after storing the module again
    /// if it is gone too; inputs are read from disk again (and blobs uploaded again).
    /// Jobs whose inputs are unreadable now go to `lost` and `unreadable`.
    pub(super) async fn redo(
        &mut self,
        queue: &RedisQueue,
        vanished: &[JobId],
        progress: &ProgressBar,
    ) -> Result<(), BatchError> {
        // Workers recreate the group themselves; doing it here too means the jobs
        // are claimable the moment they are back, whoever looks first.
        queue.recovery().recreate_group().await?;
        if !queue.modules().is_stored(&self.module).await? {
            queue
                .modules()
                .put_with_meta(&self.wasm, &self.meta, None)
                .await?;
            say(
                progress,
                &format!("module {} was lost by Redis: stored it again", self.module),
            );
        }
        let mut jobs = Vec::new();
        for id in vanished {
            let Some((name, path)) = self.inputs.get(id) else {
                continue;
            };
            let input = match std::fs::metadata(path) {
                Ok(meta) => upload_input(queue, path, meta.len()).await,
                Err(error) => Err(BatchError::Inputs {
                    path: path.clone(),
                    error,
                }),
            };
            match input {
                Ok(input) => {
                    let mut job = self.options.job(self.module, input, &self.entry, name);
                    job.id = *id;
                    jobs.push(job);
                }
                Err(BatchError::Inputs { error, .. }) => {
                    if self.lost.len() < LOST_LINES {
                        say(
                            progress,
                            &format!(
                                "lost {name}: Redis lost the job and the input cannot be read again ({error})"
                            ),
                        );
                    }
                    self.lost.push((name.clone(), error.to_string()));
                    self.unreadable.push(*id);
                }
                Err(e) => return Err(e),
            }
            if jobs.len() == 1_000 {
                self.enqueue(queue, &jobs).await?;
                jobs.clear();
            }
        }
        self.enqueue(queue, &jobs).await?;
        Ok(())
    }
}

/// One line on what a stalled batch is waiting for. `workers` counts consumers that
/// took a job lately (Redis before 7.2 lists a consumer only once it got an entry), so
/// it is 0 for idle workers: the hint to start one is given only when jobs are queued
/// and nobody takes them.
pub(super) fn waiting_line(
    queue: &RedisQueue,
    outstanding: usize,
    at: &Whereabouts,
    workers: usize,
) -> String {
    let name = &queue.config().queue;
    let mut line = format!(
        "waiting for {outstanding} jobs: {} queued, {} running, {} delayed, {} finished; \
         {workers} workers active on queue {name}",
        at.queued,
        at.running,
        at.delayed,
        at.finished.len()
    );
    if !at.vanished.is_empty() {
        line += &format!(
            "; {} lost by Redis, enqueueing them again",
            at.vanished.len()
        );
    }
    if workers == 0 && at.queued > 0 {
        line += &format!(" (start one: sluice-worker serve --queue {name})");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_check_backs_off_while_nothing_arrives() {
        let mut watch = StallWatch::new(Duration::ZERO);
        assert!(watch.due());
        let mut watch2 = StallWatch::new(Duration::from_secs(5));
        assert!(!watch2.due());
        watch2.checked(false);
        assert_eq!(watch2.every.peek(), Duration::from_secs(10));
        for _ in 0..10 {
            watch2.checked(false);
        }
        assert_eq!(watch2.every.peek(), Duration::from_secs(60));
        watch2.checked(true);
        assert_eq!(watch2.every.peek(), Duration::from_secs(5));
        watch.progress();
        assert_eq!(watch.every.peek(), Duration::ZERO);
    }
}
