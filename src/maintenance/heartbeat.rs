//! Registers this worker process in `lightjobs_workers` and keeps its heartbeat fresh, so
//! that the rescuer of any process can tell a live holder of a job from a dead one.
//!
//! It also tells this process two things about its own link to the database:
//! - since when its beats have been written without a break ([`Liveness`]): a rescuer
//!   judges no other process dead before it has itself been connected for that process's
//!   whole staleness, since after an outage every heartbeat is stale, live or not;
//! - when its own heartbeat lapsed (the process stalled, or lost the database, for about
//!   its staleness): another process may have rescued its jobs, so the workers check
//!   which claims are still theirs.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, WorkerInfo};

/// Rows of processes silent for this long are deleted (kept a while for inspection).
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(3600);

/// Since when this process's heartbeats have been written without a break (`None` while
/// they fail). Shared by the heartbeat and the rescuer on the maintenance thread.
pub(crate) type Liveness = Rc<Cell<Option<Instant>>>;

/// How long this process has been beating without a break.
pub(crate) fn connected_for(liveness: &Liveness) -> Duration {
    liveness
        .get()
        .map_or(Duration::ZERO, |since| since.elapsed())
}

pub(crate) struct Heartbeat {
    pub store: Store,
    pub info: WorkerInfo,
    pub liveness: Liveness,
    /// Counts the lapses of this process's own heartbeat.
    pub lapses: watch::Sender<u64>,
}

impl Heartbeat {
    pub(crate) async fn run_once(&self) -> crate::Result<()> {
        self.store.beat_worker(&self.info).await
    }

    /// Beats every interval until `stop`, then removes the row.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        let interval = self.info.interval;
        let mut outage: Option<Instant> = None;
        // When the last beat that was written was sent: the row has been at least that
        // fresh since.
        let mut last_sent: Option<Instant> = None;
        self.liveness.set(None);
        loop {
            let sent = Instant::now();
            match self.run_once().await {
                Ok(()) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(target: "lightjobs::heartbeat", down_for = ?since.elapsed(), "heartbeat written again");
                    }
                    let gap = last_sent.map(|prev| prev.elapsed());
                    if gap.is_some_and(|gap| lapsed(gap, self.info.stale_after)) {
                        tracing::warn!(target: "lightjobs::heartbeat", gap = ?gap, stale_after = ?self.info.stale_after, "this process's heartbeat lapsed; other processes may have taken its jobs");
                        self.lapses.send_modify(|n| *n += 1);
                    }
                    // A missed beat starts the count again.
                    if gap.is_none_or(|gap| gap > interval * 2) || self.liveness.get().is_none() {
                        self.liveness.set(Some(sent));
                    }
                    last_sent = Some(sent);
                }
                Err(error) => {
                    self.liveness.set(None);
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(target: "lightjobs::heartbeat", %error, "heartbeat failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
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

/// Could another process have seen this heartbeat stale? The row was written no later
/// than the previous beat's reply and is refreshed no later than this one's, so only a
/// gap near the staleness can have let it lapse (with a margin for the two clocks).
fn lapsed(gap: Duration, stale_after: Duration) -> bool {
    gap >= stale_after.mul_f64(0.8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_near_the_staleness_is_a_lapse() {
        let stale = Duration::from_secs(10);
        assert!(!lapsed(Duration::from_secs(2), stale));
        assert!(!lapsed(Duration::from_millis(7_900), stale));
        assert!(lapsed(Duration::from_secs(8), stale));
        assert!(lapsed(Duration::from_secs(30), stale));
    }
}
