//! Starts the workers (the fetch loop and the completer on actix-rt, the maintenance
//! roles on a thread of their own) and drives the two-stage shutdown: stop claiming, then
//! let running jobs finish within a grace period.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completer::{Completer, Completions, Report};
use crate::error::Result;
use crate::executor::Executor;
use crate::fetcher::{Exit, Fetcher, PollInterval};
use crate::handoff::Intake;
use crate::maintenance::{
    start_maintenance, supervise, ForeignJobs, Maintenance, FOREIGN_CHECK_INTERVAL,
    FOREIGN_WARN_AFTER,
};
use crate::queue::JobQueue;
use crate::queue_state::{QueueState, QueueStates};
use crate::store::{Store, WorkerInfo};
use crate::workers::Workers;

/// The fetcher, the completer and the maintenance tasks each hold at most one connection.
const WORKER_POOL_SIZE: usize = 4;

/// At shutdown, the least time result writes still get after the last job ended (they
/// get the rest of the grace period if that is longer).
const FLUSH_GRACE: Duration = Duration::from_secs(3);

impl Workers {
    /// Checks the settings and the database (server version, migrations), installs the
    /// queue as the process-wide one if none is, and starts the workers on the current
    /// actix-rt (or tokio `LocalSet`) thread.
    pub async fn start(mut self) -> Result<WorkerHandle> {
        self.validate()?;
        if self.migrate {
            self.queue.migrate().await?;
        }
        self.queue.check_ready().await?;
        let _ = self.queue.install();

        // A pool of the workers' own: connections live on this runtime, so they stay usable
        // after the HTTP workers' runtimes (which share the dispatch pool) have shut down.
        let store = Store::on(self.queue.new_pool(WORKER_POOL_SIZE));
        let worker_id = worker_id();
        let info = WorkerInfo {
            id: worker_id.clone(),
            host: host_name(),
            pid: std::process::id(),
            queues: serde_json::to_string(&self.queues)?,
            interval: self.heartbeat_interval,
            stale_after: self.stale_after,
        };
        // Registered before the first claim, so no rescuer can take our jobs for a dead
        // process's.
        store.beat_worker(&info).await?;
        let maintenance_stop = CancellationToken::new();
        // Read once before the first claim so a paused queue is never claimed from.
        let queue_states: QueueStates = Arc::new(RwLock::new(QueueState::from_rows(
            store.queue_settings().await?,
        )));
        let (lapses, mut lapsed) = watch::channel(0u64);
        self.queue.add_local_states(queue_states.clone());
        let local_states = queue_states.clone();
        let maintenance = start_maintenance(
            &self.queue,
            Maintenance {
                info,
                lapses,
                queue_states: queue_states.clone(),
                retention: self.retention,
                #[cfg(feature = "cron")]
                recurring: std::mem::take(&mut self.recurring),
                foreign: ForeignJobs {
                    queues: self.queues.clone(),
                    names: self.registry.names(),
                    interval: FOREIGN_CHECK_INTERVAL,
                    warn_after: FOREIGN_WARN_AFTER,
                    fail_after: self.fail_unknown_after,
                },
            },
            maintenance_stop.clone(),
        )?;
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let give_up = CancellationToken::new();
        let (results, rx) = mpsc::unbounded_channel();
        let completer = Completer {
            store: store.clone(),
            worker_id: worker_id.clone(),
            hook: self.hook.clone(),
            give_up: give_up.clone(),
            report: Rc::new(Cell::new(Report::default())),
        };
        let completions = Rc::new(Completions::default());
        let queue_slots: HashMap<String, Arc<Semaphore>> = self
            .queue_limits
            .iter()
            .map(|(q, n)| (q.clone(), Arc::new(Semaphore::new(*n))))
            .collect();
        let flush = results.clone();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        // Batch modes count and stop on what they claim, so they take no handoffs.
        let (intake, mut handoffs) =
            if !self.local_handoff || self.stop_when_empty || self.max_jobs.is_some() {
                (None, None)
            } else {
                let (jobs, rx) = mpsc::unbounded_channel();
                let intake = Arc::new(Intake {
                    worker_id: worker_id.clone(),
                    queues: self.queues.iter().cloned().collect(),
                    names: self.registry.names().into_iter().collect(),
                    slots: slots.clone(),
                    queue_slots: queue_slots.clone(),
                    queue_states: queue_states.clone(),
                    backlog: AtomicBool::new(false),
                    stop: shutdown.clone(),
                    jobs,
                });
                self.queue.add_intake(intake.clone());
                (Some(intake), Some(rx))
            };
        let worker = Fetcher {
            store: store.clone(),
            queues: self.queues.clone(),
            worker_id: worker_id.clone(),
            concurrency: self.concurrency,
            poll: PollInterval::new(self.poll_min, self.poll_max),
            stop_when_empty: self.stop_when_empty,
            max_jobs: self.max_jobs,
            names: self.registry.names(),
            executor: Executor {
                registry: self.registry.clone(),
                default_timeout: self.job_timeout,
                shutdown: shutdown.clone(),
                abort: abort.clone(),
                data: Arc::new(self.data),
            },
            results,
            wake: self.queue.subscribe(),
            tracker: tracker.clone(),
            claimed: Arc::new(AtomicU64::new(0)),
            slots,
            panic_after: self.panic_after,
            panicked: AtomicBool::new(false),
            completions: completions.clone(),
            hook: self.hook.clone(),
            report: completer.report.clone(),
            queue_states,
            queue_slots,
            intake: intake.clone(),
            inflight: Rc::default(),
            conn_node: Cell::new(0),
        };
        tracing::info!(
            target: "lightjobs::supervisor",
            worker = %worker_id,
            queues = ?self.queues,
            concurrency = self.concurrency,
            jobs = ?self.registry.names(),
            "workers started"
        );
        let grace = self.shutdown_timeout;
        let stop = shutdown.clone();
        let queue = self.queue.clone();
        let task = actix_rt::spawn(async move {
            let completer = actix_rt::spawn(async move {
                let rx = Mutex::new(rx);
                supervise("completer", None, || completer.run(&rx)).await;
                completer.report.get()
            });
            let accept = async {
                if let Some(rx) = handoffs.as_mut() {
                    while let Some(handoff) = rx.recv().await {
                        worker.accept(handoff);
                    }
                }
                std::future::pending::<()>().await;
            };
            let check_claims = async {
                while lapsed.changed().await.is_ok() {
                    worker.check_claims().await;
                }
                std::future::pending::<()>().await;
            };
            let exit = tokio::select! {
                exit = supervise("worker", Some(&stop), || worker.run()) => exit,
                () = accept => None,
                () = check_claims => None,
            }
            .unwrap_or(Exit::Stopped);
            // Dispatches that find no intake from here on go through the table; those
            // already on their way are run (or, once the channel is closed, released).
            if let Some(intake) = &intake {
                queue.remove_intake(intake);
            }
            queue.remove_local_states(&local_states);
            if let Some(mut rx) = handoffs {
                rx.close();
                // Not `try_recv`: it can report empty while a send from another thread is
                // half done, and that job would be dropped with the channel.
                while let Some(handoff) = rx.recv().await {
                    worker.accept(handoff);
                }
            }
            drop(worker);
            tracker.close();
            // No more claims to fold successes into: from here the completer writes them,
            // as they come, so a kill during the grace period loses as little as possible.
            let hand_over = || {
                for event in completions.take() {
                    let _ = flush.send(event);
                }
            };
            let stopped_at = Cell::new(stop.is_cancelled().then(tokio::time::Instant::now));
            let drain = async {
                tokio::select! {
                    () = tracker.wait() => {}
                    () = stop.cancelled() => {
                        if stopped_at.get().is_none() {
                            stopped_at.set(Some(tokio::time::Instant::now()));
                        }
                        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                            tracing::warn!(target: "lightjobs::supervisor", "grace period over; releasing jobs still running");
                            abort.cancel();
                            tracker.wait().await;
                        }
                    }
                }
            };
            tokio::pin!(drain);
            loop {
                hand_over();
                tokio::select! {
                    () = &mut drain => break,
                    () = completions.notify.notified() => {}
                }
            }
            hand_over();
            drop(flush);
            // Every executor has sent its result; the completer drains and ends. Its writes
            // are retried until the shutdown deadline (the grace period from the signal, and
            // never less than FLUSH_GRACE from now); a write still failing then is left
            // to the rescuer of another process, which the removal of our heartbeat allows.
            abort.cancel();
            let now = tokio::time::Instant::now();
            let deadline = stopped_at
                .get()
                .map_or(now, |at| at + grace)
                .max(now + FLUSH_GRACE);
            let mut completer = completer;
            let report = tokio::select! {
                report = &mut completer => report,
                () = tokio::time::sleep_until(deadline) => {
                    give_up.cancel();
                    completer.await
                }
            }
            .unwrap_or_default();
            maintenance_stop.cancel();
            let _ = maintenance.await;
            let _ = store.nodes().clone().disconnect().await;
            tracing::info!(target: "lightjobs::supervisor", ?exit, ?report, "workers stopped");
            report
        });
        Ok(WorkerHandle {
            queue: self.queue,
            shutdown,
            task,
        })
    }
}

/// Starts the shutdown of running workers: the same two stages as
/// [`WorkerHandle::shutdown`] (stop claiming, let running jobs finish within the grace
/// period). Cloneable and `Send`.
#[derive(Clone, Debug)]
pub struct StopSignal(CancellationToken);

impl StopSignal {
    /// Starts the shutdown; calling it again does nothing.
    pub fn stop(&self) {
        self.0.cancel();
    }

    /// Whether the shutdown has started.
    pub fn is_stopped(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// The running workers. Dropping it leaves them running; call [`shutdown`](Self::shutdown).
#[must_use = "dropping the handle does not stop the workers; call shutdown()"]
pub struct WorkerHandle {
    queue: JobQueue,
    shutdown: CancellationToken,
    task: actix_rt::task::JoinHandle<Report>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("stopping", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// The queue the workers claim from.
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// Stops claiming, gives running jobs the grace period, releases those still running,
    /// writes every result, and returns what was done.
    pub async fn shutdown(self) -> Report {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the workers stop by themselves (`stop_when_empty`, `max_jobs`) or
    /// another clone of the stop signal fires.
    pub async fn wait(self) -> Report {
        self.task.await.unwrap_or_default()
    }

    /// A handle that starts the shutdown from elsewhere (your own signal handling, an admin
    /// endpoint), while this one waits.
    pub fn stop_signal(&self) -> StopSignal {
        StopSignal(self.shutdown.clone())
    }

    /// Runs the HTTP server until it stops (SIGINT/SIGTERM, or its handle), then shuts the
    /// workers down: the one call that ties both lifetimes together.
    ///
    /// ```no_run
    /// # use actix_web::{App, HttpServer};
    /// # async fn run(workers: lightjobs::WorkerHandle) -> std::io::Result<()> {
    /// let server = HttpServer::new(|| App::new().configure(lightjobs::init))
    ///     .bind(("127.0.0.1", 8080))?
    ///     .run();
    /// workers.serve(server).await
    /// # }
    /// ```
    pub async fn serve(self, server: actix_web::dev::Server) -> std::io::Result<()> {
        // actix-web drains its connections for up to its own shutdown timeout before
        // `server` completes; the workers stop claiming at the signal, not after that.
        let signals = Signals::install();
        let stop = self.shutdown.clone();
        let on_signal = actix_rt::spawn(async move {
            signals.recv().await;
            stop.cancel();
        });
        let result = server.await;
        on_signal.abort();
        let report = self.shutdown().await;
        tracing::info!(target: "lightjobs::supervisor", ?report, "HTTP server and workers stopped");
        result
    }

    /// Runs until SIGINT or SIGTERM (or until the workers stop by themselves), then shuts
    /// down gracefully. For worker-only processes. The signal handlers are installed when
    /// this is called, not when the future is first polled, so no signal is missed between.
    pub fn run_until_signal(self) -> impl std::future::Future<Output = Report> {
        let signals = Signals::install();
        let stop = self.shutdown.clone();
        async move {
            actix_rt::spawn(async move {
                signals.recv().await;
                tracing::info!(target: "lightjobs::supervisor", "signal received, shutting down");
                stop.cancel();
            });
            self.wait().await
        }
    }
}

/// SIGINT and SIGTERM, registered at once.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => Some((int, term)),
                _ => None,
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.unix {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `host:pid:random`, limited to characters safe in logs and the 128-char column.
fn worker_id() -> String {
    let host: String = host_name()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(80)
        .collect();
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}
