//! What the rescuer reads and writes: who is alive (each registered process's heartbeat
//! value, each holder of a running job), the rescue of a dead holder's jobs, and the
//! running rows a process holds (for its reconciler).

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

/// The rows of `holder` (`reserved_by`), and the condition that it is still as judged:
/// its heartbeat still has the value `beat`, or it still has no row.
fn holder_guard(holder: Option<&str>, beat: Option<&str>) -> (String, String) {
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
    (who, still)
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

impl Store {
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
        let (who, still) = holder_guard(holder, beat);
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
                     AND cancel_requested_at IS NULL \
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
                        "UPDATE jobs SET {back}, \
                     attempts = IF({returned}, GREATEST(attempts, 1) - 1, attempts), \
                     last_error = IF({returned}, last_error, {died}')), reserved_by = NULL, \
                     reserved_at = NULL, scheduled_at = UTC_TIMESTAMP(6) \
                     WHERE id IN ({ids}) AND {dead_holder}"
                    ),
                    back = super::cancel::back_unless_cancelled(st!(pending)),
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
}
