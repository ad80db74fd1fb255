//! The operator's operations on the table, shared by the dashboard and the CLI's tools:
//! find, list, retry, cancel, discard, prune, pause, resume, limits, stats.

use super::*;

impl JobQueue {
    /// Every job not yet run, in dispatch order (for [`testing`](crate::testing)).
    pub(crate) async fn waiting_jobs(&self) -> Result<Vec<crate::store::WaitingRow>> {
        self.on_io(|store| async move { store.waiting_jobs().await })
            .await
    }

    /// Makes every `scheduled` job due now (for [`testing`](crate::testing)).
    pub(crate) async fn make_delayed_due(&self) -> Result<u64> {
        self.on_io(|store| async move { store.make_scheduled_due().await })
            .await
    }

    /// Stores a run's output on its row if `held` still runs it (or in the record of a
    /// queue without a database). False when the claim is gone.
    pub(crate) async fn record_output(
        &self,
        held: crate::store::Held,
        json: String,
    ) -> Result<bool> {
        if let Some(log) = self.memory() {
            log.set_output(held.0, json);
            return Ok(true);
        }
        self.on_io(move |store| async move { store.record_output(held, &json).await })
            .await
            .map(|g| g == crate::store::Guarded::Applied)
    }

    /// One job by id.
    pub async fn find(&self, id: u64) -> Result<Option<JobRecord>> {
        self.on_io(move |store| async move { store.find_job(id).await })
            .await
    }

    /// Jobs with `status`, newest first: finished ones by when they finished, the others
    /// by when they are due. At most `limit`.
    pub async fn list(
        &self,
        status: &str,
        queue: Option<&str>,
        limit: u64,
    ) -> Result<Vec<JobRecord>> {
        Ok(self.list_page(status, queue, limit, None).await?.jobs)
    }

    /// A page of [`list`](Self::list): `limit` jobs after `after`, the cursor of the page
    /// before (`None`: the first page). Served by an index in its own order, so a page
    /// costs about its own rows at any table size.
    ///
    /// ```no_run
    /// # async fn f(queue: lightjobs::JobQueue) -> lightjobs::Result<()> {
    /// let mut after = None;
    /// loop {
    ///     let page = queue.list_page("failed", None, 100, after.as_deref()).await?;
    ///     for job in &page.jobs {
    ///         println!("{} {}", job.id, job.last_error.as_deref().unwrap_or(""));
    ///     }
    ///     match page.next {
    ///         Some(next) => after = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_page(
        &self,
        status: &str,
        queue: Option<&str>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page> {
        self.list_filtered(status, queue, None, limit, after).await
    }

    /// A page of the jobs with `status` that carry `tag` (see [`list_page`](Self::list_page)
    /// and [`Dispatch::tags`](crate::Dispatch::tags)), newest first. The tag is matched
    /// within the status's index range, so a rare tag among many retained jobs reads
    /// those rows until the page is full.
    pub async fn list_tagged(
        &self,
        status: &str,
        tag: &str,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page> {
        self.list_filtered(status, None, Some(tag), limit, after)
            .await
    }

    /// [`list_page`](Self::list_page) of `queue`, with `tag` (the CLI's `list`).
    pub(crate) async fn list_filtered(
        &self,
        status: &str,
        queue: Option<&str>,
        tag: Option<&str>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page> {
        let (status, queue) = (status.to_owned(), queue.map(str::to_owned));
        let (tag, after) = (tag.map(str::to_owned), after.map(str::to_owned));
        let (jobs, next) = self
            .on_io(move |store| async move {
                store
                    .list_jobs(
                        &status,
                        queue.as_deref(),
                        tag.as_deref(),
                        limit,
                        after.as_deref(),
                    )
                    .await
            })
            .await?;
        Ok(Page { jobs, next })
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

    /// Cancels a job. A waiting one (`pending`, `scheduled`, `blocked`) becomes `cancelled`
    /// at once. A running one is stopped by the process running it, on any host, within
    /// about a second: the job sees [`JobContext::cancelled`](crate::JobContext::cancelled);
    /// if it has not returned within [`Workers::cancel_grace`](crate::Workers::cancel_grace)
    /// its future is dropped. Either way it ends `cancelled` with its attempt given back,
    /// unless it succeeded first (then it stays `processed`: a cancel of a job that has
    /// finished changes nothing). A request its process never saw (it died) is applied by
    /// the rescue. Returns false when the job has finished, does not exist, or already has
    /// a request.
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
        self.apply_locally(|state| state.set_paused(queue, paused));
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
        self.apply_locally(|state| state.set_limited(queue, limit.is_some()));
        Ok(())
    }

    /// Up to `most` flow keys at a limit: with jobs waiting on it (`blocked`) or paused by
    /// a job's [`JobError::rate_limited`](crate::JobError::rate_limited), the longest waiting
    /// first. Its cost follows the keys listed, not the jobs.
    ///
    /// ```no_run
    /// # async fn f(queue: lightjobs::JobQueue) -> lightjobs::Result<()> {
    /// for k in queue.flow_keys(20).await? {
    ///     println!("{}: {} running, {} waiting", k.key, k.running, k.blocked);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn flow_keys(&self, most: usize) -> Result<Vec<crate::FlowKeyState>> {
        self.on_io(move |store| async move { store.limited_flow_keys(most).await })
            .await
    }

    /// The paused queues.
    pub async fn paused_queues(&self) -> Result<Vec<String>> {
        self.on_io(|store| async move { store.paused_queues().await })
            .await
    }

    /// Job counts per queue and status: the waiting and running jobs as they are now, and
    /// the finished ones (`processed`, `failed`, `cancelled`) that finished since the start
    /// of the minute a day ago, whether or not the pruner has deleted them since.
    ///
    /// It costs the same at any table size: active jobs are counted from index ranges,
    /// finished ones from the per-minute rollup in `lightjobs_counts` plus the few seconds
    /// of work since its last pass.
    pub async fn stats(&self) -> Result<Vec<QueueCount>> {
        self.on_io(|store| async move { store.count_jobs().await })
            .await
    }
}
