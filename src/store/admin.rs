//! The operator's reads and writes (the dashboard's and the CLI's): find, list, counts,
//! retry, cancel, discard.

use super::*;

pub(super) const RECORD_SELECT: &str =
    "SELECT id, name, queue, status, attempts, max_attempts, last_error, \
     payload, DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), \
     DATE_FORMAT(scheduled_at, '%Y-%m-%d %H:%i:%s.%f'), \
     DATE_FORMAT(finished_at, '%Y-%m-%d %H:%i:%s.%f') FROM jobs";

/// A row of [`RECORD_SELECT`], decoded value by value and never refused: the operator
/// must be able to look at a row another program wrote badly. Text that is not UTF-8 is
/// shown with replacement characters; a value that does not decode as a number shows as
/// 0; a date that does not format (a zero date) as the text the server gave.
impl FromRow for JobRecord {
    fn from_row_opt(mut row: Row) -> std::result::Result<JobRecord, mysql_async::FromRowError> {
        let mut number = |i: usize| -> u64 { row.take_opt(i).and_then(|v| v.ok()).unwrap_or(0) };
        let id = number(0);
        let attempts = u32::try_from(number(4)).unwrap_or(u32::MAX);
        let max_attempts = u32::try_from(number(5)).unwrap_or(u32::MAX);
        let mut text = |i: usize| text(&mut row, i);
        Ok(JobRecord {
            id,
            name: text(1).unwrap_or_default(),
            queue: text(2).unwrap_or_default(),
            status: text(3).unwrap_or_default(),
            attempts,
            max_attempts,
            last_error: text(6),
            payload: text(7).unwrap_or_default(),
            created_at: text(8).unwrap_or_default(),
            scheduled_at: text(9).unwrap_or_default(),
            finished_at: text(10),
        })
    }
}

/// A row of `SELECT queue, status, COUNT(*)`, decoded like [`JobRecord`]'s.
impl FromRow for QueueCount {
    fn from_row_opt(mut row: Row) -> std::result::Result<QueueCount, mysql_async::FromRowError> {
        Ok(QueueCount {
            queue: text(&mut row, 0).unwrap_or_default(),
            status: text(&mut row, 1).unwrap_or_default(),
            count: row.take_opt(2).and_then(|v| v.ok()).unwrap_or(0),
        })
    }
}

impl Store {
    /// One job by id.
    pub(crate) async fn find_job(&self, id: u64) -> Result<Option<JobRecord>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .exec_first(format!("{RECORD_SELECT} WHERE id = ?"), (id,))
                    .await?)
            })
            .await
    }

    /// Jobs with `status`, newest first.
    pub(crate) async fn list_jobs(
        &self,
        status: &str,
        queue: Option<&str>,
        limit: u64,
    ) -> Result<Vec<JobRecord>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .exec(
                        format!(
                            "{RECORD_SELECT} WHERE status = ? AND (? IS NULL OR queue = ?) \
                             ORDER BY id DESC LIMIT ?"
                        ),
                        (status, queue, queue, limit),
                    )
                    .await?)
            })
            .await
    }

    /// `failed` → `pending` with a fresh set of attempts; `id` None retries all (of `queue`).
    pub(crate) async fn retry_failed(&self, id: Option<u64>, queue: Option<&str>) -> Result<u64> {
        self.nodes
            .run_for(crate::defaults::ADMIN_STATEMENT_TIMEOUT, async |conn| {
                conn.exec_drop(
                    concat!("UPDATE jobs SET status = ", st!(pending), ", attempts = 0, scheduled_at = UTC_TIMESTAMP(6), \
                     reserved_by = NULL, reserved_at = NULL, finished_at = NULL, claim_token = NULL, \
                     last_error = NULL \
                     WHERE status = ", st!(failed), " AND (? IS NULL OR id = ?) AND (? IS NULL OR queue = ?)"),
                    (id, id, queue, queue),
                )
                .await?;
                Ok(conn.affected_rows())
            })
            .await
    }

    /// `pending`/`scheduled` → `cancelled`. True when the job was waiting.
    pub(crate) async fn cancel_job(&self, id: u64) -> Result<bool> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    concat!(
                        "UPDATE jobs SET status = ",
                        st!(cancelled),
                        ", finished_at = UTC_TIMESTAMP(6), \
                     last_error = COALESCE(last_error, 'cancelled') \
                     WHERE id = ? AND status IN (",
                        st!(pending),
                        ", ",
                        st!(scheduled),
                        ")"
                    ),
                    (id,),
                )
                .await?;
                Ok(conn.affected_rows() == 1)
            })
            .await
    }

    /// Deletes a `failed` job. True when there was one.
    pub(crate) async fn discard_failed(&self, id: u64) -> Result<bool> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    concat!("DELETE FROM jobs WHERE id = ? AND status = ", st!(failed)),
                    (id,),
                )
                .await?;
                Ok(conn.affected_rows() == 1)
            })
            .await
    }

    /// Counts per queue and status.
    pub(crate) async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .query(
                        "SELECT queue, status, COUNT(*) FROM jobs GROUP BY queue, status \
                         ORDER BY queue, status",
                    )
                    .await?)
            })
            .await
    }
}
