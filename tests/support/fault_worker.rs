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
        // With an audit file, every run is recorded there (start, and end once it finished)
        // rather than in the database, so that an outage cannot lose or fail the record.
        if let Ok(path) = std::env::var("LIGHTJOBS_TEST_AUDIT") {
            let run = fastrand_run_id();
            audit_line(
                &path,
                &format!(
                    "start {run} {} {} {} {}",
                    ctx.id(),
                    ctx.attempt(),
                    std::process::id(),
                    now_us()
                ),
            );
            // Records when the run is cut short (its future dropped) rather than finished.
            struct Cut<'a>(&'a str, u64, bool);
            impl Drop for Cut<'_> {
                fn drop(&mut self) {
                    if !self.2 {
                        audit_line(self.0, &format!("cut {} {}", self.1, now_us()));
                    }
                }
            }
            let mut cut = Cut(&path, run, false);
            // A job that stops when cancelled, unless told to ignore it (then the grace
            // period's end drops it: a `cut` line).
            let ignore = std::env::var("LIGHTJOBS_TEST_IGNORE_CANCEL").is_ok();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(self.millis)) => {}
                () = ctx.cancelled(), if !ignore => {
                    cut.2 = true;
                    audit_line(&path, &format!("cancelled {run} {}", now_us()));
                    return Err(JobError::fail("cancelled"));
                }
            }
            cut.2 = true;
            audit_line(&path, &format!("end {run} {}", now_us()));
            return Ok(());
        }
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

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

fn fastrand_run_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_us());
    h.finish()
}

/// One line, appended with one write (O_APPEND): processes can share the file.
fn audit_line(path: &str, line: &str) {
    use std::io::Write as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut file) = file {
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

fn main() -> ExitCode {
    let Ok(url) = std::env::var("LIGHTJOBS_DATABASE_URL") else {
        eprintln!("set LIGHTJOBS_DATABASE_URL");
        return ExitCode::FAILURE;
    };
    // The jobs' own pool (for `runs`): the first node when several are given.
    let pool = Pool::new(url.split(',').next().unwrap_or_default());
    // The recurring-job race test runs two of these with the same schedule.
    let recurring = std::env::var("LIGHTJOBS_TEST_RECURRING").ok();
    // The wake-up tests poll slowly, so that only a push can start a job soon.
    let poll = std::env::var("LIGHTJOBS_TEST_POLL_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    lightjobs::cli::run_with(Registry::new().register::<Work>(), move |w| {
        let w = w.data(pool);
        let w = match poll {
            Some(poll) => w.poll_interval(poll, poll),
            None => w,
        };
        match recurring {
            Some(schedule) => w.recurring(&schedule, Work { millis: 0 }),
            None => w,
        }
    })
}
