//! The runtime's life on the worker thread, and its two-stage stop: stop claiming, then
//! let running jobs finish within the grace period; release those still running, write
//! every result, and stop the maintenance thread last.

use std::cell::Cell;
use std::future::pending;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::canceller::Canceller;
use super::completer::{Command, Report};
use super::fetcher::{Exit, Fetcher};
use super::handoff::Handoff;
use super::reconciler::Reconciler;
use super::supervise::supervise;
use super::{Background, Runtime, Settings, Shared};

/// At shutdown, the least time result writes still get after the last job ended (they
/// get the rest of the grace period if that is longer).
const FLUSH_GRACE: Duration = Duration::from_secs(3);

/// Runs the runtime until it stops (the signal, `stop_when_empty`, `max_jobs`), then
/// shuts it down; returns what was done.
pub(super) async fn run_then_stop(
    runtime: Runtime,
    background: Background,
    stopped_claiming: impl FnOnce(),
) -> Report {
    let Runtime {
        settings,
        shared,
        completer,
        commands,
        mut handoffs,
        executor,
        abort,
        give_up,
    } = runtime;
    let completer = actix_rt::spawn(async move {
        let rx = Mutex::new(commands);
        supervise("completer", None, || completer.run(&rx)).await;
        completer.report().get()
    });
    let fetcher = Fetcher::new(settings.clone(), shared.clone(), executor);
    // Through the drain too: a job cancelled during the shutdown's grace period stops.
    let cancelling = CancellationToken::new();
    let canceller = Canceller::new(shared.store.clone(), shared.ledger.clone());
    let until = cancelling.clone();
    let canceller = actix_rt::spawn(async move { canceller.run(until).await });
    let exit = claim(&fetcher, &shared, &settings, &mut handoffs).await;
    // Dispatches that find no intake from here on go through the table; those already
    // on their way are run (or, once the channel is closed, released).
    stopped_claiming();
    if let Some(mut rx) = handoffs {
        rx.close();
        // Not `try_recv`: it can report empty while a send from another thread is half
        // done, and that job would be dropped with the channel.
        while let Some(handoff) = rx.recv().await {
            fetcher.accept(handoff);
        }
    }
    drop(fetcher);
    let stopped_at = drain(&shared, settings.shutdown_timeout, &abort).await;
    cancelling.cancel();
    let _ = canceller.await;
    let store = shared.store.clone();
    // Every run has ended and sent its result; with the last handle on the commands
    // gone, the completer ends once it has written them (or given up).
    drop(shared);
    abort.cancel();
    let now = Instant::now();
    let deadline = stopped_at
        .map_or(now, |at| at + settings.shutdown_timeout)
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
    background.stop.cancel();
    let _ = background.done.await;
    let _ = store.nodes().clone().disconnect().await;
    tracing::info!(target: "lightjobs::supervisor", ?exit, ?report, "workers stopped");
    report
}

/// The running stage: the fetch loop (restarted after a panic), the handoffs, the fence
/// watch and the reconciler, until the fetch loop ends.
async fn claim(
    fetcher: &Fetcher,
    shared: &Shared,
    settings: &Settings,
    handoffs: &mut Option<mpsc::UnboundedReceiver<Handoff>>,
) -> Exit {
    let stop = &shared.stop;
    let accept = async {
        if let Some(rx) = handoffs.as_mut() {
            while let Some(handoff) = rx.recv().await {
                fetcher.accept(handoff);
            }
        }
        pending::<()>().await;
    };
    let reconciler = reconciler(shared, settings);
    let reconcile = async {
        reconciler.run(stop).await;
        pending::<()>().await;
    };
    tokio::select! {
        exit = supervise("worker", Some(stop), || fetcher.run()) => exit,
        () = accept => None,
        () = watch_fence(shared) => None,
        () = reconcile => None,
    }
    .unwrap_or(Exit::Stopped)
}

/// Lets the runs finish: all of them without a shutdown signal (`stop_when_empty`,
/// `max_jobs`), else within the grace period from the signal, after which the ones still
/// running are dropped and released. Successes go to the completer as they come, so a
/// kill during the grace period loses as little as possible. The fence watch goes on: a
/// lease that runs out during the grace period still stops the runs. Returns when the
/// shutdown signal came.
async fn drain(
    shared: &Rc<Shared>,
    grace: Duration,
    abort: &tokio_util::sync::CancellationToken,
) -> Option<Instant> {
    shared.tracker.close();
    let stop = &shared.stop;
    let stopped_at = Cell::new(stop.is_cancelled().then(Instant::now));
    let hand_over = || {
        for event in shared.completions.take() {
            let _ = shared.commands.send(Command::Write(event));
        }
    };
    let runs = async {
        tokio::select! {
            () = shared.tracker.wait() => {}
            () = stop.cancelled() => {
                if stopped_at.get().is_none() {
                    stopped_at.set(Some(Instant::now()));
                }
                if tokio::time::timeout(grace, shared.tracker.wait()).await.is_err() {
                    tracing::warn!(target: "lightjobs::supervisor", "grace period over; releasing jobs still running");
                    abort.cancel();
                    shared.tracker.wait().await;
                }
            }
        }
    };
    tokio::pin!(runs);
    let fence = watch_fence(shared);
    tokio::pin!(fence);
    loop {
        hand_over();
        tokio::select! {
            () = &mut runs => break,
            () = shared.completions.pushed() => {}
            () = &mut fence => {}
        }
    }
    hand_over();
    stopped_at.get()
}

/// Stops the runs started before each trip of the fence, then asks the reconciler to give
/// their rows back once the lease is valid again. Never returns.
async fn watch_fence(shared: &Shared) {
    let mut trips = shared.fence.subscribe();
    loop {
        let expires = shared.fence.expires_at();
        let wait = expires.map_or(Duration::from_millis(100), |at| {
            at.saturating_duration_since(std::time::Instant::now())
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {
                shared.fence.trip_if_expired();
            }
            changed = trips.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
        let tripped = *trips.borrow_and_update();
        let stopped = shared.ledger.stop_started_before(tripped);
        if stopped > 0 {
            tracing::error!(target: "lightjobs::fence", stopped, window = ?shared.fence.window(), "the database has not confirmed this process's heartbeat within its lease: stopped its running jobs, which other processes may now take over");
        }
        if !shared.fence.is_open() {
            shared.fence.wait_open(Duration::MAX).await;
            shared.reconcile.notify_one();
        }
    }
}

/// The reconciler of this runtime.
fn reconciler(shared: &Shared, settings: &Settings) -> Reconciler {
    Reconciler::new(
        shared.store.clone(),
        settings.worker_id.clone(),
        shared.ledger.clone(),
        shared.intake.clone(),
        shared.fence.clone(),
        shared.reconcile.clone(),
    )
}
