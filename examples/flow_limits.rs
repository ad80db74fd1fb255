//! Flow control: webhook calls for three tenants, at most 2 at once per tenant and at
//! most 5 starts per second for tenant 3, across every process that runs them.
//!
//! ```text
//! LIGHTJOBS_DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example flow_limits
//! ```
//!
//! Each run prints its tenant and how many of that tenant's calls were running with it;
//! the workers stop once the queue is empty.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightjobs::{Flow, Job, JobContext, JobError, JobQueue, Workers};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct CallWebhook {
    tenant: u64,
}

/// Calls in flight per tenant, shared with the jobs.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<HashMap<u64, usize>>>);

impl Job for CallWebhook {
    const NAME: &'static str = "example_call_webhook";

    fn flow(&self) -> Option<Flow> {
        let flow = Flow::key(format!("tenant:{}", self.tenant)).concurrency(2);
        Some(if self.tenant == 3 {
            flow.rate(5, Duration::from_secs(1))
        } else {
            flow
        })
    }

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let flight = ctx
            .data::<InFlight>()
            .ok_or_else(|| JobError::fail("no map"))?;
        let now = {
            let mut map = flight.0.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(self.tenant).or_default();
            *n += 1;
            *n
        };
        println!(
            "tenant {}: job {} starts, {now} running",
            self.tenant,
            ctx.id()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut map = flight.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(self.tenant).or_default() -= 1;
        Ok(())
    }
}

#[actix_web::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flow_limits: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> lightjobs::Result<()> {
    let queue = JobQueue::from_env()?;
    queue.migrate().await?;
    let calls = (0..30).map(|i| CallWebhook { tenant: i % 3 + 1 });
    queue.dispatch_many(calls).await?;
    let started = Instant::now();
    let report = Workers::new(queue.clone())
        .register::<CallWebhook>()
        .data(InFlight::default())
        .concurrency(20)
        .stop_when_empty(true)
        .start()
        .await?
        .wait()
        .await;
    println!(
        "{} calls in {:.1}s; never more than 2 of a tenant at once, tenant 3 at 5 a second",
        report.processed,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
