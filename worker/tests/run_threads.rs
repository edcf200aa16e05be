//! The executor's run threads, with the real sandbox and the in-memory queue: a run
//! that panics is recorded as `host_error` saying so, and its thread (the worker's only
//! slot here) goes on to run the jobs after it; a claimed batch larger than one runs
//! whole on the slots' threads.
//!
//! Every wait is for an event (a run finishing), bounded so a hang fails.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Captured;
use sluice_shared::{
    Job, JobId, JobInput, JobOutput, JobResult, MemoryQueue, ModuleHash, Outcome, OutcomeKind,
    Queue, RetryPolicy,
};
use sluice_worker::executor::{self, Disposition, ExecutorConfig, JobEnv};
use sluice_worker::{JobReader, JobWriter, LoadedModule, Sandbox, SandboxConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest any single wait here may take before the test fails as hung.
const BOUND: Duration = Duration::from_secs(60);

/// The label of a job whose `open_input` panics (on its run thread).
const PANICS: &str = "panics";

/// Echoes each job's inline input; panics in `open_input` for [`PANICS`]; tells the
/// test of every finished run with the output it kept.
struct PanickyEnv {
    module: Arc<LoadedModule>,
    outputs: Mutex<HashMap<JobId, Captured>>,
    /// Every thread a run was prepared on, with its name.
    threads: Arc<Mutex<HashMap<std::thread::ThreadId, String>>>,
    finished: mpsc::UnboundedSender<(String, JobResult, Disposition)>,
}

impl JobEnv for PanickyEnv {
    fn module(&self, _hash: &ModuleHash) -> Result<Arc<LoadedModule>, Outcome> {
        Ok(self.module.clone())
    }

    fn open_input(&self, job: &Job) -> Result<JobReader, Outcome> {
        let me = std::thread::current();
        self.threads
            .lock()
            .unwrap()
            .insert(me.id(), me.name().unwrap_or_default().to_owned());
        assert_ne!(job.label, PANICS, "open_input panics on purpose");
        let JobInput::Inline(bytes) = job.input.clone() else {
            unreachable!("tests use inline inputs")
        };
        Ok(JobReader::Stream(Box::new(std::io::Cursor::new(bytes))))
    }

    fn open_output(&self, job: &Job) -> Result<JobWriter, Outcome> {
        let sink = Captured::default();
        self.outputs.lock().unwrap().insert(job.id, sink.clone());
        Ok(JobWriter::Stream(Box::new(sink)))
    }

    fn finish_output(&self, job: &Job, result: &mut JobResult) -> Result<(), Outcome> {
        if let Some(sink) = self.outputs.lock().unwrap().remove(&job.id) {
            result.output = JobOutput::Inline(sink.bytes());
        }
        Ok(())
    }

    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition) {
        let label = job.map_or_else(String::new, |job| job.label.clone());
        let _ = self.finished.send((label, result.clone(), disposition));
    }
}

/// A one-slot worker over a fresh queue; returns what it needs to be fed and followed.
struct Rig {
    queue: Arc<MemoryQueue>,
    module: ModuleHash,
    finished: mpsc::UnboundedReceiver<(String, JobResult, Disposition)>,
    shutdown: CancellationToken,
    threads: Arc<Mutex<HashMap<std::thread::ThreadId, String>>>,
    run: tokio::task::JoinHandle<Result<(), executor::ExecutorError>>,
}

impl Rig {
    fn start(slots: u32) -> Self {
        let sandbox = Arc::new(
            Sandbox::new(SandboxConfig {
                slots,
                ..SandboxConfig::default()
            })
            .unwrap(),
        );
        let module = sandbox
            .load_module(common::ECHO_ONE_READ.as_bytes())
            .unwrap();
        let hash = module.hash();
        let (tx, finished) = mpsc::unbounded_channel();
        let threads = Arc::new(Mutex::default());
        let env = Arc::new(PanickyEnv {
            module,
            outputs: Mutex::default(),
            threads: threads.clone(),
            finished: tx,
        });
        let queue = Arc::new(MemoryQueue::new());
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(executor::run(
            queue.clone(),
            sandbox,
            env,
            ExecutorConfig {
                slots: slots as usize,
                consumer: "run-threads-test".into(),
                claim_wait: Duration::from_millis(50),
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                ..ExecutorConfig::default()
            },
            shutdown.clone(),
        ));
        Rig {
            queue,
            module: hash,
            finished,
            shutdown,
            threads,
            run,
        }
    }

    fn job(&self, label: &str) -> Job {
        let mut job = Job::new(self.module, JobInput::Inline(label.as_bytes().to_vec()));
        job.label = label.to_owned();
        job
    }

    /// The next `n` finished runs, by label.
    async fn finished(&mut self, n: usize) -> HashMap<String, (JobResult, Disposition)> {
        let mut seen = HashMap::new();
        while seen.len() < n {
            let (label, result, disposition) = tokio::time::timeout(BOUND, self.finished.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} runs finished: {seen:?}", seen.len()))
                .expect("environment alive");
            seen.insert(label, (result, disposition));
        }
        seen
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(BOUND, self.run)
            .await
            .unwrap()
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_is_recorded_and_its_slot_runs_the_next_jobs() {
    let mut rig = Rig::start(1);
    let jobs = [rig.job(PANICS), rig.job("after-1"), rig.job("after-2")];
    rig.queue.enqueue(&jobs).await.unwrap();

    // One slot, one run thread: had the panic taken it down, the jobs after it would
    // never finish and this wait would fail.
    let seen = rig.finished(3).await;
    let (result, disposition) = &seen[PANICS];
    assert_eq!(result.outcome.kind(), OutcomeKind::HostError);
    assert_eq!(*disposition, Disposition::DeadLettered);
    let Outcome::HostError { reason } = &result.outcome else {
        unreachable!("kind checked above")
    };
    assert!(
        reason.contains("worker thread failed") && reason.contains("open_input panics on purpose"),
        "{reason}"
    );
    for label in ["after-1", "after-2"] {
        let (result, disposition) = &seen[label];
        assert_eq!(
            (result.outcome.kind(), *disposition),
            (OutcomeKind::Success, Disposition::Completed),
            "{label}"
        );
        assert_eq!(result.output, JobOutput::Inline(label.as_bytes().to_vec()));
    }
    let dead = rig.queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("open_input panics on purpose"),
        "{dead:?}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_batch_runs_whole_on_the_slots_threads() {
    let mut rig = Rig::start(4);
    let jobs: Vec<Job> = (0..40).map(|i| rig.job(&format!("job-{i}"))).collect();
    rig.queue.enqueue(&jobs).await.unwrap();
    let seen = rig.finished(jobs.len()).await;
    for job in &jobs {
        let (result, disposition) = &seen[&job.label];
        assert_eq!(
            (result.outcome.kind(), *disposition),
            (OutcomeKind::Success, Disposition::Completed),
            "{}",
            job.label
        );
        assert_eq!(
            result.output,
            JobOutput::Inline(job.label.as_bytes().to_vec())
        );
    }
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.completed), (0, 0, 40));
    // On the slots' own run threads: at most one per slot, whatever the batches (a
    // thread per job, or the runtime's blocking pool, would show more or other names).
    let threads = rig.threads.lock().unwrap().clone();
    assert!(!threads.is_empty() && threads.len() <= 4, "{threads:?}");
    assert!(
        threads.values().all(|name| name.starts_with("sluice-run-")),
        "{threads:?}"
    );
    rig.stop().await;
}
