//! The operator's reads and writes (the dashboard's and the CLI's): find, list, counts,
//! retry, cancel, discard.

use super::*;

pub(super) const RECORD_SELECT: &str =
    "SELECT id, name, queue, status, attempts, max_attempts, last_error, \
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

impl Store {
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
