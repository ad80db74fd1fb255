//! Metrics in the Prometheus text format: job counts by queue and status (read from the
//! table when scraped), and this process's runs by outcome, run durations and queue
//! latency (time from due to started). The HTTP resource that serves them is
//! [`metrics`](crate::metrics()), in `web`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::Lazy;

use crate::events::JobOutcome;

/// Histogram bucket bounds, in seconds: from a millisecond to ten minutes.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 600.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += s;
        self.total += 1;
    }
}

#[derive(Default)]
struct Registry {
    runs: BTreeMap<(String, &'static str), u64>,
    latency: BTreeMap<String, Histogram>,
    duration: BTreeMap<String, Histogram>,
    /// (queue, job name) → due jobs this process does not run that have waited too long.
    foreign: BTreeMap<(String, String), u64>,
}

static METRICS: Lazy<Mutex<Registry>> = Lazy::new(|| Mutex::new(Registry::default()));

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    // A poisoned lock only means a panic elsewhere mid-update: the counts are still usable.
    let mut m = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut m)
}

pub(crate) fn record_start(queue: &str, waited: Duration) {
    with(|m| {
        m.latency
            .entry(queue.to_owned())
            .or_default()
            .observe(waited)
    });
}

pub(crate) fn record_outcome(queue: &str, outcome: &JobOutcome, took: Duration) {
    let name = match outcome {
        JobOutcome::Processed => "processed",
        JobOutcome::Retrying { .. } => "retried",
        JobOutcome::Failed { .. } => "failed",
        JobOutcome::Released => "released",
        JobOutcome::Lost => "lost",
        JobOutcome::Cancelled => "cancelled",
        JobOutcome::Snoozed { .. } => "snoozed",
        JobOutcome::Throttled { .. } => "throttled",
    };
    with(|m| {
        *m.runs.entry((queue.to_owned(), name)).or_default() += 1;
        m.duration
            .entry(queue.to_owned())
            .or_default()
            .observe(took);
    });
}

/// Replaces what this process last saw waiting on `queues` for a worker it is not.
pub(crate) fn set_foreign(queues: &[String], groups: &[(String, String, u64)]) {
    with(|m| {
        m.foreign.retain(|(queue, _), _| !queues.contains(queue));
        for (queue, name, n) in groups {
            m.foreign.insert((queue.clone(), name.clone()), *n);
        }
    });
}

/// Keys named one by one in `lightjobs_flow_blocked`: a label per tenant would be
/// unbounded, so only the keys waiting longest are.
pub(crate) const FLOW_KEYS_NAMED: usize = 20;

pub(crate) fn render(
    counts: &[crate::QueueCount],
    paused: &[String],
    flow: &[crate::FlowKeyState],
) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP lightjobs_jobs Jobs by queue and status: waiting and running ones now, \
         finished ones finished in the last day.\n",
    );
    out.push_str("# TYPE lightjobs_jobs gauge\n");
    for c in counts {
        let _ = writeln!(
            out,
            "lightjobs_jobs{{queue=\"{}\",status=\"{}\"}} {}",
            escape(&c.queue),
            escape(&c.status),
            c.count
        );
    }
    out.push_str("# HELP lightjobs_queue_paused 1 when the queue is paused.\n");
    out.push_str("# TYPE lightjobs_queue_paused gauge\n");
    for q in paused {
        let _ = writeln!(out, "lightjobs_queue_paused{{queue=\"{}\"}} 1", escape(q));
    }
    render_flow(&mut out, flow);
    with(|m| {
        out.push_str("# HELP lightjobs_job_runs_total Job runs in this process, by outcome.\n");
        out.push_str("# TYPE lightjobs_job_runs_total counter\n");
        for ((queue, outcome), n) in &m.runs {
            let _ = writeln!(
                out,
                "lightjobs_job_runs_total{{queue=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(queue)
            );
        }
        out.push_str(
            "# HELP lightjobs_jobs_waiting_unknown_type Due jobs on this process's queues, \
             of a type it does not run, that have waited longer than the warning age.\n",
        );
        out.push_str("# TYPE lightjobs_jobs_waiting_unknown_type gauge\n");
        for ((queue, name), n) in &m.foreign {
            let _ = writeln!(
                out,
                "lightjobs_jobs_waiting_unknown_type{{queue=\"{}\",name=\"{}\"}} {n}",
                escape(queue),
                escape(name)
            );
        }
        histogram(
            &mut out,
            "lightjobs_queue_latency_seconds",
            "Time from a job being due to its start, in this process.",
            &m.latency,
        );
        histogram(
            &mut out,
            "lightjobs_job_duration_seconds",
            "Run time of jobs in this process.",
            &m.duration,
        );
    });
    out
}

/// The flow keys at a limit: how many, and the waiting jobs of the longest-waiting ones.
fn render_flow(out: &mut String, flow: &[crate::FlowKeyState]) {
    out.push_str(
        "# HELP lightjobs_flow_limited_keys Flow keys at a limit (jobs waiting on it, or \
         paused), up to the number read.\n",
    );
    out.push_str("# TYPE lightjobs_flow_limited_keys gauge\n");
    let _ = writeln!(out, "lightjobs_flow_limited_keys {}", flow.len());
    out.push_str(
        "# HELP lightjobs_flow_blocked Jobs waiting on their flow key's limit, for the keys \
         waiting longest.\n",
    );
    out.push_str("# TYPE lightjobs_flow_blocked gauge\n");
    for k in flow.iter().take(FLOW_KEYS_NAMED) {
        let _ = writeln!(
            out,
            "lightjobs_flow_blocked{{key=\"{}\"}} {}",
            escape(&k.key),
            k.blocked
        );
    }
}

fn histogram(out: &mut String, name: &str, help: &str, by_queue: &BTreeMap<String, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (queue, h) in by_queue {
        let q = escape(queue);
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{queue=\"{q}\",le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{queue=\"{q}\",le=\"+Inf\"}} {}",
            h.total
        );
        let _ = writeln!(out, "{name}_sum{{queue=\"{q}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{queue=\"{q}\"}} {}", h.total);
    }
}

/// Label values escape backslash, double quote and newline (the exposition format).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_outcomes_and_histograms() {
        record_start("render-test", Duration::from_millis(3));
        record_outcome(
            "render-test",
            &JobOutcome::Processed,
            Duration::from_millis(20),
        );
        let counts = [crate::QueueCount {
            queue: "a\"b".into(),
            status: "pending".into(),
            count: 4,
        }];
        let flow = [crate::FlowKeyState {
            key: "tenant:\"7\"".into(),
            running: 2,
            blocked: 40,
            concurrency: Some(2),
            rate: None,
            paused_for: None,
        }];
        let text = render(&counts, &["mail".into()], &flow);
        assert!(text.contains("lightjobs_flow_limited_keys 1\n"));
        assert!(text.contains("lightjobs_flow_blocked{key=\"tenant:\\\"7\\\"\"} 40\n"));
        assert!(
            text.contains("lightjobs_jobs{queue=\"a\\\"b\",status=\"pending\"} 4"),
            "{text}"
        );
        assert!(text.contains("lightjobs_queue_paused{queue=\"mail\"} 1"));
        assert!(text
            .contains("lightjobs_job_runs_total{queue=\"render-test\",outcome=\"processed\"} 1"));
        assert!(text.contains(
            "lightjobs_queue_latency_seconds_bucket{queue=\"render-test\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "lightjobs_queue_latency_seconds_bucket{queue=\"render-test\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("lightjobs_job_duration_seconds_count{queue=\"render-test\"} 1"));
    }
}
