//! The cost of flow control (`--only flow`): the same backlog of no-op jobs drained with
//! no flow key, and with 1, 100 and 10,000 distinct keys at concurrency limits of 1 and
//! 10, in one run; and a skewed backlog, one hot key at its limit at the head of the
//! queue and unkeyed jobs behind it, against the same unkeyed jobs alone.

use std::fmt::Write as _;

use lightjobs::{Flow, Job, JobContext, JobError, JobQueue};

use crate::lj;
use crate::util::{self, thousands, AnyResult};

const DB: &str = "bench_flow";

/// One configuration: `keys` distinct keys (0: no flow key) at `limit`.
#[derive(Clone, Copy)]
struct Config {
    keys: usize,
    limit: u32,
}

pub type FlowRun = util::RateRow;

/// A no-op job under a flow key (none when `key` is empty).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Keyed {
    key: String,
    limit: u32,
}

impl Job for Keyed {
    const NAME: &'static str = "keyed_noop";
    fn flow(&self) -> Option<Flow> {
        (!self.key.is_empty()).then(|| Flow::key(self.key.clone()).concurrency(self.limit))
    }
    async fn execute(self, _: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

async fn load(queue: &JobQueue, jobs: usize, cfg: Config) -> AnyResult<()> {
    let mut i = 0;
    while i < jobs {
        let k = (jobs - i).min(1000);
        let batch = (i..i + k).map(|j| Keyed {
            key: if cfg.keys > 0 {
                format!("k{}", j % cfg.keys)
            } else {
                String::new()
            },
            limit: cfg.limit,
        });
        queue.dispatch_many(batch).await?;
        i += k;
    }
    Ok(())
}

pub async fn run(server: &str, jobs: usize, runs: usize) -> AnyResult<Vec<FlowRun>> {
    let configs = [
        Config { keys: 0, limit: 0 },
        Config { keys: 1, limit: 10 },
        Config {
            keys: 100,
            limit: 1,
        },
        Config {
            keys: 100,
            limit: 10,
        },
        Config {
            keys: 10_000,
            limit: 1,
        },
        Config {
            keys: 10_000,
            limit: 10,
        },
        Config { keys: 1, limit: 1 },
    ];
    let mut out: Vec<FlowRun> = configs
        .iter()
        .map(|c| FlowRun {
            label: if c.keys == 0 {
                "no flow key (unconstrained)".into()
            } else {
                format!(
                    "{} key{} × concurrency {}",
                    thousands(c.keys as f64),
                    if c.keys == 1 { "" } else { "s" },
                    c.limit
                )
            },
            rates: Vec::new(),
        })
        .collect();
    let mut skew = FlowRun {
        label: String::new(),
        rates: Vec::new(),
    };
    let mut plain = FlowRun {
        label: String::new(),
        rates: Vec::new(),
    };
    for run in 0..runs {
        for (i, cfg) in configs.iter().enumerate() {
            // The serial key runs jobs one at a time: a tenth of the backlog.
            let n = if cfg.keys == 1 && cfg.limit == 1 {
                jobs / 10
            } else {
                jobs
            };
            eprintln!("flow: run {}/{runs}: {}", run + 1, out[i].label);
            let queue = lj::fresh_queue(server, DB).await?;
            load(&queue, n, *cfg).await?;
            out[i].rates.push(
                lj::drain_until::<Keyed>(server, DB, &queue, (n, n), "status = 'processed'")
                    .await?,
            );
        }
        // Skew: 2,000 jobs of one key (limit 1) ahead of `jobs` unkeyed ones; how fast the
        // unkeyed ones drain, against the same unkeyed backlog alone.
        eprintln!("flow: run {}/{runs}: skewed", run + 1);
        let queue = lj::fresh_queue(server, DB).await?;
        load(&queue, 2000, Config { keys: 1, limit: 1 }).await?;
        load(&queue, jobs, Config { keys: 0, limit: 0 }).await?;
        let unkeyed = "status = 'processed' AND flow_key IS NULL";
        skew.rates
            .push(lj::drain_until::<Keyed>(server, DB, &queue, (jobs, jobs), unkeyed).await?);
        let queue = lj::fresh_queue(server, DB).await?;
        load(&queue, jobs, Config { keys: 0, limit: 0 }).await?;
        plain
            .rates
            .push(lj::drain_until::<Keyed>(server, DB, &queue, (jobs, jobs), unkeyed).await?);
    }
    skew.label = format!(
        "skewed: {} unkeyed jobs behind 2,000 of one key at concurrency 1",
        thousands(jobs as f64)
    );
    plain.label = format!("the same {} unkeyed jobs alone", thousands(jobs as f64));
    out.push(skew);
    out.push(plain);
    Ok(out)
}

pub fn print(out: &mut String, jobs: usize, runs: &[FlowRun]) {
    let _ = writeln!(
        out,
        "## Flow control: drain with per-key concurrency limits\n\n\
         {} no-op jobs per run (a tenth for the serial 1 key × 1), one `Workers` of \
         concurrency 100, fresh table per run; median (min–max) jobs/s; ÷ unconstrained: \
         over the first row's median. The skewed pair times only the unkeyed jobs.\n",
        thousands(jobs as f64)
    );
    util::print_rate_table(out, "backlog", "unconstrained", runs);
}
