//! Writes job results back to the table in batches, and keeps them until they are written.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::executor::{JobEvent, JobOutcome};
use crate::store::{Guarded, Held, Store};

/// Most results written by one statement.
const MAX_BATCH: usize = 500;
/// Longest pause between two tries of a write that failed.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

pub(crate) type EventHook = Arc<dyn Fn(&JobEvent) + Send + Sync>;

/// Counts of what the workers did, returned when they stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Jobs that succeeded.
    pub processed: u64,
    /// Runs that failed and were scheduled again.
    pub retried: u64,
    /// Jobs marked `failed`.
    pub failed: u64,
    /// Jobs given back to `pending` at shutdown.
    pub released: u64,
    /// Runs that snoozed (rescheduled without spending an attempt).
    pub snoozed: u64,
    /// Results not written because the job was no longer ours (rescued or edited).
    pub lost: u64,
    /// Results that could not be written before the deadline (the jobs stay `running`
    /// until a rescuer returns them to `pending`).
    pub unwritten: u64,
}

/// Calls the user's hook for each event; its panics are contained.
pub(crate) fn emit<'a>(hook: &Option<EventHook>, events: impl Iterator<Item = &'a JobEvent>) {
    if let Some(hook) = hook {
        for e in events {
            // The hook is user code; its panic must not stop results being written.
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(e))).is_err() {
                tracing::error!(target: "lightjobs::completer", id = e.id, "the on_event hook panicked");
            }
        }
    }
}

/// Successes waiting for a transaction to write them: the fetch loop folds them into its
/// next claim (one commit for both); at shutdown they go to the completer.
#[derive(Default)]
pub(crate) struct Completions {
    events: RefCell<Vec<JobEvent>>,
    pub notify: Notify,
}

impl Completions {
    pub(crate) fn push(&self, event: JobEvent) {
        self.events.borrow_mut().push(event);
        self.notify.notify_one();
    }

    pub(crate) fn take(&self) -> Vec<JobEvent> {
        std::mem::take(&mut *self.events.borrow_mut())
    }

    /// Returns events a failed transaction did not write, ahead of newer ones.
    pub(crate) fn put_back(&self, mut events: Vec<JobEvent>) {
        let mut current = self.events.borrow_mut();
        events.append(&mut current);
        *current = events;
    }
}

impl std::ops::Add for Report {
    type Output = Report;

    fn add(self, o: Report) -> Report {
        Report {
            processed: self.processed + o.processed,
            retried: self.retried + o.retried,
            failed: self.failed + o.failed,
            released: self.released + o.released,
            snoozed: self.snoozed + o.snoozed,
            lost: self.lost + o.lost,
            unwritten: self.unwritten + o.unwritten,
        }
    }
}

pub(crate) struct Completer {
    pub store: Store,
    pub worker_id: String,
    pub hook: Option<EventHook>,
    /// Once cancelled, failed writes are no longer retried forever.
    pub give_up: CancellationToken,
    /// Kept outside `run` so that a restarted completer goes on counting; shared with the
    /// fetch loop, which writes most successes.
    pub report: Rc<Cell<Report>>,
}

impl Completer {
    /// Runs until every sender is gone and everything received is written (or given up).
    /// The receiver lives outside, so a supervisor can restart a completer that panicked
    /// without losing the results still queued.
    pub(crate) async fn run(&self, rx: &Mutex<mpsc::UnboundedReceiver<JobEvent>>) {
        let mut rx = rx.lock().await;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // Counted apart and merged after the writes: the fetch loop updates the same
            // counts while this task awaits the database.
            let mut delta = Report::default();
            self.write(&mut batch, &mut delta).await;
            self.report.set(self.report.get() + delta);
            batch.clear();
        }
    }

    async fn write(&self, batch: &mut [JobEvent], report: &mut Report) {
        let done: Vec<Held> = batch
            .iter()
            .filter(|e| e.outcome == JobOutcome::Processed)
            .map(JobEvent::held)
            .collect();
        if !done.is_empty() {
            let written = self
                .retrying("mark_completed", || {
                    self.store.mark_completed(&done, &self.worker_id)
                })
                .await;
            match written {
                Some(n) => {
                    report.processed += n;
                    report.lost += done.len() as u64 - n;
                    if n < done.len() as u64 {
                        tracing::warn!(target: "lightjobs::completer", lost = done.len() as u64 - n, "completed jobs were no longer ours");
                    }
                    self.emit(batch.iter().filter(|e| e.outcome == JobOutcome::Processed));
                }
                None => report.unwritten += done.len() as u64,
            }
        }
        let released: Vec<Held> = batch
            .iter()
            .filter(|e| e.outcome == JobOutcome::Released)
            .map(JobEvent::held)
            .collect();
        if !released.is_empty() {
            match self
                .retrying("release_jobs", || {
                    self.store.release_jobs(&released, &self.worker_id)
                })
                .await
            {
                Some(n) => report.released += n,
                None => report.unwritten += released.len() as u64,
            }
            self.emit(batch.iter().filter(|e| e.outcome == JobOutcome::Released));
        }
        for event in batch.iter() {
            let written = match &event.outcome {
                JobOutcome::Retrying { error, delay } => {
                    self.retrying("mark_retry", || {
                        self.store
                            .mark_retry(event.held(), &self.worker_id, error, *delay)
                    })
                    .await
                }
                JobOutcome::Snoozed { delay } => {
                    self.retrying("mark_snoozed", || {
                        self.store
                            .mark_snoozed(event.held(), &self.worker_id, *delay)
                    })
                    .await
                }
                JobOutcome::Failed { error } => {
                    self.retrying("mark_failed", || {
                        self.store.mark_failed(event.held(), &self.worker_id, error)
                    })
                    .await
                }
                _ => continue,
            };
            match written {
                Some(Guarded::Applied) => {
                    match event.outcome {
                        JobOutcome::Failed { .. } => report.failed += 1,
                        JobOutcome::Snoozed { .. } => report.snoozed += 1,
                        _ => report.retried += 1,
                    }
                    self.emit(std::iter::once(event));
                }
                Some(Guarded::Lost) => {
                    report.lost += 1;
                    tracing::warn!(target: "lightjobs::completer", id = event.id, "result not written: the job is no longer held by this worker");
                }
                None => report.unwritten += 1,
            }
        }
    }

    fn emit<'a>(&self, events: impl Iterator<Item = &'a JobEvent>) {
        emit(&self.hook, events);
    }

    /// Tries `op` until it succeeds. A database outage is waited out (results are never
    /// dropped because the database blinked); after `give_up`, or on an error that repeating
    /// cannot fix, it stops and the job is left for the rescuer.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::Result<T>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0u32;
        loop {
            let error = match op().await {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            tries += 1;
            let transient = match &error {
                crate::Error::Database(e) => crate::error::is_transient(e),
                _ => false,
            };
            if tries >= 3 && (!transient || self.give_up.is_cancelled()) {
                tracing::error!(target: "lightjobs::completer", %error, what, "giving up on writing job results; the jobs stay running until rescued");
                return None;
            }
            if tries == 1 {
                tracing::warn!(target: "lightjobs::completer", %error, what, "writing job results failed; retrying");
            }
            let jittered = delay.mul_f64(0.5 + fastrand::f64());
            tokio::select! {
                () = tokio::time::sleep(jittered) => {}
                () = self.give_up.cancelled(), if !self.give_up.is_cancelled() => {}
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }
}
