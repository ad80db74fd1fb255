//! Batches and dependencies: callbacks run once, after the last job of their batch, and
//! only for their outcome; jobs join a batch from inside it; a job waits for another job
//! or a batch and is cancelled, saying why, when that fails; what no end announced (an
//! operator's cancel, a deleted job, a release the server refused) the sweep settles.

use crate::common::faults::{self, Fault};
use crate::common::{workers, Flaky, TestDb};

use std::time::{Duration, Instant};

use lightjobs::{BatchOutcome, Error, Job, JobContext, JobError, JobQueue, WorkerHandle};
use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};

/// A part of a batch: records its run and outputs `n * n`.
#[derive(Serialize, Deserialize)]
struct Part {
    n: u64,
}

impl Job for Part {
    const NAME: &'static str = "part";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        crate::common::record_run(ctx, &format!("part:{}", self.n)).await?;
        ctx.record_output(&(self.n * self.n)).await
    }
}

/// Adds `parts` parts to its own batch, then outputs nothing.
#[derive(Serialize, Deserialize)]
struct FanOut {
    parts: u64,
}

impl Job for FanOut {
    const NAME: &'static str = "fan_out";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        for n in 1..=self.parts {
            // Slowly, so that the first parts finish before the last are added.
            tokio::time::sleep(Duration::from_millis(20)).await;
            ctx.add_to_batch(Part { n })
                .await
                .map_err(JobError::retry)?;
        }
        crate::common::record_run(ctx, "fan_out").await
    }
}

/// A batch callback: fails unless every job of its batch has finished; outputs the sum
/// of their outputs and records its run with `tag`.
#[derive(Serialize, Deserialize)]
struct Gather {
    tag: String,
}

impl Job for Gather {
    const NAME: &'static str = "gather";
    const MAX_ATTEMPTS: u32 = 1;
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let batch = ctx.batch().ok_or_else(|| JobError::fail("no batch"))?;
        let queue = ctx.job_queue();
        let state = queue
            .batch_state(batch)
            .await?
            .ok_or_else(|| JobError::fail("gone"))?;
        if state.done() != state.total() || state.finished_at.is_none() {
            return Err(JobError::fail(format!("ran early: {state:?}")));
        }
        let mut sum = 0;
        let mut after = 0;
        loop {
            let page = queue.batch_jobs(batch, after, 100).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for job in &page {
                let n: u64 = job
                    .output
                    .as_deref()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                sum += n;
            }
        }
        crate::common::record_run(ctx, &self.tag).await?;
        ctx.record_output(&sum).await
    }
}

/// A job these workers do not run.
#[derive(Serialize, Deserialize)]
struct Elsewhere;

impl Job for Elsewhere {
    const NAME: &'static str = "elsewhere";
    async fn execute(self, _: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn batch_workers(db: &TestDb, queue: &JobQueue) -> lightjobs::Workers {
    workers(db, queue)
        .register::<Part>()
        .register::<FanOut>()
        .register::<Gather>()
        .concurrency(8)
}

async fn runs_tagged(db: &TestDb, tag: &str) -> u64 {
    db.scalar(&format!("SELECT COUNT(*) FROM runs WHERE tag = '{tag}'"))
        .await
}

/// Waits until job `id` has status `status`, for up to `within`.
async fn until(queue: &JobQueue, id: u64, status: &str, secs: u64) -> lightjobs::JobRecord {
    let within = Duration::from_secs(secs);
    let deadline = Instant::now() + within;
    loop {
        let job = queue.find(id).await.unwrap().expect("job exists");
        if job.status == status {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {} after {within:?}, not {status}: {job:?}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(handle: WorkerHandle) {
    handle.shutdown().await;
}

#[actix_rt::test]
async fn callbacks_run_once_after_the_last_job_and_only_for_their_outcome() {
    let db = TestDb::new("batch_success").await;
    let queue = db.migrated().await;
    let batch = queue
        .batch()
        .description("squares")
        .jobs((1..=30).map(|n| Part { n }))
        .on_success(Gather {
            tag: "success".into(),
        })
        .on_failure(Gather {
            tag: "failure".into(),
        })
        .on_complete(Gather {
            tag: "complete".into(),
        })
        .dispatch()
        .await
        .unwrap();
    assert_eq!(batch.jobs.len(), 30);
    assert_eq!(batch.callbacks.len(), 3);
    let state = queue.batch_state(batch.id).await.unwrap().unwrap();
    assert_eq!(
        (state.pending, state.total(), state.outcome),
        (30, 30, None)
    );
    assert_eq!(state.description.as_deref(), Some("squares"));
    let handle = batch_workers(&db, &queue).start().await.unwrap();
    let success = until(&queue, batch.callbacks[0], "processed", 20).await;
    let expected: u64 = (1..=30u64).map(|n| n * n).sum();
    assert_eq!(success.output, Some(expected.to_string()));
    until(&queue, batch.callbacks[2], "processed", 10).await;
    let failure = until(&queue, batch.callbacks[1], "cancelled", 10).await;
    assert_eq!(
        failure.last_error.as_deref(),
        Some(
            format!(
                "not run: batch {}, which it waited for, succeeded",
                batch.id
            )
            .as_str()
        )
    );
    // Settled: nothing runs twice afterwards.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop(handle).await;
    assert_eq!(runs_tagged(&db, "success").await, 1);
    assert_eq!(runs_tagged(&db, "complete").await, 1);
    assert_eq!(runs_tagged(&db, "failure").await, 0);
    let state = queue.batch_state(batch.id).await.unwrap().unwrap();
    assert_eq!(
        (state.processed, state.done(), state.outcome),
        (30, 30, Some(BatchOutcome::Succeeded))
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_failed_job_fails_the_batch() {
    let db = TestDb::new("batch_failure").await;
    let queue = db.migrated().await;
    let flaky = Flaky {
        message: "card declined".into(),
        succeed_on: 99,
        permanent: true,
    };
    let batch = queue
        .batch()
        .jobs((1..=5).map(|n| Part { n }))
        .job(flaky)
        .on_success(Gather {
            tag: "success".into(),
        })
        .on_failure(Gather {
            tag: "failure".into(),
        })
        .dispatch()
        .await
        .unwrap();
    let handle = batch_workers(&db, &queue).start().await.unwrap();
    until(&queue, batch.callbacks[1], "processed", 20).await;
    let success = until(&queue, batch.callbacks[0], "cancelled", 10).await;
    assert!(success.last_error.unwrap().ends_with("failed"));
    stop(handle).await;
    let state = queue.batch_state(batch.id).await.unwrap().unwrap();
    assert_eq!((state.processed, state.failed), (5, 1));
    assert_eq!(state.outcome, Some(BatchOutcome::Failed));
    assert_eq!(runs_tagged(&db, "failure").await, 1);
    db.drop_db().await;
}

#[actix_rt::test]
async fn jobs_added_from_inside_the_batch_hold_its_callback_back() {
    let db = TestDb::new("batch_fan_out").await;
    let queue = db.migrated().await;
    let batch = queue
        .batch()
        .job(FanOut { parts: 12 })
        .on_success(Gather {
            tag: "gathered".into(),
        })
        .dispatch()
        .await
        .unwrap();
    let handle = batch_workers(&db, &queue).start().await.unwrap();
    let gathered = until(&queue, batch.callbacks[0], "processed", 20).await;
    stop(handle).await;
    let expected: u64 = (1..=12u64).map(|n| n * n).sum();
    assert_eq!(gathered.output, Some(expected.to_string()));
    let state = queue.batch_state(batch.id).await.unwrap().unwrap();
    assert_eq!((state.total(), state.processed), (13, 13));
    db.drop_db().await;
}

#[actix_rt::test]
async fn what_cannot_be_waited_for_or_joined_is_refused() {
    let db = TestDb::new("batch_refused").await;
    let queue = db.migrated().await;
    let err = queue
        .dispatch(Part { n: 1 })
        .after(987_654)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "job",
                id: 987_654
            }
        ),
        "{err}"
    );
    let err = queue
        .dispatch(Part { n: 1 })
        .in_batch(55)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "batch",
                id: 55
            }
        ),
        "{err}"
    );
    // An empty batch finishes at once, and nothing joins it after.
    let empty = queue
        .batch()
        .on_success(Gather {
            tag: "empty".into(),
        })
        .dispatch()
        .await
        .unwrap();
    let state = queue.batch_state(empty.id).await.unwrap().unwrap();
    assert_eq!(state.outcome, Some(BatchOutcome::Succeeded));
    assert_eq!(
        queue
            .find(empty.callbacks[0])
            .await
            .unwrap()
            .unwrap()
            .status,
        "pending"
    );
    let err = queue
        .dispatch(Part { n: 1 })
        .in_batch(empty.id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BatchFinished(id) if id == empty.id),
        "{err}"
    );
    // A job that waits cannot join a batch.
    let open = queue.batch().job(Part { n: 1 }).dispatch().await.unwrap();
    let err = queue
        .dispatch(Part { n: 2 })
        .in_batch(open.id)
        .after(open.jobs[0])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    // Nor can a job of a batch wait, or be unique; other options are kept.
    for dispatch in [
        queue.dispatch(Part { n: 3 }).after(open.jobs[0]),
        queue.dispatch(Part { n: 4 }).unique("k"),
    ] {
        let err = queue
            .batch()
            .add_dispatch(dispatch)
            .dispatch()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { what: "batch", .. }), "{err}");
    }
    let tagged = queue
        .batch()
        .add_dispatch(
            queue
                .dispatch(Part { n: 5 })
                .tags(["album:7"])
                .on_queue("images"),
        )
        .dispatch()
        .await
        .unwrap();
    let job = queue.find(tagged.jobs[0]).await.unwrap().unwrap();
    assert_eq!(
        (job.tags, job.queue, job.batch),
        (
            vec!["album:7".to_owned()],
            "images".to_owned(),
            Some(tagged.id)
        )
    );
    // Nothing was inserted by the refused dispatches.
    assert_eq!(db.scalar::<u64>("SELECT COUNT(*) FROM jobs").await, 3);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_job_runs_after_the_job_it_waits_for_and_is_cancelled_when_that_fails() {
    let db = TestDb::new("after_job").await;
    let queue = db.migrated().await;
    let first = queue.dispatch(Part { n: 1 }).await.unwrap();
    let second = queue.dispatch(Part { n: 2 }).after(first).await.unwrap();
    let third = queue.dispatch(Part { n: 3 }).after(second).await.unwrap();
    let doomed = queue
        .dispatch(Flaky {
            message: "boom".into(),
            succeed_on: 99,
            permanent: true,
        })
        .await
        .unwrap();
    let skipped = queue.dispatch(Part { n: 4 }).after(doomed).await.unwrap();
    let skipped_too = queue.dispatch(Part { n: 5 }).after(skipped).await.unwrap();
    assert_eq!(
        queue.find(second).await.unwrap().unwrap().status,
        "awaiting"
    );
    let handle = batch_workers(&db, &queue).start().await.unwrap();
    until(&queue, third, "processed", 20).await;
    let skipped = until(&queue, skipped, "cancelled", 10).await;
    assert_eq!(
        skipped.last_error.as_deref(),
        Some(format!("not run: job {doomed}, which it waited for, ended failed").as_str())
    );
    let skipped_too = until(&queue, skipped_too, "cancelled", 10).await;
    assert!(skipped_too.last_error.unwrap().contains("ended cancelled"));
    // Each ran after the one before had finished.
    let order: Vec<String> = db
        .pool
        .get_conn()
        .await
        .unwrap()
        .query("SELECT tag FROM runs WHERE tag LIKE 'part:%' ORDER BY seq")
        .await
        .unwrap();
    assert_eq!(order, ["part:1", "part:2", "part:3"]);
    // Waiting for a job that has finished releases at once.
    let late = queue.dispatch(Part { n: 6 }).after(first).await.unwrap();
    assert_ne!(queue.find(late).await.unwrap().unwrap().status, "awaiting");
    let never = queue.dispatch(Part { n: 7 }).after(doomed).await.unwrap();
    assert_eq!(
        queue.find(never).await.unwrap().unwrap().status,
        "cancelled"
    );
    stop(handle).await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_job_after_a_batch_and_the_sweep_settles_what_no_end_announced() {
    let db = TestDb::new("after_batch").await;
    let queue = db.migrated().await;
    let batch = queue
        .batch()
        .jobs((1..=3).map(|n| Part { n }))
        .dispatch()
        .await
        .unwrap();
    let after = queue
        .dispatch(Part { n: 10 })
        .after_batch(batch.id)
        .await
        .unwrap();
    // An operator cancels a job before any worker runs: no worker end announces it.
    assert!(queue.cancel(batch.jobs[2]).await.unwrap());
    // A job waits for a job that is then deleted by hand.
    let gone = queue.dispatch(Part { n: 20 }).await.unwrap();
    let orphan = queue.dispatch(Part { n: 21 }).after(gone).await.unwrap();
    db.exec(&format!("DELETE FROM jobs WHERE id = {gone}"))
        .await;
    let handle = batch_workers(&db, &queue).start().await.unwrap();
    let after = until(&queue, after, "cancelled", 15).await;
    assert!(after.last_error.unwrap().ends_with("failed"));
    let orphan = until(&queue, orphan, "cancelled", 15).await;
    assert!(orphan.last_error.unwrap().contains("no longer exists"));
    stop(handle).await;
    let state = queue.batch_state(batch.id).await.unwrap().unwrap();
    assert_eq!((state.processed, state.cancelled), (2, 1));
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_finish_the_server_refuses_is_done_by_the_sweep_once() {
    let db = TestDb::new("batch_refused_finish").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    // Every release of a waiting job fails for 3 s (read-only, as during a failover):
    // the batch's finish, which releases its callback in the same transaction, too.
    let rule = faults::inject(
        &db,
        Fault::update("awaiting", "pending", 1290, Duration::from_secs(3)),
    )
    .await;
    let batch = queue
        .batch()
        .jobs((1..=4).map(|n| Part { n }))
        .on_success(Gather { tag: "once".into() })
        .dispatch()
        .await
        .unwrap();
    let handle = batch_workers(&db, &queue).start().await.unwrap();
    db.wait_for("processed", 4, Duration::from_secs(10)).await;
    let state = queue.batch_state(batch.id).await.unwrap().unwrap();
    assert_eq!(
        state.finished_at, None,
        "the refused finish left the batch open"
    );
    until(&queue, batch.callbacks[0], "processed", 20).await;
    assert!(faults::fired(&db, rule).await >= 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop(handle).await;
    assert_eq!(runs_tagged(&db, "once").await, 1);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_finished_batch_is_pruned_with_its_last_job() {
    let db = TestDb::new("batch_prune").await;
    let queue = db.migrated().await;
    let done = queue
        .batch()
        .jobs((1..=2).map(|n| Part { n }))
        .dispatch()
        .await
        .unwrap();
    // No worker here runs this job: its batch stays open.
    let open = queue.batch().job(Elsewhere).dispatch().await.unwrap();
    // The first batch's jobs finish (cancelled, as an operator would); the second's waits.
    for id in &done.jobs {
        assert!(queue.cancel(*id).await.unwrap());
    }
    let handle = batch_workers(&db, &queue)
        .concurrency(1)
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while queue
        .batch_state(done.id)
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the sweep did not finish the batch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(handle).await;
    let pruned = queue
        .prune(Duration::ZERO, Some(Duration::ZERO))
        .await
        .unwrap();
    // Two cancelled jobs and their batch.
    assert_eq!(pruned, 3);
    assert_eq!(queue.batch_state(done.id).await.unwrap(), None);
    assert!(
        queue.batch_state(open.id).await.unwrap().is_some(),
        "a batch still running stays"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn the_example_publishes_its_album_once_after_every_photo() {
    let db = TestDb::new("batch_example").await;
    let out = std::process::Command::new(crate::common::procs::example_binary("batches"))
        .env("LIGHTJOBS_DATABASE_URL", &db.url)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |text: &str| {
        lines
            .iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} in {stdout}"))
    };
    let last_resize = lines.iter().rposition(|l| l.contains("resized")).unwrap();
    let expected: u64 = (1..=8u64).map(|p| 10_000 + p * 123).sum();
    let published = at(&format!("album 7 published: 8 photos, {expected} bytes"));
    assert!(
        last_resize < published && published < at("followers notified"),
        "{stdout}"
    );
    assert_eq!(lines.iter().filter(|l| l.contains("published")).count(), 1);
    assert!(
        stdout.contains("9 of 9 jobs done, Some(Succeeded)"),
        "{stdout}"
    );
    assert!(stdout.contains(r#"scan tagged ["album:7"], metadata Some(Object {"requested_by": String("ada@example.com")})"#), "{stdout}");
    assert!(
        at("cleanup stopped by its cancel") < at(": cancelled"),
        "{stdout}"
    );
    db.drop_db().await;
}
