//! # sluice-scheduler
//!
//! The user-facing side of Sluice: the `sluice` command line and (in distributed mode)
//! the scheduler service.
//!
//! - [`cli`]: the subcommands, one file per command group; `main.rs` only parses and
//!   calls them.
//! - [`batch`]: embedded batch mode; [`distributed`]: the submitter's side of
//!   distributed mode (`batch --redis`, `submit`, `result`). Both write their report
//!   through one writer (`report.rs`).
//! - [`modules`]: module validation (wasmparser, off the async threads) and the
//!   metadata read from a module on upload; [`module_meta`]: a stored module's
//!   metadata for a submitter (never the module itself).
//! - [`api`]: `sluice serve`'s HTTP API, one file per resource; [`dispatch`]: the
//!   fair-admission dispatcher beside it.
//! - [`metrics`]: every metric the binary exports (HTTP, scheduler, the queue state
//!   `sluice serve` and `sluice exporter` read from Redis).
//! - [`bench`]: `sluice bench`.
//!
//! [`batch`] is embedded batch mode: with no infrastructure at all, it runs a module over
//! every file of a directory through an in-memory [`Queue`](sluice_shared::Queue) and the
//! same worker loop the fleet uses ([`sluice_worker::executor`]), writing one output per
//! input and a `report.jsonl`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_scheduler::batch::BatchError> {
//! use sluice_scheduler::batch::{BatchOptions, run_batch};
//!
//! let options = BatchOptions::new("upper.wasm".into(), "inputs".into(), "out".into());
//! let summary = run_batch(options).await?;
//! println!("{} of {} succeeded", summary.succeeded(), summary.total);
//! # Ok(()) }
//! ```

pub mod api;
pub mod batch;
pub mod bench;
pub mod cli;
pub mod dispatch;
pub mod distributed;
pub mod metrics;
pub mod module_meta;
pub mod modules;
mod report;
