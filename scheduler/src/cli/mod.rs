//! The `sluice` subcommands, one file per command group. The binary (`main.rs`) only
//! parses the command line into these argument types and calls their `run`.
//!
//! - [`batch`]: `sluice batch`, embedded or through Redis, and its summary.
//! - [`module`]: `sluice module put|ls|rm`.
//! - [`submit`]: `sluice submit`, one job.
//! - [`status`]: `sluice status`, queue depths, tenant backlogs and live workers.
//! - [`result`]: `sluice result`, a job's result and output (`--wait` for it).
//! - [`wait`]: `sluice wait`, and the waiting on completion notices behind
//!   `result --wait`; [`job_state`]: the messages and exit statuses of a job without a
//!   result.
//! - [`dlq`]: `sluice dlq list|retry|purge`.
//! - [`tenant`]: `sluice tenant …`, tenants, tokens and policies directly on Redis.
//! - [`serve`]: `sluice serve`, the HTTP API and the dispatcher.
//! - [`exporter`]: `sluice exporter`, the queue-state metrics without the API.
//! - [`redis`]: where the queue is (`--redis`, `--queue`, `--redis-ca`).
//!
//! `sluice bench` lives in [`crate::bench`].
//!
//! Every `run` answers the process's exit code, or an error the binary prints and exits
//! 2 with.

pub mod batch;
pub mod dlq;
pub mod exporter;
pub mod job_state;
pub mod module;
pub mod redis;
pub mod result;
pub mod serve;
pub mod status;
pub mod submit;
pub mod tenant;
pub mod wait;

pub use redis::RedisArgs;
