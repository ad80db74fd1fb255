//! Every outcome of a run, through the real workers on the real server.

use crate::common;
use common::workers;

use std::time::{Duration, Instant};

use common::{Flaky, Panics, Record, Sleep, Stolen, TestDb};
use lightjobs::{JobQueue, Report, Workers};
use mysql_async::prelude::*;

/// Runs workers until nothing is ready and nothing runs.
async fn drain(db: &TestDb, queue: &JobQueue) -> Report {
    let handle = workers(db, queue)
        .stop_when_empty(true)
        .start()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .expect("workers drained in time")
}

/// Retries are scheduled a few ms ahead: drain until the job settles.
async fn drain_until_settled(
    db: &TestDb,
    queue: &JobQueue,
    id: u64,
) -> (String, u32, Option<String>) {
    for _ in 0..50 {
        drain(db, queue).await;
        let row = db.job(id).await;
        if row.0 == "processed" || row.0 == "failed" {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never settled: {:?}", db.job(id).await);
}

#[actix_rt::test]
async fn success_is_processed_and_kept() {
    let db = TestDb::new("worker_success").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(Record { tag: "ok".into() }).await.unwrap();
    let report = drain(&db, &queue).await;
    assert_eq!(report.processed, 1);
    let (status, attempts, error) = db.job(id).await;
    assert_eq!((status.as_str(), attempts, error), ("processed", 1, None));
    let finished: Option<String> = db
        .scalar(&format!(
            "SELECT CAST(finished_at AS CHAR) FROM jobs WHERE id = {id}"
        ))
        .await;
    assert!(finished.is_some());
    let runs: u64 = db
        .scalar("SELECT COUNT(*) FROM runs WHERE tag = 'ok'")
        .await;
    assert_eq!(runs, 1);
    db.drop_db().await;
}

#[actix_rt::test]
async fn error_with_attempts_left_retries_then_succeeds() {
    let db = TestDb::new("worker_retry").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Flaky {
            message: "smtp timeout".into(),
            succeed_on: 3,
            permanent: false,
        })
        .await
        .unwrap();
    let (status, attempts, error) = drain_until_settled(&db, &queue, id).await;
    assert_eq!(status, "processed");
    assert_eq!(attempts, 3);
    assert_eq!(error.as_deref(), Some("smtp timeout"), "last error kept");
    db.drop_db().await;
}

#[actix_rt::test]
async fn retry_is_scheduled_in_the_row_with_backoff() {
    let db = TestDb::new("worker_backoff").await;
    let queue = db.migrated().await;
    // Record fails (no `runs` table) and retries with the default backoff: ~1 s ± 25%.
    db.exec("DROP TABLE runs").await;
    let id = queue.dispatch(Record { tag: "x".into() }).await.unwrap();
    let report = drain(&db, &queue).await;
    assert_eq!(report.retried, 1);
    let (status, attempts, error) = db.job(id).await;
    assert_eq!((status.as_str(), attempts), ("scheduled", 1));
    assert!(
        error.unwrap().contains("runs"),
        "the database error is kept"
    );
    let delay_ms: i64 = db
        .scalar(&format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), scheduled_at) DIV 1000 \
             FROM jobs WHERE id = {id}"
        ))
        .await;
    assert!(
        (500..=1300).contains(&delay_ms),
        "scheduled {delay_ms} ms ahead"
    );
    let reserved: Option<String> = db
        .scalar(&format!("SELECT reserved_by FROM jobs WHERE id = {id}"))
        .await;
    assert_eq!(reserved, None);
    db.drop_db().await;
}

#[actix_rt::test]
async fn no_attempts_left_is_failed_with_the_error() {
    let db = TestDb::new("worker_exhausted").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Flaky {
            message: "Recipient email address is missing".into(),
            succeed_on: 99,
            permanent: false,
        })
        .await
        .unwrap();
    let (status, attempts, error) = drain_until_settled(&db, &queue, id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    assert_eq!(error.as_deref(), Some("Recipient email address is missing"));
    db.drop_db().await;
}

#[actix_rt::test]
async fn permanent_error_fails_at_once() {
    let db = TestDb::new("worker_permanent").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Flaky {
            message: "bad address".into(),
            succeed_on: 99,
            permanent: true,
        })
        .await
        .unwrap();
    let report = drain(&db, &queue).await;
    assert_eq!(report.failed, 1);
    assert_eq!(
        db.job(id).await,
        ("failed".into(), 1, Some("bad address".into()))
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn max_attempts_per_dispatch_overrides_the_job() {
    let db = TestDb::new("worker_max_attempts").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Flaky {
            message: "nope".into(),
            succeed_on: 99,
            permanent: false,
        })
        .max_attempts(1)
        .await
        .unwrap();
    drain(&db, &queue).await;
    assert_eq!(db.job(id).await, ("failed".into(), 1, Some("nope".into())));
    db.drop_db().await;
}

#[actix_rt::test]
async fn panic_is_caught_and_counts_as_an_error() {
    let db = TestDb::new("worker_panic").await;
    let queue = db.migrated().await;
    let bad = queue
        .dispatch(Panics {
            message: "index out of bounds".into(),
        })
        .await
        .unwrap();
    let good = queue
        .dispatch(Record {
            tag: "after".into(),
        })
        .await
        .unwrap();
    let report = drain(&db, &queue).await;
    assert_eq!((report.failed, report.processed), (1, 1));
    let (status, _, error) = db.job(bad).await;
    assert_eq!(status, "failed");
    assert_eq!(error.as_deref(), Some("job panicked: index out of bounds"));
    assert_eq!(db.job(good).await.0, "processed", "the worker survived");
    db.drop_db().await;
}

#[actix_rt::test]
async fn timeout_cancels_the_run_and_counts_as_an_error() {
    let db = TestDb::new("worker_timeout").await;
    let queue = db.migrated().await;
    // Sleep's TIMEOUT is 300 ms and it has 2 attempts.
    let id = queue.dispatch(Sleep { millis: 5_000 }).await.unwrap();
    let started = Instant::now();
    let (status, attempts, error) = drain_until_settled(&db, &queue, id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 2));
    assert_eq!(error.as_deref(), Some("job timed out after 300ms"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 5 s sleep was cut short"
    );
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    assert_eq!(runs, 0, "a cancelled run does not finish its work");
    db.drop_db().await;
}

/// A job of a type this worker does not have (another app's, or a newer deploy's) is left
/// for a worker that has it: not claimed, no attempt spent, no error. A payload that does
/// not decode as a type the worker has fails at once, and the worker goes on.
#[actix_rt::test]
async fn unknown_names_are_left_for_others_and_bad_payloads_fail_at_once() {
    let db = TestDb::new("worker_bad_input").await;
    let queue = db.migrated().await;
    db.exec(
        "INSERT INTO jobs (name, payload, status, queue, scheduled_at, created_at) VALUES \
         ('no_such_job', '{}', 'pending', 'default', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)), \
         ('record', 'not json', 'pending', 'default', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)), \
         ('record', '{\"tag\": 42}', 'pending', 'default', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .await;
    let good = queue.dispatch(Record { tag: "fine".into() }).await.unwrap();
    let report = drain(&db, &queue).await;
    assert_eq!((report.failed, report.processed), (2, 1));
    let mut conn = db.pool.get_conn().await.unwrap();
    let rows: Vec<(String, String, u32, Option<String>)> = conn
        .query(
            "SELECT name, status, attempts, last_error FROM jobs WHERE id <> ".to_owned()
                + &good.to_string()
                + " ORDER BY id",
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0],
        ("no_such_job".to_owned(), "pending".to_owned(), 0, None),
        "left untouched for a worker that has the type"
    );
    let error = |i: usize| rows[i].3.clone().unwrap_or_default();
    assert_eq!(rows[1].1, "failed");
    assert!(
        error(1).starts_with("payload does not decode as job `record`: expected ident"),
        "{}",
        error(1)
    );
    assert!(
        error(2).contains("invalid type: integer `42`"),
        "{}",
        error(2)
    );
    assert_eq!(db.job(good).await.0, "processed");
    drop(conn);

    // A worker that has the type runs it.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct NoSuchJob {}
    impl lightjobs::Job for NoSuchJob {
        const NAME: &'static str = "no_such_job";
        async fn execute(self, _: &lightjobs::JobContext) -> Result<(), lightjobs::JobError> {
            Ok(())
        }
    }
    let other = Workers::new(queue.clone())
        .register::<NoSuchJob>()
        .stop_when_empty(true)
        .start()
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), other.wait())
        .await
        .unwrap();
    assert_eq!(report.processed, 1, "{report:?}");
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_worker_that_lost_its_job_cannot_overwrite_it() {
    let db = TestDb::new("worker_lost").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(Stolen).await.unwrap();
    let report = drain(&db, &queue).await;
    assert_eq!((report.processed, report.lost), (0, 1));
    let owner: String = db
        .scalar(&format!("SELECT reserved_by FROM jobs WHERE id = {id}"))
        .await;
    assert_eq!(owner, "another-worker");
    assert_eq!(
        db.job(id).await.0,
        "running",
        "the new owner's claim stands"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn priority_then_age_orders_the_claims() {
    let db = TestDb::new("worker_priority").await;
    let queue = db.migrated().await;
    let mut expected = vec![];
    for (tag, priority) in [("c", 5), ("a", -1), ("d", 5), ("b", 0)] {
        queue
            .dispatch(Record { tag: tag.into() })
            .priority(priority)
            .await
            .unwrap();
        expected.push(tag);
    }
    let handle = workers(&db, &queue)
        .concurrency(1)
        .stop_when_empty(true)
        .start()
        .await
        .unwrap();
    handle.wait().await;
    let mut conn = db.pool.get_conn().await.unwrap();
    let order: Vec<String> = conn
        .query("SELECT tag FROM runs ORDER BY seq")
        .await
        .unwrap();
    assert_eq!(order, vec!["a", "b", "c", "d"]);
    drop(conn);
    db.drop_db().await;
}

#[actix_rt::test]
async fn delayed_and_other_queue_jobs_wait() {
    let db = TestDb::new("worker_delay").await;
    let queue = db.migrated().await;
    let later = queue
        .dispatch(Record {
            tag: "later".into(),
        })
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();
    let at = queue
        .dispatch(Record { tag: "at".into() })
        .run_at(std::time::SystemTime::now() + Duration::from_secs(3600))
        .await
        .unwrap();
    let past = queue
        .dispatch(Record { tag: "past".into() })
        .run_at(std::time::SystemTime::now() - Duration::from_secs(3600))
        .await
        .unwrap();
    let elsewhere = queue
        .dispatch(Record { tag: "mail".into() })
        .on_queue("mail")
        .await
        .unwrap();
    drain(&db, &queue).await;
    assert_eq!(db.job(later).await.0, "scheduled");
    assert_eq!(db.job(at).await.0, "scheduled");
    assert_eq!(db.job(past).await.0, "processed");
    assert_eq!(db.job(elsewhere).await.0, "pending");
    let ahead: i64 = db
        .scalar(&format!(
            "SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), scheduled_at) FROM jobs WHERE id = {at}"
        ))
        .await;
    assert!(
        (3590..=3600).contains(&ahead),
        "run_at stored in UTC: {ahead}"
    );
    // A worker on both queues takes the other one too.
    let handle = workers(&db, &queue)
        .queues(["default", "mail"])
        .stop_when_empty(true)
        .start()
        .await
        .unwrap();
    handle.wait().await;
    assert_eq!(db.job(elsewhere).await.0, "processed");
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_dispatch_in_the_same_process_wakes_an_idle_worker() {
    let db = TestDb::new("worker_wake").await;
    let queue = db.migrated().await;
    // Polling alone would take 10 s: only the wake-up can start the jobs sooner.
    let handle = workers(&db, &queue)
        .poll_interval(Duration::from_secs(10), Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = vec![];
    for i in 0..20 {
        let sent = Instant::now();
        let id = queue
            .dispatch(Record {
                tag: format!("wake-{i}"),
            })
            .await
            .unwrap();
        loop {
            let mut conn = db.pool.get_conn().await.unwrap();
            let ran: Option<u64> = conn
                .exec_first("SELECT job_id FROM runs WHERE job_id = ?", (id,))
                .await
                .unwrap();
            if ran.is_some() {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "job {id} not woken"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    eprintln!(
        "dispatch -> job ran (incl. polling the runs table): p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    handle.shutdown().await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn bad_dispatches_are_refused_before_the_database() {
    let db = TestDb::new("worker_bad_dispatch").await;
    let queue = JobQueue::builder(db.url.as_str())
        .max_payload_bytes(100)
        .build()
        .unwrap();
    db.migrated().await;
    let big = queue
        .dispatch(Record {
            tag: "x".repeat(200),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(big.contains("over the limit of 100 bytes"), "{big}");
    let long_queue = queue
        .dispatch(Record { tag: "x".into() })
        .on_queue(&"q".repeat(65))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        long_queue.contains("must be 1 to 64 characters"),
        "{long_queue}"
    );
    let absurd = queue
        .dispatch(Record { tag: "x".into() })
        .delay(Duration::from_secs(u64::MAX / 4))
        .await
        .unwrap_err()
        .to_string();
    assert!(absurd.contains("longer than the maximum"), "{absurd}");
    let zero = queue
        .dispatch(Record { tag: "x".into() })
        .max_attempts(0)
        .await
        .unwrap_err()
        .to_string();
    assert!(zero.contains("at least 1"), "{zero}");
    // Quotes, semicolons and unicode are data, not SQL.
    let odd = "it's; DROP TABLE jobs; -- 📬";
    let id = queue
        .dispatch(Record { tag: "odd".into() })
        .on_queue(odd)
        .await
        .unwrap();
    let stored: String = db
        .scalar(&format!("SELECT queue FROM jobs WHERE id = {id}"))
        .await;
    assert_eq!(stored, odd);
    assert_eq!(db.count("pending").await, 1, "nothing else was inserted");
    db.drop_db().await;
}

#[actix_rt::test]
async fn transactional_dispatch_commits_and_rolls_back_with_the_callers_rows() {
    let db = TestDb::new("worker_tx").await;
    let queue = db.migrated().await;
    db.exec("CREATE TABLE users (email VARCHAR(100) PRIMARY KEY)")
        .await;
    let mut conn = db.pool.get_conn().await.unwrap();

    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .unwrap();
    tx.exec_drop("INSERT INTO users VALUES (?)", ("kept@example.com",))
        .await
        .unwrap();
    let kept = queue
        .dispatch(Record { tag: "kept".into() })
        .within(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .unwrap();
    tx.exec_drop("INSERT INTO users VALUES (?)", ("gone@example.com",))
        .await
        .unwrap();
    let gone = queue
        .dispatch(Record { tag: "gone".into() })
        .within(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    drop(conn);

    assert_eq!(db.job(kept).await.0, "pending");
    let gone_rows: u64 = db
        .scalar(&format!("SELECT COUNT(*) FROM jobs WHERE id = {gone}"))
        .await;
    assert_eq!(gone_rows, 0, "rolled back with the user row");
    let users: u64 = db.scalar("SELECT COUNT(*) FROM users").await;
    assert_eq!(users, 1);
    db.drop_db().await;
}

#[actix_rt::test]
async fn dispatch_many_inserts_a_batch_with_ids_in_order() {
    let db = TestDb::new("worker_many").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many((0..250).map(|i| Record {
            tag: format!("m{i}"),
        }))
        .await
        .unwrap();
    assert_eq!(ids.len(), 250);
    let mut conn = db.pool.get_conn().await.unwrap();
    let tags: Vec<(u64, String)> = conn
        .query("SELECT id, payload FROM jobs ORDER BY id")
        .await
        .unwrap();
    for (i, (id, payload)) in tags.iter().enumerate() {
        assert_eq!(*id, ids[i]);
        assert_eq!(payload, &format!("{{\"tag\":\"m{i}\"}}"));
    }
    assert!(queue
        .dispatch_many(Vec::<Record>::new())
        .await
        .unwrap()
        .is_empty());
    drop(conn);
    db.drop_db().await;
}

/// `--stop-when-empty` decides that the queues are empty only after jobs already due,
/// still waiting as `scheduled` (a delay or a retry's backoff that has passed), were moved
/// to `pending`: it runs them rather than leaving them for the next run.
#[actix_rt::test]
async fn stop_when_empty_runs_the_jobs_already_due() {
    let db = TestDb::new("worker_stop_when_empty_due").await;
    let queue = db.migrated().await;
    for i in 0..5 {
        queue
            .dispatch(Record {
                tag: format!("due{i}"),
            })
            .delay(Duration::from_millis(100))
            .await
            .unwrap();
    }
    assert_eq!(db.count("scheduled").await, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = drain(&db, &queue).await;
    assert_eq!(report.processed, 5, "{report:?}");
    assert_eq!(db.count("processed").await, 5);
    db.drop_db().await;
}

/// A failed job given another go starts clean: no error of its last life stays on a row
/// that may end `processed`.
#[actix_rt::test]
async fn a_retried_failed_job_starts_without_its_old_error() {
    let db = TestDb::new("worker_retry_clears_error").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Flaky {
            message: "smtp down".into(),
            succeed_on: 2,
            permanent: true,
        })
        .await
        .unwrap();
    drain(&db, &queue).await;
    assert_eq!(
        db.job(id).await,
        ("failed".into(), 1, Some("smtp down".into()))
    );
    assert!(queue.retry_failed(id).await.unwrap());
    assert_eq!(db.job(id).await, ("pending".into(), 0, None));
    drain(&db, &queue).await;
    assert_eq!(
        db.job(id).await.0,
        "failed",
        "the retried job ran attempt 1 again"
    );
    db.drop_db().await;
}
