//! What a claimed entry becomes before its run: a bad envelope or a job delivered too
//! often (recorded without a run), or a [`Task`] for a run thread whose result comes
//! back over a channel; and [`run_one`], the run itself (policy, module and its code,
//! input and output, the guest, the output kept or discarded).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sluice_shared::{Claimed, Job, JobResult, Outcome};
use tokio::sync::oneshot;

use super::flight::RunClock;
use super::threads::Task;
use super::{ExecutorConfig, JobEnv};
use crate::sandbox::Sandbox;

/// A run's result as its thread reports it: `Err` holds what a panic said.
pub(super) type Ran = Result<JobResult, String>;

/// How a claimed entry goes on.
pub(super) enum Start {
    /// The envelope did not decode: recorded as `bad_envelope`, no run.
    BadEnvelope(String),
    /// Delivered more often than the retry policy allows (its worker died, or shut
    /// down while it ran past its deadline, each time): given up, no run.
    Exhausted(Job),
    /// Handed to a run thread; its result arrives on the receiver.
    Running(Job, oneshot::Receiver<Ran>),
}

/// Decides how `claimed` goes on, telling `env` of a job's start (also of a job given
/// up without a run, so started and finished stay paired for metrics), and makes the
/// run-thread task of a job that runs. The task runs in `span`.
pub(super) fn begin<E: JobEnv>(
    sandbox: &Arc<Sandbox>,
    env: &Arc<E>,
    config: &ExecutorConfig,
    claimed: &Claimed,
    clock: &Arc<RunClock>,
    span: &tracing::Span,
) -> (Start, Option<Task>) {
    let attempt = claimed.attempt();
    let job = match &claimed.delivery {
        Ok(job) => job,
        Err(error) => return (Start::BadEnvelope(error.to_string()), None),
    };
    env.on_started(job);
    // A job that kills its worker every time never reaches the retry decision; its
    // delivery count still grows (as does a job released overdue), and past the
    // attempt limit it is given up.
    if attempt > config.retry.max_attempts {
        return (Start::Exhausted(job.clone()), None);
    }
    let (done, ran) = oneshot::channel();
    let task: Task = {
        let (sandbox, env, job, clock, span) = (
            sandbox.clone(),
            env.clone(),
            job.clone(),
            clock.clone(),
            span.clone(),
        );
        Box::new(move || {
            let _in_job = span.enter();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_one(&sandbox, &*env, &job, attempt, &clock)
            }))
            .map_err(|panic| panic_text(&*panic));
            // The receiver is gone only when the loop gave the run up.
            let _ = done.send(ran);
        })
    };
    (Start::Running(job.clone(), ran), Some(task))
}

/// What a panic said, when it said it with a string.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        format!("run panicked: {text}")
    } else if let Some(text) = panic.downcast_ref::<String>() {
        format!("run panicked: {text}")
    } else {
        "run panicked".to_owned()
    }
}

/// Runs one job on the calling (run) thread.
pub(super) fn run_one<E: JobEnv>(
    sandbox: &Sandbox,
    env: &E,
    job: &Job,
    attempt: u32,
    clock: &RunClock,
) -> JobResult {
    if clock.abandoned.load(Ordering::SeqCst) {
        // Released (shutdown's grace ran out) while it waited for a thread: another
        // worker holds it now, so it does not start here.
        return JobResult::without_run(job.id, Outcome::Timeout, attempt);
    }
    // The module's code for the job's engine is loaded here, under the prepare budget
    // (a compile, or waiting for another worker's), before the guest's deadline starts.
    let prepared = env
        .admit(job)
        .and_then(|()| env.module(&job.module))
        .and_then(|module| {
            module.load_code_for(sandbox, job)?;
            let input = env.open_input(job)?;
            let output = env.open_output(job)?;
            Ok((module, input, output))
        });
    let mut result = match prepared {
        Ok((module, input, output)) => {
            let _ = clock.guest.set(Instant::now());
            sandbox.run_io(&module, job, input, output)
        }
        Err(outcome) => JobResult::without_run(job.id, outcome, attempt),
    };
    result.attempt = attempt;
    if clock.abandoned.load(Ordering::SeqCst) {
        // The watchdog (or a release) already settled this run: keep none of its output.
        result.outcome = Outcome::Timeout;
    }
    if let Err(outcome) = env.finish_output(job, &mut result)
        && result.outcome.is_success()
    {
        result.outcome = outcome;
    }
    result
}
