//! The README's "API in one screen" example, to measure build time and binary size.
use actix_web::{post, web, App, HttpResponse, HttpServer};
use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use serde::{Deserialize, Serialize};
use std::time::Duration;

struct Mailer;
impl Mailer {
    fn new() -> Self {
        Mailer
    }
    async fn send(&self, _to: &str, _subject: &str) -> Result<(), std::io::Error> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct SendMail {
    to: String,
    subject: String,
}

impl Job for SendMail {
    const NAME: &'static str = "send_mail";
    const MAX_ATTEMPTS: u32 = 5;

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        if self.to.is_empty() {
            return Err(JobError::fail("Recipient email address is missing"));
        }
        let mailer = ctx.data::<Mailer>().ok_or_else(|| JobError::fail("no mailer"))?;
        mailer.send(&self.to, &self.subject).await?;
        Ok(())
    }
}

#[post("/signup")]
async fn signup(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
    let id = queue
        .dispatch(SendMail { to: "ada@example.com".into(), subject: "Welcome".into() })
        .await?;
    queue
        .dispatch(SendMail { to: "ops@example.com".into(), subject: "New user".into() })
        .delay(Duration::from_secs(60))
        .priority(-1)
        .on_queue("mail")
        .max_attempts(10)
        .await?;
    Ok(HttpResponse::Accepted().json(id))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let workers = Workers::from_env()?
        .register::<SendMail>()
        .data(Mailer::new())
        .queues(["default", "mail"])
        .concurrency(20)
        .migrate(true)
        .start()
        .await?;
    let server = HttpServer::new(|| App::new().configure(lightjobs::init).service(signup))
        .bind(("127.0.0.1", 8080))?
        .run();
    workers.serve(server).await
}
