//! The ends of jobs that may finish a batch or release jobs waiting for them: recorded on
//! the worker thread once their result is written, settled by the maintenance thread's
//! settler (see `maintenance::settler`), so that a callback or a dependent job starts
//! right after the job it waits for, not at the next sweep.
//!
//! Only a hint for speed: an end recorded here and lost (the process dies before the
//! settler takes it) is found by the sweep.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// The ends recorded since the settler last took them.
#[derive(Debug, Default)]
pub(crate) struct EndSet {
    /// Batches one of whose jobs ended.
    pub(crate) batches: BTreeSet<u64>,
    /// Jobs that ended, while jobs wait for others.
    pub(crate) jobs: Vec<u64>,
}

impl EndSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.jobs.is_empty()
    }
}

/// Shared by a queue's handle, the workers started on it and their settler.
#[derive(Debug, Default)]
pub(crate) struct Ends {
    set: Mutex<EndSet>,
    notify: Notify,
    /// Whether a job may be waiting for another: set by the settler's sweep (which looks)
    /// and by a dispatch through this queue of a job that waits. While it is false, the
    /// ends of jobs outside batches are not recorded: no statement per end when nobody
    /// uses dependencies.
    awaiting: AtomicBool,
}

impl Ends {
    /// Records the ends of jobs `(id, batch)` that finished for good (processed, failed,
    /// cancelled).
    pub(crate) fn record(&self, ended: impl IntoIterator<Item = (u64, Option<u64>)>) {
        let waiting = self.awaiting.load(Ordering::Relaxed);
        // Locked only for an end worth recording: plain jobs while nobody waits (the
        // common case, on the claim loop's path) take no lock.
        let mut set = None;
        for (id, batch) in ended {
            if batch.is_none() && !waiting {
                continue;
            }
            let set = set.get_or_insert_with(|| self.set.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(batch) = batch {
                set.batches.insert(batch);
            }
            if waiting {
                set.jobs.push(id);
            }
        }
        if set.take().is_some() {
            self.notify.notify_one();
        }
    }

    /// What was recorded since the last call.
    pub(crate) fn take(&self) -> EndSet {
        std::mem::take(&mut *self.set.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves at the next record (or at once, if one came since the last wait).
    pub(crate) fn recorded(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    pub(crate) fn set_awaiting(&self, awaiting: bool) {
        self.awaiting.store(awaiting, Ordering::Relaxed);
    }
}
