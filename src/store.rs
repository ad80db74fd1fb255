//! Every SQL statement lightjobs runs, one method per statement.
//!
//! Times are always the database's (`UTC_TIMESTAMP(6)`), never the application's clock and
//! never the session time zone, so several hosts and a caller's own connection agree.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::*;
use mysql_async::{Conn, Pool, QueryResult, TextProtocol, TxOpts, Value};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::nodes::Nodes;

/// Statuses stored in `jobs.status` (besides `pending`, `scheduled`, `running`, and
/// `cancelled`, which are only written inside SQL).
pub(crate) mod status {
    pub const PROCESSED: &str = "processed";
    pub const FAILED: &str = "failed";
}

/// The table of leases: one row per role that one process at a time may play (the
/// migrator, the rescuer, the pruner). A guarded UPDATE of a row certifies across every
/// node of a Galera cluster, where `GET_LOCK` is local to the node it runs on. Created by
/// the migration runner, which needs it before any migration runs.
pub const CREATE_LEASES: &str = "CREATE TABLE IF NOT EXISTS lightjobs_leases (
    name VARCHAR(191) NOT NULL,
    holder VARCHAR(191) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Takes (or extends) the lease `name` for `holder` until `ttl` from now, unless another
/// holder's lease has not expired. True when `holder` has it. A conflict with another
/// taker (a deadlock, a Galera certification failure) means it did not get it.
pub async fn acquire_lease(
    conn: &mut Conn,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> mysql_async::Result<bool> {
    // Assignments run left to right: `expires_at` sees the holder just decided.
    let taken = conn
        .exec_drop(
            "INSERT INTO lightjobs_leases (name, holder, expires_at) \
             VALUES (?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) \
             ON DUPLICATE KEY UPDATE \
             holder = IF(expires_at < UTC_TIMESTAMP(6) OR holder = VALUES(holder), \
                         VALUES(holder), holder), \
             expires_at = IF(holder = VALUES(holder), VALUES(expires_at), expires_at)",
            (name, holder, micros(ttl)),
        )
        .await;
    match taken {
        Ok(()) => {}
        Err(mysql_async::Error::Server(e)) if matches!(e.code, 1213 | 1205) => return Ok(false),
        Err(e) => return Err(e),
    }
    let now: Option<String> = conn
        .exec_first(
            "SELECT holder FROM lightjobs_leases WHERE name = ?",
            (name,),
        )
        .await?;
    Ok(now.as_deref() == Some(holder))
}

/// Gives the lease back at once (if `holder` still has it).
pub async fn release_lease(conn: &mut Conn, name: &str, holder: &str) -> mysql_async::Result<()> {
    conn.exec_drop(
        "UPDATE lightjobs_leases SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND \
         WHERE name = ? AND holder = ?",
        (name, holder),
    )
    .await
}

/// How long a unique dispatch that loses a lock race is tried again.
const RACE_RETRY_FOR: Duration = Duration::from_secs(5);

/// Columns a claim reads, in this order.
/// The claim's locking read (the EXPLAIN test reads its plan). `pending` means due (jobs
/// for later wait as `scheduled`), so the WHERE is all equalities: the index serves it and
/// the ORDER BY, and the read locks only the rows it returns.
pub fn claim_sql(queue: &str, limit: usize) -> String {
    claim_sql_for(queue, limit, &[])
}

/// [`claim_sql`] for a worker that runs only the job types `names` (all when empty): the
/// others are left, unlocked and untouched, for a worker that has them. The index still
/// serves the range and the order; a row of another name at the head is read and passed
/// over, not locked (READ COMMITTED releases rows the WHERE rejects).
pub fn claim_sql_for(queue: &str, limit: usize, names: &[&str]) -> String {
    let mut only = String::new();
    if !names.is_empty() {
        only.push_str(" AND name IN (");
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                only.push(',');
            }
            only.push_str(&sql_string(name));
        }
        only.push(')');
    }
    format!(
        "SELECT id, name, payload, attempts, max_attempts, \
         GREATEST(TIMESTAMPDIFF(MICROSECOND, scheduled_at, UTC_TIMESTAMP(6)), 0) \
         FROM jobs FORCE INDEX (jobs_claim) \
         WHERE queue = {} AND status = 'pending'{only} \
         ORDER BY priority, scheduled_at, id LIMIT {limit} FOR UPDATE SKIP LOCKED",
        sql_string(queue)
    )
}

/// One claim transaction in two round trips, with the successes of earlier claims folded
/// in so that they share its commit:
///
/// 1. `START TRANSACTION; SELECT … FOR UPDATE SKIP LOCKED`
/// 2. `UPDATE … 'running', claim_token = <new> WHERE id IN (claimed); UPDATE … 'processed'
///    WHERE <done, still ours>; SELECT ROW_COUNT(); COMMIT`
///
/// Returns the claimed jobs and which of `done` were written. On error the transaction is
/// rolled back if the connection still answers; a caller should not reuse a connection
/// that failed.
pub async fn claim_and_complete(
    conn: &mut Conn,
    queue: &str,
    limit: usize,
    worker: &str,
    done: &[Held],
) -> Result<Claim> {
    let ask = Ask {
        queue,
        limit,
        limited: false,
        names: &[],
    };
    claim_and_complete_or_report(conn, ask, worker, done, &mut Vec::new()).await
}

/// What a claim transaction did.
#[derive(Debug, Default)]
pub struct Claim {
    /// The jobs now held, each under the claim's token.
    pub jobs: Vec<ClaimedJob>,
    /// Ids of the folded successes that are written (`processed` under their claim).
    /// `None` when the commit succeeded but the follow-up read that tells which ones failed:
    /// the caller writes them again (a no-op for those already written) to find out.
    pub completed: Option<Vec<u64>>,
}

/// [`claim_and_complete`], and on an error that leaves the outcome unknown (the connection
/// failed after the COMMIT may have been sent), the claims in doubt in `in_doubt`: the
/// caller must give them back, or they would stay `running` under a live worker that never
/// runs them. A statement the server refused (any of them, COMMIT included: the
/// multi-statement stops at the first error) committed nothing, so nothing is in doubt.
///
/// With `limited`, the queue has a limit across processes: the claim locks the queue's row
/// in `lightjobs_queues` (so claimers of that queue take turns), counts its running jobs
/// and claims at most the difference, one round trip more.
pub(crate) async fn claim_and_complete_or_report(
    conn: &mut Conn,
    ask: Ask<'_>,
    worker: &str,
    done: &[Held],
    in_doubt: &mut Vec<Held>,
) -> Result<Claim> {
    let result = claim_transaction(conn, ask, worker, done, in_doubt).await;
    match &result {
        Err(error) => {
            if error.is_server_refusal() {
                in_doubt.clear();
            }
            let _ = conn.query_drop("ROLLBACK").await;
        }
        Ok(_) => in_doubt.clear(),
    }
    let (jobs, written) = result?;
    let completed = if written == done.len() as u64 {
        Some(done.iter().map(|h| h.0).collect())
    } else {
        // Some were no longer ours, or an earlier try of this write committed although its
        // reply was lost: read which ones are processed under our claims.
        written_successes(conn, done).await.ok()
    };
    Ok(Claim { jobs, completed })
}

/// What a claim asks for: up to `limit` jobs of `queue`, of the types `names` (any when
/// empty); `limited` when the queue has a global limit to respect.
pub(crate) struct Ask<'a> {
    pub queue: &'a str,
    pub limit: usize,
    pub limited: bool,
    pub names: &'a [&'a str],
}

async fn claim_transaction(
    conn: &mut Conn,
    ask: Ask<'_>,
    worker: &str,
    done: &[Held],
    in_doubt: &mut Vec<Held>,
) -> Result<(Vec<ClaimedJob>, u64)> {
    let Ask {
        queue,
        mut limit,
        limited,
        names,
    } = ask;
    type Claimed = (u64, String, String, u32, u32, i64);
    let mut rows: Vec<Claimed> = Vec::new();
    if limited && limit > 0 {
        let q = sql_string(queue);
        let result = conn
            .query_iter(format!(
                "START TRANSACTION; \
                 SELECT global_limit, (SELECT COUNT(*) FROM jobs FORCE INDEX (jobs_claim) \
                 WHERE queue = {q} AND status = 'running') \
                 FROM lightjobs_queues WHERE queue = {q} FOR UPDATE"
            ))
            .await?;
        let sets: Vec<Vec<(Option<u64>, u64)>> = read_sets(result).await?;
        let allowed = sets.iter().flatten().next().and_then(|&(global, running)| {
            global.map(|g| usize::try_from(g.saturating_sub(running)).unwrap_or(usize::MAX))
        });
        limit = limit.min(allowed.unwrap_or(usize::MAX));
        if limit > 0 {
            rows = conn.query(claim_sql_for(queue, limit, names)).await?;
        }
    } else if limit > 0 {
        let result = conn
            .query_iter(format!(
                "START TRANSACTION; {}",
                claim_sql_for(queue, limit, names)
            ))
            .await?;
        rows = read_sets::<Claimed>(result)
            .await?
            .into_iter()
            .flatten()
            .collect();
    } else {
        conn.query_drop("START TRANSACTION").await?;
    }
    // Every claim has a token of its own: each later write matches (id, token), so it can
    // never touch a newer claim of the same job, whatever happened to `attempts` meanwhile.
    let token = new_token();
    let mut second = String::new();
    if !rows.is_empty() {
        let _ = write!(
            second,
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, reserved_by = {}, \
             reserved_at = UTC_TIMESTAMP(6), claim_token = {token} WHERE id IN ({}); ",
            sql_string(worker),
            id_list(rows.iter().map(|r| r.0))
        );
    }
    if !done.is_empty() {
        let _ = write!(
            second,
            "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP(6) WHERE {}; \
             SELECT ROW_COUNT(); ",
            success_guard(done)
        );
    }
    second.push_str("COMMIT");
    in_doubt.extend(rows.iter().map(|r| (r.0, token)));
    let result = conn.query_iter(second).await?;
    let completed = read_sets::<i64>(result)
        .await?
        .into_iter()
        .flatten()
        .next()
        .map_or(0, |n| u64::try_from(n).unwrap_or(0));
    let claimed = rows
        .into_iter()
        .map(
            |(id, name, payload, attempts, max_attempts, waited_us)| ClaimedJob {
                id,
                token,
                name,
                payload,
                queue: queue.to_owned(),
                attempt: attempts + 1,
                max_attempts,
                waited: Duration::from_micros(u64::try_from(waited_us).unwrap_or(0)),
            },
        )
        .collect();
    Ok((claimed, completed))
}

/// Reads every result of a multi-statement and returns the rows of each set.
///
/// An error of the second or a later statement is only reported when its result is read:
/// mysql_async keeps it pending and `is_empty()` turns true, so a reader that stops there
/// takes a failed statement (and the COMMIT after it, which never ran) for a success.
pub(crate) async fn read_sets<T: FromRow + Send + 'static>(
    mut result: QueryResult<'_, '_, TextProtocol>,
) -> Result<Vec<Vec<T>>> {
    let mut sets = Vec::new();
    loop {
        sets.push(result.collect::<T>().await?);
        if result.is_empty() {
            break;
        }
    }
    // Surfaces an error that is still pending after the last set.
    result.drop_result().await?;
    Ok(sets)
}

/// Which of `done` are `processed` under their claim (written by this write or by an
/// earlier try of it whose reply was lost).
async fn written_successes(conn: &mut Conn, done: &[Held]) -> Result<Vec<u64>> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    Ok(conn
        .query(format!(
            "SELECT id FROM jobs WHERE {} AND status = 'processed'",
            token_match(done)
        ))
        .await?)
}

/// A claim: the job's id and the claim's token.
pub type Held = (u64, u64);

/// A fresh claim token; never zero, so it is never mistaken for a default.
pub(crate) fn new_token() -> u64 {
    fastrand::u64(1..)
}

/// `id IN (…) AND (id, claim_token) IN (…)`: the id list lets the optimizer use the
/// primary key; the pairs pin each row to one claim.
fn token_match(held: &[Held]) -> String {
    let mut pairs = String::new();
    for (i, (id, token)) in held.iter().enumerate() {
        if i > 0 {
            pairs.push(',');
        }
        let _ = write!(pairs, "({id},{token})");
    }
    format!(
        "id IN ({}) AND (id, claim_token) IN ({pairs})",
        id_list(held.iter().map(|h| h.0))
    )
}

/// The guard on every write after a claim but a success: the row is still running under
/// this very claim. A late write (a retry after a lost reply, a process that stalled)
/// can never change a newer claim of the same job, not even this process's own.
fn claim_guard(held: &[Held], worker: &str) -> String {
    format!(
        "{} AND reserved_by = {} AND status = 'running'",
        token_match(held),
        sql_string(worker)
    )
}

/// The guard on a success: the row is still under this claim, or was taken from it by a
/// rescuer (which keeps the token) and has not been claimed since. A run that finished
/// after its process stalled past the staleness did succeed; recording it keeps a job the
/// rescuer failed or queued again from running (or staying failed) for nothing.
fn success_guard(held: &[Held]) -> String {
    format!(
        "{} AND status IN ('running', 'pending', 'failed')",
        token_match(held)
    )
}

/// A string as a hex literal with a charset introducer: no escaping, whatever the
/// server's `sql_mode` (NO_BACKSLASH_ESCAPES changes what a quoted literal means), and it
/// still compares in the column's collation, so the index is used.
fn sql_string(s: &str) -> String {
    let mut out = String::with_capacity(12 + 2 * s.len());
    out.push_str("_utf8mb4 X'");
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\'');
    out
}

/// ` AND queue IN (…) AND name NOT IN (…)`: the rows of `queues` no type in `names` runs.
fn foreign_filter(queues: &[String], names: &[&str]) -> String {
    let list =
        |items: &mut dyn Iterator<Item = &str>| items.map(sql_string).collect::<Vec<_>>().join(",");
    format!(
        " AND queue IN ({}) AND name NOT IN ({})",
        list(&mut queues.iter().map(String::as_str)),
        list(&mut names.iter().copied())
    )
}

/// A row about to be inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewJob {
    pub name: &'static str,
    pub payload: String,
    pub queue: String,
    pub priority: i16,
    pub max_attempts: u32,
    pub when: When,
    /// A unique key, and for how long after the dispatch it stays taken once the job has
    /// finished (while it waits or runs it is always taken).
    pub unique: Option<(String, Duration)>,
}

/// When a new job becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// After this delay from the database's now (zero: at once).
    After(Duration),
    /// At this instant (UTC).
    At(SystemTime),
}

/// A job this worker now holds.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// `jobs.id`.
    pub id: u64,
    /// This claim's token (`jobs.claim_token`): every later write is guarded by it.
    pub token: u64,
    /// `jobs.name`.
    pub name: String,
    /// The JSON payload.
    pub payload: String,
    /// The queue it was claimed from.
    pub queue: String,
    /// The attempt now running, 1-based (already counted in the row).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// How long it was due before this claim (the queue latency).
    pub waited: Duration,
}

/// A job as stored, for inspection tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// `jobs.id`.
    pub id: u64,
    /// The job's name.
    pub name: String,
    /// The queue.
    pub queue: String,
    /// `pending`, `running`, `processed` or `failed`.
    pub status: String,
    /// Attempts spent so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The error of the last failed attempt, if any.
    pub last_error: Option<String>,
    /// The JSON payload.
    pub payload: String,
    /// When it was created (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`).
    pub created_at: String,
    /// When it is (or was) due (UTC).
    pub scheduled_at: String,
    /// When it reached `processed` or `failed` (UTC).
    pub finished_at: Option<String>,
}

/// What a worker process registers about itself.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// The queues, as a JSON array.
    pub queues: String,
    /// How often it beats.
    pub interval: Duration,
    /// After how long without a beat it counts as dead.
    pub stale_after: Duration,
}

/// Counts for one queue and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueCount {
    /// The queue.
    pub queue: String,
    /// The status.
    pub status: String,
    /// How many jobs.
    pub count: u64,
}

/// Access to the `jobs` table through one pool (per database node).
#[derive(Debug, Clone)]
pub struct Store {
    nodes: Nodes,
}

/// A guarded write: only the worker that holds the claim may change the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// The row was ours and is changed.
    Applied,
    /// The row was no longer ours (rescued, released, edited by hand): nothing written.
    Lost,
}

impl Store {
    /// A store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Store {
            nodes: Nodes::single(pool),
        }
    }

    /// A store on the nodes of a cluster (or a single server).
    pub(crate) fn on(nodes: Nodes) -> Self {
        Store { nodes }
    }

    pub(crate) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// `SELECT VERSION()` and the newest applied migration (None when the table is missing).
    pub(crate) async fn read_server_state(&self) -> Result<(String, Option<u32>)> {
        let mut conn = self.nodes.get_conn().await?;
        let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
        let applied: Result<Option<Option<u32>>, _> = conn
            .query_first("SELECT MAX(version) FROM lightjobs_migrations WHERE success = 1")
            .await;
        let applied = match applied {
            Ok(v) => v.flatten(),
            // 1146: table does not exist.
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => None,
            Err(e) => return Err(e.into()),
        };
        Ok((version.unwrap_or_default(), applied))
    }

    /// Inserts one job through `conn` (a pooled connection or the caller's transaction).
    pub(crate) async fn insert_job<Q: Queryable>(conn: &mut Q, job: &NewJob) -> Result<u64> {
        let Some((key, period)) = &job.unique else {
            return insert_one(conn, format!("{INSERT_SQL} {INSERT_ROW}"), job.params()?).await;
        };
        // A finished holder whose period is over gives the key up first.
        conn.exec_drop(
            "UPDATE jobs SET unique_key = NULL WHERE unique_key = ? \
             AND status IN ('processed', 'failed', 'cancelled') \
             AND (unique_until IS NULL OR unique_until <= UTC_TIMESTAMP(6))",
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
                    "INSERT INTO jobs (name, payload, status, queue, priority, max_attempts, \
                     scheduled_at, created_at, unique_key, unique_until) VALUES {}, ?, \
                     UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) \
                     ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
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
        holder.ok_or_else(|| Error::Schema("INSERT INTO jobs returned no id".into()))
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
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let attempt: Result<u64> = async {
                conn.query_drop("START TRANSACTION").await?;
                let id = Self::insert_job(conn, job).await?;
                conn.query_drop("COMMIT").await?;
                Ok(id)
            }
            .await;
            match attempt {
                Ok(id) => return Ok(id),
                Err(error) => {
                    let _ = conn.query_drop("ROLLBACK").await;
                    if !error.is_lock_conflict() || started.elapsed() >= RACE_RETRY_FOR {
                        return Err(error);
                    }
                    tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        }
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
        insert_one(
            conn,
            "INSERT INTO jobs (name, payload, status, queue, priority, max_attempts, \
             scheduled_at, created_at, attempts, reserved_by, reserved_at, claim_token) \
             VALUES (?, ?, 'running', ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 1, ?, \
             UTC_TIMESTAMP(6), ?)",
            (
                job.name,
                job.payload.as_str(),
                job.queue.as_str(),
                job.priority,
                job.max_attempts,
                worker,
                token,
            ),
        )
        .await
    }

    /// Gives back a handed-off job that never reached its worker: `pending`, attempt
    /// returned. Matches nothing if the INSERT never happened or the job has moved on.
    pub async fn release_handoff(&self, queue: &str, worker: &str, token: u64) -> Result<u64> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "UPDATE jobs FORCE INDEX (jobs_claim) SET status = 'pending', attempts = 0, \
             reserved_by = NULL, reserved_at = NULL, claim_token = NULL \
             WHERE queue = ? AND status = 'running' AND claim_token = ? AND reserved_by = ? \
             AND attempts = 1",
            (queue, token, worker),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    /// Inserts many jobs, 1,000 rows per statement, all in one transaction; returns their
    /// ids in order.
    pub(crate) async fn insert_jobs(&self, jobs: &[NewJob], mariadb: bool) -> Result<Vec<u64>> {
        // A prepared statement takes at most 65,535 placeholders (9 per row).
        const ROWS_PER_STATEMENT: usize = 1000;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.nodes.get_conn().await?;
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<&NewJob> = chunk.iter().collect();
            ids.extend(Self::insert_rows(&mut tx, &rows, mariadb).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Inserts `jobs` (at most 1,000, none unique) in one statement; returns their ids in
    /// order. Outside a transaction the statement is its own: all rows or none.
    pub(crate) async fn insert_rows<Q: Queryable>(
        conn: &mut Q,
        jobs: &[&NewJob],
        mariadb: bool,
    ) -> Result<Vec<u64>> {
        let mut sql = String::from(INSERT_SQL);
        let mut params: Vec<Value> = Vec::with_capacity(jobs.len() * 9);
        for (i, job) in jobs.iter().enumerate() {
            sql.push_str(if i == 0 { " " } else { ", " });
            sql.push_str(INSERT_ROW);
            params.extend(job.params()?);
        }
        if mariadb {
            // RETURNING gives the real ids whatever the auto-increment lock mode.
            sql.push_str(" RETURNING id");
            return Ok(conn.exec::<u64, _, _>(sql, params).await?);
        }
        // MySQL has no RETURNING; a multi-row insert gets consecutive ids (step
        // auto_increment_increment) under innodb_autoinc_lock_mode 0/1 and, in practice, 2.
        let first = insert_one(conn, sql, params).await?;
        if jobs.len() == 1 {
            return Ok(vec![first]);
        }
        let step: Option<u64> = conn
            .query_first("SELECT @@auto_increment_increment")
            .await?;
        let step = step.unwrap_or(1);
        Ok((0..jobs.len() as u64).map(|i| first + i * step).collect())
    }

    /// Claims up to `limit` ready jobs of `queue` for `worker` in one short transaction.
    pub async fn claim_available(
        &self,
        queue: &str,
        limit: usize,
        worker: &str,
    ) -> Result<Vec<ClaimedJob>> {
        let mut conn = self.nodes.get_conn().await?;
        Ok(claim_and_complete(&mut conn, queue, limit, worker, &[])
            .await?
            .jobs)
    }

    /// Marks jobs `processed`; returns the ids written (still held by these claims, or
    /// taken by a rescuer and not claimed since).
    pub async fn mark_completed(&self, held: &[Held]) -> Result<Vec<u64>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.nodes.get_conn().await?;
        conn.query_drop(format!(
            "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP(6) WHERE {}",
            success_guard(held)
        ))
        .await?;
        if conn.affected_rows() == held.len() as u64 {
            return Ok(held.iter().map(|h| h.0).collect());
        }
        written_successes(&mut conn, held).await
    }

    /// Ids of `held` still `running` under these very claims.
    pub(crate) async fn still_held(&self, held: &[Held]) -> Result<Vec<u64>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.nodes.get_conn().await?;
        Ok(conn
            .query(format!(
                "SELECT id FROM jobs WHERE {} AND status = 'running'",
                token_match(held)
            ))
            .await?)
    }

    /// Back to `pending` (or `scheduled`, when `delay` is not zero), keeping the error.
    pub(crate) async fn mark_retry(
        &self,
        held: Held,
        worker: &str,
        error: &str,
        delay: Duration,
    ) -> Result<Guarded> {
        let status = if delay.is_zero() {
            "pending"
        } else {
            "scheduled"
        };
        self.guarded(
            format!(
                "UPDATE jobs SET status = '{status}', last_error = ?, reserved_by = NULL, \
                 reserved_at = NULL, scheduled_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE {}",
                claim_guard(&[held], worker)
            ),
            vec![truncate_error(error).into(), micros(delay).into()],
        )
        .await
    }

    /// Back to `scheduled` after `delay`, giving the attempt back (a snooze is not a
    /// failure).
    pub(crate) async fn mark_snoozed(
        &self,
        held: Held,
        worker: &str,
        delay: Duration,
    ) -> Result<Guarded> {
        self.guarded(
            format!(
                "UPDATE jobs SET status = IF(? > 0, 'scheduled', 'pending'), \
                 attempts = GREATEST(attempts, 1) - 1, reserved_by = NULL, reserved_at = NULL, \
                 scheduled_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE {}",
                claim_guard(&[held], worker)
            ),
            vec![micros(delay).into(), micros(delay).into()],
        )
        .await
    }

    /// `failed`, with the error.
    pub(crate) async fn mark_failed(
        &self,
        held: Held,
        worker: &str,
        error: &str,
    ) -> Result<Guarded> {
        self.guarded(
            format!(
                "UPDATE jobs SET status = 'failed', last_error = ?, \
                 finished_at = UTC_TIMESTAMP(6) WHERE {}",
                claim_guard(&[held], worker)
            ),
            vec![truncate_error(error).into()],
        )
        .await
    }

    /// Back to `pending` at once without spending the attempt (shutdown, or a claim whose
    /// commit may or may not have happened).
    pub async fn release_jobs(&self, held: &[Held], worker: &str) -> Result<u64> {
        if held.is_empty() {
            return Ok(0);
        }
        let mut conn = self.nodes.get_conn().await?;
        conn.query_drop(format!(
            "UPDATE jobs SET status = 'pending', attempts = GREATEST(attempts, 1) - 1, \
             reserved_by = NULL, reserved_at = NULL WHERE {}",
            claim_guard(held, worker)
        ))
        .await?;
        Ok(conn.affected_rows())
    }

    /// Moves `scheduled` jobs that are due to `pending`, oldest first, at most `limit`.
    /// Served by the seed's `KEY status (status, scheduled_at)`: a range read of due rows.
    pub(crate) async fn promote_scheduled(&self, limit: u64) -> Result<u64> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "UPDATE jobs SET status = 'pending' WHERE status = 'scheduled' \
             AND scheduled_at <= UTC_TIMESTAMP(6) ORDER BY scheduled_at LIMIT ?",
            (limit,),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    /// Takes up rows a Lightpack app still writes during a move (the seed's columns only,
    /// status `new`): due ones become `pending`, later ones `scheduled`. The seed's
    /// `KEY status` serves it; with no such rows it reads one index entry.
    pub(crate) async fn adopt_seed_rows(&self, limit: u64) -> Result<u64> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "UPDATE jobs SET status = IF(scheduled_at <= UTC_TIMESTAMP(6), 'pending', 'scheduled') \
             WHERE status = 'new' ORDER BY scheduled_at LIMIT ?",
            (limit,),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    /// Due jobs on `queues` of types not in `names` that have waited longer than `older`:
    /// (queue, name, how many, longest wait). Read through the seed's `KEY status`, so only
    /// rows pending that long are read.
    pub(crate) async fn foreign_waiting(
        &self,
        queues: &[String],
        names: &[&str],
        older: Duration,
    ) -> Result<Vec<(String, String, u64, Duration)>> {
        let mut conn = self.nodes.get_conn().await?;
        let rows: Vec<(String, String, u64, i64)> = conn
            .exec(
                format!(
                    "SELECT queue, name, COUNT(*), \
                     TIMESTAMPDIFF(MICROSECOND, MIN(scheduled_at), UTC_TIMESTAMP(6)) \
                     FROM jobs WHERE status = 'pending' \
                     AND scheduled_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND{} \
                     GROUP BY queue, name ORDER BY queue, name LIMIT 100",
                    foreign_filter(queues, names)
                ),
                (micros(older),),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(queue, name, n, waited)| {
                let waited = Duration::from_micros(u64::try_from(waited).unwrap_or(0));
                (queue, name, n, waited)
            })
            .collect())
    }

    /// Fails due jobs on `queues` of types not in `names` that have waited longer than
    /// `older` (at most `limit`); returns how many. A worker that claimed one meanwhile
    /// has it `running`, so the status guard leaves it alone.
    pub(crate) async fn fail_foreign(
        &self,
        queues: &[String],
        names: &[&str],
        older: Duration,
        limit: u64,
    ) -> Result<u64> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            format!(
                "UPDATE jobs SET status = 'failed', finished_at = UTC_TIMESTAMP(6), \
                 last_error = CONCAT('unknown job `', name, '`: no worker running this job type \
                 took it within ', ?, ' (Workers::fail_unknown_after)') \
                 WHERE status = 'pending' \
                 AND scheduled_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND{} \
                 ORDER BY scheduled_at LIMIT ?",
                foreign_filter(queues, names)
            ),
            (format!("{older:?}"), micros(older), limit),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    async fn guarded(&self, sql: String, params: Vec<Value>) -> Result<Guarded> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(sql, params).await?;
        Ok(if conn.affected_rows() == 1 {
            Guarded::Applied
        } else {
            Guarded::Lost
        })
    }

    /// Registers or refreshes this process's row in `lightjobs_workers`, with the
    /// heartbeat interval and staleness every rescuer judges it by.
    pub(crate) async fn beat_worker(&self, worker: &WorkerInfo) -> Result<()> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "INSERT INTO lightjobs_workers (id, host, pid, queues, started_at, heartbeat_at, \
             heartbeat_us, stale_after_us) \
             VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), ?, ?) \
             ON DUPLICATE KEY UPDATE heartbeat_at = VALUES(heartbeat_at)",
            (
                &worker.id,
                &worker.host,
                worker.pid,
                &worker.queues,
                micros(worker.interval),
                micros(worker.stale_after),
            ),
        )
        .await?;
        Ok(())
    }

    /// Removes this process's row (clean shutdown) and rows dead for longer than `forget`.
    pub(crate) async fn delete_worker(&self, id: &str, forget: Duration) -> Result<()> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "DELETE FROM lightjobs_workers WHERE id = ? \
             OR heartbeat_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND",
            (id, micros(forget)),
        )
        .await?;
        Ok(())
    }

    /// Returns jobs held by dead processes to `pending` (or `failed` when that was their
    /// last attempt). Returns (to pending, to failed).
    ///
    /// A holder is dead when its heartbeat is older than its own staleness (`stale` for
    /// rows that do not say, and for holders with no row at all). No holder is judged
    /// from heartbeats nobody could have written: one whose staleness is longer than
    /// `connected_for` (how long this process has been writing its own heartbeat without a
    /// break) counts as alive, so after an outage live processes get a full staleness
    /// period to beat again before anyone calls them dead.
    ///
    /// `me` is the rescuing process: its own heartbeat must be fresh when the statement
    /// runs (within two of its intervals), by the database's clock. So a statement that
    /// waited out a stall of the database itself, during which nobody could beat, judges
    /// nobody.
    pub async fn rescue_stuck(
        &self,
        me: &str,
        stale: Duration,
        connected_for: Duration,
        limit: u64,
    ) -> Result<(u64, u64)> {
        let own = micros(stale);
        let connected = micros(connected_for);
        if connected < own {
            return Ok((0, 0));
        }
        // A job claimed moments ago by a process that has not beaten yet is left alone by
        // the reserved_at condition.
        let dead_holder = format!(
            "status = 'running' AND reserved_at < UTC_TIMESTAMP(6) - INTERVAL {own} MICROSECOND \
             AND EXISTS (SELECT 1 FROM lightjobs_workers m WHERE m.id = {} \
                 AND m.heartbeat_at >= UTC_TIMESTAMP(6) - INTERVAL \
                     2 * COALESCE(m.heartbeat_us, {own} / 2) MICROSECOND) \
             AND NOT EXISTS (SELECT 1 FROM lightjobs_workers w WHERE w.id = jobs.reserved_by \
                 AND (w.heartbeat_at >= UTC_TIMESTAMP(6) - INTERVAL \
                      COALESCE(w.stale_after_us, {own}) MICROSECOND \
                      OR COALESCE(w.stale_after_us, {own}) > {connected}))",
            sql_string(me)
        );
        let mut conn = self.nodes.get_conn().await?;
        let ids: Vec<u64> = conn
            .query(format!(
                "SELECT id FROM jobs WHERE {dead_holder} ORDER BY id LIMIT {limit}"
            ))
            .await?;
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let ids = id_list(ids.into_iter());
        let died = "CONCAT('worker ', COALESCE(reserved_by, '?'), ' stopped heartbeating \
             while running this job";
        // The token stays: a run that still finishes (its process had stalled, not died)
        // can record its success while the job has not been claimed again.
        conn.query_drop(format!(
            "UPDATE jobs SET status = 'failed', finished_at = UTC_TIMESTAMP(6), \
             last_error = {died}, its last attempt') \
             WHERE id IN ({ids}) AND attempts >= max_attempts AND {dead_holder}"
        ))
        .await?;
        let failed = conn.affected_rows();
        conn.query_drop(format!(
            "UPDATE jobs SET status = 'pending', last_error = {died}'), reserved_by = NULL, \
             reserved_at = NULL, scheduled_at = UTC_TIMESTAMP(6) \
             WHERE id IN ({ids}) AND {dead_holder}"
        ))
        .await?;
        Ok((conn.affected_rows(), failed))
    }

    /// Runs `f` only if `holder` gets the lease `name` (one process at a time across every
    /// node of a cluster); `None` when another process holds it. The lease is given back
    /// when `f` ends, and lapses after `ttl` if this process dies meanwhile.
    pub(crate) async fn with_lease<T, F, Fut>(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        f: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut conn = self.nodes.get_conn().await?;
        if !acquire_lease(&mut conn, name, holder, ttl).await? {
            return Ok(None);
        }
        let result = f().await;
        release_lease(&mut conn, name, holder).await?;
        result.map(Some)
    }

    /// One job by id.
    pub(crate) async fn find_job(&self, id: u64) -> Result<Option<JobRecord>> {
        let mut conn = self.nodes.get_conn().await?;
        let rows = conn
            .exec_map(
                format!("{RECORD_SELECT} WHERE id = ?"),
                (id,),
                JobRecord::from_row,
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Jobs with `status`, newest first.
    pub(crate) async fn list_jobs(
        &self,
        status: &str,
        queue: Option<&str>,
        limit: u64,
    ) -> Result<Vec<JobRecord>> {
        let mut conn = self.nodes.get_conn().await?;
        Ok(conn
            .exec_map(
                format!(
                    "{RECORD_SELECT} WHERE status = ? AND (? IS NULL OR queue = ?) \
                     ORDER BY id DESC LIMIT ?"
                ),
                (status, queue, queue, limit),
                JobRecord::from_row,
            )
            .await?)
    }

    /// `failed` → `pending` with a fresh set of attempts; `id` None retries all (of `queue`).
    pub(crate) async fn retry_failed(&self, id: Option<u64>, queue: Option<&str>) -> Result<u64> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "UPDATE jobs SET status = 'pending', attempts = 0, scheduled_at = UTC_TIMESTAMP(6), \
             reserved_by = NULL, reserved_at = NULL, finished_at = NULL, claim_token = NULL, \
             last_error = NULL \
             WHERE status = 'failed' AND (? IS NULL OR id = ?) AND (? IS NULL OR queue = ?)",
            (id, id, queue, queue),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    /// Deletes finished jobs older than the given ages, in batches of `batch` rows so no
    /// statement holds locks for long. A row whose unique key is still taken (its period
    /// has not passed) stays until it has: deleting it would free the key early. Returns
    /// how many rows went.
    pub(crate) async fn prune_finished(
        &self,
        processed_age: Duration,
        failed_age: Option<Duration>,
        batch: u64,
    ) -> Result<u64> {
        let mut total = 0;
        let mut conn = self.nodes.get_conn().await?;
        let targets = [
            (status::PROCESSED, Some(processed_age)),
            ("cancelled", Some(processed_age)),
            (status::FAILED, failed_age),
        ];
        for (status, age) in targets {
            let Some(age) = age else { continue };
            loop {
                // Chosen with an index hint first: a DELETE takes none, and on its own the
                // optimizer prefers the seed's status index plus a sort of every old row.
                let ids: Vec<u64> = conn
                    .exec(
                        "SELECT id FROM jobs FORCE INDEX (jobs_finished) WHERE status = ? \
                         AND finished_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
                         AND (unique_until IS NULL OR unique_until <= UTC_TIMESTAMP(6)) \
                         ORDER BY finished_at LIMIT ?",
                        (status, micros(age), batch),
                    )
                    .await?;
                if ids.is_empty() {
                    break;
                }
                conn.query_drop(format!(
                    "DELETE FROM jobs WHERE id IN ({}) AND status = '{status}' \
                     AND (unique_until IS NULL OR unique_until <= UTC_TIMESTAMP(6))",
                    id_list(ids.iter().copied())
                ))
                .await?;
                total += conn.affected_rows();
                if (ids.len() as u64) < batch {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// `pending`/`scheduled` → `cancelled`. True when the job was waiting.
    pub(crate) async fn cancel_job(&self, id: u64) -> Result<bool> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "UPDATE jobs SET status = 'cancelled', finished_at = UTC_TIMESTAMP(6), \
             last_error = COALESCE(last_error, 'cancelled') \
             WHERE id = ? AND status IN ('pending', 'scheduled')",
            (id,),
        )
        .await?;
        Ok(conn.affected_rows() == 1)
    }

    /// Deletes a `failed` job. True when there was one.
    pub(crate) async fn discard_failed(&self, id: u64) -> Result<bool> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop("DELETE FROM jobs WHERE id = ? AND status = 'failed'", (id,))
            .await?;
        Ok(conn.affected_rows() == 1)
    }

    /// Pauses or resumes a queue for every process.
    pub(crate) async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "INSERT INTO lightjobs_queues (queue, paused, updated_at) \
             VALUES (?, ?, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE paused = VALUES(paused), updated_at = VALUES(updated_at)",
            (queue, paused),
        )
        .await?;
        Ok(())
    }

    /// Sets or clears a queue's limit across processes.
    pub(crate) async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()> {
        let mut conn = self.nodes.get_conn().await?;
        conn.exec_drop(
            "INSERT INTO lightjobs_queues (queue, paused, global_limit, updated_at) \
             VALUES (?, 0, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE \
             global_limit = VALUES(global_limit), updated_at = VALUES(updated_at)",
            (queue, limit),
        )
        .await?;
        Ok(())
    }

    /// (queue, paused, global limit) of every queue with settings.
    pub(crate) async fn queue_settings(&self) -> Result<Vec<(String, bool, Option<u32>)>> {
        let mut conn = self.nodes.get_conn().await?;
        // Read as wide integers: a value written by hand (paused = 2, a negative limit)
        // must not make the decoding panic in the maintenance thread.
        let rows: Vec<(String, Option<i64>, Option<i64>)> = conn
            .query("SELECT queue, paused + 0, global_limit + 0 FROM lightjobs_queues")
            .await?;
        Ok(rows
            .into_iter()
            .map(|(queue, paused, limit)| {
                let limit = limit.map(|l| u32::try_from(l.max(0)).unwrap_or(u32::MAX));
                (queue, paused.unwrap_or(0) != 0, limit)
            })
            .collect())
    }

    /// The paused queues.
    pub(crate) async fn paused_queues(&self) -> Result<Vec<String>> {
        let mut conn = self.nodes.get_conn().await?;
        Ok(conn
            .query("SELECT queue FROM lightjobs_queues WHERE paused <> 0 ORDER BY queue")
            .await?)
    }

    /// Counts per queue and status.
    pub(crate) async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        let mut conn = self.nodes.get_conn().await?;
        Ok(conn
            .query_map(
                "SELECT queue, status, COUNT(*) FROM jobs GROUP BY queue, status \
                 ORDER BY queue, status",
                |(queue, status, count)| QueueCount {
                    queue,
                    status,
                    count,
                },
            )
            .await?)
    }
}

const RECORD_SELECT: &str = "SELECT id, name, queue, status, attempts, max_attempts, last_error, \
     payload, DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), \
     DATE_FORMAT(scheduled_at, '%Y-%m-%d %H:%i:%s.%f'), \
     DATE_FORMAT(finished_at, '%Y-%m-%d %H:%i:%s.%f') FROM jobs";

impl JobRecord {
    fn from_row(row: mysql_async::Row) -> JobRecord {
        type Cols = (
            u64,
            String,
            String,
            String,
            u32,
            u32,
            Option<String>,
            String,
            String,
            String,
            Option<String>,
        );
        let (
            id,
            name,
            queue,
            status,
            attempts,
            max_attempts,
            last_error,
            payload,
            created_at,
            scheduled_at,
            finished_at,
        ): Cols = mysql_async::from_row(row);
        JobRecord {
            id,
            name,
            queue,
            status,
            attempts,
            max_attempts,
            last_error,
            payload,
            created_at,
            scheduled_at,
            finished_at,
        }
    }
}

impl When {
    /// (delay in µs, absolute DATETIME or NULL) for the INSERT's COALESCE.
    fn params(&self) -> Result<(i64, Value)> {
        match *self {
            When::After(d) => Ok((micros(d), Value::NULL)),
            When::At(t) => Ok((0, datetime_value(t)?)),
        }
    }
}

const INSERT_SQL: &str = "INSERT INTO jobs (name, payload, status, queue, priority, \
     max_attempts, scheduled_at, created_at) VALUES";

/// One row: a job due now is `pending`, one for later `scheduled`, decided by the
/// database's clock (UTC_TIMESTAMP is fixed for the whole statement).
const INSERT_ROW: &str = "(?, ?, IF(COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) \
     > UTC_TIMESTAMP(6), 'scheduled', 'pending'), ?, ?, ?, \
     COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND), UTC_TIMESTAMP(6))";

impl NewJob {
    fn params(&self) -> Result<Vec<Value>> {
        let (delay, at) = self.when.params()?;
        Ok(vec![
            self.name.into(),
            self.payload.as_str().into(),
            at.clone(),
            delay.into(),
            self.queue.as_str().into(),
            self.priority.into(),
            self.max_attempts.into(),
            at,
            delay.into(),
        ])
    }
}

/// Runs a one-row INSERT and returns the new row's id.
async fn insert_one<Q: Queryable>(
    conn: &mut Q,
    sql: impl AsRef<str>,
    params: impl Into<mysql_async::Params> + Send,
) -> Result<u64> {
    let result = conn.exec_iter(sql.as_ref(), params).await?;
    let id = result.last_insert_id();
    result.drop_result().await?;
    id.ok_or_else(|| Error::Schema("INSERT INTO jobs returned no id".into()))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Ids are integers we read from the table, so inlining them is safe, and it keeps the
/// statement text free of a variable number of placeholders.
fn id_list(ids: impl Iterator<Item = u64>) -> String {
    let mut s = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{id}");
    }
    s
}

/// `last_error` is TEXT (64 KiB); a longer message is cut on a char boundary.
fn truncate_error(error: &str) -> &str {
    const MAX: usize = 60_000;
    if error.len() <= MAX {
        return error;
    }
    let mut end = MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// A UTC calendar DATETIME for `t`; times before 1970 or after 9999 are refused.
pub(crate) fn datetime_value(t: SystemTime) -> Result<Value> {
    let since = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::invalid("run_at", "times before 1970 are not supported"))?;
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return Err(Error::invalid(
            "run_at",
            "times after year 9999 are not supported",
        ));
    }
    Ok(Value::Date(
        y as u16,
        m as u8,
        d as u8,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
        since.subsec_micros(),
    ))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }

    #[test]
    fn datetime_of_instant() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_867_509_123_456);
        assert_eq!(
            datetime_value(t).unwrap(),
            Value::Date(2026, 11, 28, 12, 5, 9, 123_456)
        );
        assert!(datetime_value(UNIX_EPOCH - Duration::from_secs(1)).is_err());
    }

    #[test]
    fn string_literals_need_no_escaping() {
        assert_eq!(sql_string("it's"), "_utf8mb4 X'69742773'");
        assert_eq!(sql_string(""), "_utf8mb4 X''");
        assert_eq!(sql_string("é"), "_utf8mb4 X'c3a9'");
    }

    #[test]
    fn id_lists_and_truncation() {
        assert_eq!(id_list([1u64, 22, 333].into_iter()), "1,22,333");
        let long = "é".repeat(40_000);
        let cut = truncate_error(&long);
        assert!(cut.len() <= 60_000 && cut.chars().all(|c| c == 'é'));
    }
}
