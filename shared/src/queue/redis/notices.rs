//! [`NoticeReader`]: the completion-notice stream read over a blocking connection of
//! its own. A process that follows notices for long (the HTTP API's waiters) must not
//! queue its `XREAD BLOCK` behind, or in front of, the queue's other blocking reads (the
//! dispatcher's own notice reads share [`RedisQueue`]'s blocking connection): on one
//! multiplexed connection each block holds up every command behind it.

use std::time::Duration;

use super::RedisQueue;
use super::blocking::BlockingConnection;
use super::connect::ConnectError;
use super::error::StoreError;
use super::error::on_key;
use super::results::{notices_cmd, notices_of};
use crate::job::JobId;
use crate::outcome::OutcomeKind;

/// Why reading the completion notices failed.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// Redis failed or is unreachable, the notice stream is corrupt, or its reply was
    /// not understood.
    #[error("reading the completion notices: {0}")]
    Read(#[from] StoreError),
}

/// Reads a queue's completion notices (`sluice:{q}:done`) on a connection of its own
/// (from [`RedisQueue::notice_reader`]).
pub struct NoticeReader {
    blocking: BlockingConnection,
    key: String,
}

impl RedisQueue {
    /// A reader of this queue's completion notices over a new connection of its own.
    pub async fn notice_reader(&self) -> Result<NoticeReader, ConnectError> {
        Ok(NoticeReader {
            blocking: self.new_blocking_connection().await?,
            key: self.keys().done.clone(),
        })
    }
}

impl NoticeReader {
    /// Completion notices after stream id `after`, waiting up to `block`: the last id
    /// read and each `(job id, outcome kind)`, as
    /// [`Results::completions`](super::Results::completions) reads them.
    pub async fn completions(
        &self,
        after: &str,
        block: Duration,
    ) -> Result<(String, Vec<(JobId, OutcomeKind)>), NoticeError> {
        let cmd = notices_cmd(&self.key, after, block);
        let reply = self
            .blocking
            .query(&cmd, Some(block))
            .await
            .map_err(on_key(&self.key))?;
        Ok(notices_of(reply, after)?)
    }
}
