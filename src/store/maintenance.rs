//! What the maintenance roles write: due jobs promoted, a Lightpack app's rows taken up,
//! jobs of dead processes rescued, finished jobs pruned, jobs of unknown types found.

use super::*;

/// ` AND queue IN (…) AND name NOT IN (…)`: the rows of `queues` no type in `names` runs.
/// The `scan` longest-waiting due jobs that are older than a bound (parameters: the age in
/// microseconds, `scan`), read in the order of the seed's `KEY status`.
const OLDEST_DUE: &str = "SELECT id, queue, name, scheduled_at FROM jobs \
     WHERE status = 'pending' AND scheduled_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
     ORDER BY scheduled_at LIMIT ?";

pub(super) fn foreign_filter(queues: &[String], names: &[&str]) -> String {
    let list =
        |items: &mut dyn Iterator<Item = &str>| items.map(sql_string).collect::<Vec<_>>().join(",");
    format!(
        " AND queue IN ({}) AND name NOT IN ({})",
        list(&mut queues.iter().map(String::as_str)),
        list(&mut names.iter().copied())
    )
}

impl Store {
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
        let mut conn = self.nodes.get_conn().await?;
        let rows: Vec<(String, String, u64, i64)> = conn
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
        Ok(rows
            .into_iter()
            .map(|(queue, name, n, waited)| {
                let waited = Duration::from_micros(u64::try_from(waited).unwrap_or(0));
                (queue, name, n, waited)
            })
            .collect())
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
        let mut conn = self.nodes.get_conn().await?;
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
                "UPDATE jobs SET status = 'failed', finished_at = UTC_TIMESTAMP(6), \
                 last_error = CONCAT('unknown job `', name, '`: no worker running this job type \
                 took it within ', ?, ' (Workers::fail_unknown_after)') \
                 WHERE id IN ({}) AND status = 'pending'",
                id_list(ids.into_iter())
            ),
            (format!("{older:?}"),),
        )
        .await?;
        Ok(conn.affected_rows())
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
}
