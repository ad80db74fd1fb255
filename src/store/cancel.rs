//! Cancelling: a waiting job (pending, scheduled, blocked, awaiting) is cancelled at once; a running one gets a request
//! (`cancel_requested_at`) that the process running it reads and acts on, and that turns
//! every give-back of the row (a retry, a snooze, a release, a rescue) into `cancelled`.

use super::*;

/// `status = …, finished_at = …` for a row a run gives back to `waiting` (an SQL
/// expression: `pending`, `scheduled`, or an `IF` of them): `cancelled` instead, finished
/// now, when a cancel was requested while it ran. The request is the operator's last
/// word: the job must not run again because its run failed before the request reached it.
pub(super) fn back_unless_cancelled(waiting: &str) -> String {
    format!(
        concat!(
            "finished_at = IF(cancel_requested_at IS NULL, finished_at, UTC_TIMESTAMP(6)), \
             status = IF(cancel_requested_at IS NULL, {}, ",
            st!(cancelled),
            ")"
        ),
        waiting
    )
}

impl Store {
    /// Cancels a job: a waiting one (`pending`, `scheduled`, `blocked`, `awaiting`) becomes
    /// `cancelled`; a running one gets a cancel request, which its process acts on. One
    /// statement, so a row that moves between the two meanwhile is never missed. True
    /// when either happened (false: finished, unknown, or already requested).
    pub(crate) async fn cancel_job(&self, id: u64) -> Result<bool> {
        // MariaDB and MySQL assign left to right, each expression seeing the columns as
        // already set: `status` goes last so the others still see the old one.
        let waiting = concat!("status IN (", waiting_list!(), ")");
        let sql = format!(
            concat!(
                "UPDATE jobs SET \
                 cancel_requested_at = IF(status = ",
                st!(running),
                ", COALESCE(cancel_requested_at, UTC_TIMESTAMP(6)), cancel_requested_at), \
                 finished_at = IF({waiting}, UTC_TIMESTAMP(6), finished_at), \
                 last_error = IF({waiting}, COALESCE(last_error, 'cancelled'), last_error), \
                 status = IF({waiting}, ",
                st!(cancelled),
                ", status) \
                 WHERE id = ? AND (status = ",
                st!(running),
                " OR {waiting})"
            ),
            waiting = waiting
        );
        self.nodes
            .run(async |conn| {
                conn.exec_drop(sql.as_str(), (id,)).await?;
                Ok(conn.affected_rows() == 1)
            })
            .await
    }

    /// Which of `held` (this process's running claims) have a cancel request.
    pub(crate) async fn cancel_requests(&self, held: &[Held]) -> Result<Vec<Held>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            concat!(
                "SELECT id, COALESCE(claim_token, 0) FROM jobs WHERE {} AND status = ",
                st!(running),
                " AND cancel_requested_at IS NOT NULL"
            ),
            token_match(held)
        );
        self.nodes
            .run(async |conn| Ok(conn.query(sql.as_str()).await?))
            .await
    }

    /// A run stopped by its cancel request: `cancelled`, its attempt given back (a
    /// cancel is not a failure).
    pub(crate) async fn mark_cancelled(&self, held: Held, worker: &str) -> Result<Guarded> {
        self.guarded(
            format!(
                concat!(
                    "UPDATE jobs SET status = ",
                    st!(cancelled),
                    ", finished_at = UTC_TIMESTAMP(6), \
                     attempts = GREATEST(attempts, 1) - 1, \
                     last_error = 'cancelled while running' WHERE {}"
                ),
                claim_guard(&[held], worker)
            ),
            Vec::new(),
        )
        .await
    }
}
