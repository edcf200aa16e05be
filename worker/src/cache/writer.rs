//! The L2 writer: artifacts go to disk on a thread of their own, off the job's path.
//!
//! Writing a multi-megabyte artifact with its fsync takes tens of milliseconds, which a
//! fresh worker's first job would otherwise wait for after an L3 hit (or a compile).
//! Writes are queued (at most [`QUEUE_BOUND`] of them and [`QUEUE_BYTES`] bytes); when
//! the queue is full a write is dropped: it only costs a later L3 read or compile. The write itself is what
//! [`Disk::put`] does (temporary file, sync, rename; the tag sidecar first), so a
//! reader never sees a partial artifact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use super::Tier;
use super::key::ArtifactKey;
use super::l2::Disk;
use super::mac::Tag;
use crate::metrics::CacheMetrics;

/// Most artifact writes waiting for the disk; past it a write is dropped.
pub const QUEUE_BOUND: usize = 8;
/// Most artifact bytes waiting for the disk (held in memory meanwhile); past it a write
/// is dropped.
pub const QUEUE_BYTES: u64 = 256 << 20;

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
    /// Bytes queued and not written yet.
    pending: Arc<AtomicU64>,
}

impl DiskWriter {
    /// Starts the writer thread over `disk`. `None` if the thread cannot be started
    /// (the cache then writes on the caller's thread).
    pub fn start(disk: Arc<Disk>, metrics: CacheMetrics) -> Option<Self> {
        let (queue, requests) = mpsc::sync_channel(QUEUE_BOUND);
        let pending = Arc::new(AtomicU64::new(0));
        let written = pending.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-l2-writer".into())
            .spawn(move || write_all(&disk, &metrics, &requests, &written));
        match spawned {
            Ok(_) => Some(DiskWriter { queue, pending }),
            Err(error) => {
                tracing::warn!(%error, "cannot start the artifact writer thread; writing artifacts on the job's thread");
                None
            }
        }
    }

    /// Queues `bytes` (tagged `tag`) for disk under `key`. Returns false when the
    /// write was dropped (the queue is full, or the thread is gone).
    pub fn put(&self, key: &ArtifactKey, bytes: Vec<u8>, tag: &Tag) -> bool {
        let len = bytes.len() as u64;
        let queued = self.pending.fetch_add(len, Ordering::SeqCst);
        if queued.saturating_add(len) > QUEUE_BYTES {
            self.pending.fetch_sub(len, Ordering::SeqCst);
            tracing::info!(artifact = %key, queued, bound = QUEUE_BYTES,
                "artifact writes queue holds too many bytes; not writing this one to disk");
            return false;
        }
        let request = Request::Put {
            key: *key,
            bytes,
            tag: *tag,
        };
        let sent = self.queue.try_send(request);
        if sent.is_err() {
            self.pending.fetch_sub(len, Ordering::SeqCst);
        }
        match sent {
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
fn write_all(
    disk: &Disk,
    metrics: &CacheMetrics,
    requests: &Receiver<Request>,
    pending: &AtomicU64,
) {
    for request in requests {
        match request {
            Request::Put { key, bytes, tag } => {
                if let Err(error) = disk.put(&key, &bytes, &tag) {
                    tracing::warn!(artifact = %key, %error, "could not write the artifact to disk");
                }
                pending.fetch_sub(bytes.len() as u64, Ordering::SeqCst);
                metrics.set_bytes(Tier::L2, disk.bytes());
            }
            Request::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use sluice_shared::ModuleHash;

    use super::*;
    use crate::cache::key::EngineFingerprint;
    use crate::metrics::WorkerMetrics;

    fn key(n: u8) -> ArtifactKey {
        ArtifactKey {
            module: ModuleHash([n; 32]),
            engine: EngineFingerprint([9; 32]),
        }
    }

    #[test]
    fn queued_writes_reach_the_disk_and_a_write_past_the_byte_bound_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open_dir(dir.path(), u64::MAX, "test").unwrap());
        let metrics = WorkerMetrics::new().cache;
        let writer = DiskWriter::start(disk.clone(), metrics.clone()).unwrap();
        assert!(writer.put(&key(1), b"artifact one".to_vec(), &Tag([1; 32])));
        writer.flush();
        let mut stored = disk.open(&key(1)).unwrap().expect("written");
        let mut bytes = Vec::new();
        stored.file.read_to_end(&mut bytes).unwrap();
        assert_eq!(
            (bytes.as_slice(), stored.tag),
            (&b"artifact one"[..], Tag([1; 32]))
        );
        assert_eq!(metrics.bytes.with_label_values(&["l2"]).get(), 12);

        // More than the queue may hold in memory: dropped, nothing written.
        let huge = vec![0; usize::try_from(QUEUE_BYTES).unwrap() + 1];
        assert!(!writer.put(&key(2), huge, &Tag([2; 32])));
        writer.flush();
        assert!(disk.open(&key(2)).unwrap().is_none());
        assert_eq!(writer.pending.load(Ordering::SeqCst), 0);
    }
}
