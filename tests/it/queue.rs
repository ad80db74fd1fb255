//! Queue control against the real server: unique jobs (with a race between connections),
//! cancel, pause/resume seen by running workers, snooze, pruning.

use crate::common;
use common::workers;

use std::time::Duration;

use common::{Drain, Record, Snoozy, TestDb};
use lightjobs::JobQueue;

#[actix_rt::test]
async fn a_unique_key_gives_one_job_while_it_waits_or_runs() {
    let db = TestDb::new("queue_unique").await;
    let queue = db.migrated().await;
    let first = queue
        .dispatch(Record { tag: "a".into() })
        .unique("report:7")
        .await
        .unwrap();
    let second = queue
        .dispatch(Record { tag: "b".into() })
        .unique("report:7")
        .await
        .unwrap();
    assert_eq!(first, second);
    let other = queue
        .dispatch(Record { tag: "c".into() })
        .unique("report:8")
        .await
        .unwrap();
    assert_ne!(first, other);
    assert_eq!(db.count("pending").await, 2);
    // Once it has run (no period), the key is free again.
    workers(&db, &queue).drain().await;
    let third = queue
        .dispatch(Record { tag: "d".into() })
        .unique("report:7")
        .await
        .unwrap();
    assert!(third > other);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_unique_period_outlives_the_job() {
    let db = TestDb::new("queue_unique_period").await;
    let queue = db.migrated().await;
    let first = queue
        .dispatch(Record { tag: "a".into() })
        .unique_for("digest", Duration::from_secs(3600))
        .await
        .unwrap();
    workers(&db, &queue).drain().await;
    assert_eq!(db.job(first).await.0, "processed");
    let again = queue
        .dispatch(Record { tag: "b".into() })
        .unique_for("digest", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        again, first,
        "within the period the finished job still holds the key"
    );
    db.exec("UPDATE jobs SET unique_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
        .await;
    let later = queue
        .dispatch(Record { tag: "c".into() })
        .unique_for("digest", Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(later > first, "after the period a new job is made");
    db.drop_db().await;
}

/// Several queues (each with its own connections, as separate processes have) dispatch the
/// same keys at the same moment: the unique index leaves one job per key, and every
/// dispatcher gets that job's id.
#[actix_rt::test]
async fn racing_dispatchers_of_one_key_make_one_job() {
    let db = TestDb::new("queue_unique_race").await;
    db.migrated().await;
    let queues: Vec<JobQueue> = (0..4).map(|_| db.queue()).collect();
    for key in 0..25 {
        let racers = queues.iter().map(|q| {
            let q = q.clone();
            let key = format!("race-{key}");
            async move {
                q.dispatch(Record { tag: key.clone() })
                    .unique(&key)
                    .await
                    .unwrap()
            }
        });
        let ids = futures::future::join_all(racers).await;
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "key {key}: {ids:?}");
    }
    let rows: u64 = db.scalar("SELECT COUNT(*) FROM jobs").await;
    assert_eq!(rows, 25);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_waiting_job_can_be_cancelled_and_never_runs() {
    let db = TestDb::new("queue_cancel").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Record { tag: "x".into() })
        .delay(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(queue.cancel(id).await.unwrap());
    assert!(!queue.cancel(id).await.unwrap(), "only once");
    assert_eq!(db.job(id).await.0, "cancelled");
    db.exec("UPDATE jobs SET scheduled_at = UTC_TIMESTAMP(6)")
        .await;
    workers(&db, &queue).drain().await;
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    assert_eq!(runs, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_paused_queue_is_not_claimed_until_resumed() {
    let db = TestDb::new("queue_pause").await;
    let queue = db.migrated().await;
    queue.pause("default").await.unwrap();
    assert_eq!(queue.paused_queues().await.unwrap(), vec!["default"]);
    let handle = workers(&db, &queue)
        .queues(["default", "other"])
        .start()
        .await
        .unwrap();
    let held = queue.dispatch(Record { tag: "held".into() }).await.unwrap();
    let free = queue
        .dispatch(Record { tag: "free".into() })
        .on_queue("other")
        .await
        .unwrap();
    db.wait_for("processed", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(db.job(held).await.0, "pending", "paused");
    assert_eq!(db.job(free).await.0, "processed", "other queues go on");
    // Another handle (another process) resumes it; the running workers see it.
    db.queue().resume("default").await.unwrap();
    db.wait_for("processed", 2, Duration::from_secs(5)).await;
    handle.shutdown().await;
    assert!(queue.paused_queues().await.unwrap().is_empty());
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_snooze_reschedules_without_spending_an_attempt() {
    let db = TestDb::new("queue_snooze").await;
    let queue = db.migrated().await;
    // MAX_ATTEMPTS is 1: a snooze that spent the attempt would fail the job.
    let id = queue.dispatch(Snoozy { times: 3 }).await.unwrap();
    let handle = workers(&db, &queue).start().await.unwrap();
    db.wait_for("processed", 1, Duration::from_secs(10)).await;
    let report = handle.shutdown().await;
    assert_eq!(report.snoozed, 3);
    assert_eq!(db.job(id).await, ("processed".into(), 1, None));
    let attempts: Vec<u32> = {
        use mysql_async::prelude::*;
        let mut conn = db.pool.get_conn().await.unwrap();
        conn.query("SELECT attempt FROM runs ORDER BY seq")
            .await
            .unwrap()
    };
    assert_eq!(attempts, vec![1, 1, 1, 1]);
    db.drop_db().await;
}

#[actix_rt::test]
async fn pruning_deletes_old_finished_jobs_and_keeps_failed_ones_longer() {
    let db = TestDb::new("queue_prune").await;
    let queue = db.migrated().await;
    common::records(&queue, 2500).await;
    db.exec(
        "UPDATE jobs SET status = CASE WHEN id % 10 = 0 THEN 'failed' WHEN id % 10 = 1 \
         THEN 'cancelled' ELSE 'processed' END, finished_at = UTC_TIMESTAMP(6) - INTERVAL 2 DAY",
    )
    .await;
    let young = queue
        .dispatch(Record {
            tag: "young".into(),
        })
        .await
        .unwrap();
    db.exec(&format!(
        "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP(6) WHERE id = {young}"
    ))
    .await;
    let deleted = queue
        .prune(
            Duration::from_secs(24 * 3600),
            Some(Duration::from_secs(7 * 24 * 3600)),
        )
        .await
        .unwrap();
    assert_eq!(deleted, 2250, "processed and cancelled older than a day");
    assert_eq!(db.count("failed").await, 250, "failed kept for a week");
    assert_eq!(db.job(young).await.0, "processed");
    let deleted = queue
        .prune(
            Duration::from_secs(24 * 3600),
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(deleted, 250);
    db.drop_db().await;
}

/// Samples the number of running jobs of `queue` until none are pending or running.
async fn max_running(db: &TestDb, queue: &str) -> u64 {
    let mut max = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running: u64 = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM jobs WHERE queue = '{queue}' AND status = 'running'"
            ))
            .await;
        max = max.max(running);
        let left: u64 = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM jobs WHERE queue = '{queue}' AND status IN ('pending', 'running')"
            ))
            .await;
        if left == 0 {
            return max;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue {queue} did not drain"
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

async fn slow_jobs(queue: &JobQueue, on: &str, n: usize) {
    for _ in 0..n {
        queue
            .dispatch(common::Block {
                millis: 250,
                cooperative: false,
            })
            .on_queue(on)
            .await
            .unwrap();
    }
}

#[actix_rt::test]
async fn a_queue_limit_in_one_process_caps_its_running_jobs() {
    let db = TestDb::new("queue_local_limit").await;
    let queue = db.migrated().await;
    slow_jobs(&queue, "slow", 8).await;
    slow_jobs(&queue, "fast", 4).await;
    let running = common::Running::default();
    let handle = workers(&db, &queue)
        .register::<common::Block>()
        .queues(["slow", "fast"])
        .concurrency(10)
        .queue_concurrency("slow", 2)
        .data(running.clone())
        .start()
        .await
        .unwrap();
    let rows = max_running(&db, "slow").await;
    handle.shutdown().await;
    // Counted where the jobs run, not from the rows: a finished job's row may still say
    // `running` while its result is being written and its slot already runs the next.
    let slow = running.most("slow");
    eprintln!(
        "queue limited to 2 in this process: at most {slow} running at once ({rows} rows \
         `running` at once); queue fast: {}",
        running.most("fast")
    );
    assert_eq!(slow, 2);
    assert_eq!(db.count("processed").await, 12);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_global_limit_holds_across_processes() {
    let db = TestDb::new("queue_global_limit").await;
    let queue = db.migrated().await;
    queue.set_global_limit("api", Some(3)).await.unwrap();
    slow_jobs(&queue, "api", 12).await;
    // Two processes' worth of workers, 5 slots each: 10 could run, the limit says 3.
    let (qa, qb) = (db.queue(), db.queue());
    let a = workers(&db, &qa)
        .register::<common::Block>()
        .queues(["api"])
        .concurrency(5)
        .start()
        .await
        .unwrap();
    let b = workers(&db, &qb)
        .register::<common::Block>()
        .queues(["api"])
        .concurrency(5)
        .start()
        .await
        .unwrap();
    let max = max_running(&db, "api").await;
    a.shutdown().await;
    b.shutdown().await;
    eprintln!("global limit 3 over two processes of 5 slots: at most {max} running");
    assert!((2..=3).contains(&max), "{max} running at once");
    assert_eq!(db.count("processed").await, 12);
    queue.set_global_limit("api", None).await.unwrap();
    db.drop_db().await;
}

/// `n` dispatches of `Record { tag: "t<i>" }` started at the same moment.
async fn dispatch_at_once(queue: &JobQueue, n: usize) -> Vec<lightjobs::Result<u64>> {
    use std::future::IntoFuture;
    futures::future::join_all((0..n).map(|i| {
        queue
            .dispatch(Record {
                tag: format!("t{i}"),
            })
            .into_future()
    }))
    .await
}

/// The tag stored in job `id`'s payload.
async fn tag_of(db: &TestDb, id: u64) -> String {
    db.scalar(&format!(
        "SELECT JSON_VALUE(payload, '$.tag') FROM jobs WHERE id = {id}"
    ))
    .await
}

#[actix_rt::test]
async fn dispatches_made_at_the_same_moment_share_a_statement_and_each_gets_its_own_id() {
    let db = TestDb::new("queue_combined").await;
    let queue = db.migrated().await;
    queue.dispatch(Record { tag: "warm".into() }).await.unwrap();
    let results = dispatch_at_once(&queue, 64).await;
    let ids: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 64, "ids repeat: {ids:?}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(tag_of(&db, *id).await, format!("t{i}"), "job {id}");
    }
    // UTC_TIMESTAMP(6) is fixed for a statement: rows of one INSERT share `created_at`.
    let statements: u64 = db
        .scalar("SELECT COUNT(DISTINCT created_at) FROM jobs WHERE JSON_VALUE(payload, '$.tag') <> 'warm'")
        .await;
    assert!(
        statements <= 16,
        "64 dispatches took {statements} statements"
    );
    assert_eq!(db.count("pending").await, 65);
    // Switched off, every dispatch is a statement of its own (two statements on two
    // connections may, rarely, start in the same microsecond).
    let alone = JobQueue::builder(db.url.as_str())
        .combine_dispatches(false)
        .build()
        .unwrap();
    db.exec("DELETE FROM jobs").await;
    for result in dispatch_at_once(&alone, 16).await {
        result.unwrap();
    }
    let statements: u64 = db
        .scalar("SELECT COUNT(DISTINCT created_at) FROM jobs")
        .await;
    assert!(
        statements >= 12,
        "16 dispatches alone took {statements} statements"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_row_the_server_refuses_fails_alone_among_combined_dispatches() {
    let db = TestDb::new("queue_combined_refused").await;
    let queue = db.migrated().await;
    poison(&db, "t7").await;
    queue.dispatch(Record { tag: "warm".into() }).await.unwrap();
    let results = dispatch_at_once(&queue, 20).await;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(id) => {
                assert_ne!(i, 7, "the poisoned row was inserted");
                assert_eq!(tag_of(&db, id).await, format!("t{i}"));
            }
            Err(error) => {
                assert_eq!(i, 7, "dispatch {i} failed: {error}");
                assert!(error.to_string().contains("poisoned row"), "{error}");
            }
        }
    }
    assert_eq!(db.count("pending").await, 20);
    db.drop_db().await;
}

/// Workers with 8 slots, waiting between polls (a long poll) with every slot free, so that
/// dispatches are handed over.
async fn idle_workers(db: &TestDb, queue: &JobQueue) -> lightjobs::WorkerHandle {
    let handle = workers(db, queue)
        .concurrency(8)
        .poll_interval(Duration::from_secs(10), Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    // Idle: its fetch loop has made its first claim and waits for the next poll, so its
    // slots are free for handoffs. Shown by a probe that is handed over (a handed row's
    // claim is its INSERT: reserved_at = created_at); a loaded machine can take longer
    // than any fixed pause. The probe leaves no trace for the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = queue
            .dispatch(Record {
                tag: "probe".into(),
            })
            .await
            .unwrap();
        db.wait_for("processed", 1, Duration::from_secs(15)).await;
        let handed: u64 = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM jobs WHERE id = {id} AND reserved_at = created_at"
            ))
            .await;
        db.exec(&format!("DELETE FROM jobs WHERE id = {id}")).await;
        db.exec(&format!("DELETE FROM runs WHERE job_id = {id}"))
            .await;
        if handed == 1 {
            return handle;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workers never went idle"
        );
    }
}

/// A trigger that refuses (`SIGNAL`) the INSERT of any row whose payload holds `tag`.
async fn poison(db: &TestDb, tag: &str) {
    db.exec(&format!(
        "CREATE TRIGGER poison BEFORE INSERT ON jobs FOR EACH ROW \
         IF NEW.payload LIKE '%\"{tag}\"%' THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned row'; END IF"
    ))
    .await;
}

/// The same refusal with rows handed to idle local workers in the statement: it is refused
/// whole, each row is inserted on its own path (a handed row still handed over), the bad
/// one fails alone, and every other job runs once; none is left `running`.
#[actix_rt::test]
async fn a_refused_row_among_handed_off_dispatches_fails_alone() {
    let db = TestDb::new("queue_combined_refused_handed").await;
    let queue = db.migrated().await;
    poison(&db, "t3").await;
    let handle = idle_workers(&db, &queue).await;
    for round in 1..=HANDOFF_ROUNDS {
        let results = dispatch_at_once(&queue, 12).await;
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_err(), i == 3, "dispatch {i}: {result:?}");
        }
        db.wait_for("processed", 11, Duration::from_secs(30)).await;
        let runs: Vec<(String, u64)> = {
            use mysql_async::prelude::*;
            let mut conn = db.pool.get_conn().await.unwrap();
            conn.query("SELECT tag, COUNT(*) FROM runs GROUP BY tag HAVING COUNT(*) > 1")
                .await
                .unwrap()
        };
        assert!(runs.is_empty(), "ran twice: {runs:?}");
        let total: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
        assert_eq!(total, 11);
        assert_eq!(db.count("running").await, 0);
        let handed: u64 = db
            .scalar("SELECT COUNT(*) FROM jobs WHERE reserved_at = created_at")
            .await;
        // Dispatches t0..t7 found the 8 slots free; all but the poisoned one were handed over.
        if handed == 7 || round == HANDOFF_ROUNDS {
            assert_eq!(handed, 7, "rows handed over");
            break;
        }
        eprintln!("{handed} of 7 handed over in round {round}: the workers were claiming; again");
        db.exec("DELETE FROM jobs").await;
        db.exec("DELETE FROM runs").await;
    }
    handle.shutdown().await;
    db.drop_db().await;
}

/// How many times a handoff test dispatches its burst again when the workers were not
/// idle at that moment. `wake_workers` is process-wide: another test's dispatch wakes
/// these workers too, and a fetch loop that claims holds every free slot for its round
/// trip, so a burst that lands then is not handed over.
const HANDOFF_ROUNDS: u32 = 5;

#[actix_rt::test]
async fn combined_dispatches_and_local_handoffs_run_every_job_once() {
    let db = TestDb::new("queue_combined_handoff").await;
    let queue = db.migrated().await;
    let handle = workers(&db, &queue).concurrency(4).start().await.unwrap();
    // More at once than there are free slots: some go to the workers directly, the rest
    // through the combined INSERT.
    let ids: Vec<u64> = dispatch_at_once(&queue, 60)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    db.wait_for("processed", 60, Duration::from_secs(30)).await;
    handle.shutdown().await;
    for (i, id) in ids.iter().enumerate() {
        let runs: Vec<String> = {
            use mysql_async::prelude::*;
            let mut conn = db.pool.get_conn().await.unwrap();
            conn.exec("SELECT tag FROM runs WHERE job_id = ?", (id,))
                .await
                .unwrap()
        };
        assert_eq!(runs, vec![format!("t{i}")], "job {id}");
    }
    db.drop_db().await;
}

/// Dispatches handed to idle local workers join the combined INSERT as rows inserted
/// already claimed: they share statements with the other dispatches, start without a
/// claim, and every job runs once.
#[actix_rt::test]
async fn handed_off_dispatches_share_the_combined_insert() {
    let db = TestDb::new("queue_combined_handed").await;
    let queue = db.migrated().await;
    let handle = idle_workers(&db, &queue).await;
    let ids: Vec<u64> = dispatch_at_once(&queue, 20)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    db.wait_for("processed", 20, Duration::from_secs(30)).await;
    handle.shutdown().await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(tag_of(&db, *id).await, format!("t{i}"), "job {id}");
    }
    let runs: u64 = db
        .scalar("SELECT COUNT(DISTINCT job_id) FROM runs HAVING COUNT(*) = 20")
        .await;
    assert_eq!(runs, 20, "every job ran once");
    // A handed-off row was claimed by its INSERT: reserved_at = created_at, one attempt.
    let handed: u64 = db
        .scalar("SELECT COUNT(*) FROM jobs WHERE reserved_at = created_at AND attempts = 1")
        .await;
    // UTC_TIMESTAMP(6) is fixed for a statement: rows of one INSERT share `created_at`.
    let shared: u64 = db
        .scalar(
            "SELECT COUNT(*) FROM jobs j WHERE j.reserved_at = j.created_at AND \
             (SELECT COUNT(*) FROM jobs o WHERE o.created_at = j.created_at) > 1",
        )
        .await;
    let statements: u64 = db
        .scalar("SELECT COUNT(DISTINCT created_at) FROM jobs")
        .await;
    assert!(
        (1..=8).contains(&handed) && shared > 0 && statements < 20,
        "{handed} handed over, {shared} of them in a statement with other rows, {statements} statements"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn every_dispatch_in_flight_when_the_queue_is_let_go_gets_its_row() {
    let db = TestDb::new("queue_combined_drop").await;
    let queue = db.migrated().await;
    queue.dispatch(Record { tag: "warm".into() }).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let queue = queue.clone();
            actix_rt::spawn(async move {
                queue
                    .dispatch(Record {
                        tag: format!("t{i}"),
                    })
                    .await
            })
        })
        .collect();
    // The last handle outside the tasks goes while their statements are in flight.
    drop(queue);
    for (i, task) in tasks.into_iter().enumerate() {
        let id = task.await.unwrap().unwrap();
        assert_eq!(tag_of(&db, id).await, format!("t{i}"));
    }
    assert_eq!(db.count("pending").await, 51);
    db.drop_db().await;
}
