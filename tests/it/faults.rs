//! Fault tests: real worker processes (the `fault_worker` example) under concurrency,
//! kill -9, SIGTERM, and a database restart. Each prints the figures it measured.

use crate::common;

use common::procs::{
    audit_file, count_on, example_binary, signal, start_audited, start_worker, wait_count,
    wait_exit, worker_binary, Proc, Work,
};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::audit::{audit, runs_from_file};
use common::server::PrivateServer;
use common::TestDb;
use lightjobs::JobQueue;

/// One fault test at a time: they start processes and measure recovery times, which
/// other tests' load on two cores would blur.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn duplicates(db: &TestDb) -> u64 {
    db.scalar(
        "SELECT COUNT(*) FROM (SELECT job_id FROM runs GROUP BY job_id HAVING COUNT(*) > 1) t",
    )
    .await
}

async fn backlog(queue: &JobQueue, n: usize, millis: u64) {
    let ids: Vec<usize> = (0..n).collect();
    for chunk in ids.chunks(1000) {
        queue
            .dispatch_many(chunk.iter().map(|_| Work { millis }))
            .await
            .unwrap();
    }
}

#[actix_rt::test]
async fn four_processes_by_eight_slots_run_every_job_exactly_once() {
    const JOBS: usize = 20_000;
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let db = TestDb::new("fault_concurrency").await;
    let queue = db.migrated().await;
    backlog(&queue, JOBS, 0).await;
    let started = Instant::now();
    let mut workers: Vec<Proc> = (0..4)
        .map(|_| start_worker(&bin, &db.url, &["--concurrency", "8", "--stop-when-empty"]))
        .collect();
    for w in &mut workers {
        let status = wait_exit(w, Duration::from_secs(600)).await;
        assert!(status.success(), "worker exited with {status}");
    }
    let elapsed = started.elapsed();
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    let distinct: u64 = db.scalar("SELECT COUNT(DISTINCT job_id) FROM runs").await;
    let per_process: Vec<(String, u64)> = {
        use mysql_async::prelude::*;
        let mut conn = db.pool.get_conn().await.unwrap();
        conn.query("SELECT tag, COUNT(*) FROM runs GROUP BY tag ORDER BY tag")
            .await
            .unwrap()
    };
    eprintln!(
        "4 processes x 8 slots: {runs} runs of {JOBS} jobs in {:.2}s ({:.0} jobs/s), \
         {} ran twice, {} left running, per process {:?}",
        elapsed.as_secs_f64(),
        JOBS as f64 / elapsed.as_secs_f64(),
        duplicates(&db).await,
        db.count("running").await,
        per_process.iter().map(|p| p.1).collect::<Vec<_>>()
    );
    assert_eq!(distinct, JOBS as u64, "every job ran");
    assert_eq!(runs, JOBS as u64, "no job ran twice");
    assert_eq!(db.count("processed").await, JOBS as u64);
    assert_eq!(db.count("running").await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn jobs_of_a_killed_process_are_rescued_and_finish_elsewhere() {
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let db = TestDb::new("fault_kill9").await;
    let queue = db.migrated().await;
    backlog(&queue, 8, 3_000).await;
    let fast = ["--heartbeat", "0.2", "--stale-after", "1"];
    let mut victim = start_worker(
        &bin,
        &db.url,
        &[&["--concurrency", "8"][..], &fast].concat(),
    );
    db.wait_for("running", 8, Duration::from_secs(20)).await;
    signal(&victim, "-KILL");
    let killed = Instant::now();
    let _ = victim.wait();
    assert_eq!(
        db.count("running").await,
        8,
        "a killed process leaves its jobs running"
    );

    // Not --stop-when-empty: with every job held by the dead process there is nothing to
    // claim until the rescue.
    let mut rescuer = start_worker(
        &bin,
        &db.url,
        &[&["--concurrency", "8"][..], &fast].concat(),
    );
    db.wait_for("processed", 8, Duration::from_secs(30)).await;
    let recovered = killed.elapsed();
    signal(&rescuer, "-TERM");
    let status = wait_exit(&mut rescuer, Duration::from_secs(30)).await;
    assert!(status.success());
    eprintln!(
        "kill -9 with 8 jobs in flight: all 8 done elsewhere {:.2}s after the kill \
         (staleness 1 s, jobs take 3 s)",
        recovered.as_secs_f64()
    );
    let attempts: Vec<u32> = {
        use mysql_async::prelude::*;
        let mut conn = db.pool.get_conn().await.unwrap();
        conn.query("SELECT attempt FROM runs ORDER BY job_id")
            .await
            .unwrap()
    };
    assert_eq!(
        attempts,
        vec![2; 8],
        "each ran once more, as its second attempt"
    );
    assert_eq!(duplicates(&db).await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn sigterm_under_load_exits_zero_within_the_grace_period() {
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let db = TestDb::new("fault_sigterm").await;
    let queue = db.migrated().await;
    // Eight jobs far longer than the grace period, claimed first; short ones after them.
    backlog(&queue, 8, 20_000).await;
    backlog(&queue, 100, 400).await;
    let mut worker = start_worker(
        &bin,
        &db.url,
        &["--concurrency", "12", "--shutdown-timeout", "2"],
    );
    db.wait_for("processed", 20, Duration::from_secs(30)).await;
    signal(&worker, "-TERM");
    let sent = Instant::now();
    let status = wait_exit(&mut worker, Duration::from_secs(30)).await;
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} with a 2 s grace"
    );
    assert_eq!(db.count("running").await, 0, "nothing left running");
    assert!(
        took >= Duration::from_secs(2),
        "the long jobs had the grace period"
    );
    let released: u64 = db
        .scalar("SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND attempts = 0 AND payload LIKE '%20000%'")
        .await;
    assert_eq!(
        released, 8,
        "the long jobs were given back with their attempt"
    );
    let done = db.count("processed").await;
    eprintln!(
        "SIGTERM under load: exited 0 after {:.2}s (grace 2 s), {done} processed, {} released",
        took.as_secs_f64(),
        db.count("pending").await
    );
    // The released and never-claimed jobs run in another process; none ran twice.
    db.exec("UPDATE jobs SET payload = '{\"millis\":0}'").await;
    let mut next = start_worker(&bin, &db.url, &["--concurrency", "8", "--stop-when-empty"]);
    assert!(wait_exit(&mut next, Duration::from_secs(60))
        .await
        .success());
    assert_eq!(db.count("processed").await, 108);
    assert_eq!(duplicates(&db).await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_database_restart_mid_run_loses_nothing() {
    const JOBS: usize = 3_000;
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let mut server = PrivateServer::start("restart");
    let admin = mysql_async::Pool::new(server.url("mysql").as_str());
    {
        use mysql_async::prelude::*;
        let mut conn = admin.get_conn().await.unwrap();
        conn.query_drop("CREATE DATABASE app").await.unwrap();
        conn.query_drop(
            "CREATE TABLE app.runs (seq BIGINT AUTO_INCREMENT PRIMARY KEY, \
             job_id BIGINT UNSIGNED NOT NULL, attempt INT NOT NULL, tag VARCHAR(100) NOT NULL, \
             at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
        )
        .await
        .unwrap();
    }
    admin.disconnect().await.unwrap();
    let url = server.url("app");
    let queue = JobQueue::connect(&url).unwrap();
    queue.migrate().await.unwrap();
    backlog(&queue, JOBS, 2).await;
    let mut worker = start_worker(&bin, &url, &["--concurrency", "8"]);

    let count = |sql: &'static str| count_on(&url, sql);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("SELECT COUNT(*) FROM runs").await.unwrap_or(0) < 500 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let down = Instant::now();
    server.restart();
    let restarted_after = down.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if count("SELECT COUNT(*) FROM jobs WHERE status = 'processed'").await == Some(JOBS as u64)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processing did not finish after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&worker, "-TERM");
    assert!(wait_exit(&mut worker, Duration::from_secs(30))
        .await
        .success());
    let failed = count("SELECT COUNT(*) FROM jobs WHERE status <> 'processed'").await;
    let distinct = count("SELECT COUNT(DISTINCT job_id) FROM runs").await;
    let runs = count("SELECT COUNT(*) FROM runs").await;
    // The gap: the longest pause between two consecutive recorded runs.
    let gap_us = count(
        "SELECT MAX(TIMESTAMPDIFF(MICROSECOND, prev, at)) FROM \
         (SELECT at, LAG(at) OVER (ORDER BY seq) AS prev FROM runs) t",
    )
    .await;
    eprintln!(
        "database restart (down and up in {:.2}s): longest gap between runs {:.2}s, \
         {JOBS} jobs processed, {} not processed, {} runs of {} distinct jobs",
        restarted_after.as_secs_f64(),
        gap_us.unwrap_or(0) as f64 / 1e6,
        failed.unwrap_or(u64::MAX),
        runs.unwrap_or(0),
        distinct.unwrap_or(0)
    );
    assert_eq!(
        failed,
        Some(0),
        "nothing failed or left behind because of the outage"
    );
    assert_eq!(distinct, Some(JOBS as u64), "every job ran");
    drop(server);
}

/// Two processes dispatch the same 200 unique keys at the same moment: one job per key, and
/// both processes get the same id for each key.
#[actix_rt::test]
async fn two_processes_dispatching_the_same_unique_keys_make_one_job_each() {
    const KEYS: usize = 200;
    let _serial = SERIAL.lock().await;
    let bin = example_binary("race_dispatcher");
    let db = TestDb::new("fault_unique_race").await;
    db.migrated().await;
    let start = std::time::SystemTime::now() + Duration::from_millis(1500);
    let at = start
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let racers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(&bin)
                .args([db.url.as_str(), &KEYS.to_string(), &at])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("race_dispatcher starts")
        })
        .collect();
    let outputs: Vec<Vec<u64>> = racers
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(outputs[0].len(), KEYS);
    assert_eq!(
        outputs[0], outputs[1],
        "both processes got the same job for each key"
    );
    let rows: u64 = db.scalar("SELECT COUNT(*) FROM jobs").await;
    assert_eq!(rows, KEYS as u64, "one job per key");
    eprintln!("two processes racing on {KEYS} unique keys: {rows} jobs, identical ids");
    db.drop_db().await;
}

/// Two worker processes run the same every-second schedule: each tick is one job.
#[actix_rt::test]
async fn two_processes_scheduling_the_same_tick_make_one_job() {
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let db = TestDb::new("fault_cron_race").await;
    db.migrated().await;
    let mut workers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(&bin)
                .arg("process:jobs")
                .env("LIGHTJOBS_DATABASE_URL", &db.url)
                .env("LIGHTJOBS_TEST_RECURRING", "* * * * * *")
                .env_remove("DATABASE_URL")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("fault_worker starts")
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(4_300)).await;
    for w in &mut workers {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(30)).await.success());
    }
    let per_tick: Vec<(String, u64)> = {
        use mysql_async::prelude::*;
        let mut conn = db.pool.get_conn().await.unwrap();
        conn.query("SELECT unique_key, COUNT(*) FROM jobs GROUP BY unique_key")
            .await
            .unwrap()
    };
    eprintln!(
        "two processes on an every-second schedule for 4.3 s: {} ticks, {:?}",
        per_tick.len(),
        per_tick.iter().map(|t| t.1).collect::<Vec<_>>()
    );
    assert!((3..=6).contains(&per_tick.len()), "{per_tick:?}");
    assert!(
        per_tick.iter().all(|(_, n)| *n == 1),
        "a tick was enqueued twice: {per_tick:?}"
    );
    assert_eq!(duplicates(&db).await, 0, "a tick ran twice");
    db.drop_db().await;
}

/// The database is killed and comes back after longer than the staleness, while two live
/// worker processes run long jobs. Neither can vouch for its claims past its lease (half
/// its staleness), so both stop their runs; when the database is back each gives its jobs
/// back (attempts returned) and they run again, to the end, once. No live process is
/// judged dead from the stale heartbeats (a rescuer first has to see a heartbeat stand
/// still for a whole staleness after its own lease is back), so no single-attempt job
/// fails. The processes beat at very different rates: the fast one is back (and its
/// rescuer running) seconds before the slow one's next beat.
#[actix_rt::test]
async fn an_outage_longer_than_the_lease_stops_the_runs_and_each_job_then_runs_once() {
    const JOBS: u64 = 10;
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let mut server = PrivateServer::start("outage");
    let admin = mysql_async::Pool::new(server.url("mysql").as_str());
    {
        use mysql_async::prelude::*;
        let mut conn = admin.get_conn().await.unwrap();
        conn.query_drop("CREATE DATABASE app").await.unwrap();
    }
    admin.disconnect().await.unwrap();
    let url = server.url("app");
    let queue = JobQueue::connect(&url).unwrap();
    queue.migrate().await.unwrap();
    let mut single = Vec::new();
    for i in 0..JOBS {
        let dispatch = queue.dispatch(Work { millis: 12_000 });
        // Two of them (one per process) have a single attempt: a wrong rescue fails them.
        let dispatch = if i % 5 == 0 {
            dispatch.max_attempts(1)
        } else {
            dispatch
        };
        let id = dispatch.await.unwrap();
        if i % 5 == 0 {
            single.push(id);
        }
    }
    let log = audit_file("outage");
    let fast = [
        "--concurrency",
        "5",
        "--heartbeat",
        "0.2",
        "--stale-after",
        "1",
    ];
    let slow = [
        "--concurrency",
        "5",
        "--heartbeat",
        "2",
        "--stale-after",
        "5",
    ];
    let running = "SELECT COUNT(*) FROM jobs WHERE status = 'running'";
    let mut workers = vec![start_audited(&bin, &url, &log, &fast)];
    wait_count(&url, running, 5, Duration::from_secs(20)).await;
    workers.push(start_audited(&bin, &url, &log, &slow));
    wait_count(&url, running, JOBS, Duration::from_secs(20)).await;

    server.stop("-KILL");
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    server.start_again();
    let outage = down.elapsed();
    wait_count(
        &url,
        "SELECT COUNT(*) FROM jobs WHERE status IN ('processed', 'failed')",
        JOBS,
        Duration::from_secs(60),
    )
    .await;
    for w in &mut workers {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(30)).await.success());
    }
    let runs = runs_from_file(&log);
    let verdict = audit(&url, &runs, &[], |_| false).await;
    eprintln!(
        "database killed for {:.1}s under 2 live processes (staleness 1 s and 5 s) with \
         12 s jobs (single-attempt: {single:?})",
        outage.as_secs_f64()
    );
    verdict.assert_clean("database down longer than the staleness");
    assert_eq!(verdict.finished, JOBS, "every job ran to its end once");
    assert_eq!(
        verdict.runs,
        2 * JOBS,
        "each run from before the outage was stopped by its lease, then run again"
    );
    let _ = std::fs::remove_file(&log);
    drop(queue);
    drop(server);
}

/// A worker process is stopped (SIGSTOP, as a VM freeze or a long pause would) for longer
/// than its staleness: another process rescues its jobs and runs them (the ones on their
/// last attempt end `failed`). When it continues, its heartbeat shows the lapse, it checks
/// which claims are still its own and stops the runs it lost at once: none of them
/// finishes there, nothing is left running, nothing runs to completion twice.
#[actix_rt::test]
async fn a_stalled_process_learns_it_lost_its_jobs_and_stops_them() {
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let db = TestDb::new("fault_sigstop").await;
    let queue = db.migrated().await;
    let retried = queue
        .dispatch_many((0..4).map(|_| Work { millis: 6_000 }))
        .await
        .unwrap();
    let mut single = Vec::new();
    for _ in 0..4 {
        single.push(
            queue
                .dispatch(Work { millis: 6_000 })
                .max_attempts(1)
                .await
                .unwrap(),
        );
    }
    let log = audit_file("sigstop");
    let fast = [
        "--concurrency",
        "8",
        "--heartbeat",
        "0.2",
        "--stale-after",
        "1",
    ];
    let mut stalled = start_audited(&bin, &db.url, &log, &fast);
    db.wait_for("running", 8, Duration::from_secs(20)).await;
    let mut rescuer = start_audited(&bin, &db.url, &log, &fast);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&stalled, "-STOP");
    // Rescued: the single-attempt jobs fail, the others run in the rescuer process.
    db.wait_for("failed", 4, Duration::from_secs(20)).await;
    let stalled_for = Duration::from_secs(3);
    tokio::time::sleep(stalled_for).await;
    signal(&stalled, "-CONT");
    let resumed = Instant::now();
    db.wait_for("processed", 4, Duration::from_secs(30)).await;
    for w in [&mut stalled, &mut rescuer] {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(30)).await.success());
    }
    let runs = runs_from_file(&log);
    let pid = stalled.id().to_string();
    let verdict = audit(&db.url, &runs, std::slice::from_ref(&pid), |id| {
        single.contains(&id)
    })
    .await;
    verdict.assert_clean("a worker process stopped for 3 s (staleness 1 s)");
    let finished_in_stalled = runs
        .iter()
        .filter(|r| r.worker == pid && r.ended.is_some())
        .count();
    eprintln!(
        "SIGSTOP past the staleness: {} runs in the stalled process, {finished_in_stalled} \
         of them finished after it continued; all done {:.1}s after it continued",
        runs.iter().filter(|r| r.worker == pid).count(),
        resumed.elapsed().as_secs_f64()
    );
    assert_eq!(
        finished_in_stalled, 0,
        "a lost run went on to the end in the stalled process"
    );
    for id in &retried {
        assert_eq!(db.job(*id).await.0, "processed");
    }
    for id in &single {
        let (status, _, error) = db.job(*id).await;
        assert_eq!(status, "failed");
        assert!(error.unwrap().contains("stopped heartbeating"));
    }
    let _ = std::fs::remove_file(&log);
    db.drop_db().await;
}

/// A worker process stopped (SIGSTOP) past its staleness while 4 single-attempt jobs run;
/// their work is done during the stop (each sleep ends while the process is frozen). The
/// rescuer of another process fails them (no attempt left). When the process continues,
/// a run whose work had finished records its success: the job was done, so it becomes
/// `processed`, and an operator retrying a `failed` job would have sent the mail twice. A
/// run stopped by the fence instead stays `failed`. Either way the row says what happened.
#[actix_rt::test]
async fn a_run_that_finished_during_a_stall_records_its_success() {
    let _serial = SERIAL.lock().await;
    let bin = worker_binary();
    let db = TestDb::new("fault_sigstop_done").await;
    let queue = db.migrated().await;
    let mut single = Vec::new();
    for _ in 0..4 {
        single.push(
            queue
                .dispatch(Work { millis: 2_000 })
                .max_attempts(1)
                .await
                .unwrap(),
        );
    }
    let log = audit_file("sigstop-done");
    let fast = [
        "--concurrency",
        "8",
        "--heartbeat",
        "0.2",
        "--stale-after",
        "1",
    ];
    let mut stalled = start_audited(&bin, &db.url, &log, &fast);
    db.wait_for("running", 4, Duration::from_secs(20)).await;
    let mut rescuer = start_audited(&bin, &db.url, &log, &fast);
    signal(&stalled, "-STOP");
    db.wait_for("failed", 4, Duration::from_secs(20)).await;
    // Past the jobs' own 2 s: their work is done when the process continues.
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&stalled, "-CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in [&mut stalled, &mut rescuer] {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(30)).await.success());
    }
    let runs = runs_from_file(&log);
    let mut processed = 0;
    for id in &single {
        let finished = runs.iter().any(|r| r.job == *id && r.ended.is_some());
        let (status, _, error) = db.job(*id).await;
        let expected = if finished { "processed" } else { "failed" };
        assert_eq!(
            status, expected,
            "job {id}: its run finished: {finished}; {error:?}"
        );
        processed += u64::from(finished);
    }
    eprintln!("SIGSTOP past the staleness with work done during it: {processed} of 4 recorded as processed, the others stopped by the fence");
    assert!(
        runs.iter().filter(|r| single.contains(&r.job)).count() == 4,
        "a single-attempt job ran again"
    );
    let _ = std::fs::remove_file(&log);
    db.drop_db().await;
}

/// Batches under a kill -9 loop and refused writes: worker processes are killed one after
/// the other while batches run, and the server refuses some completions and every
/// release of a waiting job for a while. Each callback runs once (or once more per crash
/// of the process running it), and never before the last job of its batch finished.
#[actix_rt::test]
async fn batch_callbacks_run_once_and_last_under_a_kill_loop_and_refused_writes() {
    let _serial = SERIAL.lock().await;
    const BATCHES: usize = 6;
    const PER_BATCH: usize = 12;
    let db = TestDb::new("batch_kill_loop").await;
    let queue = db.migrated().await;
    common::faults::install(&db).await;
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let batch = queue
            .batch()
            .jobs((0..PER_BATCH).map(|i| Work {
                millis: 100 + 50 * i as u64,
            }))
            .on_complete(Work { millis: 0 })
            .dispatch()
            .await
            .unwrap();
        batches.push(batch);
    }
    use common::faults::Fault;
    common::faults::inject(
        &db,
        Fault::update("awaiting", "pending", 1213, Duration::from_secs(6)),
    )
    .await;
    common::faults::inject(
        &db,
        Fault::update("running", "processed", 1205, Duration::from_secs(6)).probability(0.3),
    )
    .await;
    let bin = worker_binary();
    let log = audit_file("batch_kill");
    let fast = [
        "--concurrency",
        "6",
        "--heartbeat",
        "0.2",
        "--stale-after",
        "1",
    ];
    let mut workers: Vec<Proc> = (0..2)
        .map(|_| start_audited(&bin, &db.url, &log, &fast))
        .collect();
    let mut killed = Vec::new();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let victim = &mut workers[round % 2];
        killed.push(victim.id().to_string());
        signal(victim, "-KILL");
        let _ = victim.wait();
        workers[round % 2] = start_audited(&bin, &db.url, &log, &fast);
    }
    let total = (BATCHES * (PER_BATCH + 1)) as u64;
    let kills_over = Instant::now();
    wait_count(
        &db.url,
        "SELECT COUNT(*) FROM jobs WHERE status IN ('processed', 'failed', 'cancelled')",
        total,
        Duration::from_secs(90),
    )
    .await;
    let settled_in = kills_over.elapsed();
    // Settled: a late second finish would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in &mut workers {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(30)).await.success());
    }
    let runs = runs_from_file(&log);
    let verdict = audit(&db.url, &runs, &killed, |_| false).await;
    verdict.assert_clean("batches under a kill -9 loop and refused writes");
    let mut early = Vec::new();
    for batch in &batches {
        let callback = batch.callbacks[0];
        let first_start = runs
            .iter()
            .filter(|r| r.job == callback)
            .map(|r| r.started)
            .min();
        let first_start = first_start.expect("every callback ran");
        let last_member = runs
            .iter()
            .filter(|r| batch.jobs.contains(&r.job))
            .map(|r| r.ended.unwrap_or(r.started))
            .max()
            .unwrap_or(0);
        if first_start <= last_member {
            early.push(callback);
        }
        let state = queue.batch_state(batch.id).await.unwrap().unwrap();
        assert_eq!(state.processed, PER_BATCH as u64, "{state:?}");
    }
    let callback_runs = runs
        .iter()
        .filter(|r| batches.iter().any(|b| b.callbacks[0] == r.job) && r.ended.is_some())
        .count();
    eprintln!(
        "{BATCHES} batches of {PER_BATCH}, 6 kills: {} runs, callbacks finished {callback_runs} \
         times, {} of them started early; all done {:.1}s after the last kill",
        runs.len(),
        early.len(),
        settled_in.as_secs_f64()
    );
    assert!(
        early.is_empty(),
        "callbacks that started before their batch's last job ended: {early:?}"
    );
    let _ = std::fs::remove_file(&log);
    db.drop_db().await;
}
