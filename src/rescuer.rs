//! Returns jobs held by dead worker processes (stale heartbeat) to `pending`. Every worker
//! process runs one; a MySQL `GET_LOCK` lets one at a time do the work.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Most jobs moved by one statement.
const BATCH: u64 = 1000;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rescued {
    pub pending: u64,
    pub failed: u64,
}

pub(crate) struct Rescuer {
    pub store: Store,
    /// A holder whose heartbeat is older than this is dead.
    pub stale_after: Duration,
    pub interval: Duration,
}

impl Rescuer {
    /// One pass; `None` when another process holds the rescuer lock.
    pub(crate) async fn run_once(&self) -> crate::Result<Option<Rescued>> {
        self.store
            .with_lock("lightjobs.rescuer.", || async {
                let mut total = Rescued::default();
                loop {
                    let (pending, failed) =
                        self.store.rescue_stuck(self.stale_after, BATCH).await?;
                    total.pending += pending;
                    total.failed += failed;
                    if pending + failed < BATCH {
                        return Ok(total);
                    }
                }
            })
            .await
    }

    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            if crate::worker::pause(self.interval, &stop).await {
                return;
            }
            match self.run_once().await {
                Ok(Some(r)) if r != Rescued::default() => {
                    tracing::warn!(target: "lightjobs::rescuer", to_pending = r.pending, to_failed = r.failed, "rescued jobs of dead workers");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(target: "lightjobs::rescuer", %error, "rescue pass failed");
                }
            }
        }
    }
}
