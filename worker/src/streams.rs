//! Guest stdio that streams: stdin pulls from any `Read` chunk by chunk, stdout pushes
//! to any `Write` under a byte cap. Nothing here ever holds a whole input or output, so
//! a 1 GiB job costs the worker a few buffers, not a gigabyte.
//!
//! Both implement wasmtime-wasi's blocking stream traits directly (as its `InputFile`
//! and `OutputFile` do) rather than through an async adapter: guests run on blocking
//! threads, where a plain `read`/`write` is the fastest path.

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Largest single read handed to the guest: bounds the buffer one `fd_read` allocates.
const MAX_READ_BYTES: usize = 64 << 10;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is counters and a sink; a panic elsewhere cannot make it unsafe to read.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct StdinState {
    reader: Box<dyn Read + Send>,
    consumed: u64,
    error: Option<String>,
}

/// A guest's stdin, reading from the job's input as the guest asks for it.
#[derive(Clone)]
pub struct GuestStdin(Arc<Mutex<StdinState>>);

impl GuestStdin {
    /// Stdin fed from `reader`.
    pub fn new(reader: Box<dyn Read + Send>) -> Self {
        GuestStdin(Arc::new(Mutex::new(StdinState {
            reader,
            consumed: 0,
            error: None,
        })))
    }

    /// Bytes the guest has read so far.
    pub fn consumed(&self) -> u64 {
        lock(&self.0).consumed
    }

    /// The host-side read error, if reading the input failed.
    pub fn error(&self) -> Option<String> {
        lock(&self.0).error.clone()
    }

    /// Reads up to `buf.len()` bytes for the host itself (the raw ABI).
    pub fn read_into(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut state = lock(&self.0);
        let n = loop {
            match state.reader.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match n {
            Ok(n) => {
                state.consumed += n as u64;
                Ok(n)
            }
            Err(e) => {
                state.error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

impl IsTerminal for GuestStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for GuestStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStdin {
    async fn ready(&mut self) {}
}

impl InputStream for GuestStdin {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let mut buf = vec![0u8; size.min(MAX_READ_BYTES)];
        match self.read_into(&mut buf) {
            Ok(0) if !buf.is_empty() => Err(StreamError::Closed),
            Ok(n) => {
                buf.truncate(n);
                Ok(buf.into())
            }
            Err(e) => Err(StreamError::LastOperationFailed(e.into())),
        }
    }
}

impl AsyncRead for GuestStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.read_into(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// What happens to bytes past the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The write fails and the guest is stopped: the job ends as `output_limit`.
    Stop,
    /// The bytes are dropped and counted; the guest goes on (stderr diagnostics).
    Truncate,
}

struct OutputState<W> {
    sink: W,
    written: u64,
    cap: u64,
    overflow: Overflow,
    overflowed: bool,
    error: Option<String>,
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
}

impl<W: Write + Send + 'static> GuestOutput<W> {
    /// Output to `sink`, capped at `cap` bytes.
    pub fn new(sink: W, cap: u64, overflow: Overflow, stop: Arc<AtomicBool>) -> Self {
        GuestOutput {
            state: Arc::new(Mutex::new(OutputState {
                sink,
                written: 0,
                cap,
                overflow,
                overflowed: false,
                error: None,
            })),
            stop,
        }
    }

    /// Writes `bytes`, up to the cap.
    pub fn write_capped(&self, bytes: &[u8]) -> Result<(), WriteRefused> {
        let mut state = lock(&self.state);
        if let Some(e) = &state.error {
            return Err(WriteRefused::Sink(e.clone()));
        }
        let room = state.cap.saturating_sub(state.written);
        let take = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take > 0 {
            if let Err(e) = state.sink.write_all(&bytes[..take]) {
                state.error = Some(e.to_string());
                self.stop.store(true, Ordering::Relaxed);
                return Err(WriteRefused::Sink(e.to_string()));
            }
            state.written += take as u64;
        }
        if take < bytes.len() {
            state.overflowed = true;
            if state.overflow == Overflow::Stop {
                self.stop.store(true, Ordering::Relaxed);
                return Err(WriteRefused::CapReached);
            }
        }
        Ok(())
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> u64 {
        lock(&self.state).cap
    }

    /// Bytes written to the sink.
    pub fn written(&self) -> u64 {
        lock(&self.state).written
    }

    /// Whether more than the cap was offered.
    pub fn overflowed(&self) -> bool {
        lock(&self.state).overflowed
    }

    /// Flushes the sink; the first sink error seen, if any.
    pub fn finish(&self) -> Result<(), String> {
        let mut state = lock(&self.state);
        if let Some(e) = &state.error {
            return Err(e.clone());
        }
        state.sink.flush().map_err(|e| e.to_string())
    }

    /// Takes the sink's contents out (for in-memory sinks such as captured stderr).
    pub fn take_sink(&self) -> W
    where
        W: Default,
    {
        std::mem::take(&mut lock(&self.state).sink)
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

impl<W: Write + Send + 'static> OutputStream for GuestOutput<W> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_capped(&bytes).map_err(|refused| {
            let e = match refused {
                WriteRefused::CapReached => {
                    std::io::Error::new(std::io::ErrorKind::StorageFull, "output limit reached")
                }
                WriteRefused::Sink(e) => std::io::Error::other(e),
            };
            StreamError::LastOperationFailed(e.into())
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
        Poll::Ready(match self.write_capped(buf) {
            Ok(()) => Ok(buf.len()),
            Err(WriteRefused::CapReached) => Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "output limit reached",
            )),
            Err(WriteRefused::Sink(e)) => Err(std::io::Error::other(e)),
        })
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
