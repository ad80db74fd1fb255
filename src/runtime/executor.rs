//! Runs one claimed job and classifies the result: processed, retry, failed or released.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use std::sync::Arc;

use super::completer::Finished;
use super::ledger::RunSignals;
use crate::events::{JobEvent, JobOutcome};
use crate::job::{DataMap, JobContext, JobError};
use crate::registry::{unknown_job, Registry};
use crate::store::ClaimedJob;

/// Runs jobs with the registry's handlers under the workers' limits.
#[derive(Clone)]
pub(crate) struct Executor {
    registry: Registry,
    default_timeout: Duration,
    /// Cancelled when shutdown starts (by the handle or a signal); jobs may look at it
    /// through their context.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over (by the shutdown): running jobs are
    /// dropped and released.
    abort: CancellationToken,
    data: Arc<DataMap>,
    /// Handed to jobs for their own dispatches.
    jobs: crate::JobQueue,
    /// How long a cancelled job has to return before its future is dropped.
    cancel_grace: Duration,
}

impl Executor {
    pub(crate) fn new(
        registry: Registry,
        default_timeout: Duration,
        shutdown: CancellationToken,
        abort: CancellationToken,
        data: Arc<DataMap>,
        jobs: crate::JobQueue,
        cancel_grace: Duration,
    ) -> Executor {
        Executor {
            registry,
            default_timeout,
            shutdown,
            abort,
            data,
            jobs,
            cancel_grace,
        }
    }

    /// Runs `job`. `signals.stop` fires when this process can no longer vouch for the
    /// claim (see [`Fence`](super::fence::Fence)): the run is dropped where it stands.
    /// `signals.cancel` fires when the job was cancelled: the job sees it, and is dropped
    /// after the grace period.
    pub(crate) async fn run(&self, job: &ClaimedJob, signals: &RunSignals) -> Finished {
        let span = tracing::info_span!(
            "job",
            id = job.id,
            name = %job.name,
            queue = %job.queue,
            attempt = job.attempt,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            trace_parent = tracing::field::Empty,
        );
        if let Some(traceparent) = &job.trace_parent {
            span.record("trace_parent", traceparent.as_str());
            crate::trace::link(&span, traceparent);
        }
        let started = Instant::now();
        #[cfg(feature = "metrics")]
        crate::metrics::record_start(&job.queue, job.waited);
        let outcome = tokio::select! {
            biased;
            outcome = self.run_inner(job, &signals.cancel).instrument(span.clone()) => outcome,
            () = signals.stop.cancelled() => JobOutcome::Lost,
        };
        let duration = started.elapsed();
        #[cfg(feature = "metrics")]
        crate::metrics::record_outcome(&job.queue, &outcome, duration);
        span.record("duration_ms", duration.as_secs_f64() * 1000.0);
        log_outcome(&span, &outcome, duration);
        Finished::new(
            job.token,
            JobEvent {
                id: job.id,
                name: job.name.clone(),
                queue: job.queue.clone(),
                attempt: job.attempt,
                duration,
                outcome,
            },
            job.flow.clone(),
            job.batch,
        )
    }

    async fn run_inner(&self, job: &ClaimedJob, cancel: &CancellationToken) -> JobOutcome {
        if let Some(defect) = &job.defect {
            return JobOutcome::Failed {
                error: defect.clone(),
            };
        }
        let Some(entry) = self.registry.entry(&job.name) else {
            return classify(job, unknown_job(&job.name, &self.registry), |_| {
                Duration::ZERO
            });
        };
        let ctx = JobContext {
            id: job.id,
            name: job.name.clone(),
            queue: job.queue.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            shutdown: self.shutdown.clone(),
            data: self.data.clone(),
            jobs: self.jobs.clone(),
            trace_parent: job.trace_parent.clone(),
            cancel: cancel.clone(),
            token: job.token,
            tags: job.tags.clone(),
            meta: job
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            batch: job.batch,
            after_batch: job.after_batch,
        };
        let timeout = entry.timeout.unwrap_or(self.default_timeout);
        // Decoding runs user code (serde impls) too, so it is inside the panic guard.
        let run = async {
            let fut = entry.start(&job.payload, ctx)?;
            fut.await
        };
        let guarded = tokio::time::timeout(timeout, AssertUnwindSafe(run).catch_unwind());
        let grace_over = async {
            cancel.cancelled().await;
            tokio::time::sleep(self.cancel_grace).await;
        };
        let result = tokio::select! {
            biased;
            r = guarded => r,
            () = self.abort.cancelled() => return JobOutcome::Released,
            () = grace_over => return JobOutcome::Cancelled,
        };
        // A job that succeeded did its work, cancel or not; any other end after the
        // cancel reached it is the cancel's doing.
        if cancel.is_cancelled() && !matches!(result, Ok(Ok(Ok(())))) {
            return JobOutcome::Cancelled;
        }
        let error = match result {
            Ok(Ok(Ok(()))) => return JobOutcome::Processed,
            Ok(Ok(Err(e))) => e,
            Ok(Err(panic)) => JobError::retry(format!("job panicked: {}", panic_message(&*panic))),
            Err(_) => JobError::retry(format!("job timed out after {timeout:?}")),
        };
        classify(job, error, entry.backoff)
    }
}

/// Records the run's outcome on its span and logs it.
fn log_outcome(span: &tracing::Span, outcome: &JobOutcome, duration: Duration) {
    let _enter = span.enter();
    match &outcome {
        JobOutcome::Processed => {
            span.record("outcome", "processed");
            tracing::info!(target: "lightjobs::executor", ?duration, "job processed");
        }
        JobOutcome::Retrying { error, delay } => {
            span.record("outcome", "retrying");
            tracing::warn!(target: "lightjobs::executor", ?duration, %error, ?delay, "job failed, will retry");
        }
        JobOutcome::Failed { error } => {
            span.record("outcome", "failed");
            tracing::error!(target: "lightjobs::executor", ?duration, %error, "job failed");
        }
        JobOutcome::Snoozed { delay } => {
            span.record("outcome", "snoozed");
            tracing::info!(target: "lightjobs::executor", ?duration, ?delay, "job snoozed");
        }
        JobOutcome::Throttled { delay } => {
            span.record("outcome", "throttled");
            tracing::info!(target: "lightjobs::executor", ?duration, ?delay, "job rate limited by its service; its flow key waits");
        }
        JobOutcome::Cancelled => {
            span.record("outcome", "cancelled");
            tracing::info!(target: "lightjobs::executor", ?duration, "job cancelled while running");
        }
        JobOutcome::Released => {
            span.record("outcome", "released");
            tracing::warn!(target: "lightjobs::executor", ?duration, "job cut short by shutdown, released");
        }
        JobOutcome::Lost => {
            span.record("outcome", "lost");
            tracing::warn!(target: "lightjobs::executor", ?duration, "job stopped: the database has not confirmed this process's heartbeat for half its staleness, so another process may take the job over");
        }
    }
}

/// The retry delay used when a job's own `backoff` panics.
const FALLBACK_BACKOFF: Duration = Duration::from_secs(60);

fn classify(job: &ClaimedJob, error: JobError, backoff: fn(u32) -> Duration) -> JobOutcome {
    match error {
        JobError::Snooze(delay) => {
            return JobOutcome::Snoozed {
                delay: delay.min(crate::defaults::MAX_DELAY),
            }
        }
        JobError::RateLimited(delay) => {
            return JobOutcome::Throttled {
                delay: delay.min(crate::defaults::MAX_DELAY),
            }
        }
        _ => {}
    }
    if error.is_retryable() && job.attempt < job.max_attempts {
        // `backoff` is user code: a panic there must not lose the result, and an absurd
        // delay must not make the write fail.
        let delay = std::panic::catch_unwind(|| backoff(job.attempt))
            .unwrap_or(FALLBACK_BACKOFF)
            .min(crate::defaults::MAX_DELAY);
        JobOutcome::Retrying {
            delay,
            error: error.message().to_owned(),
        }
    } else {
        JobOutcome::Failed {
            error: error.message().to_owned(),
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempt: u32, max_attempts: u32) -> ClaimedJob {
        ClaimedJob {
            id: 1,
            token: 1,
            name: "x".into(),
            payload: "{}".into(),
            queue: "default".into(),
            attempt,
            max_attempts,
            waited: Duration::ZERO,
            flow: None,
            trace_parent: None,
            tags: Vec::new(),
            meta: None,
            batch: None,
            after_batch: None,
            defect: None,
        }
    }

    #[test]
    fn retries_until_attempts_run_out() {
        let backoff = |a: u32| Duration::from_secs(u64::from(a));
        let retry = classify(&job(1, 3), JobError::retry("boom"), backoff);
        assert_eq!(
            retry,
            JobOutcome::Retrying {
                error: "boom".into(),
                delay: Duration::from_secs(1)
            }
        );
        let last = classify(&job(3, 3), JobError::retry("boom"), backoff);
        assert_eq!(
            last,
            JobOutcome::Failed {
                error: "boom".into()
            }
        );
        let permanent = classify(&job(1, 3), JobError::fail("bad"), backoff);
        assert_eq!(
            permanent,
            JobOutcome::Failed {
                error: "bad".into()
            }
        );
    }

    #[test]
    fn panic_messages() {
        let p: Box<dyn std::any::Any + Send> = Box::new("static");
        assert_eq!(panic_message(&*p), "static");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(&*p), "owned");
        let p: Box<dyn std::any::Any + Send> = Box::new(42);
        assert_eq!(panic_message(&*p), "(non-string panic payload)");
    }
}
