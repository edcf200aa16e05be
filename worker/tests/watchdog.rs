//! The executor's watchdog, with the real sandbox and the in-memory queue: a run
//! blocked in a host call the sandbox cannot see (its input reader) is recorded as
//! `timeout` after its deadline and the watchdog grace, its lease is no longer renewed,
//! its slot stays busy until the thread returns, what it returns is dropped, and the
//! worker goes on; too many such runs stop the worker with a typed error; a release at
//! shutdown counts an attempt only for a run past its deadline.
//!
//! Nothing here waits on the clock to synchronise: every wait is for an event (a run
//! finishing, a lease renewal, a reader being called), bounded so a hang fails.

mod common;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use common::Captured;
use sluice_shared::queue::{Completion, DeadLetter, QueueStats, ReleaseKind};
use sluice_shared::{
    Claimed, Job, JobId, JobInput, JobResult, Lease, MemoryQueue, ModuleHash, Outcome, OutcomeKind,
    Queue, QueueError, RetryPolicy,
};
use sluice_worker::executor::{self, Disposition, ExecutorConfig, ExecutorError, JobEnv};
use sluice_worker::{
    CompiledSource, JobReader, JobWriter, LoadedModule, Metering, Sandbox, SandboxConfig,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest any single wait here may take before the test fails as hung.
const BOUND: Duration = Duration::from_secs(60);

/// A door that blocking threads wait at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

/// Opens its gates when dropped, so a failing test still lets the blocked threads go
/// (the runtime waits for them before the test can end).
struct OpenOnDrop(Vec<Arc<Gate>>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        for gate in &self.0 {
            gate.open();
        }
    }
}

/// How many times each job's lease was renewed, with a wait for a count.
#[derive(Default)]
struct Renewals {
    counts: Mutex<HashMap<JobId, u32>>,
    changed: Condvar,
}

impl Renewals {
    fn of(&self, job: JobId) -> u32 {
        self.counts.lock().unwrap().get(&job).copied().unwrap_or(0)
    }

    /// Blocks until `job`'s lease was renewed `n` times; false if that takes too long.
    fn wait_for(&self, job: JobId, n: u32) -> bool {
        let counts = self.counts.lock().unwrap();
        let (_counts, waited) = self
            .changed
            .wait_timeout_while(counts, BOUND, |c| c.get(&job).copied().unwrap_or(0) < n)
            .unwrap();
        !waited.timed_out()
    }
}

/// A real `MemoryQueue` that also counts lease renewals per job, and holds each
/// renewal (once counted) while `renew_gate` is shut, telling `events` when it returns.
struct Watched {
    inner: MemoryQueue,
    renewals: Arc<Renewals>,
    renew_gate: tokio::sync::watch::Receiver<bool>,
    events: mpsc::UnboundedSender<Event>,
}

impl Queue for Watched {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        self.inner.enqueue(jobs).await
    }
    async fn enqueue_raw(&self, envelope: Vec<u8>) -> Result<(), QueueError> {
        self.inner.enqueue_raw(envelope).await
    }
    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        self.inner.claim(consumer, max, lease_for, wait).await
    }
    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<(), QueueError> {
        if let Some(job) = lease.job_id {
            *self.renewals.counts.lock().unwrap().entry(job).or_default() += 1;
            self.renewals.changed.notify_all();
        }
        if !*self.renew_gate.borrow() {
            let mut gate = self.renew_gate.clone();
            let _ = gate.wait_for(|open| *open).await;
            let renewed = self.inner.extend_lease(lease, lease_for).await;
            let _ = self.events.send(Event::RenewReturned(renewed.is_ok()));
            return renewed;
        }
        self.inner.extend_lease(lease, lease_for).await
    }
    async fn complete(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> Result<Completion, QueueError> {
        self.inner.complete(lease, result).await
    }
    async fn retry(&self, lease: &Lease, job: &Job, delay: Duration) -> Result<(), QueueError> {
        self.inner.retry(lease, job, delay).await
    }
    async fn dead_letter(
        &self,
        lease: &Lease,
        result: impl Borrow<JobResult> + Send,
    ) -> Result<(), QueueError> {
        self.inner.dead_letter(lease, result).await
    }
    async fn release(
        &self,
        lease: &Lease,
        job: Option<&Job>,
        kind: ReleaseKind,
    ) -> Result<(), QueueError> {
        self.inner.release(lease, job, kind).await
    }
    async fn result(&self, job_id: JobId) -> Result<Option<JobResult>, QueueError> {
        self.inner.result(job_id).await
    }
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters().await
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
}

/// What the environment saw, in order.
// Some fields are only read through `Debug`, in `Rig::seen`.
#[allow(dead_code)]
#[derive(Debug)]
enum Event {
    Started(String),
    Reading(String),
    Output(String, OutcomeKind, Vec<u8>),
    Finished(String, OutcomeKind, Disposition),
    Stuck(String, bool),
    /// A held renewal came back (whether it succeeded).
    RenewReturned(bool),
    QueueError(executor::QueueOp),
}

/// How a job's input behaves, by label.
enum Input {
    /// Blocks in `open_input` (outside the sandbox) until the gate opens, then is empty.
    Blocked(Arc<Gate>),
    /// Blocks until the job's lease has been renewed this many times, then gives its
    /// inline bytes.
    AfterRenewals(u32),
}

struct TestEnv {
    module: Arc<LoadedModule>,
    inputs: Mutex<HashMap<String, Input>>,
    renewals: Arc<Renewals>,
    outputs: Mutex<HashMap<JobId, Captured>>,
    events: mpsc::UnboundedSender<Event>,
}

struct Reader<F: FnMut(&mut [u8]) -> std::io::Result<usize>>(F);

impl<F: FnMut(&mut [u8]) -> std::io::Result<usize>> Read for Reader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (self.0)(buf)
    }
}

impl JobEnv for TestEnv {
    fn module(&self, _hash: &ModuleHash) -> Result<Arc<LoadedModule>, sluice_shared::Outcome> {
        Ok(self.module.clone())
    }

    fn open_input(&self, job: &Job) -> Result<JobReader, sluice_shared::Outcome> {
        let JobInput::Inline(bytes) = job.input.clone() else {
            unreachable!("tests use inline inputs")
        };
        let (label, events, id) = (job.label.clone(), self.events.clone(), job.id);
        let mut told = false;
        let mut tell = move || {
            if !std::mem::replace(&mut told, true) {
                let _ = events.send(Event::Reading(label.clone()));
            }
        };
        let input = self.inputs.lock().unwrap().remove(&job.label);
        Ok(JobReader::Stream(match input {
            // Blocks in the `JobEnv` call itself, before the sandbox runs: the sandbox
            // bounds its own stdin reads by the job's deadline, so only a host call
            // outside it is left for the watchdog.
            Some(Input::Blocked(gate)) => {
                tell();
                gate.wait();
                Box::new(std::io::Cursor::new(Vec::new()))
            }
            Some(Input::AfterRenewals(n)) => {
                let renewals = self.renewals.clone();
                let mut cursor = std::io::Cursor::new(bytes);
                Box::new(Reader(move |buf: &mut [u8]| {
                    tell();
                    if !renewals.wait_for(id, n) {
                        return Err(std::io::Error::other("lease never renewed"));
                    }
                    cursor.read(buf)
                }))
            }
            None => Box::new(std::io::Cursor::new(bytes)),
        }))
    }

    fn open_output(&self, job: &Job) -> Result<JobWriter, sluice_shared::Outcome> {
        let sink = Captured::default();
        self.outputs.lock().unwrap().insert(job.id, sink.clone());
        Ok(JobWriter::Stream(Box::new(sink)))
    }

    fn finish_output(
        &self,
        job: &Job,
        result: &mut JobResult,
    ) -> Result<(), sluice_shared::Outcome> {
        let written = self
            .outputs
            .lock()
            .unwrap()
            .remove(&job.id)
            .map(|sink| sink.bytes())
            .unwrap_or_default();
        let _ = self.events.send(Event::Output(
            job.label.clone(),
            result.outcome.kind(),
            written,
        ));
        Ok(())
    }

    fn on_started(&self, job: &Job) {
        let _ = self.events.send(Event::Started(job.label.clone()));
    }

    fn on_finished(&self, job: Option<&Job>, result: &JobResult, disposition: Disposition) {
        let label = job.map_or_else(String::new, |job| job.label.clone());
        let _ = self
            .events
            .send(Event::Finished(label, result.outcome.kind(), disposition));
    }

    fn on_stuck(&self, job: &Job, stuck: bool) {
        let _ = self.events.send(Event::Stuck(job.label.clone(), stuck));
    }

    fn on_queue_error(&self, op: executor::QueueOp, job: Option<JobId>, error: &QueueError) {
        executor::log_queue_error(op, job, error);
        let _ = self.events.send(Event::QueueError(op));
    }
}

struct Rig {
    queue: Arc<Watched>,
    env: Arc<TestEnv>,
    sandbox: Arc<Sandbox>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Shut: lease renewals wait (see [`Watched`]).
    renew_gate: tokio::sync::watch::Sender<bool>,
    /// Every event seen so far, for order checks.
    seen: Vec<String>,
}

impl Rig {
    fn new(slots: u32) -> Self {
        Self::with_module(slots, Arc::default(), |sandbox, _| {
            sandbox
                .load_module(common::ECHO_ONE_READ.as_bytes())
                .unwrap()
        })
    }

    /// A rig whose jobs all run the module `load` makes (given the sandbox and the
    /// queue's lease renewals).
    fn with_module(
        slots: u32,
        renewals: Arc<Renewals>,
        load: impl FnOnce(&Sandbox, &Arc<Renewals>) -> Arc<LoadedModule>,
    ) -> Self {
        let sandbox = Arc::new(
            Sandbox::new(SandboxConfig {
                slots,
                ..SandboxConfig::default()
            })
            .unwrap(),
        );
        let module = load(&sandbox, &renewals);
        let (tx, events) = mpsc::unbounded_channel();
        let (renew_gate, renew_open) = tokio::sync::watch::channel(true);
        Rig {
            queue: Arc::new(Watched {
                inner: MemoryQueue::new(),
                renewals: renewals.clone(),
                renew_gate: renew_open,
                events: tx.clone(),
            }),
            renew_gate,
            env: Arc::new(TestEnv {
                module,
                inputs: Mutex::default(),
                renewals,
                outputs: Mutex::default(),
                events: tx,
            }),
            sandbox,
            events,
            seen: Vec::new(),
        }
    }

    fn job(&self, label: &str, timeout_ms: u64, input: Option<Input>) -> Job {
        let mut job = Job::new(
            self.env.module.hash(),
            JobInput::Inline(label.as_bytes().to_vec()),
        );
        job.label = label.to_owned();
        job.limits.timeout_ms = timeout_ms;
        if let Some(input) = input {
            self.env
                .inputs
                .lock()
                .unwrap()
                .insert(label.to_owned(), input);
        }
        job
    }

    fn start(
        &self,
        config: ExecutorConfig,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), ExecutorError>>,
    ) {
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(executor::run(
            self.queue.clone(),
            self.sandbox.clone(),
            self.env.clone(),
            config,
            shutdown.clone(),
        ));
        (shutdown, run)
    }

    /// The next event `pick` accepts (earlier ones are kept in `seen`).
    async fn until<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            let event = tokio::time::timeout(BOUND, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no awaited event; saw {:?}", self.seen))
                .expect("environment alive");
            self.seen.push(format!("{event:?}"));
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    /// Waits for the job labelled `label` to finish; returns how it ended.
    async fn finished(&mut self, label: &str) -> (OutcomeKind, Disposition) {
        self.until(|e| match e {
            Event::Finished(l, kind, d) if l == label => Some((*kind, *d)),
            _ => None,
        })
        .await
    }

    /// Enqueues `job` alone on the watched queue.
    async fn enqueue(&self, job: &Job) {
        self.queue.enqueue(std::slice::from_ref(job)).await.unwrap();
    }

    fn position(&self, event: &str) -> Option<usize> {
        self.seen.iter().position(|seen| seen == event)
    }
}

fn config(slots: usize) -> ExecutorConfig {
    ExecutorConfig {
        slots,
        consumer: "watchdog-test".into(),
        lease: Duration::from_millis(300),
        claim_wait: Duration::from_millis(50),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        grace: Duration::from_secs(30),
        watchdog_grace: Duration::from_millis(200),
        prepare_budget: Duration::ZERO,
        max_stuck: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_blocked_in_a_host_call_is_recorded_as_timeout_and_the_next_job_succeeds() {
    let mut rig = Rig::new(2);
    let gate = Arc::new(Gate::default());
    let _release = OpenOnDrop(vec![gate.clone()]);
    let stuck = rig.job("stuck", 200, Some(Input::Blocked(gate.clone())));
    let (shutdown, run) = rig.start(ExecutorConfig {
        max_stuck: Some(1),
        ..config(2)
    });
    rig.enqueue(&stuck).await;

    let (kind, disposition) = rig.finished("stuck").await;
    assert_eq!(kind, OutcomeKind::Timeout);
    assert_eq!(disposition, Disposition::DeadLettered);
    rig.until(|e| matches!(e, Event::Stuck(l, true) if l == "stuck").then_some(()))
        .await;
    let stored = rig.queue.result(stuck.id).await.unwrap().unwrap();
    assert_eq!(stored.outcome.kind(), OutcomeKind::Timeout);
    let renewed_when_given_up = rig.queue.renewals.of(stuck.id);

    // The next job reads its input only once its own lease was renewed three times:
    // had the stuck run's renewals gone on, they would show in the same span.
    let next = rig.job("next", 60_000, Some(Input::AfterRenewals(3)));
    let third = rig.job("third", 60_000, None);
    rig.enqueue(&next).await;
    rig.until(|e| matches!(e, Event::Started(l) if l == "next").then_some(()))
        .await;
    // Both slots are now busy (one stuck, one running): the third job must wait.
    rig.enqueue(&third).await;
    let (kind, disposition) = rig.finished("next").await;
    assert_eq!(
        (kind, disposition),
        (OutcomeKind::Success, Disposition::Completed)
    );
    assert_eq!(
        rig.queue.renewals.of(stuck.id),
        renewed_when_given_up,
        "a run given up by the watchdog was still renewed"
    );
    let output = rig.queue.result(next.id).await.unwrap().unwrap();
    assert_eq!(output.outcome.kind(), OutcomeKind::Success);
    rig.until(|e| matches!(e, Event::Finished(l, ..) if l == "third").then_some(()))
        .await;
    let third_started = rig.position("Started(\"third\")").unwrap();
    let next_finished = rig
        .seen
        .iter()
        .position(|e| e.starts_with("Finished(\"next\""))
        .unwrap();
    assert!(
        third_started > next_finished,
        "a stuck run's slot was handed to another job: {:?}",
        rig.seen
    );

    // The stuck thread returns at last: what it made is discarded, the record stays.
    gate.open();
    rig.until(|e| matches!(e, Event::Stuck(l, false) if l == "stuck").then_some(()))
        .await;
    let late = rig
        .seen
        .iter()
        .find(|e| e.starts_with("Output(\"stuck\""))
        .expect("the stuck run's output was finished");
    assert!(late.contains("Timeout"), "late output kept: {late}");
    let stored = rig.queue.result(stuck.id).await.unwrap().unwrap();
    assert_eq!(stored.outcome.kind(), OutcomeKind::Timeout);
    assert_eq!(rig.queue.dead_letters().await.unwrap().len(), 1);

    shutdown.cancel();
    let ended = tokio::time::timeout(BOUND, run).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.completed), (0, 0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_stuck_runs_than_the_bound_stop_the_worker_with_a_typed_error() {
    let mut rig = Rig::new(3);
    let gate = Arc::new(Gate::default());
    let holding = Arc::new(Gate::default());
    let _release = OpenOnDrop(vec![gate.clone(), holding.clone()]);
    let stuck: Vec<Job> = ["stuck-a", "stuck-b"]
        .iter()
        .map(|label| rig.job(label, 100, Some(Input::Blocked(gate.clone()))))
        .collect();
    // A healthy long job in flight when the worker stops: released, not counted.
    let healthy = rig.job("healthy", 60_000, Some(Input::Blocked(holding.clone())));
    let (_shutdown, run) = rig.start(ExecutorConfig {
        max_stuck: Some(1),
        grace: Duration::from_millis(100),
        ..config(3)
    });
    rig.enqueue(&healthy).await;
    rig.until(|e| matches!(e, Event::Reading(l) if l == "healthy").then_some(()))
        .await;
    rig.queue.enqueue(&stuck).await.unwrap();

    let ended = tokio::time::timeout(BOUND, run)
        .await
        .expect("the worker stopped")
        .unwrap();
    match ended {
        Err(ExecutorError::TooManyStuck { stuck, bound }) => assert_eq!((stuck, bound), (2, 1)),
        other => panic!("expected TooManyStuck, got {other:?}"),
    }
    for job in &stuck {
        let stored = rig.queue.result(job.id).await.unwrap().unwrap();
        assert_eq!(stored.outcome.kind(), OutcomeKind::Timeout);
    }
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!(
        (stats.leased, stats.ready),
        (0, 1),
        "the healthy job was released"
    );
    let again = rig
        .queue
        .claim("next-worker", 1, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again[0].lease.job_id, Some(healthy.id));
    assert_eq!(
        again[0].attempt(),
        1,
        "a drained job was counted an attempt"
    );
    gate.open();
    holding.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_at_shutdown_counts_an_attempt_only_for_an_overdue_run() {
    let mut rig = Rig::new(2);
    let gate = Arc::new(Gate::default());
    let _release = OpenOnDrop(vec![gate.clone()]);
    const DEADLINE_MS: u64 = 50;
    let overdue = rig.job("overdue", DEADLINE_MS, Some(Input::Blocked(gate.clone())));
    let on_time = rig.job("on-time", 60_000, Some(Input::Blocked(gate.clone())));
    let (shutdown, run) = rig.start(ExecutorConfig {
        grace: Duration::ZERO,
        // Far longer than the test: the watchdog must not settle the overdue run first.
        watchdog_grace: Duration::from_secs(3600),
        ..config(2)
    });
    rig.queue
        .enqueue(&[overdue.clone(), on_time.clone()])
        .await
        .unwrap();
    let mut reading = std::collections::HashSet::new();
    while reading.len() < 2 {
        let label = rig
            .until(|e| match e {
                Event::Reading(label) => Some(label.clone()),
                _ => None,
            })
            .await;
        reading.insert(label);
    }
    // Waits out the overdue run's deadline (counted from before its guest read).
    tokio::time::sleep(Duration::from_millis(DEADLINE_MS + 10)).await;
    shutdown.cancel();
    let ended = tokio::time::timeout(BOUND, run).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let again = rig
        .queue
        .claim("next-worker", 2, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    let attempts: HashMap<JobId, u32> = again
        .iter()
        .map(|c| (c.lease.job_id.unwrap(), c.attempt()))
        .collect();
    assert_eq!(attempts.get(&overdue.id), Some(&2), "{attempts:?}");
    assert_eq!(attempts.get(&on_time.id), Some(&1), "{attempts:?}");
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preparation_within_its_budget_is_not_taken_for_a_stuck_run() {
    let mut rig = Rig::new(1);
    let gate = Arc::new(Gate::default());
    let _release = OpenOnDrop(vec![gate.clone()]);
    // Blocked while being prepared (as a slow compile would be) for longer than its
    // deadline plus the watchdog grace (200 + 200 ms): six renewals of a 300 ms lease.
    let slow = rig.job("slow", 200, Some(Input::Blocked(gate.clone())));
    let (shutdown, run) = rig.start(ExecutorConfig {
        prepare_budget: BOUND,
        ..config(1)
    });
    rig.enqueue(&slow).await;
    let (renewals, id) = (rig.queue.renewals.clone(), slow.id);
    let renewed = tokio::task::spawn_blocking(move || renewals.wait_for(id, 6))
        .await
        .unwrap();
    assert!(renewed, "the slow job's lease was not renewed six times");
    gate.open();
    let (kind, disposition) = rig.finished("slow").await;
    assert_eq!(
        (kind, disposition),
        (OutcomeKind::Success, Disposition::Completed)
    );
    shutdown.cancel();
    let ended = tokio::time::timeout(BOUND, run).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

/// Compiles [`common::ECHO_ONE_READ`] only once the job it is told of has had its lease
/// renewed `after` times (the clock a slow compile runs on, without sleeping).
struct SlowCompile {
    renewals: Arc<Renewals>,
    /// Set once the job exists (after the module is loaded).
    job: Arc<OnceLock<JobId>>,
    after: u32,
}

impl CompiledSource for SlowCompile {
    fn compiled(&self, sandbox: &Sandbox, metering: Metering) -> Result<wasmtime::Module, Outcome> {
        let job = *self
            .job
            .get()
            .expect("the job is set before it is enqueued");
        if !self.renewals.wait_for(job, self.after) {
            return Err(Outcome::HostError {
                reason: "the lease was never renewed while compiling".into(),
            });
        }
        wasmtime::Module::new(sandbox.engine(metering), common::ECHO_ONE_READ).map_err(|e| {
            Outcome::InvalidModule {
                reason: e.to_string(),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_longer_than_the_job_timeout_is_not_charged_to_the_guest() {
    let job_id = Arc::new(OnceLock::new());
    let mut rig = Rig::with_module(1, Arc::default(), |sandbox, renewals| {
        let compile = SlowCompile {
            renewals: renewals.clone(),
            job: job_id.clone(),
            after: 6,
        };
        sandbox.load_compiled(
            ModuleHash::of(common::ECHO_ONE_READ.as_bytes()),
            Box::new(compile),
        )
    });
    // The module's code takes six renewals of a 300 ms lease to come (about 600 ms),
    // past the job's 200 ms timeout plus the 200 ms watchdog grace: it is loaded under
    // the prepare budget, before the guest's deadline starts.
    let job = rig.job("first", 200, None);
    job_id.set(job.id).unwrap();
    let (shutdown, run) = rig.start(ExecutorConfig {
        prepare_budget: BOUND,
        ..config(1)
    });
    rig.enqueue(&job).await;
    let (kind, disposition) = rig.finished("first").await;
    assert_eq!(
        (kind, disposition),
        (OutcomeKind::Success, Disposition::Completed),
        "{:?}",
        rig.seen
    );
    assert!(rig.queue.renewals.of(job.id) >= 6);
    let echoed = format!(
        "{:?}",
        Event::Output("first".into(), OutcomeKind::Success, b"first".to_vec())
    );
    assert!(rig.position(&echoed).is_some(), "{:?}", rig.seen);
    shutdown.cancel();
    let ended = tokio::time::timeout(BOUND, run).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

// On one runtime thread: a renewal's task runs on from its queue call to reporting
// (or dropping) its error in one poll, so once the test sees the call return, the
// report, if any, was already sent.
#[tokio::test]
async fn a_renewal_that_comes_back_after_its_job_completed_reports_no_error() {
    let mut rig = Rig::new(1);
    rig.renew_gate.send_replace(false);
    // The job reads its input only once a renewal has begun; the renewal is held
    // until the job is recorded, so it comes back for a lease that is gone.
    let job = rig.job("done", 10_000, Some(Input::AfterRenewals(1)));
    let (shutdown, run) = rig.start(config(1));
    rig.enqueue(&job).await;
    assert_eq!(rig.finished("done").await.0, OutcomeKind::Success);
    rig.renew_gate.send_replace(true);
    let renewed = rig
        .until(|e| match e {
            Event::RenewReturned(ok) => Some(*ok),
            _ => None,
        })
        .await;
    assert!(!renewed, "the completed job's lease should be gone");
    shutdown.cancel();
    run.await.unwrap().unwrap();
    while let Ok(event) = rig.events.try_recv() {
        rig.seen.push(format!("{event:?}"));
    }
    assert!(
        !rig.seen.iter().any(|e| e.starts_with("QueueError")),
        "a late renewal was reported: {:?}",
        rig.seen
    );
}
