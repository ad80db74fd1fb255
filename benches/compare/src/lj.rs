//! lightjobs through its public API only: the drain, the dispatch→start latency and the
//! memory check.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::util::{self, AnyResult, Drain};

/// The database the lightjobs-schema strategies (lightjobs, raw floor, seed) use.
pub const DB: &str = "bench_lightjobs";

/// Jobs per `dispatch_many` call when loading a backlog.
const LOAD_CHUNK: usize = 1000;

/// A job that does nothing.
#[derive(Serialize, Deserialize)]
pub struct Noop {}

impl Job for Noop {
    const NAME: &'static str = "noop";

    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A latency probe: reports when it starts.
#[derive(Serialize, Deserialize)]
pub struct Probe {
    /// Sample number.
    pub seq: u64,
    /// Wall-clock time just before the dispatch, in microseconds since the Unix epoch.
    pub sent_us: u64,
}

/// Where probes report their start: (seq, sent_us, started Instant, started wall clock µs).
pub struct ProbeSink(mpsc::UnboundedSender<(u64, u64, Instant, u64)>);

impl Job for Probe {
    const NAME: &'static str = "latency_probe";

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let started = Instant::now();
        let wall = now_us();
        if let Some(sink) = ctx.data::<ProbeSink>() {
            let _ = sink.0.send((self.seq, self.sent_us, started, wall));
        }
        Ok(())
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A fresh `bench_lightjobs` database with the lightjobs schema (`queue.migrate()`), and
/// a queue on it.
pub async fn fresh_queue(server: &str, db: &str) -> AnyResult<JobQueue> {
    util::recreate_database(server, db).await?;
    let queue = JobQueue::connect(&util::db_url(server, db))?;
    queue.migrate().await?;
    Ok(queue)
}

/// Loads `n` no-op jobs with `dispatch_many`, 1,000 per call. Returns the time it took.
pub async fn load_backlog(queue: &JobQueue, n: usize) -> AnyResult<Duration> {
    let t0 = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(LOAD_CHUNK);
        let ids = queue.dispatch_many((0..k).map(|_| Noop {})).await?;
        if ids.len() != k {
            return Err(format!("dispatch_many returned {} ids for {k} jobs", ids.len()).into());
        }
        left -= k;
    }
    Ok(t0.elapsed())
}

/// One drain: fresh table, `n` jobs loaded, then `fetchers` Workers (each one fetch loop)
/// with `concurrency` slots each and `stop_when_empty`, until they stop (timed from just
/// before the first `start()` to the last `wait()`'s end).
pub async fn drain_once(
    server: &str,
    n: usize,
    concurrency: usize,
    fetchers: usize,
) -> AnyResult<Drain> {
    let queue = fresh_queue(server, DB).await?;
    let load = load_backlog(&queue, n).await?;
    let start_us = util::wall_us();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(fetchers);
    for _ in 0..fetchers {
        handles.push(
            Workers::new(queue.clone())
                .register::<Noop>()
                .concurrency(concurrency)
                .stop_when_empty(true)
                .start()
                .await?,
        );
    }
    let mut report = lightjobs::Report::default();
    for handle in handles {
        report.processed += handle.wait().await.processed;
    }
    let drain = t0.elapsed();
    let end_us = util::wall_us();
    let done = util::count(server, DB, "jobs", "status = 'processed'").await?;
    if done != n as u64 || report.processed != n as u64 {
        return Err(format!(
            "lightjobs drained {done} of {n} jobs (report: {report:?}; table: {})",
            util::status_counts(server, DB, "jobs").await?
        )
        .into());
    }
    Ok(Drain {
        time: drain,
        load: Some(load),
        lock_retries: 0,
        diag: Some(util::diagnostics(server, DB).await?),
        start_us,
        end_us,
    })
}

/// The result of one latency configuration.
pub struct LatencyResult {
    /// What was measured.
    pub label: String,
    /// Dispatch (just before the call) → job start, in ms, sorted.
    pub total_ms: Vec<f64>,
    /// Time inside the `dispatch(..).await` call, in ms, sorted (in-process only).
    pub dispatch_call_ms: Vec<f64>,
}

/// Settings shared by the latency measurements.
#[derive(Clone, Copy)]
pub struct LatencyOpts {
    /// Samples per configuration.
    pub samples: usize,
    /// Mean pause between two dispatches (uniform in ½…1½ of it).
    pub pause: Duration,
}

/// A pause of `mean` ± 50%, so dispatches do not fall in step with the poll timer.
pub fn jittered(mean: Duration) -> Duration {
    mean.mul_f64(0.5 + fastrand_f64())
}

/// A cheap pseudo-random number in [0, 1) (no extra dependency: the clock's low bits
/// mixed by a xorshift).
fn fastrand_f64() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(now_us() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// (a) In-process: an idle worker in this process, one dispatch at a time from this
/// process; the job records the `Instant` it starts. With `handoff` (the default) the
/// dispatch hands the job to the idle worker; without, it wakes the worker, which claims.
pub async fn latency_in_process(
    server: &str,
    opts: LatencyOpts,
    handoff: bool,
) -> AnyResult<LatencyResult> {
    let queue = fresh_queue(server, DB).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = Workers::new(queue.clone())
        .register::<Probe>()
        .data(ProbeSink(tx))
        .local_handoff(handoff)
        .start()
        .await?;
    // Warm the dispatch path (connection, readiness check), then let the worker go idle.
    queue.check_ready().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut total = Vec::with_capacity(opts.samples);
    let mut call = Vec::with_capacity(opts.samples);
    for seq in 0..opts.samples as u64 {
        tokio::time::sleep(jittered(opts.pause)).await;
        let t0 = Instant::now();
        queue
            .dispatch(Probe {
                seq,
                sent_us: now_us(),
            })
            .await?;
        let returned = t0.elapsed();
        let (got, _, started, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| format!("probe {seq} did not start within 10 s"))?
            .ok_or("the workers stopped")?;
        if got != seq {
            return Err(format!("probe {got} started while waiting for {seq}").into());
        }
        total.push(util::ms(started.saturating_duration_since(t0)));
        call.push(util::ms(returned));
    }
    let report = workers.shutdown().await;
    if report.processed != opts.samples as u64 {
        return Err(format!("latency workers report {report:?}").into());
    }
    total.sort_by(f64::total_cmp);
    call.sort_by(f64::total_cmp);
    Ok(LatencyResult {
        label: if handoff {
            format!(
                "in-process (default: handed to the idle worker), pauses {:?}",
                opts.pause
            )
        } else {
            format!(
                "in-process, `local_handoff(false)` (the dispatch wakes the worker, which claims), pauses {:?}",
                opts.pause
            )
        },
        total_ms: total,
        dispatch_call_ms: call,
    })
}

/// (b) Cross-process: this process runs the worker with `poll` (min, max) or the defaults;
/// a child process (this binary, `dispatch-probes`) dispatches probes carrying their send
/// time; the start time is the job's wall clock.
pub async fn latency_cross_process(
    server: &str,
    opts: LatencyOpts,
    poll: Option<(Duration, Duration)>,
) -> AnyResult<LatencyResult> {
    let queue = fresh_queue(server, DB).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut builder = Workers::new(queue.clone())
        .register::<Probe>()
        .data(ProbeSink(tx));
    if let Some((min, max)) = poll {
        builder = builder.poll_interval(min, max);
    }
    let workers = builder.start().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("dispatch-probes")
        .arg("--db-url")
        .arg(util::db_url(server, DB))
        .arg("--samples")
        .arg(opts.samples.to_string())
        .arg("--pause-ms")
        .arg(opts.pause.as_millis().to_string())
        .kill_on_drop(true)
        .spawn()?;
    let mut total = Vec::with_capacity(opts.samples);
    let deadline = Duration::from_secs(30) + opts.pause * 2 * opts.samples as u32;
    let t0 = Instant::now();
    while total.len() < opts.samples {
        let left = deadline.saturating_sub(t0.elapsed());
        let (seq, sent_us, _, started_us) = tokio::time::timeout(left, rx.recv())
            .await
            .map_err(|_| {
                format!(
                    "only {} of {} cross-process probes started within {deadline:?}",
                    total.len(),
                    opts.samples
                )
            })?
            .ok_or("the workers stopped")?;
        let ms = started_us.saturating_sub(sent_us) as f64 / 1000.0;
        if ms > 20.0 {
            // A push that did not arrive: which sample it was tells a listener not yet
            // registered (the first) from a wake-up lost later.
            eprintln!("latency: cross-process sample {seq} started after {ms:.1} ms");
        }
        total.push(ms);
    }
    let status = child.wait().await?;
    if !status.success() {
        return Err(format!("the dispatching process exited with {status}").into());
    }
    workers.shutdown().await;
    total.sort_by(f64::total_cmp);
    let (min, max) = poll.unwrap_or((lightjobs::defaults::POLL_MIN, lightjobs::defaults::POLL_MAX));
    Ok(LatencyResult {
        label: format!(
            "cross-process, poll_interval({:?}, {:?}){}, pauses {:?}",
            min,
            max,
            if poll.is_none() { " (defaults)" } else { "" },
            opts.pause
        ),
        total_ms: total,
        dispatch_call_ms: Vec::new(),
    })
}

/// The child side of the cross-process measurement: dispatches `samples` probes, one at a
/// time, with a jittered pause between.
pub async fn dispatch_probes(db_url: &str, samples: usize, pause: Duration) -> AnyResult<()> {
    let queue = JobQueue::connect(db_url)?;
    queue.check_ready().await?;
    for seq in 0..samples as u64 {
        tokio::time::sleep(jittered(pause)).await;
        queue
            .dispatch(Probe {
                seq,
                sent_us: now_us(),
            })
            .await?;
    }
    Ok(())
}

/// What the memory child reports (one JSON line on stdout).
#[derive(Serialize, Deserialize, Debug)]
pub struct MemoryReport {
    /// Pending jobs loaded.
    pub loaded: u64,
    /// Seconds the SQL load took.
    pub load_secs: f64,
    /// VmRSS (KiB) before the load.
    pub rss_before_load_kib: u64,
    /// VmRSS (KiB) just before `Workers::start`.
    pub rss_start_kib: u64,
    /// (seconds since start, VmRSS KiB), one a second while the workers run.
    pub samples: Vec<(f64, u64)>,
    /// VmRSS (KiB) just before the shutdown.
    pub rss_end_kib: u64,
    /// VmRSS (KiB) after the workers stopped.
    pub rss_after_stop_kib: u64,
    /// VmHWM (KiB) at the end: the process's peak.
    pub hwm_kib: u64,
    /// Jobs processed while running.
    pub processed: u64,
    /// Seconds the workers ran.
    pub run_secs: f64,
    /// Concurrency used.
    pub concurrency: usize,
}

/// The memory check, run in a child process of its own so that the other parts'
/// allocations are not in its numbers: `jobs` pending rows loaded with SQL, then Workers
/// for `secs` (or until drained) with VmRSS sampled every second.
pub async fn memory_child(
    server: &str,
    jobs: u64,
    secs: u64,
    concurrency: usize,
) -> AnyResult<MemoryReport> {
    const MEM_DB: &str = "bench_lightjobs_mem";
    let rss = || util::proc_status_kib("VmRSS").unwrap_or(0);
    let rss_before_load_kib = rss();
    let queue = fresh_queue(server, MEM_DB).await?;
    let t0 = Instant::now();
    // 1,000 rows through the API, then INSERT … SELECT doubling up to `jobs`.
    let seed = jobs.min(1000) as usize;
    queue.dispatch_many((0..seed).map(|_| Noop {})).await?;
    let mut conn = util::connect(&util::db_url(server, MEM_DB)).await?;
    let mut have = seed as u64;
    while have < jobs {
        let k = have.min(jobs - have);
        conn.exec_drop(
            "INSERT INTO jobs (name, payload, status, queue, priority, max_attempts, \
             scheduled_at, created_at) SELECT name, payload, status, queue, priority, \
             max_attempts, scheduled_at, created_at FROM jobs ORDER BY id LIMIT ?",
            (k,),
        )
        .await?;
        have += k;
        eprintln!("  memory: loaded {have} pending jobs");
    }
    conn.disconnect().await?;
    let load_secs = t0.elapsed().as_secs_f64();
    let loaded = util::count(server, MEM_DB, "jobs", "status = 'pending'").await?;

    let rss_start_kib = rss();
    let handle = Workers::new(queue.clone())
        .register::<Noop>()
        .concurrency(concurrency)
        .stop_when_empty(true)
        .start()
        .await?;
    let stop = handle.stop_signal();
    let started = Instant::now();
    let mut samples = vec![(0.0, rss_start_kib)];
    let wait = actix_rt::spawn(handle.wait());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        samples.push((started.elapsed().as_secs_f64(), rss()));
        if wait.is_finished() || started.elapsed() >= Duration::from_secs(secs) {
            break;
        }
    }
    let rss_end_kib = rss();
    let run_secs = started.elapsed().as_secs_f64();
    stop.stop();
    let report = wait.await?;
    let rss_after_stop_kib = rss();
    util::drop_database(server, MEM_DB).await?;
    Ok(MemoryReport {
        loaded,
        load_secs,
        rss_before_load_kib,
        rss_start_kib,
        samples,
        rss_end_kib,
        rss_after_stop_kib,
        hwm_kib: util::proc_status_kib("VmHWM").unwrap_or(0),
        processed: report.processed,
        run_secs,
        concurrency,
    })
}

/// Drains what is in `db` with one `Workers` of concurrency 100 running `J`: jobs/s of
/// `counted` jobs, timed until `done` (a COUNT condition on `jobs`) reaches `rows`.
pub async fn drain_until<J: lightjobs::Job>(
    server: &str,
    db: &str,
    queue: &JobQueue,
    (counted, rows): (usize, usize),
    done: &str,
) -> AnyResult<f64> {
    let t0 = Instant::now();
    let workers = lightjobs::Workers::new(queue.clone())
        .register::<J>()
        .concurrency(100)
        .poll_interval(Duration::from_millis(5), Duration::from_millis(20))
        .start()
        .await?;
    loop {
        let n = util::count(server, db, "jobs", done).await?;
        if n >= rows as u64 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(format!("drain stuck at {n} of {rows} ({done})").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    workers.shutdown().await;
    Ok(counted as f64 / secs)
}
