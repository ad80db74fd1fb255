//! A waiting dispatch's ticket: whether it went into a statement, or its caller gave up on
//! it first.

use std::sync::atomic::{AtomicU8, Ordering};

/// Whether a waiting dispatch went into a statement or its caller gave up on it (its
/// deadline passed): exactly one of the two happens, so a caller told "nothing was sent"
/// never finds its job inserted after all.
#[derive(Debug, Default)]
pub(crate) struct Ticket(AtomicU8);

const WAITING: u8 = 0;
const SENT: u8 = 1;
const ABANDONED: u8 = 2;

impl Ticket {
    /// Takes the dispatch into a statement; false when its caller gave up first.
    pub(super) fn send(&self) -> bool {
        self.0
            .compare_exchange(WAITING, SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks a dispatch that goes its own way (not through the combiner) as sent.
    pub(crate) fn mark_sent(&self) {
        self.send();
    }

    /// Gives the dispatch up; false when it was already sent (it may be inserted).
    pub(crate) fn abandon(&self) -> bool {
        self.0
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Ticket {
    /// Whether its caller gave up on it.
    pub(super) fn abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) == ABANDONED
    }
}
