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
//! nor limited across processes, and the job is due now and not unique.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::queue_state::QueueStates;
use crate::store::{Claim, ClaimedJob, NewJob, Store, When};

/// The worker slot, and the per-queue slot where the queue has a limit in this process.
pub(crate) type Permits = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// A job inserted as claimed, on its way to the worker's thread.
pub(crate) struct Handoff {
    pub job: ClaimedJob,
    pub permits: Permits,
}

/// What a running set of workers accepts directly, and where to send it.
#[derive(Debug)]
pub(crate) struct Intake {
    pub worker_id: String,
    pub queues: HashSet<String>,
    pub names: HashSet<&'static str>,
    pub slots: Arc<Semaphore>,
    pub queue_slots: HashMap<String, Arc<Semaphore>>,
    pub queue_states: QueueStates,
    /// Set by the fetch loop while its claims come back full: jobs are waiting in the
    /// table, and a new one must not overtake them.
    pub backlog: AtomicBool,
    /// The workers' shutdown: no handoff once it has begun.
    pub stop: CancellationToken,
    pub jobs: mpsc::UnboundedSender<Handoff>,
}

/// A free slot taken for one dispatch.
pub(crate) struct Reservation {
    intake: Arc<Intake>,
    permits: Permits,
    token: u64,
}

impl Intake {
    /// Takes a free slot for `job` if this intake can run it now.
    pub(crate) fn reserve(self: &Arc<Self>, job: &NewJob) -> Option<Reservation> {
        if self.stop.is_cancelled()
            || self.jobs.is_closed()
            || self.backlog.load(Ordering::Relaxed)
            || job.unique.is_some()
            || job.when != When::After(Duration::ZERO)
            || !self.queues.contains(&job.queue)
            || !self.names.contains(job.name)
        {
            return None;
        }
        {
            let states = self.queue_states.read().ok()?;
            if states.paused.contains(&job.queue) || states.limited.contains(&job.queue) {
                return None;
            }
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let queue_slot = match self.queue_slots.get(&job.queue) {
            Some(sem) => Some(sem.clone().try_acquire_owned().ok()?),
            None => None,
        };
        Some(Reservation {
            intake: self.clone(),
            permits: (slot, queue_slot),
            // The claim's token, as a claim by the fetch loop would set it: the release of
            // an in-doubt dispatch and every later write are guarded by it.
            token: crate::store::new_token(),
        })
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
    ///
    /// When the worker is gone by then, or when the INSERT failed after it may have
    /// reached the server, the row (if any) is given back to `pending` in the background,
    /// retrying until the database answers.
    pub(crate) async fn insert(self, store: Store, job: NewJob) -> Result<u64> {
        let inserted = async {
            let mut conn = store.nodes().get_conn().await?;
            Store::insert_claimed(&mut conn, &job, &self.intake.worker_id, self.token).await
        }
        .await;
        match inserted {
            Ok(id) => Ok(self.deliver(&store, id, job)),
            Err(error) => {
                // A statement the server refused did nothing; anything else may have
                // committed before the reply was lost.
                if !error.is_server_refusal() {
                    self.release(&store, &job.queue);
                }
                Err(error)
            }
        }
    }

    /// Hands `job`, inserted as claimed with id `id`, to the worker; if the worker is gone,
    /// the row is released in the background. Returns `id`.
    pub(crate) fn deliver(self, store: &Store, id: u64, job: NewJob) -> u64 {
        let queue = job.queue.clone();
        let (worker, token) = (self.intake.worker_id.clone(), self.token);
        let handoff = Handoff {
            job: ClaimedJob {
                id,
                token,
                name: job.name.to_owned(),
                payload: job.payload,
                queue: job.queue,
                attempt: 1,
                max_attempts: job.max_attempts,
                waited: Duration::ZERO,
            },
            permits: self.permits,
        };
        if self.intake.jobs.send(handoff).is_err() {
            release_in_background(store.clone(), queue, worker, token);
        }
        id
    }

    /// Gives back a row that may have been inserted for this reservation (its INSERT's
    /// outcome is in doubt), in the background.
    pub(crate) fn release(self, store: &Store, queue: &str) {
        release_in_background(
            store.clone(),
            queue.to_owned(),
            self.intake.worker_id.clone(),
            self.token,
        );
    }
}

/// Gives a handed-off row back to `pending`, retrying with a growing pause until the
/// database answers. If this process ends first, its heartbeat stops and the rescuer
/// takes the row.
///
/// A statement whose connection died may still be running on the server, so finding no
/// row is not the end: the release is tried again for a minute. A claim replaces the
/// token, so a late attempt cannot touch the job once it has been claimed again.
fn release_in_background(store: Store, queue: String, worker: String, token: u64) {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(250);
        let mut answered_for = Duration::ZERO;
        while answered_for < RELEASE_WATCH {
            match store.release_handoff(&queue, &worker, token).await {
                Ok(0) => answered_for += pause,
                Ok(_) => {
                    tracing::warn!(target: "lightjobs::queue", queue, "a dispatched job could not be handed to its worker; released it to the queue");
                    crate::wake::wake_workers();
                    return;
                }
                Err(error) => {
                    tracing::debug!(target: "lightjobs::queue", %error, "releasing an undelivered job failed; retrying");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    });
}

/// How long a release keeps looking for a row it did not find.
const RELEASE_WATCH: Duration = Duration::from_secs(60);
