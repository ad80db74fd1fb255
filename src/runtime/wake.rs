//! The wake signal: a dispatch, a promotion of due jobs or a handoff given back tells the
//! fetch loops of this process to claim now instead of at their next poll.

use once_cell::sync::Lazy;
use tokio::sync::watch;

/// One wake-up signal per process, whatever queue handle dispatched: workers started on
/// one `JobQueue` are woken by dispatches through another on the same database.
static WAKE: Lazy<watch::Sender<u64>> = Lazy::new(|| watch::Sender::new(0));

/// Wakes every fetch loop of this process.
pub(crate) fn wake_workers() {
    WAKE.send_modify(|n| *n = n.wrapping_add(1));
}

/// A receiver that sees every later wake.
pub(crate) fn subscribe() -> watch::Receiver<u64> {
    WAKE.subscribe()
}
