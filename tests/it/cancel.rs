//! Cancelling running jobs: in this process and from another one, a job that stops when
//! told and one that ignores it, a cancel that comes after the end, a run that fails
//! after the request reached the row but before the process saw it, and a request whose
//! process died before it could act (the rescue applies it).

use crate::common::procs::{audit_file, signal, start_worker_env, worker_binary, Work};
use crate::common::{audit::runs_from_file, TestDb};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightjobs::{Job, JobContext, JobError, JobEvent, JobOutcome, JobQueue, Workers};
use serde::{Deserialize, Serialize};

/// Runs for `secs` unless cancelled; with `cooperate`, returns at once when it is.
#[derive(Serialize, Deserialize)]
struct Long {
    secs: u64,
    cooperate: bool,
}

/// Set when a `Long` run's future is dropped before it returned.
#[derive(Clone, Default)]
struct Dropped(Arc<AtomicBool>);

impl Job for Long {
    const NAME: &'static str = "long";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        struct Guard(Dropped, bool);
        impl Drop for Guard {
            fn drop(&mut self) {
                if !self.1 {
                    self.0 .0.store(true, Ordering::SeqCst);
                }
            }
        }
        let dropped = ctx.data::<Dropped>().cloned().unwrap_or_default();
        let mut guard = Guard(dropped, false);
        let sleep = tokio::time::sleep(Duration::from_secs(self.secs));
        let result = if self.cooperate {
            tokio::select! {
                () = sleep => Ok(()),
                () = ctx.cancelled() => Err(JobError::fail("stopping: cancelled")),
            }
        } else {
            sleep.await;
            Ok(())
        };
        guard.1 = true;
        result
    }
}

/// Fails (retryable) as soon as its row carries a cancel request: before this process's
/// canceller, which looks every 500 ms, can have seen it.
#[derive(Serialize, Deserialize)]
struct FailsOnRequest;

impl Job for FailsOnRequest {
    const NAME: &'static str = "fails_on_request";
    const MAX_ATTEMPTS: u32 = 5;
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        crate::common::until_own_row(ctx, "cancel_requested_at IS NOT NULL").await?;
        Err(JobError::retry("failed right after the request"))
    }
}

type Events = Arc<Mutex<Vec<JobEvent>>>;

async fn start(
    db: &TestDb,
    queue: &JobQueue,
    dropped: &Dropped,
) -> (lightjobs::WorkerHandle, Events) {
    let events = Events::default();
    let sink = events.clone();
    let handle = Workers::new(queue.clone())
        .register::<Long>()
        .register::<FailsOnRequest>()
        .data(dropped.clone())
        .data(db.pool.clone())
        .cancel_grace(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
        .on_event(move |e| sink.lock().unwrap().push(e.clone()))
        .start()
        .await
        .unwrap();
    (handle, events)
}

/// Cancels `id` once it runs; returns how long the row took to read `cancelled`.
async fn cancel_when_running(db: &TestDb, queue: &JobQueue, id: u64) -> Duration {
    db.wait_for("running", 1, Duration::from_secs(10)).await;
    let asked = Instant::now();
    assert!(queue.cancel(id).await.unwrap(), "the request is recorded");
    assert!(!queue.cancel(id).await.unwrap(), "once");
    db.wait_for("cancelled", 1, Duration::from_secs(10)).await;
    asked.elapsed()
}

#[actix_rt::test]
async fn a_running_job_that_watches_for_it_stops_and_ends_cancelled() {
    let db = TestDb::new("cancel_cooperative").await;
    let queue = db.migrated().await;
    let dropped = Dropped::default();
    let (handle, events) = start(&db, &queue, &dropped).await;
    let id = queue
        .dispatch(Long {
            secs: 60,
            cooperate: true,
        })
        .await
        .unwrap();
    let took = cancel_when_running(&db, &queue, id).await;
    eprintln!("cooperative cancel in one process: cancelled after {took:?}");
    let (status, attempts, error) = db.job(id).await;
    assert_eq!(
        (status.as_str(), attempts, error.as_deref()),
        ("cancelled", 0, Some("cancelled while running")),
        "its attempt given back"
    );
    assert!(!dropped.0.load(Ordering::SeqCst), "it returned on its own");
    let report = handle.shutdown().await;
    assert_eq!(report.cancelled, 1);
    let outcomes: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.outcome.clone())
        .collect();
    assert_eq!(outcomes, [JobOutcome::Cancelled]);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_job_that_ignores_the_cancel_is_dropped_after_the_grace_period() {
    let db = TestDb::new("cancel_ignored").await;
    let queue = db.migrated().await;
    let dropped = Dropped::default();
    let (handle, _) = start(&db, &queue, &dropped).await;
    let id = queue
        .dispatch(Long {
            secs: 60,
            cooperate: false,
        })
        .await
        .unwrap();
    let took = cancel_when_running(&db, &queue, id).await;
    assert!(dropped.0.load(Ordering::SeqCst), "its future was dropped");
    assert!(
        took >= Duration::from_millis(300),
        "not before the grace: {took:?}"
    );
    assert_eq!(db.job(id).await.0, "cancelled");

    // A cancel after the end changes nothing.
    let done = queue
        .dispatch(Long {
            secs: 0,
            cooperate: false,
        })
        .await
        .unwrap();
    db.wait_for("processed", 1, Duration::from_secs(10)).await;
    assert!(!queue.cancel(done).await.unwrap());
    assert_eq!(db.job(done).await.0, "processed");
    handle.shutdown().await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_run_that_fails_after_the_request_is_not_retried() {
    let db = TestDb::new("cancel_then_fail").await;
    let queue = db.migrated().await;
    let (handle, events) = start(&db, &queue, &Dropped::default()).await;
    let id = queue.dispatch(FailsOnRequest).await.unwrap();
    cancel_when_running(&db, &queue, id).await;
    // Whichever saw it first, the run's retry or the canceller, the job does not wait
    // again: give a retry time to be claimed, and look.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, attempts, _) = db.job(id).await;
    assert_eq!((status.as_str(), attempts <= 1), ("cancelled", true));
    let runs = events.lock().unwrap().len();
    assert_eq!(runs, 1, "it ran once");
    handle.shutdown().await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_cancel_reaches_a_run_in_another_process() {
    let bin = worker_binary();
    let db = TestDb::new("cancel_other_process").await;
    let queue = db.migrated().await;
    let audit = audit_file("cancel_other_process");
    let worker = start_worker_env(
        &bin,
        &db.url,
        &[("LIGHTJOBS_TEST_AUDIT", audit.as_str())],
        &[],
    );
    let id = queue.dispatch(Work { millis: 60_000 }).await.unwrap();
    let took = cancel_when_running(&db, &queue, id).await;
    eprintln!("cooperative cancel across processes: cancelled after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "within about a second: {took:?}"
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        text.contains("\ncancelled ") || text.starts_with("cancelled "),
        "{text}"
    );
    let runs = runs_from_file(&audit);
    assert_eq!(runs.len(), 1, "it ran once: {runs:?}");
    assert!(runs[0].ended.is_none() && runs[0].cut.is_some());
    drop(worker);
    db.drop_db().await;
}

#[actix_rt::test]
async fn the_rescue_applies_a_cancel_its_dead_process_never_saw() {
    let bin = worker_binary();
    let db = TestDb::new("cancel_rescued").await;
    let queue = db.migrated().await;
    let audit = audit_file("cancel_rescued");
    let fast = ["--heartbeat", "0.2", "--stale-after", "1"];
    let env = [("LIGHTJOBS_TEST_AUDIT", audit.as_str())];
    let mut victim = start_worker_env(&bin, &db.url, &env, &fast);
    let id = queue.dispatch(Work { millis: 60_000 }).await.unwrap();
    db.wait_for("running", 1, Duration::from_secs(10)).await;
    // Stopped, it cannot see the request; killed, it never will.
    signal(&victim, "-STOP");
    assert!(queue.cancel(id).await.unwrap());
    signal(&victim, "-KILL");
    let _ = victim.wait();
    assert_eq!(db.job(id).await.0, "running");
    let rescuer = start_worker_env(&bin, &db.url, &env, &fast);
    db.wait_for("cancelled", 1, Duration::from_secs(15)).await;
    // Time for a wrong rescue to `pending` to be claimed and run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(db.job(id).await.0, "cancelled");
    assert_eq!(runs_from_file(&audit).len(), 1, "never run again");
    drop(rescuer);
    db.drop_db().await;
}
