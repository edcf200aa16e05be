//! [`CompileLimits`]: what one out-of-process compilation may use, with documented
//! defaults and their bounds.

use std::time::Duration;

/// The limits a `sluice-worker compile` child runs under. A module that breaks the
/// memory, CPU or artifact-size limit ends as `invalid_module` with a reason naming
/// the limit; one that runs out of wall clock (which depends on the host's load) as a
/// retryable `host_error` naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileLimits {
    /// The child's address-space limit (`RLIMIT_AS`), in bytes: the compiler's heap,
    /// its threads' stacks and the binary itself.
    pub memory_bytes: u64,
    /// The child's CPU-time limit (`RLIMIT_CPU`), summed over its compiler threads; the
    /// kernel counts whole seconds, so this is rounded up to one.
    pub cpu: Duration,
    /// How long the parent waits for the artifact before it kills the child.
    pub wall_clock: Duration,
    /// The largest artifact the parent reads; a bigger one kills the child.
    pub artifact_bytes: u64,
}

impl CompileLimits {
    /// Default address space: 4 GiB, several times what compiling a 32 MiB module needs.
    pub const DEFAULT_MEMORY_BYTES: u64 = 4 << 30;
    /// Default CPU time: 120 s (a 1.3 MB module takes about 1.4 s).
    pub const DEFAULT_CPU: Duration = Duration::from_secs(120);
    /// Default wall clock: 60 s (below the CPU limit: parallel compilation spends CPU
    /// on several cores at once).
    pub const DEFAULT_WALL_CLOCK: Duration = Duration::from_secs(60);
    /// Default artifact cap: 256 MiB, well above what a 32 MiB module compiles to, and
    /// the largest artifact the fleet's cache stores ([`MAX_ARTIFACT_BYTES`](Self::MAX_ARTIFACT_BYTES)).
    pub const DEFAULT_ARTIFACT_BYTES: u64 = Self::MAX_ARTIFACT_BYTES;

    /// Smallest address space: below this the child cannot load itself and a
    /// wasmtime engine.
    pub const MIN_MEMORY_BYTES: u64 = 64 << 20;
    /// Largest address space.
    pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
    /// Shortest CPU limit (the kernel's unit).
    pub const MIN_CPU: Duration = Duration::from_secs(1);
    /// Longest CPU limit.
    pub const MAX_CPU: Duration = Duration::from_secs(3600);
    /// Shortest wall clock.
    pub const MIN_WALL_CLOCK: Duration = Duration::from_millis(100);
    /// Longest wall clock.
    pub const MAX_WALL_CLOCK: Duration = Duration::from_secs(3600);
    /// Smallest artifact cap.
    pub const MIN_ARTIFACT_BYTES: u64 = 64 << 10;
    /// Largest artifact cap: the largest artifact the fleet's cache stores in Redis
    /// (`sluice_shared::queue::redis::MAX_ARTIFACT_BYTES`, 256 MiB). A bigger cap would
    /// let an artifact compile that Redis then refuses: no artifact and no refusal, so
    /// every worker would compile it in turn. Over the cap it is a refusal instead.
    pub const MAX_ARTIFACT_BYTES: u64 = sluice_shared::queue::redis::MAX_ARTIFACT_BYTES as u64;

    /// Checks every value, naming the first one out of bounds.
    pub fn validate(&self) -> Result<(), CompileLimitsError> {
        let out = |field: &'static str, value: String, expected: &'static str| {
            Err(CompileLimitsError {
                field,
                value,
                expected,
            })
        };
        if !(Self::MIN_MEMORY_BYTES..=Self::MAX_MEMORY_BYTES).contains(&self.memory_bytes) {
            return out(
                "memory_bytes",
                self.memory_bytes.to_string(),
                "between 64 MiB and 1 TiB",
            );
        }
        if !(Self::MIN_CPU..=Self::MAX_CPU).contains(&self.cpu) {
            return out("cpu", format!("{:?}", self.cpu), "between 1 s and 1 h");
        }
        if !(Self::MIN_WALL_CLOCK..=Self::MAX_WALL_CLOCK).contains(&self.wall_clock) {
            return out(
                "wall_clock",
                format!("{:?}", self.wall_clock),
                "between 100 ms and 1 h",
            );
        }
        if !(Self::MIN_ARTIFACT_BYTES..=Self::MAX_ARTIFACT_BYTES).contains(&self.artifact_bytes) {
            return out(
                "artifact_bytes",
                self.artifact_bytes.to_string(),
                "between 64 KiB and 256 MiB",
            );
        }
        Ok(())
    }

    /// The CPU limit in the kernel's whole seconds, rounded up.
    pub fn cpu_seconds(&self) -> u64 {
        self.cpu.as_secs() + u64::from(self.cpu.subsec_nanos() > 0)
    }
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            cpu: Self::DEFAULT_CPU,
            wall_clock: Self::DEFAULT_WALL_CLOCK,
            artifact_bytes: Self::DEFAULT_ARTIFACT_BYTES,
        }
    }
}

/// A [`CompileLimits`] value out of bounds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("compile limit `{field}` is {value}: must be {expected}")]
pub struct CompileLimitsError {
    /// The field, as named in [`CompileLimits`].
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What it must be.
    pub expected: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bad_value_is_named() {
        CompileLimits::default().validate().unwrap();
        let cases = [
            (
                "memory_bytes",
                CompileLimits {
                    memory_bytes: 1 << 20,
                    ..Default::default()
                },
            ),
            (
                "cpu",
                CompileLimits {
                    cpu: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "wall_clock",
                CompileLimits {
                    wall_clock: Duration::from_secs(7200),
                    ..Default::default()
                },
            ),
            (
                "artifact_bytes",
                CompileLimits {
                    artifact_bytes: 0,
                    ..Default::default()
                },
            ),
            (
                // More than Redis stores: it would compile, yet be neither stored nor
                // refused, and every worker would compile it in turn.
                "artifact_bytes",
                CompileLimits {
                    artifact_bytes: sluice_shared::queue::redis::MAX_ARTIFACT_BYTES as u64 + 1,
                    ..Default::default()
                },
            ),
        ];
        for (field, limits) in cases {
            let error = limits.validate().expect_err(field);
            assert_eq!(error.field, field);
            assert!(error.to_string().contains(field), "{error}");
        }
    }

    #[test]
    fn cpu_rounds_up_to_whole_seconds() {
        let limits = |cpu| CompileLimits {
            cpu,
            ..Default::default()
        };
        assert_eq!(limits(Duration::from_secs(2)).cpu_seconds(), 2);
        assert_eq!(limits(Duration::from_millis(1500)).cpu_seconds(), 2);
    }
}
