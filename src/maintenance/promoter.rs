//! Moves `scheduled` jobs (delayed dispatches, retries after a backoff) to `pending` when
//! they are due, takes up rows a Lightpack app still inserts (status `new`), unparks jobs of
//! flow keys that have room again (the sweep), and wakes this process's workers when it did.

use std::cell::Cell;
use std::time::Duration;

use super::role::Role;
use crate::runtime::queue_state::{QueueState, QueueStates};
use crate::store::Store;

/// Most jobs moved by one statement.
const BATCH: u64 = 1000;

/// The queue settings are re-read every this many ticks (about a second).
const SETTINGS_EVERY: u32 = 10;

/// Flow keys due for a recheck are looked for every this many ticks (about 5 s), and at
/// once when a recheck this process set comes due: a key parked by a process that died
/// waits this long at most.
const FLOW_SWEEP_EVERY: u32 = 50;

/// Most flow keys one sweep looks at.
const FLOW_SWEEP_BATCH: usize = 100;

pub(crate) struct Promoter {
    store: Store,
    interval: Duration,
    /// Written here, read by the fetch loop and the handoff.
    queues: QueueStates,
    /// Passes so far: the settings are read every [`SETTINGS_EVERY`].
    ticks: Cell<u32>,
}

impl Promoter {
    pub(crate) fn new(store: Store, interval: Duration, queues: QueueStates) -> Promoter {
        Promoter {
            store,
            interval,
            queues,
            ticks: Cell::new(0),
        }
    }

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

    /// Re-reads the queue settings; wakes the workers when a queue was resumed.
    pub(crate) async fn refresh_queues(&self) -> crate::Result<()> {
        let now = QueueState::from_rows(self.store.queue_settings().await?);
        let resumed = {
            let mut state = self.queues.write().unwrap_or_else(|e| e.into_inner());
            let resumed = state.resumed_in(&now);
            *state = now;
            resumed
        };
        if resumed {
            crate::runtime::wake::wake_workers();
        }
        Ok(())
    }
}

impl Promoter {
    /// Every second or so: the queue settings, and rows a Lightpack app inserted.
    async fn now_and_then(&self) {
        if let Err(error) = self.refresh_queues().await {
            tracing::debug!(target: "lightjobs::promoter", %error, "reading queue settings failed");
        }
        match self.store.adopt_seed_rows(BATCH).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target: "lightjobs::promoter", rows = n, "took up jobs a Lightpack app dispatched (status `new`)");
                crate::runtime::wake::wake_workers();
            }
            Err(error) => {
                tracing::debug!(target: "lightjobs::promoter", %error, "taking up seed-shaped rows failed");
            }
        }
    }
}

impl Role for Promoter {
    const NAME: &'static str = "promoter";

    async fn pass(&self) -> crate::Result<Duration> {
        let tick = self.ticks.get();
        self.ticks.set(tick.wrapping_add(1));
        if tick % SETTINGS_EVERY == 0 {
            self.now_and_then().await;
        }
        let mut n = self.run_once().await?;
        if tick % FLOW_SWEEP_EVERY == 0 || crate::store::sweep_due() {
            let unparked = self.store.sweep_flow_keys(FLOW_SWEEP_BATCH).await?;
            if unparked > 0 {
                tracing::debug!(target: "lightjobs::promoter", unparked, "parked jobs of flow keys with room again");
            }
            n += unparked;
        }
        if n > 0 {
            tracing::debug!(target: "lightjobs::promoter", promoted = n, "scheduled jobs are due");
            crate::runtime::wake::wake_workers();
        }
        Ok(self.interval)
    }

    fn after_error(&self) -> Duration {
        self.interval
    }
}
