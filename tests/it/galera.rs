//! On a MariaDB Galera cluster: a private 3-node cluster on loopback (`.ci/galera`, started
//! here, and stopped when the test process ends, when `LIGHTJOBS_TEST_GALERA_URLS` does not
//! name one), lightjobs given the three node URLs. One node takes every write; when it is killed, every process moves to the
//! next within seconds and nothing is lost or run twice; migrations started on every node
//! at once apply once.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::audit::{audit, runs_from_file, Audit, Audited};
use common::procs::{audit_file, count_on, start_audited, wait_exit, worker_binary, Work};
use common::proxy::{upstream, FaultProxy};
use lightjobs::{JobQueue, Workers};
use mysql_async::prelude::*;

/// One test at a time: they kill and restart nodes of the one cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn script() -> String {
    format!("{}/.ci/galera", env!("CARGO_MANIFEST_DIR"))
}

/// The cluster's node URLs (database `test`): the one `.ci/test` started, else one started
/// here once per test process, in a directory of its own, with node 2's clock 15 s ahead
/// as in CI. A watcher stops it when this process ends, so a plain `cargo test` leaves no
/// cluster running.
fn cluster() -> Vec<String> {
    if let Ok(urls) = std::env::var("LIGHTJOBS_TEST_GALERA_URLS") {
        return urls.split(',').map(str::to_owned).collect();
    }
    static STARTED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    STARTED.get_or_init(start_own_cluster).clone()
}

/// Where the cluster this test process started lives.
fn own_dir() -> String {
    std::env::temp_dir()
        .join(format!("lightjobs-galera-test-{}", std::process::id()))
        .display()
        .to_string()
}

fn start_own_cluster() -> Vec<String> {
    let dir = own_dir();
    let out = Command::new("bash")
        .args([script().as_str(), "start", &dir])
        .env(
            "LIGHTJOBS_GALERA_SKEW",
            std::env::var("LIGHTJOBS_GALERA_SKEW").unwrap_or_else(|_| "2:+15s".into()),
        )
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "the Galera cluster did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stops the cluster once this process is gone, however it ends. The watcher outlives
    // this process on purpose: it is never waited for.
    let watcher = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; bash '{}' stop '{dir}'",
        std::process::id(),
        script()
    );
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["bash", "-c", &watcher])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the cluster's watcher starts");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn node(action: &str, n: usize) {
    // The cluster .ci/test started, or the one this process started, lives in a
    // directory of its own.
    let dir = std::env::var("LIGHTJOBS_TEST_GALERA_DIR").unwrap_or_else(|_| own_dir());
    let args = vec![script(), action.to_owned(), n.to_string(), dir];
    let started = Instant::now();
    let status = Command::new("bash")
        .args(&args)
        .status()
        .expect("bash runs");
    eprintln!(
        "galera {action} {n}: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "galera {action} {n} failed");
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    common::url_with_db(url, db)
}

async fn fresh_db(urls: &[String], name: &str) -> Vec<String> {
    let pool = mysql_async::Pool::new(urls[0].as_str());
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
        .unwrap();
    conn.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .unwrap();
    drop(conn);
    pool.disconnect().await.unwrap();
    urls.iter().map(|u| with_db(u, name)).collect()
}

#[actix_rt::test]
async fn one_node_takes_every_write_and_a_killed_node_fails_over() {
    const JOBS: usize = 3000;
    let _serial = SERIAL.lock().await;
    let nodes = cluster();
    let urls = fresh_db(&nodes, "ljg_failover").await;
    let queue = JobQueue::connect(&urls.join(",")).unwrap();
    queue.migrate().await.unwrap();
    for _ in 0..JOBS / 500 {
        queue
            .dispatch_many((0..500).map(|_| Audited { millis: 2 }))
            .await
            .unwrap();
    }
    let audit_log = Audit::default();
    let workers = Workers::new(queue.clone())
        .register::<Audited>()
        .data(audit_log.clone())
        .concurrency(16)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    // Read through node 2 from another database, so that the probe's own connection,
    // which may linger a moment after it quits, is not counted as the queue's.
    let processed = "SELECT COUNT(*) FROM ljg_failover.jobs WHERE status = 'processed'";
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_on(&nodes[1], processed).await.unwrap_or(0) < 500 {
        assert!(Instant::now() < deadline, "no progress on the cluster");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Single writer: every connection of the process is on node 1. Counted from each
    // node's `test` database, so that no probe connection (nor one it leaves closing
    // behind) is one of them.
    // A pool given up closes its connections as the server is told, so a moment passes.
    let settle = Instant::now() + Duration::from_secs(5);
    let (on1, on2, on3) = loop {
        let counts = (
            sessions_of(&nodes[0], "ljg_failover").await.unwrap_or(0),
            sessions_of(&nodes[1], "ljg_failover").await.unwrap_or(0),
            sessions_of(&nodes[2], "ljg_failover").await.unwrap_or(0),
        );
        if (counts.1, counts.2) == (0, 0) || Instant::now() > settle {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if on2 + on3 > 0 {
        dump_sessions(&nodes[1], "ljg_failover").await;
        dump_sessions(&nodes[2], "ljg_failover").await;
    }
    assert!(
        on1 > 0 && on2 == 0 && on3 == 0,
        "sessions per node: {on1} {on2} {on3}"
    );

    // .ci/test runs node 2 with its clock 15 s ahead (LIGHTJOBS_GALERA_SKEW): the move
    // to it must judge no heartbeat by comparing stamps of two clocks.
    let clock = "SELECT CAST(UNIX_TIMESTAMP(UTC_TIMESTAMP()) AS SIGNED)";
    let skew = count_on(&nodes[1], clock).await.unwrap_or(0) as i64
        - count_on(&nodes[0], clock).await.unwrap_or(0) as i64;
    eprintln!("galera: node 2's clock is {skew} s ahead of node 1's");
    node("kill", 1);
    let killed = Instant::now();
    let before: u64 = count_on(&nodes[1], processed).await.unwrap_or(0);
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = count_on(&nodes[1], processed).await.unwrap_or(0);
        if resumed.is_none() && n > before + 50 {
            resumed = Some(killed.elapsed());
        }
        if n >= JOBS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processing did not finish after the failover ({n} of {JOBS})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on2 = sessions_of(&nodes[1], "ljg_failover").await.unwrap_or(0);
    let on3 = sessions_of(&nodes[2], "ljg_failover").await.unwrap_or(0);
    let report = workers.shutdown().await;
    let verdict = audit(&urls[1], &audit_log.runs(), &[], |_| false).await;
    eprintln!(
        "galera: node 1 killed with 9; work resumed on node 2 after {:.1}s; sessions then \
         on node 2: {on2}, node 3: {on3}; {report:?}",
        resumed.unwrap_or_default().as_secs_f64()
    );
    node("restart", 1);
    verdict.assert_clean("the writer node killed");
    assert!(
        on2 > 0 && on3 == 0,
        "after the failover: {on2} on node 2, {on3} on node 3"
    );
    let running = count_on(
        &urls[1],
        "SELECT COUNT(*) FROM jobs WHERE status = 'running'",
    )
    .await;
    assert_eq!(running, Some(0));
}

#[actix_rt::test]
async fn migrations_started_on_every_node_at_once_apply_once() {
    let _serial = SERIAL.lock().await;
    let urls = fresh_db(&cluster(), "ljg_migrate").await;
    let runs = urls.iter().map(|url| {
        let url = url.clone();
        actix_rt::spawn(async move { JobQueue::connect(&url).unwrap().migrate().await })
    });
    let results = futures::future::join_all(runs).await;
    let mut applied = Vec::new();
    for r in results {
        applied.push(r.unwrap().expect("no node's migration fails").applied.len());
    }
    applied.sort_unstable();
    eprintln!("galera: migrations started on 3 nodes at once applied {applied:?}");
    assert_eq!(applied[..2], [0, 0], "{applied:?}");
    assert_eq!(applied[2], lightjobs::migrate::MIGRATIONS.len());
    let dirty = count_on(
        &urls[2],
        "SELECT COUNT(*) FROM lightjobs_migrations WHERE success = 0",
    )
    .await;
    assert_eq!(dirty, Some(0));
}

/// Worker processes on a 3-node cluster over the same backlog, in the two topologies: all
/// given the three URLs in one order (one writer: node 1), and each given one node (three
/// writers). Nothing may be lost or left running in either; one writer runs every job
/// exactly once, while three writers are measured (Galera certifies at COMMIT and loses
/// updates under concurrent writers, so they stay at-least-once) and reported.
#[actix_rt::test]
async fn one_writer_runs_each_job_once_and_three_writers_are_measured() {
    const JOBS: usize = 3000;
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let nodes = cluster();
    // The same workload on the single server of the other tests, in the same run.
    let single = common::TestDb::new("galera_one_server").await;
    for (topology, db) in [
        ("one server (no Galera)", "ljg_one_server"),
        ("one writer", "ljg_one_writer"),
        ("three writers", "ljg_three_writers"),
    ] {
        let urls = if topology.starts_with("one server") {
            vec![single.url.clone()]
        } else {
            fresh_db(&nodes, db).await
        };
        let queue = JobQueue::connect(&urls[0]).unwrap();
        queue.migrate().await.unwrap();
        for _ in 0..JOBS / 500 {
            queue
                .dispatch_many((0..500).map(|_| Work { millis: 0 }))
                .await
                .unwrap();
        }
        let log = audit_file(db);
        let args = ["--concurrency", "8", "--stop-when-empty"];
        let started = Instant::now();
        let mut workers: Vec<_> = (0..3)
            .map(|i| {
                // Every process the same list in the same order, or each its own node.
                let url = if topology == "three writers" {
                    urls[i].clone()
                } else {
                    urls.join(",")
                };
                start_audited(&bin, &url, &log, &args)
            })
            .collect();
        for w in &mut workers {
            let status = wait_exit(w, Duration::from_secs(300)).await;
            assert!(
                status.success(),
                "{topology}: a worker exited with {status}"
            );
        }
        let took = started.elapsed();
        let runs = runs_from_file(&log);
        let verdict = audit(&urls[0], &runs, &[], |_| false).await;
        eprintln!(
            "galera, 3 processes x 8 slots, {topology}: {JOBS} jobs in {:.1}s ({:.0} jobs/s); \
             {} runs, {} jobs ran twice, {} overlaps, {} unfinished",
            took.as_secs_f64(),
            JOBS as f64 / took.as_secs_f64(),
            verdict.runs,
            verdict.twice,
            verdict.overlaps,
            verdict.unfinished
        );
        assert_eq!(verdict.unfinished, 0, "{topology}: {verdict:?}");
        assert_eq!(verdict.wrongly_failed, 0, "{topology}: {verdict:?}");
        if topology != "three writers" {
            verdict.assert_clean(topology);
            assert_eq!(verdict.runs, JOBS as u64);
        }
        let _ = std::fs::remove_file(&log);
    }
    single.drop_db().await;
}

/// The maintenance leases taken on the three nodes at the same moment: exactly one process
/// gets each (certification decides between nodes, where `GET_LOCK` would let all three
/// through), and the others get it once it is given back.
#[actix_rt::test]
async fn a_lease_taken_on_every_node_at_once_has_one_holder() {
    use lightjobs::__private::{acquire_lease, release_lease, CREATE_LEASES};
    let _serial = SERIAL.lock().await;
    let urls = fresh_db(&cluster(), "ljg_lease").await;
    {
        let pool = mysql_async::Pool::new(urls[0].as_str());
        let mut conn = pool.get_conn().await.unwrap();
        conn.query_drop(CREATE_LEASES).await.unwrap();
        drop(conn);
        pool.disconnect().await.unwrap();
    }
    let mut pools = Vec::new();
    let mut conns = Vec::new();
    for url in &urls {
        let pool = mysql_async::Pool::new(url.as_str());
        conns.push(pool.get_conn().await.unwrap());
        pools.push(pool);
    }
    let ttl = Duration::from_secs(60);
    for round in 0..20 {
        let name = format!("rescuer-{round}");
        let takes = conns.iter_mut().enumerate().map(|(i, conn)| {
            let name = name.clone();
            async move {
                acquire_lease(conn, &name, &format!("node{i}"), ttl)
                    .await
                    .unwrap()
            }
        });
        let got = futures::future::join_all(takes).await;
        assert_eq!(
            got.iter().filter(|g| **g).count(),
            1,
            "round {round}: holders {got:?}"
        );
        let holder = got.iter().position(|g| *g).unwrap();
        release_lease(&mut conns[holder], &name, &format!("node{holder}"))
            .await
            .unwrap();
        let next = (holder + 1) % 3;
        // The release may take a moment to be applied on the other node.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !acquire_lease(&mut conns[next], &name, &format!("node{next}"), ttl)
            .await
            .unwrap()
        {
            assert!(Instant::now() < deadline, "round {round}: never given back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(conns);
    for pool in pools {
        pool.disconnect().await.unwrap();
    }
}

/// Connections of any client to database `db` on node `node`, read from the node's own
/// `test` database so that the probe is not one of them.
async fn sessions_of(node: &str, db: &str) -> Option<u64> {
    count_on(
        node,
        &format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{db}'"),
    )
    .await
}

/// Prints who holds the sessions of `db` on `node` (for a failed test).
async fn dump_sessions(node: &str, db: &str) {
    let pool = mysql_async::Pool::new(node);
    if let Ok(mut conn) = pool.get_conn().await {
        let rows: Vec<(u64, String, String, u64, Option<String>)> = conn
            .query(format!(
                "SELECT ID, HOST, COMMAND, TIME, INFO FROM information_schema.PROCESSLIST \
                 WHERE DB = '{db}'"
            ))
            .await
            .unwrap_or_default();
        for row in rows {
            eprintln!("session on {node}: {row:?}");
        }
    }
    let _ = pool.disconnect().await;
    let ss = Command::new("ss").args(["-tnp"]).output();
    if let Ok(ss) = ss {
        eprintln!("{}", String::from_utf8_lossy(&ss.stdout));
    }
}

/// The first node killed under a steady stream of jobs, then restarted while the workers
/// run: two worker processes (and the dispatching queue) move to node 2, then back to node
/// 1 once it is synced again, and no session is left on node 2. Across both moves no job
/// is lost, run twice or left running.
#[actix_rt::test]
async fn processes_move_back_to_the_first_node_once_it_is_synced_again() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const DB: &str = "ljg_failback";
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let nodes = cluster();
    let urls = fresh_db(&nodes, DB).await;
    let list = urls.join(",");
    let queue = JobQueue::connect(&list).unwrap();
    queue.migrate().await.unwrap();
    let log = audit_file(DB);
    let args = [
        "--concurrency",
        "8",
        "--heartbeat",
        "0.2",
        "--stale-after",
        "2",
    ];
    let mut workers: Vec<_> = (0..2)
        .map(|_| start_audited(&bin, &list, &log, &args))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = actix_rt::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        async move {
            let mut failed = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // A dispatch cut by the kill may or may not have committed; the audit
                // reads every row that exists, so neither case escapes it.
                if queue
                    .dispatch_many((0..25).map(|_| Work { millis: 5 }))
                    .await
                    .is_err()
                {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failed
        }
    });
    let processed = format!("SELECT COUNT(*) FROM {DB}.jobs WHERE status = 'processed'");
    let progress_after = |n: u64, what: &'static str| {
        let (node, processed) = (nodes[1].clone(), processed.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count_on(&node, &processed).await.unwrap_or(0) < n {
                if Instant::now() >= deadline {
                    // What the next look at a failure needs: where the rows and the
                    // sessions are, and what the node thinks of itself.
                    let pool = mysql_async::Pool::new(node.as_str());
                    if let Ok(mut conn) = pool.get_conn().await {
                        let rows: Vec<(String, u64)> = conn
                            .query(format!(
                                "SELECT status, COUNT(*) FROM {DB}.jobs GROUP BY status"
                            ))
                            .await
                            .unwrap_or_default();
                        eprintln!("galera failback: rows on node 2: {rows:?}");
                        let state: Vec<(String, String)> = conn
                            .query(
                                "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', \
                                 'wsrep_cluster_size', 'wsrep_local_state_comment')",
                            )
                            .await
                            .unwrap_or_default();
                        eprintln!("galera failback: node 2: {state:?}");
                    }
                    let _ = pool.disconnect().await;
                    dump_sessions(&node, DB).await;
                }
                assert!(Instant::now() < deadline, "no progress {what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    progress_after(300, "at the start").await;
    eprintln!("galera: failback phase kill at {}", common::audit::now_us());
    node("kill", 1);
    let killed = Instant::now();
    let at_kill = count_on(&nodes[1], &processed).await.unwrap_or(0);
    progress_after(at_kill + 200, "after node 1 was killed").await;
    let failed_over = killed.elapsed();
    actix_rt::task::spawn_blocking(|| node("restart", 1))
        .await
        .unwrap();
    let synced = Instant::now();
    eprintln!(
        "galera: failback phase synced at {}",
        common::audit::now_us()
    );
    // Every session of the queue's database back on node 1, none left on node 2.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (on1, on2) = loop {
        let on1 = sessions_of(&nodes[0], DB).await.unwrap_or(0);
        let on2 = sessions_of(&nodes[1], DB).await.unwrap_or(u64::MAX);
        if on1 > 0 && on2 == 0 {
            break (on1, on2);
        }
        if Instant::now() >= deadline {
            dump_sessions(&nodes[1], DB).await;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after node 1 was synced again: {on1} sessions on node 1, {on2} on node 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let moved_back = synced.elapsed();
    eprintln!(
        "galera: failback phase moved back at {}",
        common::audit::now_us()
    );
    let at_move = count_on(&nodes[0], &processed).await.unwrap_or(0);
    // Work goes on through node 1.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_on(&nodes[0], &processed).await.unwrap_or(0) < at_move + 300 {
        assert!(Instant::now() < deadline, "no progress after the move back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failed_dispatches = feeder.await.unwrap();
    let left = format!(
        "SELECT COUNT(*) FROM {DB}.jobs WHERE status NOT IN ('processed', 'failed', 'cancelled')"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_on(&nodes[0], &left).await != Some(0) {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in &mut workers {
        common::procs::signal(w, "-TERM");
    }
    for w in &mut workers {
        let status = wait_exit(w, Duration::from_secs(30)).await;
        assert!(status.success(), "a worker exited with {status}");
    }
    let verdict = audit(&urls[0], &runs_from_file(&log), &[], |_| false).await;
    eprintln!(
        "galera: node 1 killed; work went on through node 2 after {:.1}s; node 1 synced \
         again, every session back on it after {:.1}s ({on1} on node 1, {on2} on node 2); \
         {failed_dispatches} dispatches failed during the moves",
        failed_over.as_secs_f64(),
        moved_back.as_secs_f64()
    );
    verdict.assert_clean("node 1 killed, then back");
    let _ = std::fs::remove_file(&log);
    assert!(verdict.runs > 600, "{verdict:?}");
}

/// A move waits for the new node to catch up with the cluster; when that wait fails, the
/// node is passed over for the next healthy one, and taken once it catches up. Node 1 is
/// unreachable (a proxy that refuses connections) and node 2's catch-up is cut by a proxy:
/// the process works through node 3, then moves to node 2 when the cut stops, and every
/// job runs once.
#[actix_rt::test]
async fn a_node_that_fails_to_catch_up_is_passed_over_until_it_does() {
    use common::proxy::{upstream, FaultProxy};
    const DB: &str = "ljg_catch_up";
    let _serial = SERIAL.lock().await;
    let nodes = cluster();
    let urls = fresh_db(&nodes, DB).await;
    let to1 = FaultProxy::start(upstream(&urls[0]));
    let to2 = FaultProxy::start(upstream(&urls[1]));
    to1.set_down(true);
    to2.cut_before("wsrep_last_committed", 100_000);
    let list = [
        to1.rewrite_url(&urls[0]),
        to2.rewrite_url(&urls[1]),
        urls[2].clone(),
    ]
    .join(",");
    let queue = JobQueue::connect(&list).unwrap();
    queue.migrate().await.unwrap();
    let audit_log = Audit::default();
    let workers = Workers::new(queue.clone())
        .register::<Audited>()
        .data(audit_log.clone())
        .concurrency(4)
        .start()
        .await
        .unwrap();
    let processed = format!("SELECT COUNT(*) FROM {DB}.jobs WHERE status = 'processed'");
    let run = |n: u64| {
        let (queue, node, processed) = (queue.clone(), nodes[2].clone(), processed.clone());
        async move {
            queue
                .dispatch_many((0..20).map(|_| Audited { millis: 1 }))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while count_on(&node, &processed).await.unwrap_or(0) < n {
                assert!(Instant::now() < deadline, "{n} jobs not processed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    run(20).await;
    assert!(to2.fired() >= 1, "node 2's catch-up was never tried");
    // Each second's check opens a probe on node 2 that the cut then closes: read a few
    // times rather than once.
    let on = |i: usize| sessions_of(&nodes[i], DB);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (on2, on3) = (on(1).await.unwrap_or(u64::MAX), on(2).await.unwrap_or(0));
        if on2 == 0 && on3 > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "while node 2 cannot catch up: {on2} sessions on node 2, {on3} on node 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    to2.disarm();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (on2, on3) = (on(1).await.unwrap_or(0), on(2).await.unwrap_or(u64::MAX));
        if on2 > 0 && on3 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after the cut stopped: {on2} sessions on node 2, {on3} on node 3"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run(40).await;
    workers.shutdown().await;
    let verdict = audit(&urls[2], &audit_log.runs(), &[], |_| false).await;
    verdict.assert_clean("a node that failed to catch up");
    assert_eq!(verdict.runs, 40);
}

/// `SHOW GLOBAL STATUS` counters of `node` named in `names`.
async fn counters(node: &str, names: &[&str]) -> Vec<u64> {
    let pool = mysql_async::Pool::new(node);
    let mut out = vec![0; names.len()];
    if let Ok(mut conn) = pool.get_conn().await {
        let rows: Vec<(String, String)> = conn
            .query("SHOW GLOBAL STATUS LIKE 'wsrep_local_%'")
            .await
            .unwrap_or_default();
        for (name, value) in rows {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(&name)) {
                out[i] = value.parse().unwrap_or(0);
            }
        }
    }
    let _ = pool.disconnect().await;
    out
}

/// A partial partition: three worker processes, each given the same three nodes in the
/// same order through proxies of its own; one process's path to node 1 is cut while node 1
/// stays healthy and the others keep using it. The cut-off process does not move to node 2
/// on its own (the writer is agreed through a row of the cluster, which the others keep
/// renewing): it writes nowhere, stops its runs when its lease runs out, and the others
/// rescue them. No transaction originates on node 2 or 3 during the cut (one writer at
/// every moment, no certification failures), no two runs of a job overlap, and a job runs
/// again only where the cut-off process had finished it without being able to write so.
#[actix_rt::test]
async fn a_process_cut_from_the_writer_node_does_not_become_a_second_writer() {
    const DB: &str = "ljg_partition";
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let nodes = cluster();
    let urls = fresh_db(&nodes, DB).await;
    let queue = JobQueue::connect(&urls.join(",")).unwrap();
    queue.migrate().await.unwrap();
    for _ in 0..6 {
        queue
            .dispatch_many((0..500).map(|_| Work { millis: 20 }))
            .await
            .unwrap();
    }
    let proxies: Vec<Vec<FaultProxy>> = (0..3)
        .map(|_| {
            urls.iter()
                .map(|u| FaultProxy::start(upstream(u)))
                .collect()
        })
        .collect();
    let log = audit_file(DB);
    let args = [
        "--concurrency",
        "8",
        "--heartbeat",
        "0.2",
        "--stale-after",
        "2",
    ];
    let mut workers: Vec<_> = proxies
        .iter()
        .map(|own| {
            let list: Vec<String> = own
                .iter()
                .zip(&urls)
                .map(|(p, u)| p.rewrite_url(u))
                .collect();
            start_audited(&bin, &list.join(","), &log, &args)
        })
        .collect();
    let processed = format!("SELECT COUNT(*) FROM {DB}.jobs WHERE status = 'processed'");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_on(&nodes[0], &processed).await.unwrap_or(0) < 300 {
        assert!(Instant::now() < deadline, "no progress on the cluster");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names = ["wsrep_local_commits", "wsrep_local_cert_failures"];
    let before: Vec<Vec<u64>> =
        futures::future::join_all(nodes.iter().map(|n| counters(n, &names))).await;
    proxies[0][0].set_down(true);
    let cut = Instant::now();
    let mut timeline = Vec::new();
    while cut.elapsed() < Duration::from_secs(12) {
        let mut at = Vec::new();
        for n in &nodes {
            at.push(sessions_of(n, DB).await.unwrap_or(u64::MAX));
        }
        timeline.push(format!("{:.1}s {:?}", cut.elapsed().as_secs_f64(), at));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after: Vec<Vec<u64>> =
        futures::future::join_all(nodes.iter().map(|n| counters(n, &names))).await;
    proxies[0][0].set_down(false);
    let left =
        format!("SELECT COUNT(*) FROM {DB}.jobs WHERE status NOT IN ('processed', 'failed')");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_on(&nodes[0], &left).await != Some(0) {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &mut workers {
        common::procs::signal(w, "-TERM");
    }
    for w in &mut workers {
        let status = wait_exit(w, Duration::from_secs(30)).await;
        assert!(status.success(), "a worker exited with {status}");
    }
    let runs = runs_from_file(&log);
    // Strictly, nothing overlaps; a job may run again only where the cut-off process had
    // finished it but could not write that (the database was gone for it): at least once.
    let strict = audit(&urls[0], &runs, &[], |_| false).await;
    let cut_off = workers[0].id().to_string();
    let verdict = audit(&urls[0], &runs, &[cut_off], |_| false).await;
    let delta = |i: usize, k: usize| after[i][k].saturating_sub(before[i][k]);
    eprintln!(
        "galera partition: one process cut from node 1 for 12 s; sessions of {DB} on \
         nodes 1/2/3 every 0.5 s: {}; transactions originating on nodes 1/2/3 during the \
         cut: {}/{}/{}, certification failures {}/{}/{}",
        timeline.join(", "),
        delta(0, 0),
        delta(1, 0),
        delta(2, 0),
        delta(0, 1),
        delta(1, 1),
        delta(2, 1)
    );
    eprintln!(
        "galera partition: {} jobs ran again after the cut-off process had finished them \
         without being able to write it",
        strict.twice
    );
    assert_eq!(strict.overlaps, 0, "{strict:?}");
    verdict.assert_clean("one process cut from the writer node");
    assert_eq!(
        (delta(1, 0), delta(2, 0)),
        (0, 0),
        "writes on nodes 2 and 3"
    );
    assert_eq!(
        (delta(0, 1), delta(1, 1), delta(2, 1)),
        (0, 0, 0),
        "certification failures"
    );
    assert!(delta(0, 0) > 0, "the others went on writing on node 1");
    let _ = std::fs::remove_file(&log);
}

/// Waits until the one process row of `db` has a listener registered on a node other than
/// `not` (read through `node`); returns that node's uid.
async fn listener_node(node: &str, db: &str, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = mysql_async::Pool::new(node);
        let got: Option<String> = match pool.get_conn().await {
            Ok(mut c) => c
                .query_first(format!(
                    "SELECT wake_node FROM {db}.lightjobs_workers WHERE wake_conn IS NOT NULL"
                ))
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        let _ = pool.disconnect().await;
        if let Some(uid) = got.filter(|uid| Some(uid.as_str()) != not) {
            return uid;
        }
        assert!(
            Instant::now() < deadline,
            "no listener registered (beside {not:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn a_dispatch_wakes_a_process_on_the_writer_node_and_after_it_moved() {
    const DB: &str = "ljg_wake";
    let _serial = SERIAL.lock().await;
    let nodes = cluster();
    let urls = fresh_db(&nodes, DB).await;
    let list = urls.join(",");
    let queue = JobQueue::connect(&list).unwrap();
    queue.migrate().await.unwrap();
    // It polls every 30 s: a job that starts sooner was pushed. Its runs go to a file
    // (its own pool for `runs` would be on the node this test kills).
    let log = audit_file(DB);
    let _worker = common::procs::start_worker_env(
        &worker_binary(),
        &list,
        &[
            ("LIGHTJOBS_TEST_POLL_MS", "30000"),
            ("LIGHTJOBS_TEST_AUDIT", &log),
        ],
        &["--heartbeat", "0.2", "--stale-after", "2"],
    );
    let first = listener_node(&nodes[1], DB, None).await;
    let ran = |n: usize| {
        let log = log.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while runs_from_file(&log)
                .iter()
                .filter(|r| r.ended.is_some())
                .count()
                < n
            {
                assert!(Instant::now() < deadline, "job {n} was not pushed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    queue.dispatch(Work { millis: 0 }).await.unwrap();
    ran(1).await;

    // The writer node goes: the process and the dispatcher move, and the listener with
    // them (KILL is node-local: a registration on the old node could wake nothing).
    node("kill", 1);
    let second = listener_node(&nodes[1], DB, Some(&first)).await;
    eprintln!("galera: the listener moved from {first} to {second}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The dispatcher finds the new node on its own; until then a dispatch may fail.
        match queue.dispatch(Work { millis: 0 }).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no dispatch after the move: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ran(2).await;
    node("restart", 1);
}

#[actix_rt::test]
async fn flow_limits_hold_on_the_cluster_with_one_writer() {
    use lightjobs::Flow;
    const LIMIT: u32 = 2;
    let _serial = SERIAL.lock().await;
    let nodes = cluster();
    let urls = fresh_db(&nodes, "ljg_flow").await;
    let queue = JobQueue::connect(&urls.join(",")).unwrap();
    queue.migrate().await.unwrap();
    for i in 0..160 {
        let flow = Flow::key(format!("tenant:{}", i % 4)).concurrency(LIMIT);
        queue
            .dispatch(Audited { millis: 15 })
            .flow(Some(flow))
            .await
            .unwrap();
    }
    // Two processes' worth of workers, each with every node in the same order: one writer.
    let audit_log = Audit::default();
    let mut all = Vec::new();
    for _ in 0..2 {
        let q = JobQueue::connect(&urls.join(",")).unwrap();
        all.push(
            Workers::new(q)
                .register::<Audited>()
                .data(audit_log.clone())
                .concurrency(8)
                .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
                .start()
                .await
                .unwrap(),
        );
    }
    let processed = "SELECT COUNT(*) FROM ljg_flow.jobs WHERE status = 'processed'";
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_on(&nodes[1], processed).await.unwrap_or(0) < 160 {
        assert!(
            Instant::now() < deadline,
            "flow jobs did not finish on the cluster"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in all {
        w.shutdown().await;
    }
    let runs = audit_log.runs();
    audit(&urls[0], &runs, &[], |_| false)
        .await
        .assert_clean("flow keys on the cluster");
    let keys = crate::flow::keys_at(&urls[0]).await;
    let most = crate::flow::most_at_once(&runs, &keys, 0);
    eprintln!("galera flow: most runs at once per key {most:?}");
    assert_eq!(most.len(), 4);
    assert!(most.values().all(|n| *n <= LIMIT as usize), "{most:?}");
    assert!(most.values().any(|n| *n == LIMIT as usize), "{most:?}");
}

/// Holds its run until it is cancelled (at most a minute).
#[derive(serde::Serialize, serde::Deserialize)]
struct Hold;

impl lightjobs::Job for Hold {
    const NAME: &'static str = "hold";
    async fn execute(self, ctx: &lightjobs::JobContext) -> Result<(), lightjobs::JobError> {
        tokio::select! {
            () = ctx.cancelled() => Err(lightjobs::JobError::fail("stopped by its cancel")),
            () = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
        }
    }
}

/// On the cluster: a cancel sent through another node reaches the process running the job,
/// and a batch's callback runs once, after the batch's last job.
#[actix_rt::test]
async fn a_cancel_through_another_node_stops_the_job_and_a_batch_calls_back_once() {
    let _serial = SERIAL.lock().await;
    let nodes = cluster();
    let urls = fresh_db(&nodes, "ljg_batch_cancel").await;
    let queue = JobQueue::connect(&urls.join(",")).unwrap();
    queue.migrate().await.unwrap();
    let batch = queue
        .batch()
        .jobs((0..40).map(|_| Audited { millis: 20 }))
        .on_complete(Audited { millis: 0 })
        .dispatch()
        .await
        .unwrap();
    let hold = queue.dispatch(Hold).await.unwrap();
    let audit_log = Audit::default();
    let workers = Workers::new(queue.clone())
        .register::<Audited>()
        .register::<Hold>()
        .data(audit_log.clone())
        .concurrency(8)
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let running = format!(
        "SELECT COUNT(*) FROM ljg_batch_cancel.jobs WHERE id = {hold} AND status = 'running'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_on(&nodes[0], &running).await.unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "the held job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An operator's tool connected to the third node only.
    let elsewhere = JobQueue::connect(&urls[2]).unwrap();
    let sent = Instant::now();
    assert!(elsewhere.cancel(hold).await.unwrap());
    let cancelled = format!(
        "SELECT COUNT(*) FROM ljg_batch_cancel.jobs WHERE id = {hold} AND status = 'cancelled'"
    );
    while count_on(&nodes[2], &cancelled).await.unwrap_or(0) < 1 {
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the cancel did not reach the job"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = sent.elapsed();
    let callback = batch.callbacks[0];
    let done = format!(
        "SELECT COUNT(*) FROM ljg_batch_cancel.jobs WHERE id = {callback} AND status = 'processed'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_on(&nodes[1], &done).await.unwrap_or(0) < 1 {
        assert!(
            Instant::now() < deadline,
            "the batch's callback did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: a second run of the callback would show now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    workers.shutdown().await;
    let runs = audit_log.runs();
    audit(&urls[0], &runs, &[], |_| false)
        .await
        .assert_clean("a batch and a cancel on the cluster");
    let last_member = runs
        .iter()
        .filter(|r| batch.jobs.contains(&r.job))
        .filter_map(|r| r.ended)
        .max()
        .unwrap();
    let callback_runs: Vec<_> = runs.iter().filter(|r| r.job == callback).collect();
    assert_eq!(callback_runs.len(), 1, "{callback_runs:?}");
    assert!(
        callback_runs[0].started > last_member,
        "the callback ran before the last job ended"
    );
    eprintln!(
        "galera: cancel through another node reached the job in {:.2}s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(3), "cancel took {took:?}");
}
