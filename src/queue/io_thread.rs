//! The queue's own connection thread: one runtime that owns the dispatch pool.
//!
//! actix-web runs each HTTP worker on a runtime of its own, and a mysql_async `Pool` must
//! not be shared between runtimes: a connection is driven by the runtime that opened it
//! (stalled while that thread is busy) and the pool's recycler dies with the runtime that
//! first used it, leaving the pool disconnected for good. So every statement of a
//! [`JobQueue`](crate::JobQueue) runs here, and callers on any runtime await the result
//! through a channel; the cost is one thread hop (tens of microseconds) per call.

use std::future::Future;

use futures::future::BoxFuture;
use mysql_async::Opts;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::combiner::{self, Pending};
use super::ticket::Ticket;
use super::waker::Waker;
use crate::error::{Error, Result};
use crate::nodes::{Deadlines, Nodes};
use crate::runtime::handoff::Reservation;
use crate::store::{NewIds, Store};

type Task = Box<dyn FnOnce(Store) -> BoxFuture<'static, ()> + Send>;

#[derive(Debug)]
pub(crate) struct IoThread {
    tasks: mpsc::UnboundedSender<Task>,
    /// Plain dispatches, for the combiner.
    dispatches: mpsc::UnboundedSender<Pending>,
    /// Places for dispatches waiting for the combiner: the bound on its list.
    places: Arc<Semaphore>,
    /// Wakes idle workers of other processes after dispatches.
    waker: Waker,
}

impl IoThread {
    /// Starts the thread; it ends, closing its connections, when the `IoThread` is dropped.
    pub(crate) fn start(nodes: Vec<Opts>, deadlines: Deadlines) -> Result<IoThread> {
        let (tasks, mut rx) = mpsc::unbounded_channel::<Task>();
        let (dispatches, dispatched) = mpsc::unbounded_channel::<Pending>();
        let store = Store::on(Nodes::new(nodes, deadlines));
        let (waker, wakes) = Waker::new(store.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("lightjobs-io".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::spawn(wakes);
                    let combiner = tokio::spawn(combiner::run(store.clone(), dispatched));
                    while let Some(task) = rx.recv().await {
                        tokio::spawn(task(store.clone()));
                    }
                    // Both senders belong to the `IoThread`: the combiner ends with this
                    // loop, once its batches in flight are written.
                    let _ = combiner.await;
                    let _ = store.nodes().clone().disconnect().await;
                });
            })?;
        Ok(IoThread {
            tasks,
            dispatches,
            places: Arc::new(Semaphore::new(crate::defaults::MAX_WAITING_DISPATCHES)),
            waker,
        })
    }

    /// Inserts one plain job, combined with the dispatches arriving at the same time; with
    /// `handoff`, inserted already claimed and handed to that local worker.
    ///
    /// Past [`MAX_WAITING_DISPATCHES`](crate::defaults::MAX_WAITING_DISPATCHES) waiting, it
    /// fails at once with [`Error::Backlog`]. `ticket` lets the caller give the dispatch up
    /// (its deadline passed) and learn whether it had been sent.
    pub(crate) async fn dispatch(
        &self,
        job: crate::store::NewJob,
        ids: NewIds,
        handoff: Option<Reservation>,
        ticket: Arc<Ticket>,
    ) -> Result<u64> {
        let place = self
            .places
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Backlog(crate::defaults::MAX_WAITING_DISPATCHES))?;
        let (reply, id) = oneshot::channel();
        self.dispatches
            .send(Pending {
                job,
                ids,
                handoff,
                reply,
                ticket,
                _place: place,
            })
            .map_err(|_| Error::QueueClosed)?;
        id.await.map_err(|_| Error::QueueClosed)?
    }

    /// Wakes an idle worker process that serves `queue` (`None`: any), soon.
    pub(crate) fn wake_others(&self, queue: Option<&str>) {
        self.waker.wake(queue);
    }

    /// Runs `f` with the store on the connection thread and returns its result.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let task: Task = Box::new(move |store| {
            Box::pin(async move {
                let _ = done.send(f(store).await);
            })
        });
        self.tasks.send(task).map_err(|_| Error::QueueClosed)?;
        result.await.map_err(|_| Error::QueueClosed)?
    }
}
