//! The sandbox's configuration: one place for every fleet-wide bound, with defaults.

use std::path::PathBuf;
use std::time::Duration;

/// How the worker's wasmtime engines are built. Per-job limits ([`sluice_shared::Limits`])
/// are clamped to these.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Guests that may run at once (per engine). Sizes the pooling allocator: a job
    /// never waits for a pool slot because the worker never runs more jobs than this.
    pub slots: u32,
    /// The most linear memory any job may be granted; a pool slot's size.
    pub max_guest_memory_bytes: u64,
    /// Largest module accepted, in bytes (wasm or WAT text). Compiling is the one step
    /// wasmtime does not bound, so the input to it is.
    pub max_module_bytes: u64,
    /// Native stack a guest may use; deeper recursion traps as `stack_overflow`.
    pub max_wasm_stack_bytes: usize,
    /// Most elements a guest table may hold.
    pub max_table_elements: usize,
    /// How often the epoch ticks: the granularity of timeouts and of stopping a guest
    /// that hit its output cap.
    pub epoch_tick: Duration,
    /// Guest stderr kept per job for diagnostics; the rest is dropped (and counted).
    pub stderr_cap_bytes: usize,
    /// Input bytes per raw-ABI `process` call.
    pub raw_chunk_bytes: usize,
    /// Directories this worker grants to guests (never `/`).
    pub dir_grants: Vec<DirGrant>,
}

impl SandboxConfig {
    /// Default number of pool slots.
    pub const DEFAULT_SLOTS: u32 = 16;
    /// Default per-guest memory ceiling: 4 GiB, all a 32-bit guest can address.
    pub const DEFAULT_MAX_GUEST_MEMORY_BYTES: u64 = 4 << 30;
    /// Default module-size cap: 32 MiB.
    pub const DEFAULT_MAX_MODULE_BYTES: u64 = 32 << 20;
    /// Default guest stack: 512 KiB (wasmtime's own default).
    pub const DEFAULT_MAX_WASM_STACK_BYTES: usize = 512 << 10;
    /// Default table-element ceiling.
    pub const DEFAULT_MAX_TABLE_ELEMENTS: usize = 100_000;
    /// Default epoch tick: 5 ms.
    pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(5);
    /// Default stderr kept: 64 KiB.
    pub const DEFAULT_STDERR_CAP_BYTES: usize = 64 << 10;
    /// Default raw-ABI chunk: 64 KiB.
    pub const DEFAULT_RAW_CHUNK_BYTES: usize = 64 << 10;
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            slots: Self::DEFAULT_SLOTS,
            max_guest_memory_bytes: Self::DEFAULT_MAX_GUEST_MEMORY_BYTES,
            max_module_bytes: Self::DEFAULT_MAX_MODULE_BYTES,
            max_wasm_stack_bytes: Self::DEFAULT_MAX_WASM_STACK_BYTES,
            max_table_elements: Self::DEFAULT_MAX_TABLE_ELEMENTS,
            epoch_tick: Self::DEFAULT_EPOCH_TICK,
            stderr_cap_bytes: Self::DEFAULT_STDERR_CAP_BYTES,
            raw_chunk_bytes: Self::DEFAULT_RAW_CHUNK_BYTES,
            dir_grants: Vec::new(),
        }
    }
}

/// A host directory made visible to guests at `guest_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Why a directory cannot be granted.
#[derive(Debug, thiserror::Error)]
pub enum DirGrantError {
    #[error("a grant is HOST::GUEST (e.g. ./data::/data), got {0:?}")]
    Syntax(String),
    #[error("cannot grant {path:?}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to grant the host's root directory to a guest")]
    Root,
}

impl DirGrant {
    /// Parses `HOST::GUEST` (wasmtime's `--dir` syntax; `HOST` alone maps to itself),
    /// refusing the root directory however it is spelled.
    pub fn parse(spec: &str, read_only: bool) -> Result<Self, DirGrantError> {
        let (host, guest) = match spec.split_once("::") {
            Some((host, guest)) if !host.is_empty() && !guest.is_empty() => (host, guest),
            Some(_) => return Err(DirGrantError::Syntax(spec.to_owned())),
            None => (spec, spec),
        };
        let host_path =
            std::fs::canonicalize(host).map_err(|source| DirGrantError::Unreadable {
                path: host.into(),
                source,
            })?;
        if host_path.parent().is_none() {
            return Err(DirGrantError::Root);
        }
        Ok(DirGrant {
            host_path,
            guest_path: guest.to_owned(),
            read_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_never_granted() {
        assert!(matches!(
            DirGrant::parse("/", false),
            Err(DirGrantError::Root)
        ));
        assert!(matches!(
            DirGrant::parse("/tmp/..::/x", false),
            Err(DirGrantError::Root)
        ));
        assert!(matches!(
            DirGrant::parse("::/x", false),
            Err(DirGrantError::Syntax(_))
        ));
        let ok = DirGrant::parse("/tmp::/data", true).unwrap();
        assert_eq!(ok.guest_path, "/data");
    }
}
