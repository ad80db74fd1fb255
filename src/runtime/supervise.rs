//! Supervision: a task that panics (a bug, a value that does not decode) is run again
//! after a growing pause, so one bad moment never stops a role for good.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::executor::panic_message;
use crate::backoff::Doubling;

/// Runs `task` again after it panics, with a growing pause (100 ms doubling to 10 s), until
/// it returns or `stop` fires (`None`). State that must survive a restart lives outside
/// the task: the free slots, the result channel, the counts.
pub(crate) async fn supervise<F, Fut, T>(
    name: &str,
    stop: Option<&CancellationToken>,
    mut task: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut pause = Doubling::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match AssertUnwindSafe(task()).catch_unwind().await {
            Ok(value) => return Some(value),
            Err(panic) => {
                let message = panic_message(&*panic);
                let delay = pause.next();
                tracing::error!(target: "lightjobs::supervisor", task = name, panic = message, ?delay, "task panicked; restarting it");
                let wait = tokio::time::sleep(delay);
                match stop {
                    Some(stop) => tokio::select! {
                        () = wait => {}
                        () = stop.cancelled() => return None,
                    },
                    None => wait.await,
                }
            }
        }
    }
}
