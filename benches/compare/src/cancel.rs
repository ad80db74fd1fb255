//! Cancel latency (`--only cancel`): from the `JobQueue::cancel` call to the moment the
//! running job sees `ctx.cancelled()`, with the job running in this process, and in a
//! child process (this binary, `cancel-worker`). Each dispatch waits a random 125–375 ms
//! and each cancel is sent a random 150–450 ms after its job started, so the cancels land
//! at every phase of the canceller's 0.5 s poll instead of in step with it (a job
//! dispatched right after the previous one was seen starts right after a poll).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use mysql_async::prelude::*;
use tokio::sync::mpsc;

use crate::lj::{self, now_us};
use crate::util::{self, quantile, AnyResult};

const DB: &str = "bench_cancel";

/// A job that waits for its cancel and reports when it started and when it saw it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Hold;

/// Where `Hold` reports in this process: (job id, started, saw the cancel).
#[derive(Clone)]
struct Sink(mpsc::UnboundedSender<(u64, bool, Instant)>);

impl Job for Hold {
    const NAME: &'static str = "bench_hold";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let report = |seen: bool| async move {
            if let Some(sink) = ctx.data::<Sink>() {
                let _ = sink.0.send((ctx.id(), seen, Instant::now()));
                return Ok(());
            }
            // In the child process: the wall clock, in the table the parent reads.
            let pool = ctx
                .data::<mysql_async::Pool>()
                .ok_or_else(|| JobError::fail("no pool"))?;
            let mut conn = pool.get_conn().await?;
            conn.exec_drop(
                "INSERT INTO cancel_probe (job_id, seen, at_us) VALUES (?, ?, ?)",
                (ctx.id(), seen, now_us()),
            )
            .await?;
            Ok::<(), JobError>(())
        };
        report(false).await?;
        tokio::select! {
            () = ctx.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(60)) => return Ok(()),
        }
        report(true).await?;
        Err(JobError::fail("cancelled"))
    }
}

pub struct CancelRun {
    label: String,
    /// ms, sorted.
    samples: Vec<f64>,
}

/// A pause that puts the cancel at a random point of the canceller's poll.
fn spread() -> Duration {
    lj::jittered(Duration::from_millis(300))
}

pub async fn run(server: &str, samples: usize) -> AnyResult<Vec<CancelRun>> {
    Ok(vec![
        in_process(server, samples).await?,
        cross_process(server, samples).await?,
    ])
}

async fn in_process(server: &str, samples: usize) -> AnyResult<CancelRun> {
    let queue = lj::fresh_queue(server, DB).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = Workers::new(queue.clone())
        .register::<Hold>()
        .data(Sink(tx))
        .start()
        .await?;
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(lj::jittered(Duration::from_millis(250))).await;
        let id = queue.dispatch(Hold).await?;
        wait(&mut rx, id, false).await?;
        tokio::time::sleep(spread()).await;
        let t0 = Instant::now();
        queue.cancel(id).await?;
        let seen = wait(&mut rx, id, true).await?;
        took.push(util::ms(seen.saturating_duration_since(t0)));
    }
    workers.shutdown().await;
    took.sort_by(f64::total_cmp);
    Ok(CancelRun {
        label: "job in this process".into(),
        samples: took,
    })
}

/// The next report of `id` that is `want` (started, or saw its cancel).
async fn wait(
    rx: &mut mpsc::UnboundedReceiver<(u64, bool, Instant)>,
    id: u64,
    want: bool,
) -> AnyResult<Instant> {
    loop {
        let (got, seen, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| format!("job {id}: nothing within 10 s"))?
            .ok_or("the workers stopped")?;
        if got == id && seen == want {
            return Ok(at);
        }
    }
}

async fn cross_process(server: &str, samples: usize) -> AnyResult<CancelRun> {
    let queue = lj::fresh_queue(server, DB).await?;
    let url = util::db_url(server, DB);
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await?;
    conn.query_drop(
        "CREATE TABLE cancel_probe (job_id BIGINT UNSIGNED NOT NULL, seen BOOL NOT NULL, \
         at_us BIGINT UNSIGNED NOT NULL, PRIMARY KEY (job_id, seen))",
    )
    .await?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("cancel-worker")
        .arg("--db-url")
        .arg(&url)
        .kill_on_drop(true)
        .spawn()?;
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(lj::jittered(Duration::from_millis(250))).await;
        let id = queue.dispatch(Hold).await?;
        probe(&mut conn, id, false).await?;
        tokio::time::sleep(spread()).await;
        let t0 = now_us();
        queue.cancel(id).await?;
        let seen = probe(&mut conn, id, true).await?;
        took.push(seen.saturating_sub(t0) as f64 / 1000.0);
    }
    child.kill().await?;
    drop(conn);
    pool.disconnect().await?;
    took.sort_by(f64::total_cmp);
    Ok(CancelRun {
        label: "job in another process".into(),
        samples: took,
    })
}

/// Waits for the child's report on `id`; returns its wall-clock time (µs).
async fn probe(conn: &mut mysql_async::Conn, id: u64, seen: bool) -> AnyResult<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let at: Option<u64> = conn
            .exec_first(
                "SELECT at_us FROM cancel_probe WHERE job_id = ? AND seen = ?",
                (id, seen),
            )
            .await?;
        if let Some(at) = at {
            return Ok(at);
        }
        if Instant::now() > deadline {
            return Err(format!("job {id}: no report (seen {seen}) within 20 s").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The child side: workers that run `Hold`, reporting to `cancel_probe`.
pub async fn worker(db_url: &str) -> AnyResult<()> {
    let queue = JobQueue::connect(db_url)?;
    let handle = Workers::new(queue)
        .register::<Hold>()
        .data(mysql_async::Pool::new(db_url))
        .start()
        .await?;
    handle.wait().await;
    Ok(())
}

pub fn print(out: &mut String, runs: &[CancelRun]) {
    let _ = writeln!(
        out,
        "## Cancel latency: `JobQueue::cancel` → the running job sees `ctx.cancelled()` (cancels at every phase of the 0.5 s poll; default settings)\n"
    );
    let _ = writeln!(
        out,
        "| where the job runs | samples | p50 ms | p90 ms | p99 ms | max ms |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in runs {
        let v = &r.samples;
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.label,
            v.len(),
            quantile(v, 0.5),
            quantile(v, 0.9),
            quantile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(out);
}
