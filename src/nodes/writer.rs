//! Which node of a cluster takes the writes: agreed by the cluster, not chosen by each
//! process from its own probes.
//!
//! A process cut off from node 1 while every other process still reaches it would, by its
//! own probes, move to node 2: two writers, and Galera's certification alone between two
//! claims of one job. So the writer is a row, `writer-node` in `lightjobs_leases`: its
//! `holder` names the node (`host:port`, as the node says itself), and every process that
//! writes through that node renews it about once a second (`expires_at` changes; it is
//! only ever compared for equality, never read as a time, since each node stamps with its
//! own clock). Certification makes each change of the row single, whichever nodes race.
//!
//! Each process checks once a second:
//! - the first healthy node in its list *is* the writer: it uses it and renews the row;
//! - the writer is another node it can reach: if an earlier node of its list is healthy it
//!   moves the writer back there (through the writer, so only a process that reaches both
//!   can), else it uses the writer;
//! - the writer is a node it cannot reach: it writes nowhere (its connections fail, so its
//!   heartbeat stops landing and it stops its runs, see `runtime::fence`), unless nobody has
//!   renewed the row for [`WRITER_SILENCE`], as it sees through another node by its own
//!   clock: then the writer is gone for everyone, and it moves the row to its first healthy
//!   node, guarded by what it saw (one taker wins).
//!
//! Before the migrations have created `lightjobs_leases` there is no row to agree on, and
//! the first healthy node is used (the migrator is the only writer then).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::probe::{catch_up, healthy, Healthy};
use super::{lock, Inner, Nodes};

/// How often, with several nodes, the writer is checked (and renewed, or moved).
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long after a move to another node claims wait: two checks, by when every other
/// process has made the same move and its claims in flight on the old node have ended.
pub(super) const SETTLE: Duration = Duration::from_secs(2);

/// How long nobody may have renewed the writer row, as a process that cannot reach the
/// writer sees it, before that process moves it: three renewals missed.
pub(crate) const WRITER_SILENCE: Duration = Duration::from_secs(3);

/// `current` when no node may be written to by this process.
pub(super) const NONE: usize = usize::MAX;

/// The row's name in `lightjobs_leases`.
const WRITER_ROW: &str = "writer-node";

/// The writer as this process follows it, shared by every `Nodes` of the process on the
/// same list of nodes (the queue's connection thread, the workers, the maintenance
/// thread): they move together, and a move closes the idle connections of all of them on
/// the node left.
#[derive(Debug)]
pub(super) struct Choice {
    /// The node in use (an index in the list), or [`NONE`].
    pub(super) current: AtomicUsize,
    pub(super) next_check: Mutex<Instant>,
    /// When the node in use last changed.
    pub(super) moved_at: Mutex<Option<Instant>>,
    pub(super) members: Mutex<Vec<Weak<Inner>>>,
    /// The writer row as last seen, and since when it has looked that way.
    seen: Mutex<Option<(Row, Instant)>>,
}

/// The writer row: the node named, and the value renewals change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) holder: String,
    pub(super) value: String,
}

impl Choice {
    pub(super) fn new() -> Arc<Choice> {
        Arc::new(Choice {
            current: AtomicUsize::new(0),
            next_check: Mutex::new(Instant::now()),
            moved_at: Mutex::new(None),
            members: Mutex::new(Vec::new()),
            seen: Mutex::new(None),
        })
    }

    /// For how long the writer row has looked like `row`, by this process's clock (zero
    /// when it just changed).
    fn unchanged_for(&self, row: &Row, now: Instant) -> Duration {
        let mut seen = lock(&self.seen);
        match &*seen {
            Some((last, since)) if last == row => now.duration_since(*since),
            _ => {
                *seen = Some((row.clone(), now));
                Duration::ZERO
            }
        }
    }
}

/// The instant the next check is due: the next whole second of the wall clock, so that
/// processes check at about the same moments and follow a move together.
pub(super) fn next_tick() -> Instant {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| Duration::from_nanos(u64::from(d.subsec_nanos())))
        .unwrap_or_default();
    Instant::now() + CHECK_EVERY.saturating_sub(into)
}

/// The error of a connection asked for while this process may write nowhere.
pub(super) fn nowhere() -> mysql_async::Error {
    mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::other(
        "the cluster's writer node is not reachable from this process: not writing to \
         another node until it is, or until it has been silent for every process",
    )))
}

/// The error of a process that may not write anywhere now.
fn no_writer(row: &Row) -> mysql_async::Error {
    mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::other(format!(
        "the cluster's writer node ({}) is not reachable from this process, and other \
         processes still use it: not writing to another node",
        row.holder
    ))))
}

impl Nodes {
    /// The check: follows the writer (see the module's docs) and returns a connection to
    /// it, or fails when this process may write nowhere now.
    pub(super) async fn choose(&self) -> Result<(usize, Conn), mysql_async::Error> {
        let mut first = self.first_healthy(0).await?;
        let row = match read_row(&mut first.conn).await {
            Ok(row) => row,
            // 1146: no `lightjobs_leases` yet (before the migrations).
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => {
                return self.use_node(first).await
            }
            Err(e) => return Err(e),
        };
        let Some(row) = row else {
            // No writer yet: the first healthy node, unless another process named one first
            // (the next check follows that one).
            create_row(&mut first.conn, &first.identity).await?;
            return match read_row(&mut first.conn).await? {
                Some(row) if row.holder != first.identity => {
                    super::discard(first.conn);
                    Err(no_writer(&row))
                }
                _ => self.use_node(first).await,
            };
        };
        let choice = &self.inner.choice;
        let silent = choice.unchanged_for(&row, Instant::now());
        if row.holder == first.identity {
            if silent > Duration::ZERO {
                // Nobody renewed since the last look: this process does, and notes the
                // value it wrote, so that it renews again at its next check.
                renew(&mut first.conn, &row).await?;
                if let Some(now) = read_row(&mut first.conn).await? {
                    choice.unchanged_for(&now, Instant::now());
                }
            }
            return self.use_node(first).await;
        }
        if let Some(mut writer) = self.find(&row.holder, first.index + 1).await {
            // An earlier node is healthy again: move the writer back to it.
            // Probe sessions not used are closed, never pooled: an idle session would stay
            // on a node nobody writes to.
            if write_row(&mut writer.conn, &row, &first.identity).await? {
                tracing::warn!(target: "lightjobs::nodes", from = %row.holder, to = %first.identity, "moved the cluster's writer back to a preferred node");
                super::discard(writer.conn);
                return self.use_node(first).await;
            }
            super::discard(first.conn);
            return self.use_node(writer).await;
        }
        if silent >= WRITER_SILENCE && write_row(&mut first.conn, &row, &first.identity).await? {
            tracing::warn!(target: "lightjobs::nodes", from = %row.holder, to = %first.identity, ?silent, "the cluster's writer node went silent; moved the writer");
            return self.use_node(first).await;
        }
        super::discard(first.conn);
        self.write_nowhere(&row);
        Err(no_writer(&row))
    }

    /// The first node from `from` on that can take writes.
    async fn first_healthy(&self, from: usize) -> Result<Healthy, mysql_async::Error> {
        let mut last_error = None;
        for i in from..self.inner.pools.len() {
            match self.usable(i).await {
                Ok(Some(node)) => return Ok(node),
                Ok(None) => {}
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(mysql_async::Error::Driver(
            mysql_async::DriverError::PoolDisconnected,
        )))
    }

    /// The usable node, from `from` on, that is `identity`.
    async fn find(&self, identity: &str, from: usize) -> Option<Healthy> {
        for i in from..self.inner.pools.len() {
            if let Ok(Some(node)) = self.usable(i).await {
                if node.identity == identity {
                    return Some(node);
                }
                super::discard(node.conn);
            }
        }
        None
    }

    /// Node `i` if it can take writes now. A Galera node other than the one in use must
    /// first catch up with the cluster (before any connection of the process goes there):
    /// one that cannot is passed over like an unhealthy one.
    async fn usable(&self, i: usize) -> Result<Option<Healthy>, mysql_async::Error> {
        let Some(mut node) = healthy(i, &self.pool(i), self.inner.deadlines).await? else {
            return Ok(None);
        };
        let current = self.inner.choice.current.load(Ordering::Relaxed);
        if node.galera && i != current {
            if let Err(error) = catch_up(&mut node.conn, self.inner.deadlines.statement).await {
                // Closed, not pooled: the session may still wait on every read.
                super::discard(node.conn);
                return Err(error);
            }
        }
        Ok(Some(node))
    }

    /// Makes `node` (caught up by [`usable`](Self::usable)) the one in use, and returns a
    /// connection to it.
    async fn use_node(&self, node: Healthy) -> Result<(usize, Conn), mysql_async::Error> {
        let choice = &self.inner.choice;
        let current = choice.current.load(Ordering::Relaxed);
        if node.index == current {
            return Ok((node.index, node.conn));
        }
        if choice
            .current
            .compare_exchange(current, node.index, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(target: "lightjobs::nodes", from = current.wrapping_add(1), to = node.index + 1, "database node in use changed");
            *lock(&choice.moved_at) = Some(Instant::now());
            self.retire_everywhere(current);
        }
        Ok((node.index, node.conn))
    }

    /// No node may be written to now: connections fail until a check finds one.
    fn write_nowhere(&self, row: &Row) {
        let choice = &self.inner.choice;
        let current = choice.current.swap(NONE, Ordering::Relaxed);
        if current != NONE {
            tracing::error!(target: "lightjobs::nodes", writer = %row.holder, "the cluster's writer node is not reachable from this process while others still use it: writing nowhere until it is");
            self.retire_everywhere(current);
        }
    }

    fn retire_everywhere(&self, node: usize) {
        let members: Vec<Arc<Inner>> = lock(&self.inner.choice.members)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for member in members {
            member.retire(node);
        }
    }
}

/// The writer row, if there is one.
async fn read_row(conn: &mut Conn) -> Result<Option<Row>, mysql_async::Error> {
    let row: Option<(String, String)> = conn
        .exec_first(
            "SELECT holder, DATE_FORMAT(expires_at, '%Y%m%d%H%i%s%f') FROM lightjobs_leases \
             WHERE name = ?",
            (WRITER_ROW,),
        )
        .await?;
    Ok(row.map(|(holder, value)| Row { holder, value }))
}

/// Names `node` the writer if no row exists yet (the first process of a fleet).
async fn create_row(conn: &mut Conn, node: &str) -> Result<(), mysql_async::Error> {
    conn.exec_drop(
        "INSERT IGNORE INTO lightjobs_leases (name, holder, expires_at) \
         VALUES (?, ?, UTC_TIMESTAMP(6))",
        (WRITER_ROW, node),
    )
    .await
}

/// Renews the row if it is still as seen (a renewal by another process meanwhile is as
/// good).
async fn renew(conn: &mut Conn, row: &Row) -> Result<(), mysql_async::Error> {
    write_row(conn, row, &row.holder).await.map(|_| ())
}

/// Sets the row to name `node`, guarded by what was seen: true when it did. A conflict
/// with another writer of the row (a deadlock, a certification failure) means it did not.
async fn write_row(conn: &mut Conn, seen: &Row, node: &str) -> Result<bool, mysql_async::Error> {
    let written = conn
        .exec_drop(
            "UPDATE lightjobs_leases SET holder = ?, expires_at = UTC_TIMESTAMP(6) \
             WHERE name = ? AND holder = ? \
             AND DATE_FORMAT(expires_at, '%Y%m%d%H%i%s%f') = ?",
            (node, WRITER_ROW, &seen.holder, &seen.value),
        )
        .await;
    match written {
        Ok(()) => Ok(conn.affected_rows() == 1),
        Err(mysql_async::Error::Server(e)) if matches!(e.code, 1213 | 1205 | 3101) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_counted_from_the_first_sight_of_a_value() {
        let choice = Choice::new();
        let t0 = Instant::now();
        let row = |v: &str| Row {
            holder: "db1:3306".into(),
            value: v.into(),
        };
        assert_eq!(choice.unchanged_for(&row("1"), t0), Duration::ZERO);
        assert_eq!(
            choice.unchanged_for(&row("1"), t0 + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            choice.unchanged_for(&row("2"), t0 + Duration::from_secs(3)),
            Duration::ZERO,
            "a renewal starts the count again"
        );
        assert_eq!(
            choice.unchanged_for(&row("2"), t0 + Duration::from_secs(4)),
            Duration::from_secs(1)
        );
    }
}
