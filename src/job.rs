//! What a user implements: the [`Job`] trait, the [`JobContext`] a job runs with, and the
//! [`JobError`] it returns.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// A unit of background work: a serde type with a stable name and an async `execute`.
///
/// The value is serialised to JSON at dispatch and deserialised by the worker that runs it,
/// so it carries the job's input, not live resources (open connections, handles): those
/// the job fetches itself, for example from a `once_cell` or from the [`JobContext`].
///
/// ```
/// use lightjobs::{Job, JobContext, JobError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendMail { to: String, subject: String }
///
/// impl Job for SendMail {
///     const NAME: &'static str = "send_mail";
///     const MAX_ATTEMPTS: u32 = 5;
///
///     async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
///         if self.to.is_empty() {
///             // Retrying cannot fix this one: fail at once.
///             return Err(JobError::fail("Recipient email address is missing"));
///         }
///         println!("attempt {} mailing {}", ctx.attempt(), self.to);
///         Ok(())
///     }
/// }
/// ```
///
/// Delivery is at least once: a process that dies after a job ran and before the result
/// was written runs it again elsewhere. Make `execute` idempotent (check before you act,
/// use [`JobContext::id`] as an idempotency key with the services you call).
// The futures are deliberately not `Send`: workers run jobs on actix-rt's single-threaded
// runtime, so a job may hold `Rc`s and other actix state across awaits.
#[allow(async_fn_in_trait)]
pub trait Job: Serialize + DeserializeOwned + 'static {
    /// The name stored in `jobs.name`. Keep it stable when you rename the type: rows
    /// already in the table find their handler by this string.
    const NAME: &'static str;

    /// Other names stored rows may carry for this type: the name it had before a rename,
    /// or the PHP class a Lightpack app dispatched it as (`App\\Jobs\\SendMail`). A worker
    /// claims and runs rows of every one of them; new dispatches always write [`NAME`](Job::NAME).
    ///
    /// ```
    /// # use lightjobs::{Job, JobContext, JobError, Registry};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail { to: String }
    /// impl Job for SendMail {
    ///     const NAME: &'static str = "send_mail";
    ///     const ALIASES: &'static [&'static str] = &["App\\Jobs\\SendMail"];
    ///     async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
    /// }
    /// let registry = Registry::new().register::<SendMail>();
    /// assert!(registry.contains("App\\Jobs\\SendMail"));
    /// ```
    const ALIASES: &'static [&'static str] = &[];

    /// The queue the job goes to unless the dispatch names another.
    const QUEUE: &'static str = crate::defaults::QUEUE;

    /// How many times the job may run before it is marked `failed` (at least 1).
    const MAX_ATTEMPTS: u32 = crate::defaults::MAX_ATTEMPTS;

    /// How long one run may take before it is cancelled and counted as an error.
    /// `None` uses the workers' default ([`Workers::job_timeout`](crate::Workers::job_timeout)).
    const TIMEOUT: Option<Duration> = None;

    /// The delay before the next attempt after attempt number `attempt` (1-based) failed.
    /// The default is [`Backoff::default`]: exponential from 1 s, capped at 1 h, with jitter.
    fn backoff(attempt: u32) -> Duration {
        Backoff::default().delay(attempt, fastrand::f64())
    }

    /// The job's flow key and its limits (see [`Flow`](crate::Flow)), read from the job at
    /// dispatch: `None` (the default) runs it without per-key limits. A dispatch's
    /// [`flow`](crate::Dispatch::flow) overrides it.
    fn flow(&self) -> Option<crate::Flow> {
        None
    }

    /// Runs the job. `Err` with attempts left schedules a retry; see [`JobError`].
    fn execute(self, ctx: &JobContext) -> impl Future<Output = Result<(), JobError>>;
}

/// What a running job knows about itself.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) shutdown: CancellationToken,
    pub(crate) data: Arc<DataMap>,
    /// The queue of the workers running the job, for the jobs it dispatches.
    pub(crate) jobs: crate::JobQueue,
    pub(crate) trace_parent: Option<String>,
    /// Cancelled when [`JobQueue::cancel`](crate::JobQueue::cancel) reaches the run.
    pub(crate) cancel: CancellationToken,
    /// The claim's token, which guards the output's write.
    pub(crate) token: u64,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: Option<serde_json::Value>,
    /// The batch the job belongs to.
    pub(crate) batch: Option<u64>,
    /// The batch it waited for (a batch callback).
    pub(crate) after_batch: Option<u64>,
}

/// Shared values handed to every job, by type (see [`Workers::data`](crate::Workers::data)).
#[derive(Default, Clone)]
pub(crate) struct DataMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl fmt::Debug for DataMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataMap({} values)", self.0.len())
    }
}

impl DataMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    fn get<T: 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

impl JobContext {
    /// A value registered with [`Workers::data`](crate::Workers::data): a database pool,
    /// an HTTP client, a mailer. Jobs carry only their input; resources come from here.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Audit { msg: String }
    /// impl Job for Audit {
    ///     const NAME: &'static str = "audit";
    ///     async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
    ///         let pool = ctx
    ///             .data::<mysql_async::Pool>()
    ///             .ok_or_else(|| JobError::fail("no Pool registered with Workers::data"))?;
    ///         let _conn = pool.get_conn().await?;
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn data<T: 'static>(&self) -> Option<&T> {
        self.data.get::<T>()
    }

    /// Starts a dispatch of another job through the queue of the workers running this one
    /// (a job that fans out work, or hands the next step on).
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail { to: String }
    /// # impl Job for SendMail { const NAME: &'static str = "send_mail";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Newsletter { to: Vec<String> }
    ///
    /// impl Job for Newsletter {
    ///     const NAME: &'static str = "newsletter";
    ///     async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
    ///         for to in self.to {
    ///             ctx.dispatch(SendMail { to }).await.map_err(JobError::retry)?;
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn dispatch<J: Job>(&self, job: J) -> crate::Dispatch<'_> {
        self.jobs.dispatch(job)
    }

    /// The batch this job belongs to, or, for a batch callback (or a job dispatched with
    /// [`Dispatch::after_batch`](crate::Dispatch::after_batch)), the batch it waited for.
    /// A callback reads its batch's jobs and their outputs with
    /// [`JobQueue::batch_jobs`](crate::JobQueue::batch_jobs).
    pub fn batch(&self) -> Option<u64> {
        self.batch.or(self.after_batch)
    }

    /// Dispatches `job` into this job's batch: the batch finishes (and its callbacks run)
    /// only once the new job has finished too. The pattern of a job that fans out work.
    /// The dispatch fails if this job is not in a batch.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { n: u32 }
    /// # impl Job for Page { const NAME: &'static str = "page";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Crawl { pages: u32 }
    ///
    /// impl Job for Crawl {
    ///     const NAME: &'static str = "crawl";
    ///     async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
    ///         for n in 0..self.pages {
    ///             ctx.add_to_batch(Page { n }).await.map_err(JobError::retry)?;
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn add_to_batch<J: Job>(&self, job: J) -> crate::Dispatch<'_> {
        let dispatch = self.jobs.dispatch(job);
        match self.batch {
            Some(batch) => dispatch.in_batch(batch),
            None => dispatch.failing(crate::Error::Invalid {
                what: "dispatch",
                reason: format!("job {} is not in a batch", self.id),
            }),
        }
    }

    /// The queue of the workers running the job: what [`dispatch`](Self::dispatch) uses.
    pub fn job_queue(&self) -> &crate::JobQueue {
        &self.jobs
    }

    /// The W3C `traceparent` of the span that dispatched the job, if one was stored: the
    /// job's span links to it; pass it on to services the job calls.
    pub fn trace_parent(&self) -> Option<&str> {
        self.trace_parent.as_deref()
    }

    /// The tags given at dispatch ([`Dispatch::tags`](crate::Dispatch::tags)).
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The metadata object given at dispatch ([`Dispatch::meta`](crate::Dispatch::meta)).
    pub fn meta(&self) -> Option<&serde_json::Value> {
        self.meta.as_ref()
    }

    /// Records `output` as the job's result, readable with
    /// [`JobQueue::find`](crate::JobQueue::find) (at most
    /// [`MAX_OUTPUT_BYTES`](crate::defaults::MAX_OUTPUT_BYTES) as JSON). It is written at
    /// once, on the job's row, while this run holds it; a later call replaces it, and a
    /// retry's output replaces an earlier attempt's. An error when it does not serialise,
    /// is too large, or the row is no longer this run's (a rescue took it).
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { url: String }
    /// impl Job for Resize {
    ///     const NAME: &'static str = "resize";
    ///     async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
    ///         let thumbnail = format!("{}?w=200", self.url);
    ///         ctx.record_output(&serde_json::json!({ "thumbnail": thumbnail })).await
    ///     }
    /// }
    /// ```
    pub async fn record_output<T: Serialize + ?Sized>(&self, output: &T) -> Result<(), JobError> {
        let json = serde_json::to_string(output)
            .map_err(|e| JobError::fail(format!("output does not serialise: {e}")))?;
        let most = crate::defaults::MAX_OUTPUT_BYTES;
        if json.len() > most {
            return Err(JobError::fail(format!(
                "output is {} bytes as JSON, over the limit of {most}",
                json.len()
            )));
        }
        match self.jobs.record_output((self.id, self.token), json).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(JobError::retry(
                "output not recorded: this run no longer holds the job",
            )),
            Err(e) => Err(JobError::retry(format!("output not recorded: {e}"))),
        }
    }

    /// The job's id (`jobs.id`); stable across retries, a good idempotency key.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue the job was claimed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many attempts the job has in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True on the last attempt: an error now marks the job `failed`.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// True once the workers are shutting down. A long job may check it and return early
    /// with an error, which schedules a retry; otherwise it gets the grace period.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Completes when the workers start shutting down.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }

    /// True once the job has been cancelled ([`JobQueue::cancel`](crate::JobQueue::cancel))
    /// while running. Return soon: whatever the job returns from now on but success ends
    /// it `cancelled`, and after [`Workers::cancel_grace`](crate::Workers::cancel_grace) its
    /// future is dropped.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the job is cancelled while running: race it against the work.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Export;
    /// # async fn export_rows() {}
    /// impl Job for Export {
    ///     const NAME: &'static str = "export";
    ///     async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
    ///         tokio::select! {
    ///             () = export_rows() => Ok(()),
    ///             () = ctx.cancelled() => Err(JobError::fail("cancelled")),
    ///         }
    ///     }
    /// }
    /// ```
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

/// How a job failed. Any error converts into it with `?`, which means "retry".
///
/// ```
/// use lightjobs::JobError;
///
/// fn parse(s: &str) -> Result<u32, JobError> {
///     let n: u32 = s.parse()?; // a ParseIntError becomes JobError::Retry
///     if n == 0 {
///         return Err(JobError::fail("zero is not a valid count")); // no more attempts
///     }
///     Ok(n)
/// }
/// assert!(parse("x").unwrap_err().is_retryable());
/// assert!(!parse("0").unwrap_err().is_retryable());
/// ```
// Deliberately not `std::error::Error`: that would conflict with the blanket `From` that
// makes `?` work on any error, the same trade-off anyhow makes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// Try again after the backoff, if attempts are left.
    Retry(String),
    /// Do not try again: the job goes to `failed` at once.
    Fail(String),
    /// Not a failure: run again after this delay, without spending an attempt (waiting for
    /// a rate limit, a resource not ready yet).
    Snooze(Duration),
    /// The service the job calls said to wait (an HTTP 429 with `Retry-After`): the job
    /// runs again after this delay without spending an attempt, and no other job of its
    /// flow key starts before then either. Without a flow key it is a snooze.
    RateLimited(Duration),
}

impl JobError {
    /// An error that schedules a retry.
    pub fn retry(message: impl fmt::Display) -> Self {
        JobError::Retry(message.to_string())
    }

    /// An error that marks the job `failed` without further attempts.
    pub fn fail(message: impl fmt::Display) -> Self {
        JobError::Fail(message.to_string())
    }

    /// Runs the job again after `delay` without spending an attempt.
    pub fn snooze(delay: Duration) -> Self {
        JobError::Snooze(delay)
    }

    /// The service said to wait `retry_after`: this job and every job of its flow key
    /// wait that long, without spending an attempt.
    ///
    /// ```
    /// use lightjobs::JobError;
    /// use std::time::Duration;
    /// // From a 429's `Retry-After: 30`:
    /// let e = JobError::rate_limited(Duration::from_secs(30));
    /// assert!(!e.is_retryable());
    /// ```
    pub fn rate_limited(retry_after: Duration) -> Self {
        JobError::RateLimited(retry_after)
    }

    /// The message stored in `jobs.last_error` (empty for a snooze).
    pub fn message(&self) -> &str {
        match self {
            JobError::Retry(m) | JobError::Fail(m) => m,
            JobError::Snooze(_) | JobError::RateLimited(_) => "",
        }
    }

    /// Whether another attempt may fix it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Retry(_))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Snooze(d) => write!(f, "snoozed for {d:?}"),
            JobError::RateLimited(d) => write!(f, "rate limited for {d:?}"),
            _ => f.write_str(self.message()),
        }
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(e: E) -> Self {
        // Keep the whole chain: "connecting to smtp: connection refused" beats the top line.
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        JobError::Retry(message)
    }
}

/// A job name (or alias) must fit the `jobs.name` column and not be empty: checked where
/// names come in, by `Workers::start` for the registered types and by every dispatch.
pub(crate) fn check_job_name(name: &str) -> crate::Result<()> {
    let max = crate::defaults::MAX_JOB_NAME_CHARS;
    if name.is_empty() || name.chars().count() > max {
        return Err(crate::Error::invalid(
            "job name",
            format!("`{name}` must be 1 to {max} characters (the `jobs.name` column)"),
        ));
    }
    Ok(())
}
