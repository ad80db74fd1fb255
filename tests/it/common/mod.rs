//! Shared test helpers: a private database per test on the real server, and test jobs.
#![allow(dead_code)]

pub mod audit;
pub mod faults;
pub mod http;
pub mod procs;
pub mod proxy;
pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use mysql_async::prelude::*;
use mysql_async::Pool;
use serde::{Deserialize, Serialize};

/// The server tests run against: LIGHTJOBS_TEST_DATABASE_URL, else the local default.
pub fn base_url() -> String {
    std::env::var("LIGHTJOBS_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// `base` with its database path replaced by `db`.
pub fn url_with_db(base: &str, db: &str) -> String {
    let (main, query) = match base.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (base, None),
    };
    let scheme_end = main.find("://").map_or(0, |i| i + 3);
    let host_part = match main[scheme_end..].find('/') {
        Some(i) => &main[..scheme_end + i],
        None => main,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// The test's own pool, also the one test jobs write their runs through. Capped well
/// below the server's `max_connections` (151 by default): with 100 slots per worker, jobs
/// that each held a connection of an unbounded pool made the server refuse connections to
/// every test running beside them.
fn data_pool(url: &str) -> Pool {
    let opts = mysql_async::Opts::from_url(url).expect("test database URL");
    let constraints = mysql_async::PoolConstraints::new(0, 16).expect("0 <= 16");
    Pool::new(
        mysql_async::OptsBuilder::from_opts(opts)
            .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints)),
    )
}

/// A database of its own for one test, dropped and recreated at the start.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: Pool,
}

impl TestDb {
    pub async fn new(test: &str) -> TestDb {
        let base = base_url();
        let name = format!("ljt_{test}");
        let admin = Pool::new(base.as_str());
        let mut conn = admin
            .get_conn()
            .await
            .expect("test database server reachable");
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await
            .unwrap();
        conn.query_drop(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .await
        .unwrap();
        drop(conn);
        admin.disconnect().await.unwrap();
        let url = url_with_db(&base, &name);
        TestDb {
            name,
            pool: data_pool(&url),
            url,
        }
    }

    /// A queue on this database, not migrated.
    pub fn queue(&self) -> JobQueue {
        JobQueue::connect(&self.url).unwrap()
    }

    /// A queue on this database with the schema migrated and a `runs` table for test jobs.
    pub async fn migrated(&self) -> JobQueue {
        let queue = self.queue();
        queue.migrate().await.unwrap();
        self.exec(
            "CREATE TABLE IF NOT EXISTS runs (
                 seq BIGINT AUTO_INCREMENT PRIMARY KEY,
                 job_id BIGINT UNSIGNED NOT NULL,
                 attempt INT NOT NULL,
                 tag VARCHAR(100) NOT NULL
             )",
        )
        .await;
        queue
    }

    pub async fn exec(&self, sql: &str) {
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.query_drop(sql).await.unwrap();
    }

    pub async fn scalar<T: FromValue + Send + 'static>(&self, sql: &str) -> T {
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.query_first(sql).await.unwrap().expect("one row")
    }

    /// (status, attempts, last_error) of a job.
    pub async fn job(&self, id: u64) -> (String, u32, Option<String>) {
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.exec_first(
            "SELECT status, attempts, last_error FROM jobs WHERE id = ?",
            (id,),
        )
        .await
        .unwrap()
        .expect("job exists")
    }

    pub async fn count(&self, status: &str) -> u64 {
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.exec_first("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,))
            .await
            .unwrap()
            .unwrap_or(0)
    }

    /// Polls until `status` count reaches `n`, or panics after `timeout`.
    pub async fn wait_for(&self, status: &str, n: u64, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.count(status).await;
            if got >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {n} `{status}` jobs (have {got})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn drop_db(self) {
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name))
            .await
            .unwrap();
        drop(conn);
        let _ = self.pool.disconnect().await;
    }
}

/// Workers on `queue` that run every test job here, write their runs through the test's
/// pool and poll fast (a test waits for jobs, not for the default idle backoff).
pub fn workers(db: &TestDb, queue: &JobQueue) -> Workers {
    Workers::new(queue.clone())
        .register::<Record>()
        .register::<Flaky>()
        .register::<Panics>()
        .register::<Sleep>()
        .register::<Block>()
        .register::<Stolen>()
        .register::<Snoozy>()
        .data(db.pool.clone())
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
}

/// Waits until the running job's own row satisfies `condition` (SQL over its columns),
/// read every 5 ms through the pool given with `Workers::data`: a job that acts at the
/// moment the test (or another process) changes its row.
pub async fn until_own_row(ctx: &JobContext, condition: &str) -> Result<(), JobError> {
    let pool = ctx
        .data::<Pool>()
        .ok_or_else(|| JobError::fail("no pool"))?;
    let mut conn = pool.get_conn().await?;
    let sql = format!("SELECT {condition} FROM jobs WHERE id = ?");
    while conn
        .exec_first::<Option<u8>, _, _>(sql.as_str(), (ctx.id(),))
        .await?
        .flatten()
        != Some(1)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Records each run in the `runs` table (pool given with `Workers::data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub tag: String,
}

impl Job for Record {
    const NAME: &'static str = "record";
    const MAX_ATTEMPTS: u32 = 3;

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        record_run(ctx, &self.tag).await
    }
}

/// Writes a `runs` row (this run's job id, attempt and `tag`) through the pool given with
/// `Workers::data`: what every recording test job does.
pub async fn record_run(ctx: &JobContext, tag: &str) -> Result<(), JobError> {
    let pool = ctx
        .data::<Pool>()
        .ok_or_else(|| JobError::fail("no pool"))?;
    let mut conn = pool.get_conn().await?;
    conn.exec_drop(
        "INSERT INTO runs (job_id, attempt, tag) VALUES (?, ?, ?)",
        (ctx.id(), ctx.attempt(), tag),
    )
    .await?;
    Ok(())
}

/// Fails with `message` on every attempt before `succeed_on`, retryable or not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flaky {
    pub message: String,
    pub succeed_on: u32,
    pub permanent: bool,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    const MAX_ATTEMPTS: u32 = 3;

    fn backoff(_attempt: u32) -> Duration {
        Duration::from_millis(10)
    }

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        if ctx.attempt() >= self.succeed_on {
            return Ok(());
        }
        if self.permanent {
            Err(JobError::fail(self.message))
        } else {
            Err(JobError::retry(self.message))
        }
    }
}

/// Panics with the given message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panics {
    pub message: String,
}

impl Job for Panics {
    const NAME: &'static str = "panics";
    const MAX_ATTEMPTS: u32 = 1;

    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        panic!("{}", self.message)
    }
}

/// Sleeps `millis`, then records its run if a pool is available.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sleep {
    pub millis: u64,
}

impl Job for Sleep {
    const NAME: &'static str = "sleep";
    const MAX_ATTEMPTS: u32 = 2;
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(300));

    fn backoff(_attempt: u32) -> Duration {
        Duration::from_millis(10)
    }

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        if let Some(pool) = ctx.data::<Pool>() {
            let mut conn = pool.get_conn().await?;
            conn.exec_drop(
                "INSERT INTO runs (job_id, attempt, tag) VALUES (?, ?, 'sleep')",
                (ctx.id(), ctx.attempt()),
            )
            .await?;
        }
        Ok(())
    }
}

#[test]
fn url_rewriting() {
    assert_eq!(
        url_with_db("mysql://root@127.0.0.1:3306/test", "x"),
        "mysql://root@127.0.0.1:3306/x"
    );
    assert_eq!(
        url_with_db("mysql://u:p@h:1/db?pool_max=5", "x"),
        "mysql://u:p@h:1/x?pool_max=5"
    );
    assert_eq!(url_with_db("mysql://h", "x"), "mysql://h/x");
}

/// How many [`Block`] jobs of each queue are running at this moment in the workers given
/// it as data, and the most that ever ran at once: what a process's own limits promise,
/// counted where the jobs run (a row's status lags: a finished job stays `running` until
/// its result is written, while its slot may already run the next).
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<String, (usize, usize)>>>);

impl Running {
    /// The most jobs of `queue` that ran at once so far.
    pub fn most(&self, queue: &str) -> usize {
        self.lock().get(queue).map_or(0, |(_, most)| *most)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (usize, usize)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, queue: &str) -> RunningGuard {
        let mut counts = self.lock();
        let (now, most) = counts.entry(queue.to_owned()).or_default();
        *now += 1;
        *most = (*most).max(*now);
        RunningGuard(self.clone(), queue.to_owned())
    }
}

struct RunningGuard(Running, String);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Some((now, _)) = self.0.lock().get_mut(&self.1) {
            *now -= 1;
        }
    }
}

/// Sleeps `millis` with no timeout of its own, then records its run; or returns early with
/// a retryable error when `cooperative` and shutdown starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Block {
    pub millis: u64,
    pub cooperative: bool,
}

impl Job for Block {
    const NAME: &'static str = "block";
    const MAX_ATTEMPTS: u32 = 3;

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let _running = ctx.data::<Running>().map(|r| r.enter(ctx.queue()));
        let sleep = tokio::time::sleep(Duration::from_millis(self.millis));
        if self.cooperative {
            tokio::select! {
                () = sleep => {}
                () = ctx.shutting_down() => return Err(JobError::retry("interrupted by shutdown")),
            }
        } else {
            sleep.await;
        }
        if let Some(pool) = ctx.data::<Pool>() {
            let mut conn = pool.get_conn().await?;
            conn.exec_drop(
                "INSERT INTO runs (job_id, attempt, tag) VALUES (?, ?, 'block')",
                (ctx.id(), ctx.attempt()),
            )
            .await?;
        }
        Ok(())
    }
}

/// Hands its own row to another worker while running (what a rescue followed by another
/// claim looks like), then succeeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stolen;

impl Job for Stolen {
    const NAME: &'static str = "stolen";

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let pool = ctx
            .data::<Pool>()
            .ok_or_else(|| JobError::fail("no pool"))?;
        let mut conn = pool.get_conn().await?;
        conn.exec_drop(
            "UPDATE jobs SET reserved_by = 'another-worker', claim_token = claim_token + 1 \
             WHERE id = ?",
            (ctx.id(),),
        )
        .await?;
        Ok(())
    }
}

/// Snoozes `times` times (no attempt spent), then records its run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snoozy {
    pub times: u32,
}

impl Job for Snoozy {
    const NAME: &'static str = "snoozy";
    const MAX_ATTEMPTS: u32 = 1;

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let pool = ctx
            .data::<Pool>()
            .ok_or_else(|| JobError::fail("no pool"))?;
        let mut conn = pool.get_conn().await?;
        let seen: u64 = conn
            .exec_first(
                "SELECT COUNT(*) FROM runs WHERE job_id = ? AND tag = 'snooze'",
                (ctx.id(),),
            )
            .await?
            .unwrap_or(0);
        let tag = if seen < u64::from(self.times) {
            "snooze"
        } else {
            "done"
        };
        conn.exec_drop(
            "INSERT INTO runs (job_id, attempt, tag) VALUES (?, ?, ?)",
            (ctx.id(), ctx.attempt(), tag),
        )
        .await?;
        if tag == "snooze" {
            return Err(JobError::snooze(Duration::from_millis(50)));
        }
        Ok(())
    }
}

/// Dispatches `n` `Record` jobs tagged `0..n`.
pub async fn records(queue: &JobQueue, n: usize) -> Vec<u64> {
    queue
        .dispatch_many((0..n).map(|i| Record {
            tag: format!("{i}"),
        }))
        .await
        .unwrap()
}

/// Runs workers until no job is ready and none is running (at most 20 s).
#[allow(async_fn_in_trait)]
pub trait Drain {
    async fn drain(self) -> lightjobs::Report;
}

impl Drain for lightjobs::Workers {
    async fn drain(self) -> lightjobs::Report {
        let workers = self.stop_when_empty(true).start().await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), workers.wait())
            .await
            .expect("workers stop once the queue is empty")
    }
}
