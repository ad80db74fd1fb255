//! Deletes finished jobs past their retention, in bounded batches; one process at a time
//! (the `pruner` lease in `lightjobs_leases`), every few minutes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How long the pruner lease lasts if its holder dies during a pass.
const LEASE: Duration = Duration::from_secs(600);

/// Rows deleted per statement: short locks, short undo.
const BATCH: u64 = 1000;

pub(crate) struct Pruner {
    pub store: Store,
    /// This process's worker id, the lease holder.
    pub worker_id: String,
    /// `processed` and `cancelled` jobs older than this go.
    pub processed: Duration,
    /// `failed` jobs older than this go; `None` keeps them.
    pub failed: Option<Duration>,
    pub interval: Duration,
}

impl Pruner {
    /// One pass; `None` when another process holds the pruner lease.
    pub(crate) async fn run_once(&self) -> crate::Result<Option<u64>> {
        self.store
            .with_lease("pruner", &self.worker_id, LEASE, || {
                self.store
                    .prune_finished(self.processed, self.failed, BATCH)
            })
            .await
    }

    pub(crate) async fn run(&self, stop: CancellationToken) {
        loop {
            if crate::runtime::timing::pause(self.interval, &stop).await {
                return;
            }
            match self.run_once().await {
                Ok(Some(n)) if n > 0 => {
                    tracing::info!(target: "lightjobs::pruner", deleted = n, "pruned finished jobs");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(target: "lightjobs::pruner", %error, "pruning failed");
                }
            }
        }
    }
}
