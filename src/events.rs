//! What a run of a job ended as ([`JobOutcome`]) and what the workers report after writing
//! it ([`JobEvent`]): the one path by which the CLI's lines, `on_event` hooks and the
//! metrics learn about runs.

use std::time::Duration;

/// How one run of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobOutcome {
    /// It succeeded; the job is `processed`.
    Processed,
    /// It failed with attempts left; it runs again after `delay`.
    Retrying {
        /// The error, also stored in `last_error`.
        error: String,
        /// The backoff before the next attempt.
        delay: Duration,
    },
    /// It failed for good; the job is `failed`.
    Failed {
        /// The error, also stored in `last_error`.
        error: String,
    },
    /// Shutdown cut it short; the job is `pending` again with its attempt given back.
    Released,
    /// [`JobQueue::cancel`](crate::JobQueue::cancel) stopped it: the job returned an
    /// error after the cancel reached it, or its future was dropped at the end of the
    /// grace period. The job is `cancelled`, its attempt given back.
    Cancelled,
    /// The job asked to run again after `delay`, with its attempt given back.
    Snoozed {
        /// How long until it runs again.
        delay: Duration,
    },
    /// The job reported its service's rate limit ([`JobError::rate_limited`](crate::JobError::rate_limited)):
    /// it runs again after `delay` with its attempt given back, and its flow key starts no
    /// job before then.
    Throttled {
        /// How long the job and its key wait.
        delay: Duration,
    },
    /// The run was stopped because this process could no longer vouch for its claim:
    /// the database had not confirmed its heartbeat for half its staleness (it was cut
    /// off, or stalled), so another process may take the job over. Its future was dropped
    /// and nothing was written for it; once the database answers again the job goes back
    /// to `pending`, unless another process already rescued it.
    Lost,
}

/// What the workers report after each run, once the result is written to the table.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// `jobs.id`.
    pub id: u64,
    /// The job's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// The attempt that ran (1-based).
    pub attempt: u32,
    /// How long the run took.
    pub duration: Duration,
    /// How it ended.
    pub outcome: JobOutcome,
}
