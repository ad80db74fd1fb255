//! Writes job results back to the table in batches, and keeps them until they are written.
//!
//! It takes [`Command`]s, not the public [`JobEvent`]s: a result carries the claim it
//! belongs to (which the public event does not show), and giving back claims in doubt is
//! a command of its own rather than an event with made-up fields.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::ends::Ends;
use super::ledger::Ledger;
pub(crate) use super::report::{EventHook, Report};
use crate::backoff::Doubling;
use crate::events::{JobEvent, JobOutcome};
use crate::store::{Guarded, Held, HeldFlow, Store};
use std::collections::HashSet;

/// A run's result on its way to the table: the event to report once written, and the
/// claim whose guard the write carries.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    token: u64,
    event: JobEvent,
    /// The job's flow key: its end may let parked jobs of the key start, and a rate limit
    /// it reports pauses the key.
    flow: Option<HeldFlow>,
    /// The job's batch: its end may finish the batch.
    batch: Option<u64>,
}

impl Finished {
    pub(crate) fn new(
        token: u64,
        event: JobEvent,
        flow: Option<HeldFlow>,
        batch: Option<u64>,
    ) -> Finished {
        Finished {
            token,
            event,
            flow,
            batch,
        }
    }

    /// The job's id and batch, for [`Ends::record`].
    fn end(&self) -> (u64, Option<u64>) {
        (self.event.id, self.batch)
    }

    /// The key whose slot this run held, if its key has a concurrency limit.
    pub(crate) fn freed_key(&self) -> Option<&str> {
        self.flow
            .as_ref()
            .filter(|f| f.slot)
            .map(|f| f.key.as_str())
    }

    pub(crate) fn outcome(&self) -> &JobOutcome {
        &self.event.outcome
    }

    /// The event, for a caller that writes no result (the inline runs of `testing`).
    pub(crate) fn into_event(self) -> JobEvent {
        self.event
    }

    pub(crate) fn held(&self) -> Held {
        (self.event.id, self.token)
    }
}

impl Command {
    /// How many claims it concerns.
    fn claims(&self) -> usize {
        match self {
            Command::Write(_) => 1,
            Command::Release(held) => held.len(),
        }
    }
}

/// The claims the shutdown gave back that the database refused to take before the
/// deadline: written into this process's worker row as it stops, so that the rescuer
/// returns their attempt. Filled by the completer at the deadline; read by the heartbeat
/// (maintenance thread) when it stops.
pub(crate) type LeftBehind = Arc<std::sync::Mutex<Vec<Held>>>;

/// What the completer is asked to write.
#[derive(Debug)]
pub(crate) enum Command {
    /// A run's result.
    Write(Finished),
    /// Claims whose commit is in doubt (a claim's reply was lost): back to `pending` with
    /// the attempt returned, if they exist and are still ours.
    Release(Vec<Held>),
}

/// Most results written by one statement.
const MAX_BATCH: usize = 500;
/// Longest pause between two tries of a write that failed.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How often a write that keeps failing is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Counts the successes of `done` found written (`written` ids) as processed and reports
/// them to the hook; the others were no longer ours: counted as lost, never reported.
/// Either way the claims are settled. Shared by the fetch loop (successes folded into a
/// claim) and the completer.
pub(crate) fn record_written(
    done: Vec<Finished>,
    written: &[u64],
    report: &mut Report,
    hook: &Option<EventHook>,
    ledger: &Ledger,
    ends: &Ends,
) {
    let written: HashSet<u64> = written.iter().copied().collect();
    for f in &done {
        ledger.settled(f.held());
    }
    let (ours, lost): (Vec<Finished>, Vec<Finished>) = done
        .into_iter()
        .partition(|f| written.contains(&f.event.id));
    report.processed += ours.len() as u64;
    report.lost += lost.len() as u64;
    ends.record(ours.iter().map(Finished::end));
    if !lost.is_empty() {
        tracing::warn!(target: "lightjobs::completer", lost = lost.len(), "completed jobs were no longer ours");
    }
    super::report::emit(hook, ours.iter().map(|f| &f.event));
}

/// Successes waiting for a transaction to write them: the fetch loop folds them into its
/// next claim (one commit for both); at shutdown they go to the completer.
#[derive(Default)]
pub(crate) struct Completions {
    /// Pushed by the run tasks, taken by the fetch loop (or, at shutdown, the drain).
    events: RefCell<Vec<Finished>>,
    /// Wakes the fetch loop's idle wait: successes must not wait for a poll.
    notify: Notify,
}

impl Completions {
    pub(crate) fn push(&self, event: Finished) {
        self.events.borrow_mut().push(event);
        self.notify.notify_one();
    }

    /// Resolves at the next push.
    pub(crate) fn pushed(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    pub(crate) fn take(&self) -> Vec<Finished> {
        std::mem::take(&mut *self.events.borrow_mut())
    }
}

pub(crate) struct Completer {
    store: Store,
    worker_id: String,
    hook: Option<EventHook>,
    /// The shutdown deadline: once cancelled, a write that fails is not tried again.
    /// Cancelled by the shutdown; read here.
    give_up: CancellationToken,
    /// Kept outside `run` so that a restarted completer goes on counting; written here and
    /// by the fetch loop, which writes most successes; read at the end.
    report: Rc<Cell<Report>>,
    /// Claims are settled here once their result is written.
    ledger: Rc<Ledger>,
    left_behind: LeftBehind,
    /// Where the ends it writes go, for the settler.
    ends: Arc<Ends>,
}

impl Completer {
    pub(crate) fn new(
        store: Store,
        worker_id: String,
        hook: Option<EventHook>,
        give_up: CancellationToken,
        ledger: Rc<Ledger>,
        left_behind: LeftBehind,
        ends: Arc<Ends>,
    ) -> Completer {
        Completer {
            store,
            worker_id,
            hook,
            give_up,
            report: Rc::new(Cell::new(Report::default())),
            ledger,
            left_behind,
            ends,
        }
    }

    /// The counts, shared with the fetch loop.
    pub(crate) fn report(&self) -> Rc<Cell<Report>> {
        self.report.clone()
    }

    /// Writes results as they come, until every sender is gone and everything received is
    /// written (or given up). The receiver lives outside, so a supervisor can restart a
    /// completer that panicked without losing the results still queued.
    ///
    /// While the process lives, a result is never given up: an outage, a read-only server
    /// during a failover, a node that left the cluster are all waited out, trying again
    /// what failed with a pause growing to [`MAX_RETRY_DELAY`], while results that arrive
    /// meanwhile are tried too (one stuck write holds up no other). A guarded write that
    /// finds the row no longer ours is done: it is counted as lost. Only once `give_up`
    /// fires (the shutdown deadline) is a write that still fails left behind; its job
    /// stays `running` until the rescuer of another process takes it, which the removal
    /// (or staleness) of this process's heartbeat row allows.
    pub(crate) async fn run(&self, rx: &Mutex<mpsc::UnboundedReceiver<Command>>) {
        let mut rx = rx.lock().await;
        let mut pending: Vec<Command> = Vec::with_capacity(MAX_BATCH);
        let mut pause = Doubling::new(Duration::from_millis(50), MAX_RETRY_DELAY);
        let mut failing_since: Option<Instant> = None;
        let mut last_log = Instant::now();
        loop {
            if pending.is_empty() {
                if rx.recv_many(&mut pending, MAX_BATCH).await == 0 {
                    return;
                }
            } else {
                while pending.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(event) => pending.push(event),
                        Err(_) => break,
                    }
                }
            }
            // Counted apart and merged after the writes: the fetch loop updates the same
            // counts while this task awaits the database.
            let mut delta = Report::default();
            let (failed, error) = self
                .write_once(std::mem::take(&mut pending), &mut delta)
                .await;
            self.report.set(self.report.get() + delta);
            let Some(error) = error else {
                if let Some(since) = failing_since.take() {
                    tracing::info!(target: "lightjobs::completer", failed_for = ?since.elapsed(), "job results written again");
                }
                pause.reset();
                continue;
            };
            if self.give_up.is_cancelled() {
                self.leave_behind(&failed);
                let unwritten = failed.iter().map(Command::claims).sum::<usize>() as u64;
                self.report.set(
                    self.report.get()
                        + Report {
                            unwritten,
                            ..Report::default()
                        },
                );
                tracing::error!(target: "lightjobs::completer", %error, jobs = failed.len(), "shutdown deadline passed while writing job results; the jobs stay running until another process rescues them");
                continue;
            }
            match failing_since {
                None => {
                    failing_since = Some(Instant::now());
                    last_log = Instant::now();
                    tracing::warn!(target: "lightjobs::completer", %error, jobs = failed.len(), "writing job results failed; retrying until it succeeds");
                }
                Some(since) if last_log.elapsed() >= LOG_EVERY => {
                    last_log = Instant::now();
                    tracing::warn!(target: "lightjobs::completer", %error, jobs = failed.len(), failing_for = ?since.elapsed(), "still retrying job result writes");
                }
                Some(_) => {}
            }
            pending = failed;
            tokio::select! {
                () = tokio::time::sleep(pause.next_jittered(fastrand::f64())) => {}
                () = self.give_up.cancelled() => {}
            }
        }
    }

    /// Keeps the releases of `failed` (runs cut by the shutdown, claims in doubt) for the
    /// worker row: they never failed, so their attempt is to come back.
    fn leave_behind(&self, failed: &[Command]) {
        let mut left = self.left_behind.lock().unwrap_or_else(|e| e.into_inner());
        for command in failed {
            match command {
                Command::Write(f) if f.event.outcome == JobOutcome::Released => left.push(f.held()),
                Command::Release(held) => left.extend(held),
                Command::Write(_) => {}
            }
        }
    }

    /// Tries every write of `batch` once: successes in one statement, releases in
    /// another, the other results one by one. Returns the commands whose write failed,
    /// with the last error.
    async fn write_once(
        &self,
        batch: Vec<Command>,
        report: &mut Report,
    ) -> (Vec<Command>, Option<crate::Error>) {
        let mut failed = Vec::new();
        let mut last_error = None;
        let mut fail = |commands: Vec<Command>, error: crate::Error| {
            failed.extend(commands);
            last_error = Some(error);
        };
        let mut done = Vec::new();
        let mut released = Vec::new();
        let mut in_doubt = Vec::new();
        let mut rest = Vec::new();
        let freed: Vec<String> = batch
            .iter()
            .filter_map(|c| match c {
                Command::Write(f) => f.freed_key().map(str::to_owned),
                Command::Release(_) => None,
            })
            .collect();
        for command in batch {
            match command {
                Command::Write(f) if f.event.outcome == JobOutcome::Processed => done.push(f),
                Command::Write(f) if f.event.outcome == JobOutcome::Released => released.push(f),
                Command::Write(f) => rest.push(f),
                Command::Release(held) => in_doubt.extend(held),
            }
        }
        if let Err((commands, error)) = self.write_successes(done, report).await {
            fail(commands, error);
        }
        if let Err((commands, error)) = self.write_releases(released, report).await {
            fail(commands, error);
        }
        if !in_doubt.is_empty() {
            if let Err(error) = self.store.release_jobs(&in_doubt, &self.worker_id).await {
                fail(vec![Command::Release(in_doubt)], error);
            }
        }
        for f in rest {
            if let Err(error) = self.write_result(&f, report).await {
                fail(vec![Command::Write(f)], error);
            }
        }
        self.unpark(&freed).await;
        (failed, last_error)
    }

    async fn write_successes(
        &self,
        done: Vec<Finished>,
        report: &mut Report,
    ) -> Result<(), (Vec<Command>, crate::Error)> {
        if done.is_empty() {
            return Ok(());
        }
        let held: Vec<Held> = done.iter().map(Finished::held).collect();
        match self.store.mark_completed(&held).await {
            Ok(ids) => {
                record_written(done, &ids, report, &self.hook, &self.ledger, &self.ends);
                Ok(())
            }
            Err(error) => Err((done.into_iter().map(Command::Write).collect(), error)),
        }
    }

    /// Runs cut short by the shutdown, back to `pending` with their attempt returned.
    async fn write_releases(
        &self,
        released: Vec<Finished>,
        report: &mut Report,
    ) -> Result<(), (Vec<Command>, crate::Error)> {
        if released.is_empty() {
            return Ok(());
        }
        let held: Vec<Held> = released.iter().map(Finished::held).collect();
        match self.store.release_jobs(&held, &self.worker_id).await {
            Ok(n) => {
                report.released += n;
                for h in held {
                    self.ledger.settled(h);
                }
                self.emit(released.iter().map(|f| &f.event));
                Ok(())
            }
            Err(error) => Err((released.into_iter().map(Command::Write).collect(), error)),
        }
    }

    /// A retry, a snooze, a failure, or a lost run (nothing to write).
    async fn write_result(&self, f: &Finished, report: &mut Report) -> crate::Result<()> {
        let held = f.held();
        let written = match &f.event.outcome {
            JobOutcome::Retrying { error, delay } => {
                self.store
                    .mark_retry(held, &self.worker_id, error, *delay)
                    .await?
            }
            JobOutcome::Snoozed { delay } => {
                self.store
                    .mark_snoozed(held, &self.worker_id, *delay)
                    .await?
            }
            JobOutcome::Throttled { delay } => {
                // The key first: once the job is back, a claim must find its key paused.
                if let Some(flow) = &f.flow {
                    self.store.pause_flow_key(&flow.key, *delay).await?;
                }
                self.store
                    .mark_snoozed(held, &self.worker_id, *delay)
                    .await?
            }
            JobOutcome::Failed { error } => {
                self.store.mark_failed(held, &self.worker_id, error).await?
            }
            JobOutcome::Cancelled => self.store.mark_cancelled(held, &self.worker_id).await?,
            _ => Guarded::Lost,
        };
        self.ledger.settled(held);
        match written {
            Guarded::Applied => {
                match f.event.outcome {
                    JobOutcome::Failed { .. } => {
                        report.failed += 1;
                        self.ends.record([f.end()]);
                    }
                    JobOutcome::Cancelled => {
                        report.cancelled += 1;
                        self.ends.record([f.end()]);
                    }
                    JobOutcome::Snoozed { .. } | JobOutcome::Throttled { .. } => {
                        report.snoozed += 1
                    }
                    _ => report.retried += 1,
                }
                self.emit(std::iter::once(&f.event));
            }
            Guarded::Lost if f.event.outcome == JobOutcome::Lost => report.lost += 1,
            Guarded::Lost => {
                report.lost += 1;
                tracing::warn!(target: "lightjobs::completer", id = f.event.id, "result not written: the job is no longer held by this worker");
            }
        }
        Ok(())
    }

    /// Lets parked jobs of the keys whose slots these results freed start (one per
    /// result). A failure is only logged: the sweep unparks them at the key's recheck.
    async fn unpark(&self, freed: &[String]) {
        if freed.is_empty() {
            return;
        }
        let keys: Vec<&str> = freed.iter().map(String::as_str).collect();
        match self.store.unpark_after(&keys).await {
            Ok(()) => crate::runtime::wake::wake_workers(),
            Err(error) => {
                tracing::debug!(target: "lightjobs::completer", %error, "unparking jobs of freed flow keys failed; the sweep will")
            }
        }
    }

    fn emit<'a>(&self, events: impl Iterator<Item = &'a JobEvent>) {
        super::report::emit(&self.hook, events);
    }
}
