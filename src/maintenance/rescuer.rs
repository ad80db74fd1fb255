//! Returns jobs held by dead worker processes (stale heartbeat) to `pending`. Every worker
//! process runs one; the `rescuer` lease (a row in `lightjobs_leases`, which holds across
//! the nodes of a cluster) lets one at a time do the work.
//!
//! A process is judged by its own staleness (stored with its heartbeat), and only by a
//! rescuer that has itself been writing heartbeats for that long: after an outage of the
//! database (or of this process) every heartbeat is stale, and the live processes need a
//! full staleness period to beat again before anyone may call them dead.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::maintenance::heartbeat::{connected_for, Liveness};
use crate::store::Store;

/// How long the rescuer lease lasts if its holder dies during a pass (it is given back at
/// the end of each pass).
const LEASE: Duration = Duration::from_secs(30);

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
    /// This process's worker id: its own heartbeat must be fresh for it to judge others.
    pub worker_id: String,
    /// This process's staleness: the one used for holders whose row does not say.
    pub stale_after: Duration,
    pub interval: Duration,
    pub liveness: Liveness,
}

impl Rescuer {
    /// One pass; `None` when another process holds the rescuer lease.
    pub(crate) async fn run_once(&self) -> crate::Result<Option<Rescued>> {
        if connected_for(&self.liveness) < self.stale_after {
            return Ok(Some(Rescued::default()));
        }
        self.store
            .with_lease("rescuer", &self.worker_id, LEASE, || async {
                let mut total = Rescued::default();
                loop {
                    // Read again for each batch: it must hold at the moment of the UPDATE.
                    let connected = connected_for(&self.liveness);
                    let (pending, failed) = self
                        .store
                        .rescue_stuck(&self.worker_id, self.stale_after, connected, BATCH)
                        .await?;
                    total.pending += pending;
                    total.failed += failed;
                    if pending + failed < BATCH {
                        return Ok(total);
                    }
                }
            })
            .await
    }

    pub(crate) async fn run(&self, stop: CancellationToken) {
        loop {
            if crate::timing::pause(self.interval, &stop).await {
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
