//! A job runs once unless a process dies, nothing is lost, nothing is left `running`: each
//! error path of the claim, the result writes and the rescue, with the error injected by
//! the real server (a trigger that `SIGNAL`s it) and every run audited.

use crate::common;

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::audit::{audit, Audit, Audited};
use common::faults::{self, Fault};
use common::proxy::upstream;
use common::{Block, Flaky, Record, Stolen, TestDb};
use lightjobs::__private::{claim_and_complete, Store};
use lightjobs::{JobEvent, JobOutcome, JobQueue, Workers};

fn workers(db: &TestDb, queue: &JobQueue, audit: &Audit) -> Workers {
    Workers::new(queue.clone())
        .register::<Audited>()
        .register::<Flaky>()
        .register::<Block>()
        .register::<Record>()
        .register::<Stolen>()
        .data(audit.clone())
        .data(db.pool.clone())
        .concurrency(8)
        .poll_interval(Duration::from_millis(10), Duration::from_millis(100))
}

/// Waits until no job is waiting or running, or panics after `timeout`.
async fn settle(db: &TestDb, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let open: u64 = db
            .scalar("SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'scheduled', 'running')")
            .await;
        if open == 0 {
            return;
        }
        let running = db.count("running").await;
        assert!(
            Instant::now() < deadline,
            "{open} jobs still open ({running} running) after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn session(db: &TestDb) -> mysql_async::Conn {
    use mysql_async::prelude::*;
    let mut conn = db.pool.get_conn().await.unwrap();
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .unwrap();
    conn
}

/// The folded success write of a claim fails (read-only server, as in a failover): the
/// claim must fail as a whole, commit nothing and report nothing in doubt. Read to its
/// first result only, the multi-statement looked like a success while its COMMIT never ran.
#[actix_rt::test]
async fn an_error_in_a_later_statement_of_the_claim_fails_the_claim() {
    let db = TestDb::new("once_claim_error").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    let first = queue.dispatch(Record { tag: "a".into() }).await.unwrap();
    let second = queue.dispatch(Record { tag: "b".into() }).await.unwrap();
    let mut conn = session(&db).await;
    let claim = claim_and_complete(&mut conn, "default", 1, "w", &[])
        .await
        .unwrap();
    assert_eq!(claim.jobs[0].id, first);
    let held = (first, claim.jobs[0].token);

    let rule = faults::inject(
        &db,
        Fault::update("running", "processed", 1290, Duration::from_secs(60)),
    )
    .await;
    let error = claim_and_complete(&mut conn, "default", 1, "w", &[held])
        .await
        .expect_err("the refused success write fails the claim");
    assert!(error.to_string().contains("1290"), "{error}");
    assert_eq!(faults::fired(&db, rule).await, 1);
    drop(conn);
    // Nothing of the transaction committed: the other job was not claimed, the first is
    // still ours and running.
    assert_eq!(db.job(second).await.0, "pending");
    assert_eq!(db.job(first).await.0, "running");

    faults::clear(&db).await;
    let mut conn = session(&db).await;
    let claim = claim_and_complete(&mut conn, "default", 1, "w", &[held])
        .await
        .unwrap();
    assert_eq!(claim.completed, Some(vec![first]));
    assert_eq!(claim.jobs[0].id, second);
    assert_eq!(db.job(first).await.0, "processed");
    drop(conn);
    db.drop_db().await;
}

/// Writes of successes refused for three seconds under live workers (the failover window
/// of the issue): every job ends processed, once, and none is left running. A backlog
/// first (claims come back full: the completer writes the successes), then a trickle from
/// another process (claims that fold the previous successes into their transaction, where
/// the refused UPDATE is the second statement of the multi-statement).
#[actix_rt::test]
async fn successes_refused_for_a_while_are_written_later_and_nothing_runs_twice() {
    const BACKLOG: usize = 600;
    const TRICKLE: usize = 400;
    let db = TestDb::new("once_success_window").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log)
        .concurrency(32)
        .start()
        .await
        .unwrap();
    let rule = faults::inject(
        &db,
        Fault::update("running", "processed", 1290, Duration::from_secs(3)),
    )
    .await;
    queue
        .dispatch_many((0..BACKLOG).map(|_| Audited { millis: 1 }))
        .await
        .unwrap();
    // Not this process's queue: no handoff, every job goes through a claim.
    let other = db.queue();
    for _ in 0..TRICKLE / 10 {
        other
            .dispatch_many((0..10).map(|_| Audited { millis: 5 }))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    settle(&db, Duration::from_secs(90)).await;
    let report = handle.shutdown().await;
    let fired = faults::fired(&db, rule).await;
    assert!(fired > 0, "the fault never fired");
    let verdict = audit(&db.url, &audit_log.runs(), &[], |_| false).await;
    verdict.assert_clean("1290 on running→processed for 3 s");
    let jobs = (BACKLOG + TRICKLE) as u64;
    assert_eq!(verdict.runs, jobs, "every job ran exactly once");
    assert_eq!(db.count("processed").await, jobs);
    assert_eq!(report.processed, jobs, "{report:?}");
    eprintln!("success writes refused {fired} times; {report:?}");
    db.drop_db().await;
}

/// Failure and retry writes refused for longer than a few tries (1290 read-only, 1047 a
/// node that left the cluster): the completer keeps trying while the process lives, so no
/// job is left running and each job runs exactly the attempts it should.
#[actix_rt::test]
async fn failure_and_retry_writes_are_retried_until_they_land() {
    let db = TestDb::new("once_result_writes").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    let failing = queue
        .dispatch_many((0..40).map(|i| Flaky {
            message: format!("bad input {i}"),
            succeed_on: 99,
            permanent: true,
        }))
        .await
        .unwrap();
    let retried = queue
        .dispatch_many((0..40).map(|i| Flaky {
            message: format!("flaky {i}"),
            succeed_on: 2,
            permanent: false,
        }))
        .await
        .unwrap();
    let window = Duration::from_millis(2500);
    let to_failed = faults::inject(&db, Fault::update("running", "failed", 1290, window)).await;
    let to_retry = faults::inject(&db, Fault::update("running", "scheduled", 1047, window)).await;
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log).start().await.unwrap();
    settle(&db, Duration::from_secs(60)).await;
    let report = handle.shutdown().await;
    let (fired_failed, fired_retry) = (
        faults::fired(&db, to_failed).await,
        faults::fired(&db, to_retry).await,
    );
    eprintln!(
        "failed writes refused {fired_failed} times, retry writes {fired_retry} times; {report:?}"
    );
    assert!(fired_failed > 0 && fired_retry > 0);
    for id in failing {
        let (status, attempts, error) = db.job(id).await;
        assert_eq!((status.as_str(), attempts), ("failed", 1));
        assert!(error.unwrap().starts_with("bad input"));
    }
    for id in retried {
        assert_eq!(db.job(id).await.0, "processed");
        assert_eq!(db.job(id).await.1, 2, "one failed attempt, one success");
    }
    assert_eq!(
        (report.failed, report.retried, report.processed),
        (40, 40, 40)
    );
    assert_eq!((report.lost, report.unwritten), (0, 0));
    db.drop_db().await;
}

/// The release of jobs still running at the shutdown deadline is refused for a while: it is
/// retried until it lands, within the shutdown deadline, and nothing is left running.
#[actix_rt::test]
async fn a_release_at_shutdown_is_retried_past_a_short_refusal() {
    let db = TestDb::new("once_release").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    queue
        .dispatch_many((0..4).map(|_| Block {
            millis: 30_000,
            cooperative: false,
        }))
        .await
        .unwrap();
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log)
        .shutdown_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    db.wait_for("running", 4, Duration::from_secs(10)).await;
    let rule = faults::inject(
        &db,
        Fault::update("running", "pending", 1290, Duration::from_millis(1500)),
    )
    .await;
    let started = Instant::now();
    let report = handle.shutdown().await;
    eprintln!(
        "shutdown with releases refused {} times took {:?}: {report:?}",
        faults::fired(&db, rule).await,
        started.elapsed()
    );
    assert!(faults::fired(&db, rule).await > 0);
    assert_eq!(report.released, 4, "{report:?}");
    assert_eq!(db.count("running").await, 0);
    assert_eq!(db.count("pending").await, 4);
    db.drop_db().await;
}

/// A write of an earlier claim, retried after a lost reply, meets a newer claim of the
/// same job by the same process (the attempt was given back in between, so `attempts` is
/// the same again): the claim token tells them apart.
#[actix_rt::test]
async fn a_late_write_of_an_old_claim_never_touches_a_newer_claim() {
    let db = TestDb::new("once_aba").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(Record { tag: "x".into() }).await.unwrap();
    let store = Store::new(db.pool.clone());
    let mut conn = session(&db).await;
    let old = claim_and_complete(&mut conn, "default", 1, "w", &[])
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(
        store.release_jobs(&[(id, old.token)], "w").await.unwrap(),
        1
    );
    let new = claim_and_complete(&mut conn, "default", 1, "w", &[])
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(
        (new.id, new.attempt),
        (old.id, old.attempt),
        "same job, same attempt"
    );
    assert_ne!(new.token, old.token);
    // The retried release of the old claim matches nothing; the new claim still runs.
    assert_eq!(
        store.release_jobs(&[(id, old.token)], "w").await.unwrap(),
        0
    );
    assert!(store
        .mark_completed(&[(id, old.token)])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.job(id).await.0, "running");
    assert_eq!(
        store.mark_completed(&[(id, new.token)]).await.unwrap(),
        vec![id]
    );
    drop(conn);
    db.drop_db().await;
}

/// Claims of a process held as `w`, made `age` ago.
async fn claim_aged(db: &TestDb, worker: &str, n: usize, age_secs: u32) -> Vec<(u64, u64)> {
    let mut conn = session(db).await;
    let jobs = claim_and_complete(&mut conn, "default", n, worker, &[])
        .await
        .unwrap()
        .jobs;
    db.exec(&format!(
        "UPDATE jobs SET reserved_at = reserved_at - INTERVAL {age_secs} SECOND \
         WHERE reserved_by = '{worker}'"
    ))
    .await;
    jobs.iter().map(|j| (j.id, j.token)).collect()
}

async fn worker_row(db: &TestDb, id: &str, beat_secs_ago: u32, stale_secs: Option<u32>) {
    let stale = stale_secs.map_or("NULL".to_owned(), |s| {
        (u64::from(s) * 1_000_000).to_string()
    });
    db.exec(&format!(
        "INSERT INTO lightjobs_workers (id, host, pid, queues, started_at, heartbeat_at, \
         stale_after_us) VALUES ('{id}', 'h', 1, '[]', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR, \
         UTC_TIMESTAMP(6) - INTERVAL {beat_secs_ago} SECOND, {stale})"
    ))
    .await;
}

/// The rescue of a holder judged dead is guarded by what the judgement saw (the rescuer's
/// judging itself, by beats seen standing still, is unit-tested in `maintenance::rescuer`):
/// a holder that beat again meanwhile keeps its jobs, a holder judged for having no row
/// keeps them once it has one, a job on its last attempt ends `failed`, and a run that
/// finished after its process was judged dead still counts when nobody claimed it since.
#[actix_rt::test]
async fn the_rescue_is_guarded_by_what_the_judgement_saw() {
    let db = TestDb::new("once_rescue_rules").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many((0..4).map(|i| Record {
            tag: format!("{i}"),
        }))
        .await
        .unwrap();
    // The second job of each holder is on its last attempt.
    db.exec(&format!(
        "UPDATE jobs SET max_attempts = 1 WHERE id IN ({}, {})",
        ids[1], ids[3]
    ))
    .await;
    let store = Store::new(db.pool.clone());
    let beat_of = |id: &str| {
        format!(
            "SELECT DATE_FORMAT(heartbeat_at, '%Y%m%d%H%i%s%f') FROM lightjobs_workers \
             WHERE id = '{id}'"
        )
    };
    worker_row(&db, "slow", 5, Some(10)).await;
    let slow = claim_aged(&db, "slow", 2, 60).await;
    let seen: String = db.scalar(&beat_of("slow")).await;
    // It beats after the judgement read its heartbeat: the rescue finds it alive.
    db.exec("UPDATE lightjobs_workers SET heartbeat_at = UTC_TIMESTAMP(6) WHERE id = 'slow'")
        .await;
    assert_eq!(
        store
            .rescue_holder(Some("slow"), Some(&seen), "", 100)
            .await
            .unwrap(),
        (0, 0),
        "a holder that beat again keeps its jobs"
    );
    for (id, _) in &slow {
        assert_eq!(db.job(*id).await.0, "running");
    }
    let now: String = db.scalar(&beat_of("slow")).await;
    assert_eq!(
        store
            .rescue_holder(Some("slow"), Some(&now), "", 100)
            .await
            .unwrap(),
        (1, 1),
        "its two jobs; the one on its last attempt fails"
    );
    // A holder judged for having no row, which registers meanwhile.
    let gone = claim_aged(&db, "gone", 2, 60).await;
    worker_row(&db, "gone", 0, None).await;
    assert_eq!(
        store
            .rescue_holder(Some("gone"), None, "", 100)
            .await
            .unwrap(),
        (0, 0)
    );
    db.exec("DELETE FROM lightjobs_workers WHERE id = 'gone'")
        .await;
    assert_eq!(
        store
            .rescue_holder(Some("gone"), None, "", 100)
            .await
            .unwrap(),
        (1, 1)
    );
    assert_eq!(
        store
            .rescue_holder(Some("gone"), None, "", 100)
            .await
            .unwrap(),
        (0, 0)
    );
    // The dead holder's runs finish after all (it had stalled): the one rescued to
    // `failed` on its last attempt, not claimed since, records its success; the one
    // queued again and claimed by another process does not.
    let claimed_again = claim_aged(&db, "other", 2, 0).await;
    assert!(
        claimed_again.iter().any(|c| c.0 == gone[0].0),
        "the rescued jobs are claimed again"
    );
    assert!(store.mark_completed(&[gone[0]]).await.unwrap().is_empty());
    assert_eq!(db.job(gone[0].0).await.0, "running");
    assert_eq!(db.job(gone[1].0).await.0, "failed");
    assert_eq!(
        store.mark_completed(&[gone[1]]).await.unwrap(),
        vec![gone[1].0]
    );
    assert_eq!(db.job(gone[1].0).await.0, "processed");
    db.drop_db().await;
}

/// A value written into `lightjobs_queues` by hand that does not decode as the workers
/// expect must not stop the heartbeat (it did: the maintenance loops ran in one `join!`
/// with no supervision, so a panic in one took the heartbeat down with it).
#[actix_rt::test]
async fn a_bad_queue_setting_does_not_stop_the_heartbeat() {
    let db = TestDb::new("once_bad_setting").await;
    let queue = db.migrated().await;
    db.exec(
        "INSERT INTO lightjobs_queues (queue, paused, updated_at) \
         VALUES ('other', 2, UTC_TIMESTAMP(6))",
    )
    .await;
    let id = queue
        .dispatch(Block {
            millis: 1500,
            cooperative: false,
        })
        .await
        .unwrap();
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log)
        .heartbeat(Duration::from_millis(100), Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let age_us: i64 = db
        .scalar(
            "SELECT TIMESTAMPDIFF(MICROSECOND, heartbeat_at, UTC_TIMESTAMP(6)) \
             FROM lightjobs_workers",
        )
        .await;
    assert!(age_us < 400_000, "heartbeat {age_us} µs old");
    db.wait_for("processed", 1, Duration::from_secs(10)).await;
    assert_eq!(
        queue.paused_queues().await.unwrap(),
        vec!["other".to_owned()]
    );
    handle.shutdown().await;
    let runs: u64 = db
        .scalar(&format!("SELECT COUNT(*) FROM runs WHERE job_id = {id}"))
        .await;
    assert_eq!(runs, 1, "never rescued while it ran");
    db.drop_db().await;
}

/// A success that is not written (the job was taken over) is neither counted nor shown
/// as processed: `process:jobs` prints its ✔ line from the same events.
#[actix_rt::test]
async fn only_written_results_are_reported() {
    let db = TestDb::new("once_report").await;
    let queue = db.migrated().await;
    let stolen = queue.dispatch(Stolen).await.unwrap();
    let fine = queue.dispatch(Record { tag: "ok".into() }).await.unwrap();
    let events: Arc<Mutex<Vec<JobEvent>>> = Arc::default();
    let seen = events.clone();
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log)
        .on_event(move |e| seen.lock().unwrap().push(e.clone()))
        .stop_when_empty(true)
        .start()
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .unwrap();
    assert_eq!((report.processed, report.lost), (1, 1), "{report:?}");
    let processed: Vec<u64> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.outcome == JobOutcome::Processed)
        .map(|e| e.id)
        .collect();
    assert_eq!(processed, vec![fine], "no ✔ for {stolen}");
    db.drop_db().await;
}

/// A pause through the queue applies to this process's workers at once: a dispatch right
/// after it is not handed to a local worker.
#[actix_rt::test]
async fn a_pause_applies_to_local_workers_at_once() {
    let db = TestDb::new("once_pause_local").await;
    let queue = db.migrated().await;
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log).start().await.unwrap();
    // Let the workers finish their first (empty) claim, so handoffs are allowed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    queue.pause("default").await.unwrap();
    let id = queue.dispatch(Audited { millis: 0 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(db.job(id).await.0, "pending", "a paused queue's job ran");
    queue.set_global_limit("default", Some(1)).await.unwrap();
    queue.resume("default").await.unwrap();
    db.wait_for("processed", 1, Duration::from_secs(10)).await;
    // Limited across processes: not handed off either (the limit is counted in claims).
    let limited = queue.dispatch(Audited { millis: 0 }).await.unwrap();
    let handed: bool = db
        .scalar(&format!(
            "SELECT COALESCE(reserved_at = created_at, 0) FROM jobs WHERE id = {limited}"
        ))
        .await;
    assert!(!handed, "a limited queue's job was handed off");
    db.wait_for("processed", 2, Duration::from_secs(10)).await;
    handle.shutdown().await;
    assert_eq!(audit_log.runs().len(), 2);
    db.drop_db().await;
}

/// Unique keys: a finished holder whose period has not passed is not pruned (that freed the
/// key early), and a racing dispatch that loses a lock race gets the job, not an error.
#[actix_rt::test]
async fn unique_keys_outlive_pruning_and_survive_lock_races() {
    let db = TestDb::new("once_unique").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    let id = queue
        .dispatch(Record { tag: "u".into() })
        .unique_for("weekly", Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    db.exec(
        "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP(6) - INTERVAL 2 DAY",
    )
    .await;
    let pruned = queue
        .prune(Duration::from_secs(3600), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(pruned, 0, "the key's holder is kept while its period runs");
    let again = queue
        .dispatch(Record { tag: "u".into() })
        .unique_for("weekly", Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(again, id, "the key is still taken");

    // The INSERT of a unique dispatch meets a deadlock for a moment: retried, not failed.
    let rule = faults::inject(
        &db,
        Fault {
            on: faults::On::Insert { status: "pending" },
            errno: 1213,
            probability: 1.0,
            window: Duration::from_millis(300),
        },
    )
    .await;
    let other = queue
        .dispatch(Record { tag: "v".into() })
        .unique("other-key")
        .await
        .expect("a unique dispatch that lost a lock race is retried");
    assert!(faults::fired(&db, rule).await > 0);
    assert_ne!(other, id);
    db.drop_db().await;
}

/// Two recurring registrations of one job type whose ticks coincide are two jobs per tick.
#[actix_rt::test]
async fn two_recurring_registrations_of_one_job_both_run() {
    let db = TestDb::new("once_recurring_twice").await;
    let queue = db.migrated().await;
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log)
        .recurring("* * * * * *", Record { tag: "a".into() })
        .recurring("* * * * * *", Record { tag: "b".into() })
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    handle.shutdown().await;
    let a: u64 = db.scalar("SELECT COUNT(*) FROM runs WHERE tag = 'a'").await;
    let b: u64 = db.scalar("SELECT COUNT(*) FROM runs WHERE tag = 'b'").await;
    assert!(a >= 2 && b >= 2, "runs: a {a}, b {b}");
    assert!((a as i64 - b as i64).abs() <= 1, "runs: a {a}, b {b}");
    // The very same registration twice is refused: it would run once per tick anyway.
    let refused = Workers::new(queue.clone())
        .recurring("* * * * * *", Record { tag: "a".into() })
        .recurring("* * * * * *", Record { tag: "a".into() })
        .start()
        .await
        .expect_err("a duplicate registration is refused");
    assert!(
        refused.to_string().contains("registered twice"),
        "{refused}"
    );
    db.drop_db().await;
}

/// The reply to a claim's COMMIT is lost on the wire after the server committed: the
/// claims are in doubt, so they are released by their token (not left `running` under a
/// live worker that never runs them) and each job then runs once.
#[actix_rt::test]
async fn a_claim_whose_commit_reply_is_lost_is_released_and_runs_once() {
    let db = TestDb::new("once_commit_lost").await;
    db.migrated().await;
    let proxy = common::proxy::FaultProxy::start(upstream(&db.url));
    let queue = JobQueue::connect(&proxy.rewrite_url(&db.url)).unwrap();
    queue
        .dispatch_many((0..5).map(|_| Audited { millis: 0 }))
        .await
        .unwrap();
    // Only the claim's second round trip ends with "; COMMIT".
    proxy.drop_reply_after("; COMMIT", 1);
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log).start().await.unwrap();
    settle(&db, Duration::from_secs(30)).await;
    let report = handle.shutdown().await;
    assert_eq!(proxy.fired(), 1, "the reply was dropped once");
    let verdict = audit(&db.url, &audit_log.runs(), &[], |_| false).await;
    verdict.assert_clean("claim COMMIT reply lost");
    assert_eq!(verdict.runs, 5);
    assert_eq!(report.processed, 5, "{report:?}");
    db.drop_db().await;
}

/// `n` dispatches made at once, one statement's reply dropped by `proxy` (armed by the
/// caller); none may hang.
async fn dispatch_through_a_lost_reply(
    queue: &JobQueue,
    proxy: &common::proxy::FaultProxy,
    n: usize,
) -> Vec<lightjobs::Result<u64>> {
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(
            (0..n).map(|_| queue.dispatch(Audited { millis: 0 }).into_future()),
        ),
    )
    .await
    .expect("no caller hangs on a lost reply");
    assert_eq!(proxy.fired(), 1, "the reply was dropped once");
    results
}

/// A migrated database reached through a fault proxy, and this process's workers (8
/// slots) waiting between polls. A long poll: the fetch loop holds the free slots while it
/// claims, so dispatches are handed over only while it waits.
async fn idle_workers_behind_a_proxy(
    db: &TestDb,
) -> (
    common::proxy::FaultProxy,
    JobQueue,
    Audit,
    lightjobs::WorkerHandle,
) {
    db.migrated().await;
    let proxy = common::proxy::FaultProxy::start(upstream(&db.url));
    let queue = JobQueue::connect(&proxy.rewrite_url(&db.url)).unwrap();
    let audit_log = Audit::default();
    let handle = workers(db, &queue, &audit_log)
        .poll_interval(Duration::from_secs(10), Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    (proxy, queue, audit_log, handle)
}

/// The reply to a local handoff's INSERT is lost after the row was committed `running`
/// under this process's worker: the dispatch reports an error, the row is released by its
/// token in the background, and the job runs once.
#[actix_rt::test]
async fn a_handoff_whose_insert_reply_is_lost_is_released_and_runs_once() {
    let db = TestDb::new("once_handoff_lost").await;
    let (proxy, queue, audit_log, handle) = idle_workers_behind_a_proxy(&db).await;
    // Only the handoff's INSERT names claim_token.
    proxy.drop_reply_after("claim_token) VALUES", 1);
    let dispatched = queue.dispatch(Audited { millis: 0 }).await;
    assert!(
        dispatched.is_err(),
        "the lost reply is reported: {dispatched:?}"
    );
    assert_eq!(proxy.fired(), 1);
    db.wait_for("processed", 1, Duration::from_secs(30)).await;
    handle.shutdown().await;
    let verdict = audit(&db.url, &audit_log.runs(), &[], |_| false).await;
    verdict.assert_clean("handoff INSERT reply lost");
    assert_eq!((verdict.jobs, verdict.runs), (1, 1));
    db.drop_db().await;
}

/// The reply to a combined INSERT holding rows handed to this process's idle workers is
/// lost after the server committed it: each of its callers gets an error, the handed rows
/// (`running` under a live worker that never got them) are released by their tokens, and
/// every row the statement wrote runs once; nothing is left `running`.
#[actix_rt::test]
async fn a_combined_insert_with_handoffs_whose_reply_is_lost_releases_them_and_runs_each_once() {
    const CALLERS: usize = 12;
    let db = TestDb::new("once_combined_handed_lost").await;
    let (proxy, queue, audit_log, handle) = idle_workers_behind_a_proxy(&db).await;
    // Only INSERTs of rows handed over name claim_token.
    proxy.drop_reply_after("claim_token) VALUES", 1);
    let results = dispatch_through_a_lost_reply(&queue, &proxy, CALLERS).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!(failed > 0, "the callers of the lost statement get an error");
    // The released rows go back to `pending` and the fetch loop, woken by the release,
    // runs them: none stays `running`.
    settle(&db, Duration::from_secs(60)).await;
    handle.shutdown().await;
    let rows: u64 = db.scalar("SELECT COUNT(*) FROM jobs").await;
    let verdict = audit(&db.url, &audit_log.runs(), &[], |_| false).await;
    verdict.assert_clean("combined INSERT with handoffs, reply lost");
    assert_eq!(verdict.runs, rows, "every written row ran once");
    eprintln!(
        "combined INSERT with handoffs, reply lost: {failed} of {CALLERS} callers got an error, \
         {rows} rows written, {rows} runs"
    );
    db.drop_db().await;
}

/// The reply to a combined INSERT (dispatches made at the same moment share one statement)
/// is lost after the server committed it: every caller in that statement gets an error,
/// none hangs, the connection thread goes on (the next dispatch works), and each row the
/// statement wrote runs once like any other job.
#[actix_rt::test]
async fn a_combined_insert_whose_reply_is_lost_fails_its_callers_and_its_rows_run_once() {
    const CALLERS: usize = 12;
    let db = TestDb::new("once_combined_lost").await;
    db.migrated().await;
    let proxy = common::proxy::FaultProxy::start(upstream(&db.url));
    let queue = JobQueue::connect(&proxy.rewrite_url(&db.url)).unwrap();
    // A first dispatch opens the connection, so the dispatches below arrive together.
    let first = queue.dispatch(Audited { millis: 0 }).await.unwrap();
    // Only the combiner's and dispatch_many's INSERTs end with RETURNING (MariaDB).
    proxy.drop_reply_after("RETURNING id", 1);
    let results = dispatch_through_a_lost_reply(&queue, &proxy, CALLERS).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        ok < CALLERS,
        "the callers of the lost statement get an error: {results:?}"
    );
    let after = tokio::time::timeout(
        Duration::from_secs(30),
        queue.dispatch(Audited { millis: 0 }),
    )
    .await
    .expect("the connection thread goes on")
    .expect("the next dispatch works");
    assert!(after > first);
    let rows: u64 = db.scalar("SELECT COUNT(*) FROM jobs").await;
    assert!(
        rows >= ok as u64 + 2 && rows <= CALLERS as u64 + 2,
        "{rows} rows for {ok} dispatches reported done, of {CALLERS}"
    );
    eprintln!(
        "combined INSERT reply lost: {} of {CALLERS} callers got an error, {} of their rows were written",
        CALLERS - ok,
        rows - ok as u64 - 2
    );

    let direct = JobQueue::connect(&db.url).unwrap();
    let audit_log = Audit::default();
    let handle = workers(&db, &direct, &audit_log).start().await.unwrap();
    settle(&db, Duration::from_secs(30)).await;
    handle.shutdown().await;
    let verdict = audit(&db.url, &audit_log.runs(), &[], |_| false).await;
    verdict.assert_clean("combined INSERT reply lost");
    assert_eq!(verdict.runs, rows, "every written row ran once");
    db.drop_db().await;
}

/// Dispatches wait for the combined statement in flight, so that batches grow, but not for
/// one that has stalled: with the server's reply to one INSERT held back for 3 s, the
/// dispatches made meanwhile go in statements of their own and return, and the stalled one
/// gets its id when its reply comes.
#[actix_rt::test]
async fn a_stalled_combined_insert_holds_up_no_other_dispatch() {
    const STALL: Duration = Duration::from_secs(3);
    let db = TestDb::new("once_combined_stalled").await;
    db.migrated().await;
    let proxy = common::proxy::FaultProxy::start(upstream(&db.url));
    let queue = JobQueue::connect(&proxy.rewrite_url(&db.url)).unwrap();
    let first = queue.dispatch(Audited { millis: 0 }).await.unwrap();
    proxy.stall("RETURNING id", STALL, 1);
    let started = Instant::now();
    let stalled = {
        let queue = queue.clone();
        actix_rt::spawn(async move { queue.dispatch(Audited { millis: 0 }).await })
    };
    while proxy.fired() == 0 {
        assert!(started.elapsed() < STALL, "the stall never fired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut others = Vec::new();
    for _ in 0..10 {
        others.push(queue.dispatch(Audited { millis: 0 }).await.unwrap());
    }
    let others_took = started.elapsed();
    assert!(
        !stalled.is_finished() && others_took < STALL,
        "10 dispatches waited {others_took:?} behind the stalled statement"
    );
    let stalled = stalled
        .await
        .unwrap()
        .expect("the stalled dispatch gets its id");
    assert!(started.elapsed() >= STALL);
    let mut ids = others.clone();
    ids.extend([first, stalled]);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 12, "every dispatch has an id of its own");
    let rows: u64 = db.scalar("SELECT COUNT(*) FROM jobs").await;
    assert_eq!(rows, 12);
    eprintln!("stalled combined INSERT: 10 dispatches beside it took {others_took:?}");
    db.drop_db().await;
}

/// The releases of the runs a shutdown cut short are still refused at its deadline: the
/// process stops anyway, leaving those claims in its worker row (marked stopped), and the
/// rescuer of another process takes them at once, not after a staleness of silence, and
/// gives their attempt back: they were cut, not failed, so single-attempt jobs among them
/// are `pending` again, never `failed`.
#[actix_rt::test]
async fn releases_left_at_the_shutdown_deadline_go_to_the_rescuer_with_their_attempt() {
    let db = TestDb::new("once_left_behind").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    for _ in 0..3 {
        queue
            .dispatch(Block {
                millis: 60_000,
                cooperative: false,
            })
            .max_attempts(1)
            .await
            .unwrap();
    }
    let audit_log = Audit::default();
    let handle = workers(&db, &queue, &audit_log)
        .heartbeat(Duration::from_millis(100), Duration::from_secs(30))
        .shutdown_timeout(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    db.wait_for("running", 3, Duration::from_secs(10)).await;
    let rule = faults::inject(
        &db,
        Fault::update("running", "pending", 1290, Duration::from_secs(120)),
    )
    .await;
    let report = handle.shutdown().await;
    assert_eq!((report.released, report.unwritten), (0, 3), "{report:?}");
    assert!(faults::fired(&db, rule).await > 1, "tried more than once");
    let left: String = db
        .scalar("SELECT left_behind FROM lightjobs_workers WHERE stopped_at IS NOT NULL")
        .await;
    assert_eq!(
        left.split(',').count(),
        3,
        "the stopped process's claims: {left}"
    );
    assert_eq!(db.count("running").await, 3, "left to the rescuer");

    faults::clear(&db).await;
    // Another process, whose own staleness is long: its rescuer takes the stopped
    // process's jobs at once.
    let rescuer = Workers::new(queue.clone())
        .register::<Audited>()
        .data(audit_log.clone())
        .heartbeat(Duration::from_millis(100), Duration::from_secs(30))
        .queues(["elsewhere"])
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    db.wait_for("pending", 3, Duration::from_secs(10)).await;
    eprintln!(
        "left at the shutdown deadline: rescued {:?} after the next process started",
        started.elapsed()
    );
    rescuer.shutdown().await;
    let attempts: u64 = db.scalar("SELECT SUM(attempts) FROM jobs").await;
    assert_eq!(attempts, 0, "every cut run got its attempt back");
    assert_eq!(db.count("failed").await, 0);
    db.drop_db().await;
}

/// The server refuses a local handoff's INSERT (read-only, as in a failover): nothing was
/// written, so nothing is in doubt; the dispatch reports the error and the worker's slot is
/// free again for the next dispatch, which is handed over and runs.
#[actix_rt::test]
async fn a_refused_handoff_insert_reports_the_error_and_frees_the_slot() {
    let db = TestDb::new("once_handoff_refused").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    let audit_log = Audit::default();
    // A long poll: the fetch loop holds the free slot while it claims, so a dispatch is
    // handed over only while it waits between polls.
    let handle = workers(&db, &queue, &audit_log)
        .concurrency(1)
        .poll_interval(Duration::from_secs(10), Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rule = faults::inject(
        &db,
        Fault {
            on: faults::On::Insert { status: "running" },
            errno: 1290,
            probability: 1.0,
            window: Duration::from_secs(60),
        },
    )
    .await;
    let refused = queue.dispatch(Audited { millis: 0 }).await;
    let error = refused.expect_err("the refusal is reported");
    assert!(error.to_string().contains("1290"), "{error}");
    assert_eq!(faults::fired(&db, rule).await, 1);
    let rows: u64 = db.scalar("SELECT COUNT(*) FROM jobs").await;
    assert_eq!(rows, 0, "nothing was written");
    faults::clear(&db).await;
    let id = queue.dispatch(Audited { millis: 0 }).await.unwrap();
    db.wait_for("processed", 1, Duration::from_secs(10)).await;
    let handed: bool = db
        .scalar(&format!(
            "SELECT COALESCE(reserved_at = created_at, 0) FROM jobs WHERE id = {id}"
        ))
        .await;
    assert!(handed, "the only slot was free again for a handoff");
    handle.shutdown().await;
    assert_eq!(audit_log.runs().len(), 1);
    db.drop_db().await;
}
