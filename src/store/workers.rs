//! The `lightjobs_workers` table: one row per worker process, with its heartbeat.

use super::*;

impl Store {
    /// Registers or refreshes this process's row in `lightjobs_workers`, with the
    /// heartbeat interval and staleness every rescuer judges it by.
    /// Within the heartbeat interval at most: a beat that lands later is no use.
    pub(crate) async fn beat_worker(&self, worker: &WorkerInfo) -> Result<()> {
        let limit = worker.interval.min(self.nodes.deadlines().statement);
        self.nodes
            .run_for(limit, async |conn| {
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
            })
            .await
    }

    /// Marks this process's row stopped, with the claims its shutdown gave back but could
    /// not write: every rescuer takes them at once and returns their attempt.
    pub(crate) async fn leave_worker(&self, id: &str, left_behind: &[Held]) -> Result<()> {
        let list = left_behind
            .iter()
            .map(|(job, token)| format!("{job}:{token}"))
            .collect::<Vec<_>>()
            .join(",");
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    "UPDATE lightjobs_workers SET left_behind = ?, \
                     stopped_at = UTC_TIMESTAMP(6) WHERE id = ?",
                    (list, id),
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// Removes this process's row (clean shutdown) and rows dead for longer than `forget`.
    pub(crate) async fn delete_worker(&self, id: &str, forget: Duration) -> Result<()> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    "DELETE FROM lightjobs_workers WHERE id = ? \
                     OR heartbeat_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND",
                    (id, micros(forget)),
                )
                .await?;
                Ok(())
            })
            .await
    }
}
