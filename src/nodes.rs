//! The database servers a queue may use, in order of preference, and the one in use now.
//!
//! With one server this is a plain pool. With several (the nodes of a Galera cluster),
//! every connection of the process goes to one node: the first in the list that is
//! healthy (ready, synced, not a donor). Every process applies the same rule to the same
//! list, so the cluster has one writer, which is what keeps claims exactly once: Galera
//! certifies conflicting writes only at COMMIT, so writers on several nodes would turn
//! `SKIP LOCKED` claims into certification failures and lost updates. When the node in
//! use fails, the next healthy one takes over within seconds; when an earlier node is
//! healthy again, every process moves back to it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, Pool};

/// How often, with several nodes, the one in use is checked (and an earlier one tried).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A pool per node; cheap to clone (shared).
#[derive(Clone, Debug)]
pub(crate) struct Nodes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pools: Vec<Pool>,
    current: AtomicUsize,
    next_check: Mutex<Instant>,
}

impl Nodes {
    /// One pool per node, in order of preference.
    pub(crate) fn new(opts: Vec<Opts>) -> Nodes {
        Nodes {
            inner: Arc::new(Inner {
                pools: opts.into_iter().map(Pool::new).collect(),
                current: AtomicUsize::new(0),
                next_check: Mutex::new(Instant::now()),
            }),
        }
    }

    /// A single server's pool.
    pub(crate) fn single(pool: Pool) -> Nodes {
        Nodes {
            inner: Arc::new(Inner {
                pools: vec![pool],
                current: AtomicUsize::new(0),
                next_check: Mutex::new(Instant::now()),
            }),
        }
    }

    /// The index of the node in use (in the list given).
    pub(crate) fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed)
    }

    /// A connection to the node in use, moving to another node when it fails or is no
    /// longer healthy.
    pub(crate) async fn get_conn(&self) -> Result<Conn, mysql_async::Error> {
        let pools = &self.inner.pools;
        if pools.len() == 1 {
            return pools[0].get_conn().await;
        }
        if !self.take_due() {
            match pools[self.current()].get_conn().await {
                Ok(conn) => return Ok(conn),
                Err(error) if !crate::error::is_unavailable(&error) => return Err(error),
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
        if self.take_due() {
            let _ = self.choose().await;
        }
        self.current() != node
    }

    /// True (once) when the periodic check is due.
    fn take_due(&self) -> bool {
        let mut next = self
            .inner
            .next_check
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let due = Instant::now() >= *next;
        if due {
            *next = Instant::now() + CHECK_EVERY;
        }
        due
    }

    /// The first healthy node in order becomes the one in use; returns a connection to it.
    async fn choose(&self) -> Result<Conn, mysql_async::Error> {
        let current = self.current();
        let mut last_error = None;
        for (i, pool) in self.inner.pools.iter().enumerate() {
            match healthy(pool).await {
                Ok(Some(conn)) => {
                    if i != current {
                        self.inner.current.store(i, Ordering::Relaxed);
                        tracing::warn!(target: "lightjobs::nodes", from = current + 1, to = i + 1, "database node in use changed");
                    }
                    return Ok(conn);
                }
                Ok(None) => {}
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(mysql_async::Error::Driver(
            mysql_async::DriverError::PoolDisconnected,
        )))
    }

    /// Closes every pool.
    pub(crate) async fn disconnect(self) {
        for pool in self.inner.pools.iter().cloned() {
            let _ = pool.disconnect().await;
        }
    }
}

/// A connection to `pool`'s node if it can take writes: a Galera node must be ready and
/// synced (a donor or a joiner is not); a server without Galera always can.
async fn healthy(pool: &Pool) -> Result<Option<Conn>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let status: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('wsrep_ready', 'wsrep_local_state_comment', 'wsrep_cluster_status')",
        )
        .await?;
    Ok(is_healthy(&status).then_some(conn))
}

/// Judges a node by its `wsrep_%` status (empty on a server without Galera).
fn is_healthy(status: &[(String, String)]) -> bool {
    let get = |name: &str| {
        status
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    match get("wsrep_ready") {
        // No Galera provider loaded: an ordinary server.
        None => true,
        Some(ready) => {
            ready.eq_ignore_ascii_case("ON")
                && get("wsrep_local_state_comment").is_some_and(|s| s == "Synced")
                && get("wsrep_cluster_status").is_none_or(|s| s == "Primary")
        }
    }
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

    fn status(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn health_of_a_node() {
        assert!(is_healthy(&[]), "a server without Galera");
        let synced = status(&[
            ("wsrep_ready", "ON"),
            ("wsrep_local_state_comment", "Synced"),
            ("wsrep_cluster_status", "Primary"),
        ]);
        assert!(is_healthy(&synced));
        let donor = status(&[
            ("wsrep_ready", "ON"),
            ("wsrep_local_state_comment", "Donor/Desynced"),
            ("wsrep_cluster_status", "Primary"),
        ]);
        assert!(!is_healthy(&donor));
        let cut_off = status(&[
            ("wsrep_ready", "OFF"),
            ("wsrep_local_state_comment", "Initialized"),
            ("wsrep_cluster_status", "non-Primary"),
        ]);
        assert!(!is_healthy(&cut_off));
    }

    #[test]
    fn several_urls() {
        assert_eq!(split_urls("mysql://a/db"), vec!["mysql://a/db"]);
        assert_eq!(
            split_urls("mysql://a:1/db, mysql://b:2/db,"),
            vec!["mysql://a:1/db", "mysql://b:2/db"]
        );
    }
}
