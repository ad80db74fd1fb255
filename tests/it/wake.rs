//! The push wake-up across processes, on the real server: a dispatch starts a job in an
//! idle worker process long before that process's next poll; a wake-up reaches only a
//! connection registered on this server and since its start (a stale id never interrupts
//! someone else's statement); a wake-up to a dead connection goes to the next listener.

use crate::common;

use std::time::{Duration, Instant};

use common::procs::{start_worker_env, wait_count, worker_binary, Work};
use common::TestDb;
use mysql_async::prelude::*;

/// A stranger's connection waiting in `SELECT SLEEP(secs)`: its id, and whether the
/// sleep was interrupted (error 1317) rather than run out.
async fn bystander(db: &TestDb, secs: u64) -> (u64, tokio::task::JoinHandle<bool>) {
    let mut conn = db.pool.get_conn().await.unwrap();
    let id: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    let sleep = tokio::spawn(async move {
        match conn.query_drop(format!("SELECT SLEEP({secs})")).await {
            Ok(()) => false,
            Err(mysql_async::Error::Server(e)) if e.code == 1317 => true,
            Err(e) => panic!("the bystander's sleep failed otherwise: {e}"),
        }
    });
    // Until its statement runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (id, sleep)
}

/// A process row of another host whose listener is connection `conn`; `boot_shift` moves
/// the registered server start, `node` replaces the server's uid.
async fn register(db: &TestDb, id: &str, conn: u64, boot_shift: i64, node: Option<&str>) {
    let node = node.map_or("@@server_uid".to_owned(), |n| format!("'{n}'"));
    db.exec(&format!(
        "INSERT INTO lightjobs_workers (id, host, pid, queues, started_at, heartbeat_at, \
         wake_conn, wake_node, wake_boot) VALUES ('{id}', 'elsewhere', 1, '[\"default\"]', \
         UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), {conn}, {node}, UNIX_TIMESTAMP() - \
         (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
         WHERE VARIABLE_NAME = 'UPTIME') + {boot_shift})"
    ))
    .await;
}

#[actix_rt::test]
async fn a_dispatch_starts_a_job_in_an_idle_process_before_its_poll() {
    let db = TestDb::new("wake_push").await;
    let queue = db.migrated().await;
    // The worker polls every 30 s: only a push starts a job within the test's bound.
    let _worker = start_worker_env(
        &worker_binary(),
        &db.url,
        &[("LIGHTJOBS_TEST_POLL_MS", "30000")],
        &[],
    );
    let listening = "SELECT COUNT(*) FROM lightjobs_workers WHERE wake_conn IS NOT NULL";
    wait_count(&db.url, listening, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=3 {
        let started = Instant::now();
        queue.dispatch(Work { millis: 0 }).await.unwrap();
        let runs = "SELECT COUNT(*) FROM runs";
        wait_count(&db.url, runs, n, Duration::from_secs(10)).await;
        eprintln!("dispatch {n} ran after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_wake_up_reaches_only_a_listener_of_this_server_start() {
    let db = TestDb::new("wake_target").await;
    let queue = db.migrated().await;
    // Registered with another start of this server (a restart since: ids begin again)
    // or with another server: never interrupted.
    for (shift, node) in [(-100, None), (0, Some("another-server"))] {
        let (id, sleep) = bystander(&db, 2).await;
        register(&db, "stale", id, shift, node).await;
        queue.dispatch(Work { millis: 0 }).await.unwrap();
        assert!(
            !sleep.await.unwrap(),
            "a stale registration interrupted a stranger"
        );
        db.exec("DELETE FROM lightjobs_workers").await;
    }
    // The same registration with this server's start is woken: the check is what spared
    // the others.
    let (id, sleep) = bystander(&db, 5).await;
    register(&db, "live", id, 0, None).await;
    let sent = Instant::now();
    queue.dispatch(Work { millis: 0 }).await.unwrap();
    assert!(
        sleep.await.unwrap(),
        "the registered listener was not woken"
    );
    eprintln!("woken {:?} after the dispatch", sent.elapsed());
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_wake_up_to_a_dead_connection_goes_to_the_next_listener() {
    let db = TestDb::new("wake_dead").await;
    let queue = db.migrated().await;
    let dead: u64 = {
        let mut conn = db.pool.get_conn().await.unwrap();
        let id = conn
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
        conn.disconnect().await.unwrap();
        id
    };
    register(&db, "dead", dead, 0, None).await;
    for _ in 0..3 {
        let (id, sleep) = bystander(&db, 5).await;
        db.exec("DELETE FROM lightjobs_workers WHERE id = 'live'")
            .await;
        register(&db, "live", id, 0, None).await;
        queue.dispatch(Work { millis: 0 }).await.unwrap();
        assert!(sleep.await.unwrap(), "the live listener was not woken");
        // Past the waker's gap between rounds.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.drop_db().await;
}
