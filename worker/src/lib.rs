//! # sluice-worker
//!
//! Runs untrusted WebAssembly transforms as jobs, under hard limits, streaming.
//!
//! - [`Sandbox`]: built once per process. Two wasmtime engines (with and without fuel
//!   metering) on the pooling allocator with copy-on-write memory, epoch interruption
//!   driven by a ticker thread, a bounded wasm stack, and WASI preview 1 linked in.
//!   [`Sandbox::load_module`] checks the size cap, compiles, refuses imports other than
//!   WASI, and prepares an `InstancePre`; [`Sandbox::run`] runs one job and returns its
//!   typed [`Outcome`](sluice_shared::Outcome).
//! - [`compile`]: compilation in a `sluice-worker compile` child under address-space,
//!   CPU and wall-clock limits ([`compile::Compiler`]), the engine configuration both
//!   sides build from, and [`compile::load_artifact`], the one `unsafe`.
//! - [`streams`]: guest stdin/stdout that stream to and from any `Read`/`Write` under a
//!   byte cap, so memory does not grow with the input.
//! - [`executor`]: the worker loop over any [`Queue`](sluice_shared::Queue): claim,
//!   run on a run thread, complete, retry or dead-letter; a watchdog records runs
//!   stuck past their deadline as `timeout`, and the loop stops (for a restart) when
//!   too many are stuck.
//! - [`fleet`]: the fleet worker over Redis: its settings ([`fleet::FleetArgs`] merged
//!   from flags, environment and file, checked into a [`fleet::FleetConfig`] with the
//!   setting named in every error), [`fleet::serve`], and the Redis [`JobEnv`](executor::JobEnv)
//!   ([`fleet::RedisEnv`]).
//! - [`run`]: `sluice-worker run`, one module over stdin → stdout.
//! - [`cli`]: the guest limit flags shared with `sluice batch`, and signal handling.
//! - [`metrics`]: the worker's Prometheus metrics and their endpoint.
//! - [`health`]: liveness (`/healthz`: the claim loop progresses) and readiness
//!   (`/readyz`: Redis answers, not draining), read from atomics the loop updates.
//! - [`http`]: the bounded HTTP/1 server under every listener of both binaries
//!   (connection cap, header-read timeout, graceful drain).
//! - [`logging`]: `--log-format text|json` and `RUST_LOG`, for both binaries.
//!
//! ```no_run
//! use sluice_shared::{Job, JobInput};
//! use sluice_worker::{Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
//! let module = sandbox.load_module(b"(module (func (export \"_start\")))").unwrap();
//! let job = Job::new(module.hash(), JobInput::Inline(Vec::new()));
//! let result = sandbox.run(&module, &job, Box::new(std::io::empty()), Box::new(std::io::sink()));
//! assert!(result.outcome.is_success());
//! ```

mod blocking;
pub mod cache;
pub mod cli;
pub mod compile;
pub mod config;
pub mod executor;
pub mod fleet;
pub mod health;
mod hostcalls;
pub mod http;
pub mod job_io;
mod limiter;
pub mod logging;
pub mod metrics;
mod raw_abi;
pub mod run;
mod sandbox;
pub mod streams;

pub use config::{DirGrant, SandboxConfig};
pub use job_io::{JobReader, JobWriter};
pub use raw_abi::PROCESS as RAW_PROCESS_EXPORT;
pub use sandbox::{CompiledSource, LoadedModule, Metering, PoolResident, Sandbox, SandboxError};
