//! The cost of batches (`--only batches`): the same number of no-op jobs drained as plain
//! jobs, as batches of 100 and as batches of 10,000 (each batch with a callback), in one
//! run. A batch's jobs never write to the batch's row: an end costs one probe of an index
//! (is any job of the batch left?), and only the last end locks and finishes the batch.

use std::fmt::Write as _;

use lightjobs::{Job, JobContext, JobError, JobQueue};

use crate::lj;
use crate::util::{self, thousands, AnyResult};

const DB: &str = "bench_batches";

/// A no-op job: a batch's member or its callback.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Member;

impl Job for Member {
    const NAME: &'static str = "member_noop";
    async fn execute(self, _: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

pub type BatchRun = util::RateRow;

/// Dispatches `jobs` jobs: plainly (`size` 0) or in batches of `size` with a callback
/// each. Returns how many rows the drain must finish (jobs and callbacks).
async fn load(queue: &JobQueue, jobs: usize, size: usize) -> AnyResult<usize> {
    if size == 0 {
        let mut i = 0;
        while i < jobs {
            let k = (jobs - i).min(1000);
            queue.dispatch_many((0..k).map(|_| Member)).await?;
            i += k;
        }
        return Ok(jobs);
    }
    let batches = jobs.div_ceil(size);
    for b in 0..batches {
        let k = size.min(jobs - b * size);
        queue
            .batch()
            .jobs((0..k).map(|_| Member))
            .on_complete(Member)
            .dispatch()
            .await?;
    }
    Ok(jobs + batches)
}

/// A plain drain on a table without the indexes batches and dependencies added (what
/// those indexes cost every job, batch or not).
const WITHOUT_INDEXES: usize = usize::MAX;

async fn drop_batch_indexes(server: &str) -> AnyResult<()> {
    let mut conn = mysql_async::Conn::from_url(util::db_url(server, DB)).await?;
    mysql_async::prelude::Queryable::query_drop(
        &mut conn,
        "ALTER TABLE jobs DROP INDEX jobs_batch, DROP INDEX jobs_after_job, \
         DROP INDEX jobs_after_batch",
    )
    .await?;
    conn.disconnect().await?;
    Ok(())
}

pub async fn run(server: &str, jobs: usize, runs: usize) -> AnyResult<Vec<BatchRun>> {
    let sizes = [0, WITHOUT_INDEXES, 100, 10_000];
    let mut out: Vec<BatchRun> = sizes
        .iter()
        .map(|&size| BatchRun {
            label: if size == 0 {
                "plain jobs".into()
            } else if size == WITHOUT_INDEXES {
                "plain jobs, table without the batch and dependency indexes".into()
            } else {
                format!(
                    "batches of {} ({} batch{}, a callback each)",
                    thousands(size as f64),
                    thousands(jobs.div_ceil(size) as f64),
                    if jobs.div_ceil(size) == 1 { "" } else { "es" }
                )
            },
            rates: Vec::new(),
        })
        .collect();
    for run in 0..runs {
        for (i, &size) in sizes.iter().enumerate() {
            eprintln!("batches: run {}/{runs}: {}", run + 1, out[i].label);
            let queue = lj::fresh_queue(server, DB).await?;
            let rows = if size == WITHOUT_INDEXES {
                drop_batch_indexes(server).await?;
                load(&queue, jobs, 0).await?
            } else {
                load(&queue, jobs, size).await?
            };
            out[i].rates.push(
                lj::drain_until::<Member>(server, DB, &queue, (jobs, rows), "status = 'processed'")
                    .await?,
            );
        }
    }
    Ok(out)
}

pub fn print(out: &mut String, jobs: usize, runs: &[BatchRun]) {
    let _ = writeln!(
        out,
        "## Batches: drain of jobs in batches beside plain jobs\n\n\
         {} no-op jobs per run, one `Workers` of concurrency 100, fresh table per run, timed \
         until every job and callback is processed; median (min–max) jobs/s; ÷ plain: over \
         the first row's median.\n",
        thousands(jobs as f64)
    );
    util::print_rate_table(out, "jobs", "plain", runs);
}
