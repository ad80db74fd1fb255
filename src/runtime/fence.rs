//! Self-fencing: a process works only while the database has recently confirmed its
//! heartbeat.
//!
//! Another process may judge this one dead once its heartbeat has not advanced for its
//! staleness, and then run its jobs again. A process cut off from the database (a route
//! that silently drops packets, a stopped VM) gets no error to tell it so. So it keeps a
//! lease on its own jobs: each heartbeat the database confirms extends the lease to
//! [`window`](Fence::window) after the moment that beat was *sent* (the row is at least as
//! fresh as that), and when the lease runs out the process stops claiming and stops its
//! running jobs, before anyone may judge it dead. This is the lease idea of Chubby and
//! etcd: the holder gives up before the lease can be given away.
//!
//! The window is half the staleness. The margin, the other half, covers what the two
//! sides do not share. The rescuer judges by its own clock, from when it first saw the
//! heartbeat's last value (which is after that beat was sent); this process by its own
//! clock, from when it sent that beat. So only the clocks' *rates* matter, not their
//! settings or offsets: the stop comes first as long as the rescuer's clock runs less than
//! twice as fast as this one (real clocks differ by parts per million), less the time
//! the worker thread is late to act (a job that blocks its thread delays the stop).
//!
//! A run stopped this way ends as [`JobOutcome::Lost`](crate::JobOutcome::Lost): its
//! future is dropped at its next `.await` and nothing is written for it. Once the database
//! confirms a heartbeat again, the claims still held are given back to `pending` (the
//! reconciler), unless a rescuer took them meanwhile.
//!
//! Shared by the maintenance thread (which confirms) and the worker thread (which watches
//! and stops): a mutex, not a `RefCell`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug)]
pub(crate) struct Fence {
    window: Duration,
    /// Written by the heartbeat (confirmations) and by the worker thread's watch (trips).
    state: Mutex<State>,
    /// The number of trips so far: each one stops the runs started before it. Sent by
    /// whoever trips the fence; watched by the worker thread.
    trips: watch::Sender<u64>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// When the newest confirmed heartbeat was sent.
    confirmed: Option<Instant>,
    /// The lease that ended with the last trip, so that it trips once.
    tripped_for: Option<Instant>,
}

impl Fence {
    /// A fence whose lease lasts `window` after each confirmed beat; closed until the
    /// first one.
    pub(crate) fn new(window: Duration) -> Fence {
        Fence {
            window,
            state: Mutex::new(State {
                confirmed: None,
                tripped_for: None,
            }),
            trips: watch::channel(0).0,
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A heartbeat sent at `sent` was written. If the lease had run out meanwhile without
    /// a trip (the whole process was stopped, so nothing could watch), it trips now: the
    /// runs started before are stopped all the same.
    pub(crate) fn confirm(&self, sent: Instant) {
        let mut st = self.lock();
        if let Some(prev) = st.confirmed {
            if Instant::now() >= prev + self.window && st.tripped_for != Some(prev) {
                st.tripped_for = Some(prev);
                self.trips.send_modify(|n| *n += 1);
            }
        }
        if st.confirmed.is_none_or(|prev| sent > prev) {
            st.confirmed = Some(sent);
        }
    }

    /// When the lease runs out (`None` before the first confirmation: closed).
    pub(crate) fn expires_at(&self) -> Option<Instant> {
        self.lock().confirmed.map(|at| at + self.window)
    }

    /// Whether the process may claim and run jobs now.
    pub(crate) fn is_open(&self) -> bool {
        self.expires_at().is_some_and(|at| Instant::now() < at)
    }

    /// Trips the fence if the lease has run out and this lease has not tripped it yet;
    /// true when it did.
    pub(crate) fn trip_if_expired(&self) -> bool {
        let mut st = self.lock();
        let Some(confirmed) = st.confirmed else {
            return false;
        };
        if Instant::now() < confirmed + self.window || st.tripped_for == Some(confirmed) {
            return false;
        }
        st.tripped_for = Some(confirmed);
        self.trips.send_modify(|n| *n += 1);
        true
    }

    /// How many times the fence has tripped.
    pub(crate) fn trips(&self) -> u64 {
        *self.trips.borrow()
    }

    /// Notified at each trip.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.trips.subscribe()
    }

    /// Waits until the lease is valid again (or at most `at_most`).
    pub(crate) async fn wait_open(&self, at_most: Duration) {
        let until = Instant::now().checked_add(at_most);
        while !self.is_open() && until.is_none_or(|until| Instant::now() < until) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_until_confirmed_then_open_for_the_window_from_the_send() {
        let fence = Fence::new(Duration::from_millis(200));
        assert!(!fence.is_open(), "no beat confirmed yet");
        let sent = Instant::now() - Duration::from_millis(150);
        fence.confirm(sent);
        assert!(fence.is_open());
        assert_eq!(fence.expires_at(), Some(sent + Duration::from_millis(200)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !fence.is_open(),
            "the window counts from the send, not the reply"
        );
        assert!(fence.trip_if_expired());
        assert!(!fence.trip_if_expired(), "one lease trips once");
        assert_eq!(fence.trips(), 1);
        fence.confirm(Instant::now());
        assert!(fence.is_open());
        assert_eq!(
            fence.trips(),
            1,
            "a trip already counted is not counted again"
        );
    }

    #[test]
    fn a_lease_that_ran_out_unwatched_trips_when_the_next_beat_lands() {
        let fence = Fence::new(Duration::from_millis(50));
        fence.confirm(Instant::now());
        // The whole process stood still past the window: nothing tripped it.
        std::thread::sleep(Duration::from_millis(80));
        fence.confirm(Instant::now());
        assert!(fence.is_open());
        assert_eq!(fence.trips(), 1, "the runs from before the stall must stop");
        fence.confirm(Instant::now());
        assert_eq!(fence.trips(), 1);
    }
}
