//! The one runner of every maintenance role but the heartbeat: a pass, a pause, again,
//! until the stop; an error is logged and the role goes on after its own pause.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::timing::pause;

/// A maintenance role: a pass at a time, on its own schedule.
pub(crate) trait Role {
    /// Its name in logs and in supervision.
    const NAME: &'static str;

    /// The pause before the first pass.
    fn first_pause(&self) -> Duration {
        Duration::ZERO
    }

    /// One pass, its outcome logged; the pause before the next one.
    async fn pass(&self) -> crate::Result<Duration>;

    /// The pause after a pass that failed.
    fn after_error(&self) -> Duration;
}

/// Runs `role` until `stop`; every pause is spread ±20% so that processes do not act in
/// step.
pub(crate) async fn run<R: Role>(role: &R, stop: &CancellationToken) {
    if !role.first_pause().is_zero() && pause(role.first_pause(), stop).await {
        return;
    }
    loop {
        let next = match role.pass().await {
            Ok(next) => next,
            Err(error) => {
                tracing::debug!(target: "lightjobs::maintenance", role = R::NAME, %error, "pass failed");
                role.after_error()
            }
        };
        if pause(next, stop).await {
            return;
        }
    }
}
