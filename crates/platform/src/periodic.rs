//! Background jobs that run on a fixed interval until the process stops (sweepers: expired
//! reservations, abandoned carts, owed refunds, old idempotency keys).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `job` at once and then every `interval` until `cancel`. A run that
/// reports work done is logged with its count; a failed run is logged and retried next time.
/// `name` says what the job is in those lines.
pub fn spawn_every<F, Fut>(name: &'static str, interval: Duration, cancel: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<usize>> + Send,
{
    tokio::spawn(async move {
        // A zero interval would make `interval` panic.
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match job().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(job = name, count, "periodic job did work"),
                Err(err) => {
                    tracing::warn!(job = name, error = %format!("{err:#}"), "periodic job failed; it will retry")
                }
            }
        }
    });
}
