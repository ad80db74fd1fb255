//! Flow control against the real server: per-key concurrency across racing processes
//! (one killed -9 while it holds key slots, the key table refusing writes for a moment),
//! a hot key that holds up nobody else, a sliding rate window, and a service's
//! `Retry-After` backing a whole key off. Each run is audited: no job ran twice, none is
//! left unfinished, and no key ever had more runs at once than its limit.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::audit::{audit, now_us, runs_from_file, Run};
use common::procs::{audit_file, signal, start_audited, worker_binary, Work};
use common::TestDb;
use lightjobs::{Flow, Job, JobContext, JobError, Workers};
use serde::{Deserialize, Serialize};

/// The most runs of one key that overlapped, per key. A run of a killed process counts
/// until `killed_at` (its end is unknown).
pub(crate) fn most_at_once(
    runs: &[Run],
    key_of: &HashMap<u64, String>,
    killed_at: u128,
) -> HashMap<String, usize> {
    let mut edges: HashMap<&str, Vec<(u128, i32)>> = HashMap::new();
    for run in runs {
        let Some(key) = key_of.get(&run.job) else {
            continue;
        };
        let end = run.ended.or(run.cut).unwrap_or(killed_at.max(run.started));
        let e = edges.entry(key).or_default();
        e.push((run.started, 1));
        e.push((end, -1));
    }
    edges
        .into_iter()
        .map(|(key, mut e)| {
            // An end at the same instant as a start is counted first: back to back is not
            // overlapping.
            e.sort();
            let (mut now, mut most) = (0i32, 0i32);
            for (_, d) in e {
                now += d;
                most = most.max(now);
            }
            (key.to_owned(), most as usize)
        })
        .collect()
}

async fn keys_of(db: &TestDb) -> HashMap<u64, String> {
    keys_at(&db.url).await
}

/// Each keyed job's flow key, read through `url`.
pub(crate) async fn keys_at(url: &str) -> HashMap<u64, String> {
    use mysql_async::prelude::*;
    let pool = mysql_async::Pool::new(url);
    let mut conn = pool.get_conn().await.unwrap();
    let rows: Vec<(u64, String)> = conn
        .query("SELECT id, flow_key FROM jobs WHERE flow_key IS NOT NULL")
        .await
        .unwrap();
    drop(conn);
    let _ = pool.disconnect().await;
    rows.into_iter().collect()
}

#[actix_rt::test]
async fn a_key_never_runs_more_than_its_limit_across_processes_a_kill_and_refused_writes() {
    const KEYS: usize = 4;
    const PER_KEY: usize = 60;
    const LIMIT: u32 = 2;
    let db = TestDb::new("flow_processes").await;
    let queue = db.migrated().await;
    for i in 0..KEYS * PER_KEY {
        let flow = Flow::key(format!("tenant:{}", i % KEYS)).concurrency(LIMIT);
        queue
            .dispatch(Work { millis: 30 })
            .flow(Some(flow))
            .await
            .unwrap();
    }
    // Jobs of no key run beside them, unlimited.
    for _ in 0..40 {
        queue.dispatch(Work { millis: 30 }).await.unwrap();
    }
    let total = (KEYS * PER_KEY + 40) as u64;
    let file = audit_file("flow_processes");
    let bin = worker_binary();
    let args = [
        "--concurrency",
        "8",
        "--heartbeat",
        "0.2",
        "--stale-after",
        "2",
    ];
    let mut procs: Vec<_> = (0..3)
        .map(|_| start_audited(&bin, &db.url, &file, &args))
        .collect();
    // The key table refuses every write for a moment: claims of keyed jobs fail and are
    // tried again.
    db.wait_for("processed", 40, Duration::from_secs(60)).await;
    db.exec(
        "CREATE TRIGGER refuse_keys BEFORE UPDATE ON lightjobs_flow_keys FOR EACH ROW \
         SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1290, MESSAGE_TEXT = 'refused by the test'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    db.exec("DROP TRIGGER refuse_keys").await;
    // One process is killed while it holds key slots; the rescue frees them.
    db.wait_for("processed", 120, Duration::from_secs(60)).await;
    signal(&procs[0], "-KILL");
    let killed_at = now_us();
    procs.push(start_audited(&bin, &db.url, &file, &args));
    db.wait_for("processed", total, Duration::from_secs(120))
        .await;
    drop(procs);
    let runs = runs_from_file(&file);
    let verdict = audit(&db.url, &runs, &[], |_| false).await;
    verdict.assert_clean("key slots held by a killed process, key writes refused");
    let most = most_at_once(&runs, &keys_of(&db).await, killed_at);
    assert_eq!(most.len(), KEYS, "{most:?}");
    for (key, n) in &most {
        assert!(
            *n <= LIMIT as usize,
            "{key} had {n} runs at once (limit {LIMIT})"
        );
    }
    // Three processes of 8 slots: every key reached its limit at some point.
    assert!(most.values().any(|n| *n == LIMIT as usize), "{most:?}");
    // Waiting on a limit spends no attempt: only the killed process's runs ran twice.
    let extra: u64 = db
        .scalar("SELECT CAST(COALESCE(SUM(attempts - 1), 0) AS UNSIGNED) FROM jobs")
        .await;
    assert!(extra <= 8, "{extra} attempts spent beyond the first");
    db.drop_db().await;
}

/// Records its start in the shared list, sleeps `millis`.
#[derive(Serialize, Deserialize)]
struct Timed {
    key: Option<String>,
    millis: u64,
    /// `Retry-After` on the first run of even ids, in ms (0: none).
    limited_ms: u64,
}

/// A run's job id, flow key and start.
type Start = (u64, Option<String>, Instant);

#[derive(Clone, Default)]
struct Starts(Arc<Mutex<Vec<Start>>>);

impl Job for Timed {
    const NAME: &'static str = "timed";
    fn flow(&self) -> Option<Flow> {
        self.key
            .as_ref()
            .map(|k| Flow::key(k.clone()).concurrency(1))
    }
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        // A rate-limited run gives its attempt back, so "first run" is read from the list.
        let mut first_run = true;
        if let Some(starts) = ctx.data::<Starts>() {
            let mut starts = starts.0.lock().unwrap();
            first_run = !starts.iter().any(|s| s.0 == ctx.id());
            starts.push((ctx.id(), self.key.clone(), Instant::now()));
        }
        if self.limited_ms > 0 && first_run && ctx.id() % 2 == 0 {
            return Err(JobError::rate_limited(Duration::from_millis(
                self.limited_ms,
            )));
        }
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}

fn timed_workers(queue: &lightjobs::JobQueue, starts: &Starts) -> Workers {
    Workers::new(queue.clone())
        .register::<Timed>()
        .data(starts.clone())
        .concurrency(10)
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
}

#[actix_rt::test]
async fn a_hot_key_at_its_limit_holds_up_no_other_job() {
    let db = TestDb::new("flow_hot_key").await;
    let queue = db.migrated().await;
    let hot = (0..200).map(|_| Timed {
        key: Some("hot".into()),
        millis: 20,
        limited_ms: 0,
    });
    queue.dispatch_many(hot).await.unwrap();
    let others = (0..1000).map(|_| Timed {
        key: None,
        millis: 0,
        limited_ms: 0,
    });
    queue.dispatch_many(others).await.unwrap();
    let starts = Starts::default();
    let workers = timed_workers(&queue, &starts).start().await.unwrap();
    // The 1,000 behind the hot key's backlog drain while it runs one at a time.
    let begun = Instant::now();
    let unkeyed = "SELECT COUNT(*) FROM jobs WHERE flow_key IS NULL AND status = 'processed'";
    while db.scalar::<u64>(unkeyed).await < 1000 {
        assert!(begun.elapsed() < Duration::from_secs(30), "others held up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hot_done: u64 = db
        .scalar("SELECT COUNT(*) FROM jobs WHERE flow_key = 'hot' AND status = 'processed'")
        .await;
    assert!(
        hot_done < 150,
        "the hot key ran {hot_done} of 200 before the others were done"
    );
    // The parked backlog waits as `blocked`, out of the claim range, and is not lost;
    // stats, the metrics and the dashboard show it and the key at its limit.
    assert!(db.count("blocked").await > 0);
    let stats = queue.stats().await.unwrap();
    assert!(
        stats.iter().any(|c| c.status == "blocked" && c.count > 0),
        "{stats:?}"
    );
    let keys = queue.flow_keys(10).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].key, "hot");
    assert!(keys[0].blocked > 0 && keys[0].running <= 1, "{keys:?}");
    assert_eq!(keys[0].concurrency, Some(1));
    workers.shutdown().await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_rate_limit_holds_in_every_window_and_uses_it() {
    #[derive(Serialize, Deserialize)]
    struct Paced;
    impl Job for Paced {
        const NAME: &'static str = "paced";
        fn flow(&self) -> Option<Flow> {
            Some(Flow::key("api").rate(5, Duration::from_millis(500)))
        }
        async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
            let starts = ctx
                .data::<Starts>()
                .ok_or_else(|| JobError::fail("no list"))?;
            starts
                .0
                .lock()
                .unwrap()
                .push((ctx.id(), None, Instant::now()));
            Ok(())
        }
    }
    let db = TestDb::new("flow_rate").await;
    let queue = db.migrated().await;
    queue.dispatch_many((0..30).map(|_| Paced)).await.unwrap();
    let starts = Starts::default();
    // Two "processes" racing for the key.
    let a = Workers::new(queue.clone())
        .register::<Paced>()
        .data(starts.clone());
    let b = Workers::new(queue.clone())
        .register::<Paced>()
        .data(starts.clone());
    let (a, b) = (a.start().await.unwrap(), b.start().await.unwrap());
    db.wait_for("processed", 30, Duration::from_secs(30)).await;
    let (a, b) = (a.shutdown().await, b.shutdown().await);
    let mut at: Vec<Instant> = starts.0.lock().unwrap().iter().map(|s| s.2).collect();
    at.sort();
    assert_eq!(at.len(), 30, "{a:?} {b:?}");
    // Sliding: any 6 consecutive starts span at least the window.
    for w in at.windows(6) {
        let span = w[5] - w[0];
        assert!(
            span >= Duration::from_millis(500),
            "6 starts within {span:?}"
        );
    }
    // And the window is used: 30 starts at 5 per 500 ms take about 2.5 s, not 10.
    let took = at[29] - at[0];
    assert!(took < Duration::from_secs(8), "30 starts took {took:?}");
    assert_eq!(db.count("blocked").await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_retry_after_backs_off_the_whole_key_without_spending_attempts() {
    let db = TestDb::new("flow_retry_after").await;
    let queue = db.migrated().await;
    // Even ids answer "429, retry after 1 s" on their first attempt.
    let jobs = (0..6).map(|_| Timed {
        key: Some("svc".into()),
        millis: 0,
        limited_ms: 1000,
    });
    queue.dispatch_many(jobs).await.unwrap();
    let starts = Starts::default();
    let workers = timed_workers(&queue, &starts).start().await.unwrap();
    db.wait_for("processed", 6, Duration::from_secs(30)).await;
    workers.shutdown().await;
    let runs = starts.0.lock().unwrap().clone();
    let first_limited = runs
        .iter()
        .position(|(id, _, _)| id % 2 == 0)
        .expect("an even id ran");
    let paused_at = runs[first_limited].2;
    // After the 429, nothing of the key started for the second it asked for.
    let next = runs[first_limited + 1..].first().expect("more runs").2;
    assert!(
        next - paused_at >= Duration::from_millis(950),
        "the key started again after {:?}",
        next - paused_at
    );
    let spent: u64 = db
        .scalar("SELECT CAST(MAX(attempts) AS UNSIGNED) FROM jobs")
        .await;
    assert_eq!(spent, 1, "a rate-limited run gives its attempt back");
    db.drop_db().await;
}

#[actix_rt::test]
async fn flow_statements_read_their_key_s_index_ranges_not_the_table() {
    use mysql_async::prelude::*;
    let db = TestDb::new("flow_explain").await;
    let queue = db.migrated().await;
    // A live-looking table: a hot key's long parked backlog, many other keys, history.
    let hot = (0..3000).map(|_| Timed {
        key: Some("hot".into()),
        millis: 0,
        limited_ms: 0,
    });
    queue.dispatch_many(hot).await.unwrap();
    let many = (0..3000).map(|i| Timed {
        key: Some(format!("k{i}")),
        millis: 0,
        limited_ms: 0,
    });
    queue.dispatch_many(many).await.unwrap();
    queue
        .dispatch_many((0..3000).map(|_| Timed {
            key: None,
            millis: 0,
            limited_ms: 0,
        }))
        .await
        .unwrap();
    db.exec("UPDATE jobs SET status = 'blocked' WHERE flow_key = 'hot' AND id % 10 <> 0")
        .await;
    db.exec("UPDATE jobs SET status = 'running' WHERE flow_key = 'hot' AND id % 10 = 0 LIMIT 1")
        .await;
    db.exec("UPDATE jobs SET status = 'processed' WHERE flow_key IS NULL OR id % 3 = 0 AND flow_key <> 'hot'").await;
    db.exec(
        "INSERT INTO lightjobs_flow_keys (flow_key, used_at, recheck_at) \
         SELECT DISTINCT flow_key, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) FROM jobs WHERE flow_key IS NOT NULL",
    )
    .await;
    db.exec("ANALYZE TABLE jobs, lightjobs_flow_keys, lightjobs_flow_starts")
        .await;
    let mut conn = db.pool.get_conn().await.unwrap();
    for sql in lightjobs::__private::flow_plan_sql("hot") {
        let plan: Vec<mysql_async::Row> = conn.query(format!("EXPLAIN {sql}")).await.unwrap();
        for row in &plan {
            let get = |col: &str| -> String {
                row.get_opt::<Option<String>, _>(col)
                    .and_then(|r| r.ok())
                    .flatten()
                    .unwrap_or_default()
            };
            let (table, kind, key, rows) = (get("table"), get("type"), get("key"), get("rows"));
            eprintln!(
                "flow plan: table={table} type={kind} key={key} rows={rows} extra={}",
                get("Extra")
            );
            if table.is_empty() || table.starts_with('<') {
                continue; // a derived or union result, or "no matching row"
            }
            assert_ne!(kind, "ALL", "full scan of {table} in {sql}");
            assert_ne!(kind, "index", "full index scan of {table} in {sql}");
            match table.as_str() {
                // The key's range, or a row by id from it.
                "jobs" => assert!(
                    key == "jobs_flow" || (key == "PRIMARY" && kind == "eq_ref"),
                    "{sql}"
                ),
                "s" => assert_eq!(key, "PRIMARY", "{sql}"),
                "k" => assert_eq!(key, "PRIMARY", "{sql}"),
                "lightjobs_flow_keys" => assert_eq!(key, "flow_recheck", "{sql}"),
                other => panic!("unexpected table {other} in {sql}"),
            }
            assert!(!get("Extra").contains("filesort"), "{sql} sorts");
        }
    }
    drop(conn);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_worker_that_stops_when_empty_runs_the_jobs_waiting_on_a_limit_first() {
    let db = TestDb::new("flow_stop_when_empty").await;
    let queue = db.migrated().await;
    let jobs = (0..12).map(|_| Timed {
        key: Some("one".into()),
        millis: 20,
        limited_ms: 0,
    });
    queue.dispatch_many(jobs).await.unwrap();
    let report = timed_workers(&queue, &Starts::default())
        .stop_when_empty(true)
        .start()
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(report.processed, 12, "{report:?}");
    assert_eq!(db.count("processed").await, 12);
    db.drop_db().await;
}

#[actix_rt::test]
async fn idle_flow_keys_are_pruned_and_keys_in_use_are_kept() {
    let db = TestDb::new("flow_prune_keys").await;
    let queue = db.migrated().await;
    // A key with a job still waiting: kept however long ago it was used.
    queue
        .dispatch(crate::common::Record {
            tag: "waits".into(),
        })
        .flow(Some(Flow::key("busy").concurrency(1)))
        .await
        .unwrap();
    db.exec(
        "INSERT INTO lightjobs_flow_keys (flow_key, used_at, paused_until) VALUES \
         ('idle', UTC_TIMESTAMP(6) - INTERVAL 2 DAY, NULL), \
         ('busy', UTC_TIMESTAMP(6) - INTERVAL 2 DAY, NULL), \
         ('paused', UTC_TIMESTAMP(6) - INTERVAL 2 DAY, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR), \
         ('fresh', UTC_TIMESTAMP(6), NULL)",
    )
    .await;
    db.exec(
        "INSERT INTO lightjobs_flow_starts (flow_key, started_at, job_id) VALUES \
         ('idle', UTC_TIMESTAMP(6) - INTERVAL 2 DAY, 1), ('fresh', UTC_TIMESTAMP(6), 2)",
    )
    .await;
    queue
        .prune(Duration::from_secs(24 * 3600), None)
        .await
        .unwrap();
    let keys: Vec<String> = {
        use mysql_async::prelude::*;
        let mut conn = db.pool.get_conn().await.unwrap();
        conn.query("SELECT flow_key FROM lightjobs_flow_keys ORDER BY flow_key")
            .await
            .unwrap()
    };
    assert_eq!(keys, ["busy", "fresh", "paused"]);
    let starts: u64 = db
        .scalar("SELECT COUNT(*) FROM lightjobs_flow_starts")
        .await;
    assert_eq!(
        starts, 1,
        "only the start within the longest window is kept"
    );
    db.drop_db().await;
}
