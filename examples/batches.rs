//! Batches, dependencies, tags and cancelling: an album's photos are resized as one batch;
//! the scan that starts it (tagged, with metadata) adds a job per photo to the batch it
//! runs in; once every resize succeeded the batch's callback publishes the album, reading
//! what each resize recorded; a last job waits for the publication and runs after it. A
//! slow cleanup started meanwhile is cancelled while it runs.
//!
//! ```text
//! LIGHTJOBS_DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example batches
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use serde::{Deserialize, Serialize};

/// Finds the album's photos and adds a resize of each to its own batch.
#[derive(Serialize, Deserialize)]
struct ScanAlbum {
    album: u64,
    photos: u64,
}

impl Job for ScanAlbum {
    const NAME: &'static str = "example_scan_album";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        println!("scan tagged {:?}, metadata {:?}", ctx.tags(), ctx.meta());
        for photo in 1..=self.photos {
            ctx.add_to_batch(Resize { photo })
                .await
                .map_err(JobError::retry)?;
        }
        println!("album {}: {} photos to resize", self.album, self.photos);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Resize {
    photo: u64,
}

impl Job for Resize {
    const NAME: &'static str = "example_resize";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let bytes = 10_000 + self.photo * 123;
        println!("photo {} resized: {bytes} bytes", self.photo);
        ctx.record_output(&bytes).await
    }
}

/// The batch's callback: runs once, after every resize succeeded.
#[derive(Serialize, Deserialize)]
struct Publish {
    album: u64,
}

impl Job for Publish {
    const NAME: &'static str = "example_publish";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let batch = ctx
            .batch()
            .ok_or_else(|| JobError::fail("not a callback"))?;
        let queue = ctx.job_queue();
        let (mut total, mut resized, mut after) = (0u64, 0, 0);
        loop {
            let page = queue.batch_jobs(batch, after, 100).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for job in page.iter().filter(|j| j.name == Resize::NAME) {
                total += job
                    .output
                    .as_deref()
                    .and_then(|o| o.parse::<u64>().ok())
                    .unwrap_or(0);
                resized += 1;
            }
        }
        println!(
            "album {} published: {resized} photos, {total} bytes",
            self.album
        );
        Ok(())
    }
}

/// Runs until it is cancelled (at most a minute).
#[derive(Serialize, Deserialize)]
struct Cleanup;

impl Job for Cleanup {
    const NAME: &'static str = "example_cleanup";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        tokio::select! {
            () = ctx.cancelled() => {
                println!("cleanup stopped by its cancel");
                Err(JobError::fail("cancelled"))
            }
            () = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
        }
    }
}

/// Waits for the publication (`Dispatch::after`).
#[derive(Serialize, Deserialize)]
struct NotifyFollowers {
    album: u64,
}

impl Job for NotifyFollowers {
    const NAME: &'static str = "example_notify_followers";
    async fn execute(self, _: &JobContext) -> Result<(), JobError> {
        println!("album {}: followers notified", self.album);
        Ok(())
    }
}

#[actix_web::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("batches: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> lightjobs::Result<()> {
    let queue = JobQueue::from_env()?;
    queue.migrate().await?;
    let batch = queue
        .batch()
        .description("album 7")
        .add_dispatch(
            queue
                .dispatch(ScanAlbum {
                    album: 7,
                    photos: 8,
                })
                .tags(["album:7"])
                .meta(serde_json::json!({ "requested_by": "ada@example.com" })),
        )
        .on_success(Publish { album: 7 })
        .dispatch()
        .await?;
    let notify = queue
        .dispatch(NotifyFollowers { album: 7 })
        .after(batch.callbacks[0])
        .await?;
    let started = Instant::now();
    let workers = Workers::new(queue.clone())
        .register::<ScanAlbum>()
        .register::<Resize>()
        .register::<Publish>()
        .register::<NotifyFollowers>()
        .register::<Cleanup>()
        .concurrency(4)
        .start()
        .await?;
    let cleanup = queue.dispatch(Cleanup).await?;
    while queue
        .find(cleanup)
        .await?
        .is_some_and(|j| j.status != "running")
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    queue.cancel(cleanup).await?;
    // Waiting jobs are not `pending`, so `stop_when_empty` would stop before them: wait
    // for the last one instead.
    while queue
        .find(notify)
        .await?
        .is_none_or(|j| j.status != "processed")
    {
        if started.elapsed() > Duration::from_secs(60) {
            workers.shutdown().await;
            return Err(lightjobs::Error::Invalid {
                what: "example",
                reason: "the album was not published within a minute".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while queue
        .find(cleanup)
        .await?
        .is_some_and(|j| j.status == "running")
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.shutdown().await;
    if let Some(job) = queue.find(cleanup).await? {
        println!("cleanup job {}: {}", job.id, job.status);
    }
    if let Some(state) = queue.batch_state(batch.id).await? {
        println!(
            "batch {}: {} of {} jobs done, {:?}, in {:.1}s",
            state.id,
            state.done(),
            state.total(),
            state.outcome,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
