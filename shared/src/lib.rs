//! # sluice-shared
//!
//! The vocabulary every Sluice process speaks, and the Redis protocol they speak it
//! over, with no WebAssembly runtime in it: a scheduler, a worker and a test can all
//! depend on this crate cheaply.
//!
//! - [`job`]: what a job is ([`Job`], [`Limits`], [`JobInput`], [`EntryPoint`]) and the
//!   content address of a module ([`ModuleHash`]).
//! - [`codec`]: the wire format, postcard behind a format-version byte (job envelopes
//!   and stored results each have their own version). Decoding never
//!   panics: garbage, a truncated envelope or an unknown version is a [`DecodeError`].
//! - [`outcome`]: the one typed [`Outcome`] every job ends with, and its [`JobResult`].
//! - [`queue`]: the [`Queue`] trait a worker loop needs, the in-memory [`MemoryQueue`]
//!   used by embedded batch mode, and a conformance suite every backend must pass.
//! - [`queue::redis`]: the Redis protocol, the only code that sends Redis commands:
//!   [`RedisQueue`] (connection, configuration, keys) implements [`Queue`], and its
//!   roles (modules, results, admin, blobs, tenants, admission, recovery) each live in
//!   a file of their own with their own error enum.
//! - [`tenant`]: a tenant's [`TenantPolicy`] (quotas and limits) and tenant names.
//! - [`backoff`]: the one exponential backoff every retry loop uses.
//! - [`metrics`]: the Prometheus text renderer both binaries serve.
//! - [`module_meta`]: what a stored module offers ([`module_meta::ModuleMeta`]), kept
//!   beside its bytes so submitters never download a module.
//! - [`units`]: `64MiB` / `2s` parsing for the command lines.
//! - [`parse`]: one parser per text format the command line and the HTTP API share
//!   (entry points, `KEY=VALUE` pairs, job limits).
//!
//! ```
//! use sluice_shared::{codec, Job, JobInput, Limits, ModuleHash};
//!
//! let job = Job::new(ModuleHash::of(b"\0asm\x01\0\0\0"), JobInput::Inline(b"hi".to_vec()));
//! let bytes = codec::encode(&job);
//! assert_eq!(codec::decode(&bytes).unwrap(), job);
//! assert!(codec::decode(&bytes[..3]).is_err());
//! assert_eq!(job.limits, Limits::default());
//! ```

pub mod backoff;
pub mod codec;
pub mod error_text;
pub mod job;
pub mod metrics;
pub mod module_meta;
pub mod module_name;
pub mod outcome;
pub mod parse;
pub mod queue;
pub mod tenant;
pub mod units;

pub use codec::DecodeError;
pub use job::{
    BlobId, EntryPoint, Job, JobId, JobInput, Limits, ModuleHash, ModuleName, ProgramName, TenantId,
};
pub use outcome::{JobOutput, JobResult, Outcome, OutcomeKind, ReportLine, RunStats};
pub use queue::{
    Claimed, Delivery, Lease, MemoryQueue, Queue, QueueError, RedisConfig, RedisQueue, RetryPolicy,
};
pub use tenant::TenantPolicy;
