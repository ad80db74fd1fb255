//! The crate's error types: [`Error`], and [`MigrateError`] of the migration runner.

use std::fmt;

/// Errors returned by the queue, the workers and the tools.
///
/// Errors from inside a job are not here: a job returns [`JobError`](crate::JobError).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement failed, or the connection broke while it ran (then it may or may not
    /// have taken effect).
    #[error("database error: {0}")]
    Database(#[from] mysql_async::Error),

    /// No connection could be had: connecting failed or took longer than the connect
    /// deadline ([`JobQueueBuilder::connect_timeout`](crate::JobQueueBuilder::connect_timeout)).
    /// Nothing was sent, so nothing took effect.
    #[error("could not connect to the database: {0}")]
    Connect(String),

    /// The database did not answer within a deadline
    /// ([`JobQueueBuilder::statement_timeout`](crate::JobQueueBuilder::statement_timeout),
    /// [`JobQueueBuilder::dispatch_timeout`](crate::JobQueueBuilder::dispatch_timeout)): a
    /// dropped route, a stopped server or a firewall that drops packets raise no error, so
    /// a deadline is what turns them into one. When `sent`, the statement may still have
    /// taken effect.
    #[error("{}", timeout_message(what, *after, *sent))]
    Timeout {
        /// What was waited for (`"statement"`, `"dispatch"`).
        what: &'static str,
        /// The deadline that passed.
        after: std::time::Duration,
        /// Whether the statement may have reached the server.
        sent: bool,
    },

    /// Too many dispatches are already waiting for the database (it is slow or away): this
    /// one is refused at once rather than queued without bound.
    #[error("too many dispatches are waiting for the database ({0}); try again later")]
    Backlog(usize),

    /// A connection URL could not be parsed.
    #[error("invalid database URL: {0}")]
    Url(#[from] mysql_async::UrlError),

    /// No database was configured where one was needed.
    #[error(
        "lightjobs has no database configured: set LIGHTJOBS_DATABASE_URL (or DATABASE_URL) \
         to mysql://user:password@host:3306/database, or install a queue with \
         JobQueue::install / Workers::start before the HTTP server starts"
    )]
    NotConfigured,

    /// The server is too old for `SELECT … FOR UPDATE SKIP LOCKED`.
    #[error(
        "unsupported database server {version}: lightjobs needs MySQL 8.0.1+ or MariaDB 10.6+ \
         (SELECT ... FOR UPDATE SKIP LOCKED)"
    )]
    UnsupportedServer {
        /// What `SELECT VERSION()` returned.
        version: String,
    },

    /// The `jobs` table is missing or not fully migrated.
    #[error("the jobs table is not ready: {0}")]
    Schema(String),

    /// The server answered in a way lightjobs did not expect (an INSERT that reported no
    /// id, or a different number of ids than rows): the statement ran, what it wrote is
    /// not known to the caller.
    #[error("unexpected reply from the database: {0}")]
    UnexpectedReply(String),

    /// A job could not be serialised to JSON at dispatch.
    #[error("job payload could not be serialised: {0}")]
    Serialize(#[from] serde_json::Error),

    /// A dispatch or a setting was rejected before it reached the database.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which input was rejected.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// A dispatch named a job or a batch that does not exist: never created, or deleted
    /// or pruned since (see [`Dispatch::after`](crate::Dispatch::after)).
    #[error("{what} {id} does not exist (never created, or deleted or pruned)")]
    NotFound {
        /// `"job"` or `"batch"`.
        what: &'static str,
        /// Its id.
        id: u64,
    },

    /// A job was added to a batch that has already finished (its callbacks are
    /// dispatched): it would never be counted.
    #[error("batch {0} has finished: no job can join it")]
    BatchFinished(u64),

    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),

    /// The queue's connection thread is gone (its runtime could not run the statement).
    #[error("the job queue's connection thread has stopped")]
    QueueClosed,

    /// The queue is a [`TestQueue`](crate::testing::TestQueue) without a database: it
    /// records dispatches, and everything else needs a database.
    #[error(
        "this queue is a lightjobs::testing::TestQueue without a database: it records \
         dispatches only (use TestQueue::on with a real queue for the rest)"
    )]
    NoDatabase,

    /// An I/O error from a tool (`create:job`) or the HTTP server.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Errors of the migration runner ([`migrate`](crate::migrate)). Defined here, with the
/// crate's error that wraps it, so that this module depends on nothing of the crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A statement failed.
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        /// The migration's number.
        version: u32,
        /// Its file name.
        name: &'static str,
        /// The server's error.
        source: mysql_async::Error,
    },
    /// An earlier run failed halfway through this migration.
    #[error(
        "migration {version} ({name}) is dirty: an earlier run failed halfway. Either finish \
         it by hand and mark it done (UPDATE lightjobs_migrations SET success = 1 WHERE \
         version = {version}), or undo it by hand and DELETE FROM lightjobs_migrations WHERE \
         version = {version}, then run `lightjobs migrate` again"
    )]
    Dirty {
        /// The migration's number.
        version: u32,
        /// Its file name.
        name: &'static str,
    },
    /// The applied migration differs from the one embedded in this build.
    #[error(
        "migration {version} ({name}) was applied with different contents (checksum mismatch)"
    )]
    Changed {
        /// The migration's number.
        version: u32,
        /// Its file name.
        name: &'static str,
    },
    /// A `jobs` table exists that is not the seed's or ours.
    #[error("a table `jobs` exists but is not a jobs table lightjobs can upgrade: {0}")]
    ForeignTable(String),
    /// Another process held the migration lock for too long.
    #[error("timed out waiting for the migration lock held by another process")]
    LockTimeout,
    /// The database failed outside a migration (connecting, locking, bookkeeping).
    #[error("database error while migrating: {0}")]
    Database(#[from] mysql_async::Error),
}

/// The message, not the structure: `fn main() -> std::io::Result<()>` prints an error's
/// `Debug`, and a user should read what to do, not nested enum variants.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The server received the statement and refused it, so it did nothing (as opposed to
    /// a connection that failed, after which a statement may or may not have run). An
    /// error packet that reports the connection itself going away (killed, server
    /// shutting down) does not count: the statement may have completed before it.
    pub(crate) fn is_server_refusal(&self) -> bool {
        matches!(self, Error::Database(e @ mysql_async::Error::Server(_)) if !is_unavailable(e))
    }

    /// Whether the failed operation may still have taken effect: a statement whose
    /// connection broke, or whose reply did not come within its deadline. A refusal, a
    /// failed connect, a deadline that passed before anything was sent, or bad input did
    /// nothing.
    pub(crate) fn in_doubt(&self) -> bool {
        match self {
            Error::Database(e) => !matches!(e, mysql_async::Error::Server(_)) || is_unavailable(e),
            Error::Timeout { sent, .. } => *sent,
            _ => false,
        }
    }

    /// The same error for another caller (the driver's error cannot be cloned): a server
    /// error as it is, a failed connection as an I/O error with the same message, so that
    /// each reads as in doubt or refused like the original.
    pub(crate) fn duplicate(&self) -> Self {
        use mysql_async::Error as E;
        match self {
            Error::Database(E::Server(s)) => Error::Database(E::Server(s.clone())),
            Error::Database(E::Io(mysql_async::IoError::Io(io))) => Error::Database(E::Io(
                mysql_async::IoError::Io(std::io::Error::new(io.kind(), io.to_string())),
            )),
            Error::Database(E::Driver(mysql_async::DriverError::ConnectionClosed)) => {
                Error::Database(E::Driver(mysql_async::DriverError::ConnectionClosed))
            }
            Error::Database(E::Driver(mysql_async::DriverError::PoolDisconnected)) => {
                Error::Database(E::Driver(mysql_async::DriverError::PoolDisconnected))
            }
            Error::QueueClosed => Error::QueueClosed,
            Error::Connect(m) => Error::Connect(m.clone()),
            Error::Timeout { what, after, sent } => Error::Timeout {
                what,
                after: *after,
                sent: *sent,
            },
            Error::Backlog(n) => Error::Backlog(*n),
            Error::UnexpectedReply(m) => Error::UnexpectedReply(m.clone()),
            other => Error::Database(E::Io(mysql_async::IoError::Io(std::io::Error::other(
                other.to_string(),
            )))),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl fmt::Display) -> Self {
        Error::Invalid {
            what,
            reason: reason.to_string(),
        }
    }

    /// True when the error means the database is unreachable or went away, so trying
    /// again later may succeed (as opposed to a bad statement or bad input).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Database(e) => is_unavailable(e),
            Error::QueueClosed | Error::Connect(_) | Error::Timeout { .. } | Error::Backlog(_) => {
                true
            }
            _ => false,
        }
    }
}

impl Error {
    /// The server refused to act on another user's connection (1095): a `KILL` of a
    /// connection that belongs to a different database user.
    pub(crate) fn is_not_owner(&self) -> bool {
        matches!(self, Error::Database(mysql_async::Error::Server(s)) if s.code == 1095)
    }

    /// A lock wait ran out (1205): with `FOR UPDATE WAIT`, the lock's holder kept it longer
    /// than the wait.
    pub(crate) fn is_lock_wait_timeout(&self) -> bool {
        matches!(self, Error::Database(mysql_async::Error::Server(s)) if s.code == 1205)
    }

    /// True for a deadlock (1213), a lock wait timeout (1205) or a cluster certification
    /// conflict (3101): the statement lost a race and can simply be run again.
    pub fn is_lock_conflict(&self) -> bool {
        matches!(self, Error::Database(mysql_async::Error::Server(s)) if matches!(s.code, 1213 | 1205 | 3101))
    }
}

/// Connection-level failures: the server is down, restarting, or the link broke.
pub(crate) fn is_unavailable(e: &mysql_async::Error) -> bool {
    use mysql_async::Error as E;
    match e {
        E::Io(_) => true,
        E::Driver(d) => matches!(
            d,
            mysql_async::DriverError::ConnectionClosed
                | mysql_async::DriverError::PoolDisconnected
                | mysql_async::DriverError::PacketOutOfOrder
        ),
        // 1040 too many connections, 1053 server shutdown, 2006/2013 gone away / lost,
        // 1927 connection killed (MariaDB), 4031 disconnected for inactivity (MySQL 8).
        E::Server(s) => matches!(s.code, 1040 | 1053 | 2006 | 2013 | 1927 | 4031),
        _ => false,
    }
}

fn timeout_message(what: &str, after: std::time::Duration, sent: bool) -> String {
    let doubt = if sent {
        "; it may still have taken effect"
    } else {
        "; nothing was sent"
    };
    format!("the database did not answer the {what} within {after:?}{doubt}")
}

/// Lets `?` work on lightjobs calls inside actix's `fn main() -> std::io::Result<()>`.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(io) => io,
            other => std::io::Error::other(other),
        }
    }
}
