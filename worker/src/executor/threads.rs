//! The run threads: long-lived threads, one per job slot, on which guests run.
//!
//! Guests run synchronously (wasmtime-wasi's async stdio on a multi-threaded runtime
//! streams ~10x slower), so each run needs a thread of its own. A `spawn_blocking` per
//! job paid for a trip through the runtime's blocking pool every time; these threads
//! live as long as the worker loop, and a claimed batch is handed over in one push.
//!
//! Waking a parked thread costs a context switch in and out, which for a short job is
//! most of its cost, so an awake thread keeps draining the queue and the pool wakes
//! another only when the work needs it: a push (and a thread taking a job with more
//! behind it) wakes parked threads while more jobs are queued than threads already
//! woken for them and fewer threads run a young task (started less than [`WAIT_BOUND`]
//! ago) or are woken than there are cores; one more once the job at the queue's head
//! has waited [`WAIT_BOUND`]. A thread in an older task (a sleeping guest, a slow
//! input, a stuck run) does not count, so such jobs never keep a parked thread from
//! queued work; [`RunThreads::wake_stale`], called by the executor's sweep at the time
//! the queue tells it, applies the rule again once running tasks have aged or the
//! head has waited. Jobs of one batch share one timestamp, so once the head is stale
//! every thread that takes a job wakes another (a chain), until the queue is empty or
//! no thread is parked. A batch of N short jobs so costs a few wakeups, not N.
//!
//! A task that panics is caught here: the thread (and with it the job slot) lives on.
//! A task that never returns keeps its thread; the loop counts it as stuck and holds
//! its slot, so there is never more work queued than threads able to take it.
//! Dropping [`RunThreads`] lets each thread finish what it holds and exit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::runtime::Handle;

use crate::config::SandboxConfig;

/// How long a queued job may wait for a thread before one more is woken for it,
/// beyond the cores bound (see the module doc).
pub(super) const WAIT_BOUND: Duration = Duration::from_millis(2);

/// The stack of a run thread: room for the sandbox's wasm stack
/// ([`SandboxConfig::MAX_WASM_STACK_BYTES`]) and the host's frames under it (2 MiB, a
/// blocking-pool thread's whole stack).
pub(super) const RUN_THREAD_STACK: usize = SandboxConfig::MAX_WASM_STACK_BYTES + (2 << 20);

/// One job's work on a run thread.
pub(super) type Task = Box<dyn FnOnce() + Send>;

/// The work queue the threads share.
struct State {
    /// Queued tasks with when they were queued.
    tasks: VecDeque<(Instant, Task)>,
    /// Threads parked on the condvar and not yet woken: whoever wakes one takes it off.
    idle: usize,
    /// Threads woken that have not taken the lock again yet (each will take a task).
    woken: usize,
    /// When each thread's current task started (`None`: it holds none). Only tasks
    /// started less than [`WAIT_BOUND`] ago count toward the awake bound: a thread
    /// off the CPU in a long task (a sleeping guest, a slow input, a stuck run) must
    /// not keep a queued job from a parked thread.
    started: Vec<Option<Instant>>,
    /// Set when the pool is dropped: threads exit once the queue is empty.
    closed: bool,
}

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
    /// The most threads running a young task or woken for queued work before a job has waited
    /// [`WAIT_BOUND`].
    awake_bound: usize,
}

impl Pool {
    /// Wakes one parked thread, if any is parked.
    fn wake_one(&self, state: &mut State) {
        if state.idle > 0 {
            state.idle -= 1;
            state.woken += 1;
            self.wake.notify_one();
        }
    }

    /// Wakes parked threads while more tasks are queued than threads already woken for
    /// them, and fewer threads run a young task (started less than [`WAIT_BOUND`] ago)
    /// or are woken than the bound (so a queued job never waits on a core left idle,
    /// nor behind threads blocked in long tasks, and one queued job never wakes two
    /// threads).
    fn wake_for_queue(&self, state: &mut State, now: Instant) {
        let young = state
            .started
            .iter()
            .flatten()
            .filter(|at| now.saturating_duration_since(**at) < WAIT_BOUND)
            .count();
        while state.idle > 0
            && state.tasks.len() > state.woken
            && young + state.woken < self.awake_bound
        {
            self.wake_one(state);
        }
        if state
            .tasks
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WAIT_BOUND)
        {
            self.wake_one(state);
        }
    }
}

/// The worker loop's run threads.
pub(super) struct RunThreads {
    pool: Arc<Pool>,
    /// The origin of [`Self::sweep_next`].
    epoch: Instant,
    /// When the sweep next looks, in nanoseconds since `epoch` ([`SWEEP_AWAKE`] while
    /// it is looking), so a submit kicks it only when it would look too late.
    sweep_next: AtomicU64,
}

/// [`RunThreads::sweep_next`] while the sweep is awake (a submit then always kicks it,
/// so it looks once more before it sleeps).
const SWEEP_AWAKE: u64 = u64::MAX;

impl RunThreads {
    /// Starts `count` threads, each inside `runtime`'s context (so a [`super::JobEnv`]
    /// call may `block_on` it or spawn on it, as it could on a blocking-pool thread),
    /// waking at most `awake_bound` of them for queued work before it has waited
    /// [`WAIT_BOUND`] (the cores; see the module doc).
    pub(super) fn start(
        count: usize,
        awake_bound: usize,
        runtime: &Handle,
    ) -> std::io::Result<Self> {
        let pool = Arc::new(Pool {
            state: Mutex::new(State {
                tasks: VecDeque::new(),
                idle: 0,
                woken: 0,
                started: vec![None; count],
                closed: false,
            }),
            wake: Condvar::new(),
            awake_bound: awake_bound.max(1),
        });
        let threads = RunThreads::over(pool);
        for i in 0..count {
            let (pool, runtime) = (threads.pool.clone(), runtime.clone());
            // On failure `threads` drops, and the threads already started exit.
            std::thread::Builder::new()
                .name(format!("sluice-run-{i}"))
                .stack_size(RUN_THREAD_STACK)
                .spawn(move || serve(&pool, i, &runtime))?;
        }
        Ok(threads)
    }

    /// The handle over `pool`, with the sweep taken as awake.
    fn over(pool: Arc<Pool>) -> Self {
        RunThreads {
            pool,
            epoch: Instant::now(),
            sweep_next: AtomicU64::new(SWEEP_AWAKE),
        }
    }

    /// Hands `tasks` (a claimed batch) to the threads in one go, waking no more of
    /// them than the module doc says. Returns whether the sweep must be kicked: jobs
    /// are left queued with a thread parked, and the sweep would look later than the
    /// queue's head goes stale (no kick when every thread is awake: each takes from the
    /// queue when its task ends).
    pub(super) fn submit(&self, tasks: impl IntoIterator<Item = Task>) -> bool {
        let now = Instant::now();
        let stale = {
            let mut state = self.pool.state.lock();
            state
                .tasks
                .extend(tasks.into_iter().map(|task| (now, task)));
            self.pool.wake_for_queue(&mut state, now);
            if state.idle == 0 {
                return false;
            }
            stale_at(&state)
        };
        stale.is_some_and(|at| self.sweep_next.load(Ordering::SeqCst) > self.nanos(at))
    }

    /// The sweep is awake (a submit from now on kicks it).
    pub(super) fn sweep_awake(&self) {
        self.sweep_next.store(SWEEP_AWAKE, Ordering::SeqCst);
    }

    /// The sweep sleeps until `at` (a submit whose queue goes stale earlier kicks it).
    pub(super) fn sweep_sleeps_until(&self, at: Instant) {
        self.sweep_next.store(self.nanos(at), Ordering::SeqCst);
    }

    /// `at` in nanoseconds since `epoch` (below [`SWEEP_AWAKE`]).
    fn nanos(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since)
            .unwrap_or(SWEEP_AWAKE - 1)
            .min(SWEEP_AWAKE - 1)
    }

    /// Wakes one more thread if the job longest in the queue has waited
    /// [`WAIT_BOUND`]; returns when to look again (`None`: no need until the next
    /// [`Self::submit`]).
    pub(super) fn wake_stale(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.pool.state.lock();
        if state.idle == 0 {
            // Every thread is awake and takes from the queue when its task ends.
            return None;
        }
        let idle = state.idle;
        // Threads whose tasks have grown old since the last look no longer count
        // toward the bound; a stale head wakes one more.
        self.pool.wake_for_queue(&mut state, now);
        if state.idle < idle {
            // The next look is a bound from now, so one thread is woken per bound.
            return (!state.tasks.is_empty()).then(|| now + WAIT_BOUND);
        }
        stale_at(&state)
    }
}

/// When the oldest queued task has waited [`WAIT_BOUND`].
fn stale_at(state: &State) -> Option<Instant> {
    state.tasks.front().map(|(at, _)| *at + WAIT_BOUND)
}

impl Drop for RunThreads {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock();
        state.closed = true;
        state.idle = 0;
        self.pool.wake.notify_all();
    }
}

/// A run thread's life: take a task, wake another parked thread if the queue needs one
/// (see the module doc), run it (a panic caught), until the pool is dropped and nothing
/// is left.
fn serve(pool: &Pool, index: usize, runtime: &Handle) {
    let _runtime = runtime.enter();
    let mut state = pool.state.lock();
    loop {
        if let Some((_, task)) = state.tasks.pop_front() {
            let now = Instant::now();
            state.started[index] = Some(now);
            if !state.tasks.is_empty() {
                pool.wake_for_queue(&mut state, now);
            }
            drop(state);
            // The task reports its own panic to whoever waits for its result; this
            // only keeps the thread (and its slot) alive whatever a task does.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            state = pool.state.lock();
            state.started[index] = None;
            continue;
        }
        if state.closed {
            return;
        }
        state.idle += 1;
        pool.wake.wait(&mut state);
        state.woken = state.woken.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(30);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn a_batch_runs_on_every_thread_and_a_panic_does_not_lose_one() {
        let runtime = runtime();
        let threads = RunThreads::start(2, 1, runtime.handle()).unwrap();
        let (done, finished) = mpsc::channel();
        // Two panics, then more tasks than threads: were a panic to take its thread
        // down, nothing would be left to run them.
        let mut batch: Vec<Task> = vec![
            Box::new(|| panic!("a task panics")),
            Box::new(|| panic!("another")),
        ];
        for i in 0..6 {
            let done = done.clone();
            batch.push(Box::new(move || done.send(i).unwrap()));
        }
        threads.submit(batch);
        let mut got: Vec<i32> = (0..6)
            .map(|_| finished.recv_timeout(BOUND).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_blocked_task_does_not_hold_up_a_batch_queued_behind_it() {
        // A bound of one: the thread woken for the batch blocks in its first task; the
        // stale looks (the executor's sweep) bring another for the two behind it.
        let runtime = runtime();
        let threads = RunThreads::start(3, 1, runtime.handle()).unwrap();
        let (release, blocked) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel();
        let mut batch: Vec<Task> = vec![Box::new(move || {
            let _ = blocked.recv();
        })];
        for _ in 0..2 {
            let done = done.clone();
            batch.push(Box::new(move || done.send(()).unwrap()));
        }
        threads.submit(batch);
        sweep_until(&threads, &finished, 2);
        release.send(()).unwrap();
    }

    /// Waits for `threads`' queue to be due a stale look, and looks, until `done`.
    fn sweep_until(threads: &RunThreads, done: &mpsc::Receiver<()>, n: usize) {
        let deadline = Instant::now() + BOUND;
        let mut seen = 0;
        while seen < n {
            assert!(Instant::now() < deadline, "the tasks never all ran");
            if let Some(at) = threads.wake_stale() {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            while done.try_recv().is_ok() {
                seen += 1;
            }
            if seen < n {
                let _ = done.recv_timeout(WAIT_BOUND).map(|()| seen += 1);
            }
        }
    }

    #[test]
    fn n_parked_threads_all_wake_for_n_tasks_that_wait_for_each_other() {
        // Four tasks on a Barrier(4) finish only once four threads run them at once:
        // the awake bound (one) lets the first in; the stale looks (the executor's
        // sweep) must bring the other three.
        const N: usize = 4;
        let runtime = runtime();
        let threads = RunThreads::start(N, 1, runtime.handle()).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(N));
        let (done, finished) = mpsc::channel();
        let batch: Vec<Task> = (0..N)
            .map(|_| {
                let (barrier, done) = (barrier.clone(), done.clone());
                Box::new(move || {
                    barrier.wait();
                    done.send(()).unwrap();
                }) as Task
            })
            .collect();
        threads.submit(batch);
        sweep_until(&threads, &finished, N);
    }

    /// A pool of `count` parked threads (none real: only the policy is looked at).
    fn parked(count: usize, awake_bound: usize) -> Pool {
        Pool {
            state: Mutex::new(State {
                tasks: VecDeque::new(),
                idle: count,
                woken: 0,
                started: vec![None; count],
                closed: false,
            }),
            wake: Condvar::new(),
            awake_bound,
        }
    }

    fn queue(pool: &Pool, n: usize, at: Instant) {
        let mut state = pool.state.lock();
        for _ in 0..n {
            state.tasks.push_back((at, Box::new(|| {}) as Task));
        }
    }

    #[test]
    fn a_batch_wakes_threads_up_to_the_bound_and_one_more_per_stale_look() {
        let now = Instant::now();
        // 64 parked, 64 fresh tasks, a bound of 2: two woken, not 64.
        let pool = parked(64, 2);
        queue(&pool, 64, now);
        pool.wake_for_queue(&mut pool.state.lock(), now);
        assert_eq!(pool.state.lock().idle, 62);
        // The two woken take one each (as `serve` does): with the rest fresh, none more.
        for _ in 0..2 {
            let mut state = pool.state.lock();
            state.tasks.pop_front();
            state.woken -= 1;
            let free = state.started.iter().position(Option::is_none).unwrap();
            state.started[free] = Some(now);
            pool.wake_for_queue(&mut state, now);
        }
        assert_eq!(pool.state.lock().idle, 62);
        // Once the head has waited the bound, a look wakes one more for it; and the two
        // running tasks are no longer young by then, so they leave the bound free for
        // two more (blocked threads do not hold queued work back).
        let later = now + WAIT_BOUND;
        pool.wake_for_queue(&mut pool.state.lock(), later);
        assert_eq!(pool.state.lock().idle, 59);
        // One fresh task never wakes two threads.
        let pool = parked(8, 4);
        queue(&pool, 1, now);
        pool.wake_for_queue(&mut pool.state.lock(), now);
        assert_eq!(pool.state.lock().idle, 7);
        // A fresh task queued beside a running one, under the bound: a core is left,
        // so a parked thread is woken for it.
        let pool = parked(2, 2);
        {
            let mut state = pool.state.lock();
            state.idle = 1;
            state.started[0] = Some(now);
        }
        queue(&pool, 1, now);
        pool.wake_for_queue(&mut pool.state.lock(), now);
        assert_eq!(pool.state.lock().idle, 0);
    }

    #[test]
    fn a_stale_look_wakes_one_thread_per_bound_and_none_when_all_are_awake() {
        let runtime = runtime();
        let threads = RunThreads::start(0, 1, runtime.handle()).unwrap();
        threads.pool.state.lock().idle = 0;
        // No threads: every one is awake (none parked), so a look wakes none and asks
        // for no further look.
        threads
            .pool
            .state
            .lock()
            .tasks
            .push_back((Instant::now(), Box::new(|| {})));
        assert_eq!(threads.wake_stale(), None);
        let pool = Arc::new(parked(4, 1));
        let threads = RunThreads::over(pool);
        let long_ago = Instant::now() - 2 * WAIT_BOUND;
        queue(&threads.pool, 3, long_ago);
        assert!(
            threads.wake_stale().is_some(),
            "a look again while tasks wait"
        );
        // One within the bound (nothing runs), one more for the stale head.
        assert_eq!(threads.pool.state.lock().idle, 2);
        threads.pool.state.lock().tasks.clear();
        assert_eq!(threads.wake_stale(), None);
    }

    #[test]
    fn a_task_running_past_the_wait_bound_does_not_count_toward_the_awake_bound() {
        let now = Instant::now();
        // Bound 1, one thread running a task started long ago (off the CPU: asleep,
        // blocked), one parked: a fresh job wakes the parked one at once.
        let pool = parked(2, 1);
        {
            let mut state = pool.state.lock();
            state.idle = 1;
            state.started[0] = Some(now - 2 * WAIT_BOUND);
        }
        queue(&pool, 1, now);
        pool.wake_for_queue(&mut pool.state.lock(), now);
        assert_eq!(pool.state.lock().idle, 0);
        // A young one does count: the fresh job waits for it (or a stale look).
        let pool = parked(2, 1);
        {
            let mut state = pool.state.lock();
            state.idle = 1;
            state.started[0] = Some(now);
        }
        queue(&pool, 1, now);
        pool.wake_for_queue(&mut pool.state.lock(), now);
        assert_eq!(pool.state.lock().idle, 1);
    }

    #[test]
    fn a_job_submitted_beside_a_blocked_one_starts_without_a_stale_look() {
        // Bound 1, two threads: the first job blocks on a channel. Once it is older
        // than the wait bound, a second job must start on the other thread with no
        // stale look (`wake_stale`, the executor's sweep) ever made.
        let runtime = runtime();
        let threads = RunThreads::start(2, 1, runtime.handle()).unwrap();
        let (release, blocked) = mpsc::channel::<()>();
        let (started, first_running) = mpsc::channel();
        threads.submit([Box::new(move || {
            started.send(Instant::now()).unwrap();
            let _ = blocked.recv();
        }) as Task]);
        let first_at = first_running.recv_timeout(BOUND).unwrap();
        // No event says "this task is now old"; wait out the bound itself.
        std::thread::sleep((first_at + WAIT_BOUND).saturating_duration_since(Instant::now()));
        let (done, second_ran) = mpsc::channel();
        threads.submit([Box::new(move || done.send(()).unwrap()) as Task]);
        second_ran
            .recv_timeout(BOUND)
            .expect("the second job waited behind the blocked one");
        release.send(()).unwrap();
    }

    #[test]
    fn tasks_run_inside_the_runtime_context() {
        let runtime = runtime();
        let threads = RunThreads::start(1, 1, runtime.handle()).unwrap();
        let (done, finished) = mpsc::channel();
        threads.submit([Box::new(move || {
            done.send(Handle::try_current().is_ok()).unwrap();
        }) as Task]);
        assert!(finished.recv_timeout(BOUND).unwrap());
    }
}
