//! [`Workers`]: the builder of a process's workers (what they run, how many at once, how
//! they poll, retry and stop), and the checks `start` makes before anything runs.

mod start;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::events::JobEvent;
use crate::job::{DataMap, Job};
#[cfg(feature = "cron")]
use crate::maintenance::RecurringJob;
use crate::queue::{validate_queue_name, JobQueue};
use crate::registry::Registry;
use crate::runtime::completer::EventHook;

/// Configures and starts the workers of one process.
///
/// ```no_run
/// # use lightjobs::{Job, JobContext, JobError, Workers};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail;
/// # impl Job for SendMail { const NAME: &'static str = "send_mail";
/// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
/// # async fn run() -> lightjobs::Result<()> {
/// let workers = Workers::from_env()?
///     .register::<SendMail>()
///     .queues(["default", "mail"])
///     .concurrency(20)
///     .start()
///     .await?;
/// // … later, e.g. after the HTTP server returned:
/// let report = workers.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use]
pub struct Workers {
    pub(crate) queue: JobQueue,
    pub(crate) registry: Registry,
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) poll_min: Duration,
    pub(crate) poll_max: Duration,
    pub(crate) job_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) migrate: bool,
    pub(crate) stop_when_empty: bool,
    pub(crate) local_handoff: bool,
    pub(crate) max_jobs: Option<u64>,
    pub(crate) hook: Option<EventHook>,
    pub(crate) data: DataMap,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) stale_after: Duration,
    pub(crate) panic_after: Option<u64>,
    pub(crate) retention: (Duration, Option<Duration>),
    #[cfg(feature = "cron")]
    pub(crate) recurring: Vec<RecurringJob>,
    pub(crate) queue_limits: HashMap<String, usize>,
    pub(crate) fail_unknown_after: Option<Duration>,
    /// A setting refused by a builder method, reported by `start`.
    pub(crate) refused: Option<Error>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("registry", &self.registry)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Workers on `queue` with the defaults: queue `default`, [`defaults::CONCURRENCY`](crate::defaults::CONCURRENCY) slots.
    pub fn new(queue: JobQueue) -> Self {
        Workers {
            queue,
            registry: Registry::new(),
            queues: vec![crate::defaults::QUEUE.to_owned()],
            concurrency: crate::defaults::CONCURRENCY,
            poll_min: crate::defaults::POLL_MIN,
            poll_max: crate::defaults::POLL_MAX,
            job_timeout: crate::defaults::JOB_TIMEOUT,
            cancel_grace: crate::defaults::CANCEL_GRACE,
            shutdown_timeout: crate::defaults::SHUTDOWN_TIMEOUT,
            migrate: false,
            stop_when_empty: false,
            local_handoff: true,
            max_jobs: None,
            hook: None,
            data: DataMap::default(),
            heartbeat_interval: crate::defaults::HEARTBEAT_INTERVAL,
            stale_after: crate::defaults::STALE_AFTER,
            panic_after: None,
            retention: (
                crate::defaults::PROCESSED_RETENTION,
                Some(crate::defaults::FAILED_RETENTION),
            ),
            #[cfg(feature = "cron")]
            recurring: Vec::new(),
            fail_unknown_after: None,
            queue_limits: HashMap::new(),
            refused: None,
        }
    }

    /// Workers on the process-wide queue ([`JobQueue::global`]: the installed one, or
    /// `LIGHTJOBS_DATABASE_URL` / `DATABASE_URL`).
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(JobQueue::global()?))
    }

    /// Adds a job type this process can run.
    pub fn register<J: Job>(mut self) -> Self {
        self.registry = self.registry.register::<J>();
        self
    }

    /// Shares `value` with every job, which reads it with
    /// [`JobContext::data::<T>()`](crate::JobContext::data). One value per type; wrap
    /// values in newtypes to have several of one type.
    pub fn data<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.data.insert(value);
        self
    }

    #[cfg(feature = "cron")]
    /// Dispatches `job` on every tick of the cron `schedule` (with a seconds field:
    /// `sec min hour day-of-month month day-of-week`, in UTC), and registers its type.
    ///
    /// Each tick is dispatched once however many processes run the same schedule (the
    /// dispatch is unique on job and tick). After downtime the most recent missed tick runs
    /// once; older missed ticks are skipped, not replayed.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError, Workers};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Digest;
    /// # impl Job for Digest { const NAME: &'static str = "digest";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # fn f(w: Workers) -> Workers {
    /// w.recurring("0 0 7 * * Mon-Fri", Digest) // 07:00 UTC on weekdays
    /// # }
    /// ```
    pub fn recurring<J: Job>(mut self, schedule: &str, job: J) -> Self {
        self.registry = self.registry.register::<J>();
        match self
            .queue
            .new_job(&job)
            // A tick is caused by the clock, not by whatever span set the schedule up.
            .map(|row| crate::store::NewJob { trace: None, ..row })
            .and_then(|row| RecurringJob::new(schedule, row))
        {
            Ok(r) => self.recurring.push(r),
            Err(e) => {
                self.refused.get_or_insert(e);
            }
        }
        self
    }

    /// Replaces the registry.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// The queues to work, claimed from in turn (default: `["default"]`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// At most `slots` jobs of `queue` at once in this process (within the overall
    /// [`concurrency`](Self::concurrency)). For a limit across every process use
    /// [`JobQueue::set_global_limit`].
    pub fn queue_concurrency(mut self, queue: &str, slots: usize) -> Self {
        self.queue_limits.insert(queue.to_owned(), slots);
        self
    }

    /// Jobs run at once ([`defaults::CONCURRENCY`](crate::defaults::CONCURRENCY)).
    pub fn concurrency(mut self, slots: usize) -> Self {
        self.concurrency = slots;
        self
    }

    /// Idle poll interval bounds ([`defaults::POLL_MIN`](crate::defaults::POLL_MIN), [`defaults::POLL_MAX`](crate::defaults::POLL_MAX)).
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        self.poll_min = min;
        self.poll_max = max;
        self
    }

    /// Timeout for jobs that do not set [`Job::TIMEOUT`] ([`defaults::JOB_TIMEOUT`](crate::defaults::JOB_TIMEOUT)).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Grace period for running jobs at shutdown ([`defaults::SHUTDOWN_TIMEOUT`](crate::defaults::SHUTDOWN_TIMEOUT)). Keep it
    /// below your process manager's kill timeout (systemd: 90 s, Kubernetes: 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Heartbeat interval, and the silence after which a process counts as dead and its
    /// jobs are rescued ([`defaults::HEARTBEAT_INTERVAL`](crate::defaults::HEARTBEAT_INTERVAL), [`defaults::STALE_AFTER`](crate::defaults::STALE_AFTER)). The
    /// staleness must be at least twice the interval.
    pub fn heartbeat(mut self, interval: Duration, stale_after: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.stale_after = stale_after;
        self
    }

    /// How long finished jobs are kept: `processed` and `cancelled` ones for `processed`,
    /// `failed` ones for `failed` (`None`: until deleted by hand)
    /// ([`defaults::PROCESSED_RETENTION`](crate::defaults::PROCESSED_RETENTION), [`defaults::FAILED_RETENTION`](crate::defaults::FAILED_RETENTION)). One process at a
    /// time deletes them, a thousand rows per statement.
    pub fn retention(mut self, processed: Duration, failed: Option<Duration>) -> Self {
        self.retention = (processed, failed);
        self
    }

    /// Fault injection for the supervision tests: the fetch loop panics once after this
    /// many claimed jobs. Only with the `test-hooks` feature; not part of the API.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __panic_after_claims(mut self, claims: u64) -> Self {
        self.panic_after = Some(claims);
        self
    }

    /// Apply pending migrations in [`start`](Self::start) (default: no, only check).
    pub fn migrate(mut self, yes: bool) -> Self {
        self.migrate = yes;
        self
    }

    /// Let dispatches from this process hand a job straight to these workers when one of
    /// their slots is free (default: yes). The job is inserted already claimed, so it
    /// starts when the INSERT returns, with one commit instead of two. Only jobs due now,
    /// not unique, on a queue these workers serve that is neither paused nor limited
    /// across processes, and only while no earlier job is waiting for a slot, are handed
    /// over; everything else goes through the table. Turn it off to have every job claimed
    /// in queue order.
    pub fn local_handoff(mut self, yes: bool) -> Self {
        self.local_handoff = yes;
        self
    }

    /// Fail due jobs on this process's queues whose type it does not run (no
    /// [`Job::NAME`](crate::Job::NAME) or [`Job::ALIASES`](crate::Job::ALIASES) of its
    /// registry) once they have waited `after`, with an `unknown job` error. Off by default:
    /// such jobs wait for a worker that has their type (another app on the same table, the
    /// next deploy), with a warning in the log and the `lightjobs_jobs_waiting_unknown_type`
    /// metric once they have waited five minutes. Turn it on only where this process's
    /// types are every type its queues get.
    pub fn fail_unknown_after(mut self, after: Duration) -> Self {
        self.fail_unknown_after = Some(after);
        self
    }

    /// How long a job cancelled while running has to return before its future is
    /// dropped ([`defaults::CANCEL_GRACE`](crate::defaults::CANCEL_GRACE)).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Stop once no job is ready and none is running (for batch runs and tests). Jobs whose
    /// delay or retry backoff has already passed count as ready: they run before the stop.
    pub fn stop_when_empty(mut self, yes: bool) -> Self {
        self.stop_when_empty = yes;
        self
    }

    /// Stop after claiming this many jobs (and finishing them).
    pub fn max_jobs(mut self, max: u64) -> Self {
        self.max_jobs = Some(max);
        self
    }

    /// Called after each result is written to the table (from the worker's task: keep it
    /// short). `process:jobs` prints its ✔/✖ lines from here.
    pub fn on_event(mut self, hook: impl Fn(&JobEvent) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    pub(crate) fn validate(&mut self) -> Result<()> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        self.validate_settings()?;
        self.validate_jobs()
    }

    fn validate_settings(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        if let Some((q, _)) = self.queue_limits.iter().find(|(_, n)| **n == 0) {
            return Err(Error::invalid(
                "queue_concurrency",
                format!("queue `{q}` needs at least one slot (pause it instead)"),
            ));
        }
        if self.queues.is_empty() {
            return Err(Error::invalid("queues", "name at least one queue"));
        }
        for q in &self.queues {
            validate_queue_name(q)?;
        }
        if self.poll_min.is_zero() || self.poll_min > self.poll_max {
            return Err(Error::invalid(
                "poll_interval",
                format!(
                    "min ({:?}) must be non-zero and at most max ({:?})",
                    self.poll_min, self.poll_max
                ),
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(Error::invalid(
                "heartbeat",
                "the interval must be non-zero: a worker that never beats looks dead to every \
                 rescuer",
            ));
        }
        if self.stale_after < self.heartbeat_interval * 2 {
            return Err(Error::invalid(
                "heartbeat",
                format!(
                    "stale_after ({:?}) must be at least twice the interval ({:?})",
                    self.stale_after, self.heartbeat_interval
                ),
            ));
        }
        if self.job_timeout.is_zero() {
            return Err(Error::invalid("job_timeout", "must be non-zero"));
        }
        Ok(())
    }

    fn validate_jobs(&self) -> Result<()> {
        #[cfg(feature = "cron")]
        let mut registrations = std::collections::HashSet::new();
        #[cfg(feature = "cron")]
        for r in &self.recurring {
            if !registrations.insert((r.job.name, r.fingerprint())) {
                return Err(Error::invalid(
                    "recurring",
                    format!(
                        "job `{}` is registered twice with the same schedule, queue and \
                         payload: each tick would run once, not twice",
                        r.job.name
                    ),
                ));
            }
        }
        if self.registry.names().is_empty() {
            return Err(Error::invalid(
                "registry",
                "no job types registered: call .register::<YourJob>()",
            ));
        }
        for name in self.registry.names() {
            crate::job::check_job_name(name)?;
        }
        Ok(())
    }
}
