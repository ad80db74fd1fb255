//! The reconciler: gives back every `running` row of this process that it does not hold.
//!
//! A row can be `running` under a live process that will never run it: a claim or a
//! handed-off INSERT whose reply was lost and whose commit landed after all (perhaps
//! minutes later, once a route that dropped packets came back), or a run stopped by the
//! fence. The rescuer never takes such a row (its holder beats), so the holder itself
//! compares the table with its [`Ledger`] and releases the difference, attempts given
//! back, in one statement per pass: one look at the running rows of this process, however
//! many dispatches were in doubt.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::fence::Fence;
use super::handoff::Intake;
use super::ledger::Ledger;
use crate::backoff::Doubling;
use crate::store::{Held, Store};

/// How often a pass runs when nothing asks for one: late commits of statements in doubt
/// are found within this.
const EVERY: Duration = Duration::from_secs(30);

/// How long after being asked a pass runs: a commit in doubt has usually landed by then.
const SOON: Duration = Duration::from_millis(200);

pub(crate) struct Reconciler {
    store: Store,
    worker_id: String,
    /// What this process holds (written by the fetch loop, the runs and the writers).
    ledger: Rc<Ledger>,
    /// Reservations still on their way from a dispatching thread.
    intake: Option<Arc<Intake>>,
    fence: Arc<Fence>,
    /// Asks for a pass soon: notified by the fetch loop, the handoff and the fence watch.
    due: Arc<Notify>,
}

impl Reconciler {
    pub(crate) fn new(
        store: Store,
        worker_id: String,
        ledger: Rc<Ledger>,
        intake: Option<Arc<Intake>>,
        fence: Arc<Fence>,
        due: Arc<Notify>,
    ) -> Reconciler {
        Reconciler {
            store,
            worker_id,
            ledger,
            intake,
            fence,
            due,
        }
    }

    /// One pass; returns how many rows it gave back. Nothing while this process's own
    /// lease is not valid: its rows are then for the rescuer to judge.
    pub(crate) async fn run_once(&self) -> crate::Result<u64> {
        if !self.fence.is_open() {
            return Ok(0);
        }
        let rows = self.store.held_by(&self.worker_id).await?;
        // Compared after the read: a claim that committed before it is in the ledger by
        // now, or still being read back by the fetch loop (its token is `claiming`).
        let orphans: Vec<Held> = rows
            .into_iter()
            .filter(|&held| self.orphaned(held))
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let released = self.store.release_jobs(&orphans, &self.worker_id).await?;
        if released > 0 {
            tracing::warn!(target: "lightjobs::reconciler", released, "gave back running jobs this process does not hold (a statement in doubt committed, or a run was stopped)");
            super::wake::wake_workers();
        }
        Ok(released)
    }

    fn orphaned(&self, held: Held) -> bool {
        !self.ledger.holds(held)
            && self.ledger.claiming() != Some(held.1)
            && self.intake.as_ref().is_none_or(|i| !i.in_transit(held.1))
    }

    /// Runs a pass every [`EVERY`], and [`SOON`] after being asked, until `stop`. A pass
    /// that failed is tried again after a pause growing to [`EVERY`].
    pub(crate) async fn run(&self, stop: &CancellationToken) {
        let mut pause = Doubling::new(SOON, EVERY);
        let mut retry: Option<Duration> = None;
        loop {
            let wait = retry.unwrap_or(EVERY);
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.due.notified(), if retry.is_none() => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(SOON) => {}
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            retry = match self.run_once().await {
                Ok(_) => {
                    pause.reset();
                    None
                }
                Err(error) => {
                    tracing::debug!(target: "lightjobs::reconciler", %error, "reconciling failed; trying again");
                    Some(pause.next())
                }
            };
        }
    }
}
