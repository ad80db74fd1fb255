//! Moves `scheduled` jobs (delayed dispatches, retries after a backoff) to `pending` when
//! they are due, and wakes this process's workers when it did.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;
use crate::store::Store;

/// Most jobs moved by one statement.
const BATCH: u64 = 1000;

/// Queues paused in the database, as last read.
pub(crate) type Paused = Arc<RwLock<HashSet<String>>>;

/// The paused set is re-read every this many ticks (about a second).
const PAUSED_EVERY: u32 = 10;

pub(crate) struct Scheduler {
    pub store: Store,
    pub queue: JobQueue,
    pub interval: Duration,
    pub paused: Paused,
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

    /// Re-reads the paused queues; wakes the workers when one was resumed.
    pub(crate) async fn refresh_paused(&self) -> crate::Result<()> {
        let now: HashSet<String> = self.store.paused_queues().await?.into_iter().collect();
        let resumed = {
            let mut paused = self.paused.write().unwrap_or_else(|e| e.into_inner());
            let resumed = paused.iter().any(|q| !now.contains(q));
            *paused = now;
            resumed
        };
        if resumed {
            self.queue.notify_workers();
        }
        Ok(())
    }

    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut tick = 0u32;
        loop {
            if tick % PAUSED_EVERY == 0 {
                if let Err(error) = self.refresh_paused().await {
                    tracing::debug!(target: "lightjobs::scheduler", %error, "reading paused queues failed");
                }
            }
            tick = tick.wrapping_add(1);
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
