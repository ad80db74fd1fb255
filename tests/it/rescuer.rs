//! Heartbeats and the rescuer: jobs of dead processes come back, jobs of live ones never do.

use crate::common;

use std::time::{Duration, Instant};

use common::{Block, Record, TestDb};
use lightjobs::{JobQueue, Workers};

fn workers(db: &TestDb, queue: &JobQueue) -> Workers {
    common::workers(db, queue).heartbeat(Duration::from_millis(100), Duration::from_millis(500))
}

/// Jobs as a process that died mid-run leaves them: running, held by a silent worker.
async fn orphan(db: &TestDb, queue: &JobQueue, n: usize, attempts: u32, max: u32) -> Vec<u64> {
    let ids = queue
        .dispatch_many((0..n).map(|i| Record {
            tag: format!("orphan-{i}"),
        }))
        .await
        .unwrap();
    db.exec(&format!(
        "UPDATE jobs SET status = 'running', reserved_by = 'deadhost:4242:0000beef', \
         reserved_at = UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE, attempts = {attempts}, \
         max_attempts = {max}"
    ))
    .await;
    db.exec(
        "INSERT INTO lightjobs_workers (id, host, pid, queues, started_at, heartbeat_at) VALUES \
         ('deadhost:4242:0000beef', 'deadhost', 4242, '[\"default\"]', \
          UTC_TIMESTAMP(6) - INTERVAL 1 HOUR, UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE)",
    )
    .await;
    ids
}

#[actix_rt::test]
async fn jobs_of_a_dead_process_are_rescued_and_run() {
    let db = TestDb::new("rescue_dead").await;
    let queue = db.migrated().await;
    let ids = orphan(&db, &queue, 5, 1, 3).await;
    let started = Instant::now();
    let handle = workers(&db, &queue).start().await.unwrap();
    db.wait_for("processed", 5, Duration::from_secs(10)).await;
    eprintln!(
        "dead process's jobs processed {:?} after start",
        started.elapsed()
    );
    handle.shutdown().await;
    for id in ids {
        let (status, attempts, error) = db.job(id).await;
        assert_eq!(
            (status.as_str(), attempts),
            ("processed", 2),
            "the dead run counts"
        );
        let error = error.unwrap();
        assert!(
            error.starts_with("worker deadhost:4242:0000beef stopped heartbeating"),
            "{error}"
        );
    }
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    assert_eq!(runs, 5);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_dead_process_on_the_last_attempt_fails_the_job() {
    let db = TestDb::new("rescue_last").await;
    let queue = db.migrated().await;
    let ids = orphan(&db, &queue, 2, 3, 3).await;
    let handle = workers(&db, &queue).start().await.unwrap();
    db.wait_for("failed", 2, Duration::from_secs(10)).await;
    handle.shutdown().await;
    for id in ids {
        let (status, attempts, error) = db.job(id).await;
        assert_eq!((status.as_str(), attempts), ("failed", 3));
        assert!(error
            .unwrap()
            .ends_with("while running this job, its last attempt"));
    }
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_long_job_in_a_live_process_is_never_rescued() {
    let db = TestDb::new("rescue_live").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Block {
            millis: 2_500,
            cooperative: false,
        })
        .await
        .unwrap();
    // Two processes' worth of workers, each with its own heartbeat and rescuer.
    let first = workers(&db, &queue).start().await.unwrap();
    db.wait_for("running", 1, Duration::from_secs(5)).await;
    let second = workers(&db, &queue).start().await.unwrap();
    // Five times the staleness passes while the job runs.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (status, attempts, error) = db.job(id).await;
    assert_eq!((status.as_str(), attempts, error), ("running", 1, None));
    db.wait_for("processed", 1, Duration::from_secs(5)).await;
    let registered: u64 = db.scalar("SELECT COUNT(*) FROM lightjobs_workers").await;
    assert_eq!(registered, 2);
    first.shutdown().await;
    second.shutdown().await;
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    assert_eq!(runs, 1, "ran once");
    let registered: u64 = db.scalar("SELECT COUNT(*) FROM lightjobs_workers").await;
    assert_eq!(registered, 0, "clean shutdown removes the worker rows");
    db.drop_db().await;
}
