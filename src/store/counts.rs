//! Counts at a cost of the queues' work, not of what the table keeps.
//!
//! Waiting and running jobs are counted from ranges of `jobs_claim`, one per (queue,
//! status) pair, found by a loose scan of the same index: the cost is those jobs, however
//! many finished ones are retained. Finished jobs (`processed`, `failed`, `cancelled`) are
//! counted per minute into `lightjobs_counts` by the rollup, from ranges of the
//! `jobs_finished` index; a count reads the rollup up to its watermark and the index after
//! it (the seconds since the rollup's last pass).

use super::*;

/// How far back finished jobs are counted: from the start of the minute a day ago.
const WINDOW: i64 = 24 * 3600;

/// How many seconds before the watermark each pass counts again: a result committed late
/// (a finish time taken before a slow commit, a node's clock a little behind) still lands
/// in its minute.
const LATE: i64 = 180;

/// How much one pass counts at most; catching up after a long stop takes several.
const PASS: i64 = 3600;

/// Times are seconds from this instant (`second n` is `EPOCH + INTERVAL n SECOND`): plain
/// DATETIME arithmetic, which no session time zone or daylight saving shift can bend, as
/// `UNIX_TIMESTAMP` and `FROM_UNIXTIME` would.
macro_rules! second {
    ($n:literal) => {
        concat!("('2000-01-01 00:00:00' + INTERVAL ", $n, " SECOND)")
    };
}

/// The finished statuses, as a condition served by `jobs_finished`.
macro_rules! finished_in {
    () => {
        concat!(
            "status IN (",
            st!(processed),
            ", ",
            st!(failed),
            ", ",
            st!(cancelled),
            ")"
        )
    };
}

/// Now, and the watermark: the time up to which the rollup has counted (0 before its
/// first pass).
const NOW_AND_MARK: &str = "SELECT TIMESTAMPDIFF(SECOND, '2000-01-01 00:00:00', UTC_TIMESTAMP()), \
     COALESCE((SELECT n FROM lightjobs_counts WHERE minute = '1000-01-01 00:00:00' \
     AND queue = '' AND status = 'watermark'), 0)";

/// The finished jobs of the window: the rollup's minutes that start before the watermark,
/// and the `jobs_finished` index from it (parameters: the window's start, the watermark,
/// the later of the two).
const FINISHED_COUNTS: &str = concat!(
    "SELECT queue, status, CAST(SUM(n) AS UNSIGNED) FROM (\
     SELECT queue, status, n FROM lightjobs_counts WHERE minute >= ",
    second!("?"),
    " AND minute < ",
    second!("?"),
    " UNION ALL ",
    "SELECT queue, status, COUNT(*) FROM jobs FORCE INDEX (jobs_finished) WHERE ",
    finished_in!(),
    " AND finished_at >= ",
    second!("?"),
    " GROUP BY queue, status) c GROUP BY queue, status"
);

/// The distinct (queue, status) pairs: a loose scan of `jobs_claim`, an entry per pair.
const PAIRS: &str = "SELECT DISTINCT queue, status FROM jobs FORCE INDEX (jobs_claim)";

/// The counts of `pairs` (queue, status) pairs, each from its range of `jobs_claim` alone
/// (parameters: each pair's queue and status, twice).
fn pair_counts(pairs: usize) -> String {
    // No GROUP BY: on one (queue, status) it would still sort, through a temporary table.
    let one = "SELECT ?, ?, COUNT(*) FROM jobs FORCE INDEX (jobs_claim) \
               WHERE queue = ? AND status = ?";
    vec![one; pairs].join(" UNION ALL ")
}

/// The jobs finished per minute in `[?, ?)`: the minute's start, queue, status, count.
const RECOUNT: &str = concat!(
    "SELECT TIMESTAMPDIFF(MINUTE, '2000-01-01 00:00:00', finished_at) * 60, queue, status, \
     COUNT(*) FROM jobs FORCE INDEX (jobs_finished) WHERE ",
    finished_in!(),
    " AND finished_at >= ",
    second!("?"),
    " AND finished_at < ",
    second!("?"),
    " GROUP BY 1, queue, status"
);

/// The statements that read `jobs` to count, for the plan checks of the tests (with
/// their parameters filled in): the distinct (queue, status) pairs, the count of one, the
/// finished jobs after the watermark, the rollup's recount.
pub fn counting_sql() -> [String; 4] {
    let fill = |sql: &str| sql.replace('?', "846000000"); // 2026, in seconds
    let pair = pair_counts(1)
        .replacen("?, ?", "'default', 'pending'", 1)
        .replacen('?', "'default'", 1)
        .replacen('?', "'pending'", 1);
    let tail = FINISHED_COUNTS
        .split(" UNION ALL ")
        .nth(1)
        .and_then(|s| s.rsplit_once(") c").map(|(a, _)| fill(a)))
        .unwrap_or_default();
    let recount = RECOUNT
        .replacen('?', "846000000", 1)
        .replacen('?', "846003600", 1);
    [PAIRS.to_owned(), pair, tail, recount]
}

impl Store {
    /// Jobs per queue and status: the waiting and running ones as they are now, the
    /// finished ones as finished since the start of the minute a day ago.
    pub async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.nodes
            .run(async |conn| {
                let mut counts = active_counts(conn).await?;
                let (now, mark): (i64, i64) =
                    conn.query_first(NOW_AND_MARK).await?.unwrap_or((0, 0));
                let from = now - now % 60 - WINDOW;
                let finished: Vec<QueueCount> = conn
                    .exec(FINISHED_COUNTS, (from, mark, mark.max(from)))
                    .await?;
                counts.extend(finished);
                counts.sort_by(|a, b| (&a.queue, &a.status).cmp(&(&b.queue, &b.status)));
                Ok(counts)
            })
            .await
    }

    /// Recounts the finished jobs from a little before the watermark (whole minutes, at
    /// most an hour's worth) and moves the watermark to where it stopped. Returns whether
    /// it reached now.
    pub async fn roll_up(&self) -> Result<bool> {
        let budget = self.nodes.deadlines().statement.saturating_mul(3);
        self.nodes
            .run_for(budget, async |conn| {
                let (now, mark): (i64, i64) =
                    conn.query_first(NOW_AND_MARK).await?.unwrap_or((0, 0));
                let start = |t: i64| t - t.rem_euclid(60);
                let from = start(mark - LATE).max(start(now) - WINDOW);
                let to = (from + PASS).min(now);
                if to > from {
                    recount(conn, from, to).await?;
                }
                Ok(to >= now)
            })
            .await
    }

    /// Deletes the rollup's minutes older than `age`.
    pub(crate) async fn prune_counts(&self, age: Duration) -> Result<u64> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    "DELETE FROM lightjobs_counts WHERE minute < UTC_TIMESTAMP() - INTERVAL ? \
                     SECOND AND minute > '1000-01-01 00:00:00'",
                    (age.as_secs(),),
                )
                .await?;
                Ok(conn.affected_rows())
            })
            .await
    }
}

/// The waiting and running jobs (every status but the finished ones) per queue.
async fn active_counts(conn: &mut Conn) -> Result<Vec<QueueCount>> {
    let pairs: Vec<(String, String)> = conn.query(PAIRS).await?;
    let active: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(_, s)| !Status::parse(s).is_some_and(Status::is_finished))
        .collect();
    if active.is_empty() {
        return Ok(Vec::new());
    }
    let params: Vec<Value> = active
        .iter()
        .flat_map(|(q, s)| [q, s, q, s].map(|v| Value::from(v.as_str())))
        .collect();
    let mut counts: Vec<QueueCount> = conn.exec(pair_counts(active.len()), params).await?;
    // A pair that emptied since it was seen.
    counts.retain(|c| c.count > 0);
    Ok(counts)
}

/// Replaces the minutes that `[from, to)` touches (`from` a minute's start) with a fresh
/// count, in one transaction, and moves the watermark to `to`.
async fn recount(conn: &mut Conn, from: i64, to: i64) -> Result<()> {
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let minutes: Vec<(i64, String, String, u64)> = tx.exec(RECOUNT, (from, to)).await?;
    tx.exec_drop(
        concat!(
            "DELETE FROM lightjobs_counts WHERE minute >= ",
            second!("?"),
            " AND minute < ",
            second!("?")
        ),
        (from, to),
    )
    .await?;
    if !minutes.is_empty() {
        tx.exec_batch(
            concat!(
                "INSERT INTO lightjobs_counts (minute, queue, status, n) VALUES (",
                second!("?"),
                ", ?, ?, ?)"
            ),
            minutes,
        )
        .await?;
    }
    tx.exec_drop(
        "INSERT INTO lightjobs_counts (minute, queue, status, n) \
         VALUES ('1000-01-01 00:00:00', '', 'watermark', ?) \
         ON DUPLICATE KEY UPDATE n = GREATEST(n, VALUES(n))",
        (to,),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
