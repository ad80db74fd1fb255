//! The operator's tools: read and change jobs and queues through the public
//! [`JobQueue`] API, the same calls the [`Dashboard`](crate::Dashboard)'s buttons make.

use std::time::Duration;

use clap::Subcommand;

use super::one_line;
use crate::queue::JobQueue;
use crate::store::{Status, JOB_STATUSES};

#[derive(Debug, Subcommand)]
pub(super) enum Tool {
    /// List failed jobs with their errors.
    Failed {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Put failed jobs back to pending: one by id, or all with --all.
    Retry {
        /// The job's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Every failed job (of --queue, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only this queue.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete old finished jobs.
    Prune {
        /// Processed jobs finished longer ago than this many hours.
        #[arg(long, default_value_t = 24)]
        processed_hours: u64,
        /// Failed jobs finished longer ago than this many hours (default: keep them).
        #[arg(long)]
        failed_hours: Option<u64>,
    },
    /// Job counts per queue and status, and the paused queues.
    Stats,
    /// List jobs, newest first: of one status, or of every status.
    List {
        /// Only jobs with this status.
        #[arg(long, value_parser = JOB_STATUSES)]
        status: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// One job as JSON: payload, status, attempts, last error, tags, metadata, output.
    Show {
        /// The job's id.
        id: u64,
    },
    /// A batch's progress as JSON: its jobs by status, its outcome once finished.
    Batch {
        /// The batch's id.
        id: u64,
    },
    /// Delete a failed job.
    Discard {
        /// The job's id.
        id: u64,
    },
    /// Cancel a job: a waiting one at once, a running one through the process running it.
    Cancel {
        /// The job's id.
        id: u64,
    },
    /// Stop starting jobs from a queue, in every process; running jobs finish.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Start jobs from a paused queue again.
    Resume {
        /// The queue.
        queue: String,
    },
}

pub(super) async fn run(queue: &JobQueue, tool: Tool) -> crate::Result<()> {
    match tool {
        Tool::Failed { queue: q, limit } => failed(queue, q.as_deref(), limit).await,
        Tool::Retry { id, all, queue: q } => retry(queue, id, all, q.as_deref()).await,
        Tool::Prune {
            processed_hours,
            failed_hours,
        } => {
            let hours = |h: u64| Duration::from_secs(h.saturating_mul(3600));
            let n = queue
                .prune(hours(processed_hours), failed_hours.map(hours))
                .await?;
            println!("Pruned {n} job(s).");
            Ok(())
        }
        Tool::Stats => stats(queue).await,
        Tool::List {
            status,
            queue: q,
            tag,
            limit,
        } => {
            list(
                queue,
                status.as_deref(),
                (q.as_deref(), tag.as_deref()),
                limit,
            )
            .await
        }
        Tool::Show { id } => {
            let job = queue.find(id).await?.ok_or_else(|| no_job(id, "known"))?;
            println!("{}", serde_json::to_string_pretty(&job)?);
            Ok(())
        }
        Tool::Batch { id } => {
            let state = queue
                .batch_state(id)
                .await?
                .ok_or_else(|| crate::Error::NotFound { what: "batch", id })?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(())
        }
        Tool::Discard { id } => {
            if !queue.discard_failed(id).await? {
                return Err(no_job(id, "failed"));
            }
            println!("Discarded job {id}.");
            Ok(())
        }
        Tool::Cancel { id } => {
            if !queue.cancel(id).await? {
                return Err(no_job(id, "waiting or running"));
            }
            println!("Cancelled job {id} (if it was running, its process stops it within about a second).");
            Ok(())
        }
        Tool::Pause { queue: q } => {
            queue.pause(&q).await?;
            println!("Paused queue {q}: running jobs finish, no new ones start.");
            Ok(())
        }
        Tool::Resume { queue: q } => {
            queue.resume(&q).await?;
            println!("Resumed queue {q}.");
            Ok(())
        }
    }
}

fn no_job(id: u64, status: &str) -> crate::Error {
    crate::Error::invalid("job id", format!("no {status} job with id {id}"))
}

async fn failed(queue: &JobQueue, q: Option<&str>, limit: u64) -> crate::Result<()> {
    let jobs = queue.list(Status::Failed.as_str(), q, limit).await?;
    if jobs.is_empty() {
        println!("No failed jobs.");
    }
    for j in jobs {
        println!(
            "{}\t{}\t{}\t{}/{} attempts\t{}\t{}",
            j.id,
            j.queue,
            j.name,
            j.attempts,
            j.max_attempts,
            j.finished_at.unwrap_or_default(),
            j.last_error.unwrap_or_default().replace('\n', " ")
        );
    }
    Ok(())
}

async fn retry(queue: &JobQueue, id: Option<u64>, all: bool, q: Option<&str>) -> crate::Result<()> {
    if all {
        let n = queue.retry_all_failed(q).await?;
        println!("Retrying {n} failed job(s).");
    } else if let Some(id) = id {
        if !queue.retry_failed(id).await? {
            return Err(no_job(id, "failed"));
        }
        println!("Retrying job {id}.");
    }
    Ok(())
}

async fn stats(queue: &JobQueue) -> crate::Result<()> {
    let (counts, paused, flow) =
        futures::try_join!(queue.stats(), queue.paused_queues(), queue.flow_keys(20))?;
    println!("{:<24} {:<10} {:>10}", "queue", "status", "jobs");
    for c in counts {
        println!("{:<24} {:<10} {:>10}", c.queue, c.status, c.count);
    }
    if !paused.is_empty() {
        println!();
        println!("Paused queues: {}", paused.join(", "));
    }
    if !flow.is_empty() {
        println!();
        println!(
            "{:<32} {:>8} {:>8} {:>12}",
            "flow key at a limit", "running", "waiting", "limit"
        );
        for k in flow {
            let mut limit = k
                .concurrency
                .map(|c| format!("{c} at once"))
                .unwrap_or_default();
            if let Some((n, per)) = k.rate {
                limit = format!("{limit} {n}/{per:?}");
            }
            if let Some(p) = k.paused_for {
                limit = format!("{limit} paused {:.1}s", p.as_secs_f64());
            }
            println!(
                "{:<32} {:>8} {:>8} {:>12}",
                k.key,
                k.running,
                k.blocked,
                limit.trim()
            );
        }
    }
    Ok(())
}

async fn list(
    queue: &JobQueue,
    status: Option<&str>,
    (q, tag): (Option<&str>, Option<&str>),
    limit: u64,
) -> crate::Result<()> {
    let statuses = match status {
        Some(status) => vec![status],
        None => JOB_STATUSES.to_vec(),
    };
    let mut jobs = Vec::new();
    for status in statuses {
        let page = queue.list_filtered(status, q, tag, limit, None).await?;
        jobs.extend(page.jobs);
    }
    // Newest first across statuses too, as `list` orders each one.
    jobs.sort_by_key(|job| std::cmp::Reverse(job.id));
    jobs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    if jobs.is_empty() {
        println!("No jobs.");
    }
    for j in jobs {
        let when = match Status::parse(&j.status) {
            Some(Status::Pending | Status::Scheduled | Status::Awaiting | Status::Running) => {
                Some(j.scheduled_at)
            }
            _ => j.finished_at,
        };
        println!(
            "{}\t{}\t{}\t{}\t{}/{} attempts\t{}\t{}",
            j.id,
            j.queue,
            j.name,
            j.status,
            j.attempts,
            j.max_attempts,
            when.unwrap_or_default(),
            one_line(&j.last_error.unwrap_or_default())
        );
    }
    Ok(())
}
