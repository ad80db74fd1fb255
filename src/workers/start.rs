//! `Workers::start`: the checks against the database, then the runtime, the maintenance
//! thread and the queue's wiring to them.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Workers;
use crate::error::{Error, Result};
use crate::handle::WorkerHandle;
use crate::maintenance::{
    start_maintenance, ForeignPlan, Maintenance, FOREIGN_CHECK_INTERVAL, FOREIGN_WARN_AFTER,
};
use crate::runtime::completer::LeftBehind;
use crate::runtime::fence::Fence;
use crate::runtime::queue_state::{QueueState, QueueStates};
use crate::runtime::{Background, Parts, Runtime, Settings};
use crate::store::{Store, WorkerInfo};

/// The fetch loop, the completer and the reconciler each hold at most one connection.
const WORKER_POOL_SIZE: usize = 4;

impl Workers {
    /// Checks the settings and the database (server version, migrations), installs the
    /// queue as the process-wide one if none is, and starts the workers on the current
    /// actix-rt (or tokio `LocalSet`) thread.
    pub async fn start(mut self) -> Result<WorkerHandle> {
        if self.queue.memory().is_some() {
            return Err(Error::NoDatabase);
        }
        self.validate()?;
        if self.migrate {
            self.queue.migrate().await?;
        }
        self.queue.check_ready().await?;
        let _ = self.queue.install();
        // A pool of the workers' own: connections live on this runtime, so they stay usable
        // after the HTTP workers' runtimes (which share the dispatch pool) have shut down.
        let store = Store::on(self.queue.new_pool(WORKER_POOL_SIZE));
        let settings = self.settings();
        let info = WorkerInfo {
            id: settings.worker_id.clone(),
            host: crate::process::host_name(),
            pid: std::process::id(),
            queues: serde_json::to_string(&self.queues)?,
            interval: self.heartbeat_interval,
            stale_after: self.stale_after,
        };
        let fence = self.announce(&store, &info).await?;
        // Read once before the first claim so a paused queue is never claimed from.
        let queue_states: QueueStates = Arc::new(RwLock::new(QueueState::from_rows(
            store.queue_settings().await?,
        )));
        let left_behind = LeftBehind::default();
        let runtime = Runtime::new(
            settings.clone(),
            Parts {
                left_behind: left_behind.clone(),
                store,
                registry: self.registry.clone(),
                data: std::mem::take(&mut self.data),
                jobs: self.queue.clone(),
                hook: self.hook.clone(),
                queue_states: queue_states.clone(),
                fence: fence.clone(),
            },
        );
        let maintenance_stop = CancellationToken::new();
        let plan = self.maintenance_plan(info, fence, queue_states.clone(), left_behind);
        let done = start_maintenance(&self.queue, plan, maintenance_stop.clone())?;
        self.queue.add_local_states(queue_states.clone());
        let intake = runtime.intake();
        if let Some(intake) = &intake {
            self.queue.add_intake(intake.clone());
        }
        tracing::info!(
            target: "lightjobs::supervisor",
            worker = %settings.worker_id,
            queues = ?settings.queues,
            concurrency = settings.concurrency,
            jobs = ?settings.names,
            "workers started"
        );
        let stop = runtime.stop_signal();
        let queue = self.queue.clone();
        let task = runtime.spawn(
            Background {
                stop: maintenance_stop,
                done,
            },
            move || {
                if let Some(intake) = &intake {
                    queue.remove_intake(intake);
                }
                queue.remove_local_states(&queue_states);
            },
        );
        Ok(WorkerHandle::new(self.queue, stop, task))
    }

    /// Registers the process before its first claim, so no rescuer can take its jobs for a
    /// dead process's: the beat opens its lease on its jobs. Makes its queues' claim turns.
    async fn announce(&self, store: &Store, info: &WorkerInfo) -> Result<Arc<Fence>> {
        let fence = Arc::new(Fence::new(self.stale_after / 2));
        let sent = Instant::now();
        store.beat_worker(info).await?;
        fence.confirm(sent);
        if let Err(error) = store.add_claim_turns(&self.queues).await {
            // A queue without its turns is claimed without them: slower under many
            // processes, never wrong.
            tracing::warn!(target: "lightjobs::worker", %error, "making the claim turns failed");
        }
        Ok(fence)
    }

    /// The runtime's settings, from the builder's.
    fn settings(&self) -> Settings {
        Settings {
            worker_id: worker_id(),
            queues: self.queues.clone(),
            names: self.registry.names(),
            concurrency: self.concurrency,
            queue_limits: self.queue_limits.clone(),
            poll_min: self.poll_min,
            poll_max: self.poll_max,
            job_timeout: self.job_timeout,
            cancel_grace: self.cancel_grace,
            shutdown_timeout: self.shutdown_timeout,
            stop_when_empty: self.stop_when_empty,
            max_jobs: self.max_jobs,
            local_handoff: self.local_handoff,
            panic_after: self.panic_after,
        }
    }

    fn maintenance_plan(
        &mut self,
        info: WorkerInfo,
        fence: Arc<Fence>,
        queue_states: QueueStates,
        left_behind: LeftBehind,
    ) -> Maintenance {
        Maintenance {
            info,
            fence,
            left_behind,
            queue_states,
            retention: self.retention,
            #[cfg(feature = "cron")]
            recurring: std::mem::take(&mut self.recurring),
            foreign: ForeignPlan {
                queues: self.queues.clone(),
                names: self.registry.names(),
                interval: FOREIGN_CHECK_INTERVAL,
                warn_after: FOREIGN_WARN_AFTER,
                fail_after: self.fail_unknown_after,
            },
        }
    }
}

/// `host:pid:random`, limited to characters safe in logs and the 128-char column.
fn worker_id() -> String {
    let host: String = crate::process::host_name()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(80)
        .collect();
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}
