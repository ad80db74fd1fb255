//! Job name → how to decode the payload and run it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;

use crate::job::{Job, JobContext, JobError};

type Runner =
    fn(&str, JobContext) -> Result<LocalBoxFuture<'static, Result<(), JobError>>, JobError>;

/// What the registry knows of one job type.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    run: Runner,
    pub(crate) timeout: Option<Duration>,
    pub(crate) backoff: fn(u32) -> Duration,
}

/// The job types a worker can run, by [`Job::NAME`].
///
/// ```
/// # use lightjobs::{Job, JobContext, JobError, Registry};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail;
/// # impl Job for SendMail { const NAME: &'static str = "send_mail";
/// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
/// let registry = Registry::new().register::<SendMail>();
/// assert!(registry.contains("send_mail"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    entries: Arc<HashMap<&'static str, Entry>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.entries.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("jobs", &names).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job type under its [`NAME`](Job::NAME) and its [`ALIASES`](Job::ALIASES).
    /// Registering a second type under the same name replaces the first.
    #[must_use]
    pub fn register<J: Job>(mut self) -> Self {
        let entry = Entry {
            run: run::<J>,
            timeout: J::TIMEOUT,
            backoff: J::backoff,
        };
        let entries = Arc::make_mut(&mut self.entries);
        for name in std::iter::once(J::NAME).chain(J::ALIASES.iter().copied()) {
            entries.insert(name, entry);
        }
        self
    }

    /// Whether a job of this name (or alias) can run here.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The registered names and aliases, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.entries.keys().copied().collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn entry(&self, name: &str) -> Option<Entry> {
        self.entries.get(name).copied()
    }
}

impl Entry {
    /// Decodes the payload and returns the job's future. A payload that does not decode is
    /// a permanent failure: retrying the same bytes cannot succeed.
    pub(crate) fn start(
        &self,
        payload: &str,
        ctx: JobContext,
    ) -> Result<LocalBoxFuture<'static, Result<(), JobError>>, JobError> {
        (self.run)(payload, ctx)
    }
}

fn run<J: Job>(
    payload: &str,
    ctx: JobContext,
) -> Result<LocalBoxFuture<'static, Result<(), JobError>>, JobError> {
    let job: J = serde_json::from_str(payload).map_err(|e| {
        // The value too, cut short: a row another program wrote says what it holds.
        let shown: String = payload.chars().take(80).collect();
        let cut = if shown.len() < payload.len() {
            "…"
        } else {
            ""
        };
        JobError::fail(format!(
            "payload does not decode as job `{}`: {e} (column `payload`: {shown:?}{cut})",
            J::NAME
        ))
    })?;
    Ok(Box::pin(async move { job.execute(&ctx).await }))
}

/// The message for a row whose name no registered type claims.
pub(crate) fn unknown_job(name: &str, registry: &Registry) -> JobError {
    JobError::fail(format!(
        "unknown job `{name}`: no job type with this NAME is registered in this worker \
         (registered: {})",
        registry.names().join(", ")
    ))
}
