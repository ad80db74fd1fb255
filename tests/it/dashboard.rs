//! The dashboard against the real server: who gets in, what the page shows (escaped), the
//! buttons and their CSRF protection, and a real browser clicking Retry.

use crate::common;

use common::Drain;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::test as actix_test;
use actix_web::{web, App, HttpServer};
use common::{Flaky, Record, TestDb};
use lightjobs::{Dashboard, JobQueue, Workers};

const XSS: &str = "<script>alert(1)</script>";
const SAME_ORIGIN: &str = "http://localhost:8080";

/// Lets in requests carrying `x-admin: yes`, as an app's own auth would.
fn admin_dashboard() -> Dashboard {
    lightjobs::dashboard("/admin/jobs")
        .authorize(|req| req.headers().get("x-admin").is_some_and(|v| v == "yes"))
}

fn as_admin(req: actix_test::TestRequest) -> actix_test::TestRequest {
    req.insert_header(("x-admin", "yes"))
}

fn failing(message: &str) -> Flaky {
    Flaky {
        message: message.to_owned(),
        succeed_on: u32::MAX,
        permanent: true,
    }
}

/// Runs every ready `Flaky` job of the default queue until none is left.
async fn run_jobs(queue: &JobQueue) {
    Workers::new(queue.clone())
        .register::<Flaky>()
        .drain()
        .await;
}

fn header_of<B>(resp: &ServiceResponse<B>, name: header::HeaderName) -> String {
    resp.headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn body_text<B: MessageBody>(resp: ServiceResponse<B>) -> String {
    String::from_utf8_lossy(&actix_test::read_body(resp).await).into_owned()
}

/// The page as an admin sees it, and the CSRF token of its cookie.
async fn load_page<S, B>(app: &S) -> (String, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let resp = actix_test::call_service(
        app,
        as_admin(actix_test::TestRequest::get().uri("/admin/jobs")).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp
        .headers()
        .get(header::SET_COOKIE)
        .expect("the page sets the CSRF cookie")
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin/jobs"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let token = cookie
        .strip_prefix("lightjobs_csrf=")
        .and_then(|rest| rest.split(';').next())
        .expect("lightjobs_csrf=<token>")
        .to_owned();
    let html = body_text(resp).await;
    if html.contains("<form method=\"post\"") {
        assert!(
            html.contains(&format!("name=\"csrf\" value=\"{token}\"")),
            "the forms carry the cookie's token"
        );
    }
    (token, html)
}

/// A button's POST: the admin, with the cookie and the form field, from the page's origin.
fn button(token: &str, fields: &[(&str, &str)]) -> actix_test::TestRequest {
    let mut form = vec![("csrf", token)];
    form.extend_from_slice(fields);
    as_admin(actix_test::TestRequest::post().uri("/admin/jobs"))
        .insert_header((header::COOKIE, format!("lightjobs_csrf={token}")))
        .insert_header((header::ORIGIN, SAME_ORIGIN))
        .set_form(form)
}

/// The text of each cell of the table row that starts with `<tr{start}`.
fn row_cells(html: &str, start: &str) -> Vec<String> {
    let from = html
        .find(&format!("<tr{start}"))
        .unwrap_or_else(|| panic!("no row <tr{start} in the page"));
    let row = &html[from..from + html[from..].find("</tr>").unwrap()];
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let cell = &cell[cell.find('>').unwrap() + 1..];
            let mut text = String::new();
            let mut in_tag = false;
            for c in cell.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.trim().to_owned()
        })
        .collect()
}

#[actix_rt::test]
async fn without_an_authorisation_function_everything_is_refused() {
    let db = TestDb::new("dash_locked").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(failing("boom")).await.unwrap();
    run_jobs(&queue).await;
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue))
            .service(lightjobs::dashboard("/admin/jobs")),
    )
    .await;
    for req in [
        actix_test::TestRequest::get().uri("/admin/jobs"),
        actix_test::TestRequest::get().uri("/admin/jobs/"),
        actix_test::TestRequest::post()
            .uri("/admin/jobs")
            .set_form([("action", "retry_all")]),
    ] {
        let resp = actix_test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = body_text(resp).await;
        assert!(body.contains(".authorize(|req|"), "says how: {body}");
        assert!(!body.contains("boom"), "{body}");
    }
    assert_eq!(db.job(id).await.0, "failed");
    db.drop_db().await;
}

#[actix_rt::test]
async fn the_authorisation_function_decides_every_request() {
    let db = TestDb::new("dash_denied").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(failing("boom")).await.unwrap();
    run_jobs(&queue).await;
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let app = actix_test::init_service(App::new().app_data(web::Data::new(queue)).service(
        lightjobs::dashboard("/admin/jobs").authorize(move |req| {
            counter.fetch_add(1, Ordering::SeqCst);
            req.headers().get("x-admin").is_some_and(|v| v == "yes")
        }),
    ))
    .await;

    let resp = actix_test::call_service(
        &app,
        actix_test::TestRequest::get()
            .uri("/admin/jobs")
            .insert_header(("x-admin", "no"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    assert!(!body_text(resp).await.contains("boom"));

    // A valid token is no way around it: the POST asks the function too.
    let (token, _) = load_page(&app).await;
    let req = button(&token, &[("action", "retry"), ("id", &id.to_string())])
        .insert_header(("x-admin", "no"))
        .to_request();
    assert_eq!(
        actix_test::call_service(&app, req).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(db.job(id).await.0, "failed");
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    db.drop_db().await;
}

#[actix_rt::test]
async fn the_page_lists_queues_counts_paused_state_and_failed_jobs() {
    let db = TestDb::new("dash_page").await;
    let queue = db.migrated().await;
    let failed = queue
        .dispatch(failing("Recipient email address is missing"))
        .await
        .unwrap();
    let processed = queue
        .dispatch(Flaky {
            message: "never".into(),
            succeed_on: 1,
            permanent: true,
        })
        .await
        .unwrap();
    run_jobs(&queue).await;
    let pending = queue
        .dispatch(Record {
            tag: "welcome".into(),
        })
        .on_queue("mail")
        .await
        .unwrap();
    let scheduled = queue
        .dispatch(Record {
            tag: "later".into(),
        })
        .on_queue("mail")
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();
    queue.pause("reports").await.unwrap();

    // The queue given to the builder: no app data needed.
    let app = actix_test::init_service(App::new().service(admin_dashboard().queue(queue))).await;
    let (_, html) = load_page(&app).await;

    // pending, blocked, scheduled, awaiting, running, processed, failed, cancelled; state;
    // button.
    assert_eq!(
        row_cells(&html, "><td>default</td>"),
        ["default", "0", "0", "0", "0", "0", "1", "1", "0", "active", "Pause"]
    );
    assert_eq!(
        row_cells(&html, "><td>mail</td>"),
        ["mail", "1", "0", "1", "0", "0", "0", "0", "0", "active", "Pause"]
    );
    assert_eq!(
        row_cells(&html, "><td>reports</td>"),
        ["reports", "0", "0", "0", "0", "0", "0", "0", "0", "paused", "Resume"]
    );

    let cells = row_cells(&html, &format!(" id=\"job-{failed}\">"));
    assert_eq!(cells[0], failed.to_string());
    assert!(cells[1].starts_with("flaky"), "{cells:?}");
    assert_eq!(cells[2..4], ["default", "1/3"]);
    assert!(!cells[4].is_empty(), "finished time: {cells:?}");
    assert_eq!(cells[5], "Recipient email address is missing");
    assert_eq!(cells[6], "Retry Discard");
    assert!(html.contains("Retry all failed"));

    for (id, status) in [
        (processed, "processed"),
        (pending, "pending"),
        (scheduled, "scheduled"),
    ] {
        let table = &html[html.find(&format!("<table id=\"{status}\"")).unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        assert!(
            table.contains(&format!("<tr id=\"job-{id}\">")),
            "job {id} in {status}"
        );
    }
    assert_eq!(
        row_cells(&html, &format!(" id=\"job-{pending}\">"))[6],
        "Cancel"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn errors_payloads_and_queue_names_are_escaped() {
    let db = TestDb::new("dash_escape").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(failing(&format!("bad input {XSS}")))
        .await
        .unwrap();
    run_jobs(&queue).await;
    assert_eq!(
        db.job(id).await.2.as_deref(),
        Some("bad input <script>alert(1)</script>")
    );
    let payload: String = db
        .scalar(&format!("SELECT payload FROM jobs WHERE id = {id}"))
        .await;
    assert!(payload.contains(XSS), "{payload}");
    queue
        .dispatch(Record { tag: XSS.into() })
        .on_queue("<b>\"q\"</b>")
        .await
        .unwrap();
    queue.pause("<b>\"q\"</b>").await.unwrap();

    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue))
            .service(admin_dashboard()),
    )
    .await;
    let resp = actix_test::call_service(
        &app,
        as_admin(actix_test::TestRequest::get().uri("/admin/jobs")).to_request(),
    )
    .await;
    let csp = header_of(&resp, header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = body_text(resp).await;
    assert!(
        !html.to_lowercase().contains("<script"),
        "raw markup in the page"
    );
    assert!(!html.contains("<b>"), "raw queue name in the page");
    assert!(
        html.contains("bad input &lt;script&gt;alert(1)&lt;/script&gt;"),
        "the error, escaped"
    );
    assert!(
        html.contains("&quot;message&quot;:&quot;bad input &lt;script&gt;"),
        "the payload, escaped"
    );
    assert!(html.contains("<td>&lt;b&gt;&quot;q&quot;&lt;/b&gt;</td>"));
    assert!(html.contains("name=\"queue\" value=\"&lt;b&gt;&quot;q&quot;&lt;/b&gt;\""));
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_post_needs_the_token_and_the_page_origin() {
    let db = TestDb::new("dash_csrf").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(failing("boom")).await.unwrap();
    run_jobs(&queue).await;
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue))
            .service(admin_dashboard()),
    )
    .await;
    let (token, _) = load_page(&app).await;
    let other = "0".repeat(64);
    let retry = [("action", "retry"), ("id", &*id.to_string())];
    let post = || as_admin(actix_test::TestRequest::post().uri("/admin/jobs"));
    let form_with = |t: &str| {
        let mut form = vec![("csrf", t.to_owned())];
        form.extend(retry.iter().map(|(k, v)| (*k, (*v).to_owned())));
        form
    };

    let refused = [
        ("no token at all", post().set_form(retry)),
        (
            "no cookie",
            post()
                .insert_header((header::ORIGIN, SAME_ORIGIN))
                .set_form(form_with(&token)),
        ),
        (
            "no form field",
            post()
                .insert_header((header::COOKIE, format!("lightjobs_csrf={token}")))
                .set_form(retry),
        ),
        (
            "another token",
            post()
                .insert_header((header::COOKIE, format!("lightjobs_csrf={token}")))
                .set_form(form_with(&other)),
        ),
        (
            "not a form",
            post()
                .insert_header((header::COOKIE, format!("lightjobs_csrf={token}")))
                .set_json(serde_json::json!({ "csrf": token, "action": "retry", "id": id })),
        ),
        (
            "a foreign Origin",
            button(&token, &retry).insert_header((header::ORIGIN, "http://evil.example")),
        ),
        (
            "an opaque Origin",
            button(&token, &retry).insert_header((header::ORIGIN, "null")),
        ),
        (
            "a cross-site fetch",
            button(&token, &retry).insert_header(("sec-fetch-site", "cross-site")),
        ),
    ];
    for (what, req) in refused {
        let resp = actix_test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        assert_eq!(db.job(id).await.0, "failed", "{what}");
    }

    // No Origin (a non-browser client) with the token is fine: the token is the proof.
    let resp = actix_test::call_service(
        &app,
        post()
            .insert_header((header::COOKIE, format!("lightjobs_csrf={token}")))
            .set_form(form_with(&token))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    // Retried: a fresh set of attempts and no error of its last life.
    assert_eq!(db.job(id).await, ("pending".to_owned(), 0, None));
    db.drop_db().await;
}

#[actix_rt::test]
async fn buttons_retry_discard_and_cancel_jobs() {
    let db = TestDb::new("dash_jobs").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many((0..4).map(|i| failing(&format!("boom {i}"))))
        .await
        .unwrap();
    run_jobs(&queue).await;
    let waiting = queue
        .dispatch(Record { tag: "x".into() })
        .on_queue("mail")
        .await
        .unwrap();
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue))
            .service(admin_dashboard()),
    )
    .await;
    let (token, _) = load_page(&app).await;
    let press = |fields: Vec<(&'static str, String)>| {
        let fields: Vec<(&str, String)> = fields;
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        button(&token, &refs).to_request()
    };

    let resp = actix_test::call_service(
        &app,
        press(vec![("action", "retry".into()), ("id", ids[0].to_string())]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let location = header_of(&resp, header::LOCATION);
    assert_eq!(location, format!("/admin/jobs?done=retried&id={}", ids[0]));
    let (status, attempts, _) = db.job(ids[0]).await;
    assert_eq!((status.as_str(), attempts), ("pending", 0));
    let page = actix_test::call_service(
        &app,
        as_admin(actix_test::TestRequest::get().uri(&location)).to_request(),
    )
    .await;
    assert!(body_text(page)
        .await
        .contains(&format!("Job {} is pending again", ids[0])));

    // The same button again: nothing to do, and the page says so.
    let resp = actix_test::call_service(
        &app,
        press(vec![("action", "retry".into()), ("id", ids[0].to_string())]),
    )
    .await;
    assert_eq!(
        header_of(&resp, header::LOCATION),
        format!("/admin/jobs?done=unchanged&id={}", ids[0])
    );

    let resp = actix_test::call_service(
        &app,
        press(vec![
            ("action", "discard".into()),
            ("id", ids[1].to_string()),
        ]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let left: u64 = db
        .scalar(&format!("SELECT COUNT(*) FROM jobs WHERE id = {}", ids[1]))
        .await;
    assert_eq!(left, 0, "discarded");

    let resp = actix_test::call_service(&app, press(vec![("action", "retry_all".into())])).await;
    assert_eq!(
        header_of(&resp, header::LOCATION),
        "/admin/jobs?done=retried_all&n=2"
    );
    assert_eq!(db.count("failed").await, 0);
    assert_eq!(db.count("pending").await, 4);

    let resp = actix_test::call_service(
        &app,
        press(vec![
            ("action", "cancel".into()),
            ("id", waiting.to_string()),
        ]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(db.job(waiting).await.0, "cancelled");

    for bad in [
        vec![("action", "explode".into())],
        vec![("action", "retry".into())],
        vec![("action", "pause".into())],
        vec![("action", "pause".into()), ("queue", " padded ".into())],
    ] {
        let resp = actix_test::call_service(&app, press(bad.clone())).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_running_job_has_a_cancel_button_that_stops_it() {
    let db = TestDb::new("dash_cancel_running").await;
    let queue = db.migrated().await;
    let handle = common::workers(&db, &queue)
        .cancel_grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let id = queue
        .dispatch(common::Block {
            millis: 60_000,
            cooperative: false,
        })
        .await
        .unwrap();
    db.wait_for("running", 1, Duration::from_secs(10)).await;
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue.clone()))
            .service(admin_dashboard()),
    )
    .await;
    let (token, html) = load_page(&app).await;
    assert_eq!(row_cells(&html, &format!(" id=\"job-{id}\">"))[6], "Cancel");
    let id_text = id.to_string();
    let resp = actix_test::call_service(
        &app,
        button(&token, &[("action", "cancel"), ("id", &id_text)]).to_request(),
    )
    .await;
    assert_eq!(
        header_of(&resp, header::LOCATION),
        format!("/admin/jobs?done=cancelled&id={id}")
    );
    db.wait_for("cancelled", 1, Duration::from_secs(10)).await;
    assert_eq!(db.job(id).await.1, 0, "its attempt given back");
    handle.shutdown().await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn buttons_pause_and_resume_a_queue() {
    let db = TestDb::new("dash_pause").await;
    let queue = db.migrated().await;
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(queue.clone()))
            .service(admin_dashboard()),
    )
    .await;
    let (token, _) = load_page(&app).await;

    let queue_name = "mail & more";
    let resp = actix_test::call_service(
        &app,
        button(&token, &[("action", "pause"), ("queue", queue_name)]).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        header_of(&resp, header::LOCATION),
        "/admin/jobs?done=paused&queue=mail%20%26%20more"
    );
    assert_eq!(queue.paused_queues().await.unwrap(), [queue_name]);
    let (_, html) = load_page(&app).await;
    assert_eq!(
        row_cells(&html, "><td>mail &amp; more</td>")[9..],
        ["paused", "Resume"]
    );

    let resp = actix_test::call_service(
        &app,
        button(&token, &[("action", "resume"), ("queue", queue_name)]).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(queue.paused_queues().await.unwrap().is_empty());
    db.drop_db().await;
}

#[actix_rt::test]
async fn queue_errors_are_opaque_and_a_missing_queue_says_how_to_add_it() {
    let unreachable = JobQueue::connect("mysql://root@127.0.0.1:1/secret_db").unwrap();
    let app = actix_test::init_service(
        App::new()
            .app_data(web::Data::new(unreachable))
            .service(admin_dashboard()),
    )
    .await;
    let resp = actix_test::call_service(
        &app,
        as_admin(actix_test::TestRequest::get().uri("/admin/jobs")).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_text(resp).await;
    for secret in ["127.0.0.1", "secret_db", "root"] {
        assert!(!body.contains(secret), "{secret:?} leaked in {body:?}");
    }

    let app = actix_test::init_service(App::new().service(admin_dashboard())).await;
    let resp = actix_test::call_service(
        &app,
        as_admin(actix_test::TestRequest::get().uri("/admin/jobs")).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body_text(resp).await.contains("lightjobs::init"));
}

/// The Debian chromium, installed by `.ci/ensure-chromium`. Missing: a failure under CI,
/// else a skip with the reason.
fn chromium() -> Option<PathBuf> {
    let path = Path::new("/usr/bin/chromium");
    if path.exists() {
        return Some(path.to_owned());
    }
    let reason =
        "/usr/bin/chromium is missing: run `bash .ci/ensure-chromium` (apt-get install chromium)";
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        panic!("the dashboard's browser test needs a browser: {reason}");
    }
    eprintln!("SKIPPED a_browser_retries_a_failed_job: {reason}");
    None
}

/// Where a screenshot goes: the target directory, beside the build it shows.
fn screenshot_path(name: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join(name)
}

#[actix_rt::test]
async fn a_browser_retries_a_failed_job() {
    use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
    use headless_chrome::{Browser, LaunchOptions};
    use std::ffi::OsStr;

    let Some(chromium) = chromium() else { return };
    let db = TestDb::new("dash_browser").await;
    let queue = db.migrated().await;
    let workers = Workers::new(queue.clone())
        .register::<Flaky>()
        .register::<Record>()
        .data(db.pool.clone())
        .queues(["default", "mail"])
        .start()
        .await
        .unwrap();
    let id = queue
        .dispatch(Flaky {
            message: format!("card declined {XSS}"),
            succeed_on: 2,
            permanent: true,
        })
        .await
        .unwrap();
    let other = queue
        .dispatch(failing("Recipient email address is missing"))
        .await
        .unwrap();
    queue
        .dispatch(Record {
            tag: "welcome".into(),
        })
        .on_queue("mail")
        .await
        .unwrap();
    queue.pause("reports").await.unwrap();
    db.wait_for("failed", 2, Duration::from_secs(20)).await;
    // A retry starts again at attempt 1: from now on that attempt succeeds.
    db.exec(&format!(
        "UPDATE jobs SET payload = JSON_SET(payload, '$.succeed_on', 1) WHERE id = {id}"
    ))
    .await;

    let app_queue = queue.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_queue.clone()))
            .service(
                lightjobs::dashboard("/admin/jobs")
                    .authorize(|req| req.peer_addr().is_some_and(|a| a.ip().is_loopback())),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let url = format!("http://{}/admin/jobs", server.addrs()[0]);
    let server = server.run();
    let http = server.handle();
    let serving = actix_rt::spawn(server);

    let before = screenshot_path("dashboard-before.png");
    let saved = before.clone();
    let (browser, tab) = actix_rt::task::spawn_blocking(move || {
        let args = [
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        let options = LaunchOptions::default_builder()
            .path(Some(chromium))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1280, 1500)))
            .idle_browser_timeout(Duration::from_secs(120))
            .args(args.iter().map(OsStr::new).collect())
            .build()
            .expect("launch options");
        let browser = Browser::new(options).expect("chromium starts");
        let tab = browser.new_tab().expect("a tab");
        tab.navigate_to(&url).unwrap();
        // Waiting for what the test needs rather than for "navigated", whose events can
        // race the call.
        let retry = tab
            .wait_for_element(&format!("#failed #job-{id} button[value=retry]"))
            .unwrap();
        let html = tab.get_content().unwrap();
        assert!(html.contains(&format!("id=\"job-{id}\"")), "{html}");
        assert!(html.contains("card declined &lt;script&gt;"), "{html}");
        let scripts = tab
            .evaluate("document.scripts.length", false)
            .unwrap()
            .value;
        assert_eq!(
            scripts,
            Some(serde_json::json!(0)),
            "no script runs on the page"
        );
        let png = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        std::fs::write(&saved, png).unwrap();

        retry.click().unwrap();
        // The old page has no notice: this waits for the redirect's page.
        let notice = tab
            .wait_for_element(".notice")
            .unwrap()
            .get_inner_text()
            .unwrap();
        assert_eq!(
            notice,
            format!("Job {id} is pending again, with fresh attempts.")
        );
        (browser, tab)
    })
    .await
    .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while db.job(id).await.0 != "processed" {
        assert!(
            std::time::Instant::now() < deadline,
            "job {id}: {:?}",
            db.job(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        db.job(other).await.0,
        "failed",
        "only the clicked job was retried"
    );

    let shot = screenshot_path("dashboard.png");
    let saved = shot.clone();
    actix_rt::task::spawn_blocking(move || {
        // Marks this document, so that the wait below sees the reloaded one.
        tab.evaluate("document.body.dataset.stale = 'yes'", false)
            .unwrap();
        tab.reload(false, None).unwrap();
        tab.wait_for_element(&format!("body:not([data-stale]) #processed #job-{id}"))
            .expect("the job among the processed ones");
        let png = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        std::fs::write(&saved, png).unwrap();
        drop(browser);
    })
    .await
    .unwrap();
    println!(
        "dashboard screenshots: {} (before the click), {} (after)",
        before.display(),
        shot.display()
    );

    http.stop(true).await;
    serving.await.unwrap().unwrap();
    workers.shutdown().await;
    db.drop_db().await;
}

/// An address of this machine that is not loopback, if it has one: a client connecting
/// from it is "another machine" to a server listening on every address.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and source address.
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The demo as a newcomer runs it (`bash .ci/demo`): it prints where its dashboard and
/// metrics are; a browser on this machine sees the dashboard with the demo's jobs (the
/// screenshot is kept as `target/demo-dashboard.png`), the metrics count them, and a
/// client from another address gets neither. Ctrl-C then stops it cleanly.
#[actix_rt::test]
async fn the_demo_shows_its_dashboard_and_metrics_to_this_machine_only() {
    use common::http::{post_json, request};
    use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
    use headless_chrome::{Browser, LaunchOptions};

    let Some(chromium) = chromium() else { return };
    let db = TestDb::new("dash_demo").await;
    let (mut demo, port, printed) = common::procs::start_demo(&db.url, "0.0.0.0:0");
    let base = format!("http://0.0.0.0:{port}");
    assert!(printed.contains(&format!("{base}/admin/jobs")), "{printed}");
    assert!(printed.contains(&format!("{base}/metrics")), "{printed}");

    let here = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, _) = post_json(here, "/signup", r#"{"email":"ada@example.com"}"#).unwrap();
    assert_eq!(status, 202);
    let (status, _) = post_json(here, "/signup", r#"{"email":""}"#).unwrap();
    assert_eq!(status, 202);
    db.wait_for("processed", 1, Duration::from_secs(20)).await;
    db.wait_for("failed", 1, Duration::from_secs(20)).await;

    let (status, metrics) = request(here, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("lightjobs_jobs{queue=\"default\",status=\"failed\"} 1"),
        "{metrics}"
    );
    if let Some(ip) = non_loopback_ip() {
        let there = std::net::SocketAddr::new(ip, port);
        let (status, _) = request(there, "GET", "/metrics", None).unwrap();
        assert_eq!(status, 404, "metrics from {ip}");
        let (status, _) = request(there, "GET", "/admin/jobs", None).unwrap();
        assert_eq!(status, 403, "dashboard from {ip}");
        let (status, _) = request(there, "GET", "/stats", None).unwrap();
        assert_eq!(status, 200, "the rest of the demo answers everyone");
    } else {
        eprintln!("no non-loopback address here: only this machine's access was checked");
    }

    let shot = screenshot_path("demo-dashboard.png");
    let saved = shot.clone();
    let html = actix_rt::task::spawn_blocking(move || {
        let options = LaunchOptions::default_builder()
            .path(Some(chromium))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1280, 1000)))
            .build()
            .expect("launch options");
        let browser = Browser::new(options).expect("chromium starts");
        let tab = browser.new_tab().expect("a tab");
        let capture = || {
            tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
                .unwrap()
        };
        // The same window with nothing in it: what a page that failed to show would give.
        let blank = capture();
        tab.navigate_to(&format!("http://127.0.0.1:{port}/admin/jobs"))
            .unwrap();
        tab.wait_for_element("#failed button[value=retry]").unwrap();
        let png = capture();
        std::fs::write(&saved, &png).unwrap();
        (tab.get_content().unwrap(), blank.len())
    })
    .await
    .unwrap();
    let (html, blank) = html;
    assert!(
        html.contains("Recipient email address is missing"),
        "{html}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1280, "the whole window was captured");
    assert!(
        png.len() > 3 * blank,
        "a page, not a blank: {} bytes, a blank window {blank}",
        png.len()
    );

    common::procs::signal(&demo, "-INT");
    let status = common::procs::wait_exit(&mut demo, Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "the demo stops cleanly on Ctrl-C: {status}"
    );
    assert_eq!(db.count("running").await, 0);
    db.drop_db().await;
}

#[actix_rt::test]
async fn batches_show_their_progress_and_waiting_jobs_what_they_wait_for() {
    let db = TestDb::new("dash_batches").await;
    let queue = db.migrated().await;
    let record = |tag: &str| Record { tag: tag.into() };
    let batch = queue
        .batch()
        .description("nightly <export>")
        .jobs([record("a"), record("b"), record("c")])
        .on_success(record("done"))
        .dispatch()
        .await
        .unwrap();
    let first = queue.dispatch(record("first")).await.unwrap();
    let then = queue.dispatch(record("then")).after(first).await.unwrap();
    let app =
        actix_test::init_service(App::new().service(admin_dashboard().queue(queue.clone()))).await;
    let (token, html) = load_page(&app).await;
    // id, description (escaped), done/total, running, failed, state, created, finished.
    let cells = row_cells(&html, &format!(" id=\"batch-{}\">", batch.id));
    assert_eq!(
        cells[..6],
        [
            batch.id.to_string(),
            "nightly &lt;export&gt;".into(),
            "0/3".into(),
            "0".into(),
            "0".into(),
            "running".into()
        ]
    );
    // A batch's callback and a job after another wait, saying for what, and can be cancelled.
    let cells = row_cells(&html, &format!(" id=\"job-{then}\">"));
    assert_eq!(
        (cells[4].as_str(), cells[6].as_str()),
        (format!("job {first}").as_str(), "Cancel")
    );
    let callback = row_cells(&html, &format!(" id=\"job-{}\">", batch.callbacks[0]));
    assert_eq!(callback[4], format!("batch {}", batch.id));
    let then_text = then.to_string();
    let resp = actix_test::call_service(
        &app,
        button(&token, &[("action", "cancel"), ("id", &then_text)]).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(queue.find(then).await.unwrap().unwrap().status, "cancelled");
    db.drop_db().await;
}

#[actix_rt::test]
async fn the_job_lists_filter_by_tag() {
    let db = TestDb::new("dash_tag").await;
    let queue = db.migrated().await;
    let record = |tag: &str| Record { tag: tag.into() };
    let ours = queue
        .dispatch(record("a"))
        .tags(["tenant:42"])
        .await
        .unwrap();
    let theirs = queue
        .dispatch(record("b"))
        .tags(["tenant:7"])
        .await
        .unwrap();
    let app = actix_test::init_service(App::new().service(admin_dashboard().queue(queue))).await;
    let (_, html) = load_page(&app).await;
    assert!(html.contains(&format!("id=\"job-{theirs}\"")));
    assert!(
        html.contains("href=\"?tag=tenant:42\">#tenant:42</a>"),
        "tags link to their filter"
    );
    let resp = actix_test::call_service(
        &app,
        as_admin(actix_test::TestRequest::get().uri("/admin/jobs?tag=tenant%3A42")).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let html = String::from_utf8(actix_test::read_body(resp).await.to_vec()).unwrap();
    assert!(html.contains(&format!("id=\"job-{ours}\"")));
    assert!(
        !html.contains(&format!("id=\"job-{theirs}\"")),
        "filtered out"
    );
    assert!(html.contains("only jobs tagged <b>tenant:42</b>"));
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_job_has_a_page_with_its_row_in_full() {
    let db = TestDb::new("dash_job_page").await;
    let queue = db.migrated().await;
    let long = format!("<b>{}</b>", "x".repeat(3000));
    let first = queue
        .dispatch(Record { tag: long.clone() })
        .tags(["tenant:42"])
        .await
        .unwrap();
    let then = queue
        .dispatch(Record { tag: "then".into() })
        .after(first)
        .meta(serde_json::json!({ "by": "<ops>" }))
        .await
        .unwrap();
    let app =
        actix_test::init_service(App::new().service(admin_dashboard().queue(queue.clone()))).await;
    let (_, list) = load_page(&app).await;
    assert!(
        list.contains(&format!("<a href=\"?job={then}\">{then}</a>")),
        "ids link to their page"
    );
    let page = |id: u64| {
        as_admin(actix_test::TestRequest::get().uri(&format!("/admin/jobs?job={id}"))).to_request()
    };
    let resp = actix_test::call_service(&app, page(then)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let html = body_text(resp).await;
    assert!(html.contains(&format!("<title>Job {then} · lightjobs</title>")));
    assert!(
        html.contains(&format!("<a href=\"?job={first}\">job {first}</a>")),
        "what it waits for"
    );
    assert!(html.contains("<span class=\"badge awaiting\">awaiting</span>"));
    assert!(
        html.contains("{&quot;by&quot;:&quot;&lt;ops&gt;&quot;}"),
        "metadata, escaped"
    );
    assert!(
        html.contains(">Cancel</button>"),
        "a waiting job can be cancelled"
    );
    // The payload in full (the lists cut it at 500 characters), escaped.
    let html = body_text(actix_test::call_service(&app, page(first)).await).await;
    assert!(html.contains(&"x".repeat(3000)));
    assert!(html.contains("&lt;b&gt;") && !html.contains("<b>x"));
    assert!(html.contains("<a href=\"?tag=tenant:42\">#tenant:42</a>"));
    let html = body_text(actix_test::call_service(&app, page(999_999)).await).await;
    assert!(html.contains("id=\"no-job\""));
    db.drop_db().await;
}

#[actix_rt::test]
async fn a_job_page_shows_the_errors_of_its_failed_attempts() {
    let db = TestDb::new("dash_errors").await;
    let queue = db.migrated().await;
    // Fails 12 times with its attempt in the message; the history keeps the last 10.
    let id = queue
        .dispatch(common::Flaky {
            message: "card <declined>".into(),
            succeed_on: 99,
            permanent: false,
        })
        .max_attempts(12)
        .await
        .unwrap();
    let handle = common::workers(&db, &queue).start().await.unwrap();
    db.wait_for("failed", 1, Duration::from_secs(30)).await;
    handle.shutdown().await;
    let job = queue.find(id).await.unwrap().unwrap();
    let attempts: Vec<u32> = job.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, (3..=12).collect::<Vec<u32>>());
    assert!(job
        .errors
        .iter()
        .all(|e| e.error == "card <declined>" && e.at.len() == 26));
    let app = actix_test::init_service(App::new().service(admin_dashboard().queue(queue))).await;
    let req = as_admin(actix_test::TestRequest::get().uri(&format!("/admin/jobs?job={id}")));
    let html = body_text(actix_test::call_service(&app, req.to_request()).await).await;
    let table = &html[html.find("<table id=\"errors\"").expect("an errors table")..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(table.matches("card &lt;declined&gt;").count(), 10);
    assert!(
        table.find("<td class=\"n\">12</td>") < table.find("<td class=\"n\">3</td>"),
        "newest first"
    );
    assert!(
        html.contains(">Retry</button>"),
        "a failed job can be retried"
    );
    db.drop_db().await;
}
