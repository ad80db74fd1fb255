//! A dispatching process for the unique-key race test (built as the example
//! `race_dispatcher`): waits until the given moment, dispatches one job per key
//! `race-0..N` with that unique key, and prints the ids it got, one per line.
//!
//! `race_dispatcher <database-url> <keys> <start-at-unix-millis>`

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lightjobs::{Job, JobContext, JobError, JobQueue};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Work {
    millis: u64,
}

impl Job for Work {
    const NAME: &'static str = "work";
    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, keys, start] = args.as_slice() else {
        return Err("usage: race_dispatcher <url> <keys> <start-at-unix-millis>".into());
    };
    let keys: usize = keys.parse()?;
    let start = UNIX_EPOCH + Duration::from_millis(start.parse()?);
    let queue = JobQueue::connect(url)?;
    queue.check_ready().await?;
    if let Ok(wait) = start.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    for key in 0..keys {
        let id = queue
            .dispatch(Work { millis: 0 })
            .unique(&format!("race-{key}"))
            .await?;
        println!("{id}");
    }
    Ok(())
}
