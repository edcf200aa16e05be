//! Distributed mode from the submitter's side: upload modules and inputs to Redis,
//! enqueue jobs, follow their completion notices, and collect results and outputs.
//!
//! - this file: the pieces `submit`, `result` and `module put` share with batches
//!   (module upload, input upload, output download);
//! - [`run`]: `sluice batch --redis`: a recorded batch, followed to its end, recovered
//!   when Redis loses jobs, interruptible (cancel or detach);
//! - [`attach`]: `sluice batch attach` and `sluice batch cancel`, on a batch by id;
//! - [`follower`]: waiting for a set of jobs through the completion notices;
//! - `recover.rs`: enqueueing again the jobs Redis lost;
//! - [`watch`]: what the batch waits for (no worker on the queue) and writing each
//!   finished job's output and report line.

use std::path::Path;

use sluice_shared::module_meta::ModuleMeta;
use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{
    BlobId, EntryPoint, JobId, JobInput, JobOutput, JobResult, Limits, ModuleHash, QueueError,
};
use tokio::io::AsyncWriteExt;

use crate::batch::BatchError;
use crate::modules;

pub mod attach;
pub mod follower;
mod recover;
pub mod run;
pub mod watch;

pub use attach::{attach, cancel};
pub use follower::Follower;
pub use run::{OnInterrupt, run_batch};

/// Reads a module file and validates it; returns its wasm, hash and metadata.
pub(crate) fn read_module(path: &Path) -> Result<(Vec<u8>, ModuleHash, ModuleMeta), BatchError> {
    let bytes = std::fs::read(path).map_err(|error| BatchError::Module {
        path: path.to_owned(),
        error,
    })?;
    let (wasm, hash) = modules::prepare(&bytes).map_err(|e| BatchError::BadModule {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let meta = modules::metadata(&wasm);
    Ok((wasm, hash, meta))
}

/// Reads a module file, validates it and stores it with its metadata; returns its hash
/// and the entry point it offers.
pub async fn put_module(
    queue: &RedisQueue,
    path: &Path,
    alias: Option<&str>,
) -> Result<(ModuleHash, EntryPoint), BatchError> {
    let (wasm, _, meta) = read_module(path)?;
    let hash = queue.modules().put_with_meta(&wasm, &meta, alias).await?;
    Ok((hash, meta.default_entry))
}

/// `limits` clamped to `tenant`'s policy (the fleet default for a tenant without one),
/// as every submitter must: workers refuse jobs over the policy.
pub async fn clamp_to_policy(
    queue: &RedisQueue,
    tenant: &str,
    limits: &Limits,
) -> Result<Limits, QueueError> {
    Ok(queue
        .tenants()
        .policy(tenant)
        .await?
        .unwrap_or_default()
        .clamp(limits))
}

/// The input for a file: inline when small, else a chunked blob streamed from disk.
pub async fn upload_input(
    queue: &RedisQueue,
    path: &Path,
    len: u64,
) -> Result<JobInput, BatchError> {
    let read_err = |error| BatchError::Inputs {
        path: path.to_owned(),
        error,
    };
    if len <= queue.config().inline_limit as u64 {
        return Ok(JobInput::Inline(std::fs::read(path).map_err(read_err)?));
    }
    let file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut blob = queue.blobs().writer();
    blob.write_from(tokio::io::BufReader::with_capacity(1 << 20, file))
        .await?;
    let (id, len) = blob.finish().await?;
    Ok(JobInput::Blob {
        id: BlobId::new(id),
        len,
    })
}

/// Writes a finished job's output to `out` (inline bytes, or the blob streamed chunk by
/// chunk).
pub async fn write_output(
    queue: &RedisQueue,
    result: &JobResult,
    mut out: impl tokio::io::AsyncWrite + Unpin,
) -> Result<(), BatchError> {
    let io = |error| BatchError::Output {
        path: "output".into(),
        error,
    };
    match &result.output {
        JobOutput::Written => {}
        JobOutput::Inline(bytes) => out.write_all(bytes).await.map_err(io)?,
        JobOutput::Blob { id, .. } => {
            let mut reader = queue.blobs().reader(id);
            while let Some(chunk) = reader.next_chunk().await? {
                out.write_all(&chunk).await.map_err(io)?;
            }
        }
    }
    out.flush().await.map_err(io)
}

/// Fetches stored results; missing ones are skipped.
pub async fn fetch_results(
    queue: &RedisQueue,
    ids: &[JobId],
) -> Result<Vec<JobResult>, QueueError> {
    Ok(queue.results().fetch(ids).await?)
}
