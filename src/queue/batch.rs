//! Batches and dependencies on the queue handle: [`BatchBuilder`], the progress of a
//! batch, and the inserts of jobs that join a batch or wait for something
//! ([`Dispatch::in_batch`], [`Dispatch::after`], [`Dispatch::after_batch`]).

use super::*;
use crate::store::{AfterOutcome, BatchState, Upstream};

/// A batch being prepared ([`JobQueue::batch`]): its jobs and its callbacks, inserted in
/// one transaction by [`dispatch`](Self::dispatch).
///
/// Each callback is a job dispatched with the batch that waits (status `awaiting`) until
/// every job of the batch has finished, then runs once, or ends `cancelled` (saying
/// why) when the batch's outcome is not its own: [`on_success`](Self::on_success) when
/// every job succeeded, [`on_failure`](Self::on_failure) when one failed or was
/// cancelled, [`on_complete`](Self::on_complete) either way. Jobs of the batch may add
/// more jobs to it while it runs ([`JobContext::add_to_batch`](crate::JobContext::add_to_batch)).
///
/// ```no_run
/// # use lightjobs::{Job, JobContext, JobError, JobQueue};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { image: u64 }
/// # impl Job for Resize { const NAME: &'static str = "resize";
/// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct NotifyAlbum { album: u64 }
/// # impl Job for NotifyAlbum { const NAME: &'static str = "notify_album";
/// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
/// # async fn f(queue: JobQueue) -> lightjobs::Result<()> {
/// let batch = queue
///     .batch()
///     .description("album 7")
///     .jobs((1..=40).map(|image| Resize { image }))
///     .on_success(NotifyAlbum { album: 7 })
///     .dispatch()
///     .await?;
/// let state = queue.batch_state(batch.id).await?.expect("just dispatched");
/// println!("{} of {} done", state.done(), state.total());
/// # Ok(()) }
/// ```
#[must_use = "a batch does nothing until it is dispatched"]
pub struct BatchBuilder<'q> {
    queue: &'q JobQueue,
    description: Option<String>,
    jobs: Result<Vec<NewJob>>,
    callbacks: Result<Vec<NewJob>>,
}

/// A dispatched batch: its id and the ids of its jobs and callbacks, in the order they
/// were added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The batch's id ([`JobQueue::batch_state`], [`Dispatch::in_batch`],
    /// [`Dispatch::after_batch`]).
    pub id: u64,
    /// Its jobs.
    pub jobs: Vec<u64>,
    /// Its callbacks.
    pub callbacks: Vec<u64>,
}

impl<'q> BatchBuilder<'q> {
    /// Describes the batch for people (the dashboard and `lightjobs batch` show it).
    pub fn description(mut self, description: &str) -> Self {
        self.description = Some(description.chars().take(255).collect());
        self
    }

    /// Adds a job to the batch.
    pub fn job<J: Job>(self, job: J) -> Self {
        self.jobs(std::iter::once(job))
    }

    /// Adds jobs to the batch.
    pub fn jobs<J: Job>(mut self, jobs: impl IntoIterator<Item = J>) -> Self {
        let queue = self.queue;
        if let Ok(list) = self.jobs.as_mut() {
            for job in jobs {
                match queue.new_job(&job).and_then(|j| queue.validate(j)) {
                    Ok(row) => list.push(row),
                    Err(error) => {
                        self.jobs = Err(error);
                        break;
                    }
                }
            }
        }
        self
    }

    /// Adds a job with options set on its [`Dispatch`] (queue, priority, delay, tags,
    /// metadata, attempts, flow key). A dispatch that waits for something
    /// ([`Dispatch::after`]) or is unique cannot be part of a batch: the batch's dispatch
    /// fails with [`Error::Invalid`].
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError, JobQueue};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { image: u64 }
    /// # impl Job for Resize { const NAME: &'static str = "resize";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # async fn f(queue: JobQueue) -> lightjobs::Result<()> {
    /// queue
    ///     .batch()
    ///     .add_dispatch(queue.dispatch(Resize { image: 1 }).on_queue("images").tags(["album:7"]))
    ///     .dispatch()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn add_dispatch(mut self, dispatch: Dispatch<'_>) -> Self {
        let row = dispatch.job.and_then(|j| self.queue.validate(j));
        match (row, self.jobs.as_mut()) {
            (Ok(row), Ok(list)) => list.push(row),
            (Err(error), Ok(_)) => self.jobs = Err(error),
            (_, Err(_)) => {}
        }
        self
    }

    /// Runs `job` once after every job of the batch succeeded.
    pub fn on_success<J: Job>(self, job: J) -> Self {
        self.callback(job, AfterOutcome::Success)
    }

    /// Runs `job` once after every job of the batch finished, one or more of them
    /// `failed` or `cancelled`.
    pub fn on_failure<J: Job>(self, job: J) -> Self {
        self.callback(job, AfterOutcome::Failure)
    }

    /// Runs `job` once after every job of the batch finished, whatever the outcome.
    pub fn on_complete<J: Job>(self, job: J) -> Self {
        self.callback(job, AfterOutcome::Complete)
    }

    fn callback<J: Job>(mut self, job: J, when: AfterOutcome) -> Self {
        let row = self
            .queue
            .new_job(&job)
            .and_then(|j| self.queue.validate(j));
        match (row, self.callbacks.as_mut()) {
            (Ok(mut row), Ok(list)) => {
                row.after = Some(After {
                    upstream: Upstream::Batch(0),
                    when,
                });
                list.push(row);
            }
            (Err(error), Ok(_)) => self.callbacks = Err(error),
            (_, Err(_)) => {}
        }
        self
    }

    /// Inserts the batch, its jobs and its callbacks in one transaction. A batch without
    /// jobs finishes at once: its callbacks run as for a batch that succeeded.
    pub async fn dispatch(self) -> Result<Batch> {
        let (jobs, callbacks) = (self.jobs?, self.callbacks?);
        if jobs.iter().any(|j| j.after.is_some() || j.unique.is_some()) {
            return Err(Error::Invalid {
                what: "batch",
                reason: "a job of a batch cannot wait for another job or batch, nor be unique"
                    .into(),
            });
        }
        let queue = self.queue;
        if queue.memory().is_some() {
            return Err(Error::NoDatabase);
        }
        queue.check_ready().await?;
        let ids = queue.new_ids();
        let description = self.description;
        let empty = jobs.is_empty();
        let new = queue
            .on_io(move |store| async move {
                let new = store
                    .create_batch(description.as_deref(), jobs, callbacks, ids)
                    .await?;
                if empty {
                    store.finish_batch(new.id).await?;
                }
                Ok(new)
            })
            .await?;
        queue.notify_workers();
        tracing::debug!(target: "lightjobs::queue", batch = new.id, jobs = new.jobs.len(), "dispatched a batch");
        Ok(Batch {
            id: new.id,
            jobs: new.jobs,
            callbacks: new.callbacks,
        })
    }
}

impl JobQueue {
    /// Starts a batch: jobs dispatched together, with callbacks that run once when the
    /// last of them has finished (see [`BatchBuilder`]).
    pub fn batch(&self) -> BatchBuilder<'_> {
        BatchBuilder {
            queue: self,
            description: None,
            jobs: Ok(Vec::new()),
            callbacks: Ok(Vec::new()),
        }
    }

    /// A batch and its progress: its jobs counted by status, and its outcome once it has
    /// finished. `None` when no batch has this id.
    pub async fn batch_state(&self, id: u64) -> Result<Option<BatchState>> {
        self.on_io(move |store| async move { store.batch_state(id).await })
            .await
    }

    /// The most recent batches, unfinished ones first (for the dashboard).
    #[cfg(feature = "dashboard")]
    pub(crate) async fn recent_batches(&self, most: usize) -> Result<Vec<BatchState>> {
        self.on_io(move |store| async move { store.recent_batches(most).await })
            .await
    }

    /// The jobs of a batch with what they recorded
    /// ([`JobContext::record_output`](crate::JobContext::record_output)), by id: what a
    /// callback gathers. At most `limit`, after the job id `after` (0: from the first).
    pub async fn batch_jobs(&self, id: u64, after: u64, limit: u64) -> Result<Vec<JobRecord>> {
        self.on_io(move |store| async move { store.batch_jobs(id, after, limit).await })
            .await
    }

    /// Inserts a job that joins a batch or waits for something, in a transaction of ours
    /// (see [`Store::insert_linked`](crate::store::Store)).
    pub(super) async fn insert_linked(&self, job: NewJob) -> Result<u64> {
        let queue_name = job.queue.clone();
        if job.after.is_some() {
            self.ends().set_awaiting(true);
        }
        let id = self
            .on_io(move |store| async move {
                store
                    .nodes()
                    .run(async |conn| Store::insert_linked_own(conn, &job).await)
                    .await
            })
            .await?;
        self.notify_queue(&queue_name);
        Ok(id)
    }
}

impl Dispatch<'_> {
    /// Adds the job to the batch `batch` (which must not have finished: a batch's
    /// callbacks run once, so a job cannot join it after). From inside a job of the batch,
    /// [`JobContext::add_to_batch`](crate::JobContext::add_to_batch) does this.
    pub fn in_batch(self, batch: u64) -> Self {
        self.set(|j| j.batch = Some(batch))
    }

    /// Runs the job only after the job `id` has succeeded: until then it waits (status
    /// `awaiting`); if that job fails or is cancelled, this one ends `cancelled`, its
    /// error naming the job and how it ended. The job must exist when this one is
    /// dispatched ([`Error::NotFound`] otherwise); one that finished already releases this
    /// one at once. A job that waits cannot join a batch.
    ///
    /// ```no_run
    /// # use lightjobs::{Job, JobContext, JobError, JobQueue};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Charge { order: u64 }
    /// # impl Job for Charge { const NAME: &'static str = "charge";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ship { order: u64 }
    /// # impl Job for Ship { const NAME: &'static str = "ship";
    /// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
    /// # async fn f(queue: JobQueue) -> lightjobs::Result<()> {
    /// let charge = queue.dispatch(Charge { order: 9 }).await?;
    /// queue.dispatch(Ship { order: 9 }).after(charge).await?;
    /// # Ok(()) }
    /// ```
    pub fn after(self, id: u64) -> Self {
        self.set(|j| {
            j.after = Some(After {
                upstream: Upstream::Job(id),
                when: AfterOutcome::Success,
            })
        })
    }

    /// Runs the job only after every job of the batch `batch` has succeeded; ends it
    /// `cancelled` if one of them failed or was cancelled. Like
    /// [`BatchBuilder::on_success`] for a batch already dispatched.
    pub fn after_batch(self, batch: u64) -> Self {
        self.set(|j| {
            j.after = Some(After {
                upstream: Upstream::Batch(batch),
                when: AfterOutcome::Success,
            })
        })
    }
}
