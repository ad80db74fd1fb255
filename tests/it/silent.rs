//! Faults that raise no error (issue 17): a path to the database that stops forwarding
//! without closing (the loopback proxy's `hold`, a black hole), a process cut off while
//! others still reach the server, bad rows written by another program, long outages.
//! Each test injects the fault for real and audits what ran.

use crate::common;

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::test as actix_test;
use actix_web::{web, App, HttpResponse};
use common::audit::{audit, log_line, now_us, runs_from_file};
use common::http::post_json;
use common::procs::{
    audit_file, count_on, signal, start_audited, start_demo, wait_count, wait_exit, worker_binary,
    Work,
};
use common::proxy::{upstream, FaultProxy};
use common::server::PrivateServer;
use common::{Record, TestDb};
use lightjobs::{Error, JobQueue, Workers};

async fn dispatch_record(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
    let id = queue.dispatch(Record { tag: "http".into() }).await?;
    Ok(HttpResponse::Accepted().json(id))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A path that stops forwarding (no RST, no FIN) while a web app dispatches: every
/// dispatch answers 503 within the dispatch deadline (the default, 5 s), none hangs.
/// A dispatch still waiting for its turn when its deadline passed is never inserted, even
/// once the path comes back and what it held is delivered; only those whose error said
/// the statement had been sent may have been.
#[actix_rt::test]
async fn dispatches_into_a_black_hole_fail_within_the_deadline_and_insert_nothing_unsent() {
    let db = TestDb::new("silent_dispatch").await;
    db.migrated().await;
    let proxy = FaultProxy::start(upstream(&db.url));
    let queue = JobQueue::connect(&proxy.rewrite_url(&db.url)).unwrap();
    // Warm: the schema checked, a pooled connection on the path that is about to stop.
    queue
        .dispatch(Record {
            tag: "before".into(),
        })
        .await
        .unwrap();
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue.clone()))
            .route("/dispatch", web::post().to(dispatch_record)),
    )
    .await;

    proxy.hold(true);
    // Staggered, so that the statements in flight (4 at most) are taken and the rest wait
    // for their turn until their deadline.
    let direct = (0..30u64).map(|i| {
        let queue = queue.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(10 * i)).await;
            let started = Instant::now();
            let result = queue
                .dispatch(Record {
                    tag: format!("d{i}"),
                })
                .await;
            (started.elapsed(), result)
        }
    });
    let http = (0..5).map(|_| {
        let app = &app;
        async move {
            let started = Instant::now();
            let req = actix_test::TestRequest::post()
                .uri("/dispatch")
                .to_request();
            let resp = actix_test::call_service(app, req).await;
            (started.elapsed(), resp.status())
        }
    });
    let (direct, http) = futures::join!(
        futures::future::join_all(direct),
        futures::future::join_all(http)
    );
    let mut times: Vec<Duration> = direct.iter().map(|(t, _)| *t).collect();
    times.extend(http.iter().map(|(t, _)| *t));
    times.sort();
    let (p50, max) = (percentile(&times, 0.5), times[times.len() - 1]);
    eprintln!(
        "black hole: {} dispatches answered in p50 {p50:?}, max {max:?}",
        times.len()
    );
    for (_, status) in &http {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut may_be_inserted = 0;
    for (_, result) in &direct {
        match result {
            Err(e @ Error::Timeout { sent, .. }) => {
                assert!(e.is_unavailable());
                may_be_inserted += u64::from(*sent);
            }
            // Its statement needed a new connection, and connecting never finished.
            Err(e @ Error::Connect(_)) => assert!(e.is_unavailable()),
            other => panic!("expected a deadline error, got {other:?}"),
        }
    }
    assert!(
        may_be_inserted < 30,
        "every dispatch was sent: the test did not make any wait for its turn"
    );
    assert!(
        max < Duration::from_millis(5_500),
        "a dispatch took {max:?}, past the 5 s deadline"
    );

    // The path comes back: what it held reaches the server late.
    proxy.hold(false);
    let after = Instant::now();
    let id = loop {
        match queue
            .dispatch(Record {
                tag: "after".into(),
            })
            .await
        {
            Ok(id) => break id,
            Err(e) => {
                assert!(
                    after.elapsed() < Duration::from_secs(15),
                    "no dispatch went through after the path came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(id > 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows: u64 = db
        .scalar("SELECT COUNT(*) FROM jobs WHERE payload NOT LIKE '%before%' AND payload NOT LIKE '%after%'")
        .await;
    eprintln!(
        "black hole: {may_be_inserted} of 30 dispatches had been sent, {rows} rows of them (and of the 5 HTTP ones) arrived late"
    );
    // Each HTTP dispatch may have been sent too; nothing else may be there.
    assert!(
        rows <= may_be_inserted + 5,
        "{rows} rows inserted for {may_be_inserted} dispatches that had been sent"
    );
    drop(proxy);
    db.drop_db().await;
}

/// The fault workers' job type, run in this process too: it records each run in the
/// shared audit file, as the `fault_worker` processes do.
#[derive(serde::Serialize, serde::Deserialize)]
struct FileWork {
    millis: u64,
}

static AUDIT_PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl lightjobs::Job for FileWork {
    const NAME: &'static str = "work";
    const MAX_ATTEMPTS: u32 = 5;

    async fn execute(self, ctx: &lightjobs::JobContext) -> Result<(), lightjobs::JobError> {
        let path = AUDIT_PATH.get().cloned().unwrap_or_default();
        let run = fastrand::u64(..);
        let me = format!("app{}", std::process::id());
        log_line(
            &path,
            &format!(
                "start {run} {} {} {me} {}",
                ctx.id(),
                ctx.attempt(),
                now_us()
            ),
        );
        struct Cut(String, u64, bool);
        impl Drop for Cut {
            fn drop(&mut self) {
                if !self.2 {
                    log_line(&self.0, &format!("cut {} {}", self.1, now_us()));
                }
            }
        }
        let mut cut = Cut(path.clone(), run, false);
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        cut.2 = true;
        log_line(&path, &format!("end {run} {}", now_us()));
        Ok(())
    }
}

async fn dispatch_work(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
    let id = queue.dispatch(FileWork { millis: 100 }).await?;
    Ok(HttpResponse::Accepted().json(id))
}

/// The issue's black hole, scaled down for CI (set `LIGHTJOBS_TEST_BLACK_HOLE_FULL=1` for
/// its own figures: heartbeat 2 s, staleness 10 s, jobs of 20–30 s, a 40 s hole). Two live
/// processes reach the server through a path that stops forwarding without closing: a
/// worker process, and an actix app with its own workers (this process). A third process
/// reaches the server directly. The cut-off processes stop their runs when their lease
/// runs out (half the staleness), before the direct process may judge them dead and run
/// the jobs again: no job runs twice or overlaps itself, nothing is left unfinished, and
/// every dispatch the app takes during the hole answers 503 within the dispatch deadline.
#[actix_rt::test]
async fn a_black_holed_path_stops_the_cut_off_runs_before_they_are_rescued() {
    let _serial = crate::faults::SERIAL.lock().await;
    let full = std::env::var("LIGHTJOBS_TEST_BLACK_HOLE_FULL").is_ok();
    let (beat, stale, jobs_ms, hole) = if full {
        ("2", "10", (20_000u64, 30_000u64), Duration::from_secs(40))
    } else {
        ("0.5", "3", (6_000, 9_000), Duration::from_secs(12))
    };
    let bin = worker_binary();
    let db = TestDb::new("silent_black_hole").await;
    let queue = db.migrated().await;
    let log = audit_file("black-hole");
    let _ = AUDIT_PATH.set(log.clone());
    let mut single = Vec::new();
    for i in 0..12u64 {
        let millis = jobs_ms.0 + (jobs_ms.1 - jobs_ms.0) * i / 11;
        let d = queue.dispatch(Work { millis });
        let d = if i % 4 == 0 { d.max_attempts(1) } else { d };
        let id = d.await.unwrap();
        if i % 4 == 0 {
            single.push(id);
        }
    }
    let proxy = FaultProxy::start(upstream(&db.url));
    let through = proxy.rewrite_url(&db.url);
    let args = [
        "--concurrency",
        "4",
        "--heartbeat",
        beat,
        "--stale-after",
        stale,
    ];
    let mut cut_off = start_audited(&bin, &through, &log, &args);
    let app_queue = JobQueue::connect(&through).unwrap();
    let app = Workers::new(app_queue.clone())
        .register::<FileWork>()
        .concurrency(4)
        .heartbeat(
            Duration::from_secs_f64(beat.parse().unwrap()),
            Duration::from_secs_f64(stale.parse().unwrap()),
        )
        .start()
        .await
        .unwrap();
    let http = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(app_queue.clone()))
            .route("/dispatch", web::post().to(dispatch_work)),
    )
    .await;
    let running = "SELECT COUNT(*) FROM jobs WHERE status = 'running'";
    wait_count(&db.url, running, 8, Duration::from_secs(30)).await;
    let direct_args = [
        "--concurrency",
        "16",
        "--heartbeat",
        beat,
        "--stale-after",
        stale,
    ];
    let mut direct = start_audited(&bin, &db.url, &log, &direct_args);
    wait_count(&db.url, running, 12, Duration::from_secs(30)).await;

    proxy.hold(true);
    let held = Instant::now();
    let mut answers = Vec::new();
    while held.elapsed() + Duration::from_secs(6) < hole {
        let started = Instant::now();
        let req = actix_test::TestRequest::post()
            .uri("/dispatch")
            .to_request();
        let status = actix_test::call_service(&http, req).await.status();
        answers.push((started.elapsed(), status));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(hole.saturating_sub(held.elapsed())).await;
    proxy.hold(false);

    // Every row, the dispatches the app took during the hole included (those sent may
    // have been inserted late: they are jobs like any other, and must run once too).
    let unfinished = "SELECT COUNT(*) FROM jobs WHERE status NOT IN ('processed', 'failed')";
    let until = Instant::now() + Duration::from_secs(120);
    while count_on(&db.url, unfinished).await != Some(0) {
        assert!(
            Instant::now() < until,
            "jobs left unfinished after the hole"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in [&mut cut_off, &mut direct] {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(60)).await.success());
    }
    app.shutdown().await;
    let mut times: Vec<Duration> = answers.iter().map(|(t, _)| *t).collect();
    times.sort();
    eprintln!(
        "black hole of {hole:?} (heartbeat {beat} s, staleness {stale} s): {} HTTP dispatches \
         during it, {:?}; p50 {:?}, max {:?}",
        answers.len(),
        answers.iter().map(|(_, s)| s.as_u16()).collect::<Vec<_>>(),
        percentile(&times, 0.5),
        times.last()
    );
    assert!(!answers.is_empty());
    for (took, status) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            *took < Duration::from_millis(5_500),
            "a dispatch took {took:?}"
        );
    }
    let runs = runs_from_file(&log);
    let verdict = audit(&db.url, &runs, &[], |id| single.contains(&id)).await;
    verdict.assert_clean("a black-holed path to the server (two cut-off processes)");
    let _ = std::fs::remove_file(&log);
    drop(proxy);
    db.drop_db().await;
}

/// Rows another program (or a hand edit) can write, ahead of good jobs in the same queue:
/// each is decoded value by value, a bad one fails alone with an error naming the column,
/// a name that is not exactly one this worker runs is never claimed, and the good jobs
/// behind them all run once. The inspection tools read every such row without a panic.
#[actix_rt::test]
async fn bad_rows_from_another_program_fail_alone_and_hold_up_nothing() {
    let db = TestDb::new("silent_bad_rows").await;
    let queue = db.migrated().await;
    // MariaDB's default sql_mode refuses a zero date; another program's session need not.
    let bad = [
        (
            "zero date",
            "record",
            "'{\"tag\":\"zero\"}'",
            "pending",
            "'0000-00-00 00:00:00'",
            0,
            3,
        ),
        (
            "trailing space",
            "record ",
            "'{\"tag\":\"pad\"}'",
            "pending",
            "UTC_TIMESTAMP()",
            0,
            3,
        ),
        (
            "attempts over the max",
            "record",
            "'{\"tag\":\"over\"}'",
            "pending",
            "UTC_TIMESTAMP()",
            5,
            3,
        ),
        (
            "no attempts allowed",
            "record",
            "'{\"tag\":\"none\"}'",
            "pending",
            "UTC_TIMESTAMP()",
            0,
            0,
        ),
        (
            "status in capitals",
            "record",
            "'{\"tag\":\"caps\"}'",
            "PENDING",
            "UTC_TIMESTAMP()",
            0,
            3,
        ),
        (
            "status with a space",
            "record",
            "'{\"tag\":\"spaced\"}'",
            "pending ",
            "UTC_TIMESTAMP()",
            0,
            3,
        ),
        (
            "not JSON",
            "record",
            "'O:8:\"stdClass\":0:{}'",
            "pending",
            "UTC_TIMESTAMP()",
            0,
            3,
        ),
        (
            "a far future date",
            "record",
            "'{\"tag\":\"far\"}'",
            "pending",
            "'9999-12-31 23:59:59'",
            0,
            3,
        ),
        (
            "running, held by nobody",
            "record",
            "'{\"tag\":\"orphan\"}'",
            "running",
            "UTC_TIMESTAMP()",
            1,
            3,
        ),
    ];
    let mut ids = Vec::new();
    for (what, name, payload, status, at, attempts, max) in bad {
        db.exec(&format!(
            "SET SESSION sql_mode = ''; INSERT INTO jobs (name, queue, payload, status, \
             scheduled_at, created_at, attempts, max_attempts) VALUES ('{name}', 'default', \
             {payload}, '{status}', {at}, {at}, {attempts}, {max})"
        ))
        .await;
        let id: u64 = db.scalar("SELECT MAX(id) FROM jobs").await;
        ids.push((what, id));
    }
    let good = queue
        .dispatch_many((0..200).map(|i| Record {
            tag: format!("good-{i}"),
        }))
        .await
        .unwrap();
    // A staleness that a loaded CI machine cannot outrun by accident: a fence trip there
    // reruns a job that had done its work, which is allowed, and not what this tests.
    let workers = common::workers(&db, &queue)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let ran: u64 = db
            .scalar("SELECT COUNT(DISTINCT job_id) FROM runs WHERE tag LIKE 'good-%'")
            .await;
        let orphan = db.job(ids[8].1).await.0;
        if ran == 200 && orphan == "processed" {
            break;
        }
        assert!(
            Instant::now() < until,
            "{ran} of 200 good jobs ran; the orphan is {orphan}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Inspection reads every row, whatever it holds.
    let listed = queue.list("failed", None, 100).await.unwrap();
    let stats = queue.stats().await.unwrap();
    let zero = queue.find(ids[0].1).await.unwrap().unwrap();
    workers.shutdown().await;
    let twice: u64 = db
        .scalar(
            "SELECT COUNT(*) FROM (SELECT job_id FROM runs GROUP BY job_id HAVING COUNT(*) > 1) t",
        )
        .await;
    assert_eq!(twice, 0, "a job ran twice");
    assert!(good.iter().all(|id| *id > ids[8].1));
    let state = |i: usize| db.job(ids[i].1);
    let (status, _, _) = state(0).await;
    assert_eq!(status, "processed", "a zero date is due: it runs");
    assert!(zero.scheduled_at.starts_with("0000-00-00"), "{zero:?}");
    assert_eq!(
        state(1).await,
        ("pending".into(), 0, None),
        "`record ` is not `record`"
    );
    for (i, column) in [(2, "`attempts` (5)"), (3, "`max_attempts` (0)")] {
        let (status, _, error) = state(i).await;
        assert_eq!(status, "failed", "{}", ids[i].0);
        let error = error.unwrap_or_default();
        assert!(error.contains(column), "{}: {error}", ids[i].0);
    }
    assert_eq!(
        state(4).await.0,
        "PENDING",
        "a status that is not ours is left alone"
    );
    assert_eq!(
        state(5).await.0,
        "processed",
        "`pending ` compares equal to `pending`"
    );
    let (status, _, error) = state(6).await;
    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("column `payload`") && error.contains("stdClass"),
        "{error}"
    );
    assert_eq!(state(7).await.0, "processed");
    assert!(listed.len() >= 3, "{listed:?}");
    assert!(stats.iter().any(|c| c.status == "PENDING"), "{stats:?}");
    for (what, id) in &ids {
        eprintln!("bad row ({what}): {:?}", db.job(*id).await);
    }
    db.drop_db().await;
}

/// MySQL has no `RETURNING`: a combined INSERT there learns its ids as consecutive from the
/// first, `@@auto_increment_increment` apart. That step is read when the queue first checks
/// the server, never after an INSERT: a read that failed after a committed INSERT would
/// tell every caller "nothing written", and their retries would insert the rows again.
/// (MySQL's path, taken on MariaDB through a test hook; a proxy cuts any statement that
/// reads the step.) Needs the `test-hooks` feature (`bash .ci/test` enables every feature).
#[cfg(feature = "test-hooks")]
#[actix_rt::test]
async fn a_combined_insert_on_mysql_reads_nothing_after_it_commits() {
    let db = TestDb::new("silent_autoinc").await;
    db.migrated().await;
    let proxy = FaultProxy::start(upstream(&db.url));
    let queue = JobQueue::builder(proxy.rewrite_url(&db.url))
        .__consecutive_ids()
        .build()
        .unwrap();
    let first = queue
        .dispatch(Record {
            tag: "first".into(),
        })
        .await
        .unwrap();
    proxy.cut_before("auto_increment_increment", 100);
    let ids = futures::future::join_all((0..20).map(|i| {
        let queue = queue.clone();
        async move {
            queue
                .dispatch(Record {
                    tag: format!("{i}"),
                })
                .await
        }
    }))
    .await;
    let mut ids: Vec<u64> = ids.into_iter().map(Result::unwrap).collect();
    ids.push(first);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 21, "every dispatch has an id of its own");
    let rows: u64 = db.scalar("SELECT COUNT(*) FROM jobs").await;
    assert_eq!(rows, 21, "each row inserted once");
    let listed: Vec<u64> = {
        use mysql_async::prelude::Queryable;
        let mut conn = db.pool.get_conn().await.unwrap();
        conn.query("SELECT id FROM jobs ORDER BY id").await.unwrap()
    };
    assert_eq!(listed, ids, "the ids returned are the rows' ids");
    assert_eq!(proxy.fired(), 0, "the step was read after an INSERT");
    drop(proxy);
    db.drop_db().await;
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A long outage (the server killed) under steady HTTP dispatch load on an actix app with
/// idle workers of its own (the demo): every dispatch gets its 503 at once, the app's
/// memory stays flat (nothing queues without bound, no task lives on per refused
/// dispatch), and once the server is back the app writes no release for dispatches that
/// never reached it. `LIGHTJOBS_TEST_OUTAGE_SECS` sets the outage (30 s by default; the
/// note of issue 17 reports 600).
#[actix_rt::test]
async fn a_long_outage_under_dispatch_load_keeps_memory_flat_and_writes_nothing_extra() {
    let _serial = crate::faults::SERIAL.lock().await;
    let outage = Duration::from_secs(
        std::env::var("LIGHTJOBS_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let mut server = PrivateServer::start("outage_load");
    {
        let admin = mysql_async::Pool::new(server.url("mysql").as_str());
        let mut conn = admin.get_conn().await.unwrap();
        mysql_async::prelude::Queryable::query_drop(&mut conn, "CREATE DATABASE app")
            .await
            .unwrap();
        drop(conn);
        admin.disconnect().await.unwrap();
    }
    let proxy = FaultProxy::start(upstream(&server.url("app")));
    let (demo, port, _) = start_demo(&proxy.rewrite_url(&server.url("app")), "127.0.0.1:0");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let load = Load::start(addr);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = rss_kib(demo.id());
    let served_before = load.taken();
    server.stop("-KILL");
    let down = Instant::now();
    let mut peak = before;
    while down.elapsed() < outage {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(rss_kib(demo.id()));
    }
    let at_end = rss_kib(demo.id());
    let refused = load.taken();
    server.start_again();
    // Only what the app sends once the server is back is counted.
    for pattern in RELEASES {
        proxy.count(pattern);
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = load.stop();
    let releases: usize = RELEASES.iter().map(|p| proxy.counted(p)).sum();
    let during: Vec<&(Duration, u16)> = refused.answers[served_before.answers.len()..]
        .iter()
        .filter(|(_, status)| *status != 202)
        .collect();
    let mut times: Vec<Duration> = during.iter().map(|(t, _)| *t).collect();
    times.sort();
    eprintln!(
        "outage of {outage:?} under {} dispatches ({} refused, p50 {:?}, max {:?}): RSS \
         {before} KiB before, {peak} KiB at most, {at_end} KiB at its end; after recovery \
         {} dispatches accepted, {releases} release statements",
        during.len(),
        during.iter().filter(|(_, s)| *s == 503).count(),
        percentile(&times, 0.5),
        times.last(),
        after.answers.len() - refused.answers.len(),
    );
    assert!(
        during.len() > 100,
        "the load did not go on during the outage"
    );
    assert!(
        during.iter().all(|(_, s)| *s == 503),
        "every refused dispatch is a 503"
    );
    assert!(percentile(&times, 0.5) < Duration::from_millis(100));
    assert!(
        peak < before + 8 * 1024,
        "memory grew from {before} to {peak} KiB"
    );
    assert!(releases <= 5, "{releases} releases after the outage");
    assert!(
        after.answers[refused.answers.len()..]
            .iter()
            .any(|(_, s)| *s == 202),
        "dispatches were accepted again after the server came back"
    );
    drop(demo);
    drop(proxy);
}

/// The release statements: of claims (`release_jobs`) and of handed-off rows.
const RELEASES: [&str; 2] = [
    "attempts = GREATEST(attempts, 1) - 1",
    "attempts = 0, reserved_by = NULL, reserved_at = NULL, claim_token = NULL",
];

/// Steady HTTP dispatch load on a thread of its own: one `POST /signup` about every 5 ms.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answers: std::sync::Arc<std::sync::Mutex<Vec<(Duration, u16)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Answers {
    answers: Vec<(Duration, u16)>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let started = Instant::now();
                let body = format!(r#"{{"email":"user{i}@example.com"}}"#);
                let status = post_json(addr, "/signup", &body).map_or(0, |(status, _)| status);
                a.lock().unwrap().push((started.elapsed(), status));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    fn taken(&self) -> Answers {
        Answers {
            answers: self.answers.lock().unwrap().clone(),
        }
    }

    fn stop(mut self) -> Answers {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.taken()
    }
}

/// While the database does not answer, dispatches wait for their turn only up to a bound
/// (`defaults::MAX_WAITING_DISPATCHES`): past it a dispatch fails at once as unavailable
/// (503) instead of queueing without bound, and once the waiting ones give up (their
/// deadline) there is room again.
#[actix_rt::test]
async fn past_the_bound_on_waiting_dispatches_a_dispatch_fails_at_once() {
    let db = TestDb::new("silent_backlog").await;
    db.migrated().await;
    let proxy = FaultProxy::start(upstream(&db.url));
    let queue = JobQueue::connect(&proxy.rewrite_url(&db.url)).unwrap();
    queue.dispatch(Record { tag: "warm".into() }).await.unwrap();
    proxy.hold(true);
    let bound = lightjobs::defaults::MAX_WAITING_DISPATCHES;
    let waiting: Vec<_> = (0..bound + 50)
        .map(|i| {
            let queue = queue.clone();
            actix_rt::spawn(async move {
                queue
                    .dispatch(Record {
                        tag: format!("{i}"),
                    })
                    .await
            })
        })
        .collect();
    // Let them all reach the combiner's list.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let refused = queue
        .dispatch(Record {
            tag: "one more".into(),
        })
        .await;
    let took = started.elapsed();
    let mut backlog = 0;
    for w in waiting {
        if matches!(w.await.unwrap(), Err(Error::Backlog(_))) {
            backlog += 1;
        }
    }
    eprintln!(
        "waiting dispatches: {} of {} refused at once past the bound of {bound}; one more \
         answered in {took:?}",
        backlog,
        bound + 50
    );
    assert!(matches!(refused, Err(Error::Backlog(_))), "{refused:?}");
    assert!(refused.as_ref().unwrap_err().is_unavailable());
    assert!(took < Duration::from_millis(100), "{took:?}");
    assert!(backlog >= 50, "{backlog}");
    proxy.hold(false);
    // Their deadlines passed: the places are free again.
    let after = queue
        .dispatch(Record {
            tag: "after".into(),
        })
        .await;
    assert!(after.is_ok(), "{after:?}");
    drop(proxy);
    db.drop_db().await;
}
