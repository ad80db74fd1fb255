//! What the fetch loop does with what it claimed or was handed: a run task per job, and
//! the results on their way to the table.

use super::Fetcher;
use crate::events::JobOutcome;
use crate::runtime::completer::{record_written, Command, Finished};
use crate::runtime::handoff::{Handoff, Permits};
use crate::store::{ClaimedJob, Held};

impl Fetcher {
    pub(super) fn to_completer(&self, events: Vec<Finished>) {
        for event in events {
            // The completer outlives the fetch loop; if it panicked, the rows stay
            // `running` for the rescuer.
            let _ = self.shared.commands.send(Command::Write(event));
        }
    }

    /// Counts and reports the successes of `done` found written.
    pub(super) fn completed(&self, done: Vec<Finished>, written: &[u64]) {
        let mut delta = crate::runtime::completer::Report::default();
        record_written(
            done,
            written,
            &mut delta,
            &self.shared.hook,
            &self.shared.ledger,
            &self.shared.ends,
        );
        let report = &self.shared.report;
        report.set(report.get() + delta);
    }

    /// Claims whose commit may have happened are released: by the completer at once
    /// (retried until the database answers; a no-op if the claim did not commit), and by
    /// the reconciler should the commit land later still.
    pub(super) fn release_in_doubt(&self, in_doubt: Vec<Held>) {
        if in_doubt.is_empty() {
            return;
        }
        tracing::warn!(target: "lightjobs::fetcher", jobs = in_doubt.len(), "claim commit outcome unknown; releasing the jobs");
        let _ = self.shared.commands.send(Command::Release(in_doubt));
        self.shared.reconcile.notify_one();
    }

    /// Runs a job a dispatch of this process inserted already claimed by this worker.
    pub(crate) fn accept(&self, handoff: Handoff) {
        self.claimed.set(self.claimed.get() + 1);
        let (job, permits) = handoff.into_parts();
        let token = job.token;
        self.spawn(job, permits);
        if let Some(intake) = &self.shared.intake {
            intake.arrived(token);
        }
    }

    pub(super) fn spawn(&self, job: ClaimedJob, permits: Permits) {
        let held = (job.id, job.token);
        let shared = self.shared.clone();
        let signals = shared.ledger.start(held, shared.fence.trips());
        if !shared.fence.is_open() {
            // The lease ran out while the claim was on its way: the run would start
            // after this process may have been judged dead.
            signals.stop.cancel();
        }
        let executor = self.executor.clone();
        self.shared.tracker.spawn_local(async move {
            let finished = executor.run(&job, &signals).await;
            shared.ledger.ended(held);
            match finished.outcome() {
                JobOutcome::Processed => shared.completions.push(finished),
                JobOutcome::Lost => {
                    // Nothing to write: the reconciler gives the row back once the
                    // database answers, unless a rescuer took it first.
                    shared.ledger.settled(held);
                    shared.reconcile.notify_one();
                    let _ = shared.commands.send(Command::Write(finished));
                }
                // The completer outlives every run, so this only fails if it panicked;
                // the row then stays `running` for the reconciler or the rescuer.
                _ => {
                    let _ = shared.commands.send(Command::Write(finished));
                }
            }
            drop(permits);
        });
    }
}
