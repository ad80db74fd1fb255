//! The in-process handoff against the real server: a dispatch while a local worker has a
//! free slot is inserted already claimed and run without a claim; everything that must
//! wait its turn still goes through the table; a shutdown racing dispatches loses none.

use crate::common;
use common::workers;

use std::time::{Duration, Instant};

use common::{Record, Sleep, TestDb};

/// (status, attempts, claim token set) of a job.
/// (status, attempts, handed off) of a job. A handed-off row was inserted already claimed,
/// in one statement, so its claim time is its creation time; a claim comes later, and a
/// release clears it.
async fn row(db: &TestDb, id: u64) -> (String, u32, bool) {
    let (status, attempts, _) = db.job(id).await;
    let handed: bool = db
        .scalar(&format!(
            "SELECT COALESCE(reserved_at = created_at, 0) FROM jobs WHERE id = {id}"
        ))
        .await;
    (status, attempts, handed)
}

async fn wait_status(db: &TestDb, id: u64, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.job(id).await.0 != status {
        assert!(Instant::now() < deadline, "job {id} never became {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn a_dispatch_to_an_idle_local_worker_is_handed_over() {
    let db = TestDb::new("handoff_idle").await;
    let queue = db.migrated().await;
    let handle = workers(&db, &queue).start().await.unwrap();
    // A dispatch that lands while the fetch loop is in a claim (it holds the free slots
    // for it) goes through the table; other tests' dispatches wake this process's loops,
    // so try a few times.
    let mut handed = None;
    for i in 0..20 {
        let id = queue
            .dispatch(Record {
                tag: format!("{i}"),
            })
            .await
            .unwrap();
        wait_status(&db, id, "processed").await;
        if row(&db, id).await.2 {
            handed = Some(id);
            break;
        }
    }
    handle.shutdown().await;
    let id = handed.expect("no dispatch of 20 to an idle worker was handed over");
    assert_eq!(row(&db, id).await, ("processed".into(), 1, true));
    let runs: u64 = db
        .scalar(&format!("SELECT COUNT(*) FROM runs WHERE job_id = {id}"))
        .await;
    assert_eq!(runs, 1);
    db.drop_db().await;
}

#[actix_rt::test]
async fn without_local_handoff_every_job_is_claimed_from_the_table() {
    let db = TestDb::new("handoff_off").await;
    let queue = db.migrated().await;
    let handle = workers(&db, &queue)
        .local_handoff(false)
        .start()
        .await
        .unwrap();
    let id = queue.dispatch(Record { tag: "a".into() }).await.unwrap();
    wait_status(&db, id, "processed").await;
    handle.shutdown().await;
    assert_eq!(row(&db, id).await, ("processed".into(), 1, false));
    db.drop_db().await;
}

#[actix_rt::test]
async fn jobs_that_must_wait_their_turn_go_through_the_table() {
    let db = TestDb::new("handoff_refused").await;
    let queue = db.migrated().await;
    queue.pause("paused").await.unwrap();
    let handle = workers(&db, &queue)
        .queues(["default", "paused"])
        .start()
        .await
        .unwrap();
    let later = queue
        .dispatch(Record {
            tag: "later".into(),
        })
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();
    let elsewhere = queue
        .dispatch(Record {
            tag: "elsewhere".into(),
        })
        .on_queue("other")
        .await
        .unwrap();
    let paused = queue
        .dispatch(Record {
            tag: "paused".into(),
        })
        .on_queue("paused")
        .await
        .unwrap();
    let unique = queue
        .dispatch(Record {
            tag: "unique".into(),
        })
        .unique("k")
        .await
        .unwrap();
    wait_status(&db, unique, "processed").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.shutdown().await;
    assert_eq!(row(&db, later).await, ("scheduled".into(), 0, false));
    assert_eq!(row(&db, elsewhere).await, ("pending".into(), 0, false));
    assert_eq!(row(&db, paused).await, ("pending".into(), 0, false));
    assert_eq!(row(&db, unique).await, ("processed".into(), 1, false));
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_busy_worker_takes_no_handoff() {
    let db = TestDb::new("handoff_busy").await;
    let queue = db.migrated().await;
    let handle = workers(&db, &queue).concurrency(1).start().await.unwrap();
    let slow = queue.dispatch(Sleep { millis: 250 }).await.unwrap();
    wait_status(&db, slow, "running").await;
    // The only slot is taken by the first job: the second waits in the table.
    let next = queue.dispatch(Record { tag: "next".into() }).await.unwrap();
    assert_eq!(row(&db, next).await, ("pending".into(), 0, false));
    wait_status(&db, next, "processed").await;
    handle.shutdown().await;
    assert_eq!(row(&db, slow).await.0, "processed");
    assert_eq!(row(&db, next).await, ("processed".into(), 1, false));
    db.drop_db().await;
}

#[actix_rt::test]
async fn dispatches_racing_a_shutdown_are_run_or_left_waiting() {
    let db = TestDb::new("handoff_shutdown").await;
    let queue = db.migrated().await;
    let handle = workers(&db, &queue)
        .concurrency(4)
        .shutdown_timeout(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    // First a handoff, one dispatch at a time so that no backlog builds up (a loaded
    // machine may need a few: a dispatch landing during a claim goes through the table).
    let mut ids = Vec::new();
    for i in 0..50 {
        let id = queue.dispatch(Sleep { millis: 0 }).await.unwrap();
        ids.push(id);
        wait_status(&db, id, "processed").await;
        if row(&db, id).await.2 {
            break;
        }
        assert!(
            i < 49,
            "no dispatch of 50 to an idle worker was handed over"
        );
    }
    // Then dispatches keep coming until after the shutdown has finished, so some race it,
    // by both paths.
    let stopped = std::rc::Rc::new(std::cell::Cell::new(false));
    let dispatcher = {
        let queue = queue.clone();
        let stopped = stopped.clone();
        actix_rt::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0u64;
            while !stopped.get() || i < 50 {
                ids.push(queue.dispatch(Sleep { millis: i % 3 }).await.unwrap());
                i += 1;
                if i % 4 == 0 {
                    // Back to back, each dispatch lands while the fetch loop claims the one
                    // before (its claim holds the free slots), so none is handed over; web
                    // requests come with gaps.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = handle.shutdown().await;
    stopped.set(true);
    ids.extend(dispatcher.await.unwrap());
    // A handoff that found the worker gone is released in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.count("running").await > 0 {
        assert!(Instant::now() < deadline, "a job was left running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let processed = db.count("processed").await;
    let pending = db.count("pending").await;
    assert_eq!(processed + pending, ids.len() as u64);
    assert_eq!(report.processed, processed);
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    assert_eq!(
        runs, processed,
        "a job ran twice or ran without being recorded"
    );
    db.drop_db().await;
}

/// Claims what is pending as worker `worker`; returns how many jobs it got.
async fn claim_as(db: &TestDb, worker: &str) -> usize {
    let mut conn = db.pool.get_conn().await.unwrap();
    let claim = lightjobs::__private::claim_and_complete(&mut conn, "default", 10, worker, &[])
        .await
        .unwrap();
    claim.jobs.len()
}

/// The in-doubt release (a handoff whose INSERT reply was lost, or whose worker had gone),
/// driven directly: it frees exactly the handed-off row, once, and never a row a claim has
/// taken since.
#[actix_rt::test]
async fn an_in_doubt_handoff_is_released_by_its_token_and_only_once() {
    let db = TestDb::new("handoff_release").await;
    let _queue = db.migrated().await;
    // As a committed handoff leaves it.
    db.exec(
        "INSERT INTO jobs (name, payload, status, queue, priority, max_attempts, \
         scheduled_at, created_at, attempts, reserved_by, reserved_at, claim_token) \
         VALUES ('record', '{\"tag\":\"x\"}', 'running', 'default', 0, 3, UTC_TIMESTAMP(6), \
         UTC_TIMESTAMP(6), 1, 'w1', UTC_TIMESTAMP(6), 42)",
    )
    .await;
    let id: u64 = db.scalar("SELECT MAX(id) FROM jobs").await;
    let store = lightjobs::__private::Store::new(db.pool.clone());
    assert_eq!(store.release_handoff("default", "w2", 42).await.unwrap(), 0);
    assert_eq!(store.release_handoff("default", "w1", 7).await.unwrap(), 0);
    assert_eq!(store.release_handoff("default", "w1", 42).await.unwrap(), 1);
    assert_eq!(row(&db, id).await, ("pending".into(), 0, false));
    // Claimed again by the same worker: a late release of the old token is a no-op.
    assert_eq!(claim_as(&db, "w1").await, 1);
    assert_eq!(store.release_handoff("default", "w1", 42).await.unwrap(), 0);
    assert_eq!(row(&db, id).await, ("running".into(), 1, false));
    // A row that went back to the queue with its token still set (a rescue keeps it, a
    // snooze gives the attempt back) and is claimed by the same worker: the claim replaces
    // the token, so a stale release cannot free a job that is running.
    db.exec(
        "INSERT INTO jobs (name, payload, status, queue, priority, max_attempts, \
         scheduled_at, created_at, attempts, claim_token) VALUES ('record', '{\"tag\":\"y\"}', \
         'pending', 'default', 0, 3, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 0, 43)",
    )
    .await;
    let again: u64 = db.scalar("SELECT MAX(id) FROM jobs").await;
    assert_eq!(claim_as(&db, "w1").await, 1);
    assert_eq!(store.release_handoff("default", "w1", 43).await.unwrap(), 0);
    assert_eq!(row(&db, again).await, ("running".into(), 1, false));
    db.drop_db().await;
}
