//! Every default and limit in one place: what a setting is when you do not set it, and
//! the bounds a dispatch or a setting must stay within.

use std::time::Duration;

/// The queue a job goes to unless it names another.
pub const QUEUE: &str = "default";
/// Attempts a job gets unless it sets [`Job::MAX_ATTEMPTS`](crate::Job::MAX_ATTEMPTS).
pub const MAX_ATTEMPTS: u32 = 3;
/// Jobs run at once by default. A slot is a future on the worker's runtime, not a thread,
/// and a claim takes as many jobs as there are free slots, so a larger default costs little
/// and makes each claim's batch larger (no-op jobs drain at 0.98× the raw SQL floor with 100
/// slots, 0.28× with 10, same run; docs/benchmarks.md). Jobs that must not run 100 at a
/// time (a rate-limited API) get a lower `concurrency` or a queue limit.
pub const CONCURRENCY: usize = 100;
/// First idle poll interval; also the wait after a claim that found fewer jobs than slots.
pub const POLL_MIN: Duration = Duration::from_millis(50);
/// Longest idle poll interval, reached only after 30 s without jobs. Dispatches from the
/// same process wake workers at once, so this bounds only how late a job dispatched by
/// another process is noticed on a quiet queue.
pub const POLL_MAX: Duration = Duration::from_secs(1);
/// How long one run may take unless the job sets [`Job::TIMEOUT`](crate::Job::TIMEOUT), so
/// that a hung job cannot hold a slot forever.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long a job cancelled while running has to return before its future is dropped:
/// enough for a job that watches `ctx.cancelled()` to stop cleanly, short enough that a
/// cancel is felt at once.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How often a process with running jobs looks for cancel requests on their rows (by
/// primary key; an idle process does not look): a cancel reaches the run within this
/// plus a round trip.
pub const CANCEL_POLL: Duration = Duration::from_millis(500);
/// How long running jobs get to finish at shutdown before they are released: below the
/// 30 s most process managers (systemd, Kubernetes, Docker) wait before SIGKILL, so the
/// release and the result writes still happen.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// How often a worker process refreshes its heartbeat row.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A process whose heartbeat has not changed for this long is dead: its jobs are rescued.
/// Five missed beats, so a slow database or a busy host does not look like a death, while a
/// crashed process's jobs run again within seconds. A process stops its own runs after half
/// of it without a confirmed beat, so that it stops before anyone may rescue them.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// How long `processed` (and `cancelled`) jobs are kept before the pruner deletes them.
pub const PROCESSED_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long `failed` jobs are kept: long enough to notice, read the error and retry.
pub const FAILED_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Connections in the queue's pool by default.
pub const POOL_SIZE: usize = 16;
/// Largest payload accepted by default (1 MiB): big inputs belong in a table or a bucket,
/// with the job carrying their key.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

// Limits: the columns' sizes and a guard against unit mistakes.

/// Longest delay a dispatch may ask for (ten years): anything longer is a unit mistake.
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest queue name (the `jobs.queue` column).
pub const MAX_QUEUE_NAME_CHARS: usize = 64;
/// Longest job name (the `jobs.name` column).
pub const MAX_JOB_NAME_CHARS: usize = 128;
/// Longest unique key (the `jobs.unique_key` column).
pub const MAX_UNIQUE_KEY_CHARS: usize = 191;
/// Most tags on one job (they share the `jobs.tags` column, 650 characters).
pub const MAX_TAGS: usize = 10;
/// Longest tag; a tag is 1 to this many of `A-Z a-z 0-9 _ . : -`, so the list can be
/// stored comma-joined and shown without escaping surprises.
pub const MAX_TAG_CHARS: usize = 64;
/// Largest metadata object of a dispatch, as JSON: metadata is for filtering and
/// reading by people (a customer id, a request id), not for data.
pub const MAX_META_BYTES: usize = 4096;
/// Largest output a run records, as JSON: a result to read back, not a blob store.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Failed attempts whose errors a job keeps ([`JobRecord::errors`](crate::JobRecord::errors)),
/// the oldest dropped first: enough to see how a failure changed over its retries, each
/// error cut to 4,000 characters (the last one is in `last_error` in full).
pub const ERROR_HISTORY: usize = 10;

// Deadlines: a database that stops answering without an error (a dropped route, a stopped
// VM, a firewall that drops packets) becomes an error within these.

/// Getting a connection (from the pool, or a new one: TCP, handshake, session setup).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One statement, from sending it to its last reply. Long enough for a busy server's slow
/// statement, short enough that a stalled one is noticed within a staleness period; the
/// operator's bulk operations get [`ADMIN_STATEMENT_TIMEOUT`] instead.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A dispatch, from the call to the new job's id, waiting for a turn included: an HTTP
/// handler answers 503 within this when the database does not answer.
pub const DISPATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement of the operator's tools over many rows (retry every failed job of a queue).
pub const ADMIN_STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// TCP keepalive on every connection: an idle pooled connection to a peer that went away
/// is found broken by the kernel instead of on its next use.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(10);
/// Dispatches waiting for the database at once, at most: past it a dispatch fails at once
/// as unavailable instead of queueing without bound while the database is away.
pub const MAX_WAITING_DISPATCHES: usize = 10_000;
