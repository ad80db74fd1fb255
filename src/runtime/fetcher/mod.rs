//! The fetch loop: claims as many jobs as there are free slots, hands each to a run task,
//! and polls with a growing interval when the queues are idle. One round is four steps:
//! take free slots ([`take_slots`](Fetcher::take_slots)), make sure claiming is allowed now
//! ([`may_claim`](Fetcher::may_claim): the lease valid, no node move settling), claim
//! ([`claim`](Fetcher::claim)), then pace ([`pace`](Fetcher::pace)), whose decisions are
//! the pure [`Pacing`] policy.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::executor::Executor;
use super::pacing::{Next, Pacing, CLAIM_GATHER};
use super::{Settings, Shared};
use crate::nodes::KeptConn;

mod claim;
mod runs;
mod turns;

/// Due `scheduled` jobs moved to `pending` at a time by a worker about to stop when empty.
const PROMOTE_BEFORE_EXIT: u64 = 1000;

/// Why the fetch loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Shutdown was requested.
    Stopped,
    /// `stop_when_empty`: nothing ready and nothing running.
    Empty,
    /// `max_jobs` were claimed.
    MaxJobs,
}

pub(crate) struct Fetcher {
    settings: Rc<Settings>,
    shared: Rc<Shared>,
    executor: Executor,
    /// Jobs claimed or accepted so far (for `max_jobs` and the panic hook). Written and
    /// read here; outside `run` so a restarted loop goes on counting.
    claimed: Cell<u64>,
    panicked: Cell<bool>,
    /// The database node the loop's kept connection goes to. Written and read here.
    conn_node: Cell<usize>,
    turns: turns::Turns,
}

/// What one run of the loop keeps between rounds.
struct Round {
    /// One connection for the loop's life: its statements stay prepared and no pool
    /// checkout sits on the hot path. Replaced after any error.
    conn: KeptConn,
    pacing: Pacing,
    next_queue: usize,
    outage: Option<Instant>,
    wake: watch::Receiver<u64>,
}

/// What a claim round ended with.
enum Claimed {
    Jobs {
        got: usize,
    },
    Conflict,
    Failed,
    /// The process moved to another node of a cluster just before the claim: claims wait
    /// for the move to settle (see `may_claim`).
    Settling,
}

/// Why a claim round stopped short.
enum Stopped {
    Settling,
    Failed(crate::Error),
}

impl Fetcher {
    pub(crate) fn new(settings: Rc<Settings>, shared: Rc<Shared>, executor: Executor) -> Self {
        Fetcher {
            settings,
            shared,
            executor,
            claimed: Cell::new(0),
            panicked: Cell::new(false),
            conn_node: Cell::new(0),
            turns: turns::Turns::new(),
        }
    }

    pub(crate) async fn run(&self) -> Exit {
        let mut round = Round {
            conn: KeptConn::default(),
            pacing: Pacing::new(
                self.settings.poll_min,
                self.settings.poll_max,
                Instant::now(),
            ),
            next_queue: 0,
            outage: None,
            wake: super::wake::subscribe(),
        };
        let stop = self.shared.stop.clone();
        loop {
            self.panic_if_asked();
            let cap = match self.jobs_left() {
                Some(0) => return Exit::MaxJobs,
                left => left.unwrap_or(usize::MAX),
            };
            let Some(mut permits) = self.take_slots(&round.pacing, cap, &stop).await else {
                return Exit::Stopped;
            };
            // Anything dispatched from now on must wake the next wait.
            round.wake.borrow_and_update();
            if !self.may_claim(&mut round, &mut permits, &stop).await {
                if stop.is_cancelled() {
                    return Exit::Stopped;
                }
                continue;
            }
            let asked = permits.len();
            let claimed = self.claim(&mut round, &mut permits).await;
            drop(permits);
            if let Some(exit) = self.pace(&mut round, claimed, asked, &stop).await {
                return exit;
            }
        }
    }

    fn panic_if_asked(&self) {
        if let Some(n) = self.settings.panic_after {
            if self.claimed.get() >= n && !self.panicked.replace(true) {
                panic!("injected fault: the fetch loop dies after {n} claimed jobs");
            }
        }
    }

    /// How many jobs `max_jobs` still allows (`None`: no limit).
    fn jobs_left(&self) -> Option<usize> {
        let max = self.settings.max_jobs?;
        let left = max.saturating_sub(self.claimed.get());
        Some(usize::try_from(left).unwrap_or(usize::MAX))
    }

    /// Waits for a free slot, then takes what else is free (up to `cap`). Under a
    /// backlog it first lets the jobs about to finish finish, so one claim serves several
    /// slots. `None` when stopped.
    async fn take_slots(
        &self,
        pacing: &Pacing,
        cap: usize,
        stop: &CancellationToken,
    ) -> Option<Vec<OwnedSemaphorePermit>> {
        let slots = &self.shared.slots;
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            p = slots.clone().acquire_owned() => p.ok()?,
        };
        let mut permits = vec![first];
        if let Some(target) = pacing.gather_target(self.settings.concurrency, cap) {
            tokio::task::yield_now().await;
            let deadline = tokio::time::Instant::now() + CLAIM_GATHER;
            while permits.len() < target {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => tokio::select! {
                        biased;
                        () = stop.cancelled() => return None,
                        p = slots.clone().acquire_owned() => permits.push(p.ok()?),
                        () = tokio::time::sleep_until(deadline) => break,
                    },
                }
            }
        }
        while permits.len() < cap {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    /// Whether a claim may go now. Not while this process's lease has run out (it may be
    /// judged dead; see [`Fence`](super::fence::Fence)), nor just after a move to another
    /// node of a cluster (another process may still claim on the old one until its own
    /// check: two writers would leave only Galera's certification between two claims of
    /// one job). Then it waits, its slots given back and its successes handed to the
    /// completer; false.
    async fn may_claim(
        &self,
        round: &mut Round,
        permits: &mut Vec<OwnedSemaphorePermit>,
        stop: &CancellationToken,
    ) -> bool {
        if round.pacing.saturated() {
            // Under a backlog the successes go to the completer, whose connection writes
            // them while this claim runs: two server threads at work instead of one
            // longer transaction (+15% jobs/s at concurrency 100 on two cores). Otherwise
            // they share the claim's commit.
            self.to_completer(self.shared.completions.take());
        }
        let fence = &self.shared.fence;
        let settling = if fence.is_open() {
            match self.shared.store.nodes().settling().await {
                Some(left) => left,
                None => return true,
            }
        } else {
            std::time::Duration::ZERO
        };
        permits.clear();
        round.conn.close();
        self.to_completer(self.shared.completions.take());
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(settling), if !settling.is_zero() => {}
            () = fence.wait_open(fence.window()), if settling.is_zero() => {}
        }
        false
    }

    /// After a claim round: where to go from here. `Some` when the loop ends.
    async fn pace(
        &self,
        round: &mut Round,
        claimed: Claimed,
        asked: usize,
        stop: &CancellationToken,
    ) -> Option<Exit> {
        let random = fastrand::f64();
        let next = match claimed {
            Claimed::Conflict => round.pacing.conflicted(random),
            Claimed::Settling => Next::Claim,
            Claimed::Failed => Next::Wait(round.pacing.failed(random)),
            Claimed::Jobs { got, .. } => {
                let next = round.pacing.claimed(asked, got, Instant::now(), random);
                if let Some(intake) = &self.shared.intake {
                    intake.set_backlog(round.pacing.saturated());
                }
                if got == 0 && self.settings.stop_when_empty && self.idle() {
                    return self.stop_if_empty(round, stop).await;
                }
                next
            }
        };
        match next {
            Next::Claim => None,
            Next::Wait(wait) => {
                let drained = matches!(claimed, Claimed::Jobs { .. });
                self.wait(round, wait, drained, stop)
                    .await
                    .then_some(Exit::Stopped)
            }
        }
    }

    /// Jobs this loop must still run before it stops when empty: any `blocked` in its
    /// queues, or `pending` of its types in its queues that are not paused.
    async fn any_waiting(&self) -> crate::Result<bool> {
        let queues: Vec<&str> = self.settings.queues.iter().map(String::as_str).collect();
        let active: Vec<&str> = {
            let states = self.shared.queue_states.read();
            queues
                .iter()
                .copied()
                .filter(|q| !states.as_ref().is_ok_and(|s| s.is_paused(q)))
                .collect()
        };
        self.shared
            .store
            .any_waiting(&queues, &active, &self.settings.names)
            .await
    }

    fn idle(&self) -> bool {
        self.shared.slots.available_permits() == self.settings.concurrency
    }

    /// `stop_when_empty` found nothing: jobs already due may still wait as `scheduled`
    /// until the promoter's next pass (and a Lightpack app's `new` rows until they are
    /// taken up). They are due now, so they run before the queues count as empty; and
    /// jobs waiting on a flow key's limit (`blocked`) are waited for: they run once the
    /// key has room.
    async fn stop_if_empty(&self, round: &mut Round, stop: &CancellationToken) -> Option<Exit> {
        let store = &self.shared.store;
        let promoted = match store.promote_scheduled(PROMOTE_BEFORE_EXIT).await {
            Ok(n) => store
                .adopt_seed_rows(PROMOTE_BEFORE_EXIT)
                .await
                .map(|m| n + m),
            Err(error) => Err(error),
        };
        let promoted = match promoted {
            Ok(0) => match self.any_waiting().await {
                Ok(true) => {
                    let wait = round.pacing.idle_wait(fastrand::f64());
                    return sleep(&mut round.wake, wait, stop, false)
                        .await
                        .then_some(Exit::Stopped);
                }
                Ok(false) => Ok(0),
                Err(error) => Err(error),
            },
            other => other,
        };
        match promoted {
            Ok(0) => Some(Exit::Empty),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(target: "lightjobs::fetcher", %error, "could not move due jobs to pending before stopping; trying again");
                let wait = round.pacing.idle_wait(fastrand::f64());
                sleep(&mut round.wake, wait, stop, false)
                    .await
                    .then_some(Exit::Stopped)
            }
        }
    }

    /// Waits `wait` before the next claim, or less if woken by a dispatch. After a claim
    /// that drained the queues, successes that finish meanwhile are written at once on
    /// their own (the poll keeps its schedule), without taking the free slots: dispatches
    /// of this process go on handing jobs over. True when stopped.
    async fn wait(
        &self,
        round: &mut Round,
        wait: std::time::Duration,
        drained: bool,
        stop: &CancellationToken,
    ) -> bool {
        let next_poll = Instant::now() + wait;
        loop {
            let completed = self.shared.completions.pushed();
            let left = next_poll.saturating_duration_since(Instant::now());
            tokio::select! {
                biased;
                () = stop.cancelled() => return true,
                () = completed, if drained => {}
                stopped = sleep(&mut round.wake, left, stop, true) => return stopped,
            }
            if self.shared.intake.is_none() || !self.shared.fence.is_open() {
                return false;
            }
            match self.claim_queues(round, &mut Vec::new()).await {
                Ok(_) => {}
                Err(Stopped::Settling) => return false,
                Err(Stopped::Failed(error)) => {
                    round.conn.close();
                    tracing::debug!(target: "lightjobs::fetcher", %error, "writing completions failed; claiming instead");
                    return false;
                }
            }
        }
    }
}

/// Waits `wait`, or less if woken (when `wakeable`) or stopped. True when stopped.
async fn sleep(
    wake: &mut watch::Receiver<u64>,
    wait: std::time::Duration,
    stop: &CancellationToken,
    wakeable: bool,
) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => true,
        _ = wake.changed(), if wakeable => false,
        () = tokio::time::sleep(wait) => false,
    }
}
