//! The roles every worker process runs beside its fetch loop, on a thread of its own so that
//! a busy or blocked worker runtime never delays a heartbeat: the heartbeat, the rescuer of
//! dead processes' jobs, the promoter of due jobs (and reader of queue settings), the
//! pruner, cron schedules, and the watch for jobs of types no worker here runs.

mod foreign;
mod heartbeat;
mod promoter;
mod pruner;
#[cfg(feature = "cron")]
mod recurring;
mod rescuer;

pub(crate) use foreign::{ForeignJobs, FOREIGN_CHECK_INTERVAL, FOREIGN_WARN_AFTER};
use heartbeat::Heartbeat;
use promoter::Promoter;
use pruner::Pruner;
#[cfg(feature = "cron")]
use recurring::Recurring;
#[cfg(feature = "cron")]
pub(crate) use recurring::RecurringJob;
use rescuer::Rescuer;

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
const SCHEDULER_INTERVAL: Duration = Duration::from_millis(100);

/// What the maintenance thread runs with, besides the queue.
pub(crate) struct Maintenance {
    pub info: WorkerInfo,
    pub fence: Arc<Fence>,
    pub left_behind: LeftBehind,
    pub queue_states: QueueStates,
    pub retention: (Duration, Option<Duration>),
    #[cfg(feature = "cron")]
    pub recurring: Vec<RecurringJob>,
    pub foreign: ForeignJobs,
}

/// Runs the heartbeat and the rescuer on a thread and runtime of their own, with their own
/// connections: a job that blocks the workers' thread cannot silence the heartbeat and get
/// itself rescued (and run twice) while it is still running. Each loop is supervised: a
/// panic in one (a bug, a value that does not decode) restarts it and never stops the
/// heartbeat.
pub(crate) fn start_maintenance(
    queue: &JobQueue,
    plan: Maintenance,
    stop: CancellationToken,
) -> Result<oneshot::Receiver<()>> {
    let queue = queue.clone();
    let Maintenance {
        info,
        fence,
        left_behind,
        queue_states,
        retention,
        #[cfg(feature = "cron")]
        recurring,
        foreign,
    } = plan;
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
                let rescuer = Rescuer {
                    store: store.clone(),
                    worker_id: info.id.clone(),
                    stale_after: info.stale_after,
                    interval: info.interval,
                    fence: fence.clone(),
                    seen: Default::default(),
                    trips: Default::default(),
                };
                let heartbeat = Heartbeat {
                    store: store.clone(),
                    info,
                    fence,
                    left_behind,
                };
                #[cfg(feature = "cron")]
                let recurring = Recurring::new(queue.clone(), recurring);
                let scheduler = Promoter {
                    store: store.clone(),
                    interval: SCHEDULER_INTERVAL,
                    queues: queue_states,
                };
                let pruner = Pruner {
                    store: store.clone(),
                    worker_id: heartbeat.info.id.clone(),
                    processed: retention.0,
                    failed: retention.1,
                    interval: PRUNE_INTERVAL,
                };
                let s = &stop;
                // Cron schedules run only with the `cron` feature.
                let recurring_task = async {
                    #[cfg(feature = "cron")]
                    supervise("recurring", Some(s), || recurring.run(s.clone())).await;
                };
                tokio::join!(
                    supervise("heartbeat", None, || heartbeat.run(s.clone())),
                    supervise("rescuer", Some(s), || rescuer.run(s.clone())),
                    supervise("scheduler", Some(s), || scheduler.run(s.clone())),
                    supervise("pruner", Some(s), || pruner.run(s.clone())),
                    recurring_task,
                    supervise("foreign", Some(s), || foreign.run(&store, s.clone())),
                );
                let _ = store.nodes().clone().disconnect().await;
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}
