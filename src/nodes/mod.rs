//! The database servers a queue may use, in order of preference, and the one in use now;
//! the deadline on every step of talking to them.
//!
//! With one server this is a plain pool. With several (the nodes of a Galera cluster),
//! every connection of the process goes to one node, the cluster's writer, which the
//! processes agree on through a row of the cluster itself ([`writer`]): one writer at every
//! moment is what keeps claims exactly once, since Galera certifies conflicting writes
//! only at COMMIT. When the writer fails, the first healthy node takes over within
//! seconds; when an earlier node is healthy again, the writer moves back to it. A move
//! makes the new node catch up with the cluster before anything uses it ([`probe`]),
//! closes the pools of the node left, and holds claims back for a moment (see
//! [`Nodes::settling`]).

mod probe;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mysql_async::{Conn, Opts, Pool};
use once_cell::sync::Lazy;

use crate::error::Error;
use writer::{next_tick, Choice, NONE, SETTLE};

/// How long each step of a database operation may take. A dropped route, a stopped VM or
/// a firewall that drops packets raise no error: a statement just waits, for as long as
/// the kernel keeps the socket (minutes). These deadlines turn such a wait into an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// A connection from the pool, a new connection included (TCP, handshake, setup).
    pub connect: Duration,
    /// One statement (or one multi-statement) from sending it to its last reply.
    pub statement: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect: crate::defaults::CONNECT_TIMEOUT,
            statement: crate::defaults::STATEMENT_TIMEOUT,
        }
    }
}

/// A pool per node; cheap to clone (shared).
#[derive(Clone, Debug)]
pub(crate) struct Nodes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    deadlines: Deadlines,
    /// Each node's settings, to open a fresh pool when its old one is retired (empty for
    /// a single server, which is never left).
    opts: Vec<Opts>,
    pools: Vec<Mutex<Pool>>,
    choice: Arc<Choice>,
}

/// The choice shared by every list of the same nodes in this process.
fn shared_choice(opts: &[Opts]) -> Arc<Choice> {
    static CHOICES: Lazy<Mutex<HashMap<String, Weak<Choice>>>> = Lazy::new(Default::default);
    let key = opts
        .iter()
        .map(|o| {
            format!(
                "{}:{}/{}",
                o.ip_or_hostname(),
                o.tcp_port(),
                o.db_name().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut choices = lock(&CHOICES);
    choices.retain(|_, c| c.strong_count() > 0);
    if let Some(choice) = choices.get(&key).and_then(Weak::upgrade) {
        return choice;
    }
    let choice = Choice::new();
    choices.insert(key, Arc::downgrade(&choice));
    choice
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Nodes {
    /// One pool per node, in order of preference.
    pub(crate) fn new(opts: Vec<Opts>, deadlines: Deadlines) -> Nodes {
        let choice = if opts.len() > 1 {
            shared_choice(&opts)
        } else {
            Choice::new()
        };
        let inner = Arc::new(Inner {
            deadlines,
            pools: opts
                .iter()
                .cloned()
                .map(|o| Mutex::new(Pool::new(o)))
                .collect(),
            opts,
            choice,
        });
        let mut members = lock(&inner.choice.members);
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&inner));
        drop(members);
        Nodes { inner }
    }

    /// A single server's pool.
    pub(crate) fn single(pool: Pool) -> Nodes {
        Nodes {
            inner: Arc::new(Inner {
                deadlines: Deadlines::default(),
                opts: Vec::new(),
                pools: vec![Mutex::new(pool)],
                choice: Choice::new(),
            }),
        }
    }

    /// The index of the node in use (in the list given).
    pub(crate) fn current(&self) -> usize {
        self.inner.choice.current.load(Ordering::Relaxed)
    }

    /// Node `i`'s pool (a cheap handle).
    fn pool(&self, i: usize) -> Pool {
        lock(&self.inner.pools[i]).clone()
    }

    pub(crate) fn deadlines(&self) -> Deadlines {
        self.inner.deadlines
    }

    /// Runs `f` on a connection to the node in use, each step under its deadline: the
    /// checkout under the connect deadline (a failure there sent nothing:
    /// [`Error::Connect`]), `f` under `limit` ([`Error::Timeout`], in doubt).
    ///
    /// The connection goes back to the pool only when `f` succeeded. After an error, a
    /// deadline or a panic its state is unknown (a reply still on its way, a transaction
    /// left open by a raw `START TRANSACTION`), so it is closed, never handed to the next
    /// caller.
    pub(crate) async fn run_for<T>(
        &self,
        limit: Duration,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let conn = self
            .get_conn()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let mut checked = Checkout(Some(conn));
        let Some(conn) = checked.0.as_mut() else {
            return Err(Error::QueueClosed);
        };
        match tokio::time::timeout(limit, f(conn)).await {
            Ok(Ok(value)) => {
                checked.keep();
                Ok(value)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Timeout {
                what: "statement",
                after: limit,
                sent: true,
            }),
        }
    }

    /// [`run_for`](Self::run_for) under the statement deadline.
    pub(crate) async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.run_for(self.inner.deadlines.statement, f).await
    }

    /// A connection to the node in use, moving to another node when it fails or is no
    /// longer healthy.
    pub(crate) async fn get_conn(&self) -> Result<Conn, mysql_async::Error> {
        Ok(self.get_conn_at().await?.1)
    }

    /// [`get_conn`](Self::get_conn), with the index of the node the connection is to.
    /// Fails with a timed-out I/O error after the connect deadline.
    pub(crate) async fn get_conn_at(&self) -> Result<(usize, Conn), mysql_async::Error> {
        let limit = self.inner.deadlines.connect;
        match tokio::time::timeout(limit, self.checkout()).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("connect", limit)),
        }
    }

    async fn checkout(&self) -> Result<(usize, Conn), mysql_async::Error> {
        if self.inner.pools.len() == 1 {
            return Ok((0, self.pool(0).get_conn().await?));
        }
        if !self.take_due() {
            let node = self.current();
            if node == NONE {
                return Err(writer::nowhere());
            }
            match self.pool(node).get_conn().await {
                Ok(conn) if self.current() == node => return Ok((node, conn)),
                // The process moved while this connection was opened: it would be a session
                // on the node left, which nothing retires any more.
                Ok(conn) => discard(conn),
                Err(error) if !crate::error::is_unavailable(&error) => return Err(error),
                // The node in use failed: check again now, unless a check just ran (many
                // callers failing at once must not each probe every node).
                Err(error) if !self.take_due_soon() => return Err(error),
                Err(_) => {}
            }
        }
        self.choose().await
    }

    /// True when the node in use is no longer `node` (checked when a check is due): a
    /// connection kept from `node` is to be dropped, so that a long-lived connection
    /// does not keep a second writer alive after every process moved.
    pub(crate) async fn moved_from(&self, node: usize) -> bool {
        if self.inner.pools.len() == 1 {
            return false;
        }
        self.check_if_due().await;
        self.current() != node
    }

    /// How long claims are still to wait after the node in use changed (checking first
    /// when a check is due); `None` when they need not.
    pub(crate) async fn settling(&self) -> Option<Duration> {
        if self.inner.pools.len() == 1 {
            return None;
        }
        self.check_if_due().await;
        self.settle_left()
    }

    /// How long claims are still to wait after the last move, as things stand (no check):
    /// for a claim that got its connection, perhaps from a check that moved just then.
    pub(crate) fn settle_left(&self) -> Option<Duration> {
        let moved_at = *lock(&self.inner.choice.moved_at);
        moved_at
            .and_then(|at| SETTLE.checked_sub(at.elapsed()))
            .filter(|left| !left.is_zero())
    }

    /// Runs the periodic check when it is due (its outcome is read from `current`).
    async fn check_if_due(&self) {
        if self.take_due() {
            let _ = self.choose().await;
        }
    }

    /// True (once per tick, across the process) when the periodic check is due.
    fn take_due(&self) -> bool {
        let mut next = lock(&self.inner.choice.next_check);
        let due = Instant::now() >= *next;
        if due {
            *next = next_tick();
        }
        due
    }

    /// True when no check ran in the last quarter of a tick: the check is then taken now.
    fn take_due_soon(&self) -> bool {
        let mut next = lock(&self.inner.choice.next_check);
        let recent = next.saturating_duration_since(Instant::now()) > writer::CHECK_EVERY * 3 / 4;
        if !recent {
            *next = next_tick();
        }
        !recent
    }

    /// Closes every pool.
    pub(crate) async fn disconnect(self) {
        let pools: Vec<Pool> = (0..self.inner.pools.len()).map(|i| self.pool(i)).collect();
        for pool in pools {
            let _ = pool.disconnect().await;
        }
    }
}

impl Inner {
    /// Replaces the pool of a node no longer in use by a fresh one. Dropping the old
    /// handle closes its idle connections now and the others as they come back; they would
    /// otherwise stay open on the old node for their whole lifetime, each a session a later
    /// move back would hand out broken (the node died) or stale.
    fn retire(&self, node: usize) {
        if let Some(opts) = self.opts.get(node) {
            drop(std::mem::replace(
                &mut *lock(&self.pools[node]),
                Pool::new(opts.clone()),
            ));
        }
    }
}

/// A connection checked out by [`Nodes::run_for`]: closed when dropped, unless kept.
struct Checkout(Option<Conn>);

impl Checkout {
    /// Back to the pool: its last statement ended cleanly.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            discard(conn);
        }
    }
}

/// A connection kept by one user between statements (the fetch loop between claims, the
/// listener between waits). Closed rather than pooled when dropped or replaced: after an
/// error, a deadline, a panic or a cancelled wait it may sit inside a transaction its raw
/// `START TRANSACTION` opened, or wait for a reply that is not coming.
#[derive(Default)]
pub(crate) struct KeptConn(Option<Conn>);

impl KeptConn {
    pub(crate) fn close(&mut self) {
        if let Some(conn) = self.0.take() {
            discard(conn);
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.0.is_some()
    }

    /// The connection, to use and give back with [`insert`](Self::insert).
    pub(crate) fn take(&mut self) -> Option<Conn> {
        self.0.take()
    }

    pub(crate) fn insert(&mut self, conn: Conn) -> &mut Conn {
        self.0.insert(conn)
    }
}

impl Drop for KeptConn {
    fn drop(&mut self) {
        self.close();
    }
}

/// Closes `conn` without returning it to its pool, in the background and within a
/// second: its state is unknown (a reply may still be on its way, a transaction open), and
/// a connection on a path that stopped forwarding would hang whoever used it next. Marked
/// disconnected at once, so the pool drops it whatever the COM_QUIT does.
pub(crate) fn discard(conn: Conn) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
            });
        }
        // No runtime to close it on (the process is ending): dropped as it is.
        Err(_) => drop(conn),
    }
}

/// The error of a deadline that passed on the driver's side (a connect, a probe): an I/O
/// error of kind `TimedOut`, which reads as "unavailable" like a refused connection.
pub(crate) fn timed_out(what: &str, after: Duration) -> mysql_async::Error {
    mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took longer than {after:?}"),
    )))
}

/// Splits a database setting into the URLs of its nodes: several URLs separated by
/// commas (a comma inside a URL must be percent-encoded, as `%2C`).
pub(crate) fn split_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls() {
        assert_eq!(split_urls("mysql://a/db"), vec!["mysql://a/db"]);
        assert_eq!(
            split_urls("mysql://a:1/db, mysql://b:2/db,"),
            vec!["mysql://a:1/db", "mysql://b:2/db"]
        );
    }
}
