//! A worker-only process, as in the seed:
//!
//! ```text
//! cargo run --example worker -- process:jobs
//! cargo run --example worker -- process:jobs --stop-when-empty
//! ```
//!
//! prints `✔ Job processed successfully: 123` or `✖ Error dispatching job: 124 - …` per job.
//! The other commands (`migrate`, `failed`, `retry`, `stats`, …) work here too.

#[path = "shared/jobs.rs"]
mod jobs;

use std::process::ExitCode;

use jobs::{GenerateReport, SendMail};
use lightjobs::Registry;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Warnings only, and on stderr, so the ✔/✖ lines on stdout stay readable and parseable.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    lightjobs::cli::run(
        Registry::new()
            .register::<SendMail>()
            .register::<GenerateReport>(),
    )
}
