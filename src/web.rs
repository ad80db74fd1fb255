//! The actix-web glue: [`init`] for `App::configure`, the [`metrics`] resource, and how
//! errors reach HTTP clients.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};

use crate::error::Error;
use crate::queue::JobQueue;

/// Puts the process-wide [`JobQueue`] into app data as `web::Data<JobQueue>`.
///
/// actix calls the app factory once per HTTP worker thread, so this only clones a handle:
/// it starts nothing. The queue is the one [`Workers::start`](crate::Workers::start) or
/// [`JobQueue::install`] installed, else one built from `LIGHTJOBS_DATABASE_URL` /
/// `DATABASE_URL`.
///
/// ```no_run
/// use actix_web::{post, web, App, HttpResponse, HttpServer};
/// use lightjobs::JobQueue;
/// # use lightjobs::{Job, JobContext, JobError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail { to: String }
/// # impl Job for SendMail { const NAME: &'static str = "send_mail";
/// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
///
/// #[post("/signup")]
/// async fn signup(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
///     let id = queue.dispatch(SendMail { to: "new@example.com".into() }).await?;
///     Ok(HttpResponse::Accepted().json(id))
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// HttpServer::new(|| App::new().configure(lightjobs::init).service(signup))
///     .bind(("127.0.0.1", 8080))?
///     .run()
///     .await
/// # }
/// ```
///
/// # Panics
///
/// When no queue is installed and neither variable is set, or the URL is invalid: the
/// message says how to fix it. This happens while the app is built, before any request.
pub fn init(cfg: &mut web::ServiceConfig) {
    match JobQueue::global() {
        Ok(queue) => {
            cfg.app_data(web::Data::new(queue));
        }
        Err(e) => panic!("lightjobs::init: {e}"),
    }
}

#[cfg(feature = "metrics")]
/// A `GET` resource at `path` serving the metrics in the Prometheus text format. It needs
/// `web::Data<JobQueue>` in app data ([`init`](crate::init) puts it there). Mount it where
/// only your scraper reaches it, or behind your own guard.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
/// # async fn run() -> std::io::Result<()> {
/// HttpServer::new(|| {
///     App::new()
///         .configure(lightjobs::init)
///         .service(lightjobs::metrics("/metrics"))
/// })
/// .bind(("127.0.0.1", 9100))?
/// .run()
/// .await
/// # }
/// ```
pub fn metrics(path: &str) -> actix_web::Resource {
    web::resource(path).route(web::get().to(serve))
}

#[cfg(feature = "metrics")]
async fn serve(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
    let counts = queue.stats().await?;
    let paused = queue.paused_queues().await?;
    let flow = queue.flow_keys(1000).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render(&counts, &paused, &flow)))
}

/// The cause goes to the log; the client gets an opaque message, and 503 when the database
/// is unreachable so that load balancers and clients retry.
impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        if self.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }

    fn error_response(&self) -> HttpResponse {
        tracing::error!(target: "lightjobs::web", error = %self, "job queue error in a request");
        let body = if self.is_unavailable() {
            "job queue unavailable, try again later"
        } else {
            "internal server error"
        };
        HttpResponse::build(self.status_code())
            .content_type("text/plain; charset=utf-8")
            .body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn unavailable_is_503_and_opaque() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "secret-host:3306");
        let e = Error::Database(mysql_async::Error::Io(io.into()));
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        let body = e.error_response().into_body().try_into_bytes().unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("secret-host"));

        let e = Error::Schema("jobs table missing".into());
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = e.error_response().into_body().try_into_bytes().unwrap();
        assert_eq!(&body[..], b"internal server error");
    }
}
