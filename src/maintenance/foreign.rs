//! Watches for due jobs of types this process does not run (another app's, a newer
//! deploy's, an old name nobody registers any more). The fetch loop never claims them, so
//! they would wait silently: this role warns, exports how many (see
//! [`metrics`](crate::metrics())), and, when asked to, fails them after a time.

use std::time::Duration;

use super::role::Role;
use crate::store::Store;

/// How often the table is looked at.
pub(crate) const FOREIGN_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How soon a look that failed (the database away, a write refused) is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Jobs of unknown types that have waited this long are reported.
pub(crate) const FOREIGN_WARN_AFTER: Duration = Duration::from_secs(300);
/// How many of the longest-waiting due jobs one look reads: the cost of a look is bounded
/// by this, however large a backlog of this process's own jobs is.
const SCAN: u64 = 10_000;
/// Looks in a row that fail jobs, at most, before the next pause.
const FAIL_ROUNDS: u32 = 10;

/// What the watch looks for: the queues and the types this process runs.
pub(crate) struct ForeignPlan {
    pub(crate) queues: Vec<String>,
    pub(crate) names: Vec<&'static str>,
    pub(crate) interval: Duration,
    pub(crate) warn_after: Duration,
    /// [`Workers::fail_unknown_after`](crate::Workers::fail_unknown_after).
    pub(crate) fail_after: Option<Duration>,
}

pub(crate) struct ForeignJobs {
    store: Store,
    queues: Vec<String>,
    names: Vec<&'static str>,
    interval: Duration,
    warn_after: Duration,
    fail_after: Option<Duration>,
}

impl ForeignJobs {
    pub(crate) fn new(store: Store, plan: ForeignPlan) -> ForeignJobs {
        ForeignJobs {
            store,
            queues: plan.queues,
            names: plan.names,
            interval: plan.interval,
            warn_after: plan.warn_after,
            fail_after: plan.fail_after,
        }
    }

    /// One look: reports what waits, then fails what waited past `fail_after`. Returns
    /// (jobs waiting past the warning age, jobs failed).
    pub(crate) async fn run_once(&self) -> crate::Result<(u64, u64)> {
        let store = &self.store;
        let warn_after = self
            .fail_after
            .map_or(self.warn_after, |f| f.min(self.warn_after));
        let groups = store
            .foreign_waiting(&self.queues, &self.names, warn_after, SCAN)
            .await?;
        let mut waiting = 0;
        for g in &groups {
            waiting += g.jobs;
            tracing::warn!(
                target: "lightjobs::foreign",
                queue = %g.queue,
                name = %g.name,
                jobs = g.jobs,
                oldest_secs = g.waited.as_secs(),
                "jobs of a type this worker does not run are waiting: start a worker that \
                 registers it (Job::NAME or Job::ALIASES), or let Workers::fail_unknown_after \
                 fail them"
            );
        }
        #[cfg(feature = "metrics")]
        {
            let gauge: Vec<_> = groups
                .into_iter()
                .map(|g| (g.queue, g.name, g.jobs))
                .collect();
            crate::metrics::set_foreign(&self.queues, &gauge);
        }
        let mut failed = 0;
        // Only when this look found some: otherwise the scan would find none either.
        if let (Some(after), true) = (self.fail_after, waiting > 0) {
            for _ in 0..FAIL_ROUNDS {
                let n = store
                    .fail_foreign(&self.queues, &self.names, after, SCAN)
                    .await?;
                failed += n;
                if n == 0 {
                    break;
                }
            }
            if failed > 0 {
                tracing::warn!(target: "lightjobs::foreign", jobs = failed, after = ?after, "failed jobs of types no worker took");
            }
        }
        Ok((waiting, failed))
    }
}

impl Role for ForeignJobs {
    const NAME: &'static str = "foreign";

    async fn pass(&self) -> crate::Result<Duration> {
        self.run_once().await?;
        Ok(self.interval)
    }

    fn after_error(&self) -> Duration {
        self.interval.min(RETRY_AFTER)
    }
}
