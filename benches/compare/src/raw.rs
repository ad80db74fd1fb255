//! Hand-written claim loops with mysql_async and no library around them, on the same table
//! and schema as lightjobs: the raw floor (claim 100 with SKIP LOCKED) and the seed's
//! strategy (Lightpack: one job per transaction, plain FOR UPDATE).

use std::fmt::Write as _;
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts};

use crate::lj;
use crate::util::{self, AnyResult, Drain};

/// The raw floor's claim: the same locking read as lightjobs, 100 at a time.
const RAW_CLAIM: &str = "SELECT id FROM jobs FORCE INDEX (jobs_claim) \
     WHERE queue = 'default' AND status = 'pending' AND scheduled_at <= UTC_TIMESTAMP(6) \
     ORDER BY priority, scheduled_at, id LIMIT 100 FOR UPDATE SKIP LOCKED";

/// The seed's claim: one row, plain FOR UPDATE (Lightpack has no SKIP LOCKED).
const SEED_CLAIM: &str = "SELECT id FROM jobs FORCE INDEX (jobs_claim) \
     WHERE queue = 'default' AND status = 'pending' AND scheduled_at <= UTC_TIMESTAMP(6) \
     ORDER BY priority, scheduled_at, id LIMIT 1 FOR UPDATE";

/// Which loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// START; claim 100 (SKIP LOCKED); UPDATE … running; COMMIT; run; one UPDATE … processed.
    RawFloor,
    /// The raw floor with the previous batch's completion folded into the next claim's
    /// transaction, in two round trips of multi-statement text (`START TRANSACTION;
    /// SELECT …` then `UPDATE … running; UPDATE … processed; COMMIT`): one commit per
    /// batch instead of two. lightjobs's claim cycle is built this way.
    RawFolded,
    /// One job per transaction, plain FOR UPDATE.
    Seed,
}

/// What one claimer did.
#[derive(Default, Clone, Copy)]
struct ClaimerStats {
    jobs: u64,
    lock_retries: u64,
}

/// A connection in READ COMMITTED, as lightjobs's sessions.
pub async fn session(db_url: &str) -> AnyResult<Conn> {
    let opts = OptsBuilder::from_opts(Opts::from_url(db_url)?).setup(vec![
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    ]);
    Ok(Conn::new(opts).await?)
}

fn id_list(ids: &[u64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{id}");
    }
    s
}

/// The no-op "run" of a job.
fn run_noop(id: u64) {
    std::hint::black_box(id);
}

/// Drains the table with `strategy` on `conn`; returns the jobs this connection completed.
pub async fn claim_all(conn: Conn, strategy: Strategy, worker: String) -> AnyResult<u64> {
    Ok(claimer(conn, strategy, worker).await?.jobs)
}

async fn claimer(mut conn: Conn, strategy: Strategy, worker: String) -> AnyResult<ClaimerStats> {
    let mut stats = ClaimerStats::default();
    // RawFolded: the batch that ran and waits for the next claim's transaction.
    let mut done: Vec<u64> = Vec::new();
    loop {
        let claimed = match strategy {
            Strategy::RawFloor => claim_batch(&mut conn, &worker).await,
            Strategy::RawFolded => claim_folded(&mut conn, &worker, &done).await,
            Strategy::Seed => claim_one(&mut conn, &worker).await,
        };
        let ids = match claimed {
            Ok(ids) => ids,
            Err(e) if util::is_lock_conflict(&e) => {
                stats.lock_retries += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if strategy == Strategy::RawFolded {
            // The transaction committed: `done` is written.
            stats.jobs += done.len() as u64;
            done.clear();
        }
        if ids.is_empty() {
            break;
        }
        for &id in &ids {
            run_noop(id);
        }
        match strategy {
            Strategy::RawFloor => {
                conn.query_drop(format!(
                    "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP(6) \
                     WHERE id IN ({})",
                    id_list(&ids)
                ))
                .await?;
                stats.jobs += ids.len() as u64;
            }
            Strategy::RawFolded => done = ids,
            Strategy::Seed => {
                conn.exec_drop(
                    "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP(6) \
                     WHERE id = ?",
                    (ids[0],),
                )
                .await?;
                stats.jobs += 1;
            }
        }
    }
    conn.disconnect().await?;
    Ok(stats)
}

/// START TRANSACTION; SELECT … LIMIT 100 FOR UPDATE SKIP LOCKED; UPDATE … WHERE id IN (…);
/// COMMIT.
async fn claim_batch(conn: &mut Conn, worker: &str) -> Result<Vec<u64>, mysql_async::Error> {
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let ids: Vec<u64> = tx.exec(RAW_CLAIM, ()).await?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(ids);
    }
    // The worker id is our own `raw-<n>`: safe to inline, and the text protocol saves the
    // prepare round trip a statement that changes every time would cost.
    tx.query_drop(format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, \
         reserved_by = '{worker}', reserved_at = UTC_TIMESTAMP(6) WHERE id IN ({})",
        id_list(&ids)
    ))
    .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Two round trips: `START TRANSACTION; SELECT … LIMIT 100 FOR UPDATE SKIP LOCKED`, then
/// `UPDATE … running WHERE id IN (claimed); UPDATE … processed WHERE id IN (done); COMMIT`.
async fn claim_folded(
    conn: &mut Conn,
    worker: &str,
    done: &[u64],
) -> Result<Vec<u64>, mysql_async::Error> {
    let result = claim_folded_inner(conn, worker, done).await;
    if result.is_err() {
        let _ = conn.query_drop("ROLLBACK").await;
    }
    result
}

async fn claim_folded_inner(
    conn: &mut Conn,
    worker: &str,
    done: &[u64],
) -> Result<Vec<u64>, mysql_async::Error> {
    let mut ids: Vec<u64> = Vec::new();
    let mut result = conn
        .query_iter(format!("START TRANSACTION; {RAW_CLAIM}"))
        .await?;
    while !result.is_empty() {
        let set: Vec<u64> = result.collect().await?;
        if !set.is_empty() {
            ids = set;
        }
    }
    drop(result);
    let mut second = String::new();
    if !ids.is_empty() {
        let _ = write!(
            second,
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, \
             reserved_by = '{worker}', reserved_at = UTC_TIMESTAMP(6) WHERE id IN ({}); ",
            id_list(&ids)
        );
    }
    if !done.is_empty() {
        let _ = write!(
            second,
            "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP(6) \
             WHERE id IN ({}); ",
            id_list(done)
        );
    }
    second.push_str("COMMIT");
    conn.query_drop(second).await?;
    Ok(ids)
}

/// START TRANSACTION; SELECT … LIMIT 1 FOR UPDATE; UPDATE … WHERE id = ?; COMMIT.
async fn claim_one(conn: &mut Conn, worker: &str) -> Result<Vec<u64>, mysql_async::Error> {
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let id: Option<u64> = tx.exec_first(SEED_CLAIM, ()).await?;
    let Some(id) = id else {
        tx.rollback().await?;
        return Ok(Vec::new());
    };
    tx.exec_drop(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, reserved_by = ?, \
         reserved_at = UTC_TIMESTAMP(6) WHERE id = ?",
        (worker, id),
    )
    .await?;
    tx.commit().await?;
    Ok(vec![id])
}

/// One run: fresh table (lightjobs schema via `queue.migrate()`), `n` jobs loaded with
/// `dispatch_many`, then `claimers` connections draining it.
/// Returns (drain time, lock-conflict retries).
pub async fn drain_once(
    server: &str,
    strategy: Strategy,
    claimers: usize,
    n: usize,
) -> AnyResult<Drain> {
    // The JobQueue runs its statements on a thread of its own, so it loads from any runtime.
    let queue = lj::fresh_queue(server, lj::DB).await?;
    lj::load_backlog(&queue, n).await?;
    drop(queue);
    let url = util::db_url(server, lj::DB);
    let mut conns = Vec::with_capacity(claimers);
    for _ in 0..claimers {
        conns.push(session(&url).await?);
    }
    let start_us = util::wall_us();
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::spawn(claimer(conn, strategy, format!("raw-{i}"))))
        .collect();
    let mut total = ClaimerStats::default();
    for t in tasks {
        let s = t.await??;
        total.jobs += s.jobs;
        total.lock_retries += s.lock_retries;
    }
    let drain = t0.elapsed();
    let end_us = util::wall_us();
    let done = util::count(server, lj::DB, "jobs", "status = 'processed'").await?;
    if done != n as u64 || total.jobs != n as u64 {
        return Err(format!(
            "{strategy:?} drained {done} of {n} jobs (claimers counted {}; table: {})",
            total.jobs,
            util::status_counts(server, lj::DB, "jobs").await?
        )
        .into());
    }
    Ok(Drain {
        time: drain,
        load: None,
        lock_retries: total.lock_retries,
        diag: Some(util::diagnostics(server, lj::DB).await?),
        start_us,
        end_us,
    })
}
