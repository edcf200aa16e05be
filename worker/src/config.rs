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
    /// Bytes at the start of each pool slot's linear memory kept resident between
    /// instances: when a guest ends, wasmtime resets them in place with `memset` (to
    /// zeros, or to the module's data image where it has one) instead of handing them
    /// back to the kernel with `madvise`, so the next job in the slot takes no page
    /// faults and no TLB-shootdown IPIs on them. Memory beyond this is still returned.
    /// Without [`Self::pagemap_scan`] wasmtime resets, and keeps resident, the smaller
    /// of this and the guest's accessible memory whatever the guest touched, and
    /// returns the rest with `madvise`: a guest with this much memory or more pays a
    /// `memset` of all of it every job, while a guest within it saves the faults. Sluice
    /// in the sandbox bench (`-- keep-resident`), CPU µs a job beyond the guest's own
    /// work at 1 MiB / 256 KiB / 128 KiB / 0 kept: the C uppercase guest (192 KiB of
    /// memory) 10.9 / 11.1 / 17.7 / 22.7, an echo with 1.06 MiB of memory 28.5 / 11.3 /
    /// 8.4 / 14.4. The price is resident memory: `min(this, the guest's memory)` per
    /// slot that has run a job, on each of the two engines (`docs/benchmarks.md`,
    /// "Sandbox"). 0 returns everything (wasmtime's default).
    pub memory_keep_resident_bytes: u64,
    /// As [`Self::memory_keep_resident_bytes`], for each of a slot's tables (up to 4;
    /// a C guest's function table for indirect calls).
    pub table_keep_resident_bytes: u64,
    /// Whether a slot's reset asks the kernel which pages the guest dirtied (Linux's
    /// `PAGEMAP_SCAN` ioctl, 6.7+; ignored where unsupported) and resets only those,
    /// instead of `memset`ting the whole resident part: one system call per job in
    /// place of rewriting up to [`Self::memory_keep_resident_bytes`], and only the
    /// pages a guest used stay resident.
    ///
    /// Off by default, and must stay off on wasmtime 48: its scan resets only the
    /// pages that are resident at scan time, so a dirty page that is swapped out or
    /// being migrated (compaction, NUMA balancing) is neither reset nor released and
    /// the next tenant's instance in the slot reads the previous tenant's bytes (for
    /// tables, stale function references into a freed instance). Turn it on only on
    /// a wasmtime release that resets or releases non-resident dirty pages
    /// (upstream: bytecodealliance/wasmtime#14357). Off, the kept part is reset with
    /// `memset`, which writes every kept byte whether resident or not.
    pub pagemap_scan: bool,
}

impl SandboxConfig {
    /// Default number of pool slots.
    pub const DEFAULT_SLOTS: u32 = 16;
    /// Default per-guest memory ceiling: 4 GiB, all a 32-bit guest can address.
    pub const DEFAULT_MAX_GUEST_MEMORY_BYTES: u64 = 4 << 30;
    /// Default module-size cap: 32 MiB, the cap the scheduler accepts uploads under
    /// ([`sluice_shared::job::MAX_MODULE_BYTES`]).
    pub const DEFAULT_MAX_MODULE_BYTES: u64 = sluice_shared::job::MAX_MODULE_BYTES;
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
    /// Default linear memory kept resident per slot: 256 KiB. It holds a wasi-libc C
    /// guest's whole memory (192 KiB for the uppercase filter: data, a 64 KiB stack
    /// and the start of its heap), so such a guest reuses its slot without a page
    /// fault, while a larger guest (a small Rust guest starts at 1.06 MiB) pays a 256
    /// KiB `memset` per job rather than the 1 MiB one of the earlier default, which
    /// doubled its cost (`docs/benchmarks.md`, "Sandbox": 128 KiB no longer covers the
    /// C guest's stack and costs it 7 µs a job in page faults). A slot that has run a
    /// job keeps `min(256 KiB, its guest's memory)` resident.
    pub const DEFAULT_MEMORY_KEEP_RESIDENT_BYTES: u64 = 256 << 10;
    /// Default table bytes kept resident per slot: 64 KiB (8,192 function references).
    pub const DEFAULT_TABLE_KEEP_RESIDENT_BYTES: u64 = 64 << 10;
    /// Most linear memory kept resident per slot: 64 MiB (a worker keeps up to
    /// `2 × slots ×` this resident).
    pub const MAX_MEMORY_KEEP_RESIDENT_BYTES: u64 = 64 << 20;
    /// Most table bytes kept resident per slot: 16 MiB.
    pub const MAX_TABLE_KEEP_RESIDENT_BYTES: u64 = 16 << 20;
}

/// A [`SandboxConfig`] value outside what the sandbox can honour.
#[derive(Debug, thiserror::Error)]
#[error("sandbox setting `{field}` is {value}: {expected}")]
pub struct ConfigError {
    /// The field, as named in [`SandboxConfig`].
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What it must be.
    pub expected: &'static str,
}

fn check<T: std::fmt::Debug>(
    field: &'static str,
    value: T,
    ok: bool,
    expected: &'static str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            field,
            value: format!("{value:?}"),
            expected,
        })
    }
}

impl SandboxConfig {
    /// Most pool slots: each reserves the address space of a whole guest memory
    /// (4 GiB plus guards), and a 47-bit address space holds a few thousand.
    pub const MAX_SLOTS: u32 = 1024;
    /// Largest guest stack: guests run on the executor's run threads, whose native
    /// stacks are this plus 2 MiB for the host's frames (`RUN_THREAD_STACK` in
    /// `executor/threads.rs`); a larger limit would overflow the host's stack instead.
    pub const MAX_WASM_STACK_BYTES: usize = 1 << 20;

    /// Checks every value, naming the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            "slots",
            self.slots,
            (1..=Self::MAX_SLOTS).contains(&self.slots),
            "between 1 and 1024",
        )?;
        check(
            "max_guest_memory_bytes",
            self.max_guest_memory_bytes,
            (64 << 10..=4 << 30).contains(&self.max_guest_memory_bytes),
            "between one wasm page (64 KiB) and 4 GiB, all a 32-bit guest addresses",
        )?;
        check(
            "max_module_bytes",
            self.max_module_bytes,
            (1..=1 << 30).contains(&self.max_module_bytes),
            "between 1 byte and 1 GiB",
        )?;
        check(
            "max_wasm_stack_bytes",
            self.max_wasm_stack_bytes,
            (16 << 10..=Self::MAX_WASM_STACK_BYTES).contains(&self.max_wasm_stack_bytes),
            "between 16 KiB and 1 MiB (guests run on 2 MiB host stacks)",
        )?;
        check(
            "max_table_elements",
            self.max_table_elements,
            (1..=10_000_000).contains(&self.max_table_elements),
            "between 1 and 10,000,000",
        )?;
        check(
            "epoch_tick",
            self.epoch_tick,
            (Duration::from_millis(1)..=Duration::from_secs(1)).contains(&self.epoch_tick),
            "between 1 ms (a shorter tick spins a core) and 1 s (a longer one blurs every deadline)",
        )?;
        check(
            "stderr_cap_bytes",
            self.stderr_cap_bytes,
            self.stderr_cap_bytes <= sluice_shared::outcome::MAX_STDERR_BYTES,
            "at most 64 KiB, what a result keeps",
        )?;
        check(
            "raw_chunk_bytes",
            self.raw_chunk_bytes,
            (1..=16 << 20).contains(&self.raw_chunk_bytes),
            "between 1 byte and 16 MiB",
        )?;
        check(
            "memory_keep_resident_bytes",
            self.memory_keep_resident_bytes,
            self.memory_keep_resident_bytes <= Self::MAX_MEMORY_KEEP_RESIDENT_BYTES,
            "at most 64 MiB (each slot of each engine may keep this much resident)",
        )?;
        check(
            "table_keep_resident_bytes",
            self.table_keep_resident_bytes,
            self.table_keep_resident_bytes <= Self::MAX_TABLE_KEEP_RESIDENT_BYTES,
            "at most 16 MiB (each slot of each engine may keep this much resident)",
        )?;
        for grant in &self.dir_grants {
            check(
                "dir_grants",
                &grant.guest_path,
                !grant.guest_path.is_empty() && grant.host_path.parent().is_some(),
                "grants of a non-root host directory to a non-empty guest path",
            )?;
        }
        Ok(())
    }
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
            memory_keep_resident_bytes: Self::DEFAULT_MEMORY_KEEP_RESIDENT_BYTES,
            table_keep_resident_bytes: Self::DEFAULT_TABLE_KEEP_RESIDENT_BYTES,
            pagemap_scan: false,
        }
    }
}

/// A host directory made visible to guests at `guest_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host (canonical, never `/`).
    pub host_path: PathBuf,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

/// Why a directory cannot be granted.
#[derive(Debug, thiserror::Error)]
pub enum DirGrantError {
    /// The text is not `HOST::GUEST` (or `HOST`).
    #[error("a grant is HOST::GUEST (e.g. ./data::/data), got {0:?}")]
    Syntax(String),
    /// The host directory cannot be resolved.
    #[error("cannot grant {path:?}: {source}")]
    Unreadable {
        /// The host path as given.
        path: PathBuf,
        /// Why it cannot be resolved.
        source: std::io::Error,
    },
    /// The host path is `/`.
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

    /// The keep-resident defaults are a measured choice (`docs/benchmarks.md`,
    /// "Sandbox"): 256 KiB covers a wasi-libc C guest's 192 KiB without making a
    /// 1 MiB guest `memset` a megabyte per job; tables as before; `pagemap_scan` off
    /// (unsafe on wasmtime 48).
    #[test]
    fn keep_resident_defaults_are_the_measured_choice() {
        let config = SandboxConfig::default();
        assert_eq!(config.memory_keep_resident_bytes, 256 << 10);
        assert_eq!(config.table_keep_resident_bytes, 64 << 10);
        assert!(!config.pagemap_scan);
        // The uppercase C guest's whole memory (3 pages) fits in what is kept.
        assert!(config.memory_keep_resident_bytes >= 3 * (64 << 10));
    }

    #[test]
    fn defaults_are_valid_and_each_bad_value_is_named() {
        SandboxConfig::default().validate().unwrap();
        let cases: Vec<(&str, SandboxConfig)> = vec![
            (
                "slots",
                SandboxConfig {
                    slots: 0,
                    ..Default::default()
                },
            ),
            (
                "slots",
                SandboxConfig {
                    slots: 1_000_000,
                    ..Default::default()
                },
            ),
            (
                "max_guest_memory_bytes",
                SandboxConfig {
                    max_guest_memory_bytes: 8 << 30,
                    ..Default::default()
                },
            ),
            (
                "max_module_bytes",
                SandboxConfig {
                    max_module_bytes: 0,
                    ..Default::default()
                },
            ),
            (
                "max_wasm_stack_bytes",
                SandboxConfig {
                    max_wasm_stack_bytes: 64 << 20,
                    ..Default::default()
                },
            ),
            (
                "max_table_elements",
                SandboxConfig {
                    max_table_elements: 0,
                    ..Default::default()
                },
            ),
            (
                "epoch_tick",
                SandboxConfig {
                    epoch_tick: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "stderr_cap_bytes",
                SandboxConfig {
                    stderr_cap_bytes: 1 << 30,
                    ..Default::default()
                },
            ),
            (
                "raw_chunk_bytes",
                SandboxConfig {
                    raw_chunk_bytes: 0,
                    ..Default::default()
                },
            ),
            (
                "memory_keep_resident_bytes",
                SandboxConfig {
                    memory_keep_resident_bytes: 1 << 30,
                    ..Default::default()
                },
            ),
            (
                "table_keep_resident_bytes",
                SandboxConfig {
                    table_keep_resident_bytes: 1 << 30,
                    ..Default::default()
                },
            ),
            (
                "dir_grants",
                SandboxConfig {
                    dir_grants: vec![DirGrant {
                        host_path: "/".into(),
                        guest_path: "/x".into(),
                        read_only: true,
                    }],
                    ..Default::default()
                },
            ),
        ];
        for (field, config) in cases {
            let error = config.validate().expect_err(field);
            assert_eq!(error.field, field);
            assert!(error.to_string().contains(field), "{error}");
        }
    }
}
