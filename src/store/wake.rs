//! The statements of the push wake-up across processes: an idle worker process registers
//! a connection of its own and waits in `SELECT SLEEP` on it; a dispatcher elsewhere
//! interrupts that sleep with `KILL QUERY` after its commit.
//!
//! `KILL` needs no privilege for the user's own connections. A connection id means
//! something only on the server that gave it, and only until that server restarts (ids
//! start again from 1), so a registration names both, and a dispatcher wakes only the
//! listeners registered on its own connection's server and start: a stale id can never
//! interrupt a statement of some other connection.

use super::*;

/// When the server of this connection started (seconds since 1970, by its own clock: two
/// readings may differ by a second). `@@server_uid` names the server.
macro_rules! server_boot {
    () => {
        "UNIX_TIMESTAMP() - (SELECT CAST(VARIABLE_VALUE AS SIGNED) FROM \
         information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME')"
    };
}

/// The server's error for an interrupted statement: a `KILL QUERY` arrived.
const INTERRUPTED: u16 = 1317;

/// `KILL` of an id the server does not know: the listener's connection is gone.
const UNKNOWN_THREAD: u16 = 1094;

/// What a registration of the listening connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registered {
    Yes,
    /// The process's row is not there (not yet inserted, or removed).
    NoRow,
    /// A `KILL QUERY` cut it short: a dispatcher is waking this process.
    Woken,
}

/// What a wait on the listening connection ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Another process's dispatch interrupted it.
    Woken,
    /// It slept its time out.
    Elapsed,
}

impl Store {
    /// Registers `conn` as `worker_id`'s listener.
    pub(crate) async fn register_listener(conn: &mut Conn, worker_id: &str) -> Result<Registered> {
        let written = conn
            .exec_drop(
                concat!(
                    "UPDATE lightjobs_workers SET wake_conn = CONNECTION_ID(), ",
                    "wake_node = @@server_uid, wake_boot = ",
                    server_boot!(),
                    " WHERE id = ?"
                ),
                (worker_id,),
            )
            .await;
        match written {
            Ok(()) if rows_matched(&conn.info()).unwrap_or(conn.affected_rows()) > 0 => {
                Ok(Registered::Yes)
            }
            Ok(()) => Ok(Registered::NoRow),
            // A wake-up meant for the registration already in place (the same connection
            // registered again): the statement is rolled back, the wake-up is not lost.
            Err(mysql_async::Error::Server(e)) if e.code == INTERRUPTED => Ok(Registered::Woken),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits on the listening connection for up to `secs` seconds.
    pub(crate) async fn listen(conn: &mut Conn, secs: u64) -> Result<Waited> {
        match conn.exec_drop("SELECT SLEEP(?)", (secs,)).await {
            Ok(()) => Ok(Waited::Elapsed),
            Err(mysql_async::Error::Server(e)) if e.code == INTERRUPTED => Ok(Waited::Woken),
            Err(e) => Err(e.into()),
        }
    }

    /// Interrupts the wait of one listener per queue of `queues` (`None`: of any queue),
    /// among the live processes of other hosts or pids whose listener is on the server
    /// and start of this connection. Returns how many were sent.
    pub(crate) async fn wake_listeners(
        &self,
        queues: Option<&[String]>,
        host: &str,
        pid: u32,
    ) -> Result<usize> {
        self.nodes
            .run(async |conn| {
                let listeners: Vec<(u64, String)> = conn
                    .exec(
                        concat!(
                            "SELECT wake_conn, queues FROM lightjobs_workers ",
                            "WHERE wake_conn IS NOT NULL AND stopped_at IS NULL ",
                            "AND wake_node = @@server_uid AND ABS(wake_boot - (",
                            server_boot!(),
                            ")) <= 2 AND NOT (host = ? AND pid = ?)"
                        ),
                        (host, pid),
                    )
                    .await?;
                for candidates in choose(&listeners, queues, fastrand::usize(..)) {
                    // The next one when a listener's connection is gone (its process died
                    // and no rescuer has removed its row yet).
                    for id in candidates {
                        if kill_query(conn, id).await? {
                            break;
                        }
                    }
                }
                Ok(listeners.len())
            })
            .await
    }
}

/// The rows an UPDATE matched, from its OK packet's "Rows matched: 1  Changed: 0
/// Warnings: 0". Its affected rows count only the rows it changed (the driver does not ask
/// for found rows), and the same connection registered again changes nothing: read as
/// "no row", it would register again at every wait.
fn rows_matched(info: &str) -> Option<u64> {
    let rest = info.strip_prefix("Rows matched:")?.trim_start();
    rest.split_whitespace().next()?.parse().ok()
}

/// Interrupts connection `id`'s statement; false when the server knows no such
/// connection.
async fn kill_query(conn: &mut Conn, id: u64) -> Result<bool> {
    // Not a prepared statement (KILL cannot be); the id is a number.
    match conn.query_drop(format!("KILL QUERY {id}")).await {
        Ok(()) => Ok(true),
        Err(mysql_async::Error::Server(e)) if e.code == UNKNOWN_THREAD => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// For each wanted queue (`None`: one of any), the listeners that serve it (each listed
/// with its process's queues, a JSON array) in the order to try them: round the list from
/// `start`, so that wake-ups spread over the processes. A listener already first for one
/// queue is not tried again for another.
fn choose(listeners: &[(u64, String)], queues: Option<&[String]>, start: usize) -> Vec<Vec<u64>> {
    let n = listeners.len();
    let round = || (0..n).map(move |i| &listeners[(start + i) % n]);
    let serves = |list: &str, q: &str| {
        serde_json::from_str::<Vec<String>>(list).is_ok_and(|l| l.iter().any(|x| x == q))
    };
    let all = || round().map(|l| l.0).collect::<Vec<u64>>();
    let Some(queues) = queues else {
        return vec![all()].into_iter().filter(|c| !c.is_empty()).collect();
    };
    let mut firsts = Vec::new();
    let mut out = Vec::new();
    for q in queues {
        let candidates: Vec<u64> = round().filter(|l| serves(&l.1, q)).map(|l| l.0).collect();
        match candidates.first() {
            Some(first) if !firsts.contains(first) => {
                firsts.push(*first);
                out.push(candidates);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{choose, rows_matched};

    #[test]
    fn rows_matched_is_read_from_the_update_info() {
        assert_eq!(
            rows_matched("Rows matched: 1  Changed: 0  Warnings: 0"),
            Some(1)
        );
        assert_eq!(
            rows_matched("Rows matched: 0  Changed: 0  Warnings: 0"),
            Some(0)
        );
        assert_eq!(rows_matched(""), None);
    }

    #[test]
    fn one_listener_per_queue_among_those_that_serve_it() {
        let listeners = vec![
            (1, r#"["default"]"#.to_owned()),
            (2, r#"["mail","default"]"#.to_owned()),
            (3, r#"["mail"]"#.to_owned()),
        ];
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(choose(&listeners, Some(&q(&["mail"])), 0), vec![vec![2, 3]]);
        assert_eq!(choose(&listeners, Some(&q(&["mail"])), 2), vec![vec![3, 2]]);
        assert_eq!(
            choose(&listeners, Some(&q(&["default", "mail"])), 1),
            vec![vec![2, 1]],
            "one process first for both is woken once"
        );
        assert!(choose(&listeners, Some(&q(&["other"])), 0).is_empty());
        assert_eq!(choose(&listeners, None, 5), vec![vec![3, 1, 2]]);
        assert!(choose(&[], None, 0).is_empty());
    }
}
