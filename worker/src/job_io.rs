//! How a job's input and output reach [`Sandbox::run_io`](crate::Sandbox::run_io):
//! whether a read or write may stall, and so goes through a helper thread the guest
//! waits for only until its deadline, or cannot (memory, which the sandbox itself
//! owns), and so runs on the guest's own thread with no hand-off (the hand-offs were most of a small job's sandbox cost:
//! `docs/benchmarks.md`, "Sandbox").

use std::io::{Read, Write};

use bytes::Bytes;

/// Where a job's stdin comes from.
pub enum JobReader {
    /// The whole input, already in memory (an inline input): handed to the guest in
    /// slices of itself, on its own thread, without a copy.
    Memory(Bytes),
    /// A reader that may stall (a Redis blob stream, a pipe): read ahead by a helper
    /// thread, waited for until the job's deadline.
    Stream(Box<dyn Read + Send>),
}

/// Where a job's stdout goes.
pub enum JobWriter {
    /// Into a buffer in memory, written on the guest's thread (a write there cannot
    /// stall, so nothing can hold the guest past its deadline), at most the job's
    /// `max_output_bytes`; handed back as the result's `JobOutput::Inline`. For jobs
    /// whose output cap the caller can hold in memory (an inline result).
    Memory,
    /// A writer that may stall (a network stream, a pipe): written by a helper
    /// thread, waited for until the job's deadline.
    Stream(Box<dyn Write + Send>),
    /// Into memory on the guest's thread while the output fits `keep` bytes, handed
    /// back as the result's `JobOutput::Inline`; the first write past `keep` sends the
    /// bytes so far and the rest to `then`, a writer that may stall, through a helper
    /// thread waited for until the job's deadline (as [`JobWriter::Stream`]), and the
    /// result's output is then `JobOutput::Written`. For an env that stores small
    /// outputs inline and large ones elsewhere (the fleet: `keep` is the inline limit),
    /// so a small output costs no helper-thread hand-off. The job's
    /// `max_output_bytes` caps the output either way.
    Spill {
        /// Bytes kept in memory before the output spills to `then`.
        keep: usize,
        /// Where the output goes once it is past `keep`.
        then: Box<dyn Write + Send>,
    },
}

/// The buffer behind [`JobWriter::Memory`]: the sandbox writes the guest's output into
/// it (the cap bounds it) and takes the bytes out once the guest has ended.
#[derive(Clone, Default)]
pub(crate) struct MemoryOutput(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

impl MemoryOutput {
    /// Takes every byte written so far out of the buffer.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl Write for MemoryOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
