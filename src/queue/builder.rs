//! [`JobQueueBuilder`]: the pool, the payload limit, combined dispatches.

use super::*;

/// How long an idle pooled connection is kept before the pool closes it.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// Builds a [`JobQueue`].
///
/// ```no_run
/// # fn main() -> lightjobs::Result<()> {
/// let queue = lightjobs::JobQueue::builder("mysql://app:secret@127.0.0.1:3306/app")
///     .pool_size(32)
///     .max_payload_bytes(64 * 1024)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct JobQueueBuilder {
    pub(super) url: String,
    pub(super) pool_size: usize,
    pub(super) max_payload: usize,
    pub(super) combine: bool,
    pub(super) deadlines: Deadlines,
    pub(super) dispatch_timeout: Duration,
    pub(super) keepalive: Option<Duration>,
    pub(super) consecutive_ids: bool,
}

impl JobQueueBuilder {
    /// Connections in the queue's pool ([`defaults::POOL_SIZE`](crate::defaults::POOL_SIZE)),
    /// which serves dispatches and the operator's tools. Workers started on the queue open
    /// pools of their own (4 connections, and 6 on the maintenance thread), so that their
    /// connections live on their own runtimes.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Largest JSON payload a dispatch accepts ([`defaults::MAX_PAYLOAD_BYTES`](crate::defaults::MAX_PAYLOAD_BYTES)).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Whether dispatches made at the same moment share one INSERT (on by default): the
    /// connection thread takes every dispatch that has arrived, up to 100, and inserts them
    /// in one statement, each still getting its own id or its own error. It never waits
    /// for more to come, so a lone dispatch is not delayed; while a statement is in flight
    /// the next batch grows behind it (a second starts after 5 ms, or for a full batch).
    /// Dispatches handed to this process's idle workers join the batch too. Off, every
    /// dispatch is a statement and a commit of its own.
    ///
    /// ```
    /// let queue = lightjobs::JobQueue::builder("mysql://app@127.0.0.1/app")
    ///     .combine_dispatches(false)
    ///     .build()?;
    /// # Ok::<(), lightjobs::Error>(())
    /// ```
    pub fn combine_dispatches(mut self, combine: bool) -> Self {
        self.combine = combine;
        self
    }

    /// How long getting a connection may take, a new one included
    /// ([`defaults::CONNECT_TIMEOUT`](crate::defaults::CONNECT_TIMEOUT)). Past it the
    /// operation fails with [`Error::Connect`]: nothing was sent.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.deadlines.connect = timeout;
        self
    }

    /// How long one statement may wait for its reply
    /// ([`defaults::STATEMENT_TIMEOUT`](crate::defaults::STATEMENT_TIMEOUT)). Past it the
    /// operation fails with [`Error::Timeout`] and its connection is closed; the statement
    /// may still have taken effect, and lightjobs settles that as for a lost reply. The
    /// workers and the tools use the same deadline; the heartbeat uses at most its interval.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.deadlines.statement = timeout;
        self
    }

    /// How long a dispatch may take from the call to the new job's id, waiting for its turn
    /// included ([`defaults::DISPATCH_TIMEOUT`](crate::defaults::DISPATCH_TIMEOUT)). Past
    /// it the dispatch fails with [`Error::Timeout`], which actix answers with a 503; a
    /// dispatch still waiting for its turn is then never inserted.
    ///
    /// ```
    /// use std::time::Duration;
    /// let queue = lightjobs::JobQueue::builder("mysql://app@127.0.0.1/app")
    ///     .dispatch_timeout(Duration::from_secs(2))
    ///     .connect_timeout(Duration::from_secs(1))
    ///     .build()?;
    /// # Ok::<(), lightjobs::Error>(())
    /// ```
    pub fn dispatch_timeout(mut self, timeout: Duration) -> Self {
        self.dispatch_timeout = timeout;
        self
    }

    /// TCP keepalive on every connection ([`defaults::TCP_KEEPALIVE`](crate::defaults::TCP_KEEPALIVE));
    /// `None` turns it off.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.keepalive = idle;
        self
    }

    /// Test hook: multi-row INSERTs learn their ids the way they must on MySQL (which has no
    /// `RETURNING`), on MariaDB too.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __consecutive_ids(mut self) -> Self {
        self.consecutive_ids = true;
        self
    }

    /// Validates the settings and creates the pool. Connects lazily: nothing touches the
    /// network until the first dispatch or the workers start.
    pub fn build(self) -> Result<JobQueue> {
        let urls = split_urls(&self.url);
        if urls.is_empty() {
            return Err(Error::NotConfigured);
        }
        let constraints = PoolConstraints::new(0, self.pool_size)
            .ok_or_else(|| Error::invalid("pool_size", "must be at least 1"))?;
        if self.max_payload == 0 || self.max_payload > 16 * 1024 * 1024 - 1 {
            return Err(Error::invalid(
                "max_payload_bytes",
                "must be between 1 and 16 MiB - 1 (the MEDIUMTEXT column)",
            ));
        }
        for (what, d) in [
            ("connect_timeout", self.deadlines.connect),
            ("statement_timeout", self.deadlines.statement),
            ("dispatch_timeout", self.dispatch_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(what, "must be non-zero"));
            }
        }
        let nodes = urls
            .iter()
            .map(|url| {
                Ok(session_opts(
                    Opts::from_url(url)?,
                    constraints,
                    self.keepalive,
                ))
            })
            .collect::<Result<Vec<Opts>>>()?;
        Ok(JobQueue {
            inner: Arc::new(Inner {
                io: Some(IoThread::start(nodes.clone(), self.deadlines)?),
                memory: None,
                nodes,
                deadlines: self.deadlines,
                dispatch_timeout: self.dispatch_timeout,
                consecutive_ids: self.consecutive_ids,
                max_payload: self.max_payload,
                combine: self.combine,
                server: tokio::sync::OnceCell::new(),
                intakes: std::sync::RwLock::default(),
                local_states: std::sync::RwLock::default(),
                ends: Arc::default(),
            }),
        })
    }
}

/// A node's options with the queue's pool and session settings.
fn session_opts(opts: Opts, constraints: PoolConstraints, keepalive: Option<Duration>) -> Opts {
    OptsBuilder::from_opts(opts)
        .tcp_keepalive(keepalive)
        // Returning a connection to the pool would otherwise reset the session, drop its
        // prepared statements and rerun the setup: three round trips per checkout.
        // With mysql_async's default idle TTL of zero, a pool whose minimum is 0 closes
        // every connection the moment it is returned, so each dispatch and each claim
        // would open a new one (about 1.3 ms idle); idle connections are kept for a
        // minute instead, then closed down to the minimum by the pool's TTL check.
        .pool_opts(
            PoolOpts::default()
                .with_constraints(constraints)
                .with_reset_connection(false)
                .with_inactive_connection_ttl(IDLE_CONNECTION_TTL),
        )
        // READ COMMITTED: the claim's locking read takes no gap locks, so claims and
        // concurrent INSERTs do not deadlock (measured: docs/benchmarks.md).
        .setup(vec![
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ])
        .into()
}
