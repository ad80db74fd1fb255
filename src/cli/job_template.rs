use lightjobs::{Job, JobContext, JobError};
use serde::{Deserialize, Serialize};

/// The job's input: serialised to JSON at dispatch.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobName {
    // pub to: String,
}

impl Job for JobName {
    /// Stored in `jobs.name`: keep it when you rename the type.
    const NAME: &'static str = "job_name";
    // const QUEUE: &'static str = "default";
    // const MAX_ATTEMPTS: u32 = 3;
    // const TIMEOUT: Option<std::time::Duration> = Some(std::time::Duration::from_secs(60));

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        // `?` on any error schedules a retry; JobError::fail(..) fails at once.
        let _ = ctx.attempt();
        Ok(())
    }
}
