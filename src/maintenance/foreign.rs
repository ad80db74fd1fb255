//! Watches for due jobs of types this process does not run (another app's, a newer
//! deploy's, an old name nobody registers any more). The fetch loop never claims them, so
//! they would wait silently: this role warns, exports how many (see
//! [`metrics`](crate::metrics())), and, when asked to, fails them after a time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

pub(crate) struct ForeignJobs {
    pub queues: Vec<String>,
    pub names: Vec<&'static str>,
    pub interval: Duration,
    pub warn_after: Duration,
    /// [`Workers::fail_unknown_after`](crate::Workers::fail_unknown_after).
    pub fail_after: Option<Duration>,
}

impl ForeignJobs {
    /// One look: reports what waits, then fails what waited past `fail_after`. Returns
    /// (jobs waiting past the warning age, jobs failed).
    pub(crate) async fn run_once(&self, store: &Store) -> crate::Result<(u64, u64)> {
        let warn_after = self
            .fail_after
            .map_or(self.warn_after, |f| f.min(self.warn_after));
        let groups = store
            .foreign_waiting(&self.queues, &self.names, warn_after, SCAN)
            .await?;
        let mut waiting = 0;
        for (queue, name, n, waited) in &groups {
            waiting += n;
            tracing::warn!(
                target: "lightjobs::foreign",
                queue = %queue,
                name = %name,
                jobs = n,
                oldest_secs = waited.as_secs(),
                "jobs of a type this worker does not run are waiting: start a worker that \
                 registers it (Job::NAME or Job::ALIASES), or let Workers::fail_unknown_after \
                 fail them"
            );
        }
        #[cfg(feature = "metrics")]
        {
            let gauge: Vec<_> = groups
                .into_iter()
                .map(|(q, name, n, _)| (q, name, n))
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

    pub(crate) async fn run(&self, store: &Store, stop: CancellationToken) {
        loop {
            let next = match self.run_once(store).await {
                Ok(_) => self.interval,
                Err(error) => {
                    tracing::debug!(target: "lightjobs::foreign", %error, "looking for jobs of unknown types failed");
                    self.interval.min(RETRY_AFTER)
                }
            };
            if crate::runtime::timing::pause(next, &stop).await {
                return;
            }
        }
    }
}
