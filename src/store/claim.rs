//! The claim: the locking read of the head of a queue and its UPDATE to `running`, with
//! the successes of earlier claims folded into the same transaction.

use std::collections::HashSet;

use super::*;

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
/// over, not locked (READ COMMITTED releases rows the WHERE rejects). Names match byte for
/// byte: the table's collation pads with spaces, so a plain `name IN ('sleepy')` would
/// also take a row named `sleepy ` that no worker runs.
pub fn claim_sql_for(queue: &str, limit: usize, names: &[&str]) -> String {
    let mut only = String::new();
    if !names.is_empty() {
        only.push_str(" AND CAST(name AS BINARY) IN (");
        only.push_str(&bytes_list(names.iter().copied()));
        only.push(')');
    }
    format!(
        concat!(
            "SELECT id, name, payload, attempts, max_attempts, \
         GREATEST(TIMESTAMPDIFF(MICROSECOND, scheduled_at, UTC_TIMESTAMP(6)), 0), \
         flow_key, flow_concurrency, flow_rate, flow_window_ms, trace_parent, tags, meta, \
         batch_id, after_batch FROM jobs FORCE INDEX (jobs_claim) \
         WHERE queue = {} AND status = ",
            st!(pending),
            "{only} \
         ORDER BY priority, scheduled_at, id LIMIT {limit} FOR UPDATE SKIP LOCKED"
        ),
        sql_string(queue),
        only = only,
        limit = limit
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
        token: new_token(),
        turn: None,
        freed: &[],
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
    /// Parked jobs of flow keys this claim moved back to `pending`: ready for the next
    /// claim, which should not wait for a poll.
    pub unparked: u64,
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
            if !error.in_doubt() {
                in_doubt.clear();
            }
            let _ = conn.query_drop("ROLLBACK").await;
        }
        Ok(_) => in_doubt.clear(),
    }
    let (jobs, written, unparked) = result?;
    let completed = if written == done.len() as u64 {
        Some(done.iter().map(|h| h.0).collect())
    } else {
        // Some were no longer ours, or an earlier try of this write committed although its
        // reply was lost: read which ones are processed under our claims.
        written_successes(conn, done).await.ok()
    };
    Ok(Claim {
        jobs,
        completed,
        unparked,
    })
}

/// What a claim asks for: up to `limit` jobs of `queue`, of the types `names` (any when
/// empty), under the claim token `token`; `limited` when the queue has a global limit to
/// respect.
pub(crate) struct Ask<'a> {
    pub queue: &'a str,
    pub limit: usize,
    pub limited: bool,
    pub names: &'a [&'a str],
    pub token: u64,
    /// The claim turn to take first (see [`turn_sql`]); none for a claim that goes
    /// straight to the head.
    pub turn: Option<u8>,
    /// The flow keys (with a concurrency) of the successes `done` folded in, one per job:
    /// their parked jobs may now start.
    pub freed: &'a [&'a str],
}

/// Claim turns per queue. One turn serialises the claimers (a claimer never waits for a
/// row, but a lone claimer leaves the server idle while its reply travels); two let one
/// claim's round trip overlap another's, and claimers stop stepping over each other's
/// locked rows at the head of the index, however many processes there are. Measured with
/// `benches/compare --only hosts` at 1–16 processes (docs/benchmarks.md): one turn peaked
/// at 13,768 jobs/s, two at 17,565 (16 processes at 0.87× and 0.88× of those), three and
/// four did worse than two.
pub(crate) const TURNS: u8 = 2;

/// How long a claim waits for its turn before it gives up (MariaDB's `FOR UPDATE WAIT`,
/// error 1205): a turn is held for one claim, milliseconds, so a wait this long means its
/// holder stalled mid-transaction (a process stopped, a network path gone silent) and the
/// server has not noticed yet. The fetcher then claims without turns for a while.
pub(crate) const TURN_WAIT_SECS: u32 = 2;

/// The statement that takes `turn` of `queue` before the claim reads the head, or nothing.
/// A turn row that is missing (never made, or deleted) takes no lock under READ COMMITTED:
/// that claim goes straight to the head, as before turns.
pub(crate) fn turn_sql(queue: &str, turn: Option<u8>) -> String {
    match turn {
        Some(turn) => format!(
            "SELECT turn FROM lightjobs_claim_turns WHERE queue = {} AND turn = {turn} \
             FOR UPDATE WAIT {TURN_WAIT_SECS}; ",
            sql_string(queue)
        ),
        None => String::new(),
    }
}

pub(super) async fn claim_transaction(
    conn: &mut Conn,
    ask: Ask<'_>,
    worker: &str,
    done: &[Held],
    in_doubt: &mut Vec<Held>,
) -> Result<(Vec<ClaimedJob>, u64, u64)> {
    let (queue, token, freed) = (ask.queue, ask.token, ask.freed);
    let rows = lock_rows(conn, ask).await?;
    // Each row decoded on its own: a value another program wrote that does not decode
    // fails that job alone (a row whose id does not decode is left as it is, locked only
    // until this transaction ends).
    let mut rows: Vec<ClaimRow> = rows.into_iter().filter_map(ClaimRow::decode).collect();
    let (mut done, mut flow_sql, mut written, mut unparked) = (done, String::new(), None, 0);
    if rows.iter().any(|r| r.flow.is_some()) || !freed.is_empty() {
        let admitted;
        (admitted, flow_sql, written, unparked) = admit(conn, &rows, done, freed).await?;
        rows.retain(|r| admitted.contains(&r.id));
        done = &[];
    }
    in_doubt.extend(rows.iter().map(|r| (r.id, token)));
    let ids = rows.iter().map(|r| r.id);
    let completed = commit_claim(conn, ids, token, worker, done, &flow_sql).await?;
    let claimed = rows
        .into_iter()
        .map(|row| row.into_job(queue, token))
        .collect();
    Ok((claimed, written.unwrap_or(completed), unparked))
}

/// The flow keys' round trip, for a claim with rows of flow keys or folded successes that
/// free some: the successes written first (so that they no longer count as running), the
/// keys locked and read, and the plan. Returns the ids that may start, the statements
/// for the commit round trip, and how many successes were written.
async fn admit(
    conn: &mut Conn,
    rows: &[ClaimRow],
    done: &[Held],
    freed: &[&str],
) -> Result<(HashSet<u64>, String, Option<u64>, u64)> {
    let mut first = String::new();
    if !done.is_empty() {
        let _ = write!(first, "{}; SELECT ROW_COUNT(); ", done_sql(done));
    }
    let pairs: Vec<(u64, Option<&flow::RowFlow>)> =
        rows.iter().map(|r| (r.id, r.flow.as_ref())).collect();
    let (sets, states) = flow::read_states(conn, first, &pairs, freed).await?;
    let written = (!done.is_empty()).then(|| {
        sets.get(1)
            .and_then(|s| s.first().cloned())
            .and_then(|mut r| r.take_opt::<i64, _>(0).and_then(|v| v.ok()))
            .map_or(0, |n| u64::try_from(n).unwrap_or(0))
    });
    let plan = flow::plan(&pairs, &states);
    Ok((
        plan.admitted.iter().copied().collect(),
        plan.sql(),
        written,
        plan.unparked(),
    ))
}

/// The write of folded successes (the caller reads `ROW_COUNT()` after it).
fn done_sql(done: &[Held]) -> String {
    format!(
        concat!(
            "UPDATE jobs SET status = ",
            st!(processed),
            ", finished_at = UTC_TIMESTAMP(6) WHERE {}"
        ),
        success_guard(done)
    )
}

/// The first round trip: `START TRANSACTION`, the claim turn when there is one (its
/// result set skipped) and the locking read of the head of the queue. With a limit across
/// processes, the queue's row is locked first (claimers of that queue take turns), its
/// running jobs counted, and at most the difference read.
async fn lock_rows(conn: &mut Conn, ask: Ask<'_>) -> Result<Vec<Row>> {
    let Ask {
        queue,
        mut limit,
        limited,
        names,
        turn,
        ..
    } = ask;
    if limit == 0 {
        conn.query_drop("START TRANSACTION").await?;
        return Ok(Vec::new());
    }
    if !limited {
        let result = conn
            .query_iter(format!(
                "START TRANSACTION; {}{}",
                turn_sql(queue, turn),
                claim_sql_for(queue, limit, names)
            ))
            .await?;
        return Ok(read_sets::<Row>(result)
            .await?
            .into_iter()
            .next_back()
            .unwrap_or_default());
    }
    let q = sql_string(queue);
    let result = conn
        .query_iter(format!(
            concat!(
                "START TRANSACTION; \
                 SELECT global_limit, (SELECT COUNT(*) FROM jobs FORCE INDEX (jobs_claim) \
                 WHERE queue = {q} AND status = ",
                st!(running),
                ") FROM lightjobs_queues WHERE queue = {q} FOR UPDATE"
            ),
            q = q
        ))
        .await?;
    let sets: Vec<Vec<(Option<u64>, u64)>> = read_sets(result).await?;
    let allowed = sets.iter().flatten().next().and_then(|&(global, running)| {
        global.map(|g| usize::try_from(g.saturating_sub(running)).unwrap_or(usize::MAX))
    });
    limit = limit.min(allowed.unwrap_or(usize::MAX));
    if limit == 0 {
        return Ok(Vec::new());
    }
    Ok(conn.query(claim_sql_for(queue, limit, names)).await?)
}

/// The second round trip: the claimed rows to `running` under `token`, the successes
/// `done` to `processed` (guarded), and the COMMIT. Returns how many successes it wrote.
async fn commit_claim(
    conn: &mut Conn,
    ids: impl ExactSizeIterator<Item = u64>,
    token: u64,
    worker: &str,
    done: &[Held],
    flow_sql: &str,
) -> Result<u64> {
    let mut second = String::from(flow_sql);
    if ids.len() > 0 {
        let _ = write!(
            second,
            concat!(
                "UPDATE jobs SET status = ",
                st!(running),
                ", attempts = attempts + 1, reserved_by = {}, \
                 reserved_at = UTC_TIMESTAMP(6), claim_token = {} WHERE id IN ({}); "
            ),
            sql_string(worker),
            token,
            id_list(ids)
        );
    }
    if !done.is_empty() {
        let _ = write!(second, "{}; SELECT ROW_COUNT(); ", done_sql(done));
    }
    second.push_str("COMMIT");
    let result = conn.query_iter(second).await?;
    Ok(read_sets::<i64>(result)
        .await?
        .into_iter()
        .flatten()
        .next()
        .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// A claimed row as read, each value decoded on its own.
struct ClaimRow {
    id: u64,
    name: String,
    payload: String,
    attempts: u32,
    max_attempts: u32,
    /// Microseconds it has been due; NULL for a zero date (`0000-00-00`), which MariaDB's
    /// default `sql_mode` lets another program write.
    waited_us: Option<i64>,
    flow: Option<flow::RowFlow>,
    trace_parent: Option<String>,
    tags: Vec<String>,
    meta: Option<String>,
    batch: Option<u64>,
    after_batch: Option<u64>,
    defect: Option<String>,
}

impl ClaimRow {
    fn decode(mut row: Row) -> Option<ClaimRow> {
        let id: u64 = row.take_opt(0)?.ok()?;
        let mut defect = None;
        let mut note = |problem: String| {
            defect.get_or_insert(format!("bad row written by another program: {problem}"));
        };
        let mut text = |i: usize, column: &str| -> String {
            let bytes: Vec<u8> = row.take_opt(i).and_then(|v| v.ok()).unwrap_or_default();
            String::from_utf8(bytes).unwrap_or_else(|e| {
                let lossy = String::from_utf8_lossy(e.as_bytes());
                let shown: String = lossy.chars().take(60).collect();
                note(format!("column `{column}` is not UTF-8 text: {shown:?}"));
                lossy.into_owned()
            })
        };
        let name = text(1, "name");
        let payload = text(2, "payload");
        let attempts: u32 = row.take_opt(3).and_then(|v| v.ok()).unwrap_or(0);
        let max_attempts: u32 = row.take_opt(4).and_then(|v| v.ok()).unwrap_or(0);
        let waited_us: Option<i64> = row.take_opt(5).and_then(|v| v.ok());
        let flow = row_flow(&mut row);
        // Only read to link a span: a value that is not text is no trace context.
        let trace_parent = row.take_opt(10).and_then(|v| v.ok());
        let tags: Option<String> = row.take_opt(11).and_then(|v| v.ok());
        let meta = row.take_opt(12).and_then(|v| v.ok());
        let batch = row.take_opt(13).and_then(|v| v.ok());
        let after_batch = row.take_opt(14).and_then(|v| v.ok());
        if attempts >= max_attempts {
            note(format!(
                "`attempts` ({attempts}) is not below `max_attempts` ({max_attempts}): no \
                 attempt left to run"
            ));
        }
        Some(ClaimRow {
            id,
            name,
            payload,
            attempts,
            max_attempts,
            waited_us,
            flow,
            trace_parent,
            tags: split_tags(tags.as_deref()),
            meta,
            batch,
            after_batch,
            defect,
        })
    }

    fn into_job(self, queue: &str, token: u64) -> ClaimedJob {
        ClaimedJob {
            id: self.id,
            token,
            name: self.name,
            payload: self.payload,
            queue: queue.to_owned(),
            attempt: self.attempts.saturating_add(1),
            max_attempts: self.max_attempts,
            waited: Duration::from_micros(
                self.waited_us
                    .map_or(0, |us| u64::try_from(us).unwrap_or(0)),
            ),
            flow: self.flow.map(|f| HeldFlow {
                slot: f.concurrency.is_some(),
                key: f.key,
            }),
            trace_parent: self.trace_parent,
            tags: self.tags,
            meta: self.meta,
            batch: self.batch,
            after_batch: self.after_batch,
            defect: self.defect,
        }
    }
}

/// Columns 6–9 of a claimed row: its flow key and limits. A key another program wrote
/// that is not text is read as it is (lossy); the limits that do not decode as none.
fn row_flow(row: &mut Row) -> Option<flow::RowFlow> {
    let key = text(row, 6)?;
    let mut num = |i: usize| -> Option<u32> { row.take_opt(i).and_then(|v| v.ok()) };
    let concurrency = num(7);
    let rate = num(8).zip(num(9));
    Some(flow::RowFlow {
        key,
        concurrency,
        rate,
    })
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
pub(super) async fn written_successes(conn: &mut Conn, done: &[Held]) -> Result<Vec<u64>> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    Ok(conn
        .query(format!(
            concat!("SELECT id FROM jobs WHERE {} AND status = ", st!(processed)),
            token_match(done)
        ))
        .await?)
}

impl Store {
    /// Claims up to `limit` ready jobs of `queue` for `worker` in one short transaction.
    pub async fn claim_available(
        &self,
        queue: &str,
        limit: usize,
        worker: &str,
    ) -> Result<Vec<ClaimedJob>> {
        self.nodes
            .run(async |conn| {
                Ok(claim_and_complete(conn, queue, limit, worker, &[])
                    .await?
                    .jobs)
            })
            .await
    }
}
