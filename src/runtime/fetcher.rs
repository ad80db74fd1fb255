//! The fetch loop: claims as many jobs as there are free slots, hands each to a run task,
//! and polls with a growing interval when the queues are idle. One round is four steps:
//! take free slots ([`take_slots`](Fetcher::take_slots)), make sure claiming is allowed now
//! ([`may_claim`](Fetcher::may_claim): the lease valid, no node move settling), claim
//! ([`claim`](Fetcher::claim)), then pace ([`pace`](Fetcher::pace)), whose decisions are
//! the pure [`Pacing`] policy.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use mysql_async::Conn;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::completer::{record_written, Command, Finished};
use super::executor::Executor;
use super::handoff::{Handoff, Permits};
use super::pacing::{Next, Pacing, CLAIM_GATHER};
use super::{Settings, Shared};
use crate::events::JobOutcome;
use crate::store::{claim_and_complete_or_report, new_token, Ask, ClaimedJob, Held};

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

    /// Claims from the queues in turn (one claim per queue at most) until the permits are
    /// used up or every queue came back short, and starts a run per job. The first
    /// claim's transaction also writes the successes finished since the last one.
    async fn claim(&self, round: &mut Round, permits: &mut Vec<OwnedSemaphorePermit>) -> Claimed {
        match self.claim_queues(round, permits).await {
            Ok(got) => {
                if let Some(since) = round.outage.take() {
                    tracing::info!(target: "lightjobs::fetcher", down_for = ?since.elapsed(), "database reachable again");
                }
                Claimed::Jobs { got }
            }
            Err(Stopped::Settling) => Claimed::Settling,
            Err(Stopped::Failed(error)) if error.is_lock_conflict() => {
                round.conn.close();
                tracing::debug!(target: "lightjobs::fetcher", %error, "claim lost a lock race; retrying");
                Claimed::Conflict
            }
            Err(Stopped::Failed(error)) => {
                round.conn.close();
                if round.outage.is_none() {
                    round.outage = Some(Instant::now());
                    tracing::error!(target: "lightjobs::fetcher", %error, "claiming jobs failed; backing off until the database answers");
                } else {
                    tracing::debug!(target: "lightjobs::fetcher", %error, "claim still failing");
                }
                Claimed::Failed
            }
        }
    }

    async fn claim_queues(
        &self,
        round: &mut Round,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) -> Result<usize, Stopped> {
        let mut done = self.shared.completions.take();
        let mut got = 0;
        let queues = &self.settings.queues;
        for _ in 0..queues.len() {
            if permits.is_empty() && done.is_empty() {
                break;
            }
            let queue = &queues[round.next_queue % queues.len()];
            round.next_queue = round.next_queue.wrapping_add(1);
            let (limit, limited, mut queue_permits) = self.claimable(queue, permits.len());
            if limit == 0 && done.is_empty() {
                continue;
            }
            let jobs = match self.claim_one(round, queue, limit, limited, done).await {
                Ok(jobs) => jobs,
                Err((unwritten, stopped)) => {
                    // The completer writes them on its own from now on: a success write the
                    // server keeps refusing must not hold up the claims.
                    self.to_completer(unwritten);
                    return Err(stopped);
                }
            };
            done = Vec::new();
            self.claimed.set(self.claimed.get() + jobs.len() as u64);
            got += jobs.len();
            for job in jobs {
                let Some(permit) = permits.pop() else { break };
                self.spawn(job, (permit, queue_permits.pop()));
            }
        }
        Ok(got)
    }

    /// How many jobs `queue` may give now (its pause, this process's limit for it), whether
    /// it has a limit across processes, and the per-queue permits taken.
    fn claimable(&self, queue: &str, free: usize) -> (usize, bool, Vec<OwnedSemaphorePermit>) {
        let (paused, limited) = self
            .shared
            .queue_states
            .read()
            .map(|s| (s.paused.contains(queue), s.limited.contains(queue)))
            .unwrap_or((false, false));
        // This process's own limit for the queue: a permit per job, on top of the slot.
        let mut queue_permits = Vec::new();
        let own_limit = self.shared.queue_slots.get(queue);
        if let Some(sem) = own_limit {
            while queue_permits.len() < free {
                match sem.clone().try_acquire_owned() {
                    Ok(p) => queue_permits.push(p),
                    Err(_) => break,
                }
            }
        }
        let limit = match (paused, own_limit.is_some()) {
            (true, _) => 0,
            (false, true) => queue_permits.len(),
            (false, false) => free,
        };
        (limit, limited, queue_permits)
    }

    /// One claim transaction on `queue` with the successes `done` folded in. On error,
    /// the successes not written are given back with it, and claims in doubt go to the
    /// completer (and the reconciler) to be released.
    async fn claim_one(
        &self,
        round: &mut Round,
        queue: &str,
        limit: usize,
        limited: bool,
        done: Vec<Finished>,
    ) -> Result<Vec<ClaimedJob>, (Vec<Finished>, Stopped)> {
        let nodes = self.shared.store.nodes();
        if round.conn.0.is_some() && nodes.moved_from(self.conn_node.get()).await {
            round.conn.close();
        }
        let conn = match round.conn.0.take() {
            Some(c) => c,
            None => match nodes.get_conn_at().await {
                Ok((node, c)) => {
                    self.conn_node.set(node);
                    c
                }
                Err(e) => {
                    let error = crate::Error::Connect(e.to_string());
                    return Err((done, Stopped::Failed(error)));
                }
            },
        };
        let conn = round.conn.0.insert(conn);
        if nodes.settle_left().is_some() {
            // A check moved the process while this connection was had (here or on another
            // thread): the move settles before any claim.
            return Err((done, Stopped::Settling));
        }
        let ids: Vec<Held> = done.iter().map(Finished::held).collect();
        let token = new_token();
        let ask = Ask {
            queue,
            limit,
            limited,
            names: &self.settings.names,
            token,
        };
        let mut in_doubt = Vec::new();
        let limit = nodes.deadlines().statement;
        let worker = &self.settings.worker_id;
        self.shared.ledger.set_claiming(Some(token));
        let result = tokio::time::timeout(
            limit,
            claim_and_complete_or_report(conn, ask, worker, &ids, &mut in_doubt),
        )
        .await
        .unwrap_or(Err(crate::Error::Timeout {
            what: "claim",
            after: limit,
            sent: true,
        }));
        self.shared.ledger.set_claiming(None);
        let claim = match result {
            Ok(claim) => claim,
            Err(error) => {
                self.release_in_doubt(in_doubt);
                return Err((done, Stopped::Failed(error)));
            }
        };
        if !done.is_empty() {
            match claim.completed {
                Some(written) => self.completed(done, &written),
                // Committed, but which ones were ours is unknown: the completer writes
                // them again (a no-op for those already written) and finds out.
                None => self.to_completer(done),
            }
        }
        Ok(claim.jobs)
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

    fn idle(&self) -> bool {
        self.shared.slots.available_permits() == self.settings.concurrency
    }

    /// `stop_when_empty` found nothing: jobs already due may still wait as `scheduled`
    /// until the promoter's next pass (and a Lightpack app's `new` rows until they are
    /// taken up). They are due now, so they run before the queues count as empty.
    async fn stop_if_empty(&self, round: &mut Round, stop: &CancellationToken) -> Option<Exit> {
        let store = &self.shared.store;
        let promoted = match store.promote_scheduled(PROMOTE_BEFORE_EXIT).await {
            Ok(n) => store
                .adopt_seed_rows(PROMOTE_BEFORE_EXIT)
                .await
                .map(|m| n + m),
            Err(error) => Err(error),
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
            let completed = self.shared.completions.notify.notified();
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

    fn to_completer(&self, events: Vec<Finished>) {
        for event in events {
            // The completer outlives the fetch loop; if it panicked, the rows stay
            // `running` for the rescuer.
            let _ = self.shared.commands.send(Command::Write(event));
        }
    }

    /// Counts and reports the successes of `done` found written.
    fn completed(&self, done: Vec<Finished>, written: &[u64]) {
        let mut delta = crate::runtime::completer::Report::default();
        record_written(
            done,
            written,
            &mut delta,
            &self.shared.hook,
            &self.shared.ledger,
        );
        let report = &self.shared.report;
        report.set(report.get() + delta);
    }

    /// Claims whose commit may have happened are released: by the completer at once
    /// (retried until the database answers; a no-op if the claim did not commit), and by
    /// the reconciler should the commit land later still.
    fn release_in_doubt(&self, in_doubt: Vec<Held>) {
        if in_doubt.is_empty() {
            return;
        }
        tracing::warn!(target: "lightjobs::fetcher", jobs = in_doubt.len(), "claim commit outcome unknown; releasing the jobs");
        let _ = self.shared.commands.send(Command::Release(in_doubt));
        self.shared.reconcile.notify_one();
    }

    /// Runs a job a dispatch of this process inserted already claimed by this worker.
    pub(crate) fn accept(&self, handoff: Handoff) {
        self.claimed.set(self.claimed.get() + 1);
        let token = handoff.job.token;
        self.spawn(handoff.job, handoff.permits);
        if let Some(intake) = &self.shared.intake {
            intake.arrived(token);
        }
    }

    fn spawn(&self, job: ClaimedJob, permits: Permits) {
        let held = (job.id, job.token);
        let shared = self.shared.clone();
        let stop = shared.ledger.start(held, shared.fence.trips());
        if !shared.fence.is_open() {
            // The lease ran out while the claim was on its way: the run would start
            // after this process may have been judged dead.
            stop.cancel();
        }
        let executor = self.executor.clone();
        self.shared.tracker.spawn_local(async move {
            let finished = executor.run(&job, &stop).await;
            shared.ledger.ended(held);
            match finished.event.outcome {
                JobOutcome::Processed => shared.completions.push(finished),
                JobOutcome::Lost => {
                    // Nothing to write: the reconciler gives the row back once the
                    // database answers, unless a rescuer took it first.
                    shared.ledger.settled(held);
                    shared.reconcile.notify_one();
                    let _ = shared.commands.send(Command::Write(finished));
                }
                // The completer outlives every run, so this only fails if it panicked;
                // the row then stays `running` for the reconciler or the rescuer.
                _ => {
                    let _ = shared.commands.send(Command::Write(finished));
                }
            }
            drop(permits);
        });
    }
}

/// The fetch loop's own connection, kept between claims. Closed rather than pooled when
/// dropped or replaced: after an error, a deadline or a panic it may sit inside a
/// transaction its raw `START TRANSACTION` opened, or wait for a reply that is not coming.
#[derive(Default)]
pub(crate) struct KeptConn(Option<Conn>);

impl KeptConn {
    fn close(&mut self) {
        if let Some(conn) = self.0.take() {
            crate::nodes::discard(conn);
        }
    }
}

impl Drop for KeptConn {
    fn drop(&mut self) {
        self.close();
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
