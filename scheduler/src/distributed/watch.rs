//! What a distributed batch does besides waiting: telling the user when no worker
//! serves its queue, and writing each finished job's output and report line.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sluice_shared::JobResult;
use sluice_shared::queue::redis::RedisQueue;

use super::write_output;
use crate::batch::BatchError;
use crate::batch::outdir::{self, part_path};
use crate::report::{Report, say};

/// How often the batch looks for workers on its queue.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A worker that claimed (or tried to) within this long is serving the queue: workers
/// ask for jobs every half second or so while idle.
const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// Whether any worker serves the queue: while none does, the batch says so (on the
/// progress bar's message, or once on stderr when no bar is drawn), and says so again
/// when one comes.
///
/// Redis before 7.2 lists an idle worker only once it got an entry, and a worker takes
/// a moment to get its first one, so "none" is said only when two checks in a row,
/// [`CHECK_EVERY`] apart and after the first jobs were enqueued, found none.
pub(crate) struct WorkerWatch {
    next_check: Instant,
    last: Option<usize>,
    zeros: u32,
}

impl WorkerWatch {
    /// A watch that checks at its first [`WorkerWatch::check`].
    pub(crate) fn new() -> Self {
        WorkerWatch {
            next_check: Instant::now(),
            last: None,
            zeros: 0,
        }
    }

    /// Looks for live workers if a check is due, and tells what changed.
    pub(crate) async fn check(&mut self, queue: &RedisQueue, progress: &ProgressBar) {
        if Instant::now() < self.next_check {
            return;
        }
        self.next_check = Instant::now() + CHECK_EVERY;
        // Redis away: the batch says so elsewhere; nothing to tell about workers.
        let Ok(workers) = queue.admin().live_workers(LIVE_WITHIN).await else {
            return;
        };
        let name = &queue.config().queue;
        self.zeros = if workers == 0 { self.zeros + 1 } else { 0 };
        if workers == 0 && self.zeros < 2 {
            return;
        }
        if workers == 0 && self.last != Some(0) {
            let line = format!(
                "0 workers on queue {name} — start one with `sluice-worker serve --queue {name}`"
            );
            if progress.is_hidden() {
                say(progress, &line);
            } else {
                progress.set_message(line);
            }
        } else if workers > 0 && self.last == Some(0) {
            progress.set_message("");
            let noun = if workers == 1 { "worker" } else { "workers" };
            say(progress, &format!("{workers} {noun} on queue {name} now"));
        }
        self.last = Some(workers);
    }
}

/// Writes a finished job's output (a success's, through `OUT/.<label>.part`, renamed
/// when whole) and its report line.
pub(crate) async fn write_finished(
    queue: &RedisQueue,
    out_dir: &Path,
    report: &mut Report,
    label: &str,
    result: &JobResult,
) -> Result<(), BatchError> {
    if result.outcome.is_success() {
        let part = part_path(out_dir, label);
        let file = outdir::create_part(&part)
            .map(tokio::fs::File::from_std)
            .map_err(|e| BatchError::output(&part, e))?;
        let written = write_output(queue, result, tokio::io::BufWriter::new(file)).await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(match e {
                BatchError::Output { error, .. } => BatchError::output(&part, error),
                other => other,
            });
        }
        let path = out_dir.join(label);
        tokio::fs::rename(&part, &path)
            .await
            .map_err(|e| BatchError::output(&path, e))?;
    }
    report.record(label, result)
}
