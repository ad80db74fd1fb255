//! The roles every worker process runs beside its fetch loop, on a thread of its own so that
//! a busy or blocked worker runtime never delays a heartbeat: the heartbeat, the rescuer of
//! dead processes' jobs, the promoter of due jobs (and reader of queue settings), the
//! pruner, the rollup of finished jobs per minute, the listener for other processes'
//! wake-ups, the settler of batches and waiting jobs, cron schedules, and the watch for
//! jobs of types no worker here runs.

mod foreign;
mod heartbeat;
mod listener;
mod promoter;
mod pruner;
#[cfg(feature = "cron")]
mod recurring;
mod rescuer;
mod role;
mod rollup;
mod settler;

use foreign::ForeignJobs;
pub(crate) use foreign::{ForeignPlan, FOREIGN_CHECK_INTERVAL, FOREIGN_WARN_AFTER};
use heartbeat::Heartbeat;
use listener::Listener;
use promoter::Promoter;
use pruner::Pruner;
#[cfg(feature = "cron")]
use recurring::Recurring;
#[cfg(feature = "cron")]
pub(crate) use recurring::RecurringJob;
use rescuer::Rescuer;
use role::Role;
use rollup::Rollup;
use settler::Settler;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::runtime::completer::LeftBehind;
use crate::runtime::fence::Fence;
use crate::runtime::supervise::supervise;

use crate::queue::JobQueue;
use crate::runtime::queue_state::QueueStates;
use crate::store::{Store, WorkerInfo};

/// How often the pruner looks for old jobs.
const PRUNE_INTERVAL: Duration = Duration::from_secs(300);

/// How often due `scheduled` jobs (delays, retries) are moved to `pending`: the lateness
/// of a delayed job, at most.
const PROMOTE_INTERVAL: Duration = Duration::from_millis(100);

/// What the maintenance thread runs with, besides the queue: a plain record `Workers::start`
/// fills in.
pub(crate) struct Maintenance {
    pub(crate) info: WorkerInfo,
    pub(crate) fence: Arc<Fence>,
    pub(crate) left_behind: LeftBehind,
    pub(crate) queue_states: QueueStates,
    pub(crate) retention: (Duration, Option<Duration>),
    #[cfg(feature = "cron")]
    pub(crate) recurring: Vec<RecurringJob>,
    pub(crate) foreign: ForeignPlan,
}

/// Runs the roles on a thread and runtime of their own, with their own connections: a job
/// that blocks the workers' thread cannot silence the heartbeat and get itself rescued (and
/// run twice) while it is still running. Each role is supervised: a panic in one (a bug, a
/// value that does not decode) restarts it and never stops the heartbeat.
pub(crate) fn start_maintenance(
    queue: &JobQueue,
    plan: Maintenance,
    stop: CancellationToken,
) -> Result<oneshot::Receiver<()>> {
    let queue = queue.clone();
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("lightjobs-maintenance".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(target: "lightjobs::supervisor", %error, "no runtime for heartbeat and rescuer");
                    return;
                }
            };
            runtime.block_on(async move {
                let store = Store::on(queue.new_pool(6));
                run_roles(&queue, &store, plan, &stop).await;
                let _ = store.nodes().clone().disconnect().await;
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// Builds every role and runs them, each through [`role::run`] (the heartbeat through its
/// own loop, which ends by removing or marking this process's row), until `stop`.
async fn run_roles(queue: &JobQueue, store: &Store, plan: Maintenance, stop: &CancellationToken) {
    let rescuer = Rescuer::new(store.clone(), &plan.info, plan.fence.clone());
    let pruner = Pruner::new(
        store.clone(),
        plan.info.id.clone(),
        plan.retention,
        PRUNE_INTERVAL,
    );
    let promoter = Promoter::new(store.clone(), PROMOTE_INTERVAL, plan.queue_states);
    let foreign = ForeignJobs::new(store.clone(), plan.foreign);
    let rollup = Rollup::new(store.clone(), plan.info.id.clone());
    let listener = Listener::new(store.clone(), plan.info.id.clone());
    let settler = Settler::new(store.clone(), queue.clone());
    #[cfg(feature = "cron")]
    let recurring = Recurring::new(queue.clone(), plan.recurring);
    let heartbeat = Heartbeat::new(store.clone(), plan.info, plan.fence, plan.left_behind);
    let s = Some(stop);
    // Cron schedules run only with the `cron` feature.
    let recurring_task = async {
        #[cfg(feature = "cron")]
        supervise(Recurring::NAME, s, || role::run(&recurring, stop)).await;
    };
    tokio::join!(
        supervise("heartbeat", None, || heartbeat.run(stop.clone())),
        supervise(Rescuer::NAME, s, || role::run(&rescuer, stop)),
        supervise(Promoter::NAME, s, || role::run(&promoter, stop)),
        supervise(Pruner::NAME, s, || role::run(&pruner, stop)),
        supervise(ForeignJobs::NAME, s, || role::run(&foreign, stop)),
        supervise(Rollup::NAME, s, || role::run(&rollup, stop)),
        supervise(Listener::NAME, s, || listener.run(stop.clone())),
        supervise(Settler::NAME, s, || settler.run(stop.clone())),
        recurring_task,
    );
}
