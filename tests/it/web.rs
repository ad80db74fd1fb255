//! The actix-web glue against the real server: a handler's dispatch reaching the workers,
//! `init` with an installed queue, database errors as HTTP answers, and an HTTP server
//! sharing its process with the workers.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::test as actix_test;
use actix_web::{web, App, HttpResponse, HttpServer};
use common::http::post_json;
use common::{Block, Drain, Flaky, Record, TestDb};
use lightjobs::{JobOutcome, JobQueue, Workers};
use mysql_async::prelude::Queryable;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
struct Signup {
    tag: String,
}

async fn signup(
    queue: web::Data<JobQueue>,
    body: web::Json<Signup>,
) -> actix_web::Result<HttpResponse> {
    let id = queue
        .dispatch(Record {
            tag: body.into_inner().tag,
        })
        .await?;
    Ok(HttpResponse::Accepted().json(json!({ "job_id": id })))
}

async fn show_job(
    queue: web::Data<JobQueue>,
    id: web::Path<u64>,
) -> actix_web::Result<HttpResponse> {
    Ok(match queue.find(id.into_inner()).await? {
        Some(job) => HttpResponse::Ok().json(job),
        None => HttpResponse::NotFound().finish(),
    })
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/signup", web::post().to(signup))
        .route("/jobs/{id}", web::get().to(show_job));
}

fn signup_request(tag: &str) -> actix_test::TestRequest {
    actix_test::TestRequest::post()
        .uri("/signup")
        .set_json(json!({ "tag": tag }))
}

#[actix_rt::test]
async fn a_dispatch_from_a_handler_is_pending_until_the_workers_process_it() {
    let db = TestDb::new("web_dispatch").await;
    let queue = db.migrated().await;
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue.clone()))
            .configure(routes),
    )
    .await;

    let resp = actix_test::call_service(&app, signup_request("welcome ada").to_request()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = actix_test::read_body_json(resp).await;
    let id = body["job_id"].as_u64().expect("job_id is a number");
    assert_eq!(db.job(id).await.0, "pending");

    let workers = Workers::new(queue)
        .register::<Record>()
        .data(db.pool.clone())
        .stop_when_empty(true)
        .start()
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), workers.wait())
        .await
        .expect("workers stop once the queue is empty");
    assert_eq!(report.processed, 1);
    assert_eq!(db.job(id).await, ("processed".to_owned(), 1, None));
    let tag: String = db
        .scalar(&format!("SELECT tag FROM runs WHERE job_id = {id}"))
        .await;
    assert_eq!(tag, "welcome ada");
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_failed_job_shows_its_status_and_error_as_json() {
    let db = TestDb::new("web_record").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(Flaky {
            message: "Recipient email address is missing".into(),
            succeed_on: u32::MAX,
            permanent: true,
        })
        .await
        .unwrap();
    Workers::new(queue.clone())
        .register::<Flaky>()
        .drain()
        .await;

    let app =
        actix_test::init_service(App::new().app_data(web::Data::new(queue)).configure(routes))
            .await;
    let req = actix_test::TestRequest::get()
        .uri(&format!("/jobs/{id}"))
        .to_request();
    let job: serde_json::Value = actix_test::call_and_read_body_json(&app, req).await;
    assert_eq!(job["id"], id);
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["last_error"], "Recipient email address is missing");
    assert!(job["finished_at"].is_string(), "{job}");

    let req = actix_test::TestRequest::get()
        .uri(&format!("/jobs/{}", id + 1000))
        .to_request();
    assert_eq!(
        actix_test::call_service(&app, req).await.status(),
        StatusCode::NOT_FOUND
    );
    db.drop_db().await;
}

/// Set in the child process that `init_hands_actix_the_installed_queue` starts.
const INIT_CHILD: &str = "LIGHTJOBS_TEST_INIT_CHILD";

/// `JobQueue::install` is process-wide, and every other test here installs its own queue
/// through `Workers::start` (first one wins). So the parent re-runs this test alone in a
/// child process, where the install below is the only one.
#[test]
fn init_hands_actix_the_installed_queue() {
    // The test's name as the harness lists it: its module path without the crate's name.
    let name = format!(
        "{}::init_hands_actix_the_installed_queue",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    if std::env::var_os(INIT_CHILD).is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(INIT_CHILD, "1")
            // `init` must not fall back to the environment when a queue is installed.
            .env(
                "LIGHTJOBS_DATABASE_URL",
                "mysql://root@127.0.0.1:1/not_this_one",
            )
            .env_remove("DATABASE_URL")
            // …while the test's own database stays where the parent found it.
            .env("LIGHTJOBS_TEST_DATABASE_URL", common::base_url())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child test failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        return;
    }

    actix_rt::System::new().block_on(async {
        let db = TestDb::new("web_init").await;
        let queue = db.migrated().await;
        queue.install().expect("first install in this process");
        let other = JobQueue::connect("mysql://root@127.0.0.1:1/other").unwrap();
        assert!(other.install().is_err(), "a second install is refused");

        // Two apps, as actix builds one per HTTP worker thread: both get the same queue.
        for tag in ["first app", "second app"] {
            let app =
                actix_test::init_service(App::new().configure(lightjobs::init).configure(routes))
                    .await;
            let resp = actix_test::call_service(&app, signup_request(tag).to_request()).await;
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let body: serde_json::Value = actix_test::read_body_json(resp).await;
            let id = body["job_id"].as_u64().expect("job_id is a number");
            assert_eq!(db.job(id).await.0, "pending");
            let payload: String = db
                .scalar(&format!("SELECT payload FROM jobs WHERE id = {id}"))
                .await;
            assert!(payload.contains(tag), "{payload}");
        }
        assert_eq!(db.count("pending").await, 2);
        db.drop_db().await;
    });
}

#[actix_rt::test]
async fn an_unreachable_database_is_an_opaque_503() {
    // Port 1: nothing listens there, so the connection is refused at once.
    let queue = JobQueue::connect("mysql://root@127.0.0.1:1/unreachable_db").unwrap();
    let app =
        actix_test::init_service(App::new().app_data(web::Data::new(queue)).configure(routes))
            .await;
    let resp = actix_test::call_service(&app, signup_request("lost").to_request()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = actix_test::read_body(resp).await;
    let body = String::from_utf8_lossy(&body);
    assert!(!body.is_empty());
    for secret in ["127.0.0.1", ":1", "unreachable_db", "root", "mysql"] {
        assert!(!body.contains(secret), "{secret:?} leaked in {body:?}");
    }
}

#[actix_rt::test]
async fn an_unmigrated_database_is_an_opaque_500() {
    let db = TestDb::new("web_unmigrated").await;
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(db.queue()))
            .configure(routes),
    )
    .await;
    let resp = actix_test::call_service(&app, signup_request("too early").to_request()).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = actix_test::read_body(resp).await;
    let body = String::from_utf8_lossy(&body);
    for secret in ["migrat", "jobs", &db.name] {
        assert!(!body.contains(secret), "{secret:?} leaked in {body:?}");
    }
    db.drop_db().await;
}

#[actix_rt::test]
async fn http_server_and_workers_in_one_process_stop_together() {
    let db = TestDb::new("web_serve").await;
    let queue = db.migrated().await;
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let workers = Workers::new(queue.clone())
        .register::<Record>()
        .register::<Block>()
        .data(db.pool.clone())
        .on_event(move |e| {
            let _ = events_tx.send((e.id, e.outcome.clone(), Instant::now()));
        })
        .start()
        .await
        .unwrap();
    let app_queue = queue.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_queue.clone()))
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let http = server.handle();
    let serving = actix_rt::spawn(workers.serve(server));

    let sent = Instant::now();
    let (status, body) = actix_rt::task::spawn_blocking(move || {
        post_json(addr, "/signup", r#"{"tag":"over the wire"}"#)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = body["job_id"].as_u64().expect("job_id is a number");
    let (outcome, done) = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Some((event_id, outcome, at)) if event_id == id => break (outcome, at),
                Some(_) => {}
                None => panic!("the workers stopped before job {id} finished"),
            }
        }
    })
    .await
    .expect("job processed within 20 s");
    assert_eq!(outcome, JobOutcome::Processed);
    let in_db: i64 = db
        .scalar(&format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, created_at, finished_at) FROM jobs WHERE id = {id}"
        ))
        .await;
    eprintln!(
        "latency: request sent → result written {:?}; created_at → finished_at in the row {:?}",
        done - sent,
        Duration::from_micros(u64::try_from(in_db).unwrap_or(0))
    );

    // A job still running when the server stops: the workers' grace period lets it finish.
    let slow = queue
        .dispatch(Block {
            millis: 500,
            cooperative: false,
        })
        .await
        .unwrap();
    db.wait_for("running", 1, Duration::from_secs(10)).await;
    http.stop(true).await;
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("serve returns once the server and the workers stopped")
        .unwrap()
        .expect("the server ran without I/O errors");
    assert_eq!(db.job(id).await.0, "processed");
    assert_eq!(db.job(slow).await, ("processed".to_owned(), 1, None));
    assert_eq!(db.count("running").await, 0);

    // The workers are gone with the server: a new job is no longer picked up.
    let late = queue.dispatch(Record { tag: "late".into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(db.job(late).await.0, "pending");
    db.drop_db().await;
}

/// actix runs each HTTP worker on its own runtime. A queue first used on one that has since
/// stopped (a restarted or finished HTTP worker) keeps working on the others.
#[actix_rt::test]
async fn a_queue_outlives_the_runtime_that_first_used_it() {
    let db = TestDb::new("web_runtimes").await;
    db.migrated().await;
    let queue = JobQueue::builder(db.url.as_str())
        .pool_size(1)
        .build()
        .unwrap();
    let first = queue.clone();
    let id = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            first
                .dispatch(Record {
                    tag: "first".into(),
                })
                .await
                .unwrap()
        })
    })
    .join()
    .unwrap();
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        queue.dispatch(Record {
            tag: "second".into(),
        }),
    )
    .await
    .expect("dispatch did not hang")
    .expect("dispatch works after the first runtime ended");
    assert!(second > id);
    assert_eq!(db.count("pending").await, 2);
    db.drop_db().await;
}

#[actix_rt::test]
async fn metrics_are_served_in_the_prometheus_format() {
    let db = TestDb::new("web_metrics").await;
    let queue = db.migrated().await;
    common::records(&queue, 3).await;
    queue
        .dispatch(Record {
            tag: "later".into(),
        })
        .on_queue("reports")
        .delay(Duration::from_secs(600))
        .await
        .unwrap();
    Workers::new(queue.clone())
        .register::<Record>()
        .data(db.pool.clone())
        .drain()
        .await;
    let text = scrape(&queue).await;
    assert!(
        text.contains("lightjobs_jobs{queue=\"default\",status=\"processed\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("lightjobs_jobs{queue=\"reports\",status=\"scheduled\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lightjobs_job_runs_total{queue=\"default\",outcome=\"processed\"}"),
        "{text}"
    );
    assert!(
        text.contains("lightjobs_queue_latency_seconds_count{queue=\"default\"}"),
        "{text}"
    );
    db.drop_db().await;
}

/// Scrapes `/metrics` of an app holding `queue`.
async fn scrape(queue: &JobQueue) -> String {
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue.clone()))
            .service(lightjobs::metrics("/metrics")),
    )
    .await;
    let res = actix_test::call_service(
        &app,
        actix_test::TestRequest::get().uri("/metrics").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = actix_test::read_body(res).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// Jobs of a type no worker of this process runs are never claimed here; once they have
/// waited long they are reported (log and metric), and failed only when asked to.
#[actix_rt::test]
async fn long_waiting_jobs_of_unknown_types_are_reported_and_failed_only_when_asked() {
    let db = TestDb::new("web_unknown_types").await;
    let queue = db.migrated().await;
    db.exec(
        "INSERT INTO jobs (name, payload, status, queue, scheduled_at) VALUES \
         ('ghost', '{}', 'pending', 'ghosts', UTC_TIMESTAMP(6) - INTERVAL 10 MINUTE), \
         ('ghost', '{}', 'pending', 'ghosts', UTC_TIMESTAMP(6) - INTERVAL 20 MINUTE), \
         ('ghost', '{}', 'pending', 'ghosts', UTC_TIMESTAMP(6)), \
         ('ghost', '{}', 'pending', 'elsewhere', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)",
    )
    .await;
    let gauge = "lightjobs_jobs_waiting_unknown_type{queue=\"ghosts\",name=\"ghost\"} 2";
    let reporting = Workers::new(queue.clone())
        .register::<Record>()
        .queues(["ghosts"])
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(&queue).await;
        if text.contains(gauge) {
            break;
        }
        assert!(Instant::now() < deadline, "no gauge {gauge}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reporting.shutdown().await;
    assert_eq!(db.count("pending").await, 4, "reported, not touched");

    let failing = ghost_failer(&queue).await;
    db.wait_for("failed", 2, Duration::from_secs(15)).await;
    failing.shutdown().await;
    let mut conn = db.pool.get_conn().await.unwrap();
    let rows: Vec<(String, String, u32, Option<String>)> = conn
        .query("SELECT queue, status, attempts, last_error FROM jobs ORDER BY id")
        .await
        .unwrap();
    for failed in &rows[..2] {
        assert_eq!(failed.1, "failed", "{rows:?}");
        assert_eq!(failed.2, 0, "no attempt was spent: {rows:?}");
        let error = failed.3.clone().unwrap_or_default();
        assert!(
            error.starts_with(
                "unknown job `ghost`: no worker running this job type took it within 300s"
            ),
            "{error}"
        );
    }
    assert_eq!(
        rows[2].1, "pending",
        "a job that has not waited long is left"
    );
    assert_eq!(
        rows[3].1, "pending",
        "a queue this worker does not serve is left"
    );
    drop(conn);
    db.drop_db().await;
}

/// Failing jobs of an unknown type is refused by the server for a while (a trigger that
/// `SIGNAL`s on `pending` → `failed` for 1.5 s): the look fails, the jobs stay `pending`,
/// and the look is tried again within seconds, not after the minute between looks.
#[actix_rt::test]
async fn failing_unknown_types_refused_by_the_server_is_tried_again_soon() {
    use common::faults::{self, Fault};
    let db = TestDb::new("web_unknown_refused").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    db.exec(
        "INSERT INTO jobs (name, payload, status, queue, scheduled_at) VALUES \
         ('ghost', '{}', 'pending', 'ghosts', UTC_TIMESTAMP(6) - INTERVAL 10 MINUTE), \
         ('ghost', '{}', 'pending', 'ghosts', UTC_TIMESTAMP(6) - INTERVAL 20 MINUTE)",
    )
    .await;
    let rule = faults::inject(
        &db,
        Fault::update("pending", "failed", 1205, Duration::from_millis(1500)),
    )
    .await;
    let failing = ghost_failer(&queue).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults::fired(&db, rule).await == 0 {
        assert!(Instant::now() < deadline, "the first look did not try");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(db.count("pending").await, 2, "refused: nothing failed yet");
    // Well before the next minute's look.
    db.wait_for("failed", 2, Duration::from_secs(20)).await;
    failing.shutdown().await;
    let attempts: u64 = db.scalar("SELECT SUM(attempts) FROM jobs").await;
    assert_eq!(attempts, 0, "no attempt was spent");
    db.drop_db().await;
}

/// Workers on queue `ghosts` that run `Record` and fail other types after 5 minutes.
async fn ghost_failer(queue: &JobQueue) -> lightjobs::WorkerHandle {
    Workers::new(queue.clone())
        .register::<Record>()
        .queues(["ghosts"])
        .fail_unknown_after(Duration::from_secs(5 * 60))
        .start()
        .await
        .unwrap()
}
