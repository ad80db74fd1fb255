//! [`Dashboard`]: a server-rendered admin page for the queues, mounted in your own app.
//!
//! It shows the job counts per queue and status, which queues are paused, the recent
//! failed jobs with their errors and the recent jobs of every other status; its buttons
//! retry, discard and cancel jobs and pause and resume queues. Every action is also a
//! command of [`cli`](crate::cli).
//!
//! Safety, because the page changes production data:
//!
//! - **Closed by default.** Without [`Dashboard::authorize`] every request is refused with
//!   403; the function is asked on every request, the buttons' POSTs included.
//! - **No cross-site requests.** A POST needs the token of a `SameSite=Strict; HttpOnly`
//!   cookie echoed in its form (compared in constant time), and is refused when its `Origin`
//!   is not the request's host or the browser says it comes from another site.
//! - **Everything shown is escaped**: payloads and errors are user data. The page carries
//!   no script, and its `Content-Security-Policy` would block any.

mod guard;
mod job_page;
mod page;

use std::sync::Arc;

use actix_web::dev::{AppService, HttpServiceFactory};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::error::Error;
use crate::queue::JobQueue;
use guard::{admit, cross_site, csrf_cookie, new_csrf_token, same_token};

/// Failed jobs listed, newest first: enough to see a pattern, few enough to read.
const FAILED_SHOWN: u64 = 50;
/// Jobs listed for each other status: a glimpse of what moves, not a report.
const RECENT_SHOWN: u64 = 10;

const CSRF_COOKIE: &str = "lightjobs_csrf";
/// 32 random bytes, hex-encoded.
const TOKEN_LEN: usize = 64;

const LOCKED: &str = "The lightjobs dashboard is locked: it has no authorisation function. \
     Mount it with lightjobs::dashboard(\"/admin/jobs\").authorize(|req| /* true when \
     this request may see and change the jobs */).";

const NO_QUEUE: &str = "The lightjobs dashboard has no JobQueue: add \
     .configure(lightjobs::init) or .app_data(web::Data::new(queue)) to the App, or pass \
     one with Dashboard::queue.";

type Authorize = dyn Fn(&HttpRequest) -> bool + Send + Sync;

/// A dashboard to mount at `path`; shorthand for [`Dashboard::new`].
pub fn dashboard(path: &str) -> Dashboard {
    Dashboard::new(path)
}

/// The jobs dashboard, an actix service: `App::new().service(dashboard)`.
///
/// It answers GET (the page) and POST (its buttons) at `path` and `path/`. The queue is
/// the app's `web::Data<JobQueue>` (what [`init`](crate::init) puts there) unless
/// [`queue`](Self::queue) gives one. Build it inside the `HttpServer::new` closure, or
/// build it once and clone it there.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
///
/// # async fn run() -> std::io::Result<()> {
/// HttpServer::new(|| {
///     App::new().configure(lightjobs::init).service(
///         lightjobs::dashboard("/admin/jobs")
///             // Your own rule. An auth middleware can leave the user in the request's
///             // extensions for this function to read.
///             .authorize(|req| req.peer_addr().is_some_and(|a| a.ip().is_loopback())),
///     )
/// })
/// .bind(("127.0.0.1", 8080))?
/// .run()
/// .await
/// # }
/// ```
///
/// Without [`authorize`](Self::authorize) it refuses everything:
///
/// ```
/// use actix_web::{http::StatusCode, test, App};
///
/// # actix_rt::System::new().block_on(async {
/// let app = test::init_service(App::new().service(lightjobs::dashboard("/admin/jobs"))).await;
/// let req = test::TestRequest::get().uri("/admin/jobs").to_request();
/// assert_eq!(test::call_service(&app, req).await.status(), StatusCode::FORBIDDEN);
/// # });
/// ```
#[derive(Clone)]
#[must_use]
pub struct Dashboard {
    path: String,
    authorize: Option<Arc<Authorize>>,
    queue: Option<JobQueue>,
}

impl Dashboard {
    /// A dashboard at `path` (a literal path such as `/admin/jobs`), refusing every
    /// request until [`authorize`](Self::authorize) is given.
    pub fn new(path: impl Into<String>) -> Self {
        Dashboard {
            path: path.into(),
            authorize: None,
            queue: None,
        }
    }

    /// Who may use the dashboard: `allow` sees each request (page and buttons alike) and
    /// returns true to let it through; false answers 403.
    pub fn authorize<F>(mut self, allow: F) -> Self
    where
        F: Fn(&HttpRequest) -> bool + Send + Sync + 'static,
    {
        self.authorize = Some(Arc::new(allow));
        self
    }

    /// The queue to show, instead of the app's `web::Data<JobQueue>`.
    pub fn queue(mut self, queue: JobQueue) -> Self {
        self.queue = Some(queue);
        self
    }
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("path", &self.path)
            .field("authorize", &self.authorize.is_some())
            .field("queue", &self.queue)
            .finish()
    }
}

/// What the handlers need from the builder, stored on the dashboard's own resource so that
/// two dashboards in one app keep theirs apart.
struct Settings {
    authorize: Option<Arc<Authorize>>,
}

impl HttpServiceFactory for Dashboard {
    fn register(self, config: &mut AppService) {
        let trimmed = self.path.trim().trim_end_matches('/');
        let base = if trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        };
        let patterns = if base == "/" {
            vec![base]
        } else {
            vec![base.clone(), format!("{base}/")]
        };
        let mut resource = web::resource(patterns).app_data(web::Data::new(Settings {
            authorize: self.authorize,
        }));
        if let Some(queue) = self.queue {
            resource = resource.app_data(web::Data::new(queue));
        }
        resource
            .route(web::get().to(show))
            .route(web::post().to(act))
            .register(config);
    }
}

/// The page's query after an action: what the redirect reports.
#[derive(Debug, Default, Deserialize)]
struct Outcome {
    done: Option<String>,
    id: Option<u64>,
    n: Option<u64>,
    queue: Option<String>,
    /// Show only the jobs with this tag.
    tag: Option<String>,
    /// Show this job's page.
    job: Option<u64>,
}

/// A button's form.
#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    id: Option<u64>,
    queue: Option<String>,
}

async fn show(
    req: HttpRequest,
    settings: web::Data<Settings>,
    outcome: Option<web::Query<Outcome>>,
) -> actix_web::Result<HttpResponse> {
    admit(&req, &settings)?;
    let queue = queue_of(&req)?;
    let token = match csrf_cookie(&req).next() {
        Some(token) => token.to_owned(),
        None => new_csrf_token()?,
    };
    let outcome = outcome.map(web::Query::into_inner).unwrap_or_default();
    let notice = page::notice(&outcome);
    let html = if let Some(id) = outcome.job {
        let job = queue.find(id).await?;
        job_page::render(job.as_ref(), id, &token, &notice)
    } else {
        let tag = outcome.tag.as_deref().filter(|t| !t.is_empty());
        let snapshot = page::Snapshot::load(&queue, tag).await?;
        page::render(&snapshot, &token, &notice)
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"));
    // A cookie the browser will not store would make every button fail: `/` rather than a
    // path with characters a Set-Cookie attribute cannot carry.
    let path = req.path().trim_end_matches('/');
    let path = if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
        "/"
    } else {
        path
    };
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict"
    )) {
        response.insert_header((header::SET_COOKIE, cookie));
    }
    Ok(response.body(html))
}

async fn act(
    req: HttpRequest,
    settings: web::Data<Settings>,
    form: Option<web::Form<ActionForm>>,
) -> actix_web::Result<HttpResponse> {
    admit(&req, &settings)?;
    if cross_site(&req) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "Cross-site request refused: use the dashboard's own buttons.",
        ));
    }
    let Some(form) = form
        .map(web::Form::into_inner)
        .filter(|form| csrf_cookie(&req).any(|token| same_token(token, &form.csrf)))
    else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "Missing or stale CSRF token: reload the dashboard and try again.",
        ));
    };
    let queue = queue_of(&req)?;
    let outcome = match perform(&queue, form).await {
        Ok(outcome) => outcome,
        Err(Error::Invalid { what, reason }) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                &format!("Invalid {what}: {reason}"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    // Back to the page with a GET (303), so that reloading it does not repeat the action.
    let location = format!("{}?{}", req.path(), outcome);
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish())
}

/// Runs a button's action; the result is the redirect's query.
async fn perform(queue: &JobQueue, form: ActionForm) -> crate::Result<String> {
    let missing = |what| Error::invalid(what, "missing from the form");
    let id = || form.id.ok_or_else(|| missing("job id"));
    let queue_name = || form.queue.as_deref().ok_or_else(|| missing("queue"));
    let job_done = |verb: &str, id: u64, changed: bool| {
        let done = if changed { verb } else { "unchanged" };
        format!("done={done}&id={id}")
    };
    Ok(match form.action.as_str() {
        "retry" => {
            let id = id()?;
            job_done("retried", id, queue.retry_failed(id).await?)
        }
        "discard" => {
            let id = id()?;
            job_done("discarded", id, queue.discard_failed(id).await?)
        }
        "cancel" => {
            let id = id()?;
            job_done("cancelled", id, queue.cancel(id).await?)
        }
        "retry_all" => format!("done=retried_all&n={}", queue.retry_all_failed(None).await?),
        "pause" => {
            let name = queue_name()?;
            queue.pause(name).await?;
            format!("done=paused&queue={}", url_encode(name))
        }
        "resume" => {
            let name = queue_name()?;
            queue.resume(name).await?;
            format!("done=resumed&queue={}", url_encode(name))
        }
        other => return Err(Error::invalid("action", format!("{other:?} is unknown"))),
    })
}

fn queue_of(req: &HttpRequest) -> actix_web::Result<JobQueue> {
    match req.app_data::<web::Data<JobQueue>>() {
        Some(queue) => Ok(queue.get_ref().clone()),
        None => {
            tracing::error!(target: "lightjobs::dashboard", "{NO_QUEUE}");
            // Only an authorised user gets here: the fix is worth showing.
            Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, NO_QUEUE))
        }
    }
}

fn refuse(status: StatusCode, message: &'static str) -> actix_web::Error {
    actix_web::error::InternalError::from_response(message, plain(status, message)).into()
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn plain(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values() {
        assert_eq!(url_encode("mail-é &x=1"), "mail-%C3%A9%20%26x%3D1");
    }
}
