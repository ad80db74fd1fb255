//! The fetch loop's pacing: how many slots to gather before a claim, how long to wait
//! after one, how to back off from conflicts and errors. A pure policy: the clock and the
//! random source come in as arguments, so it is tested without a database or a timer.

use std::time::{Duration, Instant};

use super::timing::jitter;

/// How long after the last job it found a fetch loop keeps polling at the minimum interval
/// before it starts to back off.
pub(crate) const ACTIVE_WINDOW: Duration = Duration::from_secs(30);

/// Under a backlog, how long a claim may wait for half the slots to free up. Bounded so a
/// slow job cannot delay the claims for the others for long.
pub(crate) const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// What the fetch loop does after a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Claim again at once: jobs are waiting.
    Claim,
    /// Wait this long (or until woken) before the next claim.
    Wait(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    min: Duration,
    max: Duration,
    /// The idle interval: `min`, doubling while nothing is found, up to `max`.
    idle: Duration,
    /// The last claim was full: more jobs are waiting.
    saturated: bool,
    /// Lock races lost in a row.
    conflicts: u32,
    last_work: Instant,
}

impl Pacing {
    pub(crate) fn new(min: Duration, max: Duration, now: Instant) -> Pacing {
        Pacing {
            min,
            max,
            idle: min,
            saturated: false,
            conflicts: 0,
            last_work: now,
        }
    }

    /// Whether the last claim came back full (jobs are waiting in the table).
    pub(crate) fn saturated(&self) -> bool {
        self.saturated
    }

    /// How many slots to gather (within [`CLAIM_GATHER`]) before claiming: under a backlog,
    /// rather than one transaction per freed slot, half of them at once. `None`: claim with
    /// whatever is free.
    pub(crate) fn gather_target(&self, concurrency: usize, cap: usize) -> Option<usize> {
        self.saturated
            .then(|| (concurrency / 2).clamp(1, cap.max(1)))
    }

    /// After a claim that asked for `asked` jobs and got `got`.
    pub(crate) fn claimed(&mut self, asked: usize, got: usize, now: Instant, random: f64) -> Next {
        self.conflicts = 0;
        self.saturated = asked > 0 && got == asked;
        if got > 0 {
            self.idle = self.min;
            self.last_work = now;
        } else if now.duration_since(self.last_work) > ACTIVE_WINDOW {
            // Only a queue quiet for a while backs off: while jobs keep coming, even from
            // other processes, they are noticed within the minimum interval.
            self.grow();
        }
        if self.saturated {
            Next::Claim
        } else if got > 0 {
            Next::Wait(self.min)
        } else {
            Next::Wait(jitter(self.idle, random))
        }
    }

    /// After a claim that lost a lock race (a deadlock, a lock wait timeout, a Galera
    /// certification failure): nothing of it committed. The first retry goes at once,
    /// later ones after a pause.
    pub(crate) fn conflicted(&mut self, random: f64) -> Next {
        self.conflicts += 1;
        if self.conflicts == 1 {
            Next::Claim
        } else {
            Next::Wait(jitter(self.min, random))
        }
    }

    /// After a claim that failed otherwise (the database away): back off.
    pub(crate) fn failed(&mut self, random: f64) -> Duration {
        self.saturated = false;
        self.grow();
        jitter(self.idle, random)
    }

    /// The idle wait, for a pause that is not after a claim (the queues drained, a
    /// promotion that failed).
    pub(crate) fn idle_wait(&self, random: f64) -> Duration {
        jitter(self.idle, random)
    }

    fn grow(&mut self) {
        self.idle = (self.idle * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_full_claim_claims_again_and_gathers_half_the_slots() {
        let now = Instant::now();
        let mut p = Pacing::new(MS(50), MS(1000), now);
        assert_eq!(p.gather_target(100, usize::MAX), None);
        assert_eq!(p.claimed(10, 10, now, 0.5), Next::Claim);
        assert_eq!(p.gather_target(100, usize::MAX), Some(50));
        assert_eq!(
            p.gather_target(100, 7),
            Some(7),
            "never more than max_jobs leaves"
        );
        assert_eq!(p.claimed(50, 3, now, 0.5), Next::Wait(MS(50)));
        assert_eq!(p.gather_target(100, usize::MAX), None);
    }

    #[test]
    fn an_empty_queue_backs_off_only_after_the_active_window() {
        let t0 = Instant::now();
        let mut p = Pacing::new(MS(50), MS(300), t0);
        assert_eq!(p.claimed(10, 0, t0 + MS(100), 0.5), Next::Wait(MS(50)));
        let quiet = t0 + ACTIVE_WINDOW + MS(1);
        let waits: Vec<Next> = (0..4).map(|_| p.claimed(10, 0, quiet, 0.5)).collect();
        assert_eq!(
            waits,
            vec![
                Next::Wait(MS(100)),
                Next::Wait(MS(200)),
                Next::Wait(MS(300)),
                Next::Wait(MS(300))
            ]
        );
        assert_eq!(
            p.claimed(10, 1, quiet, 0.5),
            Next::Wait(MS(50)),
            "work resets it"
        );
        assert_eq!(p.idle_wait(0.5), MS(50));
    }

    #[test]
    fn conflicts_retry_at_once_then_pause_and_errors_back_off() {
        let now = Instant::now();
        let mut p = Pacing::new(MS(50), MS(400), now);
        assert_eq!(p.conflicted(0.5), Next::Claim);
        assert_eq!(p.conflicted(0.0), Next::Wait(MS(40)));
        assert_eq!(p.failed(0.5), MS(100));
        assert_eq!(p.failed(1.0), MS(240));
        p.claimed(1, 0, now, 0.5);
        assert_eq!(
            p.conflicted(0.5),
            Next::Claim,
            "a claim that went through resets it"
        );
    }
}
