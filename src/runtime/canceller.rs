//! The canceller: tells this process's runs that their job was cancelled.
//!
//! [`JobQueue::cancel`](crate::JobQueue::cancel) of a running job records a request on its
//! row; any process may have made it, and only the one running the job can act on it. So
//! while this process has runs, it looks up their rows by primary key every
//! [`CANCEL_POLL`](crate::defaults::CANCEL_POLL) and signals the runs that have a request.
//! An idle process sends nothing. A request this process never sees (it died first) is
//! applied by the rescue, which ends the row `cancelled` instead of `pending`.

use std::rc::Rc;

use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use crate::store::Store;

pub(crate) struct Canceller {
    store: Store,
    ledger: Rc<Ledger>,
}

impl Canceller {
    pub(crate) fn new(store: Store, ledger: Rc<Ledger>) -> Canceller {
        Canceller { store, ledger }
    }

    /// Looks for requests until `until` fires.
    pub(crate) async fn run(&self, until: CancellationToken) {
        let mut ticks = tokio::time::interval(crate::defaults::CANCEL_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = until.cancelled() => return,
            }
            let running = self.ledger.running();
            if running.is_empty() {
                continue;
            }
            match self.store.cancel_requests(&running).await {
                Ok(requested) => {
                    for held in requested {
                        tracing::info!(target: "lightjobs::canceller", id = held.0, "job cancelled: stopping its run");
                        self.ledger.cancel(held);
                    }
                }
                // Looked for again next tick; the request stays on the row meanwhile.
                Err(error) => {
                    tracing::debug!(target: "lightjobs::canceller", %error, "reading cancel requests failed")
                }
            }
        }
    }
}
