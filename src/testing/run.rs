//! [`TestQueue::run_all`]: the dispatched jobs run inline, in memory through the
//! executor the workers use, on a database through real workers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Log, TestQueue};
use crate::error::Error;
use crate::events::{JobEvent, JobOutcome};
use crate::runtime::executor::Executor;
use crate::runtime::ledger::RunSignals;
use crate::store::ClaimedJob;
use crate::workers::Workers;

/// How many jobs one `run_all` runs before it calls the jobs runaway.
const MAX_RUNS: usize = 10_000;

/// Why [`TestQueue::run_all`] did not end with every job succeeded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Runs that did not succeed (failed, retrying, snoozed…), each with its outcome; the
    /// message is the first one's.
    #[error("{}", failed_message(.0))]
    Failed(Vec<JobEvent>),
    /// A waiting job's name is not registered with [`TestQueue::register`].
    #[error("job #{id} `{name}` is not registered with TestQueue::register")]
    Unregistered {
        /// The job's id.
        id: u64,
        /// Its name.
        name: String,
    },
    /// More than this many jobs ran: a job that dispatches another without end.
    #[error("more than {0} jobs ran inline: does a job dispatch jobs without end?")]
    Runaway(usize),
    /// The queue failed (the database of a [`TestQueue::on`]).
    #[error(transparent)]
    Queue(#[from] Error),
}

fn failed_message(events: &[JobEvent]) -> String {
    let Some(first) = events.first() else {
        return "no job failed".to_owned();
    };
    let more = match events.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    };
    format!(
        "job #{} `{}` did not succeed: {}{more}",
        first.id,
        first.name,
        describe(&first.outcome)
    )
}

fn describe(outcome: &JobOutcome) -> String {
    match outcome {
        JobOutcome::Retrying { error, .. } | JobOutcome::Failed { error } => error.clone(),
        JobOutcome::Snoozed { delay } => format!("snoozed for {delay:?}"),
        JobOutcome::Throttled { delay } => format!("rate limited for {delay:?}"),
        other => format!("{other:?}"),
    }
}

/// The events, or [`RunError::Failed`] with those that did not succeed.
fn verdict(events: Vec<JobEvent>) -> Result<Vec<JobEvent>, RunError> {
    let failed: Vec<JobEvent> = events
        .iter()
        .filter(|e| !matches!(e.outcome, JobOutcome::Processed))
        .cloned()
        .collect();
    if failed.is_empty() {
        Ok(events)
    } else {
        Err(RunError::Failed(failed))
    }
}

impl TestQueue {
    /// Runs every job that is due, and the jobs those jobs dispatch, one at a time, until
    /// none is left; returns each run's event, in the order they ran. A job dispatched with
    /// a delay still to run stays waiting (see [`run_all_with_delayed`](Self::run_all_with_delayed)).
    ///
    /// - Without a database the order is dispatch order and each job runs once: an error
    ///   is not retried.
    /// - On a real queue ([`TestQueue::on`]) the jobs run on real workers with one slot,
    ///   in the order they claim them (priority, then due time, then id), until no job is
    ///   ready; a failed one is retried as in production if its backoff passes by then.
    ///
    /// When a run did not succeed, the result is [`RunError::Failed`] with those runs, the
    /// message being the first one's error; the other jobs ran all the same.
    pub async fn run_all(&self) -> Result<Vec<JobEvent>, RunError> {
        match &self.log {
            Some(log) => self.run_in_memory(log, false).await,
            None => self.run_on_database().await,
        }
    }

    /// [`run_all`](Self::run_all), with the delayed jobs made due first (on a real queue,
    /// their `scheduled_at` is set to now).
    pub async fn run_all_with_delayed(&self) -> Result<Vec<JobEvent>, RunError> {
        match &self.log {
            Some(log) => self.run_in_memory(log, true).await,
            None => {
                self.queue.make_delayed_due().await?;
                self.run_on_database().await
            }
        }
    }

    async fn run_in_memory(&self, log: &Log, delayed: bool) -> Result<Vec<JobEvent>, RunError> {
        let executor = Executor::new(
            self.registry.clone(),
            crate::defaults::JOB_TIMEOUT,
            CancellationToken::new(),
            CancellationToken::new(),
            Arc::new(self.data.clone()),
            self.queue.clone(),
            crate::defaults::CANCEL_GRACE,
        );
        let mut events = Vec::new();
        while let Some(row) = log.take_next(delayed) {
            if !self.registry.contains(row.job.name) {
                log.release(row.id);
                return Err(RunError::Unregistered {
                    id: row.id,
                    name: row.job.name.to_owned(),
                });
            }
            if events.len() == MAX_RUNS {
                log.release(row.id);
                return Err(RunError::Runaway(MAX_RUNS));
            }
            let job = ClaimedJob {
                id: row.id,
                token: 0,
                name: row.job.name.to_owned(),
                payload: row.job.payload,
                queue: row.job.queue,
                attempt: 1,
                max_attempts: row.job.max_attempts,
                waited: Duration::ZERO,
                flow: None,
                trace_parent: row.job.trace,
                tags: row.job.tags,
                meta: row.job.meta,
                batch: row.job.batch,
                after_batch: None,
                defect: None,
            };
            let finished = executor.run(&job, &RunSignals::default()).await;
            log.finish(row.id);
            events.push(finished.into_event());
        }
        verdict(events)
    }

    async fn run_on_database(&self) -> Result<Vec<JobEvent>, RunError> {
        let events = Arc::new(Mutex::new(Vec::new()));
        // A round runs what is ready on the queues that have waiting jobs; the next one
        // finds the jobs those runs dispatched to other queues.
        loop {
            let waiting = self.queue.waiting_jobs().await?;
            if let Some((id, name, ..)) = waiting.iter().find(|w| !self.registry.contains(&w.1)) {
                return Err(RunError::Unregistered {
                    id: *id,
                    name: name.clone(),
                });
            }
            let queues: BTreeSet<String> = waiting.into_iter().map(|w| w.3).collect();
            let before = lock(&events).len();
            if queues.is_empty() || before > MAX_RUNS {
                break;
            }
            let sink = events.clone();
            let mut workers = Workers::new(self.queue.clone())
                .registry(self.registry.clone())
                .queues(queues)
                .concurrency(1)
                .stop_when_empty(true)
                .on_event(move |e| lock(&sink).push(e.clone()));
            workers.data = self.data.clone();
            workers.start().await?.wait().await;
            if lock(&events).len() == before {
                break;
            }
        }
        let events = std::mem::take(&mut *lock(&events));
        if events.len() > MAX_RUNS {
            return Err(RunError::Runaway(MAX_RUNS));
        }
        verdict(events)
    }
}

fn lock(events: &Mutex<Vec<JobEvent>>) -> std::sync::MutexGuard<'_, Vec<JobEvent>> {
    events.lock().unwrap_or_else(|e| e.into_inner())
}
