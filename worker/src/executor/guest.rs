//! What a claimed entry becomes before its run: a bad envelope or a job delivered too
//! often (recorded without a run), or a [`Task`] for a run thread whose result comes
//! back over a channel; and [`run_one`], the run itself (policy, module and its code,
//! input and output, the guest, the output kept or discarded).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sluice_shared::codec::DecodeError;
use sluice_shared::{Job, JobResult, Outcome};
use tokio::sync::oneshot;

use super::flight::RunClock;
use super::handback::Handback;
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
    Exhausted(Arc<Job>),
    /// Handed to a run thread; its result arrives on the receiver. The job is shared
    /// with the run thread's task and the in-flight map, not copied for each.
    Running(Arc<Job>, oneshot::Receiver<Ran>),
}

/// Decides how a claimed entry (`delivery`, its `attempt`) goes on, telling `env` of a
/// job's start (also of a job given up without a run, so started and finished stay
/// paired for metrics), and makes the run-thread task of a job that runs. The task runs
/// in `span` and hands its result back through `handback`.
#[allow(clippy::too_many_arguments)]
pub(super) fn begin<E: JobEnv>(
    sandbox: &Arc<Sandbox>,
    env: &Arc<E>,
    config: &ExecutorConfig,
    attempt: u32,
    delivery: &Result<Arc<Job>, DecodeError>,
    clock: &Arc<RunClock>,
    span: &tracing::Span,
    handback: &Arc<Handback>,
) -> (Start, Option<Task>) {
    let job = match delivery {
        Ok(job) => job,
        Err(error) => return (Start::BadEnvelope(error.to_string()), None),
    };
    env.on_started(job);
    // A job that kills its worker every time never reaches the retry decision; its
    // delivery count still grows (as does a job released overdue), and past the
    // attempt limit it is given up.
    if attempt > config.retry.max_attempts {
        return (Start::Exhausted(Arc::clone(job)), None);
    }
    let (done, ran) = oneshot::channel();
    let task: Task = {
        let (sandbox, env, job, clock, span, handback) = (
            sandbox.clone(),
            env.clone(),
            Arc::clone(job),
            clock.clone(),
            span.clone(),
            handback.clone(),
        );
        Box::new(move || {
            let _in_job = span.enter();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_one(&sandbox, &*env, &job, attempt, &clock)
            }))
            .map_err(|panic| panic_text(&*panic));
            if ran.is_err() {
                // The env may hold this run's output state: let it discard it, as it
                // does a failed run's (a panic there too is caught and dropped).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut failed = JobResult::without_run(
                        job.id,
                        Outcome::HostError {
                            reason: "run panicked".into(),
                        },
                        attempt,
                    );
                    env.finish_output(&job, &mut failed)
                }));
            }
            handback.push(done, ran);
        })
    };
    (Start::Running(Arc::clone(job), ran), Some(task))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;
    use crate::job_io::{JobReader, JobWriter};
    use crate::sandbox::LoadedModule;
    use parking_lot::Mutex;
    use sluice_shared::{JobInput, ModuleHash};
    use std::time::Duration;

    /// Notes every preparing call a run makes; none of them may happen here.
    #[derive(Default)]
    struct Watching {
        calls: Mutex<Vec<&'static str>>,
    }

    impl JobEnv for Watching {
        fn admit(&self, _job: &Job) -> Result<(), Outcome> {
            self.calls.lock().push("admit");
            Ok(())
        }
        fn module(&self, _hash: &ModuleHash) -> Result<Arc<LoadedModule>, Outcome> {
            self.calls.lock().push("module");
            Err(Outcome::HostError {
                reason: "no module here".into(),
            })
        }
        fn open_input(&self, _job: &Job) -> Result<JobReader, Outcome> {
            self.calls.lock().push("open_input");
            Ok(JobReader::Memory(Default::default()))
        }
        fn open_output(&self, _job: &Job) -> Result<JobWriter, Outcome> {
            self.calls.lock().push("open_output");
            Ok(JobWriter::Memory)
        }
        fn finish_output(&self, _job: &Job, _result: &mut JobResult) -> Result<(), Outcome> {
            Ok(())
        }
        fn on_finished(
            &self,
            _job: Option<&Job>,
            _result: &JobResult,
            _disposition: super::super::Disposition,
        ) {
        }
    }

    #[test]
    fn a_job_released_before_a_thread_took_it_does_not_start() {
        let sandbox = Sandbox::new(SandboxConfig {
            slots: 1,
            ..SandboxConfig::default()
        })
        .unwrap();
        let env = Watching::default();
        let job = Job::new(
            ModuleHash::of(b"never loaded"),
            JobInput::Inline(Vec::new()),
        );
        let clock = RunClock::new(Duration::ZERO);
        clock.abandoned.store(true, Ordering::SeqCst);
        let result = run_one(&sandbox, &env, &job, 1, &clock);
        assert_eq!(result.outcome, Outcome::Timeout);
        assert!(env.calls.lock().is_empty(), "{:?}", env.calls.lock());
        assert!(clock.guest.get().is_none(), "the guest's clock started");
    }
}
