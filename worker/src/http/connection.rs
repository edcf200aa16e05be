//! One accepted connection's life: served until it ends, reaches its age (then asked to
//! finish its request and close, and dropped if it does not within a grace), is evicted
//! (dropped at once), or the server stops (asked to finish and close). The open
//! connections are registered in accept order so that a full endpoint can evict the
//! oldest.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The open connections in accept order, each with the sender whose drop evicts it.
#[derive(Default)]
pub(super) struct Registry {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    /// Accept order of the next connection.
    next: u64,
    /// Registered connections not yet ended or evicted, oldest first.
    by_age: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Registry {
    /// Registers a new connection; the receiver resolves when it is evicted, the
    /// guard unregisters it when dropped.
    pub(super) fn register(self: &Arc<Self>) -> (Registered, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let mut open = self.open.lock();
        let id = open.next;
        open.next += 1;
        open.by_age.insert(id, evict);
        let registered = Registered {
            registry: self.clone(),
            id,
        };
        (registered, evicted)
    }

    /// Evicts the oldest open connection (dropping its sender ends its task, which
    /// frees its permit); whether there was one.
    pub(super) fn evict_oldest(&self) -> bool {
        self.open.lock().by_age.pop_first().is_some()
    }
}

/// One connection's place in the [`Registry`], left when dropped.
pub(super) struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.open.lock().by_age.remove(&self.id);
    }
}

/// How one connection may end besides by itself.
pub(super) struct Ends {
    /// Resolves when the connection is evicted.
    pub(super) evicted: oneshot::Receiver<()>,
    /// Cancelled when the server stops accepting: the connection is asked to finish.
    pub(super) stopping: CancellationToken,
    /// Past this age the connection is asked to finish its request and close.
    pub(super) max_age: Option<Duration>,
    /// How long after its age it may take to finish before it is dropped (a client
    /// that does not read its answers would otherwise hold it).
    pub(super) finish_grace: Duration,
}

/// Serves `connection` until it ends one of the ways in `ends`.
pub(super) async fn run<C>(connection: C, ends: Ends)
where
    C: Future + GracefulConnection,
{
    let Ends {
        mut evicted,
        stopping,
        max_age,
        finish_grace,
    } = ends;
    let accepted = Instant::now();
    let aged = max_age.map(|age| accepted + age);
    let dropped = max_age.map(|age| accepted + age + finish_grace);
    tokio::pin!(connection);
    let mut finishing = false;
    loop {
        tokio::select! {
            // A client that goes away or times out ends its connection; nothing to do.
            _ = connection.as_mut() => return,
            _ = &mut evicted => return,
            () = sleep_until(dropped) => return,
            () = sleep_until(aged), if !finishing => {
                connection.as_mut().finish();
                finishing = true;
            }
            () = stopping.cancelled(), if !finishing => {
                connection.as_mut().finish();
                finishing = true;
            }
        }
    }
}

/// Sleeps until `deadline`; for ever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A connection that can be asked to finish its request in progress and close.
pub(super) trait GracefulConnection {
    /// Asks it to finish and close (hyper's `graceful_shutdown`).
    fn finish(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn finish(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
