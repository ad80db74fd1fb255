//! The worker process of the fault tests (built as the example `fault_worker`): the seed's
//! `process:jobs` with one job type that records every run it finishes in `runs`.

use std::process::ExitCode;
use std::time::Duration;

use lightjobs::{Job, JobContext, JobError, Registry};
use mysql_async::prelude::*;
use mysql_async::Pool;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Work {
    millis: u64,
}

impl Job for Work {
    const NAME: &'static str = "work";
    const MAX_ATTEMPTS: u32 = 5;

    fn backoff(_attempt: u32) -> Duration {
        Duration::from_millis(200)
    }

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        if self.millis > 0 {
            tokio::time::sleep(Duration::from_millis(self.millis)).await;
        }
        let pool = ctx
            .data::<Pool>()
            .ok_or_else(|| JobError::fail("no pool"))?;
        let mut conn = pool.get_conn().await?;
        conn.exec_drop(
            "INSERT INTO runs (job_id, attempt, tag) VALUES (?, ?, ?)",
            (ctx.id(), ctx.attempt(), std::process::id().to_string()),
        )
        .await?;
        Ok(())
    }
}

fn main() -> ExitCode {
    let Ok(url) = std::env::var("LIGHTJOBS_DATABASE_URL") else {
        eprintln!("set LIGHTJOBS_DATABASE_URL");
        return ExitCode::FAILURE;
    };
    let pool = Pool::new(url.as_str());
    // The recurring-job race test runs two of these with the same schedule.
    let recurring = std::env::var("LIGHTJOBS_TEST_RECURRING").ok();
    lightjobs::cli::run_with(Registry::new().register::<Work>(), move |w| {
        let w = w.data(pool);
        match recurring {
            Some(schedule) => w.recurring(&schedule, Work { millis: 0 }),
            None => w,
        }
    })
}
