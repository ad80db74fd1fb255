//! Looking at one node: whether it can take writes, who it is, and making it catch up with
//! the cluster before anything uses it. Each step under the deadlines: a probe of a node
//! behind a path that stopped forwarding must not hold up the choice of another.

use mysql_async::prelude::*;
use mysql_async::{Conn, Pool};

use super::{discard, timed_out, Deadlines};

/// A node that can take writes, with a connection to it.
pub(crate) struct Healthy {
    pub(crate) index: usize,
    pub(crate) conn: Conn,
    /// A Galera node (which must catch up before it is used).
    pub(crate) galera: bool,
    /// Who the node is, as it says itself (`host:port`): the same for every process,
    /// whatever URL, proxy or address each one reaches it through.
    pub(crate) identity: String,
}

/// Probes node `index` of `pool`: `Some` if it can take writes (a Galera node must be
/// ready, synced and in the primary component; a donor or a joiner is not), `None` if it
/// answers but cannot.
pub(crate) async fn healthy(
    index: usize,
    pool: &Pool,
    deadlines: Deadlines,
) -> Result<Option<Healthy>, mysql_async::Error> {
    let mut conn = tokio::time::timeout(deadlines.connect, pool.get_conn())
        .await
        .map_err(|_| timed_out("connect", deadlines.connect))??;
    let probe = async {
        let status: Vec<(String, String)> = conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('wsrep_ready', 'wsrep_local_state_comment', 'wsrep_cluster_status')",
            )
            .await?;
        let identity: Option<String> = conn
            .query_first("SELECT CONCAT(@@hostname, ':', @@port)")
            .await?;
        Ok::<_, mysql_async::Error>((status, identity.unwrap_or_default()))
    };
    let (status, identity) = match tokio::time::timeout(deadlines.statement, probe).await {
        Ok(found) => found?,
        Err(_) => {
            discard(conn);
            return Err(timed_out("probe", deadlines.statement));
        }
    };
    let galera = status
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("wsrep_ready"));
    if is_healthy(&status) {
        return Ok(Some(Healthy {
            index,
            conn,
            galera,
            identity,
        }));
    }
    // Closed, not pooled: an idle probe session would stay on a node nobody writes to.
    discard(conn);
    Ok(None)
}

/// Waits until the node has applied every write set the cluster committed before this
/// call. Galera applies another node's commits asynchronously, so without it a claim
/// committed on the node left just before it failed could still be invisible here: its
/// release by token, or its result, would find no row, and the row would turn up
/// `running` afterwards, held by a live process that has let it go. Applying is in order,
/// so one wait on the node covers every connection to it from then on.
pub(crate) async fn catch_up(
    conn: &mut Conn,
    deadline: std::time::Duration,
) -> Result<(), mysql_async::Error> {
    let wait = async {
        // 9 = reads and SHOW: the SHOW below waits (it counts in `wsrep_causal_reads`).
        conn.query_drop("SET SESSION wsrep_sync_wait = 9").await?;
        let waited = conn
            .query_drop("SHOW GLOBAL STATUS LIKE 'wsrep_last_committed'")
            .await;
        conn.query_drop("SET SESSION wsrep_sync_wait = 0").await?;
        waited
    };
    tokio::time::timeout(deadline, wait)
        .await
        .unwrap_or_else(|_| Err(timed_out("catch-up", deadline)))
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
}
