//! Jobs that wait (`awaiting`) for a job or a batch, and their release.
//!
//! A waiter names what it waits for (`after_job` or `after_batch`) and which ends let it
//! run (`after_outcome`). When that has finished, one statement moves the waiters to
//! `pending` (or `scheduled`, if dispatched with a later time) or to `cancelled`, with
//! `last_error` saying why. Every release is guarded by `status = 'awaiting'`, so two
//! processes releasing the same waiters write once.
//!
//! Cycles cannot form: a job may wait only for a job or a batch that already exists, and
//! a job that waits cannot join a batch (see [`Store::insert_linked`]). So every wait
//! points at something older that does not wait on the waiter, and a batch waits only on
//! jobs that wait on nothing.

use super::batches::BatchOutcome;
use super::*;

/// The finished statuses, as an SQL list.
macro_rules! finished_list {
    () => {
        concat!(st!(processed), ", ", st!(failed), ", ", st!(cancelled))
    };
}

/// Most cascade rounds one resolution follows (a chain of jobs each cancelled because
/// the one before failed); the sweep follows longer ones.
const MAX_ROUNDS: usize = 50;

/// The `SET` of a release of waiters `d`: `runs` is whether what they wait for ended in a
/// way that lets them run, `why` the error of those that will not. `status` goes last
/// and reads the new `scheduled_at`, which is later than now exactly when the old one was.
fn release_set(runs: &str, why: &str) -> String {
    format!(
        concat!(
            "d.last_error = IF({runs}, d.last_error, {why}), \
             d.finished_at = IF({runs}, NULL, UTC_TIMESTAMP(6)), \
             d.scheduled_at = IF({runs}, GREATEST(d.scheduled_at, UTC_TIMESTAMP(6)), d.scheduled_at), \
             d.status = IF({runs}, IF(d.scheduled_at > UTC_TIMESTAMP(6), ",
            st!(scheduled),
            ", ",
            st!(pending),
            "), ",
            st!(cancelled),
            ")"
        ),
        runs = runs,
        why = why
    )
}

/// Whether a waiter `d` runs, given `ok`: an SQL expression, 1 when what it waited for
/// succeeded.
fn runs_if(ok: &str) -> String {
    format!("(d.after_outcome = 'complete' OR (d.after_outcome = 'success') = ({ok}))")
}

/// Releases the waiters of the finished jobs among `ids` (parameters: none).
fn release_job_waiters_sql(ids: &[u64]) -> String {
    format!(
        concat!(
            "UPDATE jobs d JOIN jobs u ON u.id = d.after_job SET {} \
             WHERE d.after_job IN ({}) AND d.status = ",
            st!(awaiting),
            " AND u.status IN (",
            finished_list!(),
            ")"
        ),
        release_set(
            &runs_if(concat!("u.status = ", st!(processed))),
            "CONCAT('not run: job ', u.id, ', which it waited for, ended ', u.status)"
        ),
        id_list(ids.iter().copied())
    )
}

impl Store {
    /// Releases (or cancels) the jobs waiting for the jobs `ids` that have finished, then
    /// those waiting for the waiters it cancelled, and so on. Returns how many it moved.
    pub(crate) async fn resolve_job_waiters(&self, ids: &[u64]) -> Result<u64> {
        let mut round: Vec<u64> = ids.to_vec();
        let mut moved = 0;
        for _ in 0..MAX_ROUNDS {
            if round.is_empty() {
                break;
            }
            let (n, cancelled) = self
                .nodes
                .run(async |conn| {
                    let n = release_job_waiters_on(conn, &round).await?;
                    if n == 0 {
                        return Ok((0, Vec::new()));
                    }
                    let cancelled: Vec<u64> = conn
                        .query(format!(
                            concat!(
                                "SELECT id FROM jobs FORCE INDEX (jobs_after_job) \
                                 WHERE after_job IN ({}) AND status = ",
                                st!(cancelled)
                            ),
                            id_list(round.iter().copied())
                        ))
                        .await?;
                    Ok((n, cancelled))
                })
                .await?;
            moved += n;
            round = cancelled;
        }
        Ok(moved)
    }

    /// Inserts a job that joins a batch or waits for a job or a batch, through `conn` (a
    /// transaction: ours or the caller's). What it names is read in share mode, which
    /// orders the insert against a batch's finish (which locks the batch row) and a job's
    /// end: either the insert sees it finished, and the job is released (or cancelled)
    /// here, or its release sees the job. A job that waits cannot join a batch: a batch
    /// waiting for its own jobs would otherwise be able to wait for itself.
    pub(crate) async fn insert_linked<Q: Queryable>(conn: &mut Q, job: &NewJob) -> Result<u64> {
        if job.batch.is_some() && job.after.is_some() {
            return Err(Error::Invalid {
                what: "dispatch",
                reason: "a job that waits for another job or a batch cannot join a batch".into(),
            });
        }
        if let Some(batch) = job.batch {
            match batch_open(conn, batch).await? {
                None => {
                    return Err(Error::NotFound {
                        what: "batch",
                        id: batch,
                    })
                }
                Some((false, _)) => return Err(Error::BatchFinished(batch)),
                Some((true, _)) => {}
            }
        }
        let upstream = job.after.map(|a| a.upstream);
        let finished = match upstream {
            Some(Upstream::Job(id)) => {
                let status: Option<String> = conn
                    .exec_first(
                        "SELECT status FROM jobs WHERE id = ? LOCK IN SHARE MODE",
                        (id,),
                    )
                    .await?;
                let status = status.ok_or(Error::NotFound { what: "job", id })?;
                Status::parse(&status).is_some_and(Status::is_finished)
            }
            Some(Upstream::Batch(id)) => match batch_open(conn, id).await? {
                None => return Err(Error::NotFound { what: "batch", id }),
                Some((open, _)) => !open,
            },
            None => false,
        };
        let id = Self::insert_job(conn, job).await?;
        match (upstream, finished) {
            (Some(Upstream::Job(up)), true) => {
                release_job_waiters_on(conn, &[up]).await?;
            }
            (Some(Upstream::Batch(up)), true) => {
                if let Some((_, Some(outcome))) = batch_open(conn, up).await? {
                    Self::release_batch_waiters(conn, up, Some(outcome)).await?;
                }
            }
            _ => {}
        }
        Ok(id)
    }

    /// Whether any job waits: the release after every end is skipped while none does.
    pub(crate) async fn any_awaiting(&self) -> Result<bool> {
        self.nodes
            .run(async |conn| {
                let row: Option<u8> = conn
                    .query_first(concat!(
                        "SELECT 1 FROM jobs FORCE INDEX (status) WHERE status = ",
                        st!(awaiting),
                        " LIMIT 1"
                    ))
                    .await?;
                Ok(row.is_some())
            })
            .await
    }

    /// The sweep, for waiters whose release was missed (the process that ended what they
    /// wait for died first, or its release failed) and those whose job or batch no longer
    /// exists (deleted by hand: they end `cancelled`). At most `most` of each. Returns
    /// how many it moved.
    pub(crate) async fn sweep_waiters(&self, most: usize) -> Result<u64> {
        let (ended, gone) = self
            .nodes
            .run(async |conn| {
                let rows: Vec<(u64, Option<u64>)> = conn
                    .exec(
                        concat!(
                            "SELECT d.after_job, u.id FROM jobs d FORCE INDEX (status) \
                             LEFT JOIN jobs u ON u.id = d.after_job WHERE d.status = ",
                            st!(awaiting),
                            " AND d.after_job IS NOT NULL AND (u.id IS NULL OR u.status IN (",
                            finished_list!(),
                            ")) LIMIT ?"
                        ),
                        (most as u64,),
                    )
                    .await?;
                let (ended, gone): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.1.is_some());
                Ok((
                    ended.into_iter().map(|r| r.0).collect::<Vec<u64>>(),
                    gone.into_iter().map(|r| r.0).collect::<Vec<u64>>(),
                ))
            })
            .await?;
        let mut moved = self.cancel_orphans(&gone).await?;
        if !ended.is_empty() {
            moved += self.resolve_job_waiters(&ended).await?;
        }
        Ok(moved + self.sweep_batch_waiters(most).await?)
    }

    /// Cancels the waiters of the jobs `gone` (which no longer exist).
    async fn cancel_orphans(&self, gone: &[u64]) -> Result<u64> {
        if gone.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            concat!(
                "UPDATE jobs d LEFT JOIN jobs u ON u.id = d.after_job SET {} \
                 WHERE d.after_job IN ({}) AND d.status = ",
                st!(awaiting),
                " AND u.id IS NULL"
            ),
            release_set(
                "FALSE",
                "CONCAT('not run: job ', d.after_job, ', which it waited for, no longer exists')"
            ),
            id_list(gone.iter().copied())
        );
        self.nodes
            .run(async |conn| {
                conn.query_drop(sql.as_str()).await?;
                Ok(conn.affected_rows())
            })
            .await
    }

    /// Waiters of batches that no longer exist (cancelled) or that finished without
    /// releasing them (released now).
    async fn sweep_batch_waiters(&self, most: usize) -> Result<u64> {
        let rows: Vec<(u64, Option<String>, Option<u64>)> = self
            .nodes
            .run(async |conn| {
                Ok(conn
                    .exec(
                        concat!(
                            "SELECT DISTINCT d.after_batch, b.outcome, b.id FROM jobs d \
                             FORCE INDEX (status) LEFT JOIN lightjobs_batches b \
                             ON b.id = d.after_batch WHERE d.status = ",
                            st!(awaiting),
                            " AND d.after_batch IS NOT NULL \
                             AND (b.id IS NULL OR b.finished_at IS NOT NULL) LIMIT ?"
                        ),
                        (most as u64,),
                    )
                    .await?)
            })
            .await?;
        let mut moved = 0;
        for (batch, outcome, exists) in rows {
            let outcome = outcome.as_deref().and_then(BatchOutcome::parse);
            moved += self
                .nodes
                .run(async |conn| {
                    let outcome = if exists.is_some() { outcome } else { None };
                    Self::release_batch_waiters(conn, batch, outcome).await
                })
                .await?;
        }
        Ok(moved)
    }

    /// Releases (or cancels) what waits for `batch`, which ended with `outcome`; cancels
    /// it when the batch no longer exists (`None`).
    pub(super) async fn release_batch_waiters<Q: Queryable>(
        conn: &mut Q,
        batch: u64,
        outcome: Option<BatchOutcome>,
    ) -> Result<u64> {
        let (runs, why) = match outcome {
            Some(BatchOutcome::Succeeded) => (runs_if("1"), "succeeded"),
            Some(BatchOutcome::Failed) => (runs_if("0"), "failed"),
            None => ("FALSE".to_owned(), "no longer exists"),
        };
        let sql = format!(
            concat!(
                "UPDATE jobs d FORCE INDEX (jobs_after_batch) SET {} \
                 WHERE d.after_batch = ? AND d.status = ",
                st!(awaiting)
            ),
            release_set(
                &runs,
                "CONCAT('not run: batch ', d.after_batch, ', which it waited for, ', ?)"
            ),
        );
        let result = conn.exec_iter(sql, (why, batch)).await?;
        let n = result.affected_rows();
        result.drop_result().await?;
        Ok(n)
    }
}

/// Whether `batch` is open, and its outcome once finished, read in share mode; `None`
/// when it does not exist.
async fn batch_open<Q: Queryable>(
    conn: &mut Q,
    batch: u64,
) -> Result<Option<(bool, Option<BatchOutcome>)>> {
    let row: Option<(u8, Option<String>)> = conn
        .exec_first(
            "SELECT finished_at IS NULL, outcome FROM lightjobs_batches WHERE id = ? \
             LOCK IN SHARE MODE",
            (batch,),
        )
        .await?;
    Ok(row.map(|(open, outcome)| (open == 1, outcome.as_deref().and_then(BatchOutcome::parse))))
}

/// [`release_job_waiters_sql`] run on `conn`; how many rows it moved.
pub(super) async fn release_job_waiters_on<Q: Queryable>(conn: &mut Q, ids: &[u64]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let result = conn.query_iter(release_job_waiters_sql(ids)).await?;
    let n = result.affected_rows();
    result.drop_result().await?;
    Ok(n)
}
