//! Retry delays: exponential, capped, with jitter. A pure function of the attempt and a
//! random number, so it is tested without a clock.

use std::time::Duration;

/// Exponential backoff: `base * 2^(attempt-1)`, capped at `max`, then spread by `jitter`
/// (a fraction: 0.25 means the delay is drawn from ±25% around the computed value) so
/// that jobs failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s, … capped at one hour, ±25%.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// A backoff from `base` doubling up to `max`, with the default jitter (±25%).
    ///
    /// Returns an error when `base` is zero or greater than `max`.
    pub fn new(base: Duration, max: Duration) -> crate::Result<Self> {
        if base.is_zero() || base > max {
            return Err(crate::Error::invalid(
                "backoff",
                format!("base ({base:?}) must be non-zero and at most max ({max:?})"),
            ));
        }
        Ok(Backoff {
            base,
            max,
            ..Backoff::default()
        })
    }

    /// Sets the jitter fraction, clamped to `0.0..=1.0`.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The delay after attempt `attempt` (1-based) failed; `random` is uniform in `0..1`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        let nominal = self
            .base
            .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        let spread = 1.0 + self.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        nominal.mul_f64(spread).min(self.max)
    }
}

/// The pause between tries of something that keeps failing (a write, a lease, a restart):
/// it starts at `first`, doubles after each try up to `cap`, and starts again after a
/// success. One implementation for every retry loop of the crate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doubling {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Doubling {
    pub(crate) fn new(first: Duration, cap: Duration) -> Doubling {
        Doubling {
            first,
            cap,
            next: first,
        }
    }

    /// The pause to wait now; the next one is twice as long, up to the cap.
    pub(crate) fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.cap);
        now
    }

    /// [`next`](Self::next) spread over 0.5–1.5× by `random` (uniform in `0..1`), so that
    /// processes failing together do not retry together.
    pub(crate) fn next_jittered(&mut self, random: f64) -> Duration {
        self.next().mul_f64(0.5 + random.clamp(0.0, 1.0))
    }

    /// After a success: the next failure starts from the first pause again.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10))
            .unwrap()
            .jitter(0.0);
        let delays: Vec<u64> = (1..=6).map(|a| b.delay(a, 0.5).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(u32::MAX, 0.9), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_bounds_and_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(3));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(5));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(4));
        assert_eq!(b.delay(40, 1.0), Duration::from_secs(3600));
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_doubling_pause_caps_and_starts_again() {
        let ms = Duration::from_millis;
        let mut d = Doubling::new(ms(100), ms(350));
        let seen: Vec<Duration> = (0..4).map(|_| d.next()).collect();
        assert_eq!(seen, vec![ms(100), ms(200), ms(350), ms(350)]);
        d.reset();
        assert_eq!(d.next_jittered(0.0), ms(50));
        assert_eq!(d.next_jittered(1.0), ms(300));
    }
}
