//! Recurring jobs on the real server: every tick runs once, even with two schedulers.

use crate::common;

use std::time::Duration;

use common::{Record, TestDb};
use lightjobs::{JobQueue, Workers};
use mysql_async::prelude::*;

fn every_second(db: &TestDb, queue: &JobQueue, tag: &str) -> Workers {
    Workers::new(queue.clone())
        .recurring("* * * * * *", Record { tag: tag.into() })
        .data(db.pool.clone())
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
}

#[actix_rt::test]
async fn two_schedulers_enqueue_each_tick_once() {
    let db = TestDb::new("recurring_two").await;
    db.migrated().await;
    // Two processes' worth: separate queues, connections and maintenance threads.
    let (qa, qb) = (db.queue(), db.queue());
    let a = every_second(&db, &qa, "tick").start().await.unwrap();
    let b = every_second(&db, &qb, "tick").start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    a.shutdown().await;
    b.shutdown().await;
    let mut conn = db.pool.get_conn().await.unwrap();
    let per_tick: Vec<(String, u64)> = conn
        .query("SELECT unique_key, COUNT(*) FROM jobs GROUP BY unique_key ORDER BY unique_key")
        .await
        .unwrap();
    eprintln!("ticks enqueued in 3.3 s by two schedulers: {per_tick:?}");
    assert!((3..=5).contains(&per_tick.len()), "{per_tick:?}");
    assert!(per_tick
        .iter()
        .all(|(k, n)| k.starts_with("cron:record:") && *n == 1));
    let runs: Vec<(u64, u64)> = conn
        .query("SELECT job_id, COUNT(*) FROM runs GROUP BY job_id")
        .await
        .unwrap();
    assert!(runs.iter().all(|r| r.1 == 1), "a tick ran twice: {runs:?}");
    assert!(runs.len() + 1 >= per_tick.len(), "ticks ran: {runs:?}");
    drop(conn);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_restart_does_not_replay_missed_ticks() {
    let db = TestDb::new("recurring_missed").await;
    let queue = db.migrated().await;
    // As if an earlier process had scheduled a tick a minute ago and then stopped: sixty
    // ticks were missed since.
    db.exec(
        "INSERT INTO jobs (name, payload, status, queue, scheduled_at, created_at, finished_at, \
         unique_key, unique_until) VALUES ('record', '{\"tag\":\"old\"}', 'processed', 'default', \
         UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, \
         UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, 'cron:record:1', \
         UTC_TIMESTAMP(6) - INTERVAL 59 SECOND)",
    )
    .await;
    let handle = every_second(&db, &queue, "new").start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    handle.shutdown().await;
    let made: u64 = db
        .scalar("SELECT COUNT(*) FROM jobs WHERE unique_key <> 'cron:record:1'")
        .await;
    assert!((1..=2).contains(&made), "{made} jobs for at most two ticks");
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_bad_cron_expression_is_refused_at_start() {
    let db = TestDb::new("recurring_bad").await;
    let queue = db.migrated().await;
    let err = Workers::new(queue)
        .recurring("every monday", Record { tag: "x".into() })
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid cron expression: `every monday`"),
        "{err}"
    );
    db.drop_db().await;
}
