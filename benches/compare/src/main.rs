//! Drains the same backlog of no-op jobs with lightjobs, hand-written SQL loops and
//! apalis-mysql on one MariaDB, in one run, and prints Markdown tables; also measures
//! lightjobs's dispatch→start latency and its memory over a large backlog.
//!
//! ```text
//! cargo run --release -- --jobs 20000 --runs 3
//! cargo run --release -- --only latency
//! ```

mod apalis_bench;
mod batches;
mod bigtable;
mod cancel;
mod flow;
mod hosts;
mod lj;
mod raw;
mod util;
mod web;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::util::{median_min_max, quantile, thousands, AnyResult};

#[derive(Parser, Debug)]
#[command(
    name = "lightjobs-compare",
    about = "Drains one backlog of no-op jobs with lightjobs, raw SQL loops and apalis-mysql; \
             measures lightjobs's dispatch→start latency and memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,

    /// The MySQL/MariaDB server (a database path is ignored); the benchmark creates and
    /// drops its own databases there: bench_lightjobs, bench_lightjobs_mem, bench_apalis,
    /// bench_web, bench_lightjobs_big.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    url: String,

    /// Jobs in the backlog each strategy drains.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,

    /// Runs per strategy (each on a fresh table); the runs of all strategies interleave.
    #[arg(long, default_value_t = 3)]
    runs: usize,

    /// Parts to run, comma-separated: all, lifecycle (= lightjobs,raw,seed,apalis),
    /// lightjobs, raw, seed, apalis, latency, memory, web; hosts and bigtable only when
    /// named (not in all).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    only: Vec<Part>,

    /// lightjobs configurations, one row each: `C` is one `Workers` with concurrency C;
    /// `WxC` is W `Workers` started side by side on the queue (W fetch loops), C each. The
    /// first is the reference of the "lightjobs ×" column.
    #[arg(long, value_delimiter = ',', default_value = "100,10,2x100", value_parser = parse_lightjobs)]
    lightjobs: Vec<(usize, usize)>,

    /// Connections of the raw floor, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    raw_claimers: Vec<usize>,

    /// Also run the raw floor with completions folded into the next claim's transaction
    /// (how lightjobs's claim cycle is built), one connection: a diagnostic row.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    raw_folded: bool,

    /// Connections of the seed strategy (plain FOR UPDATE), one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    seed_claimers: Vec<usize>,

    /// apalis: `concurrency(C)` layer and fetch buffer size.
    #[arg(long, default_value_t = 100)]
    apalis_concurrency: usize,

    /// Cancels per configuration of the cancel part.
    #[arg(long, default_value_t = 100)]
    cancel_samples: usize,

    /// Latency samples per configuration.
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,

    /// Mean pause between two latency dispatches, in ms (each pause is uniform in ½…1½ of it).
    #[arg(long, default_value_t = 100)]
    latency_pause_ms: u64,

    /// Samples of the idle-queue cross-process measurement (default poll settings, long
    /// pauses so the poll interval has grown to its maximum); 0 to skip it.
    #[arg(long, default_value_t = 25)]
    latency_idle_samples: usize,

    /// Mean pause between two dispatches of the idle-queue measurement, in ms.
    #[arg(long, default_value_t = 2000)]
    latency_idle_pause_ms: u64,

    /// Pending jobs loaded for the memory check.
    #[arg(long, default_value_t = 1_000_000)]
    memory_jobs: u64,

    /// Seconds the memory check runs the workers (less if the backlog drains first).
    #[arg(long, default_value_t = 25)]
    memory_secs: u64,

    /// Workers concurrency in the memory check.
    #[arg(long, default_value_t = 100)]
    memory_concurrency: usize,

    /// Connections of the web-path load (one request in flight on each).
    #[arg(long, default_value_t = 32)]
    web_connections: usize,

    /// Web-path rows to run, comma-separated (default: all five).
    #[arg(long, value_enum, value_delimiter = ',')]
    web_rows: Vec<web::Route>,

    /// Requests per web-path row and run (after a warm-up of 20 per connection).
    #[arg(long, default_value_t = 20_000)]
    web_requests: usize,

    /// Worker processes of the multi-host part (`--only hosts`), one row each: every
    /// process in a network namespace of its own against a private server in another.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    hosts: Vec<usize>,

    /// Slots of each lightjobs worker process in the multi-host part.
    #[arg(long, default_value_t = 100)]
    host_concurrency: usize,

    /// One-way delay `tc netem` adds on each end of every host's link, in µs (0: none;
    /// 100–500 stands in for a LAN). Needs a kernel with sch_netem.
    #[arg(long, default_value_t = 0)]
    host_delay_us: u64,

    /// Finished rows the table retains in the bigtable part (`--only bigtable`), one
    /// column each: every size on a freshly filled database.
    #[arg(long, value_delimiter = ',', default_value = "0,1000000,10000000")]
    retained: Vec<u64>,

    /// Leave the last run's databases in place for inspection (they are dropped otherwise).
    #[arg(long)]
    keep_databases: bool,
}

/// Subcommands the benchmark runs in child processes of itself.
#[derive(Subcommand, Debug)]
enum Internal {
    /// The dispatching side of the cross-process latency measurement.
    #[command(hide = true)]
    DispatchProbes {
        #[arg(long)]
        db_url: String,
        #[arg(long)]
        samples: usize,
        #[arg(long)]
        pause_ms: u64,
    },
    /// The worker side of the cross-process cancel measurement.
    #[command(hide = true)]
    CancelWorker {
        #[arg(long)]
        db_url: String,
    },
    /// The memory check, in a process of its own; prints one JSON line.
    #[command(hide = true)]
    MemoryChild {
        #[arg(long)]
        url: String,
        #[arg(long)]
        jobs: u64,
        #[arg(long)]
        secs: u64,
        #[arg(long)]
        concurrency: usize,
    },
    /// Serves the web-path app until killed, for an outside load generator; prints its URL.
    WebServe {
        /// Each dispatch a statement of its own (`combine_dispatches(false)`).
        #[arg(long)]
        alone: bool,
        /// Also run `Workers` (concurrency 100) in the app's process.
        #[arg(long)]
        workers: bool,
    },
    /// A worker process of the multi-host part (run inside a host's namespace).
    #[command(hide = true)]
    HostChild {
        #[arg(long, value_enum)]
        side: hosts::Side,
        #[arg(long)]
        url: String,
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    All,
    #[value(alias = "throughput")]
    Lifecycle,
    Lightjobs,
    Raw,
    Seed,
    Apalis,
    Latency,
    Memory,
    /// The web path: an actix app dispatching under HTTP load.
    Web,
    /// Not part of `all`: needs root and iproute2.
    Hosts,
    /// Costs against millions of retained finished rows. Not part of `all`: slow (it
    /// fills tables of up to `--retained` rows).
    Bigtable,
    /// Flow control's cost: per-key concurrency limits against the unconstrained drain.
    /// Not part of `all`.
    Flow,
    /// Cancel latency, a job in this process and in another one. Not part of `all`.
    Cancel,
    /// Batches' cost: jobs in batches of 100 and 10,000 against plain jobs. Not part of
    /// `all`.
    Batches,
}

impl Cli {
    fn wants(&self, part: Part) -> bool {
        self.only.iter().any(|&p| {
            p == part
                || (p == Part::All
                    && !matches!(
                        part,
                        Part::Hosts | Part::Bigtable | Part::Flow | Part::Cancel | Part::Batches
                    ))
                || (p == Part::Lifecycle
                    && matches!(
                        part,
                        Part::Lightjobs | Part::Raw | Part::Seed | Part::Apalis
                    ))
        })
    }
}

/// `C` or `WxC` (see `--lightjobs`).
fn parse_lightjobs(s: &str) -> Result<(usize, usize), String> {
    let (w, c) = s.split_once('x').unwrap_or(("1", s));
    let num = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("`{s}`: expected C or WxC with positive numbers"))
    };
    Ok((num(w)?, num(c)?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> AnyResult<()> {
    match &cli.command {
        Some(Internal::DispatchProbes {
            db_url,
            samples,
            pause_ms,
        }) => {
            return actix_rt::System::new().block_on(lj::dispatch_probes(
                db_url,
                *samples,
                Duration::from_millis(*pause_ms),
            ));
        }
        Some(Internal::CancelWorker { db_url }) => {
            return actix_rt::System::new().block_on(cancel::worker(db_url));
        }
        Some(Internal::MemoryChild {
            url,
            jobs,
            secs,
            concurrency,
        }) => {
            let report = actix_rt::System::new().block_on(lj::memory_child(
                url,
                *jobs,
                *secs,
                *concurrency,
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        Some(Internal::HostChild {
            side,
            url,
            concurrency,
            name,
        }) => return hosts::child(*side, url, *concurrency, name),
        Some(Internal::WebServe { alone, workers }) => {
            return web::serve(&cli.url, !*alone, *workers);
        }
        None => {}
    }
    if cli.jobs == 0 || cli.runs == 0 {
        return Err("--jobs and --runs must be at least 1".into());
    }
    // lightjobs's workers run on actix-rt (a single-threaded runtime); the raw loops and
    // apalis on a 2-thread tokio runtime, the machine's size.
    let actix = actix_rt::System::new();
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut out = String::new();
    if cli.wants(Part::Hosts) {
        let opts = hosts::HostsOpts {
            processes: cli.hosts.clone(),
            jobs: cli.jobs,
            runs: cli.runs,
            concurrency: cli.host_concurrency,
            delay_us: cli.host_delay_us,
        };
        let (runs, version) = hosts::run(&opts, &actix)?;
        print_hosts(&mut out, &opts, &runs);
        if cli.only == [Part::Hosts] {
            print_machine(&mut out, &version);
            print!("{out}");
            return Ok(());
        }
    }
    let version = tokio_rt.block_on(util::server_version(&cli.url))?;

    if [Part::Lightjobs, Part::Raw, Part::Seed, Part::Apalis]
        .iter()
        .any(|&p| cli.wants(p))
    {
        let rows = throughput(&cli, &actix, &tokio_rt)?;
        print_throughput(&mut out, &cli, &rows);
    }
    if cli.wants(Part::Web) {
        let runs = web_path(&cli, &actix)?;
        print_web(&mut out, &cli, &runs);
    }
    if cli.wants(Part::Latency) {
        let results = latency(&cli, &actix)?;
        print_latency(&mut out, &results);
    }
    if cli.wants(Part::Memory) {
        let report = memory(&cli)?;
        print_memory(&mut out, &report);
    }
    if cli.wants(Part::Bigtable) {
        let runs = actix.block_on(bigtable::run(&cli.url, &cli.retained, cli.keep_databases))?;
        bigtable::print(&mut out, &runs);
    }
    if cli.wants(Part::Cancel) {
        let runs = actix.block_on(cancel::run(&cli.url, cli.cancel_samples))?;
        cancel::print(&mut out, &runs);
    }
    if cli.wants(Part::Flow) {
        let runs = actix.block_on(flow::run(&cli.url, cli.jobs, cli.runs))?;
        flow::print(&mut out, cli.jobs, &runs);
    }
    if cli.wants(Part::Batches) {
        let runs = actix.block_on(batches::run(&cli.url, cli.jobs, cli.runs))?;
        batches::print(&mut out, cli.jobs, &runs);
    }
    print_machine(&mut out, &version);
    print!("{out}");
    Ok(())
}

/// One table row: a strategy and its runs.
struct Row {
    label: String,
    kind: Kind,
    /// jobs/s of each run.
    rates: Vec<f64>,
    /// Each run's measurements.
    drains: Vec<util::Drain>,
}

impl Row {
    /// The median over the runs of `f` (None where a run lacks it).
    fn median_of(&self, f: impl Fn(&util::Drain) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.drains.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median_min_max(&v).0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// (Workers started, concurrency of each).
    Lightjobs(usize, usize),
    Raw(raw::Strategy, usize),
    Apalis(usize),
}

fn throughput(
    cli: &Cli,
    actix: &actix_rt::SystemRunner,
    tokio_rt: &tokio::runtime::Runtime,
) -> AnyResult<Vec<Row>> {
    let mut kinds = Vec::new();
    if cli.wants(Part::Lightjobs) {
        kinds.extend(cli.lightjobs.iter().map(|&(w, c)| Kind::Lightjobs(w, c)));
    }
    if cli.wants(Part::Raw) {
        kinds.extend(
            cli.raw_claimers
                .iter()
                .map(|&c| Kind::Raw(raw::Strategy::RawFloor, c)),
        );
        if cli.raw_folded {
            kinds.push(Kind::Raw(raw::Strategy::RawFolded, 1));
        }
    }
    if cli.wants(Part::Seed) {
        kinds.extend(
            cli.seed_claimers
                .iter()
                .map(|&c| Kind::Raw(raw::Strategy::Seed, c)),
        );
    }
    if cli.wants(Part::Apalis) {
        kinds.push(Kind::Apalis(cli.apalis_concurrency));
    }
    let mut rows: Vec<Row> = kinds
        .iter()
        .map(|&kind| Row {
            label: label(kind),
            kind,
            rates: Vec::new(),
            drains: Vec::new(),
        })
        .collect();
    let n = cli.jobs;
    // Runs interleave (run 1 of every strategy, then run 2, …) so that a noisy period on
    // the shared machine does not land on one strategy only.
    for run in 1..=cli.runs {
        for row in &mut rows {
            eprintln!("[run {run}/{}] {} …", cli.runs, row.label);
            let drain = match row.kind {
                Kind::Lightjobs(w, c) => actix.block_on(lj::drain_once(&cli.url, n, c, w))?,
                Kind::Raw(strategy, claimers) => {
                    tokio_rt.block_on(raw::drain_once(&cli.url, strategy, claimers, n))?
                }
                Kind::Apalis(c) => tokio_rt.block_on(apalis_bench::drain_once(&cli.url, n, c))?,
            };
            let rate = n as f64 / drain.time.as_secs_f64();
            eprintln!(
                "    {} jobs in {:.2} s: {} jobs/s",
                n,
                drain.time.as_secs_f64(),
                thousands(rate)
            );
            row.rates.push(rate);
            row.drains.push(drain);
        }
    }
    if !cli.keep_databases {
        tokio_rt.block_on(async {
            util::drop_database(&cli.url, lj::DB).await?;
            util::drop_database(&cli.url, apalis_bench::DB).await
        })?;
    }
    Ok(rows)
}

fn label(kind: Kind) -> String {
    match kind {
        Kind::Lightjobs(1, c) => format!("lightjobs, Workers concurrency {c}"),
        Kind::Lightjobs(w, c) => {
            format!("lightjobs, {w} Workers side by side, concurrency {c} each")
        }
        Kind::Raw(raw::Strategy::RawFloor, c) => format!(
            "raw floor: claim 100 SKIP LOCKED + 1 UPDATE, {c} connection{}",
            if c == 1 { "" } else { "s" }
        ),
        Kind::Raw(raw::Strategy::RawFolded, c) => format!(
            "raw floor with completions folded into the next claim (2 round trips, 1 commit per batch), {c} connection{}",
            if c == 1 { "" } else { "s" }
        ),
        Kind::Raw(raw::Strategy::Seed, c) => format!(
            "seed (Lightpack): 1 job per transaction, FOR UPDATE, {c} connection{}",
            if c == 1 { "" } else { "s" }
        ),
        Kind::Apalis(c) => {
            format!("apalis-mysql 1.0.0-rc.8, concurrency {c}, buffer {c}")
        }
    }
}

fn print_throughput(out: &mut String, cli: &Cli, rows: &[Row]) {
    let median = |r: &Row| median_min_max(&r.rates).0;
    // The raw floor: the best of the raw-floor rows.
    let floor = rows
        .iter()
        .filter(|r| matches!(r.kind, Kind::Raw(raw::Strategy::RawFloor, _)))
        .max_by(|a, b| median(a).total_cmp(&median(b)));
    let reference = rows.iter().find(|r| matches!(r.kind, Kind::Lightjobs(..)));
    let _ = writeln!(
        out,
        "## Draining {} no-op jobs ({} run{} per strategy, fresh table per run, drain time only)\n",
        thousands(cli.jobs as f64),
        cli.runs,
        if cli.runs == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "| strategy | jobs/s median | min | max | × raw floor | lightjobs × |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let (med, min, max) = median_min_max(&row.rates);
        let vs_floor = floor.map_or("–".to_owned(), |f| format!("{:.2}×", med / median(f)));
        let lj_x = reference.map_or("–".to_owned(), |l| format!("{:.2}×", median(l) / med));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.label,
            thousands(med),
            thousands(min),
            thousands(max),
            vs_floor,
            lj_x
        );
    }
    let _ = writeln!(out);
    if let Some(f) = floor {
        let _ = writeln!(
            out,
            "- × raw floor: median ÷ the median of \"{}\" (the best raw-floor row).",
            f.label
        );
    }
    if let Some(l) = reference {
        let _ = writeln!(
            out,
            "- lightjobs ×: the median of \"{}\" ÷ the row's median (above 1: lightjobs is faster).",
            l.label
        );
    }
    for row in rows {
        let mut notes = Vec::new();
        if let Some(m) = row.median_of(|d| d.load.map(|l| l.as_secs_f64())) {
            let how = match row.kind {
                Kind::Apalis(_) => "push_bulk, one transaction of single-row INSERTs",
                _ => "dispatch_many, 1,000 per call",
            };
            notes.push(format!(
                "loading took {m:.2} s median ({} jobs/s; {how}; not in the drain time)",
                thousands(cli.jobs as f64 / m)
            ));
        }
        let retries: u64 = row.drains.iter().map(|d| d.lock_retries).sum();
        if retries > 0 {
            notes.push(format!(
                "{retries} claim transactions retried after a deadlock/lock wait timeout over all runs"
            ));
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "- {}: {}.", row.label, notes.join("; "));
        }
    }
    let runs: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r.label,
                r.rates
                    .iter()
                    .map(|x| thousands(*x))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let _ = writeln!(out, "- Every run, jobs/s in run order:");
    for r in runs {
        let _ = writeln!(out, "  - {r}");
    }
    let _ = writeln!(out);
    print_diagnostics(out, rows, cli.jobs);
}

/// Where the time goes, read back from the table after each drain (medians over the runs).
fn print_diagnostics(out: &mut String, rows: &[Row], jobs: usize) {
    let jobs = jobs as f64;
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.drains.iter().all(|d| d.diag.is_some()))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Where the time goes (lightjobs schema, read back from the table; medians over the runs)\n");
    let _ = writeln!(
        out,
        "| strategy | claim statements | jobs per claim | completion statements | jobs per completion | start → first claim ms | first claim → last completion ms | last completion → stopped ms |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let diag = |f: fn(&util::Diag, &util::Drain) -> f64| {
            row.median_of(|d| d.diag.map(|g| f(&g, d)))
                .unwrap_or(f64::NAN)
        };
        let claims = diag(|g, _| g.claims as f64);
        let completions = diag(|g, _| g.completions as f64);
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            row.label,
            thousands(claims),
            jobs / claims,
            thousands(completions),
            jobs / completions,
            diag(|g, d| (g.first_claim_us - d.start_us) as f64 / 1000.0),
            diag(|g, _| (g.last_finish_us - g.first_claim_us) as f64 / 1000.0),
            diag(|g, d| (d.end_us - g.last_finish_us) as f64 / 1000.0),
        );
    }
    let _ = writeln!(
        out,
        "\n- Rows claimed by one statement share their `reserved_at` and rows completed by one \
         statement their `finished_at` (`UTC_TIMESTAMP(6)` is evaluated once per statement), \
         so COUNT(DISTINCT …) counts the statements. Times compare the database's clock with \
         this process's (same host).\n"
    );
}

fn latency(cli: &Cli, actix: &actix_rt::SystemRunner) -> AnyResult<Vec<lj::LatencyResult>> {
    let opts = lj::LatencyOpts {
        samples: cli.latency_samples,
        pause: Duration::from_millis(cli.latency_pause_ms),
    };
    let mut results = Vec::new();
    for handoff in [true, false] {
        eprintln!("latency: in-process, handoff {handoff} …");
        results.push(actix.block_on(lj::latency_in_process(&cli.url, opts, handoff))?);
    }
    let idle = lj::LatencyOpts {
        samples: cli.latency_idle_samples,
        pause: Duration::from_millis(cli.latency_idle_pause_ms),
    };
    let fast_poll = Some((Duration::from_millis(10), Duration::from_millis(100)));
    for (poll, opts) in [
        (None, opts),
        (fast_poll, opts),
        (None, idle),
        (fast_poll, idle),
    ] {
        if opts.samples == 0 {
            continue;
        }
        eprintln!(
            "latency: cross-process, poll {poll:?}, {} samples, pauses {:?} …",
            opts.samples, opts.pause
        );
        results.push(actix.block_on(lj::latency_cross_process(&cli.url, opts, poll))?);
    }
    if !cli.keep_databases {
        actix.block_on(util::drop_database(&cli.url, lj::DB))?;
    }
    Ok(results)
}

fn print_latency(out: &mut String, results: &[lj::LatencyResult]) {
    let _ = writeln!(
        out,
        "## lightjobs dispatch→start latency (one job at a time; each pause between two dispatches is uniform in ½…1½ of the stated mean)\n"
    );
    let _ = writeln!(
        out,
        "| measurement | samples | p50 ms | p90 ms | p99 ms | max ms |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut row = |name: &str, v: &[f64]| {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            v.len(),
            quantile(v, 0.5),
            quantile(v, 0.9),
            quantile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    };
    for r in results {
        row(&r.label, &r.total_ms);
        if !r.dispatch_call_ms.is_empty() {
            row(
                "… of which inside `dispatch(..).await` (the INSERT)",
                &r.dispatch_call_ms,
            );
        }
    }
    let _ = writeln!(
        out,
        "\n- Measured from just before `queue.dispatch(job).await` to the first line of the \
         job's `execute`. In-process: `Instant`s. Cross-process: the dispatching process \
         (this binary re-executed) puts its `SystemTime` in the payload, the worker compares \
         with its own clock (same host). The worker has concurrency {} and is idle between \
         samples; lightjobs's defaults are `poll_interval({:?}, {:?})` with ±20% jitter, \
         doubling while idle.\n",
        lightjobs::defaults::CONCURRENCY,
        lightjobs::defaults::POLL_MIN,
        lightjobs::defaults::POLL_MAX
    );
}

fn memory(cli: &Cli) -> AnyResult<lj::MemoryReport> {
    eprintln!(
        "memory: {} pending jobs, workers for up to {} s (child process) …",
        cli.memory_jobs, cli.memory_secs
    );
    let output = std::process::Command::new(std::env::current_exe()?)
        .arg("memory-child")
        .arg("--url")
        .arg(&cli.url)
        .arg("--jobs")
        .arg(cli.memory_jobs.to_string())
        .arg("--secs")
        .arg(cli.memory_secs.to_string())
        .arg("--concurrency")
        .arg(cli.memory_concurrency.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("the memory check's process exited with {}", output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("the memory check printed no report")?;
    Ok(serde_json::from_str(line)?)
}

fn print_memory(out: &mut String, r: &lj::MemoryReport) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let max = r.samples.iter().map(|s| s.1).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "## lightjobs memory with {} pending jobs (VmRSS of the worker process, sampled every second)\n",
        thousands(r.loaded as f64)
    );
    let _ = writeln!(
        out,
        "| pending at start | concurrency | ran s | processed | jobs/s | RSS before load MiB | RSS at start MiB | RSS max MiB | RSS end MiB | RSS after stop MiB | VmHWM MiB |"
    );
    let _ = writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        out,
        "| {} | {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        thousands(r.loaded as f64),
        r.concurrency,
        r.run_secs,
        thousands(r.processed as f64),
        thousands(r.processed as f64 / r.run_secs),
        mib(r.rss_before_load_kib),
        mib(r.rss_start_kib),
        mib(max),
        mib(r.rss_end_kib),
        mib(r.rss_after_stop_kib),
        mib(r.hwm_kib),
    );
    let per_second: Vec<String> = r
        .samples
        .iter()
        .map(|(_, kib)| format!("{:.1}", mib(*kib)))
        .collect();
    let _ = writeln!(
        out,
        "\n- VmRSS MiB, one sample a second from `Workers::start`: {}.",
        per_second.join(", ")
    );
    let _ = writeln!(
        out,
        "- Loaded with 1,000 `dispatch_many` rows then `INSERT … SELECT` doubling in {:.1} s; \
         the check runs in a child process of its own so the other parts' allocations are not \
         in its numbers.\n",
        r.load_secs
    );
}

fn web_path(cli: &Cli, actix: &actix_rt::SystemRunner) -> AnyResult<Vec<web::WebRun>> {
    let mut runs = Vec::new();
    for run in 1..=cli.runs {
        for route in web::Route::ALL {
            if !cli.web_rows.is_empty() && !cli.web_rows.contains(&route) {
                continue;
            }
            eprintln!("[run {run}/{}] web: {} …", cli.runs, route.label());
            let r = web::run_once(
                &cli.url,
                route,
                cli.web_connections,
                cli.web_requests,
                actix,
            )?;
            eprintln!(
                "    {}/s, p50 {:.2} ms, p99 {:.2} ms",
                thousands(r.per_sec),
                r.p50,
                r.p99
            );
            runs.push(r);
        }
    }
    if !cli.keep_databases {
        actix.block_on(util::drop_database(&cli.url, web::DB))?;
    }
    Ok(runs)
}

fn print_web(out: &mut String, cli: &Cli, runs: &[web::WebRun]) {
    let _ = writeln!(
        out,
        "## The web path\n\n\
         An actix-web app (2 HTTP workers) whose `POST /dispatch` handler awaits \
         `queue.dispatch(Noop {{}})`, under {} keep-alive connections from a load generator \
         on one thread of the same machine, {} requests per run after a warm-up, median of \
         {} runs (min–max); p50 and p99 are each run's request latency quantiles, median over the runs. \
         The raw INSERT floor runs the same number of connections without HTTP.\n",
        cli.web_connections,
        thousands(cli.web_requests as f64),
        cli.runs
    );
    let _ = writeln!(
        out,
        "| row | requests/s | × no-op route | ÷ INSERT floor | p50 ms | p99 ms | all processed after |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    let of = |route: web::Route| -> Vec<&web::WebRun> {
        runs.iter().filter(|r| r.route == route).collect()
    };
    let median = |rs: &[&web::WebRun], f: &dyn Fn(&web::WebRun) -> f64| {
        let v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
        median_min_max(&v)
    };
    // NaN (printed as such) when the reference row was not run.
    let noop = median(&of(web::Route::Noop), &|r| r.per_sec).0;
    let floor = median(&of(web::Route::InsertFloor), &|r| r.per_sec).0;
    for route in web::Route::ALL {
        let rs = of(route);
        if rs.is_empty() {
            continue;
        }
        let (med, min, max) = median(&rs, &|r| r.per_sec);
        let drained = rs
            .iter()
            .filter_map(|r| r.drained_after)
            .map(|d| d.as_secs_f64() * 1e3)
            .collect::<Vec<_>>();
        let drained = if drained.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.0} ms", median_min_max(&drained).0)
        };
        let _ = writeln!(
            out,
            "| {} | {} ({}–{}) | {:.2} | {:.2} | {:.2} | {:.2} | {drained} |",
            route.label(),
            thousands(med),
            thousands(min),
            thousands(max),
            med / noop,
            med / floor,
            median(&rs, &|r| r.p50).0,
            median(&rs, &|r| r.p99).0,
        );
    }
    out.push('\n');
}

fn print_hosts(out: &mut String, opts: &hosts::HostsOpts, runs: &[hosts::HostRun]) {
    let delay = if opts.delay_us == 0 {
        "no added delay".to_owned()
    } else {
        format!("`tc netem` delay of {} µs on each end", opts.delay_us)
    };
    let _ = writeln!(
        out,
        "## Worker processes on separate network hosts, one server\n\n\
         {} no-op jobs, median of {} runs (min–max); every worker process in a network \
         namespace of its own, joined to the server's namespace by a veth pair ({delay}); \
         a private `mariadbd` (defaults, binary log off). lightjobs: one `Workers` of \
         concurrency {} per process; raw floor: one claiming connection per process \
         (claim 100 with SKIP LOCKED, one UPDATE to processed). CPU is in cores (CPU \
         seconds ÷ drain seconds), server µs/job its CPU time per job; statements per job, \
         index reads per job and row lock waits are the server's `Questions`, \
         `Handler_read_key` + `Handler_read_next` and `Innodb_row_lock_waits` over the \
         drain. ÷ best: this count's jobs/s over the best count's, same side. Steady: jobs/s \
         between the 10th and 90th percentile of the jobs' `finished_at` (the fleet once \
         running, without its start and its last stragglers), and its ÷ best; start ms: the \
         slowest process's `Workers::start` after `go`, which the wall-clock jobs/s \
         includes.\n",
        thousands(opts.jobs as f64),
        opts.runs,
        opts.concurrency
    );
    let _ = writeln!(
        out,
        "| processes | side | jobs/s | × 1 process | ÷ best | ÷ raw floor | steady jobs/s \
         | steady ÷ best | start ms | server CPU | server µs/job | workers CPU \
         | workers µs/job | statements/job | index reads/job | row lock waits |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let rates = |n: usize, side: hosts::Side| -> Vec<&hosts::HostRun> {
        runs.iter()
            .filter(|r| r.processes == n && r.side == side)
            .collect()
    };
    let median = |rs: &[&hosts::HostRun], f: &dyn Fn(&hosts::HostRun) -> f64| {
        let v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
        median_min_max(&v)
    };
    let jobs = opts.jobs as f64;
    let rate = |r: &hosts::HostRun| jobs / r.secs;
    let first = opts.processes.first().copied().unwrap_or(1);
    for &n in &opts.processes {
        let raw_median = median(&rates(n, hosts::Side::Raw), &rate).0;
        for side in [hosts::Side::Lightjobs, hosts::Side::Raw] {
            let rs = rates(n, side);
            if rs.is_empty() {
                continue;
            }
            let (med, min, max) = median(&rs, &rate);
            let base = median(&rates(first, side), &rate).0;
            let best = opts
                .processes
                .iter()
                .map(|&m| median(&rates(m, side), &rate).0)
                .fold(0.0, f64::max);
            let steady = |r: &hosts::HostRun| r.steady;
            let steady_best = opts
                .processes
                .iter()
                .map(|&m| median(&rates(m, side), &steady).0)
                .fold(0.0, f64::max);
            let steady_med = median(&rs, &steady).0;
            let _ = writeln!(
                out,
                "| {n} | {} | {} ({}–{}) | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.0} | {:.2} \
                 | {:.0} | {:.2} | {:.0} | {:.3} | {:.1} | {:.0} |",
                side.label(),
                thousands(med),
                thousands(min),
                thousands(max),
                med / base,
                med / best,
                med / raw_median,
                thousands(steady_med),
                steady_med / steady_best,
                median(&rs, &|r| r.start_secs * 1e3).0,
                median(&rs, &|r| r.server_cpu / r.secs).0,
                median(&rs, &|r| r.server_cpu * 1e6 / jobs).0,
                median(&rs, &|r| r.workers_cpu / r.secs).0,
                median(&rs, &|r| r.workers_cpu * 1e6 / jobs).0,
                median(&rs, &|r| r.questions as f64 / jobs).0,
                median(&rs, &|r| r.rows_read as f64 / jobs).0,
                median(&rs, &|r| r.lock_waits as f64).0,
            );
        }
    }
    out.push('\n');
}

fn print_machine(out: &mut String, version: &str) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown (rustc not on PATH)".to_owned());
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Read-only git queries (GIT_OPTIONAL_LOCKS=0: `status` does not refresh the index).
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .args(args)
            .env("GIT_OPTIONAL_LOCKS", "0")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let source = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--",
                "src",
                "migrations",
                "Cargo.toml",
            ])
            .is_some_and(|s| !s.is_empty());
            format!(
                "commit {commit}{}",
                if dirty {
                    " with uncommitted changes in src/, migrations/ or Cargo.toml"
                } else {
                    ""
                }
            )
        }
        None => "unknown (not a git checkout)".to_owned(),
    };
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "- nproc: {cores}");
    let _ = writeln!(out, "- server: {version} (SELECT VERSION())");
    let _ = writeln!(out, "- rustc: {rustc}");
    let _ = writeln!(out, "- lightjobs source at run time: {source}");
    let _ = writeln!(
        out,
        "- build: {}",
        if cfg!(debug_assertions) {
            "debug (numbers are not meaningful: use --release)"
        } else {
            "release"
        }
    );
    let _ = writeln!(
        out,
        "- command: `cargo run --release -- {}` (in benches/compare)",
        args.join(" ")
    );
}
