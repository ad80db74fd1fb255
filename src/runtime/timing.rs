//! Waiting with jitter, the shape of every loop that polls: processes started together must
//! not act in step.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits about `interval` (±20%, so that processes do not act in step), or until `stop`.
/// True when stopped: the shape of every maintenance loop.
pub(crate) async fn pause(interval: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(jitter(interval, fastrand::f64())) => false,
    }
}

/// `d` scaled by 0.8 … 1.2 as `random` goes from 0 to 1.
pub(crate) fn jitter(d: Duration, random: f64) -> Duration {
    d.mul_f64(0.8 + 0.4 * random.clamp(0.0, 1.0))
}
