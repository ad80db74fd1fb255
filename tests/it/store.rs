//! The claim protocol on the real server: the plan uses the claim index exactly, and many
//! concurrent claimers never share a job and never come back empty while jobs are free.

use crate::common;

use std::collections::HashSet;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{Record, TestDb};
use lightjobs::__private::{claim_sql, claim_sql_for, Store};
use mysql_async::prelude::*;

async fn backlog(db: &TestDb, queue: &lightjobs::JobQueue, n: usize, on: &str) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let jobs = chunk.iter().map(|i| Record {
            tag: format!("{on}-{i}"),
        });
        let ids = if on == "default" {
            queue.dispatch_many(jobs).await.unwrap()
        } else {
            // dispatch_many uses Job::QUEUE; other queues go through the builder.
            let mut ids = vec![];
            for j in jobs {
                ids.push(queue.dispatch(j).on_queue(on).await.unwrap());
            }
            ids
        };
        assert_eq!(ids.len(), chunk.len());
    }
    let _ = db;
}

#[actix_rt::test]
async fn claim_plan_uses_the_claim_index_without_filesort() {
    let db = TestDb::new("store_explain").await;
    let queue = db.migrated().await;
    backlog(&db, &queue, 3000, "default").await;
    backlog(&db, &queue, 50, "other").await;
    // Some history in other statuses, as in a live table.
    db.exec("UPDATE jobs SET status = 'processed' WHERE id % 3 = 0")
        .await;
    db.exec("UPDATE jobs SET status = 'failed' WHERE id % 7 = 0")
        .await;
    db.exec("ANALYZE TABLE jobs").await;

    let mut conn = db.pool.get_conn().await.unwrap();
    // A worker that runs only some job types filters on `name` on top of the same plan.
    for sql in [
        claim_sql("default", 10),
        claim_sql_for("default", 10, &["record", "send_mail"]),
    ] {
        let plan: Vec<mysql_async::Row> = conn.query(format!("EXPLAIN {sql}")).await.unwrap();
        assert_eq!(plan.len(), 1, "one table, one access path");
        let row = &plan[0];
        let get = |col: &str| -> String {
            row.get_opt::<Option<String>, _>(col)
                .and_then(|r| r.ok())
                .flatten()
                .unwrap_or_default()
        };
        let (kind, key, extra, rows) = (get("type"), get("key"), get("Extra"), get("rows"));
        eprintln!("claim plan: type={kind} key={key} rows={rows} extra={extra}");
        assert_eq!(key, "jobs_claim");
        assert_ne!(kind, "ALL", "full table scan");
        assert_ne!(kind, "index", "full index scan");
        assert!(!extra.contains("filesort"), "claim sorts: {extra}");
        assert!(
            !extra.contains("temporary"),
            "claim uses a temporary table: {extra}"
        );
    }
    drop(conn);
    db.drop_db().await;
}

#[derive(Default)]
struct Tally {
    claims: u64,
    empty_with_backlog: u64,
    empty_at_tail: u64,
    errors: u64,
    ids: Vec<u64>,
}

#[actix_rt::test]
async fn sixteen_concurrent_claimers_never_share_a_job() {
    const JOBS: usize = 6000;
    const CLAIMERS: usize = 16;
    const BATCH: usize = 10;
    let db = TestDb::new("store_concurrent").await;
    let queue = db.migrated().await;
    backlog(&db, &queue, JOBS, "default").await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let tasks = (0..CLAIMERS).map(|c| {
        let tally = tally.clone();
        let url = db.url.clone();
        actix_rt::spawn(async move {
            let pool = mysql_async::Pool::new(url.as_str());
            let mut conn = pool.get_conn().await.unwrap();
            // The store's pool sessions use READ COMMITTED; this one must too.
            conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await
                .unwrap();
            drop(conn);
            let store = Store::new(pool.clone());
            let worker = format!("claimer-{c}");
            loop {
                match store.claim_available("default", BATCH, &worker).await {
                    Ok(jobs) if jobs.is_empty() => {
                        let mut conn = pool.get_conn().await.unwrap();
                        let left: u64 = conn
                            .query_first("SELECT COUNT(*) FROM jobs WHERE status = 'pending'")
                            .await
                            .unwrap()
                            .unwrap();
                        let mut t = tally.lock().unwrap();
                        t.claims += 1;
                        if left == 0 {
                            break;
                        }
                        // Rows locked by other claimers' open transactions are skipped
                        // by design; that can only happen at the tail of the backlog.
                        if left as usize > CLAIMERS * BATCH {
                            t.empty_with_backlog += 1;
                        } else {
                            t.empty_at_tail += 1;
                        }
                    }
                    Ok(jobs) => {
                        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
                        let held: Vec<(u64, u64)> = jobs.iter().map(|j| (j.id, j.token)).collect();
                        assert!(jobs.iter().all(|j| j.attempt == 1));
                        let done = store.mark_completed(&held).await.unwrap();
                        assert_eq!(done, ids, "guarded completion of own claim");
                        let mut t = tally.lock().unwrap();
                        t.claims += 1;
                        t.ids.extend(ids);
                    }
                    Err(e) => {
                        eprintln!("claimer {c}: {e}");
                        tally.lock().unwrap().errors += 1;
                    }
                }
            }
            pool.disconnect().await.unwrap();
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    let elapsed = started.elapsed();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let unique: HashSet<u64> = t.ids.iter().copied().collect();
    eprintln!(
        "{CLAIMERS} claimers x batch {BATCH}: {} jobs in {:.2}s ({:.0} jobs/s), {} claims, \
         {} empty at the tail, {} empty with backlog, {} errors",
        t.ids.len(),
        elapsed.as_secs_f64(),
        t.ids.len() as f64 / elapsed.as_secs_f64(),
        t.claims,
        t.empty_at_tail,
        t.empty_with_backlog,
        t.errors
    );
    assert_eq!(unique.len(), t.ids.len(), "a job was claimed twice");
    assert_eq!(t.ids.len(), JOBS, "every job claimed");
    assert_eq!(
        t.empty_with_backlog, 0,
        "empty claims while ready jobs were free"
    );
    assert_eq!(db.count("processed").await, JOBS as u64);
    let attempts: u64 = db.scalar("SELECT MAX(attempts) FROM jobs").await;
    assert_eq!(attempts, 1);
    db.drop_db().await;
}

#[actix_rt::test]
async fn completion_is_guarded_by_the_claim() {
    let db = TestDb::new("store_guard").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(Record { tag: "g".into() }).await.unwrap();
    let store = Store::new(db.pool.clone());
    let jobs = store
        .claim_available("default", 5, "worker-a")
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let first = jobs[0].token;
    // Another claim now holds it (as after a rescue and a new claim).
    db.exec(&format!(
        "UPDATE jobs SET reserved_by = 'worker-b', claim_token = 7 WHERE id = {id}"
    ))
    .await;
    assert!(store
        .mark_completed(&[(id, first)])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.job(id).await.0, "running");
    assert_eq!(store.mark_completed(&[(id, 7)]).await.unwrap(), vec![id]);
    assert_eq!(db.job(id).await.0, "processed");
    // Written again (a retry after a lost reply): reported as written, nothing changes.
    assert_eq!(store.mark_completed(&[(id, 7)]).await.unwrap(), vec![id]);
    db.drop_db().await;
}

/// Delayed jobs wait as `scheduled`, outside the claim's index range: a claim reads the rows
/// it returns, not the delayed backlog (a range condition on scheduled_at behind priority
/// in the index could not stop the scan, and every scanned row was locked).
#[actix_rt::test]
async fn a_claim_does_not_read_the_delayed_backlog() {
    let db = TestDb::new("store_delayed").await;
    let queue = db.migrated().await;
    // Delayed through the API, as retries and delayed dispatches are.
    for chunk in 0..40 {
        let batch = (0..50).map(|i| {
            queue
                .dispatch(Record {
                    tag: format!("later-{chunk}-{i}"),
                })
                .delay(std::time::Duration::from_secs(3600))
                .into_future()
        });
        for id in futures::future::join_all(batch).await {
            id.unwrap();
        }
    }
    for i in 0..3 {
        queue
            .dispatch(Record {
                tag: format!("now-{i}"),
            })
            .priority(5)
            .await
            .unwrap();
    }
    db.exec("ANALYZE TABLE jobs").await;
    let mut conn = db.pool.get_conn().await.unwrap();
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .unwrap();
    let before = read_next(&mut conn).await;
    let jobs = lightjobs::__private::claim_and_complete(&mut conn, "default", 10, "w", &[])
        .await
        .unwrap()
        .jobs;
    let read = read_next(&mut conn).await - before;
    eprintln!("claim over 2000 delayed + 3 ready jobs read {read} index entries");
    assert_eq!(jobs.len(), 3);
    assert!(read <= 11, "the claim read {read} index entries");
    drop(conn);
    db.drop_db().await;
}

async fn read_next(conn: &mut mysql_async::Conn) -> u64 {
    let row: Option<(String, u64)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Handler_read_next'")
        .await
        .unwrap();
    row.unwrap().1
}

/// The leases that let one process at a time migrate, rescue or prune: a guarded row, so
/// they hold across the nodes of a cluster (where `GET_LOCK` is per node).
#[actix_rt::test]
async fn a_lease_has_one_holder_until_given_back_or_expired() {
    use lightjobs::__private::{acquire_lease, release_lease, CREATE_LEASES};
    let db = TestDb::new("store_lease").await;
    let mut a = db.pool.get_conn().await.unwrap();
    let mut b = db.pool.get_conn().await.unwrap();
    a.query_drop(CREATE_LEASES).await.unwrap();
    let long = std::time::Duration::from_secs(60);
    assert!(acquire_lease(&mut a, "rescuer", "a", long).await.unwrap());
    assert!(!acquire_lease(&mut b, "rescuer", "b", long).await.unwrap());
    assert!(
        acquire_lease(&mut a, "rescuer", "a", long).await.unwrap(),
        "renewed"
    );
    assert!(
        acquire_lease(&mut b, "pruner", "b", long).await.unwrap(),
        "one per name"
    );
    release_lease(&mut b, "rescuer", "b").await.unwrap();
    assert!(
        !acquire_lease(&mut b, "rescuer", "b", long).await.unwrap(),
        "not b's to give"
    );
    release_lease(&mut a, "rescuer", "a").await.unwrap();
    assert!(acquire_lease(&mut b, "rescuer", "b", long).await.unwrap());
    // An expired lease (its holder died) can be taken.
    let short = std::time::Duration::from_millis(100);
    assert!(acquire_lease(&mut a, "migrate", "a", short).await.unwrap());
    assert!(!acquire_lease(&mut b, "migrate", "b", long).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(acquire_lease(&mut b, "migrate", "b", long).await.unwrap());
    drop((a, b));
    db.drop_db().await;
}
