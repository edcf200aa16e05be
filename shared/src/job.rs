//! The job model: what the scheduler enqueues and a worker runs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::module_name::{ModuleName, ModuleNameError, ProgramName};

/// A time-ordered job id (UUIDv7): ids sort by creation time, which keeps reports and
/// Redis stream ids in submission order without a second timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh id for a job created now.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

/// The SHA-256 of a module's wasm bytes: modules are stored and cached by content, so
/// a job names exactly the code it runs and two tenants uploading the same bytes share
/// one compiled artifact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    /// The content address of `wasm`.
    pub fn of(wasm: &[u8]) -> Self {
        ModuleHash(Sha256::digest(wasm).into())
    }

    /// Lower-case hex, the form used in keys, file names and on the command line.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({})", self.to_hex())
    }
}

/// Why a string is not a module hash.
#[derive(Debug, thiserror::Error)]
#[error("a module hash is 64 hex digits (a SHA-256), got {0:?}")]
pub struct ParseModuleHashError(String);

impl FromStr for ModuleHash {
    type Err = ParseModuleHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseModuleHashError(s.to_owned()))?;
        Ok(ModuleHash(out))
    }
}

/// The tenant a job runs for. In embedded mode every job is the `local` tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantId(pub String);

impl Default for TenantId {
    fn default() -> Self {
        TenantId("local".to_owned())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most bytes a module may have, as stored and as loaded: the scheduler refuses a
/// larger upload and the worker's default `max_module_bytes` is this, so a module the
/// service accepted is never one a default worker refuses.
pub const MAX_MODULE_BYTES: u64 = 32 << 20;

/// A chunked blob in the queue's blob store, by the id its writer chose.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobId(String);

impl BlobId {
    /// The blob named `id`: ids come from the blob writer and are only compared and
    /// put into keys, so any string is a (possibly missing) blob.
    pub fn new(id: impl Into<String>) -> Self {
        BlobId(id.into())
    }

    /// The id as it appears in the store's keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job's input comes from. Inline bytes suit small inputs; anything large is a
/// reference the worker streams from, so no component ever holds a whole large input.
/// Which references a worker can open depends on its mode: an embedded batch reads
/// [`JobInput::File`], a fleet worker [`JobInput::Blob`], `sluice-worker run`
/// [`JobInput::Stdin`]; any other is the job's `input_unavailable` outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobInput {
    /// The input itself, carried in the envelope (encoded as bytes: one copy, not a
    /// loop per byte; [`crate::codec`]'s `byte_field`).
    Inline(#[serde(with = "crate::codec::byte_field")] Vec<u8>),
    /// A file on the worker's own host (embedded mode), `len` bytes long when queued.
    File {
        /// The file's path; any bytes a Unix path may hold.
        #[serde(with = "path_bytes")]
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
    },
    /// A blob in the queue's blob store (distributed mode).
    Blob {
        /// The blob.
        id: BlobId,
        /// Its size in bytes.
        len: u64,
    },
    /// The worker process's own standard input (`sluice-worker run`); its size is not
    /// known in advance.
    Stdin,
}

impl JobInput {
    /// The input's size in bytes (0 for stdin, whose size is not known in advance).
    pub fn len(&self) -> u64 {
        match self {
            JobInput::Inline(bytes) => bytes.len() as u64,
            JobInput::File { len, .. } | JobInput::Blob { len, .. } => *len,
            JobInput::Stdin => 0,
        }
    }

    /// What kind of reference this is, for messages: `inline`, `file`, `blob`, `stdin`.
    pub fn kind(&self) -> &'static str {
        match self {
            JobInput::Inline(_) => "inline",
            JobInput::File { .. } => "file",
            JobInput::Blob { .. } => "blob",
            JobInput::Stdin => "stdin",
        }
    }

    /// Whether the input is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Paths as their raw bytes on the wire: a file name need not be UTF-8, and an
/// embedded batch must not fail (or mangle the name) on one that is not.
mod path_bytes {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(path.as_os_str().as_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
        let bytes = crate::codec::byte_field::deserialize(deserializer)?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

/// How the worker drives the module (see `docs/guest-abi.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPoint {
    /// A WASI command: `_start` reads the input on stdin and writes the output to stdout.
    #[default]
    Command,
    /// The raw ABI: `alloc`, the named transform export (normally `process`), optional
    /// `free` and `finish`, called once per input chunk.
    Raw {
        /// The transform export called per chunk.
        export: String,
    },
}

impl EntryPoint {
    /// The export a WASI command runs.
    pub const COMMAND_EXPORT: &str = "_start";
    /// The raw ABI's transform export, used when a job names none.
    pub const RAW_EXPORT: &str = "process";

    /// The entry point a module offers when a job names none, given whether it exports
    /// a name: a WASI command if it exports `_start`, else the raw ABI if it exports
    /// `process`, else a command (which then fails as missing `_start`). The scheduler
    /// (reading exports with wasmparser) and the worker (from the compiled module) both
    /// decide here, so they cannot disagree.
    pub fn default_for(exports: impl Fn(&str) -> bool) -> Self {
        if !exports(Self::COMMAND_EXPORT) && exports(Self::RAW_EXPORT) {
            EntryPoint::Raw {
                export: Self::RAW_EXPORT.to_owned(),
            }
        } else {
            EntryPoint::Command
        }
    }
}

/// The limits a job runs under. Every one is always on: there is no "unlimited".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Instruction budget in wasmtime fuel units; `None` runs without fuel metering
    /// (faster; the wall-clock deadline still bounds the job).
    pub fuel: Option<u64>,
    /// Most linear memory the guest may have, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline for instantiation and the whole run, in milliseconds.
    pub timeout_ms: u64,
    /// Most bytes the guest may write as output; more ends the job as `output_limit`.
    pub max_output_bytes: u64,
}

impl Limits {
    /// Default memory cap: 64 MiB.
    pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
    /// Default wall-clock deadline: 10 s.
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
    /// Default output cap: 64 MiB.
    pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 << 20;

    /// The deadline as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: None,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// One job: everything a worker needs to run a module over one input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id, chosen by the submitter.
    pub id: JobId,
    /// The module it runs, by content.
    pub module: ModuleHash,
    /// Where its input comes from.
    pub input: JobInput,
    /// How the module is driven.
    pub entry: EntryPoint,
    /// `argv[1..]` of a WASI command (`argv[0]` is [`Job::program`]).
    pub args: Vec<String>,
    /// The guest's whole environment: nothing of the host's leaks in.
    pub env: Vec<(String, String)>,
    /// The limits it runs under (already clamped to its tenant's policy).
    pub limits: Limits,
    /// The tenant it runs for.
    pub tenant: TenantId,
    /// Attempts already made before this envelope was enqueued (0 for a new job).
    pub attempt: u32,
    /// A free-form label the submitter chose (embedded mode: the input file name).
    pub label: String,
    /// The module's name as the submitter gave it, the guest's `argv[0]`; `None` when
    /// the job named its module by hash (or by an alias older than the module-name
    /// rule), and then `argv[0]` is the module's hash (`sluice-worker run` alone uses
    /// the file name, as `wasmtime run` does).
    pub program: Option<ProgramName>,
}

impl Job {
    /// A job with default entry point, limits and tenant, and no args or env.
    pub fn new(module: ModuleHash, input: JobInput) -> Self {
        Job {
            id: JobId::new(),
            module,
            input,
            entry: EntryPoint::default(),
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            tenant: TenantId::default(),
            attempt: 0,
            label: String::new(),
            program: None,
        }
    }
}
