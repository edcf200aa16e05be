//! Chunked blobs: inputs and outputs too large to travel inline. A blob is a meta hash
//! (`len`, `chunks`) plus one string key per chunk of at most `chunk_bytes`; every key
//! carries the blob TTL. The meta hash is written last, so a reader never sees a blob
//! that is still being written.

use std::io::Read;
use std::time::Duration;

use super::connection::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::RedisQueue;
use super::error::{StoreError, on_key, unavailable};
use super::keys::Keys;
use super::reply::millis;
use crate::queue::QueueError;

/// The blobs of a queue (from [`RedisQueue::blobs`]).
#[derive(Clone, Copy)]
pub struct Blobs<'a> {
    pub(super) q: &'a RedisQueue,
}

/// Why writing or reading a blob failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob does not exist (never written, or expired).
    #[error("blob {0} not found (expired?)")]
    NotFound(String),
    /// A chunk of the blob is gone (expired while the blob was read).
    #[error("blob {id} chunk {index} is missing (expired?)")]
    ChunkMissing {
        /// The blob's id.
        id: String,
        /// The missing chunk.
        index: u64,
    },
    /// The blob's meta hash does not say how many chunks it has.
    #[error("{0}: field chunks is not a number")]
    BadMeta(String),
    /// Reading what was to be written failed.
    #[error("reading blob source: {0}")]
    Source(String),
    /// The upload task or thread failed.
    #[error("{0}")]
    Upload(String),
    /// Redis failed, a key is corrupt, or a reply was not understood.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<BlobError> for QueueError {
    /// A store failure keeps its kind (a corrupt key or an unreadable reply is not
    /// cured by retrying); every other blob failure is one the caller may retry.
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Store(e) => e.into(),
            other => QueueError::Unavailable(other.to_string()),
        }
    }
}

impl Blobs<'_> {
    /// Writes a blob in chunks; [`BlobWriter::finish`] returns its id and length.
    pub fn writer(self) -> BlobWriter {
        BlobWriter::new(
            self.q.connection(),
            self.q.keys.clone(),
            self.q.config.chunk_bytes,
            self.q.config.blob_ttl,
        )
    }

    /// Reads a blob chunk by chunk, prefetching one chunk ahead.
    pub fn reader(self, id: &str) -> BlobReader {
        BlobReader::new(self.q.connection(), self.q.keys.clone(), id.to_owned())
    }

    /// A blob as a blocking `Read` (for code on blocking threads); `handle` is the
    /// runtime the fetches run on.
    pub fn read_stream(self, handle: tokio::runtime::Handle, id: &str) -> BlobReadStream {
        let _runtime = handle.enter();
        BlobReadStream::new(handle.clone(), self.reader(id))
    }

    /// A new blob as a blocking `Write` (for code on blocking threads).
    pub fn write_stream(self, handle: tokio::runtime::Handle) -> BlobWriteStream {
        BlobWriteStream::new(handle, self.writer())
    }

    /// Deletes a finished blob of `len` bytes (an upload refused after it was written).
    pub async fn delete(self, id: &str, len: u64) -> Result<(), BlobError> {
        let chunk = self.q.config.chunk_bytes.max(1) as u64;
        let chunks = len.div_ceil(chunk);
        let mut keys = vec![self.q.keys.blob_meta(id)];
        keys.extend((0..chunks).map(|i| self.q.keys.blob_chunk(id, i)));
        for batch in keys.chunks(512) {
            redis::cmd("DEL")
                .arg(batch)
                .query_async::<()>(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

/// Writes one blob, chunk by chunk, with one chunk upload in flight while the next
/// chunk fills.
pub struct BlobWriter {
    conn: Connection,
    keys: Keys,
    id: String,
    chunk_bytes: usize,
    ttl: Duration,
    buf: Vec<u8>,
    chunks: u64,
    len: u64,
    in_flight: Option<JoinHandle<Result<(), BlobError>>>,
}

impl BlobWriter {
    fn new(conn: Connection, keys: Keys, chunk_bytes: usize, ttl: Duration) -> Self {
        BlobWriter {
            conn,
            keys,
            id: uuid::Uuid::new_v4().simple().to_string(),
            chunk_bytes: chunk_bytes.max(1),
            ttl,
            buf: Vec::new(),
            chunks: 0,
            len: 0,
            in_flight: None,
        }
    }

    /// The blob's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    async fn wait_in_flight(&mut self) -> Result<(), BlobError> {
        if let Some(upload) = self.in_flight.take() {
            upload
                .await
                .map_err(|e| BlobError::Upload(format!("blob upload task: {e}")))??;
        }
        Ok(())
    }

    async fn send_chunk(&mut self) -> Result<(), BlobError> {
        self.wait_in_flight().await?;
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_bytes));
        let key = self.keys.blob_chunk(&self.id, self.chunks);
        let mut conn = self.conn.clone();
        let ttl = millis(self.ttl);
        self.chunks += 1;
        self.in_flight = Some(tokio::spawn(async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(chunk)
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| BlobError::from(on_key(&key)(e)))
        }));
        Ok(())
    }

    /// Appends `bytes`.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), BlobError> {
        while !bytes.is_empty() {
            let room = self.chunk_bytes - self.buf.len();
            let take = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            self.len += take as u64;
            bytes = &bytes[take..];
            if self.buf.len() == self.chunk_bytes {
                self.send_chunk().await?;
            }
        }
        Ok(())
    }

    /// Copies everything from `reader` into the blob.
    pub async fn write_from(
        &mut self,
        mut reader: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<(), BlobError> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| BlobError::Source(e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n]).await?;
        }
    }

    /// Uploads the rest and publishes the blob; returns its id and length.
    pub async fn finish(mut self) -> Result<(String, u64), BlobError> {
        if !self.buf.is_empty() {
            self.send_chunk().await?;
        }
        self.wait_in_flight().await?;
        let meta = self.keys.blob_meta(&self.id);
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&meta)
            .arg("len")
            .arg(self.len)
            .arg("chunks")
            .arg(self.chunks)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&meta)
            .arg(millis(self.ttl))
            .ignore()
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(on_key(&meta))?;
        Ok((self.id, self.len))
    }
}

/// Reads one blob in order, one chunk prefetched, for async code
/// ([`BlobReadStream`] is the blocking form).
pub struct BlobReader {
    chunks: mpsc::Receiver<Result<Vec<u8>, BlobError>>,
}

impl BlobReader {
    /// Starts fetching; must be called within a tokio runtime context.
    fn new(mut conn: Connection, keys: Keys, id: String) -> Self {
        let (tx, chunks) = mpsc::channel(2);
        tokio::spawn(async move {
            let meta_key = keys.blob_meta(&id);
            let meta: std::collections::HashMap<String, String> = match redis::cmd("HGETALL")
                .arg(&meta_key)
                .query_async(&mut conn)
                .await
            {
                Ok(meta) => meta,
                Err(e) => {
                    let _ = tx.send(Err(on_key(&meta_key)(e).into())).await;
                    return;
                }
            };
            let count = match meta.get("chunks").map(|c| c.parse::<u64>()) {
                Some(Ok(count)) => count,
                Some(Err(_)) => {
                    let _ = tx.send(Err(BlobError::BadMeta(meta_key))).await;
                    return;
                }
                None => {
                    let _ = tx.send(Err(BlobError::NotFound(id))).await;
                    return;
                }
            };
            for index in 0..count {
                let chunk_key = keys.blob_chunk(&id, index);
                let chunk: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
                    .arg(&chunk_key)
                    .query_async(&mut conn)
                    .await;
                let item = match chunk {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err(BlobError::ChunkMissing {
                        id: id.clone(),
                        index,
                    }),
                    Err(e) => Err(on_key(&chunk_key)(e).into()),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        BlobReader { chunks }
    }

    /// The next chunk, `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BlobError> {
        match self.chunks.recv().await {
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

/// A blob as a blocking [`Read`], for guests' stdin. The chunks are fetched by a
/// thread of its own, one chunk ahead, and handed over through a std channel: the
/// reader is called from inside wasmtime-wasi's own `block_on`, where waiting on a
/// tokio channel is not allowed.
pub struct BlobReadStream {
    chunks: std::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    current: Vec<u8>,
    pos: usize,
    failed: Option<String>,
}

impl BlobReadStream {
    fn new(handle: tokio::runtime::Handle, mut reader: BlobReader) -> Self {
        let (tx, chunks) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            loop {
                let item = match handle.block_on(reader.next_chunk()) {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => return,
                    Err(e) => Err(e.to_string()),
                };
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        BlobReadStream {
            chunks,
            current: Vec::new(),
            pos: 0,
            failed: None,
        }
    }
}

impl Read for BlobReadStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.clone()));
        }
        while self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = Some(e.clone());
                    return Err(std::io::Error::other(e));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A blob as a blocking [`std::io::Write`], for guests' stdout: bytes are gathered into
/// chunks and uploaded by a thread of its own (for the same reason as
/// [`BlobReadStream`]); [`BlobWriteStream::finish`] publishes the blob.
pub struct BlobWriteStream {
    chunk_bytes: usize,
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    uploader: Option<std::thread::JoinHandle<Result<(String, u64), BlobError>>>,
}

impl BlobWriteStream {
    fn new(handle: tokio::runtime::Handle, mut writer: BlobWriter) -> Self {
        let chunk_bytes = writer.chunk_bytes;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let uploader = std::thread::spawn(move || {
            while let Ok(chunk) = rx.recv() {
                handle.block_on(writer.write(&chunk))?;
            }
            handle.block_on(writer.finish())
        });
        BlobWriteStream {
            chunk_bytes,
            buf: Vec::with_capacity(chunk_bytes),
            tx: Some(tx),
            uploader: Some(uploader),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_bytes));
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| std::io::Error::other("blob already finished"))?;
        tx.send(chunk)
            .map_err(|_| std::io::Error::other("blob upload failed"))
    }

    /// Uploads the rest and publishes the blob; returns its id and length.
    pub fn finish(mut self) -> Result<(String, u64), BlobError> {
        if !self.buf.is_empty() {
            self.send().map_err(|e| BlobError::Upload(e.to_string()))?;
        }
        self.tx.take();
        self.uploader
            .take()
            .map(|t| t.join())
            .unwrap_or_else(|| Ok(Err(BlobError::Upload("no uploader".into()))))
            .map_err(|_| BlobError::Upload("blob uploader panicked".into()))?
    }
}

impl std::io::Write for BlobWriteStream {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = self.chunk_bytes - self.buf.len();
        let take = room.min(bytes.len());
        self.buf.extend_from_slice(&bytes[..take]);
        if self.buf.len() == self.chunk_bytes {
            self.send()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
