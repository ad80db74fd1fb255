//! The demo: a signup endpoint that mails the new user in the background, with the workers
//! in the same process as the HTTP server, and the dashboard and metrics for clients on
//! this machine.
//!
//! ```text
//! LIGHTJOBS_DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example signup
//! ```
//!
//! (`bash .ci/demo` finds or installs a MariaDB and sets the URL for you.) Set
//! `LIGHTJOBS_DEMO_ADDR` to listen elsewhere than 127.0.0.1:8080.

#[path = "shared/jobs.rs"]
mod jobs;

use std::process::ExitCode;

use actix_web::{get, guard, post, web, App, Either, HttpRequest, HttpResponse, HttpServer};
use jobs::SendMail;
use lightjobs::{JobQueue, Workers};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

const DEFAULT_ADDR: &str = "127.0.0.1:8080";

#[derive(Debug, Deserialize)]
struct Signup {
    email: String,
}

/// Answers before the mail is sent: the client gets the job's id to follow it.
#[post("/signup")]
async fn signup(
    queue: web::Data<JobQueue>,
    form: Either<web::Json<Signup>, web::Form<Signup>>,
) -> actix_web::Result<HttpResponse> {
    let Signup { email } = form.into_inner();
    // An empty address is accepted here on purpose: the demo shows it failing in the job.
    let job_id = queue
        .dispatch(SendMail {
            to: email,
            subject: "Welcome aboard".to_owned(),
        })
        .await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "job_id": job_id })))
}

#[get("/jobs/{id}")]
async fn job(queue: web::Data<JobQueue>, id: web::Path<u64>) -> actix_web::Result<HttpResponse> {
    let id = id.into_inner();
    Ok(match queue.find(id).await? {
        Some(record) => HttpResponse::Ok().json(record),
        None => {
            HttpResponse::NotFound().json(serde_json::json!({ "error": format!("no job {id}") }))
        }
    })
}

#[get("/stats")]
async fn stats(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(queue.stats().await?))
}

/// The dashboard can retry, discard and pause, and the metrics name your queues: only
/// clients on this machine get them. Put your own login in front of them in an app.
fn from_this_machine(req: &HttpRequest) -> bool {
    req.peer_addr().is_some_and(|a| a.ip().is_loopback())
}

#[actix_web::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // Printed with Display: returning the error from main would show only its Debug form.
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signup: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("LIGHTJOBS_DEMO_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_owned());
    let workers = Workers::from_env()?
        .register::<SendMail>()
        .migrate(true)
        .start()
        .await?;
    let server = HttpServer::new(|| {
        App::new()
            .configure(lightjobs::init)
            .service(signup)
            .service(job)
            .service(stats)
            .service(lightjobs::dashboard("/admin/jobs").authorize(from_this_machine))
            .service(lightjobs::metrics("/metrics").guard(guard::fn_guard(|ctx| {
                ctx.head().peer_addr.is_some_and(|a| a.ip().is_loopback())
            })))
    })
    .bind(addr.as_str())
    .map_err(|e| format!("cannot listen on {addr}: {e} (set LIGHTJOBS_DEMO_ADDR)"))?;
    let shown = server
        .addrs()
        .first()
        .map_or_else(|| addr.clone(), ToString::to_string);
    print_instructions(&shown);
    // Ctrl-C stops the server first, then lets running jobs finish before the process exits.
    workers.serve(server.run()).await?;
    Ok(())
}

fn print_instructions(addr: &str) {
    println!(
        r#"
Signup demo listening on http://{addr}  (Ctrl-C stops the server, then drains the workers)

  A signup: answers 202 at once; the mail is sent in the background.
    curl -i -X POST http://{addr}/signup -H 'content-type: application/json' -d '{{"email":"ada@example.com"}}'

  A signup with an empty address: the job fails with "Recipient email address is missing".
    curl -i -X POST http://{addr}/signup -d 'email='

  Follow a job (use the job_id from the answer): status pending → processed, or failed with last_error.
    curl -s http://{addr}/jobs/1

  Counts per queue and status:
    curl -s http://{addr}/stats

  The dashboard (from this machine only): queues, failed jobs with Retry, recent jobs.
    http://{addr}/admin/jobs

  Prometheus metrics (from this machine only):
    curl -s http://{addr}/metrics
"#
    );
}
