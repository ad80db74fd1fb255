//! Claim turns (`lightjobs_claim_turns`): the claimers of a queue take one of its turns
//! before they read its head. A turn held by a claimer that stalled mid-transaction (a
//! stopped process, a silent network path: the server keeps its locks until it notices)
//! must not hold up the queue: the others wait it out for 2 s, then claim without turns.

use crate::common;

use std::time::{Duration, Instant};

use common::audit::{audit, runs_from_file};
use common::procs::{
    audit_file, signal, start_audited, wait_count, wait_exit, worker_binary, Work,
};
use common::TestDb;
use mysql_async::prelude::*;

#[actix_rt::test]
async fn a_stalled_turn_holder_holds_up_no_claim() {
    const JOBS: u64 = 300;
    let db = TestDb::new("turns_stalled").await;
    let queue = db.migrated().await;
    let bin = worker_binary();
    queue
        .dispatch_many((0..JOBS).map(|_| Work { millis: 5 }))
        .await
        .unwrap();
    // The state a claimer stalled after its first round trip leaves on the server: an
    // open transaction holding the queue's turns, with nothing more coming from it.
    let mut holder = db.pool.get_conn().await.unwrap();
    holder
        .query_drop(
            "INSERT IGNORE INTO lightjobs_claim_turns (queue, turn) VALUES ('default', 0), ('default', 1)",
        )
        .await
        .unwrap();
    holder
        .query_drop("START TRANSACTION; SELECT * FROM lightjobs_claim_turns WHERE queue = 'default' FOR UPDATE")
        .await
        .unwrap();
    let log = audit_file("turns_stalled");
    let started = Instant::now();
    let mut workers = vec![
        start_audited(&bin, &db.url, &log, &["--concurrency", "8"]),
        start_audited(&bin, &db.url, &log, &["--concurrency", "8"]),
    ];
    let processed = "SELECT COUNT(*) FROM jobs WHERE status = 'processed'";
    // Without the wait's bound each claim would wait for the server's lock timeout (50 s)
    // or the statement deadline (10 s), and fail.
    wait_count(&db.url, processed, JOBS, Duration::from_secs(20)).await;
    let drained = started.elapsed();
    // The turns were held all along: a claim that took one now still has to wait.
    let mut probe = db.pool.get_conn().await.unwrap();
    let busy = probe
        .query_drop("SELECT * FROM lightjobs_claim_turns WHERE queue = 'default' FOR UPDATE NOWAIT")
        .await;
    assert!(
        matches!(&busy, Err(mysql_async::Error::Server(e)) if e.code == 1205),
        "the holder kept the turns through the drain: {busy:?}"
    );
    holder.query_drop("ROLLBACK").await.unwrap();
    for w in &mut workers {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(30)).await.success());
    }
    let verdict = audit(&db.url, &runs_from_file(&log), &[], |_| false).await;
    verdict.assert_clean("both claim turns held by a stalled transaction");
    assert_eq!(verdict.finished, JOBS);
    eprintln!(
        "{JOBS} jobs drained past held turns in {:.1}s",
        drained.as_secs_f64()
    );
    drop((probe, holder));
    db.drop_db().await;
}

#[actix_rt::test]
async fn workers_make_their_queues_turns() {
    let db = TestDb::new("turns_made").await;
    let queue = db.migrated().await;
    let workers = common::workers(&db, &queue).queues(["default", "mail"]);
    let handle = workers.start().await.unwrap();
    let turns: Vec<(String, u8)> = db
        .pool
        .get_conn()
        .await
        .unwrap()
        .query("SELECT queue, turn FROM lightjobs_claim_turns ORDER BY queue, turn")
        .await
        .unwrap();
    assert_eq!(
        turns,
        [
            ("default".to_owned(), 0),
            ("default".to_owned(), 1),
            ("mail".to_owned(), 0),
            ("mail".to_owned(), 1)
        ]
    );
    handle.shutdown().await;
    db.drop_db().await;
}
