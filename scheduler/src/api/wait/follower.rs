//! The one follower per process: reads the completion notices while anyone waits and
//! hands each to the request waiting for that job.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sluice_shared::backoff::Backoff;
use sluice_shared::queue::redis::{NoticeReader, RedisQueue};
use tokio_util::sync::CancellationToken;

use super::registry::Waiters;
use super::{BLOCK, IDLE_RECHECK};
use crate::metrics::WaitMetrics;

/// The follower: reads the completion notices while anyone waits and hands each to its
/// waiter; ends when the API is gone.
pub(super) async fn follow(
    waiters: Weak<Waiters>,
    queue: Arc<RedisQueue>,
    metrics: WaitMetrics,
    closing: CancellationToken,
) {
    let mut reader: Option<NoticeReader> = None;
    let mut cursor: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut failing = false;
    loop {
        if closing.is_cancelled() {
            return;
        }
        let Some(w) = waiters.upgrade() else { return };
        let failure = if let Some(from) = &cursor {
            let Some(notices) = reader.as_ref() else {
                cursor = None;
                continue;
            };
            let read = tokio::select! {
                read = notices.completions(from, BLOCK) => read,
                () = closing.cancelled() => return,
            };
            match read {
                Ok((next, notices)) => {
                    cursor = Some(next);
                    w.deliver(notices);
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        } else if !w.anyone_waiting() {
            tokio::select! {
                () = w.wake.notified() => {}
                () = tokio::time::sleep(IDLE_RECHECK) => {}
                () = closing.cancelled() => return,
            }
            continue;
        } else {
            match start_following(&queue, &mut reader).await {
                Ok(from) => {
                    cursor = Some(from);
                    w.now_following();
                    None
                }
                Err(e) => Some(e),
            }
        };
        match failure {
            None => {
                backoff.reset();
                if failing {
                    tracing::info!("following completion notices for waiting requests again");
                    failing = false;
                }
            }
            Some(error) => {
                metrics.follower_error();
                if !failing {
                    tracing::warn!(%error, "following completion notices for waiting requests; they answer 202 unless their result is found");
                    failing = true;
                }
                // A quiet queue must not keep the follower reading for nobody.
                if w.stop_if_idle() {
                    cursor = None;
                }
                drop(w);
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = closing.cancelled() => return,
                }
                continue;
            }
        }
        if w.stop_if_idle() {
            cursor = None;
        }
    }
}

/// The reader (connected on first use) and a position in the notices older than now.
async fn start_following(
    queue: &RedisQueue,
    reader: &mut Option<NoticeReader>,
) -> Result<String, String> {
    if reader.is_none() {
        *reader = Some(queue.notice_reader().await.map_err(|e| e.to_string())?);
    }
    queue
        .results()
        .notices_from_now()
        .await
        .map_err(|e| e.to_string())
}
