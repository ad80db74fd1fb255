//! What the workers report: the counts returned when they stop ([`Report`]), and the
//! user's `on_event` hook, called for each result once it is written.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::events::JobEvent;

/// The user's `on_event` hook.
pub(crate) type EventHook = Arc<dyn Fn(&JobEvent) + Send + Sync>;

/// Counts of what the workers did, returned when they stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Jobs that succeeded.
    pub processed: u64,
    /// Runs that failed and were scheduled again.
    pub retried: u64,
    /// Jobs marked `failed`.
    pub failed: u64,
    /// Jobs given back to `pending` at shutdown.
    pub released: u64,
    /// Running jobs stopped by a cancel.
    pub cancelled: u64,
    /// Runs that snoozed (rescheduled without spending an attempt).
    pub snoozed: u64,
    /// Results not written because the job was no longer ours (rescued, or edited by
    /// hand), including runs stopped because this process learned it had lost the claim.
    pub lost: u64,
    /// Results that could not be written before the shutdown deadline (the jobs stay
    /// `running` until a rescuer returns them to `pending`).
    pub unwritten: u64,
}

impl std::ops::Add for Report {
    type Output = Report;

    fn add(self, o: Report) -> Report {
        Report {
            processed: self.processed + o.processed,
            retried: self.retried + o.retried,
            failed: self.failed + o.failed,
            released: self.released + o.released,
            cancelled: self.cancelled + o.cancelled,
            snoozed: self.snoozed + o.snoozed,
            lost: self.lost + o.lost,
            unwritten: self.unwritten + o.unwritten,
        }
    }
}

/// Calls the user's hook for each event; its panics are contained.
pub(crate) fn emit<'a>(hook: &Option<EventHook>, events: impl Iterator<Item = &'a JobEvent>) {
    if let Some(hook) = hook {
        for e in events {
            // The hook is user code; its panic must not stop results being written.
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(e))).is_err() {
                tracing::error!(target: "lightjobs::completer", id = e.id, "the on_event hook panicked");
            }
        }
    }
}
