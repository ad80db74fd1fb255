//! [`JobQueue`]: the handle handlers dispatch through.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, PoolConstraints, PoolOpts};
use once_cell::sync::OnceCell;
use tokio::sync::watch;

use crate::defaults::{MAX_JOB_NAME_CHARS, MAX_QUEUE_NAME_CHARS, MAX_UNIQUE_KEY_CHARS};
use crate::error::{Error, Result};
use crate::handoff::{Intake, Reservation};
use crate::io_thread::IoThread;
use crate::job::Job;
use crate::nodes::{split_urls, Nodes};
use crate::queue_state::{QueueState, QueueStates};
use crate::store::{JobRecord, NewJob, QueueCount, Store, When};

/// How long an idle pooled connection is kept before the pool closes it.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

static GLOBAL: OnceCell<JobQueue> = OnceCell::new();

/// A cheap, cloneable handle to the `jobs` table: dispatches jobs and inspects them.
///
/// A job dispatched while a worker of the same process (started on this queue) has a free
/// slot is inserted already claimed and handed to it, so it starts as the INSERT returns
/// (see [`Workers::local_handoff`](crate::Workers::local_handoff)); otherwise the dispatch
/// wakes the workers of the process at once.
#[derive(Clone, Debug)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Each node's options, in order of preference; kept so the workers can open pools of
    /// their own (see `Workers::start`).
    nodes: Vec<Opts>,
    io: IoThread,
    max_payload: usize,
    combine: bool,
    server: tokio::sync::OnceCell<ServerInfo>,
    /// Workers of this process started on this queue, which take jobs handed to them at
    /// dispatch (see [`intake`](crate::intake)).
    intakes: std::sync::RwLock<Vec<Arc<Intake>>>,
    /// The queue settings as the workers of this process on this queue see them: a pause
    /// or a limit set through this queue applies to them at once, not at their next read.
    local_states: std::sync::RwLock<Vec<QueueStates>>,
}

#[derive(Debug, Clone, Copy)]
struct ServerInfo {
    mariadb: bool,
}

/// Builds a [`JobQueue`].
///
/// ```no_run
/// # fn main() -> lightjobs::Result<()> {
/// let queue = lightjobs::JobQueue::builder("mysql://app:secret@127.0.0.1:3306/app")
///     .pool_size(32)
///     .max_payload_bytes(64 * 1024)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct JobQueueBuilder {
    url: String,
    pool_size: usize,
    max_payload: usize,
    combine: bool,
}

impl JobQueueBuilder {
    /// Connections in the pool ([`defaults::POOL_SIZE`](crate::defaults::POOL_SIZE)). Workers use two or three; the rest
    /// serve dispatches from handlers.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Largest JSON payload a dispatch accepts ([`defaults::MAX_PAYLOAD_BYTES`](crate::defaults::MAX_PAYLOAD_BYTES)).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Whether dispatches made at the same moment share one INSERT (on by default): the
    /// connection thread takes every dispatch that has arrived, up to 100, and inserts them
    /// in one statement, each still getting its own id or its own error. It never waits
    /// for more to come, so a lone dispatch is not delayed. Off, every dispatch is a
    /// statement and a commit of its own.
    ///
    /// ```
    /// let queue = lightjobs::JobQueue::builder("mysql://app@127.0.0.1/app")
    ///     .combine_dispatches(false)
    ///     .build()?;
    /// # Ok::<(), lightjobs::Error>(())
    /// ```
    pub fn combine_dispatches(mut self, combine: bool) -> Self {
        self.combine = combine;
        self
    }

    /// Validates the settings and creates the pool. Connects lazily: nothing touches the
    /// network until the first dispatch or the workers start.
    pub fn build(self) -> Result<JobQueue> {
        let urls = split_urls(&self.url);
        if urls.is_empty() {
            return Err(Error::NotConfigured);
        }
        let constraints = PoolConstraints::new(0, self.pool_size)
            .ok_or_else(|| Error::invalid("pool_size", "must be at least 1"))?;
        if self.max_payload == 0 || self.max_payload > 16 * 1024 * 1024 - 1 {
            return Err(Error::invalid(
                "max_payload_bytes",
                "must be between 1 and 16 MiB - 1 (the MEDIUMTEXT column)",
            ));
        }
        let nodes = urls
            .iter()
            .map(|url| Ok(session_opts(Opts::from_url(url)?, constraints)))
            .collect::<Result<Vec<Opts>>>()?;
        Ok(JobQueue {
            inner: Arc::new(Inner {
                io: IoThread::start(nodes.clone())?,
                nodes,
                max_payload: self.max_payload,
                combine: self.combine,
                server: tokio::sync::OnceCell::new(),
                intakes: std::sync::RwLock::default(),
                local_states: std::sync::RwLock::default(),
            }),
        })
    }
}

/// A node's options with the queue's pool and session settings.
fn session_opts(opts: Opts, constraints: PoolConstraints) -> Opts {
    OptsBuilder::from_opts(opts)
        // Returning a connection to the pool would otherwise reset the session, drop its
        // prepared statements and rerun the setup: three round trips per checkout.
        // With mysql_async's default idle TTL of zero, a pool whose minimum is 0 closes
        // every connection the moment it is returned, so each dispatch and each claim
        // would open a new one (about 1.3 ms idle); idle connections are kept for a
        // minute instead, then closed down to the minimum by the pool's TTL check.
        .pool_opts(
            PoolOpts::default()
                .with_constraints(constraints)
                .with_reset_connection(false)
                .with_inactive_connection_ttl(IDLE_CONNECTION_TTL),
        )
        // READ COMMITTED: the claim's locking read takes no gap locks, so claims and
        // concurrent INSERTs do not deadlock (measured in DESIGN.md).
        .setup(vec![
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ])
        .into()
}

impl JobQueue {
    /// A builder for a queue on the database at `url` (`mysql://user:pass@host:port/db`).
    ///
    /// Several URLs separated by commas name the nodes of a cluster, in order of
    /// preference: every connection goes to the first healthy one (give every process the
    /// same list in the same order, so the cluster has one writer).
    pub fn builder(url: impl Into<String>) -> JobQueueBuilder {
        JobQueueBuilder {
            url: url.into(),
            pool_size: crate::defaults::POOL_SIZE,
            max_payload: crate::defaults::MAX_PAYLOAD_BYTES,
            combine: true,
        }
    }

    /// A queue with default settings on `url`.
    pub fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A queue on `LIGHTJOBS_DATABASE_URL`, or `DATABASE_URL` when that is unset.
    pub fn from_env() -> Result<Self> {
        Self::connect(&database_url_from_env()?)
    }

    /// Makes this queue the process-wide one that [`init`](crate::init) hands to actix.
    /// Returns the queue already installed, if another was first.
    ///
    /// [`Workers::start`](crate::Workers::start) installs its queue when none is installed
    /// yet, so the first `Workers` started in a process decides what `init` hands out.
    pub fn install(&self) -> std::result::Result<(), JobQueue> {
        GLOBAL
            .set(self.clone())
            .map_err(|_| GLOBAL.get().cloned().unwrap_or_else(|| self.clone()))
    }

    /// The process-wide queue: the installed one, or one built from the environment on
    /// first use.
    pub fn global() -> Result<JobQueue> {
        GLOBAL.get_or_try_init(JobQueue::from_env).cloned()
    }

    /// A new pool on the same database with the same session setup, of at most `size`
    /// connections.
    pub(crate) fn new_pool(&self, size: usize) -> Nodes {
        let constraints = PoolConstraints::new(0, size.max(1)).unwrap_or_default();
        Nodes::new(
            self.inner
                .nodes
                .iter()
                .map(|opts| {
                    OptsBuilder::from_opts(opts.clone())
                        .pool_opts(opts.pool_opts().clone().with_constraints(constraints))
                        .into()
                })
                .collect(),
        )
    }

    /// Runs `f` with the store on the queue's connection thread.
    async fn on_io<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        self.inner.io.run(f).await
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        crate::wake::subscribe()
    }

    /// Wakes this process's workers, e.g. after committing a transaction that dispatched
    /// jobs with [`Dispatch::within`].
    pub fn notify_workers(&self) {
        crate::wake::wake_workers();
    }

    /// Applies the embedded migrations (see [`migrate`](crate::migrate)).
    pub async fn migrate(&self) -> Result<crate::migrate::Migrated> {
        self.check_server().await?;
        self.on_io(|store| async move { Ok(crate::migrate::run_on(store.nodes()).await?) })
            .await
    }

    /// Checks the server version and that the schema is migrated, once per queue.
    pub async fn check_ready(&self) -> Result<()> {
        self.inner
            .server
            .get_or_try_init(|| async {
                let (version, applied) = self
                    .on_io(|store| async move { store.read_server_state().await })
                    .await?;
                crate::migrate::check_server_version(&version)?;
                let latest = crate::migrate::latest();
                if applied.unwrap_or(0) < latest.version {
                    return Err(Error::Schema(format!(
                        "migration {} ({}) has not been applied (newest applied: {}); run \
                         `lightjobs migrate` or call JobQueue::migrate / Workers::migrate(true)",
                        latest.version,
                        latest.name,
                        applied.map_or("none".to_owned(), |v| v.to_string()),
                    )));
                }
                Ok(ServerInfo {
                    mariadb: version.to_ascii_lowercase().contains("mariadb"),
                })
            })
            .await?;
        Ok(())
    }

    async fn check_server(&self) -> Result<bool> {
        let (version, _) = self
            .on_io(|store| async move { store.read_server_state().await })
            .await?;
        crate::migrate::check_server_version(&version)?;
        Ok(version.to_ascii_lowercase().contains("mariadb"))
    }

    /// Starts a dispatch of `job`; set options on the returned [`Dispatch`], then `.await` it
    /// for the new job's id.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError, JobQueue};
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail { to: String }
    /// # impl Job for SendMail { const NAME: &'static str = "send_mail";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # async fn handler(queue: JobQueue) -> lightjobs::Result<()> {
    /// let id = queue.dispatch(SendMail { to: "a@example.com".into() }).await?;
    /// let later = queue
    ///     .dispatch(SendMail { to: "b@example.com".into() })
    ///     .delay(Duration::from_secs(60))
    ///     .priority(-1)
    ///     .on_queue("mail")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn dispatch<J: Job>(&self, job: J) -> Dispatch<'_> {
        Dispatch {
            queue: self,
            job: self.new_job(&job),
        }
    }

    /// Inserts many jobs of one type in one statement; returns their ids in order.
    pub async fn dispatch_many<J: Job>(
        &self,
        jobs: impl IntoIterator<Item = J>,
    ) -> Result<Vec<u64>> {
        let rows = jobs
            .into_iter()
            .map(|job| self.new_job(&job).and_then(|j| self.validate(j)))
            .collect::<Result<Vec<_>>>()?;
        self.check_ready().await?;
        let mariadb = self.inner.server.get().is_some_and(|s| s.mariadb);
        let ids = self
            .on_io(move |store| async move { store.insert_jobs(&rows, mariadb).await })
            .await?;
        self.notify_workers();
        Ok(ids)
    }

    /// Validates and inserts a prepared row through the queue's own pool.
    pub(crate) async fn insert(&self, job: NewJob) -> Result<u64> {
        let job = self.validate(job)?;
        self.check_ready().await?;
        let name = job.name;
        let queue_name = job.queue.clone();
        if let Some(reservation) = self.reserve(&job) {
            let id = self
                .on_io(move |store| reservation.insert(store, job))
                .await?;
            tracing::debug!(target: "lightjobs::queue", id, name, queue = %queue_name, "dispatched to a local worker");
            return Ok(id);
        }
        let id = if job.unique.is_some() || !self.inner.combine {
            self.on_io(move |store| async move {
                let mut conn = store.nodes().get_conn().await?;
                Store::insert_job_own(&mut conn, &job).await
            })
            .await?
        } else {
            let mariadb = self.inner.server.get().is_some_and(|s| s.mariadb);
            self.inner.io.dispatch(job, mariadb).await?
        };
        self.notify_workers();
        tracing::debug!(target: "lightjobs::queue", id, name, queue = %queue_name, "dispatched");
        Ok(id)
    }

    /// A free slot of a local worker that can run `job` now, if there is one.
    fn reserve(&self, job: &NewJob) -> Option<Reservation> {
        let intakes = self.inner.intakes.read().ok()?;
        intakes.iter().find_map(|intake| intake.reserve(job))
    }

    /// Lets dispatches through this queue hand jobs to `intake`'s workers.
    pub(crate) fn add_intake(&self, intake: Arc<Intake>) {
        if let Ok(mut intakes) = self.inner.intakes.write() {
            intakes.push(intake);
        }
    }

    pub(crate) fn remove_intake(&self, intake: &Arc<Intake>) {
        if let Ok(mut intakes) = self.inner.intakes.write() {
            intakes.retain(|i| !Arc::ptr_eq(i, intake));
        }
    }

    pub(crate) fn new_job<J: Job>(&self, job: &J) -> Result<NewJob> {
        Ok(NewJob {
            name: J::NAME,
            payload: serde_json::to_string(job)?,
            queue: J::QUEUE.to_owned(),
            priority: 0,
            max_attempts: J::MAX_ATTEMPTS,
            when: When::After(Duration::ZERO),
            unique: None,
        })
    }

    fn validate(&self, job: NewJob) -> Result<NewJob> {
        validate_queue_name(&job.queue)?;
        if job.name.is_empty() || job.name.chars().count() > crate::defaults::MAX_JOB_NAME_CHARS {
            return Err(Error::invalid(
                "job name",
                format!(
                    "`{}` must be 1 to {MAX_JOB_NAME_CHARS} characters",
                    job.name
                ),
            ));
        }
        if job.payload.len() > self.inner.max_payload {
            return Err(Error::invalid(
                "payload",
                format!(
                    "job `{}` serialises to {} bytes, over the limit of {} bytes",
                    job.name,
                    job.payload.len(),
                    self.inner.max_payload
                ),
            ));
        }
        if let Some((key, period)) = &job.unique {
            if key.is_empty() || key.chars().count() > crate::defaults::MAX_UNIQUE_KEY_CHARS {
                return Err(Error::invalid(
                    "unique key",
                    format!("must be 1 to {MAX_UNIQUE_KEY_CHARS} characters"),
                ));
            }
            if *period > crate::defaults::MAX_DELAY {
                return Err(Error::invalid("unique period", "longer than ten years"));
            }
        }
        if job.max_attempts == 0 {
            return Err(Error::invalid("max_attempts", "must be at least 1"));
        }
        if let When::After(d) = job.when {
            if d > crate::defaults::MAX_DELAY {
                return Err(Error::invalid(
                    "delay",
                    format!("{d:?} is longer than the maximum of ten years"),
                ));
            }
        }
        Ok(job)
    }

    /// One job by id.
    pub async fn find(&self, id: u64) -> Result<Option<JobRecord>> {
        self.on_io(move |store| async move { store.find_job(id).await })
            .await
    }

    /// Jobs with `status` (`pending`, `running`, `processed`, `failed`), newest first.
    pub async fn list(
        &self,
        status: &str,
        queue: Option<&str>,
        limit: u64,
    ) -> Result<Vec<JobRecord>> {
        let (status, queue) = (status.to_owned(), queue.map(str::to_owned));
        self.on_io(
            move |store| async move { store.list_jobs(&status, queue.as_deref(), limit).await },
        )
        .await
    }

    /// Puts one `failed` job back to `pending` with a fresh set of attempts and its
    /// `last_error` cleared. Returns false when no failed job has this id.
    pub async fn retry_failed(&self, id: u64) -> Result<bool> {
        let retried = self
            .on_io(move |store| async move { store.retry_failed(Some(id), None).await })
            .await?;
        self.notify_workers();
        Ok(retried == 1)
    }

    /// Puts every `failed` job (of `queue`, or of all queues) back to `pending`.
    pub async fn retry_all_failed(&self, queue: Option<&str>) -> Result<u64> {
        let queue = queue.map(str::to_owned);
        let n = self
            .on_io(move |store| async move { store.retry_failed(None, queue.as_deref()).await })
            .await?;
        self.notify_workers();
        Ok(n)
    }

    /// Deletes `processed` jobs finished longer than `processed` ago and, when given,
    /// `failed` jobs finished longer than `failed` ago, 1,000 rows per statement.
    pub async fn prune(&self, processed: Duration, failed: Option<Duration>) -> Result<u64> {
        self.on_io(move |store| async move { store.prune_finished(processed, failed, 1000).await })
            .await
    }

    /// Cancels a job that has not started (`pending` or `scheduled` → `cancelled`).
    /// Returns false when no waiting job has this id (it ran, runs, or does not exist).
    pub async fn cancel(&self, id: u64) -> Result<bool> {
        self.on_io(move |store| async move { store.cancel_job(id).await })
            .await
    }

    /// Deletes a `failed` job. Returns false when no failed job has this id.
    pub async fn discard_failed(&self, id: u64) -> Result<bool> {
        self.on_io(move |store| async move { store.discard_failed(id).await })
            .await
    }

    /// Pauses `queue` in every process: running jobs finish, no new ones are claimed
    /// (workers see it within about a second). Dispatching to it still works.
    pub async fn pause(&self, queue: &str) -> Result<()> {
        self.set_paused(queue, true).await
    }

    /// Resumes a paused queue.
    pub async fn resume(&self, queue: &str) -> Result<()> {
        self.set_paused(queue, false).await?;
        self.notify_workers();
        Ok(())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        validate_queue_name(queue)?;
        let name = queue.to_owned();
        self.on_io(move |store| async move { store.set_paused(&name, paused).await })
            .await?;
        self.apply_locally(|state| {
            if paused {
                state.paused.insert(queue.to_owned());
            } else {
                state.paused.remove(queue);
            }
        });
        Ok(())
    }

    /// Applies a change just written to `lightjobs_queues` to this process's workers.
    fn apply_locally(&self, change: impl Fn(&mut QueueState)) {
        let states = self
            .inner
            .local_states
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for state in states.iter() {
            change(&mut state.write().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Lets changes made through this queue reach `states` at once.
    pub(crate) fn add_local_states(&self, states: QueueStates) {
        self.inner
            .local_states
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(states);
    }

    pub(crate) fn remove_local_states(&self, states: &QueueStates) {
        self.inner
            .local_states
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, states));
    }

    /// Limits `queue` to `limit` running jobs across every process (`None` lifts it).
    /// Claims on a limited queue take turns on the queue's row, so keep it for queues that
    /// need it (a rate-limited API), not for every queue.
    pub async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()> {
        validate_queue_name(queue)?;
        let name = queue.to_owned();
        self.on_io(move |store| async move { store.set_global_limit(&name, limit).await })
            .await?;
        self.apply_locally(|state| {
            if limit.is_some() {
                state.limited.insert(queue.to_owned());
            } else {
                state.limited.remove(queue);
            }
        });
        Ok(())
    }

    /// The paused queues.
    pub async fn paused_queues(&self) -> Result<Vec<String>> {
        self.on_io(|store| async move { store.paused_queues().await })
            .await
    }

    /// Job counts per queue and status.
    pub async fn stats(&self) -> Result<Vec<QueueCount>> {
        self.on_io(|store| async move { store.count_jobs().await })
            .await
    }
}

/// A dispatch being prepared; `.await` it to insert the job.
#[must_use = "a dispatch does nothing until it is awaited"]
pub struct Dispatch<'q> {
    queue: &'q JobQueue,
    job: Result<NewJob>,
}

impl<'q> Dispatch<'q> {
    fn set(mut self, f: impl FnOnce(&mut NewJob)) -> Self {
        if let Ok(job) = self.job.as_mut() {
            f(job);
        }
        self
    }

    /// Runs the job no sooner than `delay` from now (the database's clock).
    pub fn delay(self, delay: Duration) -> Self {
        self.set(|j| j.when = When::After(delay))
    }

    /// Runs the job no sooner than `at`. A time in the past means at once.
    pub fn run_at(self, at: SystemTime) -> Self {
        self.set(|j| j.when = When::At(at))
    }

    /// Lower runs first among ready jobs of a queue (like Unix `nice`); default 0.
    pub fn priority(self, priority: i16) -> Self {
        self.set(|j| j.priority = priority)
    }

    /// Sends the job to `queue` instead of [`Job::QUEUE`].
    pub fn on_queue(self, queue: &str) -> Self {
        self.set(|j| j.queue = queue.to_owned())
    }

    /// Makes the job unique by `key`: while a job with this key is scheduled, pending or
    /// running, the dispatch inserts nothing and returns that job's id. A unique index
    /// decides, so two processes dispatching the same key at once get one job.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError, JobQueue};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Rebuild { user: u64 }
    /// # impl Job for Rebuild { const NAME: &'static str = "rebuild";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # async fn f(queue: JobQueue) -> lightjobs::Result<()> {
    /// let a = queue.dispatch(Rebuild { user: 7 }).unique("rebuild:7").await?;
    /// let b = queue.dispatch(Rebuild { user: 7 }).unique("rebuild:7").await?;
    /// assert_eq!(a, b);
    /// # Ok(()) }
    /// ```
    pub fn unique(self, key: &str) -> Self {
        self.unique_for(key, Duration::ZERO)
    }

    /// Like [`unique`](Self::unique), and the key stays taken for `period` after the
    /// dispatch even once the job has finished: at most one job per key per period.
    pub fn unique_for(self, key: &str, period: Duration) -> Self {
        let key = key.to_owned();
        self.set(|j| j.unique = Some((key, period)))
    }

    /// Overrides [`Job::MAX_ATTEMPTS`].
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.set(|j| j.max_attempts = attempts)
    }

    /// Inserts the job through `conn`: your own `mysql_async` transaction (it commits or
    /// rolls back with your rows) or connection. Call [`JobQueue::notify_workers`] after
    /// your commit for an immediate start; otherwise the next poll picks it up.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError, JobQueue};
    /// # use mysql_async::{prelude::*, TxOpts};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail { to: String }
    /// # impl Job for SendMail { const NAME: &'static str = "send_mail";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # async fn signup(queue: JobQueue) -> lightjobs::Result<()> {
    /// # let pool = mysql_async::Pool::new("mysql://app@127.0.0.1/app");
    /// let mut conn = pool.get_conn().await?; // your application's own pool
    /// let mut tx = conn.start_transaction(TxOpts::default()).await?;
    /// tx.exec_drop("INSERT INTO users (email) VALUES (?)", ("a@example.com",)).await?;
    /// queue.dispatch(SendMail { to: "a@example.com".into() }).within(&mut tx).await?;
    /// tx.commit().await?;
    /// queue.notify_workers();
    /// # Ok(()) }
    /// ```
    pub async fn within<Q: Queryable>(self, conn: &mut Q) -> Result<u64> {
        let job = self.job.and_then(|j| self.queue.validate(j))?;
        self.queue.check_ready().await?;
        Store::insert_job(conn, &job).await
    }
}

impl<'q> IntoFuture for Dispatch<'q> {
    type Output = Result<u64>;
    type IntoFuture = BoxFuture<'q, Result<u64>>;

    fn into_future(self) -> Self::IntoFuture {
        let queue = self.queue;
        let job = self.job;
        Box::pin(async move { queue.insert(job?).await })
    }
}

/// Queue names are stored and compared as given, and always passed as parameters, so any
/// printable text is safe; empty, padded, control characters and overlong are refused.
pub(crate) fn validate_queue_name(queue: &str) -> Result<()> {
    let chars = queue.chars().count();
    if chars == 0 || chars > crate::defaults::MAX_QUEUE_NAME_CHARS {
        return Err(Error::invalid(
            "queue name",
            format!("must be 1 to {MAX_QUEUE_NAME_CHARS} characters, got {chars}"),
        ));
    }
    if queue.trim() != queue || queue.chars().any(char::is_control) {
        return Err(Error::invalid(
            "queue name",
            format!("{queue:?} has surrounding spaces or control characters"),
        ));
    }
    Ok(())
}

/// `LIGHTJOBS_DATABASE_URL`, else `DATABASE_URL`.
pub(crate) fn database_url_from_env() -> Result<String> {
    ["LIGHTJOBS_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .ok_or(Error::NotConfigured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(validate_queue_name("default").is_ok());
        assert!(validate_queue_name("it's; DROP TABLE jobs; --").is_ok());
        assert!(validate_queue_name("courriel-é-📬").is_ok());
        assert!(validate_queue_name(&"q".repeat(64)).is_ok());
        assert!(validate_queue_name(&"q".repeat(65)).is_err());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name(" mail").is_err());
        assert!(validate_queue_name("a\nb").is_err());
    }

    #[test]
    fn bad_pool_settings_are_errors() {
        let e = JobQueue::builder("mysql://root@127.0.0.1/test")
            .pool_size(0)
            .build();
        assert!(e.unwrap_err().to_string().contains("pool_size"));
        let e = JobQueue::builder("postgres://x").build();
        assert!(e.is_err());
    }
}
