//! The runtime of a started [`Workers`](crate::Workers): the roles that claim, run and
//! write back jobs on the worker thread, and how they talk.
//!
//! ```text
//!  dispatch (any thread) ── handoff ──┐          maintenance thread: heartbeat ─ confirms ─▶ fence
//!                                     ▼                              rescuer, promoter, pruner, …
//!  jobs table ── claim ──▶ fetcher ── spawn ──▶ run tasks (executor)
//!      ▲                      ▲ successes folded          │ results
//!      │                      └──── completions ◀─────────┤
//!      └──────────────── completer ◀── commands ◀─────────┘
//!  fence watch: the lease ran out → stops the runs     reconciler: gives back rows not held
//! ```
//!
//! One file per role: [`fetcher`] (the claim loop, paced by [`pacing`]), [`executor`] (one
//! run), [`completer`] (writes results), [`ledger`] (the claims held), [`reconciler`],
//! [`fence`] (the process's lease on its jobs), [`handoff`] (jobs handed over at
//! dispatch), [`lifecycle`] (running them, and the two-stage stop), [`supervise`]
//! (restarts after a panic). The types they share are here: [`Settings`] and `Shared`.
//! What the queue handle and the maintenance thread share with the runtime is here too:
//! the wake signal ([`wake`]), the queue settings ([`queue_state`]), [`timing`].

mod canceller;
pub(crate) mod completer;
pub(crate) mod ends;
pub(crate) mod executor;
pub(crate) mod fence;
mod fetcher;
pub(crate) mod handoff;
pub(crate) mod ledger;
mod lifecycle;
mod pacing;
pub(crate) mod queue_state;
mod reconciler;
pub(crate) mod report;
pub(crate) mod supervise;
pub(crate) mod timing;
pub(crate) mod wake;

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::job::DataMap;
use crate::registry::Registry;
use crate::store::Store;
use completer::{Command, Completer, Completions, EventHook, Report};
use executor::Executor;
use fence::Fence;
use handoff::{Intake, IntakeParts};
use ledger::Ledger;
use queue_state::QueueStates;

/// What the runtime is set to do: a plain record, filled in by the `Workers` builder
/// from its settings and fixed once the runtime starts.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) worker_id: String,
    pub(crate) queues: Vec<String>,
    /// The job types this process runs: it claims only those and leaves the others, with
    /// their attempts untouched, for a worker that has them.
    pub(crate) names: Vec<&'static str>,
    pub(crate) concurrency: usize,
    pub(crate) queue_limits: HashMap<String, usize>,
    pub(crate) poll_min: Duration,
    pub(crate) poll_max: Duration,
    pub(crate) job_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) stop_when_empty: bool,
    pub(crate) max_jobs: Option<u64>,
    pub(crate) local_handoff: bool,
    /// Fault injection for the supervision test: the fetch loop panics once after this
    /// many claims.
    pub(crate) panic_after: Option<u64>,
}

/// What the runtime is built from besides its settings: the workers' pool, what runs
/// jobs, and the handles it shares with the maintenance thread and the queue.
pub(crate) struct Parts {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    pub(crate) data: DataMap,
    /// The workers' queue, which jobs dispatch through.
    pub(crate) jobs: crate::JobQueue,
    pub(crate) hook: Option<EventHook>,
    pub(crate) queue_states: QueueStates,
    pub(crate) fence: Arc<Fence>,
    pub(crate) left_behind: completer::LeftBehind,
}

impl Settings {
    /// Whether dispatches may hand jobs over: batch modes count and stop on what they
    /// claim, so they take none.
    fn takes_handoffs(&self) -> bool {
        self.local_handoff && !self.stop_when_empty && self.max_jobs.is_none()
    }

    /// A semaphore per queue with a limit in this process.
    fn queue_slots(&self) -> HashMap<String, Arc<Semaphore>> {
        self.queue_limits
            .iter()
            .map(|(q, n)| (q.clone(), Arc::new(Semaphore::new(*n))))
            .collect()
    }
}

/// The handles the runtime's roles share on the worker thread; each says who writes it
/// and who reads it.
struct Shared {
    store: Store,
    /// The shutdown signal: cancelled by the handle or a signal; read by every role.
    stop: CancellationToken,
    /// Free slots: taken by the fetch loop and the handoff (dispatching threads), given
    /// back when a run ends. Outside the loop so a restarted loop counts the runs.
    slots: Arc<Semaphore>,
    /// Per-queue limits of this process, where set (taken and given back likewise).
    queue_slots: HashMap<String, Arc<Semaphore>>,
    /// Successes waiting to share the next claim's commit: pushed by the runs, taken by
    /// the fetch loop (and by the shutdown, which hands them to the completer).
    completions: Rc<Completions>,
    /// The claims held: see [`Ledger`].
    ledger: Rc<Ledger>,
    /// What the completer is to write: sent by the runs and the fetch loop.
    commands: mpsc::UnboundedSender<Command>,
    /// The runs: spawned by the fetch loop, waited for by the shutdown.
    tracker: TaskTracker,
    /// The counts: written by the fetch loop and the completer, read at the end.
    report: Rc<Cell<Report>>,
    hook: Option<EventHook>,
    /// Paused and limited queues: written by the maintenance thread's promoter and the
    /// queue handle; read by the fetch loop and the handoff.
    queue_states: QueueStates,
    /// Where dispatches of this process hand jobs over, when they may.
    intake: Option<Arc<Intake>>,
    /// This process's lease on its jobs: confirmed by the heartbeat (maintenance thread),
    /// tripped by the fence watch; read by the fetch loop, the handoff and the rescuer.
    fence: Arc<Fence>,
    /// Asks the reconciler for a pass: notified by the fetch loop, the runs, the handoff
    /// and the fence watch.
    reconcile: Arc<Notify>,
    /// Ends of jobs for the settler: recorded by the fetch loop and the completer once
    /// written; taken by the maintenance thread.
    ends: Arc<ends::Ends>,
}

/// A runtime built and not yet running.
pub(crate) struct Runtime {
    settings: Rc<Settings>,
    shared: Rc<Shared>,
    completer: Completer,
    commands: mpsc::UnboundedReceiver<Command>,
    handoffs: Option<mpsc::UnboundedReceiver<handoff::Handoff>>,
    executor: Executor,
    /// Cancelled when the grace period is over: running jobs are dropped and released.
    abort: CancellationToken,
    /// Cancelled at the shutdown deadline: the completer stops retrying.
    give_up: CancellationToken,
}

/// What the shutdown stops last, once every result is written: the maintenance thread.
pub(crate) struct Background {
    pub(crate) stop: CancellationToken,
    pub(crate) done: oneshot::Receiver<()>,
}

impl Runtime {
    pub(crate) fn new(settings: Settings, parts: Parts) -> Runtime {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let give_up = CancellationToken::new();
        let ledger = Rc::new(Ledger::default());
        let (commands, rx) = mpsc::unbounded_channel();
        let ends = parts.jobs.ends().clone();
        let completer = Completer::new(
            parts.store.clone(),
            settings.worker_id.clone(),
            parts.hook.clone(),
            give_up.clone(),
            ledger.clone(),
            parts.left_behind,
            ends.clone(),
        );
        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let queue_slots = settings.queue_slots();
        let reconcile = Arc::new(Notify::new());
        let (intake, handoffs) = if settings.takes_handoffs() {
            let (intake, rx) = Intake::new(IntakeParts {
                worker_id: settings.worker_id.clone(),
                queues: settings.queues.clone(),
                names: settings.names.clone(),
                slots: slots.clone(),
                queue_slots: queue_slots.clone(),
                queue_states: parts.queue_states.clone(),
                stop: stop.clone(),
                fence: parts.fence.clone(),
                reconcile: reconcile.clone(),
            });
            (Some(intake), Some(rx))
        } else {
            (None, None)
        };
        let executor = Executor::new(
            parts.registry,
            settings.job_timeout,
            stop.clone(),
            abort.clone(),
            Arc::new(parts.data),
            parts.jobs,
            settings.cancel_grace,
        );
        let shared = Rc::new(Shared {
            store: parts.store,
            stop,
            slots,
            queue_slots,
            completions: Rc::default(),
            ledger,
            commands,
            tracker: TaskTracker::new(),
            report: completer.report(),
            hook: parts.hook,
            queue_states: parts.queue_states,
            intake,
            fence: parts.fence,
            reconcile,
            ends,
        });
        Runtime {
            settings: Rc::new(settings),
            shared,
            completer,
            commands: rx,
            handoffs,
            executor,
            abort,
            give_up,
        }
    }

    /// Where dispatches of this process may hand jobs to these workers.
    pub(crate) fn intake(&self) -> Option<Arc<Intake>> {
        self.shared.intake.clone()
    }

    /// The signal that starts the shutdown.
    pub(crate) fn stop_signal(&self) -> CancellationToken {
        self.shared.stop.clone()
    }

    /// Runs the workers on the current actix-rt (or `LocalSet`) thread until they stop;
    /// `stopped_claiming` runs once they take no more jobs, `background` is stopped last.
    pub(crate) fn spawn(
        self,
        background: Background,
        stopped_claiming: impl FnOnce() + 'static,
    ) -> actix_rt::task::JoinHandle<Report> {
        actix_rt::spawn(lifecycle::run_then_stop(self, background, stopped_claiming))
    }
}
