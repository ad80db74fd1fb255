//! The results of runs, each write guarded by the claim it belongs to: processed, retry,
//! snooze, failed, and jobs given back (a shutdown, a handoff whose worker had gone).

use super::cancel::back_unless_cancelled;
use super::claim::written_successes;
use super::*;

/// Characters of each error kept in `errors` (the last one is in `last_error` in full).
const HISTORY_CHARS: usize = 4000;

/// `errors = <errors with this attempt's error appended, the oldest dropped past
/// [`ERROR_HISTORY`](crate::defaults::ERROR_HISTORY)>`
/// (parameter: the error). A value that is not a JSON array (another program's) starts
/// the history again.
const ERRORS_APPEND: &str = "errors = JSON_ARRAY_APPEND(\
     IF(JSON_TYPE(errors) <=> 'ARRAY', \
        IF(JSON_LENGTH(errors) >= 10, JSON_REMOVE(errors, '$[0]'), errors), '[]'), \
     '$', JSON_OBJECT('attempt', attempts, \
        'at', DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f'), 'error', ?))";

/// The first [`HISTORY_CHARS`] characters of `error`.
fn history_error(error: &str) -> &str {
    error
        .char_indices()
        .nth(HISTORY_CHARS)
        .map_or(error, |(end, _)| &error[..end])
}

impl Store {
    /// Marks jobs `processed`; returns the ids written (still held by these claims, or
    /// taken by a rescuer and not claimed since).
    pub async fn mark_completed(&self, held: &[Held]) -> Result<Vec<u64>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        self.nodes
            .run(async |conn| {
                conn.query_drop(format!(
                    concat!(
                        "UPDATE jobs SET status = ",
                        st!(processed),
                        ", finished_at = UTC_TIMESTAMP(6) WHERE {}"
                    ),
                    success_guard(held)
                ))
                .await?;
                if conn.affected_rows() == held.len() as u64 {
                    return Ok(held.iter().map(|h| h.0).collect());
                }
                written_successes(conn, held).await
            })
            .await
    }

    /// Back to `pending` (or `scheduled`, when `delay` is not zero), keeping the error;
    /// `cancelled` if a cancel was requested meanwhile.
    pub(crate) async fn mark_retry(
        &self,
        held: Held,
        worker: &str,
        error: &str,
        delay: Duration,
    ) -> Result<Guarded> {
        let status = if delay.is_zero() {
            st!(pending)
        } else {
            st!(scheduled)
        };
        self.guarded(
            format!(
                "UPDATE jobs SET {}, last_error = ?, {ERRORS_APPEND}, reserved_by = NULL, \
                 reserved_at = NULL, scheduled_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE {}",
                back_unless_cancelled(status),
                claim_guard(&[held], worker)
            ),
            vec![
                truncate_error(error).into(),
                history_error(error).into(),
                micros(delay).into(),
            ],
        )
        .await
    }

    /// Back to `scheduled` after `delay`, giving the attempt back (a snooze is not a
    /// failure); `cancelled` if a cancel was requested meanwhile.
    pub(crate) async fn mark_snoozed(
        &self,
        held: Held,
        worker: &str,
        delay: Duration,
    ) -> Result<Guarded> {
        self.guarded(
            format!(
                "UPDATE jobs SET {}, \
                 attempts = GREATEST(attempts, 1) - 1, reserved_by = NULL, reserved_at = NULL, \
                 scheduled_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE {}",
                back_unless_cancelled(concat!(
                    "IF(? > 0, ",
                    st!(scheduled),
                    ", ",
                    st!(pending),
                    ")"
                )),
                claim_guard(&[held], worker)
            ),
            vec![micros(delay).into(), micros(delay).into()],
        )
        .await
    }

    /// Stores a run's `output` (JSON) while its claim still runs the job.
    pub(crate) async fn record_output(&self, held: Held, output: &str) -> Result<Guarded> {
        self.guarded(
            format!(
                concat!(
                    "UPDATE jobs SET output = ? WHERE {} AND status = ",
                    st!(running)
                ),
                token_match(&[held])
            ),
            vec![output.into()],
        )
        .await
    }

    /// `failed`, with the error.
    pub(crate) async fn mark_failed(
        &self,
        held: Held,
        worker: &str,
        error: &str,
    ) -> Result<Guarded> {
        self.guarded(
            format!(
                concat!(
                    "UPDATE jobs SET status = ",
                    st!(failed),
                    ", last_error = ?, {}, \
                 finished_at = UTC_TIMESTAMP(6) WHERE {}"
                ),
                ERRORS_APPEND,
                claim_guard(&[held], worker)
            ),
            vec![truncate_error(error).into(), history_error(error).into()],
        )
        .await
    }

    /// Back to `pending` at once without spending the attempt (shutdown, or a claim whose
    /// commit may or may not have happened); `cancelled` if a cancel was requested.
    pub async fn release_jobs(&self, held: &[Held], worker: &str) -> Result<u64> {
        if held.is_empty() {
            return Ok(0);
        }
        self.nodes
            .run(async |conn| {
                conn.query_drop(format!(
                    "UPDATE jobs SET {}, attempts = GREATEST(attempts, 1) - 1, \
                     reserved_by = NULL, reserved_at = NULL WHERE {}",
                    back_unless_cancelled(st!(pending)),
                    claim_guard(held, worker)
                ))
                .await?;
                Ok(conn.affected_rows())
            })
            .await
    }

    /// Gives back a handed-off job that never reached its worker: `pending`, attempt
    /// returned. Matches nothing if the INSERT never happened or the job has moved on.
    pub async fn release_handoff(&self, queue: &str, worker: &str, token: u64) -> Result<u64> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(
                    format!(
                        concat!(
                            "UPDATE jobs FORCE INDEX (jobs_claim) SET {}, attempts = 0, \
                         reserved_by = NULL, reserved_at = NULL, claim_token = NULL \
                         WHERE queue = ? AND status = ",
                            st!(running),
                            " AND claim_token = ? AND reserved_by = ? AND attempts = 1"
                        ),
                        back_unless_cancelled(st!(pending))
                    ),
                    (queue, token, worker),
                )
                .await?;
                Ok(conn.affected_rows())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_its_documented_length() {
        let kept = format!(">= {}", crate::defaults::ERROR_HISTORY);
        assert!(ERRORS_APPEND.contains(&kept));
        assert_eq!(
            history_error(&"é".repeat(5000)).chars().count(),
            HISTORY_CHARS
        );
        assert_eq!(history_error("short"), "short");
    }
}
