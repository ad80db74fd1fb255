//! The listener: the push half of the wake-up across processes. It waits in `SELECT
//! SLEEP` on a connection of its own, registered in this process's `lightjobs_workers`
//! row; a dispatcher in another process interrupts the wait with `KILL QUERY` after its
//! commit (see `store::wake`), and the listener wakes this process's fetch loops, which
//! claim at once instead of at their next poll.
//!
//! A wake-up that is lost (sent between two waits, to a connection that died, to a node
//! this process left) costs the job one poll, never the job: the fetch loops poll as they
//! would without it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Doubling;
use crate::nodes::KeptConn;
use crate::runtime::timing::pause;
use crate::store::{Registered, Store, Waited};

/// How long one wait lasts. Its reply is the listener's only idle query: a tenth of one
/// fetch loop's idle poll at the default settings.
const WAIT: Duration = Duration::from_secs(10);

/// How often the registration is written again although the connection did not change:
/// a process row written anew (after its heartbeat found it gone) loses it.
const REGISTER_EVERY: u32 = 6;

pub(crate) struct Listener {
    store: Store,
    worker_id: String,
}

/// The listening connection and what is known of it.
#[derive(Default)]
struct Held {
    conn: KeptConn,
    node: usize,
    registered: bool,
    waits: u32,
}

impl Listener {
    pub(crate) const NAME: &'static str = "listener";

    pub(crate) fn new(store: Store, worker_id: String) -> Listener {
        Listener { store, worker_id }
    }

    /// Waits and wakes until `stop`; a wait in progress is cut short (its connection
    /// closed, never pooled mid-statement).
    pub(crate) async fn run(&self, stop: CancellationToken) {
        let mut held = Held::default();
        let mut backoff = Doubling::new(Duration::from_millis(200), WAIT);
        loop {
            let waited = tokio::select! {
                () = stop.cancelled() => return,
                waited = self.wait(&mut held) => waited,
            };
            match waited {
                Ok(Waited::Woken) => {
                    backoff.reset();
                    crate::runtime::wake::wake_workers();
                }
                Ok(Waited::Elapsed) => backoff.reset(),
                Err(error) => {
                    tracing::debug!(target: "lightjobs::listener", %error, "listening failed");
                    held.conn.close();
                    if pause(backoff.next(), &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// One wait: on the kept connection unless the process moved to another node, after
    /// registering it when it is new (and now and then).
    async fn wait(&self, held: &mut Held) -> crate::Result<Waited> {
        let nodes = self.store.nodes();
        if held.conn.is_open() && nodes.moved_from(held.node).await {
            held.conn.close();
        }
        let deadline = nodes.deadlines().statement;
        let conn = match held.conn.take() {
            Some(conn) => held.conn.insert(conn),
            None => {
                let (node, conn) = nodes.get_conn_at().await?;
                held.node = node;
                held.registered = false;
                held.conn.insert(conn)
            }
        };
        if !held.registered || held.waits % REGISTER_EVERY == 0 {
            let register = Store::register_listener(conn, &self.worker_id);
            let registered = tokio::time::timeout(deadline, register)
                .await
                .map_err(|_| timeout("registering the listener", deadline))??;
            held.registered = registered == Registered::Yes;
            if registered == Registered::Woken {
                return Ok(Waited::Woken);
            }
        }
        held.waits = held.waits.wrapping_add(1);
        // A wait whose reply does not come (a path that stopped forwarding) is given up
        // after its length and a statement's deadline.
        let limit = WAIT + deadline;
        tokio::time::timeout(limit, Store::listen(conn, WAIT.as_secs()))
            .await
            .map_err(|_| timeout("listening", limit))?
    }
}

fn timeout(what: &'static str, after: Duration) -> crate::Error {
    crate::Error::Timeout {
        what,
        after,
        sent: true,
    }
}
