//! [`WorkerHandle`]: the running workers, and how they stop (by a call, with the HTTP
//! server, or on SIGINT/SIGTERM).

use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;
use crate::runtime::completer::Report;

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

impl WorkerHandle {
    pub(crate) fn new(
        queue: JobQueue,
        shutdown: CancellationToken,
        task: actix_rt::task::JoinHandle<Report>,
    ) -> WorkerHandle {
        WorkerHandle {
            queue,
            shutdown,
            task,
        }
    }
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
