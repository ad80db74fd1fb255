//! What the maintenance roles write: due jobs promoted, a Lightpack app's rows taken up,
//! jobs of dead processes rescued, finished jobs pruned, jobs of unknown types found.

use super::*;

/// Due jobs of one queue and one type no worker here runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForeignGroup {
    pub(crate) queue: String,
    pub(crate) name: String,
    pub(crate) jobs: u64,
    /// How long the oldest has been due.
    pub(crate) waited: Duration,
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
    ) -> Result<Vec<ForeignGroup>> {
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
                        ForeignGroup {
                            queue,
                            name,
                            jobs: n,
                            waited: Duration::from_micros(waited),
                        }
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
        let batches = self.prune_batches(processed_age, batch).await?;
        let keys = self.prune_flow_keys(processed_age, batch).await?;
        if keys > 0 {
            tracing::debug!(target: "lightjobs::pruner", rows = keys, "pruned idle flow keys and old starts");
        }
        Ok(total + batches)
    }

    /// Deletes the rows of flow keys unused for `age` that no waiting or running job
    /// carries and no pause holds, and the starts older than the longest rate window. A
    /// claim of a key locks its row and marks it used, so this DELETE either waits for it
    /// and keeps the row, or goes first, and the claim writes the row again.
    async fn prune_flow_keys(&self, age: Duration, batch: u64) -> Result<u64> {
        let keys = concat!(
            "DELETE FROM lightjobs_flow_keys \
             WHERE used_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
             AND (paused_until IS NULL OR paused_until < UTC_TIMESTAMP(6)) \
             AND NOT EXISTS (SELECT 1 FROM jobs FORCE INDEX (jobs_flow) \
             WHERE jobs.flow_key = lightjobs_flow_keys.flow_key AND jobs.status IN (",
            waiting_list!(),
            ", ",
            st!(running),
            ")) LIMIT ?"
        );
        let window = micros(crate::flow::MAX_RATE_WINDOW);
        self.nodes
            .run(async |conn| {
                conn.exec_drop(keys, (micros(age), batch)).await?;
                let keys = conn.affected_rows();
                conn.exec_drop(
                    "DELETE FROM lightjobs_flow_starts \
                     WHERE started_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?",
                    (window, batch),
                )
                .await?;
                Ok(keys + conn.affected_rows())
            })
            .await
    }

    /// Deletes batches finished more than `age` ago none of whose jobs are left (its
    /// failed jobs keep it while they are kept).
    async fn prune_batches(&self, age: Duration, batch: u64) -> Result<u64> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    "DELETE FROM lightjobs_batches WHERE finished_at IS NOT NULL \
                     AND finished_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
                     AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.batch_id = lightjobs_batches.id) \
                     ORDER BY finished_at LIMIT ?",
                    (micros(age), batch),
                )
                .await?;
                Ok(conn.affected_rows())
            })
            .await
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
