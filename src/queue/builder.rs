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
}

impl JobQueueBuilder {
    /// Connections in the pool ([`defaults::POOL_SIZE`](crate::defaults::POOL_SIZE)). Workers use two or three; the rest
    /// serve dispatches from handlers.
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
        let nodes = urls
            .iter()
            .map(|url| Ok(session_opts(Opts::from_url(url)?, constraints)))
            .collect::<Result<Vec<Opts>>>()?;
        Ok(JobQueue {
            inner: Arc::new(Inner {
                io: IoThread::start(nodes.clone())?,
                nodes,
                max_payload: self.max_payload,
                combine: self.combine,
                server: tokio::sync::OnceCell::new(),
                intakes: std::sync::RwLock::default(),
                local_states: std::sync::RwLock::default(),
            }),
        })
    }
}

/// A node's options with the queue's pool and session settings.
fn session_opts(opts: Opts, constraints: PoolConstraints) -> Opts {
    OptsBuilder::from_opts(opts)
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
        // concurrent INSERTs do not deadlock (measured in DESIGN.md).
        .setup(vec![
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ])
        .into()
}
