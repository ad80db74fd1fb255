//! Which queues are paused or limited across processes, as last read from
//! `lightjobs_queues`: shared by the fetch loops, the handoff and the queue handle (which
//! applies its own pause/resume at once).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use crate::store::QueueSetting;

/// Queue settings from `lightjobs_queues`, as last read.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    paused: HashSet<String>,
    /// Queues with a limit across processes.
    limited: HashSet<String>,
}

pub(crate) type QueueStates = Arc<RwLock<QueueState>>;

impl QueueState {
    pub(crate) fn is_paused(&self, queue: &str) -> bool {
        self.paused.contains(queue)
    }

    pub(crate) fn is_limited(&self, queue: &str) -> bool {
        self.limited.contains(queue)
    }

    pub(crate) fn set_paused(&mut self, queue: &str, paused: bool) {
        if paused {
            self.paused.insert(queue.to_owned());
        } else {
            self.paused.remove(queue);
        }
    }

    pub(crate) fn set_limited(&mut self, queue: &str, limited: bool) {
        if limited {
            self.limited.insert(queue.to_owned());
        } else {
            self.limited.remove(queue);
        }
    }

    /// Whether a queue paused here is not paused in `now`.
    pub(crate) fn resumed_in(&self, now: &QueueState) -> bool {
        self.paused.iter().any(|q| !now.paused.contains(q))
    }

    pub(crate) fn from_rows(rows: Vec<QueueSetting>) -> Self {
        let mut state = QueueState::default();
        for row in rows {
            if row.limit.is_some() {
                state.limited.insert(row.queue.clone());
            }
            if row.paused {
                state.paused.insert(row.queue);
            }
        }
        state
    }
}
