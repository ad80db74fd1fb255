//! [`JobQueue`]: the handle handlers dispatch through.

mod batch;
mod builder;
mod combiner;
mod dispatch;
mod io_thread;
pub(crate) mod memory;
mod operations;
mod ticket;
mod validate;
mod waker;

pub(crate) use validate::validate_queue_name;

pub use batch::{Batch, BatchBuilder};
pub use builder::JobQueueBuilder;
pub use dispatch::Dispatch;

/// A page of jobs from [`JobQueue::list_page`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Page {
    /// The jobs, newest first.
    pub jobs: Vec<JobRecord>,
    /// The cursor of the next page, `None` after the last.
    pub next: Option<String>,
}

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, PoolConstraints, PoolOpts};
use once_cell::sync::OnceCell;

use crate::defaults::{MAX_QUEUE_NAME_CHARS, MAX_UNIQUE_KEY_CHARS};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::nodes::{split_urls, Deadlines, Nodes};
use crate::runtime::handoff::{Intake, Reservation};
use crate::runtime::queue_state::{QueueState, QueueStates};
use crate::store::{After, JobRecord, NewIds, NewJob, QueueCount, ServerState, Store, When};
use io_thread::IoThread;
use ticket::Ticket;

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
    deadlines: Deadlines,
    dispatch_timeout: Duration,
    /// Test hook: multi-row INSERTs take MySQL's path (consecutive ids) on MariaDB too.
    consecutive_ids: bool,
    /// The connection thread; `None` for a [`TestQueue`](crate::testing::TestQueue) without
    /// a database, whose dispatches go to `memory`.
    io: Option<IoThread>,
    memory: Option<Arc<memory::Log>>,
    max_payload: usize,
    combine: bool,
    server: tokio::sync::OnceCell<ServerInfo>,
    /// Workers of this process started on this queue, which take jobs handed to them at
    /// dispatch (see [`handoff`](crate::runtime::handoff)).
    intakes: std::sync::RwLock<Vec<Arc<Intake>>>,
    /// The queue settings as the workers of this process on this queue see them: a pause
    /// or a limit set through this queue applies to them at once, not at their next read.
    local_states: std::sync::RwLock<Vec<QueueStates>>,
    /// Ends of jobs to settle (batches to finish, waiting jobs to release): recorded by
    /// the workers on this queue, settled by their maintenance thread.
    ends: Arc<crate::runtime::ends::Ends>,
}

#[derive(Debug, Clone, Copy)]
struct ServerInfo {
    /// How multi-row INSERTs learn their ids on this server.
    ids: NewIds,
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
            deadlines: Deadlines::default(),
            dispatch_timeout: crate::defaults::DISPATCH_TIMEOUT,
            keepalive: Some(crate::defaults::TCP_KEEPALIVE),
            consecutive_ids: false,
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
            self.inner.deadlines,
        )
    }

    /// Runs `f` with the store on the queue's connection thread.
    async fn on_io<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        match &self.inner.io {
            Some(io) => io.run(f).await,
            None => Err(Error::NoDatabase),
        }
    }

    /// A queue without a database whose dispatches are recorded in `log`: what
    /// [`TestQueue::new`](crate::testing::TestQueue::new) hands to the app.
    pub(crate) fn in_memory(log: Arc<memory::Log>) -> JobQueue {
        JobQueue {
            inner: Arc::new(Inner {
                nodes: Vec::new(),
                deadlines: Deadlines::default(),
                dispatch_timeout: crate::defaults::DISPATCH_TIMEOUT,
                consecutive_ids: false,
                io: None,
                memory: Some(log),
                max_payload: crate::defaults::MAX_PAYLOAD_BYTES,
                combine: false,
                server: tokio::sync::OnceCell::new(),
                intakes: std::sync::RwLock::default(),
                local_states: std::sync::RwLock::default(),
                ends: Arc::default(),
            }),
        }
    }

    /// The log of a queue without a database ([`TestQueue::new`](crate::testing::TestQueue::new)).
    pub(crate) fn memory(&self) -> Option<&Arc<memory::Log>> {
        self.inner.memory.as_ref()
    }

    /// The ends of jobs that the workers on this queue record and their settler settles.
    pub(crate) fn ends(&self) -> &Arc<crate::runtime::ends::Ends> {
        &self.inner.ends
    }

    /// Wakes this process's workers and an idle worker process elsewhere, e.g. after
    /// committing a transaction that dispatched jobs with [`Dispatch::within`].
    pub fn notify_workers(&self) {
        crate::runtime::wake::wake_workers();
        if let Some(io) = &self.inner.io {
            io.wake_others(None);
        }
    }

    /// Wakes this process's workers and an idle worker process elsewhere that serves
    /// `queue`.
    fn notify_queue(&self, queue: &str) {
        crate::runtime::wake::wake_workers();
        if let Some(io) = &self.inner.io {
            io.wake_others(Some(queue));
        }
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
                let ServerState {
                    version,
                    autoinc_step: step,
                    applied,
                } = self
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
                let mariadb = version.to_ascii_lowercase().contains("mariadb");
                let ids = if mariadb && !self.inner.consecutive_ids {
                    NewIds::Returning
                } else {
                    NewIds::Consecutive { step }
                };
                Ok(ServerInfo { ids })
            })
            .await?;
        Ok(())
    }

    async fn check_server(&self) -> Result<()> {
        let state = self
            .on_io(|store| async move { store.read_server_state().await })
            .await?;
        crate::migrate::check_server_version(&state.version)
    }

    /// How multi-row INSERTs learn their ids (known once `check_ready` succeeded).
    fn new_ids(&self) -> NewIds {
        self.inner.server.get().map_or(NewIds::Returning, |s| s.ids)
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
        if let Some(log) = self.memory() {
            return Ok(rows.into_iter().map(|row| log.record(row)).collect());
        }
        self.check_ready().await?;
        let new_ids = self.new_ids();
        let ids = self
            .on_io(move |store| async move { store.insert_jobs(&rows, new_ids).await })
            .await?;
        self.notify_queue(J::QUEUE);
        Ok(ids)
    }

    /// Validates and inserts a prepared row through the queue's own pool, within the
    /// dispatch deadline.
    pub(crate) async fn insert(&self, job: NewJob) -> Result<u64> {
        let job = self.validate(job)?;
        if let Some(log) = self.memory() {
            return log.record_unlinked(job);
        }
        let limit = self.inner.dispatch_timeout;
        let ticket = Arc::new(Ticket::default());
        match tokio::time::timeout(limit, self.insert_valid(job, ticket.clone())).await {
            Ok(result) => result,
            // A dispatch still waiting for its turn is given up and never inserted; one
            // already sent may have been.
            Err(_) => Err(Error::Timeout {
                what: "dispatch",
                after: limit,
                sent: !ticket.abandon(),
            }),
        }
    }

    async fn insert_valid(&self, job: NewJob, ticket: Arc<Ticket>) -> Result<u64> {
        self.check_ready().await?;
        if job.is_linked() {
            ticket.mark_sent();
            return self.insert_linked(job).await;
        }
        let (name, queue_name) = (job.name, job.queue.clone());
        let reservation = self.reserve(&job);
        let handed = reservation.is_some();
        let id = match reservation {
            Some(reservation) if !self.inner.combine => {
                ticket.mark_sent();
                self.on_io(move |store| reservation.insert(store, job))
                    .await?
            }
            None if job.unique.is_some() || !self.inner.combine => {
                ticket.mark_sent();
                self.on_io(move |store| async move {
                    store
                        .nodes()
                        .run(async |conn| Store::insert_job_own(conn, &job).await)
                        .await
                })
                .await?
            }
            reservation => {
                self.inner
                    .io
                    .as_ref()
                    .ok_or(Error::NoDatabase)?
                    .dispatch(job, self.new_ids(), reservation, ticket)
                    .await?
            }
        };
        if handed {
            tracing::debug!(target: "lightjobs::queue", id, name, queue = %queue_name, "dispatched to a local worker");
            return Ok(id);
        }
        self.notify_queue(&queue_name);
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
            flow: job.flow(),
            trace: crate::trace::current(),
            tags: Vec::new(),
            meta: None,
            batch: None,
            after: None,
        })
    }
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
    fn bad_pool_settings_are_errors() {
        let e = JobQueue::builder("mysql://root@127.0.0.1/test")
            .pool_size(0)
            .build();
        assert!(e.unwrap_err().to_string().contains("pool_size"));
        let e = JobQueue::builder("postgres://x").build();
        assert!(e.is_err());
    }
}
