//! [`Workers`]: starts the fetch loop and the completer on actix-rt, and drives the
//! two-stage shutdown (stop claiming, then let running jobs finish within a grace period).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::RwLock;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completer::{Completer, Completions, EventHook, Report};
use crate::error::{Error, Result};
use crate::events::JobEvent;
use crate::executor::{panic_message, Executor};
use crate::foreign::{ForeignJobs, FOREIGN_CHECK_INTERVAL, FOREIGN_WARN_AFTER};
use crate::heartbeat::{Heartbeat, Liveness};
use crate::intake::Intake;
use crate::job::{DataMap, Job};
use crate::pruner::Pruner;
use crate::queue::{validate_queue_name, JobQueue};
use crate::queue_state::{QueueState, QueueStates};
#[cfg(feature = "cron")]
use crate::recurring::{Recurring, RecurringJob};
use crate::registry::Registry;
use crate::rescuer::Rescuer;
use crate::scheduler::Scheduler;
use crate::store::{Store, WorkerInfo};
use crate::worker::{Exit, PollInterval, Worker};

/// The fetcher, the completer and the maintenance tasks each hold at most one connection.
const WORKER_POOL_SIZE: usize = 4;

/// How often a worker process refreshes its heartbeat row.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A process whose heartbeat is older than this is dead: its jobs are rescued. Five missed
/// beats, so a slow database or a busy host does not look like a death, while a crashed
/// process's jobs run again within seconds.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10);

/// At shutdown, the least time result writes still get after the last job ended (they
/// get the rest of the grace period if that is longer).
const FLUSH_GRACE: Duration = Duration::from_secs(3);

/// How long `processed` (and `cancelled`) jobs are kept before the pruner deletes them.
pub const DEFAULT_PROCESSED_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long `failed` jobs are kept: long enough to notice, read the error and retry.
pub const DEFAULT_FAILED_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the pruner looks for old jobs.
const PRUNE_INTERVAL: Duration = Duration::from_secs(300);

/// How often due `scheduled` jobs (delays, retries) are moved to `pending`: the lateness
/// of a delayed job, at most.
const SCHEDULER_INTERVAL: Duration = Duration::from_millis(100);

/// Jobs run at once by default. A slot is a future on the worker's runtime, not a thread,
/// and a claim takes as many jobs as there are free slots, so a larger default costs little
/// and makes each claim's batch larger (no-op jobs drain at 0.98× the raw SQL floor with 100
/// slots, 0.28× with 10, same run; BENCHMARKS.md).
pub const DEFAULT_CONCURRENCY: usize = 100;
/// First idle poll interval; also the wait after a claim that found fewer jobs than slots.
pub const DEFAULT_POLL_MIN: Duration = Duration::from_millis(50);
/// Longest idle poll interval, reached only after 30 s without jobs. Dispatches from the
/// same process wake workers at once, so this bounds only how late a job dispatched by
/// another process is noticed on a quiet queue.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(1);
/// How long one run may take unless the job sets [`Job::TIMEOUT`].
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long running jobs get to finish at shutdown before they are released.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

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
    queue: JobQueue,
    registry: Registry,
    queues: Vec<String>,
    concurrency: usize,
    poll_min: Duration,
    poll_max: Duration,
    job_timeout: Duration,
    shutdown_timeout: Duration,
    migrate: bool,
    stop_when_empty: bool,
    local_handoff: bool,
    max_jobs: Option<u64>,
    hook: Option<EventHook>,
    data: DataMap,
    heartbeat_interval: Duration,
    stale_after: Duration,
    panic_after: Option<u64>,
    retention: (Duration, Option<Duration>),
    #[cfg(feature = "cron")]
    recurring: Vec<RecurringJob>,
    queue_limits: HashMap<String, usize>,
    fail_unknown_after: Option<Duration>,
    /// A setting refused by a builder method, reported by `start`.
    refused: Option<Error>,
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
    /// Workers on `queue` with the defaults: queue `default`, [`DEFAULT_CONCURRENCY`] slots.
    pub fn new(queue: JobQueue) -> Self {
        Workers {
            queue,
            registry: Registry::new(),
            queues: vec![crate::DEFAULT_QUEUE.to_owned()],
            concurrency: DEFAULT_CONCURRENCY,
            poll_min: DEFAULT_POLL_MIN,
            poll_max: DEFAULT_POLL_MAX,
            job_timeout: DEFAULT_JOB_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            migrate: false,
            stop_when_empty: false,
            local_handoff: true,
            max_jobs: None,
            hook: None,
            data: DataMap::default(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            stale_after: DEFAULT_STALE_AFTER,
            panic_after: None,
            retention: (DEFAULT_PROCESSED_RETENTION, Some(DEFAULT_FAILED_RETENTION)),
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

    /// Jobs run at once ([`DEFAULT_CONCURRENCY`]).
    pub fn concurrency(mut self, slots: usize) -> Self {
        self.concurrency = slots;
        self
    }

    /// Idle poll interval bounds ([`DEFAULT_POLL_MIN`], [`DEFAULT_POLL_MAX`]).
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        self.poll_min = min;
        self.poll_max = max;
        self
    }

    /// Timeout for jobs that do not set [`Job::TIMEOUT`] ([`DEFAULT_JOB_TIMEOUT`]).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Grace period for running jobs at shutdown ([`DEFAULT_SHUTDOWN_TIMEOUT`]). Keep it
    /// below your process manager's kill timeout (systemd: 90 s, Kubernetes: 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Heartbeat interval, and the silence after which a process counts as dead and its
    /// jobs are rescued ([`DEFAULT_HEARTBEAT_INTERVAL`], [`DEFAULT_STALE_AFTER`]). The
    /// staleness must be at least twice the interval.
    pub fn heartbeat(mut self, interval: Duration, stale_after: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.stale_after = stale_after;
        self
    }

    /// How long finished jobs are kept: `processed` and `cancelled` ones for `processed`,
    /// `failed` ones for `failed` (`None`: until deleted by hand)
    /// ([`DEFAULT_PROCESSED_RETENTION`], [`DEFAULT_FAILED_RETENTION`]). One process at a
    /// time deletes them, a thousand rows per statement.
    pub fn retention(mut self, processed: Duration, failed: Option<Duration>) -> Self {
        self.retention = (processed, failed);
        self
    }

    /// Fault injection for the supervision tests: the fetch loop panics once after this
    /// many claimed jobs. Not part of the API.
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

    fn validate(&mut self) -> Result<()> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
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
        if let Some(name) = self
            .registry
            .names()
            .into_iter()
            .find(|n| n.is_empty() || n.chars().count() > crate::MAX_JOB_NAME_CHARS)
        {
            return Err(Error::invalid(
                "registry",
                format!(
                    "job name `{name}` must be 1 to {} characters (the `jobs.name` column)",
                    crate::MAX_JOB_NAME_CHARS
                ),
            ));
        }
        Ok(())
    }

    /// Checks the settings and the database (server version, migrations), installs the
    /// queue as the process-wide one if none is, and starts the workers on the current
    /// actix-rt (or tokio `LocalSet`) thread.
    pub async fn start(mut self) -> Result<WorkerHandle> {
        self.validate()?;
        if self.migrate {
            self.queue.migrate().await?;
        }
        self.queue.check_ready().await?;
        let _ = self.queue.install();

        // A pool of the workers' own: connections live on this runtime, so they stay usable
        // after the HTTP workers' runtimes (which share the dispatch pool) have shut down.
        let store = Store::on(self.queue.new_pool(WORKER_POOL_SIZE));
        let worker_id = worker_id();
        let info = WorkerInfo {
            id: worker_id.clone(),
            host: host_name(),
            pid: std::process::id(),
            queues: serde_json::to_string(&self.queues)?,
            interval: self.heartbeat_interval,
            stale_after: self.stale_after,
        };
        // Registered before the first claim, so no rescuer can take our jobs for a dead
        // process's.
        store.beat_worker(&info).await?;
        let maintenance_stop = CancellationToken::new();
        // Read once before the first claim so a paused queue is never claimed from.
        let queue_states: QueueStates = Arc::new(RwLock::new(QueueState::from_rows(
            store.queue_settings().await?,
        )));
        let (lapses, mut lapsed) = watch::channel(0u64);
        self.queue.add_local_states(queue_states.clone());
        let local_states = queue_states.clone();
        let maintenance = start_maintenance(
            &self.queue,
            Maintenance {
                info,
                lapses,
                queue_states: queue_states.clone(),
                retention: self.retention,
                #[cfg(feature = "cron")]
                recurring: std::mem::take(&mut self.recurring),
                foreign: ForeignJobs {
                    queues: self.queues.clone(),
                    names: self.registry.names(),
                    interval: FOREIGN_CHECK_INTERVAL,
                    warn_after: FOREIGN_WARN_AFTER,
                    fail_after: self.fail_unknown_after,
                },
            },
            maintenance_stop.clone(),
        )?;
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let give_up = CancellationToken::new();
        let (results, rx) = mpsc::unbounded_channel();
        let completer = Completer {
            store: store.clone(),
            worker_id: worker_id.clone(),
            hook: self.hook.clone(),
            give_up: give_up.clone(),
            report: Rc::new(Cell::new(Report::default())),
        };
        let completions = Rc::new(Completions::default());
        let queue_slots: HashMap<String, Arc<Semaphore>> = self
            .queue_limits
            .iter()
            .map(|(q, n)| (q.clone(), Arc::new(Semaphore::new(*n))))
            .collect();
        let flush = results.clone();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        // Batch modes count and stop on what they claim, so they take no handoffs.
        let (intake, mut handoffs) =
            if !self.local_handoff || self.stop_when_empty || self.max_jobs.is_some() {
                (None, None)
            } else {
                let (jobs, rx) = mpsc::unbounded_channel();
                let intake = Arc::new(Intake {
                    worker_id: worker_id.clone(),
                    queues: self.queues.iter().cloned().collect(),
                    names: self.registry.names().into_iter().collect(),
                    slots: slots.clone(),
                    queue_slots: queue_slots.clone(),
                    queue_states: queue_states.clone(),
                    backlog: AtomicBool::new(false),
                    stop: shutdown.clone(),
                    jobs,
                });
                self.queue.add_intake(intake.clone());
                (Some(intake), Some(rx))
            };
        let worker = Worker {
            store: store.clone(),
            queues: self.queues.clone(),
            worker_id: worker_id.clone(),
            concurrency: self.concurrency,
            poll: PollInterval::new(self.poll_min, self.poll_max),
            stop_when_empty: self.stop_when_empty,
            max_jobs: self.max_jobs,
            names: self.registry.names(),
            executor: Executor {
                registry: self.registry.clone(),
                default_timeout: self.job_timeout,
                shutdown: shutdown.clone(),
                abort: abort.clone(),
                data: Arc::new(self.data),
            },
            results,
            wake: self.queue.subscribe(),
            tracker: tracker.clone(),
            claimed: Arc::new(AtomicU64::new(0)),
            slots,
            panic_after: self.panic_after,
            panicked: AtomicBool::new(false),
            completions: completions.clone(),
            hook: self.hook.clone(),
            report: completer.report.clone(),
            queue_states,
            queue_slots,
            intake: intake.clone(),
            inflight: Rc::default(),
            conn_node: Cell::new(0),
        };
        tracing::info!(
            target: "lightjobs::supervisor",
            worker = %worker_id,
            queues = ?self.queues,
            concurrency = self.concurrency,
            jobs = ?self.registry.names(),
            "workers started"
        );
        let grace = self.shutdown_timeout;
        let stop = shutdown.clone();
        let queue = self.queue.clone();
        let task = actix_rt::spawn(async move {
            let completer = actix_rt::spawn(async move {
                let rx = Mutex::new(rx);
                supervise("completer", None, || completer.run(&rx)).await;
                completer.report.get()
            });
            let accept = async {
                if let Some(rx) = handoffs.as_mut() {
                    while let Some(handoff) = rx.recv().await {
                        worker.accept(handoff);
                    }
                }
                std::future::pending::<()>().await;
            };
            let check_claims = async {
                while lapsed.changed().await.is_ok() {
                    worker.check_claims().await;
                }
                std::future::pending::<()>().await;
            };
            let exit = tokio::select! {
                exit = supervise("worker", Some(&stop), || worker.run()) => exit,
                () = accept => None,
                () = check_claims => None,
            }
            .unwrap_or(Exit::Stopped);
            // Dispatches that find no intake from here on go through the table; those
            // already on their way are run (or, once the channel is closed, released).
            if let Some(intake) = &intake {
                queue.remove_intake(intake);
            }
            queue.remove_local_states(&local_states);
            if let Some(mut rx) = handoffs {
                rx.close();
                // Not `try_recv`: it can report empty while a send from another thread is
                // half done, and that job would be dropped with the channel.
                while let Some(handoff) = rx.recv().await {
                    worker.accept(handoff);
                }
            }
            drop(worker);
            tracker.close();
            // No more claims to fold successes into: from here the completer writes them,
            // as they come, so a kill during the grace period loses as little as possible.
            let hand_over = || {
                for event in completions.take() {
                    let _ = flush.send(event);
                }
            };
            let stopped_at = Cell::new(stop.is_cancelled().then(tokio::time::Instant::now));
            let drain = async {
                tokio::select! {
                    () = tracker.wait() => {}
                    () = stop.cancelled() => {
                        if stopped_at.get().is_none() {
                            stopped_at.set(Some(tokio::time::Instant::now()));
                        }
                        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                            tracing::warn!(target: "lightjobs::supervisor", "grace period over; releasing jobs still running");
                            abort.cancel();
                            tracker.wait().await;
                        }
                    }
                }
            };
            tokio::pin!(drain);
            loop {
                hand_over();
                tokio::select! {
                    () = &mut drain => break,
                    () = completions.notify.notified() => {}
                }
            }
            hand_over();
            drop(flush);
            // Every executor has sent its result; the completer drains and ends. Its writes
            // are retried until the shutdown deadline (the grace period from the signal, and
            // never less than FLUSH_GRACE from now); a write still failing then is left
            // to the rescuer of another process, which the removal of our heartbeat allows.
            abort.cancel();
            let now = tokio::time::Instant::now();
            let deadline = stopped_at
                .get()
                .map_or(now, |at| at + grace)
                .max(now + FLUSH_GRACE);
            let mut completer = completer;
            let report = tokio::select! {
                report = &mut completer => report,
                () = tokio::time::sleep_until(deadline) => {
                    give_up.cancel();
                    completer.await
                }
            }
            .unwrap_or_default();
            maintenance_stop.cancel();
            let _ = maintenance.await;
            let _ = store.nodes().clone().disconnect().await;
            tracing::info!(target: "lightjobs::supervisor", ?exit, ?report, "workers stopped");
            report
        });
        Ok(WorkerHandle {
            queue: self.queue,
            shutdown,
            task,
        })
    }
}

/// The running workers. Dropping it leaves them running; call [`shutdown`](Self::shutdown).
#[must_use = "dropping the handle does not stop the workers; call shutdown()"]
pub struct WorkerHandle {
    queue: JobQueue,
    shutdown: CancellationToken,
    task: actix_rt::task::JoinHandle<Report>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("stopping", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// The queue the workers claim from.
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// Stops claiming, gives running jobs the grace period, releases those still running,
    /// writes every result, and returns what was done.
    pub async fn shutdown(self) -> Report {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the workers stop by themselves (`stop_when_empty`, `max_jobs`) or
    /// another clone of the stop signal fires.
    pub async fn wait(self) -> Report {
        self.task.await.unwrap_or_default()
    }

    /// A token that starts the shutdown when cancelled (for wiring to your own signals).
    pub fn stop_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs the HTTP server until it stops (SIGINT/SIGTERM, or its handle), then shuts the
    /// workers down: the one call that ties both lifetimes together.
    ///
    /// ```no_run
    /// # use actix_web::{App, HttpServer};
    /// # async fn run(workers: lightjobs::WorkerHandle) -> std::io::Result<()> {
    /// let server = HttpServer::new(|| App::new().configure(lightjobs::init))
    ///     .bind(("127.0.0.1", 8080))?
    ///     .run();
    /// workers.serve(server).await
    /// # }
    /// ```
    pub async fn serve(self, server: actix_web::dev::Server) -> std::io::Result<()> {
        // actix-web drains its connections for up to its own shutdown timeout before
        // `server` completes; the workers stop claiming at the signal, not after that.
        let signals = Signals::install();
        let stop = self.shutdown.clone();
        let on_signal = actix_rt::spawn(async move {
            signals.recv().await;
            stop.cancel();
        });
        let result = server.await;
        on_signal.abort();
        let report = self.shutdown().await;
        tracing::info!(target: "lightjobs::supervisor", ?report, "HTTP server and workers stopped");
        result
    }

    /// Runs until SIGINT or SIGTERM (or until the workers stop by themselves), then shuts
    /// down gracefully. For worker-only processes. The signal handlers are installed when
    /// this is called, not when the future is first polled, so no signal is missed between.
    pub fn run_until_signal(self) -> impl std::future::Future<Output = Report> {
        let signals = Signals::install();
        let stop = self.shutdown.clone();
        async move {
            actix_rt::spawn(async move {
                signals.recv().await;
                tracing::info!(target: "lightjobs::supervisor", "signal received, shutting down");
                stop.cancel();
            });
            self.wait().await
        }
    }
}

/// SIGINT and SIGTERM, registered at once.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => Some((int, term)),
                _ => None,
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.unix {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `task` again after it panics, with a growing pause (100 ms doubling to 10 s), until
/// it returns or `stop` fires (`None`). State that must survive a restart lives outside
/// the task: the free slots, the result channel, the counts.
async fn supervise<F, Fut, T>(
    name: &str,
    stop: Option<&CancellationToken>,
    mut task: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match AssertUnwindSafe(task()).catch_unwind().await {
            Ok(value) => return Some(value),
            Err(panic) => {
                let message = panic_message(&*panic);
                tracing::error!(target: "lightjobs::supervisor", task = name, panic = message, ?delay, "task panicked; restarting it");
            }
        }
        let pause = tokio::time::sleep(delay);
        match stop {
            Some(stop) => tokio::select! {
                () = pause => {}
                () = stop.cancelled() => return None,
            },
            None => pause.await,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// What the maintenance thread runs with, besides the queue.
struct Maintenance {
    info: WorkerInfo,
    lapses: watch::Sender<u64>,
    queue_states: QueueStates,
    retention: (Duration, Option<Duration>),
    #[cfg(feature = "cron")]
    recurring: Vec<RecurringJob>,
    foreign: ForeignJobs,
}

/// Runs the heartbeat and the rescuer on a thread and runtime of their own, with their own
/// connections: a job that blocks the workers' thread cannot silence the heartbeat and get
/// itself rescued (and run twice) while it is still running. Each loop is supervised: a
/// panic in one (a bug, a value that does not decode) restarts it and never stops the
/// heartbeat.
fn start_maintenance(
    queue: &JobQueue,
    plan: Maintenance,
    stop: CancellationToken,
) -> Result<oneshot::Receiver<()>> {
    let queue = queue.clone();
    let Maintenance {
        info,
        lapses,
        queue_states,
        retention,
        #[cfg(feature = "cron")]
        recurring,
        foreign,
    } = plan;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("lightjobs-maintenance".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(target: "lightjobs::supervisor", %error, "no runtime for heartbeat and rescuer");
                    return;
                }
            };
            runtime.block_on(async move {
                let store = Store::on(queue.new_pool(6));
                let liveness = Liveness::default();
                let rescuer = Rescuer {
                    store: store.clone(),
                    worker_id: info.id.clone(),
                    stale_after: info.stale_after,
                    interval: info.interval,
                    liveness: liveness.clone(),
                };
                let heartbeat = Heartbeat {
                    store: store.clone(),
                    info,
                    liveness,
                    lapses,
                };
                #[cfg(feature = "cron")]
                let recurring = Recurring::new(queue.clone(), recurring);
                let scheduler = Scheduler {
                    store: store.clone(),
                    interval: SCHEDULER_INTERVAL,
                    queues: queue_states,
                };
                let pruner = Pruner {
                    store: store.clone(),
                    worker_id: heartbeat.info.id.clone(),
                    processed: retention.0,
                    failed: retention.1,
                    interval: PRUNE_INTERVAL,
                };
                let s = &stop;
                // Cron schedules run only with the `cron` feature.
                let recurring_task = async {
                    #[cfg(feature = "cron")]
                    supervise("recurring", Some(s), || recurring.run(s.clone())).await;
                };
                tokio::join!(
                    supervise("heartbeat", None, || heartbeat.run(s.clone())),
                    supervise("rescuer", Some(s), || rescuer.run(s.clone())),
                    supervise("scheduler", Some(s), || scheduler.run(s.clone())),
                    supervise("pruner", Some(s), || pruner.run(s.clone())),
                    recurring_task,
                    supervise("foreign", Some(s), || foreign.run(&store, s.clone())),
                );
                let _ = store.nodes().clone().disconnect().await;
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `host:pid:random`, limited to characters safe in logs and the 128-char column.
fn worker_id() -> String {
    let host: String = host_name()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(80)
        .collect();
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}
