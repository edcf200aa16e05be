//! A guest's stdin: pulls from any `Read` chunk by chunk, on the guest's thread or, once
//! the job has a deadline, through a helper thread ([`crate::blocking`]) the guest waits
//! for only until that deadline.

use std::io::Read;
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, ReadBuf};
use wasmtime_wasi::cli::{IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError, StreamResult};

use super::{MAX_READ_BYTES, deadline_passed};
use crate::blocking;
use crate::sandbox::Interrupted;

enum Source {
    /// Not read from yet (or no deadline): read on the caller's thread.
    Direct(Box<dyn Read + Send>),
    /// Read ahead by a helper thread, one chunk at a time.
    Pumped(mpsc::Receiver<std::io::Result<Vec<u8>>>),
    /// End of input, or the helper failed.
    Ended,
}

struct StdinState {
    source: Source,
    /// What is left of the chunk being handed out.
    current: Bytes,
    consumed: u64,
    error: Option<String>,
    timed_out: bool,
}

/// A guest's stdin, reading from the job's input as the guest asks for it.
#[derive(Clone)]
pub struct GuestStdin {
    state: Arc<Mutex<StdinState>>,
    /// When the guest stops waiting for input; `None` reads on the guest's thread.
    deadline: Option<Instant>,
}

impl GuestStdin {
    /// Stdin fed from `reader`, read on the caller's thread (no deadline).
    pub fn new(reader: Box<dyn Read + Send>) -> Self {
        Self::with_deadline(reader, None)
    }

    /// Stdin fed from `reader` by a helper thread, waited for until `deadline`.
    pub fn with_deadline(reader: Box<dyn Read + Send>, deadline: Option<Instant>) -> Self {
        GuestStdin {
            state: Arc::new(Mutex::new(StdinState {
                source: Source::Direct(reader),
                current: Bytes::new(),
                consumed: 0,
                error: None,
                timed_out: false,
            })),
            deadline,
        }
    }

    /// Stdin holding the whole input already: handed out on the guest's thread, in
    /// slices of `input`, with nothing to wait for.
    pub fn from_bytes(input: Bytes) -> Self {
        GuestStdin {
            state: Arc::new(Mutex::new(StdinState {
                source: Source::Ended,
                current: input,
                consumed: 0,
                error: None,
                timed_out: false,
            })),
            deadline: None,
        }
    }

    /// Bytes the guest has read so far.
    pub fn consumed(&self) -> u64 {
        self.state.lock().consumed
    }

    /// The host-side read error, if reading the input failed.
    pub fn error(&self) -> Option<String> {
        self.state.lock().error.clone()
    }

    /// Whether a read gave up because the job's deadline passed.
    pub fn timed_out(&self) -> bool {
        self.state.lock().timed_out
    }

    /// Reads up to `buf.len()` bytes for the host itself (the raw ABI). Fails with
    /// [`std::io::ErrorKind::TimedOut`] when the input does not come before the deadline.
    pub fn read_into(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bytes = self.next(buf.len())?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }

    /// Up to `max` bytes of input, empty at its end. A helper's chunks are handed out
    /// as slices of themselves, without a copy.
    fn next(&self, max: usize) -> std::io::Result<Bytes> {
        let mut state = self.state.lock();
        let state = &mut *state;
        loop {
            if !state.current.is_empty() {
                let n = max.min(state.current.len());
                state.consumed += n as u64;
                return Ok(state.current.split_to(n));
            }
            if max == 0 {
                return Ok(Bytes::new());
            }
            match &mut state.source {
                Source::Ended => return Ok(Bytes::new()),
                Source::Direct(reader) if self.deadline.is_none() => {
                    let mut buf = vec![0u8; max];
                    let n = loop {
                        match reader.read(&mut buf) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            other => break other,
                        }
                    };
                    return match n {
                        Ok(n) => {
                            state.consumed += n as u64;
                            buf.truncate(n);
                            Ok(buf.into())
                        }
                        Err(e) => {
                            state.error = Some(e.to_string());
                            Err(e)
                        }
                    };
                }
                Source::Direct(_) => {
                    let Source::Direct(reader) =
                        std::mem::replace(&mut state.source, Source::Ended)
                    else {
                        unreachable!("matched above")
                    };
                    match pump_input(reader) {
                        Ok(chunks) => state.source = Source::Pumped(chunks),
                        Err(e) => {
                            state.error = Some(e.to_string());
                            return Err(std::io::Error::other(e));
                        }
                    }
                }
                Source::Pumped(chunks) => {
                    let deadline = self.deadline.unwrap_or_else(Instant::now);
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match chunks.recv_timeout(wait) {
                        Ok(Ok(chunk)) => state.current = chunk.into(),
                        Ok(Err(e)) => {
                            state.source = Source::Ended;
                            state.error = Some(e.to_string());
                            return Err(e);
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            state.source = Source::Ended;
                            return Ok(Bytes::new());
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            state.timed_out = true;
                            return Err(deadline_passed("waiting for input"));
                        }
                    }
                }
            }
        }
    }
}

/// Starts a helper that reads `reader` ahead, one chunk in the channel at a time.
fn pump_input(
    mut reader: Box<dyn Read + Send>,
) -> Result<mpsc::Receiver<std::io::Result<Vec<u8>>>, blocking::SpawnFailed> {
    let (tx, chunks) = mpsc::sync_channel(1);
    blocking::spawn(move || {
        loop {
            let mut chunk = vec![0u8; MAX_READ_BYTES];
            let item = match reader.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    Ok(chunk)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            // A send fails once the job is over: stop reading for it.
            if tx.send(item).is_err() || failed {
                return;
            }
        }
    })?;
    Ok(chunks)
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

/// Always ready: a read then waits for data itself, bounded by the deadline, so a
/// `poll_oneoff` on stdin never blocks.
#[async_trait::async_trait]
impl Pollable for GuestStdin {
    async fn ready(&mut self) {}
}

impl InputStream for GuestStdin {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let max = size.min(MAX_READ_BYTES);
        match self.next(max) {
            Ok(bytes) if bytes.is_empty() && max > 0 => Err(StreamError::Closed),
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(StreamError::Trap(Interrupted::Timeout.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_driven_stdin_gives_up_at_the_deadline() {
        let (keep, never) = mpsc::channel::<()>();
        struct Stalled(mpsc::Receiver<()>);
        impl Read for Stalled {
            fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(0)
            }
        }
        let stdin = GuestStdin::with_deadline(
            Box::new(Stalled(never)),
            Some(Instant::now() + std::time::Duration::from_millis(50)),
        );
        let error = stdin.read_into(&mut [0u8; 16]).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(stdin.timed_out());
        drop(keep);
    }
}
