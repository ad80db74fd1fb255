//! The fetch loop: claims as many jobs as there are free slots, hands each to an executor
//! task, and polls with a growing interval when the queues are idle.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::Conn;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completer::{record_written, Completions, EventHook, Report};
use crate::events::{JobEvent, JobOutcome};
use crate::executor::Executor;
use crate::handoff::{Handoff, Intake, Permits};
use crate::queue_state::QueueStates;
use crate::store::{claim_and_complete_or_report, Ask, ClaimedJob, Held, Store};
use crate::timing::jitter;

/// Under a backlog, how long a claim may wait for half the slots to free up. Bounded so a
/// slow job cannot delay the claims for the others for long.
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// Due `scheduled` jobs moved to `pending` at a time by a worker about to stop when empty.
const PROMOTE_BEFORE_EXIT: u64 = 1000;

/// How long after the last job it found a fetch loop keeps polling at the minimum interval
/// before it starts to back off.
const ACTIVE_WINDOW: Duration = Duration::from_secs(30);

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
    pub store: Store,
    pub queues: Vec<String>,
    pub worker_id: String,
    pub concurrency: usize,
    pub poll: PollInterval,
    pub stop_when_empty: bool,
    pub max_jobs: Option<u64>,
    pub executor: Executor,
    /// The job types this process runs: it claims only those and leaves the others, with
    /// their attempts untouched, for a worker that has them.
    pub names: Vec<&'static str>,
    pub results: mpsc::UnboundedSender<JobEvent>,
    pub wake: watch::Receiver<u64>,
    pub tracker: TaskTracker,
    pub claimed: Arc<AtomicU64>,
    /// Free slots; outside `run` so a restarted loop still counts the jobs in flight.
    pub slots: Arc<Semaphore>,
    /// Fault injection for the supervision test: panic once after this many claims.
    pub panic_after: Option<u64>,
    pub panicked: AtomicBool,
    /// Successes waiting to be written by the next claim's transaction.
    pub completions: Rc<Completions>,
    pub hook: Option<EventHook>,
    pub report: Rc<Cell<Report>>,
    pub queue_states: QueueStates,
    /// Per-queue limits of this process, where set.
    pub queue_slots: HashMap<String, Arc<Semaphore>>,
    /// Where dispatches of this process hand jobs over, when they may.
    pub intake: Option<Arc<Intake>>,
    /// The jobs running now: their claim, and the signal that stops one whose claim this
    /// process has lost.
    pub inflight: Rc<RefCell<HashMap<u64, (u64, CancellationToken)>>>,
    /// The database node the fetch loop's kept connection goes to.
    pub conn_node: Cell<usize>,
}

impl Fetcher {
    pub(crate) async fn run(&self) -> Exit {
        let stop = self.executor.shutdown.clone();
        let slots = &self.slots;
        let mut wake = self.wake.clone();
        let mut idle = self.poll;
        let mut outage: Option<Instant> = None;
        let mut next_queue = 0usize;
        // One connection for the loop's life: its statements stay prepared and no pool
        // checkout sits on the hot path. Replaced after any error.
        let mut conn: Option<Conn> = None;
        let mut saturated = false;
        // Lock races lost in a row.
        let mut conflicts = 0u32;
        let mut last_work = Instant::now();
        loop {
            if let Some(n) = self.panic_after {
                if self.claimed.load(Ordering::Relaxed) >= n
                    && !self.panicked.swap(true, Ordering::Relaxed)
                {
                    panic!("injected fault: the fetch loop dies after {n} claimed jobs");
                }
            }
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return Exit::Stopped,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return Exit::Stopped,
                },
            };
            let mut permits = vec![first];
            let cap = match self.max_jobs {
                Some(max) => {
                    let left = max.saturating_sub(self.claimed.load(Ordering::Relaxed));
                    if left == 0 {
                        return Exit::MaxJobs;
                    }
                    usize::try_from(left).unwrap_or(usize::MAX)
                }
                None => usize::MAX,
            };
            if saturated {
                // The last claim was full, so more jobs are waiting: rather than one
                // transaction per freed slot, let the jobs that are about to finish finish
                // and claim for several slots at once.
                tokio::task::yield_now().await;
                let target = (self.concurrency / 2).clamp(1, cap);
                let deadline = tokio::time::Instant::now() + CLAIM_GATHER;
                while permits.len() < target {
                    match slots.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => tokio::select! {
                            biased;
                            () = stop.cancelled() => return Exit::Stopped,
                            p = slots.clone().acquire_owned() => match p {
                                Ok(p) => permits.push(p),
                                Err(_) => return Exit::Stopped,
                            },
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
            // Anything dispatched from now on must wake the next wait.
            wake.borrow_and_update();
            let asked = permits.len();
            if saturated {
                // Under a backlog the successes go to the completer, whose connection writes
                // them while this claim runs: two server threads at work instead of one
                // longer transaction (+15% jobs/s at concurrency 100 on two cores, where
                // the server's CPU is the limit). Otherwise they share the claim's commit.
                self.to_completer(self.completions.take());
            }
            if let Some(left) = self.store.nodes().settling().await {
                // The process just moved to another node of a cluster; another process may
                // still claim on the old one until its own check. No claim until they all
                // have moved: two writers would leave only Galera's certification between
                // two claims of one job.
                drop(permits);
                conn = None;
                self.to_completer(self.completions.take());
                if sleep(&mut wake, left, &stop, false).await {
                    return Exit::Stopped;
                }
                continue;
            }
            let result = self.claim(&mut conn, &mut permits, &mut next_queue).await;
            let got = match result {
                Ok(n) => {
                    conflicts = 0;
                    if let Some(since) = outage.take() {
                        tracing::info!(target: "lightjobs::fetcher", down_for = ?since.elapsed(), "database reachable again");
                    }
                    n
                }
                Err(error) if error.is_lock_conflict() => {
                    // Deadlock, lock wait timeout or a certification failure at COMMIT:
                    // another claimer won a race and nothing of this claim committed. Not
                    // an outage: the first retry goes at once, later ones after a pause.
                    drop(permits);
                    conn = None;
                    conflicts += 1;
                    tracing::debug!(target: "lightjobs::fetcher", %error, "claim lost a lock race; retrying");
                    if conflicts == 1 {
                        continue;
                    }
                    if sleep(
                        &mut wake,
                        jitter(self.poll.min, fastrand::f64()),
                        &stop,
                        false,
                    )
                    .await
                    {
                        return Exit::Stopped;
                    }
                    continue;
                }
                Err(error) => {
                    drop(permits);
                    conn = None;
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::error!(target: "lightjobs::fetcher", %error, "claiming jobs failed; backing off until the database answers");
                    } else {
                        tracing::debug!(target: "lightjobs::fetcher", %error, "claim still failing");
                    }
                    idle.grow();
                    if sleep(&mut wake, idle.jittered(), &stop, false).await {
                        return Exit::Stopped;
                    }
                    continue;
                }
            };
            drop(permits);
            saturated = got == asked;
            if let Some(intake) = &self.intake {
                intake.backlog.store(saturated, Ordering::Relaxed);
            }
            if saturated {
                idle.reset();
                last_work = Instant::now();
                continue;
            }
            if got == 0 && self.stop_when_empty && slots.available_permits() == self.concurrency {
                // Jobs already due may still wait as `scheduled` until the scheduler's next
                // pass (and a Lightpack app's `new` rows until they are taken up): they are
                // due now, so they are run before the queues count as empty.
                let promoted = match self.store.promote_scheduled(PROMOTE_BEFORE_EXIT).await {
                    Ok(n) => self
                        .store
                        .adopt_seed_rows(PROMOTE_BEFORE_EXIT)
                        .await
                        .map(|m| n + m),
                    Err(error) => Err(error),
                };
                match promoted {
                    Ok(0) => return Exit::Empty,
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::warn!(target: "lightjobs::fetcher", %error, "could not move due jobs to pending before stopping; trying again");
                        if sleep(&mut wake, idle.jittered(), &stop, false).await {
                            return Exit::Stopped;
                        }
                        continue;
                    }
                }
            }
            if got > 0 {
                idle.reset();
                last_work = Instant::now();
            } else if last_work.elapsed() > ACTIVE_WINDOW {
                // Only a queue quiet for a while backs off: while jobs keep coming, even
                // from other processes, they are noticed within the minimum interval. An
                // empty claim writes nothing and locks nothing, so this costs little.
                idle.grow();
            }
            let wait = if got > 0 {
                self.poll.min
            } else {
                idle.jittered()
            };
            let next_poll = Instant::now() + wait;
            loop {
                let completed = self.completions.notify.notified();
                let left = next_poll.saturating_duration_since(Instant::now());
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return Exit::Stopped,
                    // Successes are written by the next claim: do not let them wait for a
                    // poll.
                    () = completed => {}
                    stopped = sleep(&mut wake, left, &stop, true) => if stopped {
                        return Exit::Stopped;
                    } else {
                        break;
                    },
                }
                if self.intake.is_none() {
                    break;
                }
                // The queues were drained at the last claim, so write the successes alone,
                // without taking the free slots for a claim: dispatches of this process
                // can go on handing jobs over meanwhile. The poll keeps its schedule.
                if let Err(error) = self
                    .claim(&mut conn, &mut Vec::new(), &mut next_queue)
                    .await
                {
                    conn = None;
                    tracing::debug!(target: "lightjobs::fetcher", %error, "writing completions failed; claiming instead");
                    break;
                }
            }
        }
    }

    /// Claims from the queues in turn until the permits are used up or every queue came back
    /// short; spawns an executor per job. The first claim's transaction also writes the
    /// successes finished since the last one. Returns how many jobs were claimed.
    async fn claim(
        &self,
        conn: &mut Option<Conn>,
        permits: &mut Vec<OwnedSemaphorePermit>,
        next_queue: &mut usize,
    ) -> crate::Result<usize> {
        let mut done = self.completions.take();
        let mut got = 0;
        for _ in 0..self.queues.len() {
            if permits.is_empty() && done.is_empty() {
                break;
            }
            let queue = &self.queues[*next_queue % self.queues.len()];
            *next_queue = next_queue.wrapping_add(1);
            let (paused, limited) = self
                .queue_states
                .read()
                .map(|s| (s.paused.contains(queue), s.limited.contains(queue)))
                .unwrap_or((false, false));
            // This process's own limit for the queue: a permit per job, on top of the slot.
            let mut queue_permits = Vec::new();
            if let Some(sem) = self.queue_slots.get(queue) {
                while queue_permits.len() < permits.len() {
                    match sem.clone().try_acquire_owned() {
                        Ok(p) => queue_permits.push(p),
                        Err(_) => break,
                    }
                }
            }
            // A paused queue is not claimed from; successes still need their write.
            let limit = match (paused, self.queue_slots.contains_key(queue)) {
                (true, _) => 0,
                (false, true) => queue_permits.len(),
                (false, false) => permits.len(),
            };
            if limit == 0 && done.is_empty() {
                continue;
            }
            if conn.is_some() && self.store.nodes().moved_from(self.conn_node.get()).await {
                *conn = None;
            }
            let c = match conn {
                Some(c) => c,
                None => match self.store.nodes().get_conn_at().await {
                    Ok((node, c)) => {
                        self.conn_node.set(node);
                        conn.insert(c)
                    }
                    Err(e) => {
                        self.completions.put_back(done);
                        return Err(e.into());
                    }
                },
            };
            let ids: Vec<Held> = done.iter().map(JobEvent::held).collect();
            let mut in_doubt = Vec::new();
            let ask = Ask {
                queue,
                limit,
                limited,
                names: &self.names,
            };
            let claimed =
                claim_and_complete_or_report(c, ask, &self.worker_id, &ids, &mut in_doubt).await;
            let claim = match claimed {
                Ok(r) => r,
                Err(e) => {
                    // The completer writes them on its own from now on: a success write the
                    // server keeps refusing must not hold up the claims.
                    self.to_completer(done);
                    self.release_in_doubt(queue, in_doubt);
                    return Err(e);
                }
            };
            if !done.is_empty() {
                match claim.completed {
                    Some(written) => self.completed(std::mem::take(&mut done), &written),
                    // Committed, but which ones were ours is unknown: the completer writes
                    // them again (a no-op for those already written) and finds out.
                    None => self.to_completer(std::mem::take(&mut done)),
                }
            }
            let jobs = claim.jobs;
            self.claimed.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            got += jobs.len();
            for job in jobs {
                let Some(permit) = permits.pop() else { break };
                let queue_permit = queue_permits.pop();
                self.spawn(job, (permit, queue_permit));
            }
        }
        Ok(got)
    }

    fn to_completer(&self, events: Vec<JobEvent>) {
        for event in events {
            // The completer outlives the fetch loop; if it panicked, the rows stay
            // `running` for the rescuer.
            let _ = self.results.send(event);
        }
    }

    /// Counts and reports the successes of `done` found written.
    fn completed(&self, done: Vec<JobEvent>, written: &[u64]) {
        let mut delta = Report::default();
        record_written(done, written, &mut delta, &self.hook);
        self.report.set(self.report.get() + delta);
    }

    /// After this process could not beat for longer than its staleness (it stalled, or lost
    /// the database), another process may have rescued its jobs: reads which claims are
    /// still ours and stops the runs of the others, so that a job does not go on running
    /// here while it runs elsewhere. Retried until the database answers.
    pub(crate) async fn check_claims(&self) {
        let mut pause = Duration::from_millis(100);
        loop {
            let held: Vec<Held> = self
                .inflight
                .borrow()
                .iter()
                .map(|(id, (token, _))| (*id, *token))
                .collect();
            if held.is_empty() {
                return;
            }
            match self.store.still_held(&held).await {
                Ok(ours) => {
                    let ours: HashSet<u64> = ours.into_iter().collect();
                    let inflight = self.inflight.borrow();
                    let mut lost = 0;
                    for (id, token) in &held {
                        match inflight.get(id) {
                            Some((t, stop)) if t == token && !ours.contains(id) => {
                                stop.cancel();
                                lost += 1;
                            }
                            _ => {}
                        }
                    }
                    if lost > 0 {
                        tracing::warn!(target: "lightjobs::fetcher", lost, "this process stalled past its staleness and other processes took over some of its jobs; stopping them here");
                    }
                    return;
                }
                Err(error) => {
                    tracing::debug!(target: "lightjobs::fetcher", %error, "checking which claims are still ours failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Claims whose commit may have happened are handed to the completer as releases: it
    /// retries until the database answers, and the guard makes them no-ops if the claim
    /// did not commit after all.
    fn release_in_doubt(&self, queue: &str, in_doubt: Vec<Held>) {
        if !in_doubt.is_empty() {
            tracing::warn!(target: "lightjobs::fetcher", jobs = in_doubt.len(), "claim commit outcome unknown; releasing the jobs");
        }
        for (id, token) in in_doubt {
            let _ = self.results.send(JobEvent {
                id,
                name: String::new(),
                queue: queue.to_owned(),
                attempt: 0,
                duration: Duration::ZERO,
                outcome: JobOutcome::Released,
                token,
            });
        }
    }

    /// Runs a job a dispatch of this process inserted already claimed by this worker.
    pub(crate) fn accept(&self, handoff: Handoff) {
        self.claimed.fetch_add(1, Ordering::Relaxed);
        self.spawn(handoff.job, handoff.permits);
    }

    fn spawn(&self, job: ClaimedJob, permit: Permits) {
        let executor = self.executor.clone();
        let results = self.results.clone();
        let completions = self.completions.clone();
        let inflight = self.inflight.clone();
        let lost = CancellationToken::new();
        inflight
            .borrow_mut()
            .insert(job.id, (job.token, lost.clone()));
        self.tracker.spawn_local(async move {
            let event = executor.run(&job, &lost).await;
            {
                let mut inflight = inflight.borrow_mut();
                if inflight.get(&job.id).is_some_and(|(t, _)| *t == job.token) {
                    inflight.remove(&job.id);
                }
            }
            if event.outcome == JobOutcome::Processed {
                completions.push(event);
            } else {
                // The completer outlives every executor, so this only fails if it
                // panicked; the row then stays `running` for the rescuer.
                let _ = results.send(event);
            }
            drop(permit);
        });
    }
}

/// Waits `wait`, or less if woken (when `wakeable`) or stopped. True when stopped.
async fn sleep(
    wake: &mut watch::Receiver<u64>,
    wait: Duration,
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

/// The idle poll interval: starts at `min`, doubles while nothing is found, capped at
/// `max`, and spread ±20% so that many processes do not poll in step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollInterval {
    pub min: Duration,
    pub max: Duration,
    current: Duration,
}

impl PollInterval {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        PollInterval {
            min,
            max,
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn grow(&mut self) {
        self.current = (self.current * 2).min(self.max);
    }

    fn jittered(&self) -> Duration {
        jitter(self.current, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_interval_grows_caps_and_resets() {
        let mut p = PollInterval::new(Duration::from_millis(50), Duration::from_millis(300));
        let mut seen = vec![];
        for _ in 0..5 {
            p.grow();
            seen.push(p.current.as_millis());
        }
        assert_eq!(seen, vec![100, 200, 300, 300, 300]);
        p.reset();
        assert_eq!(p.current, Duration::from_millis(50));
    }

    #[test]
    fn jitter_is_bounded() {
        let d = Duration::from_millis(100);
        assert_eq!(jitter(d, 0.0), Duration::from_millis(80));
        assert_eq!(jitter(d, 1.0), Duration::from_millis(120));
    }
}
