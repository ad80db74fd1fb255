//! The operator's reads and writes (the dashboard's and the CLI's): find, list, counts,
//! retry, discard (cancelling is `cancel`'s).

use super::*;

/// A row of [`Store::waiting_jobs`]: id, name, payload, queue, priority, max_attempts,
/// delay in µs, unique key, flow key, traceparent, tags, meta.
pub(crate) type WaitingRow = (
    u64,
    String,
    String,
    String,
    i16,
    u32,
    u64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub(super) const RECORD_SELECT: &str =
    "SELECT id, name, queue, status, attempts, max_attempts, last_error, \
     payload, DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), \
     DATE_FORMAT(scheduled_at, '%Y-%m-%d %H:%i:%s.%f'), \
     DATE_FORMAT(finished_at, '%Y-%m-%d %H:%i:%s.%f'), tags, meta, output, \
     batch_id, after_job, after_batch, errors FROM jobs";

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
        let mut link = |i: usize| -> Option<u64> { row.take_opt(i).and_then(|v| v.ok()) };
        let links = [link(14), link(15), link(16)];
        let errors: Vec<crate::store::AttemptError> = text(&mut row, 17)
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
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
            tags: split_tags(text(11).as_deref()),
            meta: text(12),
            output: text(13),
            batch: links[0],
            after_job: links[1],
            after_batch: links[2],
            errors,
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

/// A page of `status` (see [`Store::list_jobs`]): the statement, in the order of the index
/// that serves it (parameters: status, queue twice, tag twice, the cursor's time three
/// times and id, the limit). A tag is matched within the status's range: a page with a
/// tag reads the rows of the status until it has found its jobs.
pub fn list_sql(status: &str) -> String {
    let (index, column) = if is_finished(status) {
        ("jobs_finished", "finished_at")
    } else {
        ("status", "scheduled_at")
    };
    format!(
        "{RECORD_SELECT} FORCE INDEX ({index}) WHERE status = ? AND (? IS NULL OR queue = ?) \
         AND (? IS NULL OR FIND_IN_SET(?, tags) > 0) AND (? IS NULL OR {column} < ? OR ({column} = ? AND id < ?)) \
         ORDER BY {column} DESC, id DESC LIMIT ?"
    )
}

fn is_finished(status: &str) -> bool {
    Status::parse(status).is_some_and(Status::is_finished)
}

/// Where a page ends: the job's time in the page's order and its id, as text.
fn cursor(status: &str, job: &JobRecord) -> String {
    let at = if is_finished(status) {
        job.finished_at.clone().unwrap_or_default()
    } else {
        job.scheduled_at.clone()
    };
    format!("{at}|{}", job.id)
}

fn parse_cursor(cursor: &str) -> Option<(String, u64)> {
    let (at, id) = cursor.rsplit_once('|')?;
    Some((at.to_owned(), id.parse().ok()?))
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

    /// Jobs with `status`, newest first (by `finished_at` for finished jobs, `scheduled_at`
    /// for the others), `limit` of them after the cursor `after` (from an earlier page).
    /// The index of the status serves the WHERE and the ORDER BY, so a page reads about
    /// its own rows, however many the table keeps. Returns the page and the cursor of the
    /// next one (`None`: this was the last).
    pub(crate) async fn list_jobs(
        &self,
        status: &str,
        queue: Option<&str>,
        tag: Option<&str>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<(Vec<JobRecord>, Option<String>)> {
        let sql = list_sql(status);
        let (at, id) = match after.and_then(parse_cursor) {
            Some((at, id)) => (Some(at), Some(id)),
            None => (None, None),
        };
        let jobs: Vec<JobRecord> = self
            .nodes
            .run(async |conn| {
                Ok(conn
                    .exec(
                        sql,
                        (status, queue, queue, tag, tag, &at, &at, &at, id, limit),
                    )
                    .await?)
            })
            .await?;
        let next = (jobs.len() as u64 == limit && limit > 0)
            .then(|| jobs.last().map(|j| cursor(status, j)))
            .flatten();
        Ok((jobs, next))
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

    /// Every job not yet run (`pending`, `scheduled`, `blocked`), in dispatch order: what
    /// a test asserts was dispatched. Text that is not UTF-8 is refused, as a test should.
    pub(crate) async fn waiting_jobs(&self) -> Result<Vec<WaitingRow>> {
        self.nodes
            .run(async |conn| {
                Ok(conn
                    .query(concat!(
                        "SELECT id, name, payload, queue, priority, max_attempts, \
                         GREATEST(TIMESTAMPDIFF(MICROSECOND, created_at, scheduled_at), 0), \
                         unique_key, flow_key, trace_parent, tags, meta FROM jobs WHERE status IN (",
                        st!(pending),
                        ", ",
                        st!(scheduled),
                        ", ",
                        st!(blocked),
                        ") ORDER BY id"
                    ))
                    .await?)
            })
            .await
    }

    /// Every `scheduled` job due now. Returns how many.
    pub(crate) async fn make_scheduled_due(&self) -> Result<u64> {
        self.nodes
            .run(async |conn| {
                conn.query_drop(concat!(
                    "UPDATE jobs SET scheduled_at = UTC_TIMESTAMP(6) WHERE status = ",
                    st!(scheduled)
                ))
                .await?;
                Ok(conn.affected_rows())
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
}
