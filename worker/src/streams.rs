//! Guest stdio that streams: stdin pulls from any `Read` chunk by chunk, stdout pushes
//! to any `Write` under a byte cap. Nothing here ever holds a whole input or output, so
//! a 1 GiB job costs the worker a few buffers, not a gigabyte.
//!
//! Both implement wasmtime-wasi's blocking stream traits directly (as its `InputFile`
//! and `OutputFile` do) rather than through an async adapter: guests run on blocking
//! threads, where a plain `read`/`write` is the fastest path.
//!
//! The job's reader and writer may stall (a Redis blob that stops arriving, a pipe
//! nobody writes to), and a blocked `read` or `write` cannot be interrupted. So once a
//! job has a deadline, the reader and the writer are driven by a helper thread
//! ([`crate::blocking`]) and the guest waits for them only until its deadline: past it,
//! the guest is stopped as `timeout` and a stuck helper is left to finish on its own.
//!
//! Stdin is in its own file (`streams/stdin.rs`), re-exported here as [`GuestStdin`].

mod stdin;

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::blocking;
use crate::sandbox::Interrupted;

pub use stdin::GuestStdin;

/// Largest single read handed to the guest: bounds the buffer one `fd_read` allocates.
const MAX_READ_BYTES: usize = 64 << 10;

/// Output bytes queued for a helper-driven writer before the guest waits for room:
/// bounds what a stalled sink makes the worker hold per job.
const OUTPUT_WINDOW_BYTES: usize = 256 << 10;

/// The error a guest-side wait returns when the job's deadline passed first.
fn deadline_passed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the job's deadline passed while {what}"),
    )
}

/// What happens to bytes past the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The write fails and the guest is stopped: the job ends as `output_limit`.
    Stop,
    /// The bytes are dropped and counted; the guest goes on (stderr diagnostics).
    Truncate,
}

/// Bytes on their way from the guest to a helper-driven sink.
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

struct PipeState {
    /// Queued chunks (the guest's own `Bytes` where it has them: no copy).
    buf: VecDeque<Bytes>,
    /// Bytes in `buf`.
    queued: usize,
    /// No more bytes will come: flush and stop.
    closed: bool,
    /// The helper is gone (flushed, or failed).
    done: bool,
    error: Option<String>,
}

impl Pipe {
    /// Queues `bytes`, waiting for room until `deadline`.
    fn push(&self, bytes: Chunk<'_>, deadline: Instant) -> Result<(), WriteRefused> {
        let mut state = self.state.lock();
        let mut at = 0;
        while at < bytes.len() {
            if let Some(e) = &state.error {
                return Err(WriteRefused::Sink(e.clone()));
            }
            let room = OUTPUT_WINDOW_BYTES.saturating_sub(state.queued);
            if room == 0 {
                let wait = deadline.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    return Err(WriteRefused::Deadline);
                }
                self.changed.wait_for(&mut state, wait);
                continue;
            }
            let take = room.min(bytes.len() - at);
            let was_empty = state.buf.is_empty();
            state.buf.push_back(bytes.piece(at..at + take));
            state.queued += take;
            at += take;
            if was_empty {
                self.changed.notify_all();
            }
        }
        Ok(())
    }

    /// Closes the pipe and waits until the helper has flushed, at most until `deadline`.
    fn close(&self, deadline: Instant) -> Result<(), FinishError> {
        let mut state = self.state.lock();
        state.closed = true;
        self.changed.notify_all();
        while !state.done {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Err(FinishError::Deadline);
            }
            self.changed.wait_for(&mut state, wait);
        }
        match &state.error {
            Some(e) => Err(FinishError::Sink(e.clone())),
            None => Ok(()),
        }
    }

    /// The helper's loop: writes what the guest queued, flushes once closed.
    fn drain<W: Write>(&self, mut sink: W, stop: &AtomicBool) {
        let mut batch = VecDeque::new();
        loop {
            let mut state = self.state.lock();
            while state.buf.is_empty() && !state.closed {
                self.changed.wait(&mut state);
            }
            let written = if state.buf.is_empty() {
                drop(state);
                let flushed = sink.flush();
                state = self.state.lock();
                state.done = true;
                flushed
            } else {
                std::mem::swap(&mut state.buf, &mut batch);
                state.queued = 0;
                // Room again for a guest waiting on a full window.
                self.changed.notify_all();
                drop(state);
                let written = batch.drain(..).try_for_each(|chunk| sink.write_all(&chunk));
                batch.clear();
                state = self.state.lock();
                written
            };
            if let Err(e) = written {
                state.error = Some(e.to_string());
                state.done = true;
                stop.store(true, Ordering::Relaxed);
            }
            if state.done {
                self.changed.notify_all();
                return;
            }
        }
    }
}

/// Bytes offered for output: borrowed (copied only if queued) or already owned.
enum Chunk<'a> {
    Borrowed(&'a [u8]),
    Owned(Bytes),
}

impl Chunk<'_> {
    fn len(&self) -> usize {
        match self {
            Chunk::Borrowed(b) => b.len(),
            Chunk::Owned(b) => b.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Borrowed(b) => b,
            Chunk::Owned(b) => b,
        }
    }

    fn prefix(self, n: usize) -> Self {
        match self {
            Chunk::Borrowed(b) => Chunk::Borrowed(&b[..n]),
            Chunk::Owned(b) => Chunk::Owned(b.slice(..n)),
        }
    }

    fn piece(&self, range: std::ops::Range<usize>) -> Bytes {
        match self {
            Chunk::Borrowed(b) => Bytes::copy_from_slice(&b[range]),
            Chunk::Owned(b) => b.slice(range),
        }
    }
}

enum Sink<W> {
    /// Written on the guest's thread (in-memory sinks, or no deadline).
    Direct(W),
    /// To be driven by a helper from the first write on.
    Lazy(W),
    /// Kept in memory on the guest's thread while the output fits `keep` bytes; the
    /// first write past it hands what was kept and the rest to `then`, driven by a
    /// helper from there on (as [`Sink::Lazy`]). An output that never spills starts
    /// no helper and never touches `then`.
    Spill {
        kept: Vec<u8>,
        keep: usize,
        then: W,
    },
    Pumped(Arc<Pipe>),
    /// The helper could not be started.
    Broken,
}

struct OutputState<W> {
    sink: Sink<W>,
    written: u64,
    cap: u64,
    overflow: Overflow,
    overflowed: bool,
    error: Option<String>,
    deadline: Option<Instant>,
}

impl<W> Drop for OutputState<W> {
    fn drop(&mut self) {
        // Output dropped without `finish` (a panic on the way): let the helper flush
        // and exit rather than wait for bytes that will never come.
        if let Sink::Pumped(pipe) = &self.sink {
            pipe.state.lock().closed = true;
            pipe.changed.notify_all();
        }
    }
}

/// A guest's stdout (or stderr): writes go to the sink until the cap.
pub struct GuestOutput<W> {
    state: Arc<Mutex<OutputState<W>>>,
    /// Raised when the guest must be stopped (cap reached under [`Overflow::Stop`], or
    /// the sink failed); the sandbox's epoch callback checks it.
    stop: Arc<AtomicBool>,
}

impl<W> Clone for GuestOutput<W> {
    fn clone(&self) -> Self {
        GuestOutput {
            state: self.state.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// Why a host-side write was refused.
#[derive(Debug)]
pub enum WriteRefused {
    /// The cap was reached; the bytes up to it were written.
    CapReached,
    /// The sink failed.
    Sink(String),
    /// The sink did not take the bytes before the job's deadline.
    Deadline,
}

/// Why the output could not be completed once the guest ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FinishError {
    /// The sink failed.
    Sink(String),
    /// The sink did not take everything before the job's deadline.
    Deadline,
}

impl std::fmt::Display for FinishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FinishError::Sink(e) => f.write_str(e),
            FinishError::Deadline => f.write_str("the job's deadline passed while writing output"),
        }
    }
}

impl<W: Write + Send + 'static> GuestOutput<W> {
    /// Output to `sink`, capped at `cap` bytes, written on the guest's thread: for
    /// sinks that never block (memory).
    pub fn new(sink: W, cap: u64, overflow: Overflow, stop: Arc<AtomicBool>) -> Self {
        Self::build(Sink::Direct(sink), cap, overflow, stop, None)
    }

    /// Output to `sink`, capped at `cap` bytes, written by a helper thread; the guest
    /// waits for the sink only until `deadline`.
    pub fn with_deadline(
        sink: W,
        cap: u64,
        overflow: Overflow,
        stop: Arc<AtomicBool>,
        deadline: Instant,
    ) -> Self {
        Self::build(Sink::Lazy(sink), cap, overflow, stop, Some(deadline))
    }

    /// Output capped at `cap` bytes, kept in memory on the guest's thread up to `keep`
    /// bytes ([`Self::take_kept`] hands them back); the first write past `keep` sends
    /// what was kept and everything after to `then` through a helper thread, which the
    /// guest waits for only until `deadline` (as [`Self::with_deadline`]).
    pub fn spill_buffered(
        then: W,
        keep: usize,
        cap: u64,
        overflow: Overflow,
        stop: Arc<AtomicBool>,
        deadline: Instant,
    ) -> Self {
        let sink = Sink::Spill {
            kept: Vec::new(),
            keep,
            then,
        };
        Self::build(sink, cap, overflow, stop, Some(deadline))
    }

    fn build(
        sink: Sink<W>,
        cap: u64,
        overflow: Overflow,
        stop: Arc<AtomicBool>,
        deadline: Option<Instant>,
    ) -> Self {
        GuestOutput {
            state: Arc::new(Mutex::new(OutputState {
                sink,
                written: 0,
                cap,
                overflow,
                overflowed: false,
                error: None,
                deadline,
            })),
            stop,
        }
    }

    /// Writes `bytes`, up to the cap.
    pub fn write_capped(&self, bytes: &[u8]) -> Result<(), WriteRefused> {
        self.write_chunk(Chunk::Borrowed(bytes))
    }

    fn write_chunk(&self, bytes: Chunk<'_>) -> Result<(), WriteRefused> {
        let offered = bytes.len();
        let mut state = self.state.lock();
        if let Some(e) = &state.error {
            return Err(WriteRefused::Sink(e.clone()));
        }
        let room = state.cap.saturating_sub(state.written);
        let take = offered.min(usize::try_from(room).unwrap_or(usize::MAX));
        if take > 0 {
            match self.deliver(&mut state, bytes.prefix(take)) {
                Ok(()) => state.written += take as u64,
                Err(WriteRefused::Sink(e)) => {
                    state.error = Some(e.clone());
                    self.stop.store(true, Ordering::Relaxed);
                    return Err(WriteRefused::Sink(e));
                }
                Err(refused) => return Err(refused),
            }
        }
        if take < offered {
            state.overflowed = true;
            if state.overflow == Overflow::Stop {
                self.stop.store(true, Ordering::Relaxed);
                return Err(WriteRefused::CapReached);
            }
        }
        Ok(())
    }

    /// Starts the helper that drains a pipe into `sink`.
    fn start_helper(&self, sink: W) -> Result<Arc<Pipe>, WriteRefused> {
        let pipe = Arc::new(Pipe {
            state: Mutex::new(PipeState {
                buf: VecDeque::new(),
                queued: 0,
                closed: false,
                done: false,
                error: None,
            }),
            changed: Condvar::new(),
        });
        let (helper_pipe, stop) = (pipe.clone(), self.stop.clone());
        blocking::spawn(move || helper_pipe.drain(sink, &stop))
            .map_err(|e| WriteRefused::Sink(e.to_string()))?;
        Ok(pipe)
    }

    fn deliver(&self, state: &mut OutputState<W>, bytes: Chunk<'_>) -> Result<(), WriteRefused> {
        if let Sink::Spill { kept, keep, .. } = &mut state.sink {
            if bytes.len() <= keep.saturating_sub(kept.len()) {
                let needed = kept.len() + bytes.len();
                if needed > kept.capacity() {
                    // Doubling as `Vec` would, but never past `keep`: the memory an
                    // output kept on the guest's thread holds is bounded by `keep`.
                    let grown = needed.max(kept.capacity().saturating_mul(2)).min(*keep);
                    kept.reserve_exact(grown - kept.len());
                }
                kept.extend_from_slice(bytes.as_slice());
                return Ok(());
            }
            let Sink::Spill { kept, then, .. } = std::mem::replace(&mut state.sink, Sink::Broken)
            else {
                unreachable!("matched above")
            };
            let pipe = self.start_helper(then)?;
            state.sink = Sink::Pumped(pipe.clone());
            if !kept.is_empty() {
                let deadline = state.deadline.unwrap_or_else(Instant::now);
                pipe.push(Chunk::Owned(kept.into()), deadline)?;
            }
        }
        if let Sink::Lazy(_) = state.sink {
            let Sink::Lazy(sink) = std::mem::replace(&mut state.sink, Sink::Broken) else {
                unreachable!("matched above")
            };
            state.sink = Sink::Pumped(self.start_helper(sink)?);
        }
        match &mut state.sink {
            Sink::Direct(sink) => sink
                .write_all(bytes.as_slice())
                .map_err(|e| WriteRefused::Sink(e.to_string())),
            Sink::Pumped(pipe) => pipe.push(bytes, state.deadline.unwrap_or_else(Instant::now)),
            Sink::Lazy(_) | Sink::Spill { .. } | Sink::Broken => Err(WriteRefused::Sink(
                "cannot start a host I/O helper thread".into(),
            )),
        }
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> u64 {
        self.state.lock().cap
    }

    /// Bytes accepted for the sink.
    pub fn written(&self) -> u64 {
        self.state.lock().written
    }

    /// Whether more than the cap was offered.
    pub fn overflowed(&self) -> bool {
        self.state.lock().overflowed
    }

    /// Flushes the sink (waiting for a helper at most until the deadline); the first
    /// sink error seen, if any.
    pub fn finish(&self) -> Result<(), FinishError> {
        let mut state = self.state.lock();
        if let Some(e) = &state.error {
            return Err(FinishError::Sink(e.clone()));
        }
        let deadline = state.deadline.unwrap_or_else(Instant::now);
        match &mut state.sink {
            // Never written to: there is nothing of the guest's to flush, and a sink
            // that may block is not touched on the guest's thread.
            Sink::Lazy(_) | Sink::Spill { .. } | Sink::Broken => Ok(()),
            Sink::Direct(sink) => sink.flush().map_err(|e| FinishError::Sink(e.to_string())),
            Sink::Pumped(pipe) => pipe.close(deadline),
        }
    }

    /// Takes the sink's contents out (for in-memory sinks such as captured stderr).
    pub fn take_sink(&self) -> W
    where
        W: Default,
    {
        match &mut self.state.lock().sink {
            Sink::Direct(sink) | Sink::Lazy(sink) => std::mem::take(sink),
            Sink::Spill { .. } | Sink::Pumped(_) | Sink::Broken => W::default(),
        }
    }

    /// Takes out the bytes a spill-buffered output kept in memory, when it never
    /// spilled: `None` once it did (its bytes went to the writer), or for another sink.
    pub fn take_kept(&self) -> Option<Vec<u8>> {
        match &mut self.state.lock().sink {
            Sink::Spill { kept, .. } => Some(std::mem::take(kept)),
            _ => None,
        }
    }

    /// Whether a helper thread was started for this output (or tried to be): a
    /// spill-buffered output that stayed within its bound never starts one.
    #[cfg(test)]
    fn helper_started(&self) -> bool {
        matches!(self.state.lock().sink, Sink::Pumped(_) | Sink::Broken)
    }
}

impl<W> IsTerminal for GuestOutput<W> {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl<W: Write + Send + 'static> StdoutStream for GuestOutput<W> {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl<W: Write + Send + 'static> Pollable for GuestOutput<W> {
    async fn ready(&mut self) {}
}

fn refused_io(refused: WriteRefused) -> std::io::Error {
    match refused {
        WriteRefused::CapReached => {
            std::io::Error::new(std::io::ErrorKind::StorageFull, "output limit reached")
        }
        WriteRefused::Sink(e) => std::io::Error::other(e),
        WriteRefused::Deadline => deadline_passed("writing output"),
    }
}

impl<W: Write + Send + 'static> OutputStream for GuestOutput<W> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_chunk(Chunk::Owned(bytes))
            .map_err(|refused| match refused {
                WriteRefused::Deadline => StreamError::Trap(Interrupted::Timeout.into()),
                refused => StreamError::LastOperationFailed(refused_io(refused).into()),
            })
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Flushing per guest write would cost a syscall per 4 KiB; the sandbox flushes
        // once when the guest ends.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_READ_BYTES)
    }
}

impl<W: Write + Send + 'static> AsyncWrite for GuestOutput<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.write_capped(buf)
                .map(|()| buf.len())
                .map_err(refused_io),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_stops_at_the_cap_and_raises_stop() {
        let stop = Arc::new(AtomicBool::new(false));
        let out = GuestOutput::new(Vec::new(), 5, Overflow::Stop, stop.clone());
        out.write_capped(b"abc").unwrap();
        assert!(matches!(
            out.write_capped(b"defg"),
            Err(WriteRefused::CapReached)
        ));
        assert!(stop.load(Ordering::Relaxed));
        assert_eq!(out.take_sink(), b"abcde");
        assert!(out.overflowed());
    }

    #[test]
    fn a_helper_driven_output_delivers_everything_on_finish() {
        let sink = Recorder::default();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let stop = Arc::new(AtomicBool::new(false));
        let out = GuestOutput::with_deadline(sink.clone(), 1 << 30, Overflow::Stop, stop, deadline);
        let block = vec![7u8; 100_000];
        for _ in 0..10 {
            out.write_capped(&block).unwrap();
        }
        out.finish().unwrap();
        assert_eq!(sink.take().len(), 1_000_000);
        assert_eq!(out.written(), 1_000_000);
    }

    /// A writer that records what it was given, shared with the test: the buffer a
    /// `JobWriter::Memory` output is written into.
    type Recorder = crate::job_io::MemoryOutput;

    fn spilling(then: Recorder, keep: usize, cap: u64) -> (GuestOutput<Recorder>, Arc<AtomicBool>) {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let out =
            GuestOutput::spill_buffered(then, keep, cap, Overflow::Stop, stop.clone(), deadline);
        (out, stop)
    }

    #[test]
    fn a_spill_buffered_output_within_its_bound_starts_no_helper() {
        let then = Recorder::default();
        let (out, stop) = spilling(then.clone(), 10, 1 << 20);
        out.write_capped(b"hello").unwrap();
        out.write_capped(b"world").unwrap();
        out.finish().unwrap();
        assert!(
            !out.helper_started(),
            "no helper thread for an output within the bound"
        );
        assert_eq!(out.take_kept().as_deref(), Some(&b"helloworld"[..]));
        assert!(then.take().is_empty(), "the spill writer is never touched");
        assert_eq!(out.written(), 10);
        assert!(!stop.load(Ordering::Relaxed));
    }

    #[test]
    fn a_spill_buffered_output_past_its_bound_sends_everything_in_order() {
        let then = Recorder::default();
        let (out, _stop) = spilling(then.clone(), 10, 1 << 30);
        out.write_capped(b"hello").unwrap();
        out.write_capped(b"world").unwrap();
        out.write_capped(b"!").unwrap();
        let block = vec![7u8; 300_000];
        out.write_capped(&block).unwrap();
        out.finish().unwrap();
        assert!(out.helper_started());
        assert_eq!(out.take_kept(), None, "a spilled output keeps nothing");
        let sent = then.take();
        assert_eq!(&sent[..11], b"helloworld!");
        assert_eq!(&sent[11..], &block[..]);
        assert_eq!(out.written(), 300_011);
    }

    #[test]
    fn a_spill_buffered_output_stops_at_the_cap_either_side_of_its_bound() {
        // The cap under the bound: reached in memory, no helper.
        let (out, stop) = spilling(Recorder::default(), 100, 5);
        assert!(matches!(
            out.write_capped(b"abcdefg"),
            Err(WriteRefused::CapReached)
        ));
        assert!(stop.load(Ordering::Relaxed) && out.overflowed());
        assert!(!out.helper_started());
        assert_eq!(out.take_kept().as_deref(), Some(&b"abcde"[..]));

        // The cap past the bound: reached after the spill, what is under it delivered.
        let then = Recorder::default();
        let (out, stop) = spilling(then.clone(), 4, 8);
        out.write_capped(b"abc").unwrap();
        assert!(matches!(
            out.write_capped(b"defghij"),
            Err(WriteRefused::CapReached)
        ));
        assert!(stop.load(Ordering::Relaxed) && out.overflowed());
        out.finish().unwrap();
        assert_eq!(then.take(), b"abcdefgh");
    }

    #[test]
    fn truncating_output_drops_and_goes_on() {
        let stop = Arc::new(AtomicBool::new(false));
        let out = GuestOutput::new(Vec::new(), 2, Overflow::Truncate, stop.clone());
        out.write_capped(b"abc").unwrap();
        out.write_capped(b"d").unwrap();
        assert!(!stop.load(Ordering::Relaxed));
        assert_eq!(out.take_sink(), b"ab");
        assert!(out.overflowed());
    }
}
