//! The in-process handoff: a job dispatched while a worker of the same process has a free
//! slot is inserted already claimed by that worker and given to it directly.
//!
//! A dispatch from a web handler to workers in the same process would otherwise cost two
//! commits and a wake-up: the INSERT, then the fetch loop's claim transaction (two round
//! trips). Handed off, it costs the INSERT alone, and the job starts as soon as the
//! INSERT's reply arrives. The row is `running` under the worker's id from the start, so
//! the usual guarantees hold: a crash leaves it to the rescuer, every later write is
//! guarded by (id, claim token), the token the dispatch chose.
//!
//! A job is only handed off when nothing could have claimed it ahead of the ones already
//! waiting: the worker's last claim found its queues drained, the queue is neither paused
//! nor limited across processes, and the job is due now, not unique and under no flow key;
//! and only while the worker's own lease is valid (see [`Fence`]).
//!
//! A handed-off INSERT whose outcome is in doubt (its reply lost, its deadline passed) is
//! not chased by a task of its own: the worker's reconciler gives back every `running` row
//! of the worker that it does not hold, once per pass, however many there are.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::fence::Fence;
use super::queue_state::QueueStates;
use crate::backoff::Doubling;
use crate::error::Result;
use crate::store::{Claim, ClaimedJob, NewJob, Store, When};

/// The worker slot, and the per-queue slot where the queue has a limit in this process.
pub(crate) type Permits = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// A job inserted as claimed, on its way to the worker's thread.
pub(crate) struct Handoff {
    job: ClaimedJob,
    permits: Permits,
}

impl Handoff {
    /// The job, and the slots it runs in.
    pub(crate) fn into_parts(self) -> (ClaimedJob, Permits) {
        (self.job, self.permits)
    }
}

/// What a running set of workers accepts directly, and where to send it. Shared between
/// the dispatching threads (which reserve) and the worker thread (which accepts).
#[derive(Debug)]
pub(crate) struct Intake {
    worker_id: String,
    queues: HashSet<String>,
    names: HashSet<&'static str>,
    slots: Arc<Semaphore>,
    queue_slots: HashMap<String, Arc<Semaphore>>,
    /// Written by the maintenance thread's promoter and the queue handle; read here.
    queue_states: QueueStates,
    /// Set by the fetch loop while its claims come back full: jobs are waiting in the
    /// table, and a new one must not overtake them.
    backlog: AtomicBool,
    /// The workers' shutdown: no handoff once it has begun.
    stop: CancellationToken,
    fence: Arc<Fence>,
    /// Tokens of reservations not yet accepted by the worker (or given up): their rows
    /// may be in the table before the worker knows them, so the reconciler leaves them
    /// alone. Written by the dispatching threads and the worker thread.
    in_transit: Mutex<HashSet<u64>>,
    /// Asks the worker's reconciler for a pass soon (an INSERT in doubt).
    reconcile: Arc<Notify>,
    jobs: mpsc::UnboundedSender<Handoff>,
}

/// A free slot taken for one dispatch.
pub(crate) struct Reservation {
    intake: Arc<Intake>,
    permits: Option<Permits>,
    token: u64,
}

/// What an intake is built from: the worker's identity, what it runs and its handles.
pub(crate) struct IntakeParts {
    pub worker_id: String,
    pub queues: Vec<String>,
    pub names: Vec<&'static str>,
    pub slots: Arc<Semaphore>,
    pub queue_slots: HashMap<String, Arc<Semaphore>>,
    pub queue_states: QueueStates,
    pub stop: CancellationToken,
    pub fence: Arc<Fence>,
    pub reconcile: Arc<Notify>,
}

impl Intake {
    /// An intake and the receiving end its handed-off jobs arrive on.
    pub(crate) fn new(parts: IntakeParts) -> (Arc<Intake>, mpsc::UnboundedReceiver<Handoff>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let intake = Intake {
            worker_id: parts.worker_id,
            queues: parts.queues.into_iter().collect(),
            names: parts.names.into_iter().collect(),
            slots: parts.slots,
            queue_slots: parts.queue_slots,
            queue_states: parts.queue_states,
            backlog: AtomicBool::new(false),
            stop: parts.stop,
            fence: parts.fence,
            in_transit: Mutex::default(),
            reconcile: parts.reconcile,
            jobs,
        };
        (Arc::new(intake), rx)
    }

    /// Takes a free slot for `job` if this intake can run it now.
    pub(crate) fn reserve(self: &Arc<Self>, job: &NewJob) -> Option<Reservation> {
        if self.stop.is_cancelled()
            || self.jobs.is_closed()
            || self.backlog.load(Ordering::Relaxed)
            || !self.fence.is_open()
            || job.unique.is_some()
            || job.flow.is_some()
            || job.when != When::After(Duration::ZERO)
            || !self.queues.contains(&job.queue)
            || !self.names.contains(job.name)
        {
            return None;
        }
        {
            let states = self.queue_states.read().ok()?;
            if states.is_paused(&job.queue) || states.is_limited(&job.queue) {
                return None;
            }
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let queue_slot = match self.queue_slots.get(&job.queue) {
            Some(sem) => Some(sem.clone().try_acquire_owned().ok()?),
            None => None,
        };
        // The claim's token, as a claim by the fetch loop would set it: every later write
        // is guarded by it.
        let token = crate::store::new_token();
        self.transit().insert(token);
        Some(Reservation {
            intake: self.clone(),
            permits: Some((slot, queue_slot)),
            token,
        })
    }

    /// Set by the fetch loop after each claim.
    pub(crate) fn set_backlog(&self, backlog: bool) {
        self.backlog.store(backlog, Ordering::Relaxed);
    }

    /// Whether a reservation with `token` is still on its way.
    pub(crate) fn in_transit(&self, token: u64) -> bool {
        self.transit().contains(&token)
    }

    /// The worker has the job: from now on it is in the worker's ledger.
    pub(crate) fn arrived(&self, token: u64) {
        self.transit().remove(&token);
    }

    fn transit(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.in_transit.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// The claim a row inserted for this reservation carries.
    pub(crate) fn claim(&self) -> Claim<'_> {
        Claim {
            worker: &self.intake.worker_id,
            token: self.token,
        }
    }

    /// Inserts `job` as claimed and hands it to the worker. Runs on the queue's connection
    /// thread, so a caller that stops waiting does not strand the job half-way.
    pub(crate) async fn insert(self, store: Store, job: NewJob) -> Result<u64> {
        let (worker, token) = (&self.intake.worker_id, self.token);
        let inserted = store
            .nodes()
            .run(async |conn| Store::insert_claimed(conn, &job, worker, token).await)
            .await;
        match inserted {
            Ok(id) => Ok(self.deliver(&store, id, job)),
            Err(error) => {
                // A statement the server refused, or a connection never had, did
                // nothing; anything else may have committed before the reply was lost.
                if error.in_doubt() {
                    self.in_doubt();
                }
                Err(error)
            }
        }
    }

    /// Hands `job`, inserted as claimed with id `id`, to the worker; if the worker is gone,
    /// the row is released in the background. Returns `id`.
    pub(crate) fn deliver(mut self, store: &Store, id: u64, job: NewJob) -> u64 {
        let queue = job.queue.clone();
        let Some(permits) = self.permits.take() else {
            return id;
        };
        let handoff = Handoff {
            job: ClaimedJob {
                id,
                token: self.token,
                name: job.name.to_owned(),
                payload: job.payload,
                queue: job.queue,
                attempt: 1,
                max_attempts: job.max_attempts,
                waited: Duration::ZERO,
                flow: None,
                trace_parent: job.trace,
                tags: job.tags,
                meta: job.meta,
                batch: job.batch,
                after_batch: None,
                defect: None,
            },
            permits,
        };
        if self.intake.jobs.send(handoff).is_err() {
            // The worker has stopped: no reconciler of its will see the row.
            self.intake.arrived(self.token);
            release_in_background(
                store.clone(),
                queue,
                self.intake.worker_id.clone(),
                self.token,
            );
        }
        id
    }

    /// The INSERT for this reservation may or may not have committed: the worker's
    /// reconciler gives the row back if it exists.
    pub(crate) fn in_doubt(self) {
        self.intake.arrived(self.token);
        self.intake.reconcile.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Never inserted (given up, refused) or delivered: either way no longer in transit
        // once the worker has it, which `Fetcher::accept` records; a reservation dropped
        // with its permits was never sent anywhere.
        if self.permits.is_some() {
            self.intake.arrived(self.token);
        }
    }
}

/// Gives a handed-off row whose worker has stopped back to `pending`, retrying with a
/// growing pause for a minute. If this process ends first, its heartbeat stops and the
/// rescuer takes the row.
fn release_in_background(store: Store, queue: String, worker: String, token: u64) {
    tokio::spawn(async move {
        let mut pause = Doubling::new(Duration::from_millis(250), Duration::from_secs(10));
        let mut waited = Duration::ZERO;
        while waited < RELEASE_WATCH {
            match store.release_handoff(&queue, &worker, token).await {
                Ok(0) => {}
                Ok(_) => {
                    tracing::warn!(target: "lightjobs::queue", queue, "a dispatched job could not be handed to its worker; released it to the queue");
                    super::wake::wake_workers();
                    return;
                }
                Err(error) => {
                    tracing::debug!(target: "lightjobs::queue", %error, "releasing an undelivered job failed; retrying");
                }
            }
            let wait = pause.next();
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    });
}

/// How long a release keeps looking for a row it did not find.
const RELEASE_WATCH: Duration = Duration::from_secs(60);
