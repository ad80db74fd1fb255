//! What a failing job looks like: one mail without a recipient, one good one.
//!
//! ```text
//! LIGHTJOBS_DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example failing
//! ```
//!
//! The workers stop once the queue is empty; then both jobs are read back from the table.

#[path = "shared/jobs.rs"]
mod jobs;

use std::process::ExitCode;

use jobs::SendMail;
use lightjobs::{JobQueue, Workers};
use tracing_subscriber::EnvFilter;

#[actix_web::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failing: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> lightjobs::Result<()> {
    let queue = JobQueue::from_env()?;
    queue.migrate().await?;
    let missing = queue
        .dispatch(SendMail {
            to: String::new(),
            subject: "Welcome".to_owned(),
        })
        .await?;
    let good = queue
        .dispatch(SendMail {
            to: "ada@example.com".to_owned(),
            subject: "Welcome".to_owned(),
        })
        .await?;

    let report = Workers::new(queue.clone())
        .register::<SendMail>()
        .stop_when_empty(true)
        .on_event(|event| {
            if let Some(line) = lightjobs::cli::format_event(event) {
                println!("{line}");
            }
        })
        .start()
        .await?
        .wait()
        .await;
    println!(
        "\nWorkers stopped: {} processed, {} failed.\n",
        report.processed, report.failed
    );

    for id in [missing, good] {
        match queue.find(id).await? {
            Some(job) => println!(
                "job {:>4}  status {:<9}  attempts {}/{}  last_error {}",
                job.id,
                job.status,
                job.attempts,
                job.max_attempts,
                job.last_error.as_deref().unwrap_or("-")
            ),
            // Only if someone pruned or deleted it in the meantime.
            None => println!("job {id:>4}  gone from the table"),
        }
    }
    Ok(())
}
