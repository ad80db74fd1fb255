//! Starting and stopping the workers: the grace period, releases at the deadline, jobs that
//! cooperate with the shutdown signal, self-stopping runs, and a start/stop stress test.

use crate::common;
use common::workers;

use std::time::{Duration, Instant};

use common::{Block, Drain, Record, TestDb};
use lightjobs::{JobQueue, Workers};

async fn running(db: &TestDb) -> u64 {
    db.count("running").await
}

#[actix_rt::test]
async fn in_flight_jobs_finish_within_the_grace_period() {
    let db = TestDb::new("sup_grace").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many((0..5).map(|_| Block {
            millis: 400,
            cooperative: false,
        }))
        .await
        .unwrap();
    let handle = workers(&db, &queue)
        .shutdown_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    db.wait_for("running", 5, Duration::from_secs(5)).await;
    let report = handle.shutdown().await;
    assert_eq!(report.processed, 5);
    assert_eq!(report.released, 0);
    for id in ids {
        assert_eq!(db.job(id).await, ("processed".into(), 1, None));
    }
    assert_eq!(running(&db).await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn jobs_still_running_at_the_deadline_are_released_without_spending_an_attempt() {
    let db = TestDb::new("sup_release").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many((0..4).map(|_| Block {
            millis: 60_000,
            cooperative: false,
        }))
        .await
        .unwrap();
    let quick = queue
        .dispatch(Record {
            tag: "quick".into(),
        })
        .await
        .unwrap();
    let handle = workers(&db, &queue)
        .shutdown_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    db.wait_for("running", 4, Duration::from_secs(5)).await;
    db.wait_for("processed", 1, Duration::from_secs(5)).await;
    let started = Instant::now();
    let report = handle.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_eq!((report.released, report.processed), (4, 1));
    for id in ids {
        let (status, attempts, _) = db.job(id).await;
        assert_eq!((status.as_str(), attempts), ("pending", 0), "job {id}");
    }
    assert_eq!(db.job(quick).await.0, "processed");
    assert_eq!(running(&db).await, 0, "nothing left running");
    let runs: u64 = db
        .scalar("SELECT COUNT(*) FROM runs WHERE tag = 'block'")
        .await;
    assert_eq!(runs, 0);
    // Nothing lost: the released jobs run in the next process (here, cut short to 10 ms).
    db.exec(
        "UPDATE jobs SET payload = '{\"millis\":10,\"cooperative\":false}' WHERE name = 'block'",
    )
    .await;
    let report = workers(&db, &queue).drain().await;
    assert_eq!(report.processed, 4);
    db.drop_db().await;
}

#[actix_rt::test]
async fn jobs_see_the_shutdown_signal_and_can_return_early() {
    let db = TestDb::new("sup_cooperative").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Block {
            millis: 60_000,
            cooperative: true,
        })
        .await
        .unwrap();
    let handle = workers(&db, &queue)
        .shutdown_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    db.wait_for("running", 1, Duration::from_secs(5)).await;
    let started = Instant::now();
    let report = handle.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not wait for the grace period"
    );
    assert_eq!(report.retried, 1);
    let (status, attempts, error) = db.job(id).await;
    // A retry after the default backoff (about a second): `scheduled` until then.
    assert_eq!((status.as_str(), attempts), ("scheduled", 1));
    assert_eq!(error.as_deref(), Some("interrupted by shutdown"));
    db.drop_db().await;
}

#[actix_rt::test]
async fn max_jobs_stops_after_that_many() {
    let db = TestDb::new("sup_max_jobs").await;
    let queue = db.migrated().await;
    common::records(&queue, 7).await;
    let report = workers(&db, &queue)
        .concurrency(4)
        .max_jobs(5)
        .start()
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(report.processed, 5);
    assert_eq!(db.count("pending").await, 2);
    assert_eq!(running(&db).await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn settings_are_checked_at_start() {
    let db = TestDb::new("sup_settings").await;
    let queue = db.migrated().await;
    let err = |w: Workers| async move { w.start().await.unwrap_err().to_string() };
    assert!(err(workers(&db, &queue).concurrency(0))
        .await
        .contains("concurrency"));
    assert!(err(workers(&db, &queue).queues(Vec::<String>::new()))
        .await
        .contains("queue"));
    assert!(
        err(workers(&db, &queue).poll_interval(Duration::from_secs(2), Duration::from_secs(1)))
            .await
            .contains("poll_interval")
    );
    assert!(err(Workers::new(queue.clone()))
        .await
        .contains("no job types registered"));
    let zero = err(workers(&db, &queue).heartbeat(Duration::ZERO, Duration::from_secs(30))).await;
    assert!(zero.contains("interval must be non-zero"), "{zero}");
    let short =
        err(workers(&db, &queue).heartbeat(Duration::from_secs(5), Duration::from_secs(9))).await;
    assert!(short.contains("at least twice the interval"), "{short}");
    #[derive(serde::Serialize, serde::Deserialize)]
    struct LongAlias {}
    impl lightjobs::Job for LongAlias {
        const NAME: &'static str = "long_alias";
        const ALIASES: &'static [&'static str] = &[
            "App\\Jobs\\AJobWhoseClassNameIsFarLongerThanTheNameColumnOfTheJobsTableCanHoldWhichIsOneHundredAndTwentyEightCharactersAfterTheMigration",
        ];
        async fn execute(self, _: &lightjobs::JobContext) -> Result<(), lightjobs::JobError> {
            Ok(())
        }
    }
    let long = err(workers(&db, &queue).register::<LongAlias>()).await;
    assert!(long.contains("must be 1 to 128 characters"), "{long}");
    let down = JobQueue::connect("mysql://root@127.0.0.1:1/nowhere").unwrap();
    let e = Workers::new(down)
        .register::<Record>()
        .start()
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    db.drop_db().await;
}

/// Starts and stops workers many times while jobs keep arriving: every job runs exactly
/// once, and no stop leaves a row `running`.
#[actix_rt::test]
async fn start_stop_stress_loses_nothing() {
    let db = TestDb::new("sup_stress").await;
    let queue = db.migrated().await;
    let mut total = 0u64;
    for round in 0..15 {
        let ids = queue
            .dispatch_many((0..40).map(|i| Record {
                tag: format!("{round}-{i}"),
            }))
            .await
            .unwrap();
        total += ids.len() as u64;
        let handle = workers(&db, &queue)
            .concurrency(8)
            .shutdown_timeout(Duration::from_secs(5))
            .start()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(fastrand_ms(round))).await;
        handle.shutdown().await;
        assert_eq!(running(&db).await, 0, "round {round} left jobs running");
    }
    let report = workers(&db, &queue).drain().await;
    eprintln!("final drain processed {}", report.processed);
    let processed = db.count("processed").await;
    if processed != total {
        use mysql_async::prelude::Queryable;
        let mut conn = db.pool.get_conn().await.unwrap();
        let left: Vec<(u64, String, u32, Option<String>, String)> = conn
            .query(
                "SELECT id, status, attempts, last_error, CAST(scheduled_at AS CHAR) \
                 FROM jobs WHERE status <> 'processed'",
            )
            .await
            .unwrap();
        panic!("{processed} of {total} processed; the others: {left:#?}");
    }
    let twice: u64 = db
        .scalar(
            "SELECT COUNT(*) FROM (SELECT job_id FROM runs GROUP BY job_id HAVING COUNT(*) > 1) t",
        )
        .await;
    assert_eq!(twice, 0, "a job ran twice");
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    assert_eq!(runs, total);
    db.drop_db().await;
}

/// A spread of stop times, from before the first claim to after the backlog is done.
fn fastrand_ms(round: u64) -> u64 {
    [0, 1, 3, 7, 15, 30, 60][(round % 7) as usize]
}

/// Needs the `test-hooks` feature (`bash .ci/test` enables every feature).
#[cfg(feature = "test-hooks")]
#[actix_rt::test]
async fn a_fetch_loop_that_dies_is_restarted_and_nothing_is_lost() {
    let db = TestDb::new("sup_restart").await;
    let queue = db.migrated().await;
    common::records(&queue, 30).await;
    let report = workers(&db, &queue)
        .concurrency(2)
        .__panic_after_claims(3)
        .drain()
        .await;
    assert_eq!(report.processed, 30);
    assert_eq!(db.count("processed").await, 30);
    let runs: u64 = db.scalar("SELECT COUNT(DISTINCT job_id) FROM runs").await;
    assert_eq!(runs, 30);
    assert_eq!(running(&db).await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_panicking_event_hook_does_not_stop_results_being_written() {
    let db = TestDb::new("sup_hook_panic").await;
    let queue = db.migrated().await;
    common::records(&queue, 10).await;
    let report = workers(&db, &queue)
        .on_event(|e| panic!("hook bug on job {}", e.id))
        .drain()
        .await;
    assert_eq!(report.processed, 10);
    assert_eq!(db.count("processed").await, 10);
    db.drop_db().await;
}
