//! Helper threads for host I/O that may block for longer than a job may live.
//!
//! A guest's stdin and stdout sit on readers and writers the sandbox does not control
//! (a Redis blob, a pipe, a terminal); a blocking `read` or `write` on them cannot be
//! interrupted. Such calls run here, on a helper thread, while the guest's own thread
//! waits for them only until its deadline. A call that never returns keeps its helper
//! thread busy for good, so the pool grows past stuck helpers instead of queueing
//! behind them; idle helpers exit after a while, so a burst costs nothing afterwards.

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

type Task = Box<dyn FnOnce() + Send>;

/// How long an idle helper waits for work before its thread exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

struct State {
    queue: VecDeque<Task>,
    /// Helpers parked on the condvar. A task is given a new thread when the queue holds
    /// more tasks than there are idle helpers to take them.
    idle: usize,
}

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
}

static POOL: LazyLock<Pool> = LazyLock::new(|| Pool {
    state: Mutex::new(State {
        queue: VecDeque::new(),
        idle: 0,
    }),
    wake: Condvar::new(),
});

/// Why a helper could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a host I/O helper thread: {0}")]
pub struct SpawnFailed(#[from] std::io::Error);

/// Runs `task` on a helper thread.
pub fn spawn(task: impl FnOnce() + Send + 'static) -> Result<(), SpawnFailed> {
    let pool = &*POOL;
    let mut state = pool.state.lock();
    state.queue.push_back(Box::new(task));
    if state.queue.len() <= state.idle {
        pool.wake.notify_one();
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("sluice-guest-io".into())
        .spawn(helper);
    if let Err(e) = spawned {
        // Without a helper the task would wait for one that may never come.
        state.queue.pop_back();
        return Err(SpawnFailed(e));
    }
    Ok(())
}

fn helper() {
    let pool = &*POOL;
    let mut state = pool.state.lock();
    loop {
        if let Some(task) = state.queue.pop_front() {
            drop(state);
            // A panicking task must not take the helper (and its queue share) down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            state = pool.state.lock();
            continue;
        }
        state.idle += 1;
        let waited = pool.wake.wait_for(&mut state, IDLE_EXIT);
        state.idle -= 1;
        if waited.timed_out() && state.queue.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_stuck_task_does_not_hold_up_the_next() {
        let (release, stuck) = mpsc::channel::<()>();
        spawn(move || {
            let _ = stuck.recv();
        })
        .unwrap();
        let (done, finished) = mpsc::channel();
        for i in 0..4 {
            let done = done.clone();
            spawn(move || done.send(i).unwrap()).unwrap();
        }
        let mut got: Vec<i32> = (0..4)
            .map(|_| finished.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
        release.send(()).unwrap();
    }
}
