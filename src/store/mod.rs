//! Every SQL statement lightjobs runs, one method per statement.
//!
//! Times are always the database's (`UTC_TIMESTAMP(6)`), never the application's clock and
//! never the session time zone, so several hosts and a caller's own connection agree.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::*;
use mysql_async::{Conn, Pool, QueryResult, Row, TextProtocol, TxOpts, Value};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::nodes::Nodes;

mod admin;
mod after;
mod batches;
mod cancel;
mod claim;
mod complete;
mod counts;
mod flow;
pub use admin::list_sql;
pub(crate) use admin::WaitingRow;
pub use batches::{BatchOutcome, BatchState};
pub use counts::counting_sql;
mod insert;
mod leases;
mod liveness;
mod maintenance;
mod queues;
mod sql;
mod status;
mod wake;
mod workers;

pub use claim::{claim_and_complete, claim_sql, claim_sql_for};
pub(crate) use claim::{claim_and_complete_or_report, Ask, TURNS};
pub use flow::flow_plan_sql;
pub(crate) use flow::sweep_due;
pub(crate) use insert::{Claim, NewIds};
pub use leases::{acquire_lease, release_lease, CREATE_LEASES};
pub use liveness::Liveness;
#[cfg(test)]
pub(crate) use liveness::WorkerSeen;
pub(crate) use queues::QueueSetting;
pub(crate) use sql::*;
#[cfg(any(feature = "cli", feature = "dashboard"))]
pub(crate) use status::JOB_STATUSES;
pub(crate) use status::{st, waiting_list, Status};
pub(crate) use wake::{Registered, Waited};

/// What the server is, as read when a queue first checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerState {
    /// `SELECT VERSION()`.
    pub(crate) version: String,
    /// `@@auto_increment_increment`: the step between the ids of a multi-row INSERT.
    pub(crate) autoinc_step: u64,
    /// The newest migration applied (`None` before the first).
    pub(crate) applied: Option<u32>,
}

/// A claim: the job's id and the claim's token.
pub type Held = (u64, u64);

/// A fresh claim token; never zero, so it is never mistaken for a default.
pub(crate) fn new_token() -> u64 {
    fastrand::u64(1..)
}

/// A row about to be inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewJob {
    pub name: &'static str,
    pub payload: String,
    pub queue: String,
    pub priority: i16,
    pub max_attempts: u32,
    pub when: When,
    /// A unique key, and for how long after the dispatch it stays taken once the job has
    /// finished (while it waits or runs it is always taken).
    pub unique: Option<(String, Duration)>,
    /// Its flow key and limits.
    pub flow: Option<crate::Flow>,
    /// The W3C `traceparent` of the dispatching span.
    pub trace: Option<String>,
    /// Its tags (checked).
    pub tags: Vec<String>,
    /// Its metadata object, as JSON.
    pub meta: Option<String>,
    /// The batch it joins.
    pub batch: Option<u64>,
    /// What it waits for before it may run.
    pub after: Option<After>,
}

impl NewJob {
    /// Whether it joins a batch or waits for something: inserted by
    /// [`Store::insert_linked`], never handed over or combined.
    pub(crate) fn is_linked(&self) -> bool {
        self.batch.is_some() || self.after.is_some()
    }
}

/// What a job waits for ([`Status::Awaiting`] until it has finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct After {
    pub upstream: Upstream,
    pub when: AfterOutcome,
}

/// A job or a batch another job waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    Job(u64),
    Batch(u64),
}

/// Which ends of what it waits for let a waiting job run; at the others it ends
/// `cancelled`, saying why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterOutcome {
    /// It succeeded (a job `processed`, a batch whose jobs all were).
    Success,
    /// It did not (a job `failed` or `cancelled`, a batch with such a job).
    Failure,
    /// Either.
    Complete,
}

impl AfterOutcome {
    /// As stored in `jobs.after_outcome`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            AfterOutcome::Success => "success",
            AfterOutcome::Failure => "failure",
            AfterOutcome::Complete => "complete",
        }
    }
}

/// When a new job becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// After this delay from the database's now (zero: at once).
    After(Duration),
    /// At this instant (UTC).
    At(SystemTime),
}

/// A job this worker now holds.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// `jobs.id`.
    pub id: u64,
    /// This claim's token (`jobs.claim_token`): every later write is guarded by it.
    pub token: u64,
    /// `jobs.name`.
    pub name: String,
    /// The JSON payload.
    pub payload: String,
    /// The queue it was claimed from.
    pub queue: String,
    /// The attempt now running, 1-based (already counted in the row).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// How long it was due before this claim (the queue latency).
    pub waited: Duration,
    /// Its flow key, if any.
    pub flow: Option<HeldFlow>,
    /// The W3C `traceparent` of the span that dispatched it.
    pub trace_parent: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its metadata object, as JSON.
    pub meta: Option<String>,
    /// The batch it belongs to.
    pub batch: Option<u64>,
    /// The batch it waited for (a batch callback).
    pub after_batch: Option<u64>,
    /// Why the row cannot be run as it is (a value another program wrote that does not
    /// decode, no attempt left): the run fails at once with this, naming the column.
    pub defect: Option<String>,
}

/// The flow key a claimed job runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFlow {
    /// The key.
    pub key: String,
    /// Whether the key has a concurrency limit: the job's end frees a slot.
    pub slot: bool,
}

/// A job as stored, for inspection tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// `jobs.id`.
    pub id: u64,
    /// The job's name.
    pub name: String,
    /// The queue.
    pub queue: String,
    /// `pending`, `running`, `processed` or `failed`.
    pub status: String,
    /// Attempts spent so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The error of the last failed attempt, if any.
    pub last_error: Option<String>,
    /// The JSON payload.
    pub payload: String,
    /// When it was created (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`).
    pub created_at: String,
    /// When it is (or was) due (UTC).
    pub scheduled_at: String,
    /// When it reached `processed` or `failed` (UTC).
    pub finished_at: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its metadata object, as JSON text.
    pub meta: Option<String>,
    /// What a run recorded with [`JobContext::record_output`](crate::JobContext::record_output),
    /// as JSON text.
    pub output: Option<String>,
    /// The batch it belongs to.
    pub batch: Option<u64>,
    /// The job it waits (or waited) for.
    pub after_job: Option<u64>,
    /// The batch it waits (or waited) for: a batch callback, or a job dispatched with
    /// [`Dispatch::after_batch`](crate::Dispatch::after_batch).
    pub after_batch: Option<u64>,
    /// The errors of its failed attempts, oldest first, at most
    /// [`ERROR_HISTORY`](crate::defaults::ERROR_HISTORY) (empty when none failed, or
    /// when the stored history does not decode).
    pub errors: Vec<AttemptError>,
}

/// One failed attempt of a job ([`JobRecord::errors`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AttemptError {
    /// The attempt, 1-based.
    pub attempt: u32,
    /// When it failed (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`).
    pub at: String,
    /// Its error, cut to 4,000 characters.
    pub error: String,
}

/// What a worker process registers about itself.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// The queues, as a JSON array.
    pub queues: String,
    /// How often it beats.
    pub interval: Duration,
    /// After how long without a beat it counts as dead.
    pub stale_after: Duration,
}

/// Counts for one queue and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueCount {
    /// The queue.
    pub queue: String,
    /// The status.
    pub status: String,
    /// How many jobs: for a finished status, those finished in the last day (see
    /// [`JobQueue::stats`](crate::JobQueue::stats)).
    pub count: u64,
}

/// Access to the `jobs` table through one pool (per database node).
#[derive(Debug, Clone)]
pub struct Store {
    nodes: Nodes,
}

/// A guarded write: only the worker that holds the claim may change the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// The row was ours and is changed.
    Applied,
    /// The row was no longer ours (rescued, released, edited by hand): nothing written.
    Lost,
}

impl When {
    /// (delay in µs, absolute DATETIME or NULL) for the INSERT's COALESCE.
    fn params(&self) -> Result<(i64, Value)> {
        match *self {
            When::After(d) => Ok((micros(d), Value::NULL)),
            When::At(t) => Ok((0, datetime_value(t)?)),
        }
    }
}

impl Store {
    /// A store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Store {
            nodes: Nodes::single(pool),
        }
    }

    /// A store on the nodes of a cluster (or a single server).
    pub(crate) fn on(nodes: Nodes) -> Self {
        Store { nodes }
    }

    pub(crate) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// What the server is and how far it is migrated.
    pub(crate) async fn read_server_state(&self) -> Result<ServerState> {
        self.nodes
            .run(async |conn| {
                let server: Option<(String, u64)> = conn
                    .query_first("SELECT VERSION(), @@auto_increment_increment")
                    .await?;
                let (version, step) = server.unwrap_or_default();
                let applied: Result<Option<Option<u32>>, _> = conn
                    .query_first("SELECT MAX(version) FROM lightjobs_migrations WHERE success = 1")
                    .await;
                let applied = match applied {
                    Ok(v) => v.flatten(),
                    // 1146: table does not exist.
                    Err(mysql_async::Error::Server(e)) if e.code == 1146 => None,
                    Err(e) => return Err(e.into()),
                };
                Ok(ServerState {
                    version,
                    autoinc_step: step.max(1),
                    applied,
                })
            })
            .await
    }

    async fn guarded(&self, sql: String, params: Vec<Value>) -> Result<Guarded> {
        self.nodes
            .run(async |conn| {
                conn.exec_drop(sql, params).await?;
                Ok(if conn.affected_rows() == 1 {
                    Guarded::Applied
                } else {
                    Guarded::Lost
                })
            })
            .await
    }
}
