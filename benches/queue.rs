//! Criterion benchmarks against the real MariaDB (`LIGHTJOBS_TEST_DATABASE_URL`, else
//! `mysql://root@127.0.0.1:3306/test`): claim throughput by batch size and by number of
//! concurrent claimers, dispatch throughput (single and batched), the full lifecycle of
//! no-op jobs through the real workers, and a claim passing over other apps' jobs.
//!
//! `cargo bench --bench queue` (add `-- lifecycle` to run one group). Each measurement
//! loads its backlog untimed and times only the operation named.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lightjobs::__private::Store;
use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use mysql_async::prelude::*;
use mysql_async::Pool;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Noop;

impl Job for Noop {
    const NAME: &'static str = "noop";
    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

struct Bench {
    system: actix_rt::SystemRunner,
    url: String,
    queue: JobQueue,
}

fn base_url() -> String {
    std::env::var("LIGHTJOBS_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

impl Bench {
    fn new() -> Bench {
        let system = actix_rt::System::new();
        let base = base_url();
        let host = match base.rfind('/') {
            Some(i) if i > base.find("://").map_or(0, |j| j + 2) => &base[..i],
            _ => base.as_str(),
        };
        let url = format!("{host}/ljb_bench");
        system.block_on(async {
            let admin = Pool::new(base.as_str());
            let mut conn = admin
                .get_conn()
                .await
                .expect("benchmark database reachable");
            conn.query_drop("DROP DATABASE IF EXISTS ljb_bench")
                .await
                .unwrap();
            conn.query_drop("CREATE DATABASE ljb_bench").await.unwrap();
        });
        let queue = JobQueue::connect(&url).unwrap();
        system.block_on(async { queue.migrate().await.unwrap() });
        Bench { system, url, queue }
    }

    /// Empties the table and loads `n` ready no-op jobs (untimed).
    fn load(&self, n: usize) {
        self.system.block_on(async {
            let pool = Pool::new(self.url.as_str());
            let mut conn = pool.get_conn().await.unwrap();
            conn.query_drop("TRUNCATE TABLE jobs").await.unwrap();
            drop(conn);
            pool.disconnect().await.unwrap();
            let mut left = n;
            while left > 0 {
                let batch = left.min(1000);
                self.queue
                    .dispatch_many((0..batch).map(|_| Noop))
                    .await
                    .unwrap();
                left -= batch;
            }
        });
    }

    fn store(&self) -> (Pool, Store) {
        let pool = Pool::new(
            mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&self.url).unwrap())
                .setup(vec![
                    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                ]),
        );
        (pool.clone(), Store::new(pool))
    }
}

fn claims(c: &mut Criterion) {
    let bench = Bench::new();
    let mut group = c.benchmark_group("claim");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for batch in [1usize, 10, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                bench.load(iters as usize * batch);
                bench.system.block_on(async {
                    let (pool, store) = bench.store();
                    let started = Instant::now();
                    for _ in 0..iters {
                        let jobs = store
                            .claim_available("default", batch, "bench")
                            .await
                            .unwrap();
                        assert_eq!(jobs.len(), batch);
                    }
                    let took = started.elapsed();
                    drop(store);
                    pool.disconnect().await.unwrap();
                    took
                })
            });
        });
    }
    // K claimers of 10 jobs each draining one backlog together.
    const PER_CLAIMER_ROUNDS: usize = 20;
    for claimers in [1usize, 4, 16] {
        let jobs = claimers * PER_CLAIMER_ROUNDS * 10;
        group.throughput(Throughput::Elements(jobs as u64));
        group.bench_with_input(
            BenchmarkId::new("claimers", claimers),
            &claimers,
            |b, &k| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        bench.load(jobs);
                        total += bench.system.block_on(async {
                            let started = Instant::now();
                            let tasks: Vec<_> = (0..k)
                                .map(|i| {
                                    let (pool, store) = bench.store();
                                    actix_rt::spawn(async move {
                                        let me = format!("bench-{i}");
                                        loop {
                                            let got = store
                                                .claim_available("default", 10, &me)
                                                .await
                                                .unwrap_or_default();
                                            if got.is_empty() {
                                                break;
                                            }
                                        }
                                        drop(store);
                                        pool.disconnect().await.unwrap();
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                            started.elapsed()
                        });
                    }
                    total
                });
            },
        );
    }
    group.finish();
}

fn dispatch(c: &mut Criterion) {
    let bench = Bench::new();
    let mut group = c.benchmark_group("dispatch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.iter_custom(|iters| {
            bench.system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    bench.queue.dispatch(Noop).await.unwrap();
                }
                started.elapsed()
            })
        });
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_100", |b| {
        b.iter_custom(|iters| {
            bench.system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    bench
                        .queue
                        .dispatch_many((0..100).map(|_| Noop))
                        .await
                        .unwrap();
                }
                started.elapsed()
            })
        });
    });
    group.finish();
}

fn lifecycle(c: &mut Criterion) {
    const JOBS: usize = 5_000;
    let bench = Bench::new();
    let mut group = c.benchmark_group("lifecycle");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(JOBS as u64));
    for concurrency in [10usize, 50] {
        group.bench_with_input(
            BenchmarkId::new("noop_drain", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        bench.load(JOBS);
                        total += bench.system.block_on(async {
                            let started = Instant::now();
                            let report = Workers::new(bench.queue.clone())
                                .register::<Noop>()
                                .concurrency(concurrency)
                                .stop_when_empty(true)
                                .start()
                                .await
                                .unwrap()
                                .wait()
                                .await;
                            assert_eq!(report.processed, JOBS as u64);
                            started.elapsed()
                        });
                    }
                    total
                });
            },
        );
    }
    group.finish();
}

/// Another app's job type, dispatched on the same queue: this process's claims pass over it.
#[derive(Serialize, Deserialize)]
struct OtherApp;

impl Job for OtherApp {
    const NAME: &'static str = "other_app";
    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// The claim of a worker that runs only `noop`, with `foreign` jobs of another type waiting
/// ahead of its own at the head of the queue (their workers down): the claim index orders
/// by priority and time, not by name, so the claim reads past them. Each sample is one
/// claim's locking read of 10 jobs, rolled back so the table stays as loaded.
fn claim_past_foreign(c: &mut Criterion) {
    let bench = Bench::new();
    let mut group = c.benchmark_group("claim_past_foreign");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let sql = lightjobs::__private::claim_sql_for("default", 10, &["noop"]);
    for foreign in [0usize, 1_000, 10_000] {
        bench.load(0);
        bench.system.block_on(async {
            for _ in 0..foreign / 1000 {
                bench
                    .queue
                    .dispatch_many((0..1000).map(|_| OtherApp))
                    .await
                    .unwrap();
            }
            bench
                .queue
                .dispatch_many((0..100).map(|_| Noop))
                .await
                .unwrap();
        });
        group.bench_with_input(BenchmarkId::new("foreign", foreign), &foreign, |b, _| {
            b.iter_custom(|iters| {
                bench.system.block_on(async {
                    let (pool, _store) = bench.store();
                    let mut conn = pool.get_conn().await.unwrap();
                    let started = Instant::now();
                    for _ in 0..iters {
                        conn.query_drop("START TRANSACTION").await.unwrap();
                        let rows: Vec<mysql_async::Row> = conn.query(sql.as_str()).await.unwrap();
                        assert_eq!(rows.len(), 10);
                        conn.query_drop("ROLLBACK").await.unwrap();
                    }
                    let took = started.elapsed();
                    drop(conn);
                    pool.disconnect().await.unwrap();
                    took
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, claims, dispatch, lifecycle, claim_past_foreign);
criterion_main!(benches);
