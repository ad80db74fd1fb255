//! Moves `scheduled` jobs (delayed dispatches, retries after a backoff) to `pending` when
//! they are due, and wakes this process's workers when it did.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;
use crate::store::Store;

/// Most jobs moved by one statement.
const BATCH: u64 = 1000;

pub(crate) struct Scheduler {
    pub store: Store,
    pub queue: JobQueue,
    pub interval: Duration,
}

impl Scheduler {
    /// Promotes every due job; returns how many.
    pub(crate) async fn run_once(&self) -> crate::Result<u64> {
        let mut total = 0;
        loop {
            let n = self.store.promote_scheduled(BATCH).await?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            match self.run_once().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(target: "lightjobs::scheduler", promoted = n, "scheduled jobs are due");
                    self.queue.notify_workers();
                }
                Err(error) => {
                    tracing::debug!(target: "lightjobs::scheduler", %error, "promoting due jobs failed");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.interval.mul_f64(0.8 + 0.4 * fastrand::f64())) => {}
            }
        }
    }
}
