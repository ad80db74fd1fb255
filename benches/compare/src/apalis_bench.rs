//! apalis-mysql through its public API: storage in a database of its own, the backlog
//! pushed with `push_bulk`, a Monitor running one worker with a no-op handler until the
//! handler has counted the whole backlog.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use apalis::prelude::*;
use apalis_mysql::{Config, MySqlPool, MySqlStorage};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::util::{self, AnyResult, Drain};

/// The database apalis's tables live in.
pub const DB: &str = "bench_apalis";
/// The queue (apalis's `job_type`).
const QUEUE: &str = "bench";

/// The job's arguments (JSON-encoded by apalis's default codec).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ApalisNoop {
    n: u32,
}

/// Counts the handler's runs and fires `done` at `target`.
pub struct Counter {
    runs: AtomicUsize,
    target: usize,
    done: Notify,
}

async fn noop(_job: ApalisNoop, counter: Data<Arc<Counter>>) -> Result<(), BoxDynError> {
    if counter.runs.fetch_add(1, Ordering::AcqRel) + 1 == counter.target {
        counter.done.notify_one();
    }
    Ok(())
}

/// apalis-mysql's migrations name the collation `utf8mb4_0900_ai_ci`, which exists only on
/// MySQL 8 (and MariaDB 11.4.5+): on MariaDB 10.11 `MySqlStorage::setup` fails with
/// "Unknown collation". The same migrations, with that one name replaced, run through the
/// same public `Migrator`.
async fn setup(pool: &MySqlPool) -> AnyResult<()> {
    let mut migrator = MySqlStorage::migrations();
    for m in migrator.migrations.to_mut().iter_mut() {
        if m.sql.contains("utf8mb4_0900_ai_ci") {
            m.sql = m
                .sql
                .replace("utf8mb4_0900_ai_ci", "utf8mb4_unicode_ci")
                .into();
        }
    }
    migrator.run(pool).await?;
    Ok(())
}

/// One run: fresh database, `n` jobs pushed, then the monitor until all ran (timed from
/// just before the monitor starts to its end).
pub async fn drain_once(server: &str, n: usize, concurrency: usize) -> AnyResult<Drain> {
    util::recreate_database(server, DB).await?;
    let url = util::db_url(server, DB);
    let pool = MySqlPool::connect(&url).await?;
    if let Err(e) = MySqlStorage::setup(&pool).await {
        // Expected on MariaDB < 11.4.5 (see `setup`); start again on a clean database.
        if !e.to_string().contains("collation") {
            return Err(e.into());
        }
        eprintln!(
            "    apalis-mysql setup failed ({e}); applying its migrations with utf8mb4_unicode_ci"
        );
        pool.close().await;
        util::recreate_database(server, DB).await?;
        let pool = MySqlPool::connect(&url).await?;
        setup(&pool).await?;
        pool.close().await;
    }
    let pool = MySqlPool::connect(&url).await?;
    let config = Config::new(QUEUE).set_buffer_size(concurrency);
    let mut storage = MySqlStorage::new_with_config(&pool, &config);

    let t_load = Instant::now();
    storage
        .push_bulk((0..n as u32).map(|n| ApalisNoop { n }).collect())
        .await?;
    let load = t_load.elapsed();

    let counter = Arc::new(Counter {
        runs: AtomicUsize::new(0),
        target: n,
        done: Notify::new(),
    });
    let stop = counter.clone();
    let start_us = util::wall_us();
    let t0 = Instant::now();
    Monitor::new()
        .register(move |_| {
            WorkerBuilder::new("bench-apalis")
                .backend(storage.clone())
                .concurrency(concurrency)
                .data(counter.clone())
                .build(noop)
        })
        .run_with_signal(async move {
            stop.done.notified().await;
            Ok(())
        })
        .await?;
    let drain = t0.elapsed();
    let end_us = util::wall_us();
    pool.close().await;

    let done = util::count(server, DB, "jobs", "status = 'Done'").await?;
    if done != n as u64 {
        return Err(format!(
            "apalis: {done} of {n} jobs are Done (table: {})",
            util::status_counts(server, DB, "jobs").await?
        )
        .into());
    }
    Ok(Drain {
        time: drain,
        load: Some(load),
        lock_retries: 0,
        diag: None,
        start_us,
        end_us,
    })
}
