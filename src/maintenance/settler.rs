//! The settler: finishes batches whose last job has ended and releases the jobs waiting
//! for what ended (batch callbacks, jobs dispatched with `after`).
//!
//! The ends come from this process's workers as their results are written (see
//! `runtime::ends`); each batch among them costs one probe of an index, and only a batch
//! found done is locked and finished. The sweep, every [`SWEEP`], does the same for what
//! no end announced: a job whose process died after writing its result, a job failed by
//! the rescuer or cancelled by an operator, a waiter of a job deleted by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;
use crate::runtime::ends::{EndSet, Ends};
use crate::store::Store;

/// How often the sweep looks for waiters to release and open batches that are done.
const SWEEP: Duration = Duration::from_secs(1);

/// Open batches are looked at every this many sweeps (about 5 s), [`BATCH_SWEEP`] at a
/// time: a batch finished by nobody (its last job's process died) waits this long.
const BATCH_SWEEP_EVERY: u32 = 5;

/// Most open batches one sweep probes, and most waiters it moves.
const BATCH_SWEEP: usize = 200;

pub(crate) struct Settler {
    store: Store,
    queue: JobQueue,
    ends: Arc<Ends>,
}

/// Where the sweep of open batches goes on from, and when it last ran.
struct Sweep {
    next: Instant,
    count: u32,
    after: u64,
}

impl Settler {
    pub(crate) const NAME: &'static str = "settler";

    pub(crate) fn new(store: Store, queue: JobQueue) -> Settler {
        let ends = queue.ends().clone();
        Settler { store, queue, ends }
    }

    /// Settles ends as they are recorded and sweeps every [`SWEEP`], until `stop`.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        let mut sweep = Sweep {
            next: Instant::now(),
            count: 0,
            after: 0,
        };
        loop {
            let wait = sweep.next.saturating_duration_since(Instant::now());
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.ends.recorded() => {}
                () = tokio::time::sleep(wait) => {}
            }
            let ended = self.ends.take();
            if !ended.is_empty() {
                if let Err(error) = self.settle(&ended).await {
                    tracing::debug!(target: "lightjobs::settler", %error, "settling ended jobs failed; the sweep will");
                }
            }
            if Instant::now() >= sweep.next {
                if let Err(error) = self.sweep(&mut sweep).await {
                    tracing::debug!(target: "lightjobs::settler", %error, "sweep failed");
                }
                sweep.next = Instant::now() + SWEEP;
            }
        }
    }

    /// Finishes the batches of `ended` that are done and releases the waiters of its jobs.
    async fn settle(&self, ended: &EndSet) -> crate::Result<()> {
        let mut moved = 0;
        for &batch in &ended.batches {
            moved += self.finish_or_log(batch).await;
        }
        for ids in ended.jobs.chunks(1000) {
            moved += self.store.resolve_job_waiters(ids).await?;
        }
        if moved > 0 {
            self.queue.notify_workers();
        }
        Ok(())
    }

    /// [`finish_if_done`](Self::finish_if_done); a failure is logged and the sweep tries
    /// again, and it holds up no other batch.
    async fn finish_or_log(&self, batch: u64) -> u64 {
        match self.finish_if_done(batch).await {
            Ok(moved) => moved,
            Err(error) => {
                tracing::debug!(target: "lightjobs::settler", batch, %error, "finishing a batch failed; the sweep will try again");
                0
            }
        }
    }

    /// Finishes `batch` if it has no job left; returns how many waiters that moved.
    async fn finish_if_done(&self, batch: u64) -> crate::Result<u64> {
        if self.store.batch_has_unfinished(batch).await? {
            return Ok(0);
        }
        let Some(outcome) = self.store.finish_batch(batch).await? else {
            return Ok(0);
        };
        tracing::info!(target: "lightjobs::settler", batch, outcome = outcome.as_str(), "batch finished");
        // Its waiters that were cancelled (a callback whose outcome it was not) release
        // or cancel theirs in turn.
        let waiters = self.store.batch_waiters(batch).await?;
        Ok(1 + self.store.resolve_job_waiters(&waiters).await?)
    }

    /// Looks for waiters no end released and, every few passes, for open batches that
    /// are done.
    async fn sweep(&self, sweep: &mut Sweep) -> crate::Result<()> {
        let awaiting = self.store.any_awaiting().await?;
        self.ends.set_awaiting(awaiting);
        let mut moved = 0;
        if awaiting {
            moved += self.store.sweep_waiters(BATCH_SWEEP).await?;
        }
        sweep.count = sweep.count.wrapping_add(1);
        if sweep.count % BATCH_SWEEP_EVERY == 0 {
            let open = self.store.open_batches(sweep.after, BATCH_SWEEP).await?;
            sweep.after = if open.len() < BATCH_SWEEP {
                0
            } else {
                open.last().copied().unwrap_or(0)
            };
            for batch in open {
                moved += self.finish_or_log(batch).await;
            }
        }
        if moved > 0 {
            tracing::debug!(target: "lightjobs::settler", moved, "sweep released waiting jobs");
            self.queue.notify_workers();
        }
        Ok(())
    }
}
