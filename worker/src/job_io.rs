//! How a job's input and output reach [`Sandbox::run_io`](crate::Sandbox::run_io):
//! whether a read or write may stall, and so goes through a helper thread the guest
//! waits for only until its deadline, or cannot, and so runs on the guest's own thread
//! with no hand-off (the hand-offs were most of a small job's sandbox cost:
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
    /// A sink whose writes return promptly (memory): written on the guest's thread.
    /// The job's deadline does not cover the time spent inside one of its writes.
    Direct(Box<dyn Write + Send>),
    /// A writer that may stall (a network stream, a pipe): written by a helper
    /// thread, waited for until the job's deadline.
    Stream(Box<dyn Write + Send>),
}
