//! Interrupting a batch: the first SIGINT or SIGTERM asks it to stop starting jobs and
//! let the running ones finish; the second asks it to abort them; a third ends the
//! process at once (exit 130), for a phase that does not watch for the abort (upload,
//! enqueue, `attach`).

use tokio_util::sync::CancellationToken;

/// The exit status of an interrupted batch (128 + SIGINT, as shells report Ctrl-C).
pub const INTERRUPTED_EXIT: u8 = 130;

/// What the signals so far asked for.
#[derive(Clone, Debug, Default)]
pub struct Interrupts {
    /// Cancelled by the first signal: start no more jobs.
    pub stop: CancellationToken,
    /// Cancelled by the second signal: abandon the jobs still running.
    pub abort: CancellationToken,
}

impl Interrupts {
    /// Interrupts that only come when the caller cancels them (a library caller, a
    /// test).
    pub fn never() -> Self {
        Interrupts::default()
    }

    /// Interrupts from this process's SIGINT and SIGTERM, from now on (the default
    /// action, ending the process at once, no longer applies). Call inside a tokio
    /// runtime.
    pub fn from_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupts = Interrupts::default();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (stop, abort) = (interrupts.stop.clone(), interrupts.abort.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    got = int.recv() => if got.is_none() { break },
                    got = term.recv() => if got.is_none() { break },
                }
                seen += 1;
                match seen {
                    1 => stop.cancel(),
                    2 => abort.cancel(),
                    _ => std::process::exit(i32::from(INTERRUPTED_EXIT)),
                }
            }
        });
        Ok(interrupts)
    }

    /// Whether the first signal came.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Whether the second signal came.
    pub fn aborting(&self) -> bool {
        self.abort.is_cancelled()
    }
}
