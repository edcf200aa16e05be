//! The Tokio runtime `serve` runs its async side on: the claim loop, the Redis
//! connections' driver tasks (which also carry the run threads' Redis traffic: blob
//! chunks, module and artifact fetches, quota reservations), completions, renewals, the
//! watchdog sweep, the precompile follower and /metrics. Guests run on run threads of
//! their own (`executor::threads`), never on these; so does anything CPU-heavy a job
//! needs (a module's hash check, a compile, an artifact's tag check), on run threads or
//! the blocking pool.
//!
//! One thread is the default (`--async-threads 1`): a current-thread runtime on the
//! main thread, so nothing on the async side may block. Tasks are not handed from one
//! runtime thread to another, and a run thread's result wakes one known thread.
//! Measured on 2 cores with `sluice bench --workers 1 --jobs 50000` (no-op guest, glibc
//! malloc, load 1.4–2): 28 µs of worker CPU per job with one thread against 34–38 µs
//! with the multi-threaded runtime (0.3 against 1.0 context switches per job);
//! docs/benchmarks.md, "Worker overhead per job". More threads are for a worker whose
//! async side alone fills a core (tens of thousands of short jobs per second on one
//! process: `top -H` shows the main thread, `sluice-worker`, near 100% with idle slots).

use tokio::runtime::{Builder, Runtime};

/// Builds the runtime for `threads` async threads (at least 1): a current-thread
/// runtime for 1, a multi-threaded one with that many workers otherwise. I/O and
/// timers are on in both.
pub fn runtime(threads: usize) -> std::io::Result<Runtime> {
    if threads <= 1 {
        Builder::new_current_thread().enable_all().build()
    } else {
        Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_async_thread_is_a_current_thread_runtime_and_more_are_multi_threaded() {
        let one = runtime(1).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let two = runtime(2).unwrap();
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
    }

    #[test]
    fn a_thread_outside_a_current_thread_runtime_can_block_on_its_io_while_it_runs() {
        // What a run thread does (fleet.rs's RedisEnv, the module cache): block_on a
        // future that needs the runtime's I/O driver, from a thread of its own, while
        // the main thread is inside `Runtime::block_on`.
        let rt = runtime(1).unwrap();
        let handle = rt.handle().clone();
        let answer = rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // I/O, a timer and a task spawned on the runtime, all from this thread.
                let connected = handle
                    .block_on(async move { tokio::net::TcpStream::connect(addr).await.is_ok() });
                handle.block_on(async {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                });
                let spawned = handle.spawn(async { 7 });
                let joined = handle.block_on(spawned).unwrap();
                tx.send(connected && joined == 7).unwrap();
            });
            accept.await.unwrap().unwrap();
            // Bounded: a thread that can never finish fails the test instead of hanging it.
            tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(30)))
                .await
                .unwrap()
        });
        assert_eq!(answer, Ok(true));
    }
}
