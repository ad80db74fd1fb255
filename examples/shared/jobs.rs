//! The jobs the examples (and `tests/it/cli.rs`) share: the seed's `SendMail`, and a slow
//! `GenerateReport` for watching a graceful shutdown.
//!
//! Included with `#[path = "shared/jobs.rs"] mod jobs;`, so it is not an example itself.

// Each includer uses a different subset of these jobs.
#![allow(dead_code)]

use std::time::Duration;

use lightjobs::{Job, JobContext, JobError};
use serde::{Deserialize, Serialize};

/// Stands in for a real mailer call, long enough to see jobs overlap.
const SEND_TIME: Duration = Duration::from_millis(200);

/// The seed's job: mail a user without making the signup request wait.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendMail {
    pub to: String,
    pub subject: String,
}

impl Job for SendMail {
    const NAME: &'static str = "send_mail";
    const MAX_ATTEMPTS: u32 = 3;

    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        if self.to.is_empty() {
            // No attempt can invent an address: fail at once instead of retrying.
            return Err(JobError::fail("Recipient email address is missing"));
        }
        if !self.to.contains('@') {
            // Retryable on purpose, to show the ✖ … retrying line; a real mailer would
            // likely treat this as permanent too.
            return Err(JobError::retry(format!(
                "invalid recipient address: {}",
                self.to
            )));
        }
        // The workers' span already carries the job's id and attempt.
        tracing::info!("sending mail to {}: {:?}", self.to, self.subject);
        tokio::time::sleep(SEND_TIME).await;
        Ok(())
    }
}

/// A slow job: it sleeps `millis`, as a report query would keep a slot busy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateReport {
    pub title: String,
    pub millis: u64,
}

impl Job for GenerateReport {
    const NAME: &'static str = "generate_report";
    const MAX_ATTEMPTS: u32 = 2;

    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        tracing::info!("generating report {:?}", self.title);
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}
