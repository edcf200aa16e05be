//! The run threads: long-lived threads, one per job slot, on which guests run.
//!
//! Guests run synchronously (wasmtime-wasi's async stdio on a multi-threaded runtime
//! streams ~10x slower), so each run needs a thread of its own. A `spawn_blocking` per
//! job paid for a trip through the runtime's blocking pool every time; these threads
//! live as long as the worker loop, so a run is one push onto their queue and, when a
//! thread is idle, one wakeup. A claimed batch is handed over in one push: one idle
//! thread is woken for it, and each thread that takes a job while more are waiting
//! wakes the next idle one. Short jobs may be drained by the threads already awake
//! before the chain reaches the rest; in the no-op bench it usually reaches them all,
//! a wakeup per job (`docs/benchmarks.md`, "Worker overhead per job").
//!
//! A task that panics is caught here: the thread (and with it the job slot) lives on.
//! A task that never returns keeps its thread; the loop counts it as stuck and holds
//! its slot, so there is never more work queued than threads able to take it.
//! Dropping [`RunThreads`] lets each thread finish what it holds and exit.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::runtime::Handle;

/// One job's work on a run thread.
pub(super) type Task = Box<dyn FnOnce() + Send>;

/// The work queue the threads share.
struct State {
    tasks: VecDeque<Task>,
    /// Threads parked on the condvar and not yet woken: whoever wakes one takes it off.
    idle: usize,
    /// Set when the pool is dropped: threads exit once the queue is empty.
    closed: bool,
}

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
}

impl Pool {
    /// Wakes one parked thread, if any is parked.
    fn wake_one(&self, state: &mut State) {
        if state.idle > 0 {
            state.idle -= 1;
            self.wake.notify_one();
        }
    }
}

/// The worker loop's run threads.
pub(super) struct RunThreads {
    pool: Arc<Pool>,
}

impl RunThreads {
    /// Starts `count` threads, each inside `runtime`'s context (so a [`super::JobEnv`]
    /// call may `block_on` it or spawn on it, as it could on a blocking-pool thread).
    pub(super) fn start(count: usize, runtime: &Handle) -> std::io::Result<Self> {
        let pool = Arc::new(Pool {
            state: Mutex::new(State {
                tasks: VecDeque::new(),
                idle: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let threads = RunThreads { pool };
        for i in 0..count {
            let (pool, runtime) = (threads.pool.clone(), runtime.clone());
            // On failure `threads` drops, and the threads already started exit.
            std::thread::Builder::new()
                .name(format!("sluice-run-{i}"))
                .spawn(move || serve(&pool, &runtime))?;
        }
        Ok(threads)
    }

    /// Hands `tasks` (a claimed batch) to the threads in one go.
    pub(super) fn submit(&self, tasks: impl IntoIterator<Item = Task>) {
        let mut state = self.pool.state.lock();
        let before = state.tasks.len();
        state.tasks.extend(tasks);
        if state.tasks.len() > before {
            self.pool.wake_one(&mut state);
        }
    }
}

impl Drop for RunThreads {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock();
        state.closed = true;
        state.idle = 0;
        self.pool.wake.notify_all();
    }
}

/// A run thread's life: take a task, wake the next idle thread if more are waiting, run
/// it (a panic caught), until the pool is dropped and nothing is left.
fn serve(pool: &Pool, runtime: &Handle) {
    let _runtime = runtime.enter();
    let mut state = pool.state.lock();
    loop {
        if let Some(task) = state.tasks.pop_front() {
            if !state.tasks.is_empty() {
                pool.wake_one(&mut state);
            }
            drop(state);
            // The task reports its own panic to whoever waits for its result; this
            // only keeps the thread (and its slot) alive whatever a task does.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            state = pool.state.lock();
            continue;
        }
        if state.closed {
            return;
        }
        state.idle += 1;
        pool.wake.wait(&mut state);
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
        let threads = RunThreads::start(2, runtime.handle()).unwrap();
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
        let runtime = runtime();
        let threads = RunThreads::start(3, runtime.handle()).unwrap();
        let (release, blocked) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel();
        let mut batch: Vec<Task> = vec![Box::new(move || {
            let _ = blocked.recv();
        })];
        for i in 0..2 {
            let done = done.clone();
            batch.push(Box::new(move || done.send(i).unwrap()));
        }
        threads.submit(batch);
        let mut got: Vec<i32> = (0..2)
            .map(|_| finished.recv_timeout(BOUND).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
        release.send(()).unwrap();
    }

    #[test]
    fn tasks_run_inside_the_runtime_context() {
        let runtime = runtime();
        let threads = RunThreads::start(1, runtime.handle()).unwrap();
        let (done, finished) = mpsc::channel();
        threads.submit([Box::new(move || {
            done.send(Handle::try_current().is_ok()).unwrap();
        }) as Task]);
        assert!(finished.recv_timeout(BOUND).unwrap());
    }
}
