//! Counts the jobs finished each minute into `lightjobs_counts` (see `store::counts`), so
//! that `stats`, the metrics and the dashboard read minutes instead of retained rows. One
//! process at a time does it (the `rollup` lease); the recount is idempotent, so two at once
//! would only do the work twice.

use std::time::Duration;

use super::role::Role;
use crate::store::Store;

/// How often the rollup counts: what a count reads from `jobs` itself is at most about
/// this long's finished jobs.
const EVERY: Duration = Duration::from_secs(10);

/// How long the rollup lease lasts if its holder dies during a pass.
const LEASE: Duration = Duration::from_secs(60);

/// How long the minutes are kept: a month of charts.
const KEEP: Duration = Duration::from_secs(31 * 24 * 3600);

pub(crate) struct Rollup {
    store: Store,
    /// This process's worker id, the lease holder.
    worker_id: String,
}

impl Rollup {
    pub(crate) fn new(store: Store, worker_id: String) -> Rollup {
        Rollup { store, worker_id }
    }

    /// One pass; returns whether it caught up with now (`None`: another process holds
    /// the lease).
    pub(crate) async fn run_once(&self) -> crate::Result<Option<bool>> {
        self.store
            .with_lease("rollup", &self.worker_id, LEASE, || async {
                // Catching up after a long stop goes an hour a statement.
                let mut caught_up = false;
                for _ in 0..25 {
                    caught_up = self.store.roll_up().await?;
                    if caught_up {
                        break;
                    }
                }
                self.store.prune_counts(KEEP).await?;
                Ok(caught_up)
            })
            .await
    }
}

impl Role for Rollup {
    const NAME: &'static str = "rollup";

    async fn pass(&self) -> crate::Result<Duration> {
        self.run_once().await?;
        Ok(EVERY)
    }

    fn after_error(&self) -> Duration {
        EVERY
    }
}
