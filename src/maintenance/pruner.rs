//! Deletes finished jobs past their retention, in bounded batches; one process at a time
//! (the `pruner` lease in `lightjobs_leases`), every few minutes.

use std::time::Duration;

use super::role::Role;
use crate::store::Store;

/// How long the pruner lease lasts if its holder dies during a pass.
const LEASE: Duration = Duration::from_secs(600);

/// Rows deleted per statement: short locks, short undo.
const BATCH: u64 = 1000;

pub(crate) struct Pruner {
    store: Store,
    /// This process's worker id, the lease holder.
    worker_id: String,
    /// `processed` and `cancelled` jobs older than this go.
    processed: Duration,
    /// `failed` jobs older than this go; `None` keeps them.
    failed: Option<Duration>,
    interval: Duration,
}

impl Pruner {
    pub(crate) fn new(
        store: Store,
        worker_id: String,
        (processed, failed): (Duration, Option<Duration>),
        interval: Duration,
    ) -> Pruner {
        Pruner {
            store,
            worker_id,
            processed,
            failed,
            interval,
        }
    }

    /// One pass; `None` when another process holds the pruner lease.
    pub(crate) async fn run_once(&self) -> crate::Result<Option<u64>> {
        self.store
            .with_lease("pruner", &self.worker_id, LEASE, || {
                self.store
                    .prune_finished(self.processed, self.failed, BATCH)
            })
            .await
    }
}

impl Role for Pruner {
    const NAME: &'static str = "pruner";

    fn first_pause(&self) -> Duration {
        self.interval
    }

    async fn pass(&self) -> crate::Result<Duration> {
        if let Some(n) = self.run_once().await? {
            if n > 0 {
                tracing::info!(target: "lightjobs::pruner", deleted = n, "pruned finished jobs");
            }
        }
        Ok(self.interval)
    }

    fn after_error(&self) -> Duration {
        self.interval
    }
}
