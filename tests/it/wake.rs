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
        // Past the second in which a dispatcher whose round found nobody sends none.
        tokio::time::sleep(Duration::from_millis(1100)).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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

#[actix_rt::test]
async fn a_wake_up_that_cuts_a_registration_short_is_not_lost() {
    let db = TestDb::new("wake_register").await;
    let queue = db.migrated().await;
    let _worker = start_worker_env(
        &worker_binary(),
        &db.url,
        &[("LIGHTJOBS_TEST_POLL_MS", "30000")],
        // Heartbeats far apart: one held up behind the slow registration would close the
        // lease and reopen it, and the reopened fetch loop claims whether woken or not.
        &["--heartbeat", "25", "--stale-after", "60"],
    );
    let listening = "SELECT COUNT(*) FROM lightjobs_workers WHERE wake_conn IS NOT NULL";
    wait_count(&db.url, listening, 1, Duration::from_secs(30)).await;
    let conn: u64 = db
        .scalar("SELECT wake_conn FROM lightjobs_workers WHERE wake_conn IS NOT NULL")
        .await;
    // The listener registers its connection again every sixth wait; a registration that
    // leaves the heartbeat as it was now takes 5 s, and the dispatch's KILL QUERY meets it
    // instead of the SLEEP (the server shows the trigger's statement while it runs).
    db.exec(
        "CREATE TRIGGER slow_registration BEFORE UPDATE ON lightjobs_workers FOR EACH ROW \
         IF NEW.heartbeat_at <=> OLD.heartbeat_at AND NEW.wake_conn IS NOT NULL \
         THEN DO SLEEP(5); END IF",
    )
    .await;
    let registering = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {conn} \
         AND INFO = 'DO SLEEP(5)'"
    );
    wait_count(&db.url, &registering, 1, Duration::from_secs(90)).await;
    let sent = Instant::now();
    queue.dispatch(Work { millis: 0 }).await.unwrap();
    // Taken as a wake-up, the interrupted registration starts the claim at once; lost, the
    // job would wait for the 30 s poll.
    let done = "SELECT COUNT(*) FROM jobs WHERE status = 'processed'";
    wait_count(&db.url, done, 1, Duration::from_secs(5)).await;
    eprintln!(
        "ran {:?} after a dispatch that cut a registration short",
        sent.elapsed()
    );
    db.exec("DROP TRIGGER slow_registration").await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_listener_registers_again_only_every_sixth_wait() {
    let db = TestDb::new("wake_reregister").await;
    let queue = db.migrated().await;
    let _worker = start_worker_env(
        &worker_binary(),
        &db.url,
        &[("LIGHTJOBS_TEST_POLL_MS", "30000")],
        &["--heartbeat", "25", "--stale-after", "60"],
    );
    let listening = "SELECT COUNT(*) FROM lightjobs_workers WHERE wake_conn IS NOT NULL";
    wait_count(&db.url, listening, 1, Duration::from_secs(30)).await;
    // Every write of the registration, counted: one that leaves the heartbeat as it was.
    db.exec("CREATE TABLE registrations (at DATETIME(6) NOT NULL)")
        .await;
    db.exec(
        "CREATE TRIGGER count_registrations BEFORE UPDATE ON lightjobs_workers FOR EACH ROW \
         IF NEW.heartbeat_at <=> OLD.heartbeat_at AND NEW.wake_conn IS NOT NULL \
         THEN INSERT INTO registrations VALUES (UTC_TIMESTAMP(6)); END IF",
    )
    .await;
    // Twelve wake-ups, each ending a wait: two registrations at most (every sixth wait),
    // not one per wait (the same values written again change no row; read as "no row",
    // they were written at every wait).
    for n in 1..=12 {
        queue.dispatch(Work { millis: 0 }).await.unwrap();
        let done = "SELECT COUNT(*) FROM jobs WHERE status = 'processed'";
        wait_count(&db.url, done, n, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written: u64 = db.scalar("SELECT COUNT(*) FROM registrations").await;
    eprintln!("12 wake-ups, {written} registrations");
    assert!(written <= 3, "registered again at {written} of 12 waits");
    db.exec("DROP TRIGGER count_registrations").await;
    db.drop_db().await;
}
