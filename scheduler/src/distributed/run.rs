//! `sluice batch --redis`: a batch recorded in Redis under a printed id, its jobs run
//! by whatever workers serve the queue, followed to its end; the same outputs and
//! `report.jsonl` as embedded mode.
//!
//! Interrupted, the submitter stops enqueueing, then cancels the jobs not yet started
//! and waits for the running ones (`--on-interrupt cancel`), or leaves the batch to the
//! fleet for `sluice batch attach` (`detach`); on a terminal it asks. A second
//! interrupt stops waiting.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{RecoveryError, RedisQueue, ResultsError, StoreError};
use sluice_shared::{Job, JobId, QueueError};

use super::recover::{Resubmitter, StallWatch, waiting_line};
use super::watch::{WorkerWatch, write_finished};
use super::{Follower, clamp_to_policy, read_module, upload_input};
use crate::batch::outdir;
use crate::batch::{BatchError, BatchOptions, BatchSummary, Interrupted, Interrupts, jobs};
use crate::report::{Report, say};

/// What an interrupted distributed batch does with its jobs not finished yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnInterrupt {
    /// Cancel the jobs no worker has started; wait for the running ones.
    Cancel,
    /// Leave the jobs to the fleet; `sluice batch attach ID` follows them again.
    Detach,
    /// Ask on the terminal (detach when stdin or stderr is not a terminal).
    Ask,
}

/// Asks the user what to do with the batch's unfinished jobs, or tells why it does
/// not ask. A second interrupt while asking detaches.
async fn decide(
    on_interrupt: OnInterrupt,
    progress: &ProgressBar,
    interrupts: &Interrupts,
    batch_id: &str,
    outstanding: usize,
) -> OnInterrupt {
    if on_interrupt != OnInterrupt::Ask {
        return on_interrupt;
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        say(
            progress,
            "interrupted; not a terminal, so not asking: detaching (--on-interrupt cancel cancels instead)",
        );
        return OnInterrupt::Detach;
    }
    let question = format!(
        "interrupted: {} of batch {batch_id} not finished. Type c and Enter to cancel those not started, or d (or Enter) to detach and leave them running:",
        jobs(outstanding)
    );
    // Above the bar, which stands still while the user answers.
    progress.disable_steady_tick();
    say(progress, &question);
    // A thread of its own, not the runtime's blocking pool: the process must be able
    // to exit while it still waits for a line.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(std::io::stdin().read_line(&mut line).map(|_| line));
    });
    let choice = tokio::select! {
        answer = rx => match answer {
            Ok(Ok(line)) if line.trim().starts_with(['c', 'C']) => OnInterrupt::Cancel,
            _ => OnInterrupt::Detach,
        },
        () = interrupts.abort.cancelled() => OnInterrupt::Detach,
    };
    if !progress.is_hidden() {
        progress.enable_steady_tick(Duration::from_millis(500));
    }
    choice
}

/// What one `enqueue_batch` call of the submitter came to.
enum Enqueued {
    /// The chunk is in.
    Yes,
    /// The batch was cancelled: the chunk was refused.
    Cancelled,
    /// Redis failed: the chunk's jobs wait for the check for lost jobs.
    Failed(QueueError),
}

impl Enqueued {
    /// Notes the outcome: a refused chunk's jobs are no longer expected (nor counted).
    fn apply(
        self,
        chunk: &[Job],
        follower: &mut Follower,
        registered: &mut usize,
        unavailable: &mut Option<QueueError>,
        cancelled: &mut bool,
    ) {
        match self {
            Enqueued::Yes => {}
            Enqueued::Cancelled => {
                let ids: Vec<JobId> = chunk.iter().map(|job| job.id).collect();
                follower.forget(&ids);
                *registered -= ids.len();
                *cancelled = true;
            }
            Enqueued::Failed(e) => *unavailable = Some(e),
        }
    }
}

/// Enqueues one chunk of new jobs of the batch.
async fn enqueue_chunk(
    queue: &RedisQueue,
    batch_id: &str,
    options: &BatchOptions,
    total: usize,
    chunk: &[Job],
) -> Enqueued {
    match queue
        .results()
        .enqueue_batch(batch_id, &options.tenant.0, total, chunk, false)
        .await
    {
        Ok(()) => Enqueued::Yes,
        Err(ResultsError::BatchCancelled { .. }) => Enqueued::Cancelled,
        Err(e) => Enqueued::Failed(e.into()),
    }
}

/// What the follow loop does once interrupted.
struct Stop {
    /// How it was interrupted, once it was.
    interrupted: Option<Interrupted>,
    /// Whether the first interrupt was dealt with (cancelled or detached).
    handled: bool,
    /// What the summary says about jobs not run here.
    notes: Vec<String>,
}

/// `sluice batch --redis`: the same outputs and `report.jsonl` as embedded mode, the
/// jobs run by whatever workers serve the queue.
///
/// The submitter holds every input, so no job is lost to Redis losing data: when no
/// result has arrived for a while it looks for its jobs (queued, running, delayed,
/// finished) and enqueues those found nowhere again under the same id. A job that
/// had in fact finished only turns into a duplicate, which results stored once make
/// harmless. Inputs that cannot be read again are listed, and the batch fails. Jobs
/// cancelled meanwhile (`sluice batch cancel`) are not enqueued again.
pub async fn run_batch(
    queue: Arc<RedisQueue>,
    options: BatchOptions,
    on_interrupt: OnInterrupt,
    interrupts: &Interrupts,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let (wasm, module, module_meta) = read_module(&options.module)?;
    let prepared = outdir::prepare(&options)?;
    let inputs = prepared.inputs;
    queue
        .modules()
        .put_with_meta(&wasm, &module_meta, None)
        .await?;
    let module_entry = module_meta.default_entry.clone();
    let mut options = options;
    options.limits = clamp_to_policy(&queue, &options.tenant.0, &options.limits).await?;
    let entry = options.entry.clone().unwrap_or(module_entry);
    let batch_id = uuid::Uuid::now_v7().to_string();
    let queue_name = queue.config().queue.clone();
    eprintln!(
        "sluice: batch {batch_id}: {} on queue {queue_name}",
        jobs(inputs.len())
    );
    let mut report = Report::create(
        &options.out_dir,
        inputs.len(),
        options.progress,
        prepared.append,
    )?;
    let progress = report.progress().clone();
    progress.tick();
    if prepared.skipped > 0 {
        report.say(&format!(
            "--resume: {} already done, {} to run",
            jobs(prepared.skipped),
            inputs.len()
        ));
    }
    let mut workers = WorkerWatch::new();

    let mut follower = Follower::start(&queue).await?;
    let mut labels = HashMap::with_capacity(inputs.len());
    let mut resubmitter = Resubmitter {
        options: &options,
        batch_id: batch_id.clone(),
        total: inputs.len(),
        wasm,
        meta: module_meta,
        module,
        entry: entry.clone(),
        inputs: HashMap::with_capacity(inputs.len()),
        redone: 0,
        lost: Vec::new(),
        unreadable: Vec::new(),
        cancelled: false,
    };
    // Enqueued a chunk at a time, so inline inputs are never all in memory at once.
    // Should Redis go away meanwhile, the remaining jobs are only registered: they are
    // found missing when results stop arriving, and enqueued then like any lost job.
    // Interrupted, the rest are not enqueued at all.
    let mut unavailable = None;
    let mut registered = 0;
    let mut stop_enqueueing = false;
    // Once the batch is cancelled (here or elsewhere), jobs found missing are not
    // enqueued again: they are forgotten.
    let mut cancelled = false;
    'chunks: for chunk in inputs.chunks(1_000) {
        let mut jobs = Vec::with_capacity(chunk.len());
        for (name, path, len) in chunk {
            if interrupts.stopping() {
                stop_enqueueing = true;
                if unavailable.is_none() {
                    enqueue_chunk(&queue, &batch_id, &options, inputs.len(), &jobs)
                        .await
                        .apply(
                            &jobs,
                            &mut follower,
                            &mut registered,
                            &mut unavailable,
                            &mut cancelled,
                        );
                }
                break 'chunks;
            }
            let id = JobId::new();
            labels.insert(id, name.clone());
            resubmitter.inputs.insert(id, (name.clone(), path.clone()));
            follower.expect([id]);
            registered += 1;
            if unavailable.is_some() {
                continue;
            }
            match upload_input(&queue, path, *len).await {
                Ok(input) => {
                    let mut job = options.job(module, input, &entry, name);
                    job.id = id;
                    jobs.push(job);
                }
                Err(BatchError::Queue(e @ QueueError::Unavailable(_))) => unavailable = Some(e),
                Err(e) => return Err(e),
            }
        }
        if unavailable.is_none() {
            enqueue_chunk(&queue, &batch_id, &options, inputs.len(), &jobs)
                .await
                .apply(
                    &jobs,
                    &mut follower,
                    &mut registered,
                    &mut unavailable,
                    &mut cancelled,
                );
        }
        if cancelled {
            // `sluice batch cancel` (or the API) cancelled the batch meanwhile.
            say(
                &progress,
                &format!(
                    "batch {batch_id} was cancelled: {} not enqueued",
                    crate::batch::jobs(inputs.len() - registered)
                ),
            );
            break 'chunks;
        }
        workers.check(&queue, &progress).await;
    }
    progress.set_length(registered as u64);
    match unavailable {
        Some(e) => say(
            &progress,
            &format!(
                "enqueueing was interrupted ({e}); the jobs not enqueued will be once Redis is back"
            ),
        ),
        // Redis may have lost the module while the jobs went in (a restart
        // mid-enqueue): workers would fail every job that names it as not stored.
        // Should Redis be away now, the first check for lost jobs stores it.
        None => {
            if let Ok(false) = queue.modules().is_stored(&module).await
                && queue
                    .modules()
                    .put_with_meta(&resubmitter.wasm, &resubmitter.meta, None)
                    .await
                    .is_ok()
            {
                say(
                    &progress,
                    &format!("module {module} was lost by Redis: stored it again"),
                );
            }
        }
    }

    let mut stop = Stop {
        interrupted: None,
        handled: false,
        notes: Vec::new(),
    };
    if stop_enqueueing {
        stop.interrupted = Some(Interrupted::Stopped);
        stop.notes.push(format!(
            "{} not enqueued (interrupted while enqueueing)",
            jobs(inputs.len() - registered)
        ));
    }
    let attach_hint = format!(
        "`sluice batch attach {batch_id} --out {}` writes their results",
        options.out_dir.display()
    );
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut stall = StallWatch::new(options.stall_after);
    while follower.outstanding() > 0 {
        if interrupts.aborting() {
            stop.interrupted = Some(Interrupted::Aborted);
            stop.notes.push(format!(
                "stopped waiting: {} still running on queue {queue_name}; {attach_hint}",
                jobs(follower.outstanding())
            ));
            break;
        }
        if interrupts.stopping() && !stop.handled {
            stop.handled = true;
            stop.interrupted = Some(Interrupted::Stopped);
            let choice = decide(
                on_interrupt,
                &progress,
                interrupts,
                &batch_id,
                follower.outstanding(),
            )
            .await;
            if choice == OnInterrupt::Detach {
                stop.notes.push(format!(
                    "detached: {} left to the workers on queue {queue_name}; {attach_hint}, `sluice batch cancel {batch_id}` cancels them",
                    jobs(follower.outstanding())
                ));
                break;
            }
            cancelled = true;
            let n = match queue.results().cancel_batch(&batch_id).await {
                Ok(done) => done.cancelled as usize,
                // Redis lost the batch hash: nothing of it is left to cancel there;
                // the jobs it lost are forgotten, not enqueued again.
                Err(ResultsError::UnknownBatch { .. }) => 0,
                Err(e) => {
                    // Not a reason to end without a summary: follow what still runs.
                    say(
                        &progress,
                        &format!(
                            "cannot cancel batch {batch_id} now ({e}); following its jobs; `sluice batch cancel {batch_id}` tries again"
                        ),
                    );
                    0
                }
            };
            let outstanding: Vec<JobId> = follower.outstanding_ids().into_iter().collect();
            // Unreadable now, the cancelled are found at the next check for lost jobs.
            if let Ok(found) = queue.results().batch_jobs(&outstanding).await {
                let gone: Vec<JobId> = found
                    .into_iter()
                    .filter(|job| job.cancelled)
                    .map(|job| job.id)
                    .collect();
                follower.forget(&gone);
            }
            let line = format!(
                "cancelled {} not started; waiting for {} running (interrupt again to stop waiting)",
                jobs(n),
                follower.outstanding()
            );
            say(&progress, &line);
            stop.notes
                .push(format!("cancelled {} not started", jobs(n)));
            continue;
        }
        workers.check(&queue, &progress).await;
        let mut finished = match follower.next(&queue, Duration::from_secs(1)).await {
            Ok(finished) => {
                backoff.reset();
                finished
            }
            Err(QueueError::Unavailable(reason)) => {
                // Redis is restarting or unreachable: wait; whatever it lost is
                // enqueued again once it is back.
                let delay = backoff.next_delay();
                say(
                    &progress,
                    &format!("redis unavailable ({reason}); retrying in {delay:?}"),
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(warning) = follower.take_warning() {
            say(&progress, &warning);
        }
        if !finished.is_empty() {
            stall.progress();
        } else if stall.due() {
            let outstanding = follower.outstanding_ids();
            let mut at = match queue
                .recovery()
                .locate(&outstanding, Some(&options.tenant.0))
                .await
            {
                Ok(at) => at,
                Err(RecoveryError::Store(StoreError::Unavailable(_))) => {
                    stall.checked(false);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let live = queue
                .admin()
                .live_workers(Duration::from_secs(10))
                .await
                .unwrap_or(0);
            say(
                &progress,
                &waiting_line(&queue, outstanding.len(), &at, live),
            );
            let redone = async {
                finished = follower.collect(&queue, &at.finished).await?;
                if !at.vanished.is_empty() && (cancelled || resubmitter.cancelled) {
                    // The batch is cancelled: what vanished is not enqueued again.
                    follower.forget(&at.vanished);
                    say(
                        &progress,
                        &format!(
                            "{} of the cancelled batch will not run",
                            jobs(at.vanished.len())
                        ),
                    );
                    at.vanished.clear();
                } else if !at.vanished.is_empty() {
                    // Cancelled jobs (`sluice batch cancel`) are gone on purpose.
                    let cancelled: Vec<JobId> = queue
                        .results()
                        .batch_jobs(&at.vanished)
                        .await?
                        .into_iter()
                        .filter(|job| job.cancelled)
                        .map(|job| job.id)
                        .collect();
                    if !cancelled.is_empty() {
                        follower.forget(&cancelled);
                        at.vanished.retain(|id| !cancelled.contains(id));
                        say(
                            &progress,
                            &format!("{} of this batch were cancelled", jobs(cancelled.len())),
                        );
                    }
                    resubmitter.redo(&queue, &at.vanished, &progress).await?;
                }
                Ok::<_, BatchError>(())
            }
            .await;
            let unreadable = std::mem::take(&mut resubmitter.unreadable);
            follower.forget(&unreadable);
            progress.set_length(
                progress
                    .length()
                    .unwrap_or(0)
                    .saturating_sub(unreadable.len() as u64),
            );
            match redone {
                Ok(()) => stall.checked(!at.vanished.is_empty()),
                // Redis went away again: what was not enqueued is found at the next
                // check. The results collected before are written below all the same
                // (the follower no longer expects them).
                Err(BatchError::Queue(QueueError::Unavailable(reason))) => {
                    say(
                        &progress,
                        &format!("redis unavailable ({reason}); will look again"),
                    );
                    stall.checked(false);
                }
                Err(e) => return Err(e),
            }
            if resubmitter.cancelled {
                cancelled = true;
            }
        }
        for result in finished {
            let label = labels.get(&result.job_id).cloned().unwrap_or_default();
            match write_finished(&queue, &options.out_dir, &mut report, &label, &result).await {
                Ok(()) => {}
                // Redis went away while the output streamed: wait for the job
                // again; its result is read again, or the job is redone if lost.
                Err(BatchError::Queue(QueueError::Unavailable(reason))) => {
                    say(
                        &progress,
                        &format!(
                            "{label}: reading its output failed ({reason}); will read it again"
                        ),
                    );
                    follower.expect([result.job_id]);
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut summary = report.finish(registered, started.elapsed())?;
    outdir::remove_parts(&options.out_dir)?;
    summary.skipped = prepared.skipped;
    summary.batch_id = Some(batch_id);
    if stop.interrupted.is_some() && summary.finished() < inputs.len() {
        summary.total = inputs.len();
        summary.interrupted = stop.interrupted;
        summary.notes = stop.notes;
    }
    if resubmitter.redone > 0 {
        say(
            &progress,
            &format!(
                "{} lost by Redis were enqueued again",
                jobs(resubmitter.redone)
            ),
        );
    }
    if !resubmitter.lost.is_empty() {
        return Err(BatchError::Lost {
            report: summary.report,
            lost: resubmitter.lost,
        });
    }
    Ok(summary)
}
