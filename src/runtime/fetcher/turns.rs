//! Claim turns: which of a queue's turns the next claim takes, and the queues whose turns
//! are passed by for a while because a holder stalled (see `store::claim::TURNS`).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use crate::store::TURNS;

/// How long the claims of a queue go without turns after one waited its turn out. A
/// stalled holder keeps its turn until the server notices (its `wait_timeout`, or TCP
/// keepalive); meanwhile claims step over each other's rows as they did before turns,
/// slower under many processes but never stuck.
const PASS_BY: Duration = Duration::from_secs(30);

pub(super) struct Turns {
    next: Cell<u8>,
    /// Queues whose last claim here found jobs. Only those take turns: an idle queue has
    /// no locked rows to step over, and an idle poll without a turn is one statement less.
    busy: RefCell<Vec<String>>,
    /// Queues claimed without turns, and until when. As many as the worker's queues at most.
    passed_by: RefCell<Vec<(String, Instant)>>,
}

impl Turns {
    pub(super) fn new() -> Self {
        Turns {
            // Processes start at different turns, and each goes round them claim by claim,
            // so the claimers of a queue share its turns evenly without agreeing on anything.
            next: Cell::new(fastrand::u8(..TURNS)),
            busy: RefCell::new(Vec::new()),
            passed_by: RefCell::new(Vec::new()),
        }
    }

    /// The turn the next claim of `queue` takes: none while the queue is idle here or its
    /// turns are passed by.
    pub(super) fn take(&self, queue: &str, now: Instant) -> Option<u8> {
        if !self.busy.borrow().iter().any(|q| q == queue) {
            return None;
        }
        let mut passed_by = self.passed_by.borrow_mut();
        passed_by.retain(|(_, until)| *until > now);
        if passed_by.iter().any(|(q, _)| q == queue) {
            return None;
        }
        let turn = self.next.get();
        self.next.set((turn + 1) % TURNS);
        Some(turn)
    }

    /// A claim of `queue` got `got` jobs.
    pub(super) fn claimed(&self, queue: &str, got: usize) {
        let mut busy = self.busy.borrow_mut();
        let known = busy.iter().position(|q| q == queue);
        match (known, got > 0) {
            (None, true) => busy.push(queue.to_owned()),
            (Some(i), false) => {
                busy.swap_remove(i);
            }
            _ => {}
        }
    }

    /// A claim of `queue` waited its turn out: pass its turns by from `now`. True when they
    /// were in use until now (the news worth a log line).
    pub(super) fn stalled(&self, queue: &str, now: Instant) -> bool {
        let mut passed_by = self.passed_by.borrow_mut();
        if passed_by
            .iter()
            .any(|(q, until)| q == queue && *until > now)
        {
            return false;
        }
        passed_by.retain(|(q, _)| q != queue);
        passed_by.push((queue.to_owned(), now + PASS_BY));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_go_round_the_turns_while_the_queue_is_busy() {
        let turns = Turns::new();
        let now = Instant::now();
        assert_eq!(turns.take("q", now), None, "idle: no turn");
        turns.claimed("q", 3);
        let taken: Vec<u8> = (0..2 * TURNS)
            .filter_map(|_| turns.take("q", now))
            .collect();
        assert_eq!(taken.len(), 2 * TURNS as usize);
        for t in 0..TURNS {
            assert_eq!(taken.iter().filter(|&&x| x == t).count(), 2, "{taken:?}");
        }
        turns.claimed("q", 0);
        assert_eq!(turns.take("q", now), None, "idle again");
    }

    #[test]
    fn a_stalled_turn_passes_the_queue_by_for_a_while() {
        let turns = Turns::new();
        let now = Instant::now();
        turns.claimed("q", 1);
        turns.claimed("other", 1);
        assert!(turns.stalled("q", now));
        assert!(
            !turns.stalled("q", now + Duration::from_secs(1)),
            "logged once"
        );
        assert_eq!(turns.take("q", now + Duration::from_secs(1)), None);
        assert!(
            turns.take("other", now).is_some(),
            "other queues keep their turns"
        );
        assert!(turns
            .take("q", now + PASS_BY + Duration::from_millis(1))
            .is_some());
        assert!(
            turns.stalled("q", now + 2 * PASS_BY),
            "news again after it ended"
        );
    }
}
