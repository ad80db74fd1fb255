//! The dispatcher's half of the wake-up across processes: after a dispatch commits, one
//! idle worker process that serves its queue is woken (`store::wake`), so that the job
//! starts within milliseconds instead of at that process's next poll.
//!
//! Wake-ups are coalesced: one round (a read of the listeners and a `KILL QUERY` each) is
//! in flight at a time, at most one per [`GAP`], carrying every queue dispatched to since
//! the last. Under load the workers are busy and claim without being woken; the gap
//! bounds what the wake-ups cost the server then.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::store::Store;

/// The least time between two rounds of one queue handle.
const GAP: Duration = Duration::from_millis(5);

/// How long rounds are skipped after one found no other process listening (an app whose
/// workers run in its own process, or none at all). A process that starts listening
/// meanwhile misses at most this much of wake-ups, each costing it one poll.
const NOBODY_FOR: Duration = Duration::from_secs(1);

/// Past this many distinct queues waiting for a round, it wakes a listener of any queue.
const MAX_QUEUES: usize = 32;

/// The queues to wake listeners for.
#[derive(Debug, Default)]
struct Wanted {
    queues: BTreeSet<String>,
    any: bool,
}

/// The handle the queue keeps; the rounds run on its connection thread.
#[derive(Debug)]
pub(crate) struct Waker {
    wanted: Arc<Mutex<Wanted>>,
    kick: mpsc::Sender<()>,
}

impl Waker {
    /// The handle, and the task to spawn on the connection thread (it ends with the
    /// handle).
    pub(crate) fn new(store: Store) -> (Waker, impl std::future::Future<Output = ()>) {
        let wanted = Arc::new(Mutex::new(Wanted::default()));
        let (kick, kicked) = mpsc::channel(1);
        let task = run(store, wanted.clone(), kicked);
        (Waker { wanted, kick }, task)
    }

    /// Asks for a listener of `queue` (`None`: of any queue) to be woken soon.
    pub(crate) fn wake(&self, queue: Option<&str>) {
        {
            let mut wanted = crate::nodes::lock(&self.wanted);
            match queue {
                Some(q) if !wanted.any && wanted.queues.len() < MAX_QUEUES => {
                    if !wanted.queues.contains(q) {
                        wanted.queues.insert(q.to_owned());
                    }
                }
                _ => wanted.any = true,
            }
        }
        // Full: a round is already due, and it will take these queues too.
        let _ = self.kick.try_send(());
    }
}

async fn run(store: Store, wanted: Arc<Mutex<Wanted>>, mut kicked: mpsc::Receiver<()>) {
    let host = crate::process::host_name();
    let pid = std::process::id();
    let mut nobody_until: Option<Instant> = None;
    while kicked.recv().await.is_some() {
        let Wanted { queues, any } = std::mem::take(&mut *crate::nodes::lock(&wanted));
        if nobody_until.is_some_and(|until| Instant::now() < until) {
            continue;
        }
        let queues: Vec<String> = queues.into_iter().collect();
        let which = (!any).then_some(queues.as_slice());
        match store.wake_listeners(which, &host, pid).await {
            Ok(listening) => {
                nobody_until = (listening == 0).then(|| Instant::now() + NOBODY_FOR);
            }
            Err(error) if error.is_not_owner() => {
                // The workers connect as another user: `KILL` of their connections is
                // refused, and the fetch loops' polls find the jobs.
                tracing::info!(target: "lightjobs::queue", %error, "workers of other processes use another database user: not waking them, they poll");
                return;
            }
            Err(error) => {
                tracing::debug!(target: "lightjobs::queue", %error, "waking other processes failed; they poll");
            }
        }
        tokio::time::sleep(GAP).await;
    }
}
