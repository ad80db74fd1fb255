//! What the maintenance roles write: due jobs promoted, a Lightpack app's rows taken up,
//! jobs of dead processes rescued, finished jobs pruned, jobs of unknown types found.

use super::*;

/// What the rescuer reads to judge who is alive: each registered process and each holder
/// of a running job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Every row of `lightjobs_workers`.
    pub workers: Vec<WorkerSeen>,
    /// Every `reserved_by` of a `running` job (`None`: a row nobody holds).
    pub holders: Vec<Option<String>>,
}

/// One row of `lightjobs_workers` as the rescuer reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSeen {
    pub id: String,
    /// The heartbeat's value, compared, never read as a time.
    pub beat: String,
    /// After how long without a change it counts as dead.
    pub stale: Duration,
    /// It stopped, leaving claims behind: dead at once.
    pub stopped: bool,
    /// The claims its shutdown gave back but could not write, as `id:token,…`.
    pub left_behind: String,
}

/// `'id:token',…` from a stored `id:token,…` list, each pair parsed as numbers (anything
/// else is left out, so the list can be inlined); `''` when empty, to keep `IN ()` valid.
fn claim_list(stored: &str) -> String {
    let pairs: Vec<String> = stored
        .split(',')
        .filter_map(|pair| {
            let (id, token) = pair.trim().split_once(':')?;
            let (id, token): (u64, u64) = (id.parse().ok()?, token.parse().ok()?);
            Some(format!("'{id}:{token}'"))
        })
        .collect();
    if pairs.is_empty() {
        "''".to_owned()
    } else {
        pairs.join(",")
    }
}

/// Column `i` of `row` as text, whatever bytes it holds (`None` for NULL).
pub(super) fn text(row: &mut mysql_async::Row, i: usize) -> Option<String> {
    let bytes: Option<Vec<u8>> = row.take_opt(i).and_then(|v| v.ok());
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// ` AND queue IN (…) AND name NOT IN (…)`: the rows of `queues` no type in `names` runs.
/// The `scan` longest-waiting due jobs that are older than a bound (parameters: the age in
/// microseconds, `scan`), read in the order of the seed's `KEY status`.
const OLDEST_DUE: &str = concat!(
    "SELECT id, queue, name, scheduled_at FROM jobs \
     WHERE status = ",
    st!(pending),
    " AND scheduled_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
     ORDER BY scheduled_at LIMIT ?"
);

pub(super) fn foreign_filter(queues: &[String], names: &[&str]) -> String {
    let queues = queues
        .iter()
        .map(|q| sql_string(q))
        .collect::<Vec<_>>()
        .join(",");
    // Byte for byte, as the claim matches them: `sleepy ` is not `sleepy`.
    format!(
        " AND queue IN ({queues}) AND CAST(name AS BINARY) NOT IN ({})",
        bytes_list(names.iter().copied())
    )
}

impl Store {
    /// Moves `scheduled` jobs that are due to `pending`, oldest first, at most `limit`.
    /// Served by the seed's `KEY status (status, scheduled_at)`: a range read of due rows.
    pub(crate) async fn promote_scheduled(&self, limit: u64) -> Result<u64> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    concat!(
                        "UPDATE jobs SET status = ",
                        st!(pending),
                        " WHERE status = ",
                        st!(scheduled),
                        " \
                     AND scheduled_at <= UTC_TIMESTAMP(6) ORDER BY scheduled_at LIMIT ?"
                    ),
                    (limit,),
                )
                .await?;
                Ok(conn.affected_rows())
            })
            .await
    }

    /// Takes up rows a Lightpack app still writes during a move (the seed's columns only,
    /// status `new`): due ones become `pending`, later ones `scheduled`. The seed's
    /// `KEY status` serves it; with no such rows it reads one index entry.
    pub(crate) async fn adopt_seed_rows(&self, limit: u64) -> Result<u64> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    concat!(
                        "UPDATE jobs SET status = IF(scheduled_at <= UTC_TIMESTAMP(6), ",
                        st!(pending),
                        ", ",
                        st!(scheduled),
                        ") \
                     WHERE status = 'new' ORDER BY scheduled_at LIMIT ?"
                    ),
                    (limit,),
                )
                .await?;
                Ok(conn.affected_rows())
            })
            .await
    }

    /// Due jobs on `queues` of types not in `names` among the `scan` longest-waiting due
    /// jobs older than `older`: (queue, name, how many, longest wait). The inner read walks
    /// the seed's `KEY status` from the oldest due row and stops after `scan` rows, so a
    /// large backlog of this process's own jobs costs at most `scan` index entries.
    pub(crate) async fn foreign_waiting(
        &self,
        queues: &[String],
        names: &[&str],
        older: Duration,
        scan: u64,
    ) -> Result<Vec<(String, String, u64, Duration)>> {
        self.nodes
            .run(async |conn| {
                let rows: Vec<Row> = conn
                    .exec(
                        format!(
                            "SELECT queue, name, COUNT(*), \
                             TIMESTAMPDIFF(MICROSECOND, MIN(scheduled_at), UTC_TIMESTAMP(6)) \
                             FROM ({}) head WHERE TRUE{} \
                             GROUP BY queue, name ORDER BY queue, name LIMIT 100",
                            OLDEST_DUE,
                            foreign_filter(queues, names)
                        ),
                        (micros(older), scan),
                    )
                    .await?;
                // Decoded value by value: a zero date gives a NULL wait, a name another
                // program wrote may not be UTF-8.
                Ok(rows
                    .into_iter()
                    .map(|mut row| {
                        let queue = text(&mut row, 0).unwrap_or_default();
                        let name = text(&mut row, 1).unwrap_or_default();
                        let n: u64 = row.take_opt(2).and_then(|v| v.ok()).unwrap_or(0);
                        let waited: Option<i64> = row.take_opt(3).and_then(|v| v.ok());
                        let waited = waited.map_or(0, |us| u64::try_from(us).unwrap_or(0));
                        (queue, name, n, Duration::from_micros(waited))
                    })
                    .collect())
            })
            .await
    }

    /// Fails the due jobs on `queues` of types not in `names`, among the `scan`
    /// longest-waiting due jobs older than `older`; returns how many. The ids are read
    /// first (bounded as in [`foreign_waiting`](Self::foreign_waiting)); a worker that
    /// claimed one meanwhile has it `running`, so the status guard leaves it alone.
    pub(crate) async fn fail_foreign(
        &self,
        queues: &[String],
        names: &[&str],
        older: Duration,
        scan: u64,
    ) -> Result<u64> {
        self.nodes
            .run(async |conn| {
                let ids: Vec<u64> = conn
                    .exec(
                        format!(
                            "SELECT id FROM ({}) head WHERE TRUE{}",
                            OLDEST_DUE,
                            foreign_filter(queues, names)
                        ),
                        (micros(older), scan),
                    )
                    .await?;
                if ids.is_empty() {
                    return Ok(0);
                }
                conn.exec_drop(
                    format!(
                        concat!("UPDATE jobs SET status = ", st!(failed), ", finished_at = UTC_TIMESTAMP(6), \
                         last_error = CONCAT('unknown job `', name, '`: no worker running this job type \
                         took it within ', ?, ' (Workers::fail_unknown_after)') \
                         WHERE id IN ({}) AND status = ", st!(pending)),
                        id_list(ids.into_iter())
                    ),
                    (format!("{older:?}"),),
                )
                .await?;
                Ok(conn.affected_rows())
            })
            .await
    }

    /// Every registered process with the value of its heartbeat (compared, never read as
    /// a time: it was stamped by whichever node's clock took the write) and its
    /// staleness (`stale` for rows that do not say), and every holder of a `running` job
    /// (`None` for a row no process holds). Read through the seed's `KEY status`, so the
    /// cost is the running jobs, not the table.
    pub(crate) async fn read_liveness(&self, stale: Duration) -> Result<Liveness> {
        self.nodes
            .run(async |conn| {
                let rows: Vec<mysql_async::Row> = conn
                    .exec(
                        "SELECT id, DATE_FORMAT(heartbeat_at, '%Y%m%d%H%i%s%f'), \
                         COALESCE(stale_after_us, ?), stopped_at IS NOT NULL, left_behind \
                         FROM lightjobs_workers",
                        (micros(stale),),
                    )
                    .await?;
                let workers = rows
                    .into_iter()
                    .filter_map(|mut row| {
                        let id = text(&mut row, 0)?;
                        let beat = text(&mut row, 1).unwrap_or_default();
                        let stale_us: Option<i64> = row.take_opt(2).and_then(|v| v.ok());
                        let stale = stale_us.map_or(stale, |us| {
                            Duration::from_micros(u64::try_from(us).unwrap_or(0))
                        });
                        let stopped: Option<i64> = row.take_opt(3).and_then(|v| v.ok());
                        let left_behind = text(&mut row, 4).unwrap_or_default();
                        Some(WorkerSeen {
                            id,
                            beat,
                            stale,
                            stopped: stopped.unwrap_or(0) != 0,
                            left_behind,
                        })
                    })
                    .collect();
                let holders: Vec<Option<Vec<u8>>> = conn
                    .query(concat!(
                        "SELECT DISTINCT reserved_by FROM jobs FORCE INDEX (status) \
                         WHERE status = ",
                        st!(running)
                    ))
                    .await?;
                let holders = holders
                    .into_iter()
                    .map(|h| h.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect();
                Ok(Liveness { workers, holders })
            })
            .await
    }

    /// Returns the `running` jobs of `holder`, a process judged dead, to `pending` (or
    /// `failed` when that was their last attempt), at most `limit`; returns (to pending,
    /// to failed). Guarded by what the judgement saw: the holder's heartbeat still has
    /// the value `beat` (`None`: the holder still has no row), so a process that beat
    /// again meanwhile keeps its jobs. The claims in `given_back` (`id:token,…`: runs its
    /// shutdown cut short and could not release) get their attempt back and never fail.
    pub async fn rescue_holder(
        &self,
        holder: Option<&str>,
        beat: Option<&str>,
        given_back: &str,
        limit: u64,
    ) -> Result<(u64, u64)> {
        let given_back = claim_list(given_back);
        let who = match holder {
            Some(h) => format!("reserved_by = {}", sql_string(h)),
            None => "reserved_by IS NULL".to_owned(),
        };
        let still = match (holder, beat) {
            (Some(h), Some(beat)) => format!(
                "EXISTS (SELECT 1 FROM lightjobs_workers w WHERE w.id = {} \
                 AND DATE_FORMAT(w.heartbeat_at, '%Y%m%d%H%i%s%f') <=> {})",
                sql_string(h),
                sql_string(beat)
            ),
            (Some(h), None) => format!(
                "NOT EXISTS (SELECT 1 FROM lightjobs_workers w WHERE w.id = {})",
                sql_string(h)
            ),
            (None, _) => "TRUE".to_owned(),
        };
        let dead_holder = format!(
            concat!("status = ", st!(running), " AND {who} AND {still}"),
            who = who,
            still = still
        );
        let returned = format!("CONCAT(id, ':', COALESCE(claim_token, 0)) IN ({given_back})");
        self.nodes
            .run(async |conn| {
                let ids: Vec<u64> = conn
                    .query(format!(
                        "SELECT id FROM jobs FORCE INDEX (status) WHERE {dead_holder} \
                         ORDER BY id LIMIT {limit}"
                    ))
                    .await?;
                if ids.is_empty() {
                    return Ok((0, 0));
                }
                let ids = id_list(ids.into_iter());
                let died = "CONCAT('worker ', COALESCE(reserved_by, '?'), ' stopped heartbeating \
                     while running this job";
                // The token stays: a run that still finishes (its process had stalled, not
                // died) can record its success while the job has not been claimed again.
                conn.query_drop(format!(
                    concat!(
                        "UPDATE jobs SET status = ",
                        st!(failed),
                        ", finished_at = UTC_TIMESTAMP(6), \
                     last_error = {died}, its last attempt') \
                     WHERE id IN ({ids}) AND attempts >= max_attempts AND NOT {returned} \
                     AND {dead_holder}"
                    ),
                    died = died,
                    ids = ids,
                    returned = returned,
                    dead_holder = dead_holder
                ))
                .await?;
                let failed = conn.affected_rows();
                conn.query_drop(format!(
                    concat!(
                        "UPDATE jobs SET status = ",
                        st!(pending),
                        ", \
                     attempts = IF({returned}, GREATEST(attempts, 1) - 1, attempts), \
                     last_error = IF({returned}, last_error, {died}')), reserved_by = NULL, \
                     reserved_at = NULL, scheduled_at = UTC_TIMESTAMP(6) \
                     WHERE id IN ({ids}) AND {dead_holder}"
                    ),
                    returned = returned,
                    died = died,
                    ids = ids,
                    dead_holder = dead_holder
                ))
                .await?;
                Ok((conn.affected_rows(), failed))
            })
            .await
    }

    /// The claims `worker` holds in the table: every `running` row under its id, read
    /// through the seed's `KEY status` (the running jobs, not the table).
    pub(crate) async fn held_by(&self, worker: &str) -> Result<Vec<Held>> {
        self.nodes
            .run(async |conn| {
                let rows: Vec<(u64, Option<u64>)> = conn
                    .exec(
                        concat!(
                            "SELECT id, claim_token FROM jobs FORCE INDEX (status) \
                         WHERE status = ",
                            st!(running),
                            " AND reserved_by = ?"
                        ),
                        (worker,),
                    )
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, token)| (id, token.unwrap_or(0)))
                    .collect())
            })
            .await
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
        let targets = [
            (Status::Processed, Some(processed_age)),
            (Status::Cancelled, Some(processed_age)),
            (Status::Failed, failed_age),
        ];
        for (status, age) in targets {
            let Some(age) = age else { continue };
            // One batch per operation, each under its own deadline.
            loop {
                let (deleted, more) = self.prune_batch(status.as_str(), age, batch).await?;
                total += deleted;
                if !more {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Deletes up to `batch` rows of `status` finished more than `age` ago; returns how
    /// many, and whether the batch was full (there may be more).
    async fn prune_batch(&self, status: &str, age: Duration, batch: u64) -> Result<(u64, bool)> {
        self.nodes
            .run(async |conn| {
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
                    return Ok((0, false));
                }
                conn.exec_drop(
                    format!(
                        "DELETE FROM jobs WHERE id IN ({}) AND status = ? \
                         AND (unique_until IS NULL OR unique_until <= UTC_TIMESTAMP(6))",
                        id_list(ids.iter().copied())
                    ),
                    (status,),
                )
                .await?;
                Ok((conn.affected_rows(), ids.len() as u64 >= batch))
            })
            .await
    }
}
