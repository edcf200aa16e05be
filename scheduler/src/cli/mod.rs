//! The `sluice` subcommands, one file per command group. The binary (`main.rs`) only
//! parses the command line into these argument types and calls their `run`.
//!
//! - [`batch`]: `sluice batch`, embedded or through Redis, and its summary.
//! - [`module`]: `sluice module put|rm`.
//! - [`submit`]: `sluice submit`, one job.
//! - [`status`]: `sluice status`, queue depths and workers.
//! - [`result`]: `sluice result`, a job's result and output.
//! - [`dlq`]: `sluice dlq list|retry|purge`.
//! - [`tenant`]: `sluice tenant …`, tenants, tokens and policies directly on Redis.
//! - [`serve`]: `sluice serve`, the HTTP API and the dispatcher.
//! - [`redis`]: where the queue is (`--redis`, `--queue`, `--redis-ca`).
//!
//! `sluice bench` lives in [`crate::bench`].
//!
//! Every `run` answers the process's exit code, or an error the binary prints and exits
//! 2 with.

pub mod batch;
pub mod dlq;
pub mod module;
pub mod redis;
pub mod result;
pub mod serve;
pub mod status;
pub mod submit;
pub mod tenant;

pub use redis::RedisArgs;
