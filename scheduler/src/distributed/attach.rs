//! A distributed batch by its id, from any process: `sluice batch attach` follows it
//! again and writes the outputs and report lines not written yet; `sluice batch
//! cancel` cancels its jobs no worker has started.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::{BatchCancelled, RedisQueue};
use sluice_shared::{JobId, QueueError};

use super::Follower;
use super::recover::StallWatch;
use super::watch::{WorkerWatch, write_finished};
use crate::batch::outdir::{self, is_output_name};
use crate::batch::{BatchError, BatchSummary, Interrupted, Interrupts, jobs};
use crate::report::{Report, say};

/// How often an attached follower looks again for jobs of the batch cancelled
/// meanwhile (they never finish).
const RECHECK_CANCELLED: Duration = Duration::from_secs(5);

/// Looks for the outstanding jobs: those cancelled meanwhile are forgotten (they never
/// finish); with `scan`, those with a result whose notice was missed are returned, and
/// those found
/// nowhere at two rechecks in a row (`missing` holds the last one's) are lost by Redis:
/// said, and forgotten. Only the submitter holds the inputs to enqueue them again, so
/// attach does not wait for them forever.
async fn recheck_outstanding(
    queue: &RedisQueue,
    tenant: &str,
    scan: bool,
    follower: &mut Follower,
    missing: &mut HashSet<JobId>,
    notes: &mut Vec<String>,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<sluice_shared::JobResult>, BatchError> {
    let outstanding: Vec<JobId> = follower.outstanding_ids().into_iter().collect();
    let gone: Vec<JobId> = queue
        .results()
        .batch_jobs(&outstanding)
        .await?
        .into_iter()
        .filter(|job| job.cancelled)
        .map(|job| job.id)
        .collect();
    if !gone.is_empty() {
        follower.forget(&gone);
        notes.push(format!("{} cancelled while attached", jobs(gone.len())));
    }
    if !scan {
        return Ok(Vec::new());
    }
    let outstanding = follower.outstanding_ids();
    let at = queue.recovery().locate(&outstanding, Some(tenant)).await?;
    let finished = follower.collect(queue, &at.finished).await?;
    let vanished: HashSet<JobId> = at.vanished.into_iter().collect();
    let lost: Vec<JobId> = vanished.intersection(missing).copied().collect();
    if !lost.is_empty() {
        follower.forget(&lost);
        let line = format!(
            "{} lost by Redis: not written (only the submitter that enqueued them can enqueue them again)",
            jobs(lost.len())
        );
        say(progress, &line);
        notes.push(line);
    }
    *missing = vanished
        .difference(&lost.iter().copied().collect())
        .copied()
        .collect();
    Ok(finished)
}

/// `sluice batch cancel ID`: cancels the batch's jobs no worker has started.
pub async fn cancel(queue: &RedisQueue, batch_id: &str) -> Result<BatchCancelled, BatchError> {
    Ok(queue.results().cancel_batch(batch_id).await?)
}

/// `sluice batch attach ID --out DIR`: follows batch `batch_id` until every job not
/// cancelled has finished (or `interrupts` stop it), writing into `out_dir` the output
/// and report line of each job the report there does not list yet. Jobs Redis lost
/// (found nowhere at two checks in a row) are reported and not waited for.
pub async fn attach(
    queue: &RedisQueue,
    batch_id: &str,
    out_dir: &Path,
    progress: bool,
    interrupts: &Interrupts,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let Some((tenant, ids)) = queue.results().batch(batch_id).await? else {
        return Err(BatchError::Queue(QueueError::Protocol(format!(
            "no batch {} on queue {} (unknown, or expired with its results)",
            batch_id.chars().take(64).collect::<String>(),
            queue.config().queue
        ))));
    };
    std::fs::create_dir_all(out_dir).map_err(|e| BatchError::output(out_dir, e))?;
    let _lock = outdir::lock(out_dir)?;
    let written: HashSet<String> = outdir::previous_report(out_dir)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut labels: HashMap<JobId, String> = HashMap::new();
    let mut notes = Vec::new();
    let (mut cancelled, mut unnamed) = (0, 0);
    for job in queue.results().batch_jobs(&ids).await? {
        if job.cancelled {
            cancelled += 1;
        } else if !is_output_name(&job.label) {
            // An expired record, or a label no file may take.
            unnamed += 1;
        } else if !written.contains(&job.label) {
            labels.insert(job.id, job.label);
        }
    }
    if cancelled > 0 {
        notes.push(format!("{} of the batch were cancelled", jobs(cancelled)));
    }
    if unnamed > 0 {
        notes.push(format!(
            "{} have no usable name in their record (expired?) and were not written",
            jobs(unnamed)
        ));
    }
    let skipped = ids.len() - labels.len() - cancelled - unnamed;
    let mut report = Report::create(out_dir, labels.len(), progress, true)?;
    let progress_bar = report.progress().clone();
    progress_bar.tick();
    report.say(&format!(
        "batch {batch_id}: {} to write, {} written before",
        jobs(labels.len()),
        jobs(skipped)
    ));
    let mut workers = WorkerWatch::new();
    let mut follower = Follower::start(queue).await?;
    follower.expect(labels.keys().copied());
    let ready: Vec<JobId> = labels.keys().copied().collect();
    let mut finished = follower.collect(queue, &ready).await?;
    let mut interrupted = None;
    let mut recheck = Instant::now() + RECHECK_CANCELLED;
    // Jobs found nowhere at the last recheck.
    let mut missing: HashSet<JobId> = HashSet::new();
    // The scan for lost jobs runs only while no result arrives, backing off.
    let mut stall = StallWatch::new(RECHECK_CANCELLED);
    loop {
        if !finished.is_empty() {
            stall.progress();
        }
        for result in std::mem::take(&mut finished) {
            let label = &labels[&result.job_id];
            match write_finished(queue, out_dir, &mut report, label, &result).await {
                Ok(()) => {}
                Err(BatchError::Queue(QueueError::Unavailable(reason))) => {
                    say(
                        &progress_bar,
                        &format!(
                            "{label}: reading its output failed ({reason}); will read it again"
                        ),
                    );
                    follower.expect([result.job_id]);
                }
                Err(e) => return Err(e),
            }
        }
        if follower.outstanding() == 0 {
            break;
        }
        if interrupts.stopping() {
            interrupted = Some(Interrupted::Stopped);
            notes.push(format!(
                "stopped following: {} not finished; attach again to write them",
                jobs(follower.outstanding())
            ));
            break;
        }
        workers.check(queue, &progress_bar).await;
        if Instant::now() >= recheck {
            recheck = Instant::now() + RECHECK_CANCELLED;
            // Redis unavailable: looked at again at the next recheck.
            let scan = stall.due();
            match recheck_outstanding(
                queue,
                &tenant,
                scan,
                &mut follower,
                &mut missing,
                &mut notes,
                &progress_bar,
            )
            .await
            {
                Ok(more) => {
                    if scan {
                        stall.checked(!more.is_empty());
                    }
                    finished.extend(more);
                }
                Err(_) if scan => stall.checked(false),
                Err(_) => {}
            }
            continue;
        }
        finished = match follower.next(queue, Duration::from_secs(1)).await {
            Ok(finished) => finished,
            Err(QueueError::Unavailable(reason)) => {
                say(
                    &progress_bar,
                    &format!("redis unavailable ({reason}); retrying"),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
    }
    let total = labels.len();
    let mut summary = report.finish(total, started.elapsed())?;
    outdir::remove_parts(out_dir)?;
    summary.skipped = skipped;
    summary.batch_id = Some(batch_id.to_owned());
    summary.notes = notes;
    if summary.finished() < total {
        summary.interrupted = interrupted;
    }
    Ok(summary)
}
