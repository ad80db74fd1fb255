//! Registers this worker process in `lightjobs_workers` and keeps its heartbeat fresh, so
//! that the rescuer of any process can tell a live holder of a job from a dead one.
//!
//! Each beat the database confirms extends this process's own lease on its jobs (see
//! [`Fence`]): a process whose beats stop landing stops its jobs before another may
//! judge it dead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::runtime::completer::LeftBehind;
use crate::runtime::fence::Fence;
use crate::store::{Store, WorkerInfo};

/// Rows of processes silent for this long are deleted (kept a while for inspection).
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(3600);

pub(crate) struct Heartbeat {
    store: Store,
    info: WorkerInfo,
    /// Confirmed here; watched by the worker thread.
    fence: Arc<Fence>,
    /// The shutdown's releases the database refused (filled by the completer): written
    /// with the row as it stops.
    left_behind: LeftBehind,
}

impl Heartbeat {
    pub(crate) fn new(
        store: Store,
        info: WorkerInfo,
        fence: Arc<Fence>,
        left_behind: LeftBehind,
    ) -> Heartbeat {
        Heartbeat {
            store,
            info,
            fence,
            left_behind,
        }
    }

    /// One beat, within its interval: a beat that has not landed by then is no use, and
    /// the next one goes on a fresh connection.
    pub(crate) async fn run_once(&self) -> crate::Result<()> {
        let sent = Instant::now();
        self.store.beat_worker(&self.info).await?;
        self.fence.confirm(sent);
        Ok(())
    }

    /// Beats every interval until `stop`, then removes the row.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        let interval = self.info.interval;
        let mut outage: Option<Instant> = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match self.run_once().await {
                Ok(()) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(target: "lightjobs::heartbeat", down_for = ?since.elapsed(), "heartbeat written again");
                    }
                }
                Err(error) => {
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(target: "lightjobs::heartbeat", %error, "heartbeat failed; retrying");
                    }
                }
            }
        }
        let left: Vec<_> = self
            .left_behind
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let gone = if left.is_empty() {
            self.store
                .delete_worker(&self.info.id, FORGET_DEAD_AFTER)
                .await
        } else {
            // The rescuer of another process takes these at once, attempts returned.
            tracing::warn!(target: "lightjobs::heartbeat", jobs = left.len(), "stopping with releases the database did not take; leaving them to the rescuer");
            self.store.leave_worker(&self.info.id, &left).await
        };
        if let Err(error) = gone {
            tracing::warn!(target: "lightjobs::heartbeat", %error, "could not remove the worker row; it will go stale");
        }
    }
}
