//! [`Dispatch`]: the options of one dispatch (delay, priority, queue, uniqueness,
//! attempts), inserted when awaited or inside a caller's transaction.

use super::*;

/// A dispatch being prepared; `.await` it to insert the job.
#[must_use = "a dispatch does nothing until it is awaited"]
pub struct Dispatch<'q> {
    pub(super) queue: &'q JobQueue,
    pub(super) job: Result<NewJob>,
}

impl<'q> Dispatch<'q> {
    pub(super) fn set(mut self, f: impl FnOnce(&mut NewJob)) -> Self {
        if let Ok(job) = self.job.as_mut() {
            f(job);
        }
        self
    }

    /// A dispatch that fails with `error` when awaited.
    pub(crate) fn failing(mut self, error: Error) -> Self {
        self.job = Err(error);
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

    /// Puts the job under `flow` (its key and limits), overriding [`Job::flow`]; `None`
    /// dispatches it without one.
    ///
    /// ```no_run
    /// # use lightjobs::{Flow, Job, JobContext, JobError, JobQueue};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Charge { cents: u64 }
    /// # impl Job for Charge { const NAME: &'static str = "charge";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # async fn f(queue: JobQueue) -> lightjobs::Result<()> {
    /// // At most 10 calls to the payment API at once, whoever dispatches them.
    /// queue.dispatch(Charge { cents: 500 })
    ///     .flow(Some(Flow::key("api:payments").concurrency(10)))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn flow(self, flow: Option<crate::Flow>) -> Self {
        self.set(|j| j.flow = flow)
    }

    /// Stores `traceparent` (W3C, `00-<trace id>-<span id>-<flags>`) with the job: its
    /// `job` span records it and, with the `opentelemetry` feature, links to it. With that
    /// feature the current span's context is taken at dispatch without this call.
    pub fn trace_parent(self, traceparent: &str) -> Self {
        let traceparent = traceparent.to_owned();
        self.set(|j| j.trace = Some(traceparent))
    }

    /// Tags the job (at most [`MAX_TAGS`](crate::defaults::MAX_TAGS), each 1 to
    /// [`MAX_TAG_CHARS`](crate::defaults::MAX_TAG_CHARS) of `A-Z a-z 0-9 _ . : -`): the job
    /// reads them with [`JobContext::tags`](crate::JobContext::tags), and they show with the
    /// job in [`JobQueue::find`] and the tools.
    pub fn tags<I, S>(self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        self.set(|j| j.tags = tags)
    }

    /// Attaches a small JSON object (at most
    /// [`MAX_META_BYTES`](crate::defaults::MAX_META_BYTES)) to the job: who asked for it,
    /// the request it came from. The job reads it with
    /// [`JobContext::meta`](crate::JobContext::meta).
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError, JobQueue};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Export { table: String }
    /// # impl Job for Export { const NAME: &'static str = "export";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # async fn f(queue: JobQueue) -> lightjobs::Result<()> {
    /// queue.dispatch(Export { table: "orders".into() })
    ///     .tags(["tenant:42", "export"])
    ///     .meta(serde_json::json!({ "requested_by": "ada@example.com" }))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn meta(self, meta: serde_json::Value) -> Self {
        let meta = Some(meta.to_string());
        self.set(|j| j.meta = meta)
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
        if let Some(log) = self.queue.memory() {
            return log.record_unlinked(job);
        }
        self.queue.check_ready().await?;
        if job.is_linked() {
            return Store::insert_linked(conn, &job).await;
        }
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
