//! The per-store resource limiter: caps memory and tables, and remembers what a guest
//! reached so the outcome can say `memory_limit` (not a bare trap) and report the
//! guest's peak memory.

use wasmtime::{ResourceLimiter, Result};

/// Raised from a grow request over the cap; ends the guest with a trap.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitExceeded(pub String);

/// Limits one store's memories and tables.
#[derive(Debug)]
pub struct GuestLimiter {
    memory_cap: usize,
    table_elements_cap: usize,
    /// Largest linear memory granted so far.
    pub peak_memory: usize,
    /// Set when a request went over a cap: what was asked for.
    pub exceeded: Option<String>,
}

impl GuestLimiter {
    /// A limiter for one job.
    pub fn new(memory_cap: u64, table_elements_cap: usize) -> Self {
        GuestLimiter {
            memory_cap: usize::try_from(memory_cap).unwrap_or(usize::MAX),
            table_elements_cap,
            peak_memory: 0,
            exceeded: None,
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > self.memory_cap {
            let detail = format!(
                "memory of {desired} bytes requested, limit is {} bytes",
                self.memory_cap
            );
            self.exceeded = Some(detail.clone());
            // An error (not `Ok(false)`) so a guest that ignores `memory.grow` failing
            // cannot spin on it: the job ends here, classified by `exceeded`.
            return Err(LimitExceeded(detail).into());
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > self.table_elements_cap {
            let detail = format!(
                "table of {desired} elements requested, limit is {} elements",
                self.table_elements_cap
            );
            self.exceeded = Some(detail.clone());
            return Err(LimitExceeded(detail).into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        // Enough for a function table plus a few reference-types tables.
        4
    }
}
