//! The `lightjobs_queues` table: paused queues and limits across processes.

use super::*;

/// A row of `lightjobs_queues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueSetting {
    pub(crate) queue: String,
    pub(crate) paused: bool,
    /// The limit across processes, if any.
    pub(crate) limit: Option<u32>,
}

impl Store {
    /// Pauses or resumes a queue for every process.
    pub(crate) async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    "INSERT INTO lightjobs_queues (queue, paused, updated_at) \
                     VALUES (?, ?, UTC_TIMESTAMP(6)) \
                     ON DUPLICATE KEY UPDATE paused = VALUES(paused), updated_at = VALUES(updated_at)",
                    (queue, paused),
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// Sets or clears a queue's limit across processes.
    pub(crate) async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    "INSERT INTO lightjobs_queues (queue, paused, global_limit, updated_at) \
                     VALUES (?, 0, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE \
                     global_limit = VALUES(global_limit), updated_at = VALUES(updated_at)",
                    (queue, limit),
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// Makes the claim turns of each of `queues` (see [`TURNS`](super::claim::TURNS)) that
    /// are missing: once per queue for the table's life, as rows are only ever locked after.
    /// Those present are found by a plain read first, because an `INSERT IGNORE` of a row
    /// that exists waits for its lock, and a stalled claimer may hold it.
    pub(crate) async fn add_claim_turns(&self, queues: &[String]) -> Result<()> {
        self.nodes
            .run(async |conn| {
                let present: Vec<(String, u8)> = conn
                    .query(format!(
                        "SELECT queue, turn FROM lightjobs_claim_turns WHERE queue IN ({})",
                        queues
                            .iter()
                            .map(|q| sql_string(q))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .await?;
                let missing = queues
                    .iter()
                    .flat_map(|q| (0..super::claim::TURNS).map(move |t| (q.clone(), t)));
                let missing: Vec<(String, u8)> =
                    missing.filter(|row| !present.contains(row)).collect();
                conn.exec_batch(
                    "INSERT IGNORE INTO lightjobs_claim_turns (queue, turn) VALUES (?, ?)",
                    missing,
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// The settings of every queue that has some.
    pub(crate) async fn queue_settings(&self) -> Result<Vec<QueueSetting>> {
        self.nodes
            .run(async |conn| {
                // Read as wide integers: a value written by hand (paused = 2, a negative limit)
                // must not make the decoding panic in the maintenance thread.
                let rows: Vec<(String, Option<i64>, Option<i64>)> = conn
                    .query("SELECT queue, paused + 0, global_limit + 0 FROM lightjobs_queues")
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(queue, paused, limit)| {
                        let limit = limit.map(|l| u32::try_from(l.max(0)).unwrap_or(u32::MAX));
                        QueueSetting {
                            queue,
                            paused: paused.unwrap_or(0) != 0,
                            limit,
                        }
                    })
                    .collect())
            })
            .await
    }

    /// The paused queues.
    pub(crate) async fn paused_queues(&self) -> Result<Vec<String>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .query("SELECT queue FROM lightjobs_queues WHERE paused <> 0 ORDER BY queue")
                    .await?)
            })
            .await
    }
}
