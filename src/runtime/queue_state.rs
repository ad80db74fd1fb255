//! Which queues are paused or limited across processes, as last read from
//! `lightjobs_queues`: shared by the fetch loops, the handoff and the queue handle (which
//! applies its own pause/resume at once).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Queue settings from `lightjobs_queues`, as last read.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    pub paused: HashSet<String>,
    /// Queues with a limit across processes.
    pub limited: HashSet<String>,
}

pub(crate) type QueueStates = Arc<RwLock<QueueState>>;

impl QueueState {
    pub(crate) fn from_rows(rows: Vec<(String, bool, Option<u32>)>) -> Self {
        let mut state = QueueState::default();
        for (queue, paused, limit) in rows {
            if limit.is_some() {
                state.limited.insert(queue.clone());
            }
            if paused {
                state.paused.insert(queue);
            }
        }
        state
    }
}
