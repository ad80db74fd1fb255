//! The claims this process holds: from the moment a claim commits (or a handed-off job
//! arrives) until the run's result is written. The reconciler gives back every `running`
//! row of this process that is not here; the fence watch stops the runs started before a
//! trip. Everything here lives on the worker thread.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use crate::store::Held;

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Keyed by (job id, claim token): a job this process claims again (after a rescue)
    /// is a second entry, never a replacement of the first. Written by the fetch loop
    /// (claims, handoffs), the run tasks (a run ended) and the result writers (the fetch
    /// loop's folded successes, the completer); read by the fence watch and the reconciler.
    claims: RefCell<HashMap<Held, Entry>>,
    /// The token of the claim the fetch loop has sent and not yet read back: its rows may
    /// be in the table before they are here. Written by the fetch loop; read by the
    /// reconciler.
    claiming: Cell<Option<u64>>,
}

#[derive(Debug)]
struct Entry {
    /// The fence's trip count when the run started: a later trip stops it.
    trips: u64,
    /// Stops the run; `None` once the run has ended (its result not yet written).
    stop: Option<CancellationToken>,
    /// Asks the run to stop because the job was cancelled (the job sees it, then the
    /// executor drops it after the grace period).
    cancel: CancellationToken,
}

/// The signals of one run.
#[derive(Default)]
pub(crate) struct RunSignals {
    /// The claim can no longer be vouched for: stop where it stands.
    pub stop: CancellationToken,
    /// The job was cancelled.
    pub cancel: CancellationToken,
}

impl Ledger {
    /// A run of `held` starts now; returns the signals that stop it.
    pub(crate) fn start(&self, held: Held, trips: u64) -> RunSignals {
        let signals = RunSignals {
            stop: CancellationToken::new(),
            cancel: CancellationToken::new(),
        };
        self.claims.borrow_mut().insert(
            held,
            Entry {
                trips,
                stop: Some(signals.stop.clone()),
                cancel: signals.cancel.clone(),
            },
        );
        signals
    }

    /// The runs going on and not yet asked to stop for a cancel.
    pub(crate) fn running(&self) -> Vec<Held> {
        let claims = self.claims.borrow();
        claims
            .iter()
            .filter(|(_, e)| e.stop.is_some() && !e.cancel.is_cancelled())
            .map(|(held, _)| *held)
            .collect()
    }

    /// Tells the run of `held` its job was cancelled.
    pub(crate) fn cancel(&self, held: Held) {
        if let Some(entry) = self.claims.borrow().get(&held) {
            entry.cancel.cancel();
        }
    }

    /// The run of `held` ended; its result is on its way to the table.
    pub(crate) fn ended(&self, held: Held) {
        if let Some(entry) = self.claims.borrow_mut().get_mut(&held) {
            entry.stop = None;
        }
    }

    /// The result of `held` is written, or there is nothing to write: the claim is no
    /// longer this process's concern.
    pub(crate) fn settled(&self, held: Held) {
        self.claims.borrow_mut().remove(&held);
    }

    /// Whether this process still has business with the claim.
    pub(crate) fn holds(&self, held: Held) -> bool {
        self.claims.borrow().contains_key(&held)
    }

    /// Stops every run started before trip number `trips`; returns how many.
    pub(crate) fn stop_started_before(&self, trips: u64) -> usize {
        let claims = self.claims.borrow();
        let mut stopped = 0;
        for entry in claims.values().filter(|e| e.trips < trips) {
            if let Some(stop) = &entry.stop {
                stop.cancel();
                stopped += 1;
            }
        }
        stopped
    }

    pub(crate) fn set_claiming(&self, token: Option<u64>) {
        self.claiming.set(token);
    }

    pub(crate) fn claiming(&self) -> Option<u64> {
        self.claiming.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_of_a_job_is_a_second_entry() {
        let ledger = Ledger::default();
        let old = ledger.start((7, 1), 0).stop;
        let new = ledger.start((7, 2), 1).stop;
        assert_eq!(ledger.stop_started_before(1), 1);
        assert!(old.is_cancelled(), "the run from before the trip stops");
        assert!(
            !new.is_cancelled(),
            "the newer claim of the same job runs on"
        );
        ledger.ended((7, 1));
        assert!(ledger.holds((7, 1)), "held until its result is written");
        ledger.settled((7, 1));
        assert!(!ledger.holds((7, 1)));
        assert!(ledger.holds((7, 2)));
    }
}
