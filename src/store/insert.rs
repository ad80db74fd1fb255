//! Inserts: one job (with its unique key, if any), a job already claimed for a local
//! worker (the handoff), and batches.

use super::*;
use crate::backoff::Doubling;

/// How long a unique dispatch that loses a lock race is tried again.
pub(super) const RACE_RETRY_FOR: Duration = Duration::from_secs(5);

/// The columns every INSERT of a job writes, in the order of [`INSERT_ROW`]'s values: the
/// one list, which the other INSERTs extend.
macro_rules! job_columns {
    () => {
        "name, payload, status, queue, priority, max_attempts, scheduled_at, created_at, \
         flow_key, flow_concurrency, flow_rate, flow_window_ms, trace_parent, tags, meta, \
         batch_id, after_job, after_batch, after_outcome"
    };
}

pub(super) const INSERT_SQL: &str = concat!("INSERT INTO jobs (", job_columns!(), ") VALUES");

/// One row: a job that waits for another is `awaiting`; one due now is `pending`, one for
/// later `scheduled`, decided by the database's clock (UTC_TIMESTAMP is fixed for the whole
/// statement).
pub(super) const INSERT_ROW: &str = concat!(
    "(?, ?, IF(? IS NOT NULL, ",
    st!(awaiting),
    ", IF(COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) \
     > UTC_TIMESTAMP(6), ",
    st!(scheduled),
    ", ",
    st!(pending),
    ")), ?, ?, ?, \
     COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND), UTC_TIMESTAMP(6), \
     ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
);

/// [`INSERT_SQL`] with the columns of a claim, for batches with rows inserted already
/// claimed by a local worker (the handoff).
const INSERT_CLAIMABLE_SQL: &str = concat!(
    "INSERT INTO jobs (",
    job_columns!(),
    ", attempts, reserved_by, reserved_at, claim_token) VALUES"
);

/// [`INSERT_ROW`] with a claim: given a token, the row is `running` under its worker with its
/// first attempt counted and `reserved_at = created_at`, as a claim by the fetch loop leaves
/// it; without one it is an ordinary row.
const CLAIMABLE_ROW: &str = concat!(
    "(?, ?, IF(? IS NOT NULL, ",
    st!(running),
    ", IF(? IS NOT NULL, ",
    st!(awaiting),
    ", \
     IF(COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) > UTC_TIMESTAMP(6), ",
    st!(scheduled),
    ", \
     ",
    st!(pending),
    "))), ?, ?, ?, COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND), \
     UTC_TIMESTAMP(6), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, IF(? IS NOT NULL, 1, 0), ?, \
     IF(? IS NOT NULL, UTC_TIMESTAMP(6), NULL), ?)"
);

/// How a multi-row INSERT learns the ids of its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewIds {
    /// MariaDB: `INSERT … RETURNING id`, the real ids whatever the auto-increment mode.
    Returning,
    /// MySQL, which has no RETURNING: consecutive from the first id, `step`
    /// (`@@auto_increment_increment`) apart. The step is read when the queue first checks
    /// the server, never after an INSERT: a read that failed there would leave rows written
    /// with nobody told their ids, and a caller would insert them again.
    Consecutive { step: u64 },
}

/// A row inserted already claimed: the local worker it is handed to and the claim's token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claim<'a> {
    pub worker: &'a str,
    pub token: u64,
}

impl NewJob {
    /// [`CLAIMABLE_ROW`]'s parameters: [`INSERT_ROW`]'s with the claim's around them.
    fn claimable_params(&self, claim: Option<Claim<'_>>) -> Result<Vec<Value>> {
        let token: Value = claim.map(|c| c.token).into();
        let mut params = self.params()?;
        params.insert(2, token.clone());
        params.extend([
            token.clone(),
            claim.map(|c| c.worker).into(),
            token.clone(),
            token,
        ]);
        Ok(params)
    }

    fn params(&self) -> Result<Vec<Value>> {
        let (delay, at) = self.when.params()?;
        let flow = self.flow.as_ref();
        let waits = self.after.map(|a| a.when.as_str());
        let (after_job, after_batch) = match self.after.map(|a| a.upstream) {
            Some(Upstream::Job(id)) => (Some(id), None),
            Some(Upstream::Batch(id)) => (None, Some(id)),
            None => (None, None),
        };
        Ok(vec![
            self.name.into(),
            self.payload.as_str().into(),
            waits.into(),
            at.clone(),
            delay.into(),
            self.queue.as_str().into(),
            self.priority.into(),
            self.max_attempts.into(),
            at,
            delay.into(),
            flow.map(|f| f.key.as_str()).into(),
            flow.and_then(|f| f.concurrency).into(),
            flow.and_then(|f| f.rate).map(|(n, _)| n).into(),
            flow.and_then(crate::Flow::window_ms).into(),
            self.trace.as_deref().into(),
            join_tags(&self.tags).into(),
            self.meta.as_deref().into(),
            self.batch.into(),
            after_job.into(),
            after_batch.into(),
            waits.into(),
        ])
    }
}

/// Runs a one-row INSERT and returns the new row's id.
pub(super) async fn insert_one<Q: Queryable>(
    conn: &mut Q,
    sql: impl AsRef<str>,
    params: impl Into<mysql_async::Params> + Send,
) -> Result<u64> {
    let result = conn.exec_iter(sql.as_ref(), params).await?;
    let id = result.last_insert_id();
    result.drop_result().await?;
    id.ok_or_else(|| Error::UnexpectedReply("INSERT INTO jobs returned no id".into()))
}

/// Inserts `job` in a transaction on `conn`; a deadlock or lock wait timeout (dispatches racing
/// for one key or one row) refused the whole transaction, so it is run again, for up to
/// [`RACE_RETRY_FOR`].
/// `linked`: through [`Store::insert_linked`], else [`Store::insert_job`].
async fn in_transaction_retrying(conn: &mut Conn, job: &NewJob, linked: bool) -> Result<u64> {
    let started = std::time::Instant::now();
    let mut pause = Doubling::new(Duration::from_millis(5), Duration::from_millis(200));
    loop {
        let attempt: Result<u64> = async {
            conn.query_drop("START TRANSACTION").await?;
            let value = if linked {
                Store::insert_linked(conn, job).await?
            } else {
                Store::insert_job(conn, job).await?
            };
            conn.query_drop("COMMIT").await?;
            Ok(value)
        }
        .await;
        match attempt {
            Ok(value) => return Ok(value),
            Err(error) => {
                let _ = conn.query_drop("ROLLBACK").await;
                if !error.is_lock_conflict() || started.elapsed() >= RACE_RETRY_FOR {
                    return Err(error);
                }
                tokio::time::sleep(pause.next_jittered(fastrand::f64())).await;
            }
        }
    }
}

impl Store {
    /// Inserts one job through `conn` (a pooled connection or the caller's transaction).
    pub(crate) async fn insert_job<Q: Queryable>(conn: &mut Q, job: &NewJob) -> Result<u64> {
        let Some((key, period)) = &job.unique else {
            return insert_one(conn, format!("{INSERT_SQL} {INSERT_ROW}"), job.params()?).await;
        };
        // A finished holder whose period is over gives the key up first.
        conn.exec_drop(
            concat!(
                "UPDATE jobs SET unique_key = NULL WHERE unique_key = ? \
             AND status IN (",
                st!(processed),
                ", ",
                st!(failed),
                ", ",
                st!(cancelled),
                ") \
             AND (unique_until IS NULL OR unique_until <= UTC_TIMESTAMP(6))"
            ),
            (key.as_str(),),
        )
        .await?;
        let mut params = job.params()?;
        params.extend([key.as_str().into(), micros(*period).into()]);
        // On a duplicate key nothing is written and LAST_INSERT_ID() becomes the holder's id:
        // the unique index, not a check-then-insert, decides between racing processes.
        let result = conn
            .exec_iter(
                format!(
                    concat!(
                        "INSERT INTO jobs (",
                        job_columns!(),
                        ", unique_key, unique_until) VALUES {}, ?, \
                         UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) \
                         ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)"
                    ),
                    INSERT_ROW.strip_suffix(')').unwrap_or(INSERT_ROW)
                ),
                params,
            )
            .await?;
        let id = result.last_insert_id().filter(|id| *id > 0);
        result.drop_result().await?;
        if let Some(id) = id {
            return Ok(id);
        }
        // A trigger on `jobs` (an audit trigger of the application's) can keep the server
        // from reporting the holder's id; the key still names it.
        let holder: Option<u64> = conn
            .exec_first("SELECT id FROM jobs WHERE unique_key = ?", (key.as_str(),))
            .await?;
        holder.ok_or_else(|| Error::UnexpectedReply("INSERT INTO jobs returned no id".into()))
    }

    /// Inserts one job through a connection of ours (not the caller's transaction).
    ///
    /// A unique dispatch gives up a finished holder's key and takes it in one transaction,
    /// so no other dispatch sees the key free in between; a deadlock or lock wait timeout
    /// (two dispatches racing for one key) refused the whole transaction, so it is run
    /// again, for up to [`RACE_RETRY_FOR`], and the loser then finds the winner's id.
    pub(crate) async fn insert_job_own(conn: &mut Conn, job: &NewJob) -> Result<u64> {
        if job.unique.is_none() {
            return Self::insert_job(conn, job).await;
        }
        in_transaction_retrying(conn, job, false).await
    }

    /// Inserts a job that joins a batch or waits for something
    /// ([`insert_linked`](Self::insert_linked)) in a transaction of ours, run again after
    /// a lock conflict like a unique dispatch.
    pub(crate) async fn insert_linked_own(conn: &mut Conn, job: &NewJob) -> Result<u64> {
        in_transaction_retrying(conn, job, true).await
    }

    /// Inserts one job already claimed by `worker` (the in-process handoff): `running`, its
    /// first attempt counted, marked with `token` so that a dispatch whose reply was lost
    /// can find and release it.
    pub(crate) async fn insert_claimed(
        conn: &mut Conn,
        job: &NewJob,
        worker: &str,
        token: u64,
    ) -> Result<u64> {
        let claim = Claim { worker, token };
        insert_one(
            conn,
            format!("{INSERT_CLAIMABLE_SQL} {CLAIMABLE_ROW}"),
            job.claimable_params(Some(claim))?,
        )
        .await
    }

    /// Inserts many jobs, 1,000 rows per statement, all in one transaction; returns their
    /// ids in order.
    pub(crate) async fn insert_jobs(&self, jobs: &[NewJob], ids: NewIds) -> Result<Vec<u64>> {
        // A prepared statement takes at most 65,535 placeholders (21 per row).
        const ROWS_PER_STATEMENT: usize = 1000;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // Each statement of the batch gets the statement deadline.
        let chunks = u32::try_from(jobs.len().div_ceil(ROWS_PER_STATEMENT)).unwrap_or(u32::MAX);
        let limit = self.nodes.deadlines().statement.saturating_mul(chunks + 1);
        self.nodes
            .run_for(limit, async |conn| {
                let mut tx = conn.start_transaction(TxOpts::default()).await?;
                let mut new = Vec::with_capacity(jobs.len());
                for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
                    let rows: Vec<&NewJob> = chunk.iter().collect();
                    new.extend(Self::insert_rows(&mut tx, &rows, &[], ids).await?);
                }
                tx.commit().await?;
                Ok(new)
            })
            .await
    }

    /// Inserts `jobs` (at most 1,000, none unique) in one statement; returns their ids in
    /// order. `claims`, when not empty, gives each row its claim, if any (rows handed to a
    /// local worker). Outside a transaction the statement is its own: all rows or none.
    pub(crate) async fn insert_rows<Q: Queryable>(
        conn: &mut Q,
        jobs: &[&NewJob],
        claims: &[Option<Claim<'_>>],
        ids: NewIds,
    ) -> Result<Vec<u64>> {
        let claimed = claims.iter().any(Option::is_some);
        let (head, row, per_row) = if claimed {
            (INSERT_CLAIMABLE_SQL, CLAIMABLE_ROW, 26)
        } else {
            (INSERT_SQL, INSERT_ROW, 21)
        };
        let mut sql = String::from(head);
        let mut params: Vec<Value> = Vec::with_capacity(jobs.len() * per_row);
        for (i, job) in jobs.iter().enumerate() {
            sql.push_str(if i == 0 { " " } else { ", " });
            sql.push_str(row);
            if claimed {
                params.extend(job.claimable_params(claims.get(i).copied().flatten())?);
            } else {
                params.extend(job.params()?);
            }
        }
        let step = match ids {
            NewIds::Returning => {
                sql.push_str(" RETURNING id");
                return Ok(conn.exec::<u64, _, _>(sql, params).await?);
            }
            NewIds::Consecutive { step } => step,
        };
        // A multi-row insert gets consecutive ids (step auto_increment_increment) under
        // innodb_autoinc_lock_mode 0/1 and, in practice, 2.
        let first = insert_one(conn, sql, params).await?;
        Ok((0..jobs.len() as u64).map(|i| first + i * step).collect())
    }
}
