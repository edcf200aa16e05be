//! The L2 writer: artifacts go to disk on a thread of their own, off the job's path.
//!
//! Writing a multi-megabyte artifact with its fsync takes tens of milliseconds, which a
//! fresh worker's first job would otherwise wait for after an L3 hit (or a compile).
//! Writes are queued (at most [`QUEUE_BOUND`]); when the queue is full a write is
//! dropped: it only costs a later L3 read or compile. The write itself is what
//! [`Disk::put`] does (temporary file, sync, rename; the tag sidecar first), so a
//! reader never sees a partial artifact.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use super::Tier;
use super::key::ArtifactKey;
use super::l2::Disk;
use super::mac::Tag;
use crate::metrics::CacheMetrics;

/// Most artifact writes waiting for the disk; past it a write is dropped.
pub const QUEUE_BOUND: usize = 8;

/// What the writer thread is asked to do.
enum Request {
    /// Store an artifact.
    Put {
        key: ArtifactKey,
        bytes: Vec<u8>,
        tag: Tag,
    },
    /// Answer once every earlier request is done.
    Flush(mpsc::Sender<()>),
}

/// The handle to the writer thread; the thread ends when this is dropped, after the
/// writes already queued.
pub struct DiskWriter {
    queue: SyncSender<Request>,
}

impl DiskWriter {
    /// Starts the writer thread over `disk`. `None` if the thread cannot be started
    /// (the cache then writes on the caller's thread).
    pub fn start(disk: Arc<Disk>, metrics: CacheMetrics) -> Option<Self> {
        let (queue, requests) = mpsc::sync_channel(QUEUE_BOUND);
        let spawned = std::thread::Builder::new()
            .name("sluice-l2-writer".into())
            .spawn(move || write_all(&disk, &metrics, &requests));
        match spawned {
            Ok(_) => Some(DiskWriter { queue }),
            Err(error) => {
                tracing::warn!(%error, "cannot start the artifact writer thread; writing artifacts on the job's thread");
                None
            }
        }
    }

    /// Queues `bytes` (tagged `tag`) for disk under `key`. Returns false when the
    /// write was dropped (the queue is full, or the thread is gone).
    pub fn put(&self, key: &ArtifactKey, bytes: Vec<u8>, tag: &Tag) -> bool {
        let request = Request::Put {
            key: *key,
            bytes,
            tag: *tag,
        };
        match self.queue.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::info!(artifact = %key, bound = QUEUE_BOUND,
                    "artifact writes queue full; not writing this one to disk");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(artifact = %key, "artifact writer thread gone; not writing to disk");
                false
            }
        }
    }

    /// Waits until every write queued before this call is done (tests, benchmarks,
    /// and anything that must find the artifact on disk next).
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.queue.send(Request::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

/// The writer thread's loop: until every [`DiskWriter`] handle is dropped.
fn write_all(disk: &Disk, metrics: &CacheMetrics, requests: &Receiver<Request>) {
    for request in requests {
        match request {
            Request::Put { key, bytes, tag } => {
                if let Err(error) = disk.put(&key, &bytes, &tag) {
                    tracing::warn!(artifact = %key, %error, "could not write the artifact to disk");
                }
                metrics.set_bytes(Tier::L2, disk.bytes());
            }
            Request::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
