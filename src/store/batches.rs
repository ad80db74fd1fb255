//! Batches: a row in `lightjobs_batches`; its jobs carry its id; its callbacks are jobs
//! that wait for it (`after_batch`).
//!
//! No completion writes to the batch row. After jobs of a batch end, a probe of the
//! `jobs_batch` index (one dive: the batch's first unfinished job) says whether any is
//! left; only when none is does [`Store::finish_batch`] lock the row, look again, mark
//! it finished and release its waiters, in one transaction. The row's lock and its
//! `finished_at` make that happen once, whichever processes race for it; a process that
//! dies between a job's end and the finish leaves it to the sweep of another.

use super::*;

/// Whether a batch has an unfinished job (parameter: the batch).
const UNFINISHED_PROBE: &str = concat!(
    "SELECT id FROM jobs FORCE INDEX (jobs_batch) WHERE batch_id = ? \
     AND finished_at IS NULL AND status IN (",
    waiting_list!(),
    ", ",
    st!(running),
    ") LIMIT 1"
);

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchOutcome {
    /// Every job of the batch was `processed`.
    Succeeded,
    /// At least one job `failed` or was `cancelled`.
    Failed,
}

impl BatchOutcome {
    /// As stored in `lightjobs_batches.outcome`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Succeeded => "succeeded",
            BatchOutcome::Failed => "failed",
        }
    }

    pub(super) fn parse(s: &str) -> Option<BatchOutcome> {
        [BatchOutcome::Succeeded, BatchOutcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// A batch and its progress ([`JobQueue::batch_state`](crate::JobQueue::batch_state)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchState {
    /// Its id.
    pub id: u64,
    /// The description given at dispatch.
    pub description: Option<String>,
    /// When it was dispatched (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`).
    pub created_at: String,
    /// When its last job finished and its callbacks were released (UTC).
    pub finished_at: Option<String>,
    /// How it ended, once finished.
    pub outcome: Option<BatchOutcome>,
    /// Its jobs not yet run (pending, scheduled, blocked by a flow limit).
    pub pending: u64,
    /// Its jobs running now.
    pub running: u64,
    /// Its jobs that succeeded.
    pub processed: u64,
    /// Its jobs that failed for good.
    pub failed: u64,
    /// Its jobs cancelled.
    pub cancelled: u64,
}

impl BatchState {
    /// Every job of the batch.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.processed + self.failed + self.cancelled
    }

    /// Its jobs that have finished, whatever the outcome.
    pub fn done(&self) -> u64 {
        self.processed + self.failed + self.cancelled
    }
}

/// The ids a new batch was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewBatch {
    pub id: u64,
    pub jobs: Vec<u64>,
    pub callbacks: Vec<u64>,
}

impl Store {
    /// Inserts a batch, its jobs and its callbacks (jobs waiting for it) in one
    /// transaction. The jobs' `batch` and the callbacks' `after` are set here.
    pub(crate) async fn create_batch(
        &self,
        description: Option<&str>,
        mut jobs: Vec<NewJob>,
        mut callbacks: Vec<NewJob>,
        ids: NewIds,
    ) -> Result<NewBatch> {
        let chunks = u32::try_from(jobs.len().div_ceil(1000) + 2).unwrap_or(u32::MAX);
        let limit = self.nodes.deadlines().statement.saturating_mul(chunks + 1);
        self.nodes
            .run_for(limit, async |conn| {
                let mut tx = conn.start_transaction(TxOpts::default()).await?;
                let id = super::insert::insert_one(
                    &mut tx,
                    "INSERT INTO lightjobs_batches (description, created_at) \
                     VALUES (?, UTC_TIMESTAMP(6))",
                    (description,),
                )
                .await?;
                for job in &mut jobs {
                    job.batch = Some(id);
                }
                for callback in &mut callbacks {
                    if let Some(after) = callback.after.as_mut() {
                        after.upstream = Upstream::Batch(id);
                    }
                }
                let mut new = NewBatch {
                    id,
                    jobs: Vec::with_capacity(jobs.len()),
                    callbacks: Vec::new(),
                };
                for chunk in jobs.chunks(1000) {
                    let rows: Vec<&NewJob> = chunk.iter().collect();
                    new.jobs
                        .extend(Self::insert_rows(&mut tx, &rows, &[], ids).await?);
                }
                if !callbacks.is_empty() {
                    let rows: Vec<&NewJob> = callbacks.iter().collect();
                    new.callbacks = Self::insert_rows(&mut tx, &rows, &[], ids).await?;
                }
                tx.commit().await?;
                Ok(new)
            })
            .await
    }

    /// Whether `batch` has a job not yet finished: one dive into `jobs_batch`, whatever
    /// the batch's size. Not locking: a batch seen done is finished by [`finish_batch`],
    /// which looks again under the batch row's lock.
    pub(crate) async fn batch_has_unfinished(&self, batch: u64) -> Result<bool> {
        self.nodes
            .run(async |conn| {
                let row: Option<u64> = conn.exec_first(UNFINISHED_PROBE, (batch,)).await?;
                Ok(row.is_some())
            })
            .await
    }

    /// Finishes `batch` if every job of it has finished: marks it, with its outcome, and
    /// releases what waits for it (its callbacks, jobs dispatched after it) or ends them
    /// `cancelled` when the outcome is not theirs. Returns the outcome when this call
    /// finished it; `None` when it was finished already, is gone, or has jobs left.
    pub(crate) async fn finish_batch(&self, batch: u64) -> Result<Option<BatchOutcome>> {
        self.nodes
            .run(async |conn| {
                let opts = TxOpts::default()
                    .with_isolation_level(mysql_async::IsolationLevel::ReadCommitted)
                    .clone();
                let mut tx = conn.start_transaction(opts).await?;
                // Rolled back at once when it finishes nothing or fails: a dropped
                // transaction would keep the batch row locked until its connection is
                // used again, and every other finisher would wait on it.
                match Self::finish_in(&mut tx, batch).await {
                    Ok(Some(outcome)) => {
                        tx.commit().await?;
                        Ok(Some(outcome))
                    }
                    Ok(None) => {
                        tx.rollback().await?;
                        Ok(None)
                    }
                    Err(error) => {
                        let _ = tx.rollback().await;
                        Err(error)
                    }
                }
            })
            .await
    }

    /// [`finish_batch`](Self::finish_batch)'s statements, in its transaction.
    async fn finish_in<Q: Queryable>(tx: &mut Q, batch: u64) -> Result<Option<BatchOutcome>> {
        // The lock orders this against a job joining the batch (which reads the
        // row in share mode until it commits): read committed, the probe after it
        // sees every job that joined before.
        let open: Option<u8> = tx
            .exec_first(
                "SELECT finished_at IS NULL FROM lightjobs_batches WHERE id = ? FOR UPDATE",
                (batch,),
            )
            .await?;
        if open != Some(1) {
            return Ok(None);
        }
        if tx
            .exec_first::<u64, _, _>(UNFINISHED_PROBE, (batch,))
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let not_processed: Option<u64> = tx
            .exec_first(
                concat!(
                    "SELECT COUNT(*) FROM jobs FORCE INDEX (jobs_batch) \
                     WHERE batch_id = ? AND status <> ",
                    st!(processed)
                ),
                (batch,),
            )
            .await?;
        let outcome = if not_processed.unwrap_or(0) == 0 {
            BatchOutcome::Succeeded
        } else {
            BatchOutcome::Failed
        };
        tx.exec_drop(
            "UPDATE lightjobs_batches SET finished_at = UTC_TIMESTAMP(6), outcome = ? \
             WHERE id = ?",
            (outcome.as_str(), batch),
        )
        .await?;
        Self::release_batch_waiters(tx, batch, Some(outcome)).await?;
        Ok(Some(outcome))
    }

    /// The jobs that wait (or waited) for `batch`: its callbacks, jobs dispatched after it.
    pub(crate) async fn batch_waiters(&self, batch: u64) -> Result<Vec<u64>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .exec(
                        "SELECT id FROM jobs FORCE INDEX (jobs_after_batch) WHERE after_batch = ?",
                        (batch,),
                    )
                    .await?)
            })
            .await
    }

    /// Batches not finished, oldest first, after the id `after` (for the sweep).
    pub(crate) async fn open_batches(&self, after: u64, most: usize) -> Result<Vec<u64>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .exec(
                        "SELECT id FROM lightjobs_batches FORCE INDEX (batches_open) \
                         WHERE finished_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                        (after, most as u64),
                    )
                    .await?)
            })
            .await
    }

    /// A batch and the counts of its jobs by status.
    pub(crate) async fn batch_state(&self, batch: u64) -> Result<Option<BatchState>> {
        self.nodes
            .run(async |conn| {
                let row: Option<Row> = conn
                    .exec_first(
                        "SELECT id, description, \
                         DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), \
                         DATE_FORMAT(finished_at, '%Y-%m-%d %H:%i:%s.%f'), outcome \
                         FROM lightjobs_batches WHERE id = ?",
                        (batch,),
                    )
                    .await?;
                let Some(mut row) = row else {
                    return Ok(None);
                };
                let counts: Vec<(String, u64)> = conn
                    .exec(
                        "SELECT status, COUNT(*) FROM jobs FORCE INDEX (jobs_batch) \
                         WHERE batch_id = ? GROUP BY status",
                        (batch,),
                    )
                    .await?;
                Ok(Some(batch_state_of(&mut row, batch, &counts)))
            })
            .await
    }

    /// The jobs of `batch` by id, `limit` after the id `after`.
    pub(crate) async fn batch_jobs(
        &self,
        batch: u64,
        after: u64,
        limit: u64,
    ) -> Result<Vec<JobRecord>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .exec(
                        format!(
                            "{} FORCE INDEX (jobs_batch) WHERE batch_id = ? AND id > ? \
                             ORDER BY id LIMIT ?",
                            super::admin::RECORD_SELECT
                        ),
                        (batch, after, limit),
                    )
                    .await?)
            })
            .await
    }

    /// The most recent batches, open ones first, for the dashboard.
    #[cfg(feature = "dashboard")]
    pub(crate) async fn recent_batches(&self, most: usize) -> Result<Vec<BatchState>> {
        let ids: Vec<u64> = self
            .nodes
            .run(async |conn| {
                Ok(conn
                    .exec(
                        "(SELECT id FROM lightjobs_batches FORCE INDEX (batches_open) \
                          WHERE finished_at IS NULL ORDER BY id DESC LIMIT ?) \
                         UNION (SELECT id FROM lightjobs_batches ORDER BY id DESC LIMIT ?)",
                        (most as u64, most as u64),
                    )
                    .await?)
            })
            .await?;
        let mut states = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(state) = self.batch_state(id).await? {
                states.push(state);
            }
        }
        states.sort_by_key(|s| (s.finished_at.is_some(), std::cmp::Reverse(s.id)));
        states.truncate(most);
        Ok(states)
    }
}

fn batch_state_of(row: &mut Row, id: u64, counts: &[(String, u64)]) -> BatchState {
    let mut state = BatchState {
        id,
        description: text(row, 1),
        created_at: text(row, 2).unwrap_or_default(),
        finished_at: text(row, 3),
        outcome: text(row, 4).as_deref().and_then(BatchOutcome::parse),
        pending: 0,
        running: 0,
        processed: 0,
        failed: 0,
        cancelled: 0,
    };
    for (status, n) in counts {
        let slot = match Status::parse(status) {
            Some(Status::Running) => &mut state.running,
            Some(Status::Processed) => &mut state.processed,
            Some(Status::Failed) => &mut state.failed,
            Some(Status::Cancelled) => &mut state.cancelled,
            _ => &mut state.pending,
        };
        *slot += n;
    }
    state
}
