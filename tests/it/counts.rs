//! Counts and lists at a cost of their answer, not of the retained rows: the plans are
//! checked with EXPLAIN, the rollup of finished jobs per minute is checked against the rows
//! it counted (and survives their pruning), and keyset pages cover a status exactly once.

use crate::common;

use std::collections::{BTreeMap, HashSet};

use common::{records, TestDb};
use lightjobs::__private::{counting_sql, list_sql, Store};
use mysql_async::prelude::*;

/// (type, key, extra) of the one table access of `sql`'s plan, after checking there is
/// one and that it reads an index range, not the table or a whole index.
async fn plan(conn: &mut mysql_async::Conn, sql: &str) -> (String, String, String) {
    let rows: Vec<mysql_async::Row> = conn.query(format!("EXPLAIN {sql}")).await.unwrap();
    let jobs: Vec<_> = rows
        .iter()
        .filter(|r| r.get::<Option<String>, _>("table").flatten().as_deref() == Some("jobs"))
        .collect();
    assert_eq!(jobs.len(), 1, "one access of jobs in {sql}");
    let get = |col: &str| -> String {
        jobs[0]
            .get::<Option<String>, _>(col)
            .flatten()
            .unwrap_or_default()
    };
    let (kind, key, extra) = (get("type"), get("key"), get("Extra"));
    eprintln!(
        "plan: type={kind} key={key} rows={} extra={extra}\n  {sql}",
        get("rows")
    );
    assert_ne!(kind, "ALL", "full table scan: {sql}");
    assert!(!key.is_empty(), "no index: {sql}");
    (kind, key, extra)
}

/// A table with history: `n` jobs, most of them finished in the last 33 hours, none
/// within 40 minutes of the day's boundary (so that a minute turning during a test does
/// not move a job across it).
async fn history(db: &TestDb, n: usize) -> lightjobs::JobQueue {
    let queue = db.migrated().await;
    for _ in 0..n / 500 {
        records(&queue, 500).await;
    }
    db.exec(
        "UPDATE jobs SET status = IF(id % 10 = 0, 'failed', 'processed'), \
         finished_at = UTC_TIMESTAMP() - INTERVAL IF(id % 2000 BETWEEN 1400 AND 1480, 1000, \
         id % 2000) MINUTE WHERE id % 50 <> 0",
    )
    .await;
    db.exec("ANALYZE TABLE jobs").await;
    queue
}

#[actix_rt::test]
async fn counts_and_lists_read_index_ranges() {
    let db = TestDb::new("counts_explain").await;
    let _queue = history(&db, 5000).await;
    let mut conn = db.pool.get_conn().await.unwrap();
    let [distinct, one_status, finished, recount] = counting_sql();
    let (_, key, extra) = plan(&mut conn, &distinct).await;
    assert_eq!(key, "jobs_claim");
    assert!(
        extra.contains("Using index for group-by"),
        "the distinct statuses come from a loose index scan, not every entry: {extra}"
    );
    // The grouping of the finished rows sorts them: the rows since the watermark (seconds
    // of work) or the rollup's pass, never the retained table.
    for (sql, index) in [
        (one_status, "jobs_claim"),
        (finished, "jobs_finished"),
        (recount, "jobs_finished"),
    ] {
        let (kind, key, _) = plan(&mut conn, &sql).await;
        assert!(kind == "range" || kind == "ref", "an index range: {sql}");
        assert_eq!(key, index);
    }
    for (status, index) in [
        ("pending", "status"),
        ("failed", "jobs_finished"),
        ("processed", "jobs_finished"),
    ] {
        let sql = list_sql(status)
            .replacen("status = ?", &format!("status = '{status}'"), 1)
            .replacen(
                "(? IS NULL OR queue = ?)",
                "(NULL IS NULL OR queue = NULL)",
                1,
            )
            .replacen("?", "NULL", 6)
            .replacen("LIMIT ?", "LIMIT 50", 1);
        let (_, key, extra) = plan(&mut conn, &sql).await;
        assert_eq!(key, index, "{sql}");
        assert!(!extra.contains("filesort"), "a page is sorted: {extra}");
    }
    drop(conn);
    db.drop_db().await;
}

/// The counts per (queue, status) that `stats` returned.
async fn stats(queue: &lightjobs::JobQueue) -> BTreeMap<(String, String), u64> {
    queue
        .stats()
        .await
        .unwrap()
        .into_iter()
        .map(|c| ((c.queue, c.status), c.count))
        .collect()
}

/// What `stats` should say, straight from the rows: finished ones since the start of the
/// minute a day ago.
async fn expected(db: &TestDb) -> BTreeMap<(String, String), u64> {
    let mut conn = db.pool.get_conn().await.unwrap();
    let rows: Vec<(String, String, u64)> = conn
        .query(
            "SELECT queue, status, COUNT(*) FROM jobs WHERE status NOT IN \
             ('processed', 'failed', 'cancelled') OR finished_at >= '2000-01-01' + INTERVAL \
             (TIMESTAMPDIFF(MINUTE, '2000-01-01', UTC_TIMESTAMP()) - 1440) MINUTE \
             GROUP BY queue, status",
        )
        .await
        .unwrap();
    rows.into_iter().map(|(q, s, n)| ((q, s), n)).collect()
}

#[actix_rt::test]
async fn finished_counts_come_from_the_rollup_and_survive_pruning() {
    let db = TestDb::new("counts_rollup").await;
    let queue = history(&db, 3000).await;
    // Counted straight from the index before any rollup.
    assert_eq!(stats(&queue).await, expected(&db).await);

    let store = Store::new(db.pool.clone());
    let mut passes = 1;
    while !store.roll_up().await.unwrap() {
        passes += 1;
    }
    // An hour a pass, each from three minutes before the last one's end.
    assert!(
        (25..=27).contains(&passes),
        "a day caught up in {passes} passes"
    );
    let before = expected(&db).await;
    assert_eq!(stats(&queue).await, before);
    // Again: a recount replaces its minutes, it does not add to them.
    store.roll_up().await.unwrap();
    assert_eq!(stats(&queue).await, before);
    let rolled: u64 = db
        .scalar(
            "SELECT CAST(SUM(n) AS UNSIGNED) FROM lightjobs_counts WHERE status <> 'watermark' \
             AND minute < '2000-01-01' + INTERVAL \
             (SELECT n FROM lightjobs_counts WHERE status = 'watermark') SECOND",
        )
        .await;
    assert!(
        rolled > 2000,
        "the closed minutes are in the rollup: {rolled}"
    );

    // The rows go (the pruner's work); what finished within the day is still counted.
    db.exec("DELETE FROM jobs WHERE status IN ('processed', 'failed') AND finished_at < UTC_TIMESTAMP() - INTERVAL 10 MINUTE")
        .await;
    assert_eq!(stats(&queue).await, before);

    // New work shows at once, before the rollup reaches its minute.
    let ids = records(&queue, 7).await;
    db.exec(&format!(
        "UPDATE jobs SET status = 'processed', finished_at = UTC_TIMESTAMP() WHERE id >= {}",
        ids[0]
    ))
    .await;
    let now = stats(&queue).await;
    let key = ("default".to_owned(), "processed".to_owned());
    assert_eq!(now[&key], before[&key] + 7);
    db.drop_db().await;
}

#[actix_rt::test]
async fn pages_cover_a_status_once_newest_first() {
    let db = TestDb::new("counts_pages").await;
    let queue = db.migrated().await;
    records(&queue, 230).await;
    // Many jobs share a finish time: the cursor must break ties by id.
    db.exec(
        "UPDATE jobs SET status = 'failed', \
         finished_at = '2026-01-01 00:00:00' + INTERVAL (id % 7) SECOND WHERE id % 2 = 0",
    )
    .await;
    for (status, want) in [("failed", 115), ("pending", 115)] {
        let (mut seen, mut order, mut after) = (HashSet::new(), vec![], None);
        let mut pages = 0;
        loop {
            let page = queue
                .list_page(status, None, 20, after.as_deref())
                .await
                .unwrap();
            pages += 1;
            for job in &page.jobs {
                assert_eq!(job.status, status);
                assert!(seen.insert(job.id), "job {} on two pages", job.id);
                let at = if status == "failed" {
                    job.finished_at.clone().unwrap()
                } else {
                    job.scheduled_at.clone()
                };
                order.push((at, job.id));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), want, "{status}: every job on a page");
        assert_eq!(pages, want / 20 + 1);
        let mut sorted = order.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(order, sorted, "{status}: newest first, ties by id");
    }
    // A queue filter pages too, and a queue with no jobs has one empty page.
    let page = queue
        .list_page("pending", Some("other"), 20, None)
        .await
        .unwrap();
    assert!(page.jobs.is_empty() && page.next.is_none());
    db.drop_db().await;
}
