//! `--only bigtable`: do lightjobs's costs stay flat as the table retains more finished
//! rows? For each retained size, a fresh `bench_lightjobs_big` is filled with that many
//! finished rows by SQL, and the operator's reads (stats, dashboard, list pages), dispatch,
//! the drain and the pruner are timed on it through the public API.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{test, web, App};
use lightjobs::{JobQueue, Workers};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::lj::{load_backlog, Noop};
use crate::util::{self, median_min_max, quantile, thousands, AnyResult};

/// The database this part creates for each retained size.
pub const DB: &str = "bench_lightjobs_big";

/// Rows written by the generating INSERT before the doubling starts.
const SEED: u64 = 1000;
/// Most rows one doubling INSERT … SELECT copies: a statement's undo and temporary table
/// stay small next to a default 128 MiB buffer pool.
const CHUNK: u64 = 500_000;
/// The finished rows' `finished_at` span the last 36 hours, so a third are past the
/// pruner's one-day age when the part runs.
const SPAN_US: u64 = 36 * 3600 * 1_000_000;
/// What `prune` deletes: finished rows older than this (processed and failed alike).
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Timed `stats()` calls (what a /metrics scrape and the dashboard run).
const SCRAPES: usize = 20;
/// Timed full `GROUP BY` counts: few, because one reads the whole table.
const OLD_COUNTS: usize = 3;
/// Timed dashboard GETs.
const PAGES: usize = 10;
/// Timed calls of each list page.
const LIST_CALLS: usize = 10;
/// Rows per list page, and the page timed as "deep" (followed by its cursor).
const PAGE_ROWS: u64 = 50;
const DEEP_PAGE: usize = 100;
/// Dispatches: rounds of single-job `dispatch` calls, this many in flight.
const DISPATCH_ROUNDS: usize = 5;
const DISPATCH_PER_ROUND: usize = 1000;
const IN_FLIGHT: usize = 32;
/// Drains: rounds of this many pending jobs, `Workers` of this concurrency.
const DRAIN_ROUNDS: usize = 3;
const DRAIN_JOBS: usize = 20_000;
const DRAIN_CONCURRENCY: usize = 100;

/// The columns the fill writes; the others keep their defaults (NULL claim and unique
/// columns, priority 0), as a finished job leaves them.
const COLUMNS: &str = "name, queue, payload, status, attempts, max_attempts, last_error, \
     scheduled_at, created_at, reserved_at, finished_at";

/// Everything measured at one retained size. Times in ms, rates per second; a measure
/// that does not apply (nothing to prune, no deep page) is empty.
pub struct SizeRun {
    pub retained: u64,
    pub fill: Duration,
    pub rollup: Duration,
    pub scrape_ms: Vec<f64>,
    pub old_count_ms: Vec<f64>,
    pub dashboard_ms: Vec<f64>,
    pub first_page_ms: Vec<f64>,
    pub deep_page_ms: Vec<f64>,
    pub dispatch_per_s: Vec<f64>,
    pub drain_per_s: Vec<f64>,
    pub prune_per_s: Vec<f64>,
    pub pruned: u64,
}

/// Runs every size in `retained` (ascending), each on a fresh database.
pub async fn run(server: &str, retained: &[u64], keep: bool) -> AnyResult<Vec<SizeRun>> {
    let mut sizes = retained.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    let mut runs = Vec::with_capacity(sizes.len());
    for r in sizes {
        runs.push(one_size(server, r).await?);
    }
    if !keep {
        util::drop_database(server, DB).await?;
    }
    Ok(runs)
}

async fn one_size(server: &str, retained: u64) -> AnyResult<SizeRun> {
    let say = |what: &str| eprintln!("bigtable R={}: {what}", thousands(retained as f64));
    util::recreate_database(server, DB).await?;
    let url = util::db_url(server, DB);
    let queue = JobQueue::connect(&url)?;
    queue.migrate().await?;
    let fill = fill(&url, retained).await?;
    say(&format!(
        "filled in {:.1} s{}",
        fill.as_secs_f64(),
        per_100k(fill, retained)
    ));
    let rollup = roll_up(&url).await?;
    say(&format!(
        "rollup caught up in {:.1} s",
        rollup.as_secs_f64()
    ));
    let counts = queue.stats().await?;
    let shown: Vec<String> = counts
        .iter()
        .map(|c| format!("{}/{}={}", c.queue, c.status, c.count))
        .collect();
    say(&format!("stats(): {}", shown.join(", ")));
    let reads = reads(&queue, &url).await?;
    say("reads timed; dispatching …");
    let dispatch_per_s = dispatch_rounds(&queue).await?;
    say("draining …");
    let drain_per_s = drain_rounds(&queue, server).await?;
    let t0 = Instant::now();
    let pruned = queue.prune(DAY, Some(DAY)).await?;
    let prune_secs = t0.elapsed().as_secs_f64();
    say(&format!("pruned {pruned} rows in {prune_secs:.1} s"));
    Ok(SizeRun {
        retained,
        fill,
        rollup,
        scrape_ms: reads.scrape_ms,
        old_count_ms: reads.old_count_ms,
        dashboard_ms: reads.dashboard_ms,
        first_page_ms: reads.first_page_ms,
        deep_page_ms: reads.deep_page_ms,
        dispatch_per_s,
        drain_per_s,
        prune_per_s: if pruned > 0 {
            vec![pruned as f64 / prune_secs]
        } else {
            Vec::new()
        },
        pruned,
    })
}

/// Fills `jobs` with `n` finished rows: 90% processed, 10% failed, `finished_at` evenly
/// spaced over the last 36 hours and rising with the id, as a live table's would. A
/// generated seed, then INSERT … SELECT doubling: each copy lands `have` rows later in
/// time, so the final table is one even sequence whatever the id gaps.
async fn fill(url: &str, n: u64) -> AnyResult<Duration> {
    let t0 = Instant::now();
    if n == 0 {
        return Ok(t0.elapsed());
    }
    let mut conn = util::connect(url).await?;
    // READ COMMITTED: the copy reads its source without locking it (under REPEATABLE READ
    // a big INSERT … SELECT can exhaust the lock table of a small buffer pool). The unique
    // key is all NULL, so its checks are skipped.
    conn.query_drop(
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; SET SESSION unique_checks = 0",
    )
    .await?;
    let step_us = (SPAN_US / n).max(1);
    let seed = n.min(SEED);
    conn.exec_drop(
        format!(
            "INSERT INTO jobs ({COLUMNS}) \
             WITH RECURSIVE s (i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?) \
             SELECT 'noop', 'default', '{{}}', IF(i % 10 = 9, 'failed', 'processed'), 1, \
             IF(i % 10 = 9, 1, 3), IF(i % 10 = 9, 'bench: failed on purpose', NULL), \
             t - INTERVAL 5000 MICROSECOND, t - INTERVAL 5000 MICROSECOND, \
             t - INTERVAL 2000 MICROSECOND, t \
             FROM (SELECT i, UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
             + INTERVAL i * ? MICROSECOND AS t FROM s) x ORDER BY i"
        ),
        (seed, SPAN_US, step_us),
    )
    .await?;
    let mut have = seed;
    while have < n {
        let k = have.min(n - have);
        copy_first(&mut conn, k, have * step_us).await?;
        have += k;
        eprintln!("  bigtable: {} rows", thousands(have as f64));
    }
    conn.query_drop("ANALYZE TABLE jobs").await?;
    conn.disconnect().await?;
    Ok(t0.elapsed())
}

/// ` (0.52 s per 100k rows)`, or nothing for an empty fill.
fn per_100k(fill: Duration, rows: u64) -> String {
    if rows == 0 {
        return String::new();
    }
    format!(
        " ({:.2} s per 100k rows)",
        fill.as_secs_f64() * 100_000.0 / rows as f64
    )
}

/// Copies the first `k` rows (by id) to new rows, their times `shift_us` later, in
/// statements of at most [`CHUNK`] rows.
async fn copy_first(conn: &mut Conn, k: u64, shift_us: u64) -> AnyResult<()> {
    let mut last = 0u64;
    let mut copied = 0;
    while copied < k {
        let rows = CHUNK.min(k - copied);
        let hi: Option<u64> = conn
            .exec_first(
                "SELECT MAX(id) FROM (SELECT id FROM jobs WHERE id > ? ORDER BY id LIMIT ?) c",
                (last, rows),
            )
            .await?
            .flatten();
        let hi = hi.ok_or("the fill found no rows to copy")?;
        conn.exec_drop(
            format!(
                "INSERT INTO jobs ({COLUMNS}) SELECT name, queue, payload, status, attempts, \
                 max_attempts, last_error, scheduled_at + INTERVAL ? MICROSECOND, \
                 created_at + INTERVAL ? MICROSECOND, reserved_at + INTERVAL ? MICROSECOND, \
                 finished_at + INTERVAL ? MICROSECOND FROM jobs WHERE id > ? AND id <= ? \
                 ORDER BY id"
            ),
            (shift_us, shift_us, shift_us, shift_us, last, hi),
        )
        .await?;
        copied += conn.affected_rows();
        last = hi;
    }
    Ok(())
}

/// Runs lightjobs's rollup until it has caught up with now, as the worker processes of a
/// live system keep it (they run it every 10 s). Returns how long it took.
async fn roll_up(url: &str) -> AnyResult<Duration> {
    let t0 = Instant::now();
    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(url)?);
    let store = lightjobs::__private::Store::new(pool.clone());
    // A first pass counts from a day ago, an hour per call.
    let mut caught_up = false;
    for _ in 0..100 {
        if store.roll_up().await? {
            caught_up = true;
            break;
        }
    }
    pool.disconnect().await?;
    if !caught_up {
        return Err("the rollup did not catch up within 100 passes".into());
    }
    Ok(t0.elapsed())
}

/// The read measures, in ms.
struct Reads {
    scrape_ms: Vec<f64>,
    old_count_ms: Vec<f64>,
    dashboard_ms: Vec<f64>,
    first_page_ms: Vec<f64>,
    deep_page_ms: Vec<f64>,
}

/// Times each read `n` times after one untimed call (connections opened, pages cached),
/// except the full count, whose warm-up would cost as much as a sample.
async fn reads(queue: &JobQueue, url: &str) -> AnyResult<Reads> {
    let scrape_ms = time_ms(SCRAPES, true, async || {
        queue.stats().await?;
        Ok(())
    })
    .await?;
    let mut conn = util::connect(url).await?;
    let old_count_ms = time_ms(OLD_COUNTS, false, async || {
        let _: Vec<(String, String, u64)> = conn
            .query("SELECT queue, status, COUNT(*) FROM jobs GROUP BY queue, status")
            .await?;
        Ok(())
    })
    .await?;
    conn.disconnect().await?;
    let dashboard_ms = dashboard(queue).await?;
    let first_page_ms = time_ms(LIST_CALLS, true, async || {
        queue.list_page("processed", None, PAGE_ROWS, None).await?;
        Ok(())
    })
    .await?;
    let deep_page_ms = match deep_cursor(queue).await? {
        Some(cursor) => {
            time_ms(LIST_CALLS, true, async || {
                let page = queue
                    .list_page("processed", None, PAGE_ROWS, Some(&cursor))
                    .await?;
                if page.jobs.len() as u64 != PAGE_ROWS {
                    return Err(format!("page {DEEP_PAGE} has {} rows", page.jobs.len()).into());
                }
                Ok(())
            })
            .await?
        }
        None => Vec::new(),
    };
    Ok(Reads {
        scrape_ms,
        old_count_ms,
        dashboard_ms,
        first_page_ms,
        deep_page_ms,
    })
}

/// `n` timings of `f` in ms, after one untimed call when `warm`.
async fn time_ms(
    n: usize,
    warm: bool,
    mut f: impl AsyncFnMut() -> AnyResult<()>,
) -> AnyResult<Vec<f64>> {
    if warm {
        f().await?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        f().await?;
        v.push(util::ms(t0.elapsed()));
    }
    Ok(v)
}

/// The cursor of `processed` page [`DEEP_PAGE`], followed page by page from the first;
/// `None` when the table has fewer full pages.
async fn deep_cursor(queue: &JobQueue) -> AnyResult<Option<String>> {
    let mut after: Option<String> = None;
    for _ in 1..DEEP_PAGE {
        let page = queue
            .list_page("processed", None, PAGE_ROWS, after.as_deref())
            .await?;
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(None),
        }
    }
    Ok(after)
}

/// GETs of the dashboard page in an actix app, as an application mounts it, body read.
async fn dashboard(queue: &JobQueue) -> AnyResult<Vec<f64>> {
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(queue.clone()))
            .service(lightjobs::dashboard("/jobs").authorize(|_| true)),
    )
    .await;
    time_ms(PAGES, true, async || {
        let req = test::TestRequest::get().uri("/jobs").to_request();
        let resp = test::call_service(&app, req).await;
        let status = resp.status();
        let body = test::read_body(resp).await;
        if !status.is_success() || body.is_empty() {
            return Err(format!("the dashboard answered {status} ({} bytes)", body.len()).into());
        }
        Ok(())
    })
    .await
}

/// Rounds of single-job dispatches with [`IN_FLIGHT`] in flight; jobs/s of each round.
async fn dispatch_rounds(queue: &JobQueue) -> AnyResult<Vec<f64>> {
    let mut rates = Vec::with_capacity(DISPATCH_ROUNDS);
    for _ in 0..DISPATCH_ROUNDS {
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                let (queue, next) = (queue.clone(), next.clone());
                actix_rt::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < DISPATCH_PER_ROUND {
                        queue.dispatch(Noop {}).await?;
                    }
                    Ok::<_, lightjobs::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        rates.push(DISPATCH_PER_ROUND as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(rates)
}

/// Rounds of draining exactly [`DRAIN_JOBS`] pending jobs: the first takes the dispatch
/// step's jobs and tops them up, the others load a full backlog. Jobs/s of each drain.
async fn drain_rounds(queue: &JobQueue, server: &str) -> AnyResult<Vec<f64>> {
    let pending = || util::count(server, DB, "jobs", "status = 'pending'");
    let mut rates = Vec::with_capacity(DRAIN_ROUNDS);
    for _ in 0..DRAIN_ROUNDS {
        let have = pending().await? as usize;
        if have > DRAIN_JOBS {
            return Err(format!("{have} jobs pending before a drain of {DRAIN_JOBS}").into());
        }
        load_backlog(queue, DRAIN_JOBS - have).await?;
        let before = pending().await?;
        let t0 = Instant::now();
        let report = Workers::new(queue.clone())
            .register::<Noop>()
            .concurrency(DRAIN_CONCURRENCY)
            .stop_when_empty(true)
            .start()
            .await?
            .wait()
            .await;
        let secs = t0.elapsed().as_secs_f64();
        let left = pending().await?;
        if before != DRAIN_JOBS as u64 || report.processed != before || left != 0 {
            return Err(format!(
                "drain: {before} pending before, {} processed, {left} left ({report:?})",
                report.processed
            )
            .into());
        }
        rates.push(DRAIN_JOBS as f64 / secs);
    }
    Ok(rates)
}

/// How a measure's spread is shown next to its median.
#[derive(Clone, Copy)]
enum Spread {
    /// Times: the 90th percentile (the slow tail).
    P90,
    /// Few samples of a time: the slowest.
    Max,
    /// Rates: the slowest round.
    Min,
    /// One sample.
    None,
}

/// One table row: its label, the samples of a size, how to show the spread, decimals.
type Measure = (String, fn(&SizeRun) -> &[f64], Spread, usize);

fn measures() -> Vec<Measure> {
    vec![
        (
            format!("scrape: `queue.stats()` ms, median (p90) of {SCRAPES}"),
            |r| &r.scrape_ms,
            Spread::P90,
            2,
        ),
        (
            format!(
                "old full count `SELECT queue, status, COUNT(*) FROM jobs GROUP BY queue, status` ms, median (max) of {OLD_COUNTS}"
            ),
            |r| &r.old_count_ms,
            Spread::Max,
            1,
        ),
        (
            format!("dashboard: GET of the page ms, median (p90) of {PAGES}"),
            |r| &r.dashboard_ms,
            Spread::P90,
            2,
        ),
        (
            format!("list page: `list_page(\"processed\", None, {PAGE_ROWS}, None)` ms, median (p90) of {LIST_CALLS}"),
            |r| &r.first_page_ms,
            Spread::P90,
            2,
        ),
        (
            format!("list page {DEEP_PAGE} (cursor followed from page 1) ms, median (p90) of {LIST_CALLS}"),
            |r| &r.deep_page_ms,
            Spread::P90,
            2,
        ),
        (
            format!(
                "dispatch: single-job `dispatch(Noop)`, {IN_FLIGHT} in flight, jobs/s, median (min) of {DISPATCH_ROUNDS} rounds of {}",
                thousands(DISPATCH_PER_ROUND as f64)
            ),
            |r| &r.dispatch_per_s,
            Spread::Min,
            0,
        ),
        (
            format!(
                "claim/drain: `Workers` concurrency {DRAIN_CONCURRENCY}, {} pending no-op jobs, jobs/s, median (min) of {DRAIN_ROUNDS}",
                thousands(DRAIN_JOBS as f64)
            ),
            |r| &r.drain_per_s,
            Spread::Min,
            0,
        ),
        (
            "pruner: `queue.prune(1 day, Some(1 day))`, rows deleted/s".to_owned(),
            |r| &r.prune_per_s,
            Spread::None,
            0,
        ),
    ]
}

/// A number with `decimals` places, thousands separated when it has none.
fn number(x: f64, decimals: usize) -> String {
    if decimals == 0 {
        thousands(x)
    } else {
        format!("{x:.decimals$}")
    }
}

fn cell(samples: &[f64], spread: Spread, decimals: usize) -> String {
    if samples.is_empty() {
        return "–".to_owned();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (median, min, max) = median_min_max(&sorted);
    let (name, value) = match spread {
        Spread::P90 => ("p90", quantile(&sorted, 0.9)),
        Spread::Max => ("max", max),
        Spread::Min => ("min", min),
        Spread::None => return number(median, decimals),
    };
    format!(
        "{} ({name} {})",
        number(median, decimals),
        number(value, decimals)
    )
}

/// `10000000` as `10M`, `200000` as `200k`.
fn size_label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => thousands(n as f64),
    }
}

/// The sizes the ratio columns divide by: the smallest and, with three sizes or more, the
/// one below the largest (R = 0 has no finished minutes at all; the step between the two
/// largest shows whether the cost still grows).
fn ratio_bases(sizes: usize) -> Vec<usize> {
    match sizes {
        0 | 1 => Vec::new(),
        2 => vec![0],
        n => vec![0, n - 2],
    }
}

/// The median at the largest size ÷ the median at size `base`; "–" where either has none.
fn ratio(runs: &[SizeRun], of: fn(&SizeRun) -> &[f64], base: usize) -> String {
    let median = |r: &SizeRun| (!of(r).is_empty()).then(|| median_min_max(of(r)).0);
    match (
        runs.last().and_then(median),
        runs.get(base).and_then(median),
    ) {
        (Some(top), Some(m)) if m > 0.0 => format!("{:.2}×", top / m),
        _ => "–".to_owned(),
    }
}

/// The part's Markdown section: the command, one row per measure, one column per size.
pub fn print(out: &mut String, runs: &[SizeRun]) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(
        out,
        "## Costs against retained finished rows\n\n\
         `cargo run --release -- {}` (in benches/compare)\n",
        args.join(" ")
    );
    let sizes: Vec<String> = runs.iter().map(|r| size_label(r.retained)).collect();
    let bases = ratio_bases(runs.len());
    let largest = sizes.last().cloned().unwrap_or_default();
    let heads: Vec<String> = sizes
        .iter()
        .map(|s| format!("R = {s}"))
        .chain(bases.iter().map(|&b| format!("{largest} ÷ {}", sizes[b])))
        .collect();
    let _ = writeln!(out, "| measure | {} |", heads.join(" | "));
    let _ = writeln!(out, "| --- |{}", " ---: |".repeat(heads.len()));
    for (label, of, spread, decimals) in measures() {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| cell(of(r), spread, decimals))
            .chain(bases.iter().map(|&b| ratio(runs, of, b)))
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    print_notes(out, runs);
}

fn print_notes(out: &mut String, runs: &[SizeRun]) {
    let _ = writeln!(
        out,
        "\n- R: finished rows in `jobs` before the measures (90% `processed`, 10% `failed`, \
         `finished_at` evenly over the last 36 hours, so a third is older than a day), filled \
         by SQL on a fresh database, then `ANALYZE TABLE` and lightjobs's rollup run until \
         caught up. Reads come first, then dispatch, drain and prune, which add their own \
         rows. The ratios compare medians: for ms above 1 is slower, for jobs/s below 1."
    );
    let _ = writeln!(
        out,
        "- `stats()` reads finished jobs from the rollup: one row per minute of the last day, \
         queue and status with finished jobs. At R = 0 there are none; once jobs of a (queue, \
         status) finished in every minute of the day, it sums 1,440 rows for that pair \
         whatever R is: its step up from R = 0 is that sum, not the retained rows."
    );
    for r in runs {
        let _ = writeln!(
            out,
            "- R = {}: fill {:.1} s{}, rollup {:.1} s, pruned {} rows.",
            size_label(r.retained),
            r.fill.as_secs_f64(),
            per_100k(r.fill, r.retained),
            r.rollup.as_secs_f64(),
            thousands(r.pruned as f64)
        );
    }
    let _ = writeln!(out);
}
