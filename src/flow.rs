//! Flow control: [`Flow`], a key a job shares with others and the limits that hold for
//! every job of that key, across every process.

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest flow key, in characters (the width of `jobs.flow_key`).
pub const MAX_FLOW_KEY_CHARS: usize = 191;

/// The longest rate window: a day. Starts are kept this long per key.
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A flow key and its limits: at most `concurrency` jobs of the key run at once, and at
/// most `rate` of them start in any window of `per`, across every worker process.
///
/// A job over a limit waits in the status `blocked` without spending an attempt and
/// without holding up jobs of other keys or other jobs of its queue; it runs when the key
/// has room again. The limits travel with each job (the newest job's count when two
/// disagree), so changing them needs no migration.
///
/// ```
/// use lightjobs::{Flow, Job, JobContext, JobError};
/// use std::time::Duration;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// struct CallWebhook { tenant: u64, url: String }
///
/// impl Job for CallWebhook {
///     const NAME: &'static str = "call_webhook";
///     // At most 2 at once per tenant, and 50 a minute to each tenant's endpoint.
///     fn flow(&self) -> Option<Flow> {
///         Some(Flow::key(format!("tenant:{}", self.tenant))
///             .concurrency(2)
///             .rate(50, Duration::from_secs(60)))
///     }
///     async fn execute(self, _: &JobContext) -> Result<(), JobError> {
///         // On an HTTP 429, back the whole tenant off for as long as the service asks:
///         // return Err(JobError::rate_limited(Duration::from_secs(30)));
///         Ok(())
///     }
/// }
/// let flow = CallWebhook { tenant: 42, url: String::new() }.flow().unwrap();
/// assert_eq!(flow.key_str(), "tenant:42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub(crate) key: String,
    pub(crate) concurrency: Option<u32>,
    pub(crate) rate: Option<(u32, Duration)>,
}

impl Flow {
    /// A flow for `key` (`tenant:42`, `api:stripe`), without limits yet: add
    /// [`concurrency`](Self::concurrency), [`rate`](Self::rate) or both.
    pub fn key(key: impl Into<String>) -> Flow {
        Flow {
            key: key.into(),
            concurrency: None,
            rate: None,
        }
    }

    /// At most `limit` jobs of this key run at once (at least 1).
    pub fn concurrency(mut self, limit: u32) -> Flow {
        self.concurrency = Some(limit);
        self
    }

    /// At most `starts` jobs of this key start in any window of length `per` (a sliding
    /// window on the database's clock; at least 1 start, 1 ms to a day).
    pub fn rate(mut self, starts: u32, per: Duration) -> Flow {
        self.rate = Some((starts, per));
        self
    }

    /// The key.
    pub fn key_str(&self) -> &str {
        &self.key
    }

    /// Checks the key and the limits, as a dispatch does.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid("flow", reason));
        let chars = self.key.chars().count();
        if chars == 0 || chars > MAX_FLOW_KEY_CHARS {
            return bad(format!(
                "the key must be 1 to {MAX_FLOW_KEY_CHARS} characters, not {chars}"
            ));
        }
        if self.concurrency.is_none() && self.rate.is_none() {
            return bad(format!(
                "key {:?} has no limit: set a concurrency or a rate",
                self.key
            ));
        }
        if self.concurrency == Some(0) {
            return bad(format!(
                "key {:?}: a concurrency of 0 would never run",
                self.key
            ));
        }
        if let Some((starts, per)) = self.rate {
            if starts == 0 || per < Duration::from_millis(1) || per > MAX_RATE_WINDOW {
                return bad(format!(
                    "key {:?}: a rate needs at least 1 start per 1 ms to 1 day, not {starts} \
                     per {per:?}",
                    self.key
                ));
            }
        }
        Ok(())
    }

    /// The rate window in whole milliseconds (validated: fits).
    pub(crate) fn window_ms(&self) -> Option<u32> {
        self.rate
            .map(|(_, per)| u32::try_from(per.as_millis()).unwrap_or(u32::MAX))
    }
}

/// A flow key at one of its limits, as [`JobQueue::flow_keys`](crate::JobQueue::flow_keys)
/// reads it: jobs of the key are waiting (`blocked`) or the key is paused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FlowKeyState {
    /// The key.
    pub key: String,
    /// Its jobs running now.
    pub running: u64,
    /// Its jobs waiting on a limit.
    pub blocked: u64,
    /// Its concurrency limit, as last seen by a claim that parked its jobs.
    pub concurrency: Option<u32>,
    /// Its rate: starts per window.
    pub rate: Option<(u32, Duration)>,
    /// How much longer a pause a job asked for (a `Retry-After`) lasts.
    pub paused_for: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert!(Flow::key("a").concurrency(1).validate().is_ok());
        assert!(Flow::key("a")
            .rate(1, Duration::from_secs(1))
            .validate()
            .is_ok());
        assert!(Flow::key("a").validate().is_err());
        assert!(Flow::key("").concurrency(1).validate().is_err());
        assert!(Flow::key("x".repeat(192))
            .concurrency(1)
            .validate()
            .is_err());
        assert!(Flow::key("a").concurrency(0).validate().is_err());
        assert!(Flow::key("a")
            .rate(0, Duration::from_secs(1))
            .validate()
            .is_err());
        assert!(Flow::key("a")
            .rate(1, Duration::from_micros(10))
            .validate()
            .is_err());
        assert!(Flow::key("a")
            .rate(1, Duration::from_secs(2 * 24 * 3600))
            .validate()
            .is_err());
        assert_eq!(
            Flow::key("a").rate(5, Duration::from_secs(60)).window_ms(),
            Some(60_000)
        );
    }
}
