//! A stored module's metadata for a submitter: read from its key, so a submitter never
//! downloads the module; for a module stored before metadata was recorded on upload,
//! computed once from its (hash-verified) bytes and recorded for the next submitter.

use sluice_shared::ModuleHash;
use sluice_shared::RedisQueue;
use sluice_shared::module_meta::ModuleMeta;
use sluice_shared::queue::redis::ModuleStoreError;

use crate::modules;

/// The metadata of module `hash`, or `None` when the module is not stored. Reads the
/// metadata key; only when it holds none (or garbage) does it fetch the bytes, compute
/// the metadata off the async threads and record it with the bytes' lifetime.
pub async fn stored_meta(
    queue: &RedisQueue,
    hash: &ModuleHash,
) -> Result<Option<ModuleMeta>, ModuleStoreError> {
    match queue.modules().meta(hash).await {
        Ok(Some(meta)) => return Ok(Some(meta)),
        Ok(None) => {}
        Err(e @ ModuleStoreError::BadMeta { .. }) => {
            tracing::warn!(module = %hash, "{e}; computing it again from the module");
        }
        Err(e) => return Err(e),
    }
    let Some(wasm) = queue.modules().get(hash).await? else {
        return Ok(None);
    };
    let size = wasm.len() as u64;
    // Reading the exports walks the module: off the async threads, like validation.
    match tokio::task::spawn_blocking(move || modules::metadata(&wasm)).await {
        Ok(meta) => {
            queue.modules().record_meta(hash, &meta).await?;
            tracing::info!(module = %hash, "recorded the metadata of a module stored without it");
            Ok(Some(meta))
        }
        // The runtime is shutting down: answer by the shared rule over no exports, as
        // before, and record nothing.
        Err(_) => Ok(Some(ModuleMeta::new(size, Vec::new(), []))),
    }
}
