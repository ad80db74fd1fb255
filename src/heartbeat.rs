//! Registers this worker process in `lightjobs_workers` and keeps its heartbeat fresh, so
//! that the rescuer of any process can tell a live holder of a job from a dead one.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::{Store, WorkerInfo};

/// Rows of processes silent for this long are deleted (kept a while for inspection).
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(3600);

pub(crate) struct Heartbeat {
    pub store: Store,
    pub info: WorkerInfo,
    pub interval: Duration,
}

impl Heartbeat {
    pub(crate) async fn run_once(&self) -> crate::Result<()> {
        self.store.beat_worker(&self.info).await
    }

    /// Beats every `interval` until `stop`, then removes the row.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut outage: Option<Instant> = None;
        loop {
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
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        if let Err(error) = self
            .store
            .delete_worker(&self.info.id, FORGET_DEAD_AFTER)
            .await
        {
            tracing::warn!(target: "lightjobs::heartbeat", %error, "could not remove the worker row; it will go stale");
        }
    }
}
