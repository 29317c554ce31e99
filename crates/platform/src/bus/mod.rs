//! The event bus: one [`Bus`] trait with two implementations, the durable in-process log for
//! the all-in-one mode ([`log::LogBus`]) and NATS JetStream for the distributed mode
//! ([`nats::NatsBus`]). Both deliver at least once, per consumer group, in publish order, and
//! both hand an event to the dead-letter path after [`RetryPolicy::max_attempts`] failures.

pub mod log;
pub mod nats;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::events::Event;

#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes an event; publishing the same event id twice delivers it once.
    async fn publish(&self, event: &Event) -> anyhow::Result<()>;

    /// Publishes `events` in their order: how many of them, from the first, are published,
    /// and the failure that stopped the rest (a relay deletes what was published and tries the
    /// rest again). The buses send a batch together rather than one after the other.
    async fn publish_all(&self, events: &[Event]) -> (usize, anyhow::Result<()>) {
        for (published, event) in events.iter().enumerate() {
            if let Err(err) = self.publish(event).await {
                return (published, Err(err));
            }
        }
        (events.len(), Ok(()))
    }

    /// Starts delivering events whose type is in `subscription.types` (or all, for `*`) to
    /// its handler, until the bus's cancellation token fires. One subscription per group.
    async fn subscribe(&self, subscription: Subscription) -> anyhow::Result<()>;

    /// Hands this process every event whose type is in `types` (or all, for `*`) published
    /// from now on, as it is published: best effort (an event may be missed, or handed over
    /// twice when it was published twice), with no retries, no stored position and nothing
    /// replayed, and every process that watches gets each event. For wake-ups (live
    /// streams), never for effects that must happen. `deliver` must return quickly.
    async fn watch(&self, types: Vec<String>, handler: Arc<dyn Delivery>) -> anyhow::Result<()>;

    /// Readiness: can the bus take a publish now?
    async fn ping(&self) -> anyhow::Result<()>;
}

/// What one process watches on a bus ([`Bus::watch`]).
#[derive(Clone)]
pub(crate) struct Watcher {
    pub types: Vec<String>,
    pub handler: Arc<dyn Delivery>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("types", &self.types).finish()
    }
}

impl Watcher {
    pub fn wants(&self, kind: &str) -> bool {
        wants(&self.types, kind)
    }
}

/// Whether a list of event types (`*` for all) takes events of type `kind`.
pub(crate) fn wants(types: &[String], kind: &str) -> bool {
    types.iter().any(|t| t == "*" || t == kind)
}

/// What a consumer group wants and who handles it.
#[derive(Clone)]
pub struct Subscription {
    /// The durable consumer group name; its position survives restarts.
    pub group: String,
    /// Event types, or `*` for every type.
    pub types: Vec<String>,
    pub handler: Arc<dyn Delivery>,
    pub retry: RetryPolicy,
}

impl Subscription {
    pub fn wants(&self, kind: &str) -> bool {
        wants(&self.types, kind)
    }
}

/// The receiving end of a subscription.
#[async_trait]
pub trait Delivery: Send + Sync {
    /// Processes an event. An `Err` is retried, then dead-lettered.
    async fn deliver(&self, event: &Event) -> anyhow::Result<()>;
    /// Records an event that failed every attempt.
    async fn dead_letter(&self, event: &Event, error: &str, attempts: u32) -> anyhow::Result<()>;

    /// Processes several events of the group together, in order and all or none: `Ok(true)`
    /// when all are done. `Ok(false)` (this delivery does not take batches) or an `Err` leaves
    /// every one of them to [`Delivery::deliver`], one at a time with its retries.
    async fn deliver_all(&self, _events: &[Event]) -> anyhow::Result<bool> {
        Ok(false)
    }
}

/// How often and how patiently a failing event is retried before it is dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (exponential: base, 2×base, 4×base, …).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.base_backoff * 2u32.pow(attempt.saturating_sub(1).min(10))
    }
}

/// Registers `group` as subscribed in this process; a second subscription is an error.
pub(crate) fn claim_group(
    groups: &std::sync::Mutex<std::collections::HashSet<String>>,
    group: &str,
) -> anyhow::Result<()> {
    let fresh = groups
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(group.to_owned());
    anyhow::ensure!(fresh, "consumer group `{group}` is already subscribed");
    Ok(())
}

/// The all-attempts path shared by buses that retry in process: deliver, back off, retry, and
/// dead-letter after the last failure. Answers `Err` only when even dead-lettering failed, in
/// which case the event must not be acknowledged.
pub(crate) async fn deliver_with_retries(subscription: &Subscription, event: &Event) -> anyhow::Result<()> {
    let policy = subscription.retry;
    let mut attempt = 1;
    loop {
        match subscription.handler.deliver(event).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt >= policy.max_attempts => {
                let error = format!("{err:#}");
                tracing::warn!(group = %subscription.group, event_id = %event.id, event_type = %event.kind, %error, attempts = attempt, "event dead-lettered");
                metrics::counter!("mercato_dead_letters_total", "group" => subscription.group.clone()).increment(1);
                return subscription.handler.dead_letter(event, &error, attempt).await;
            }
            Err(err) => {
                tracing::debug!(group = %subscription.group, event_id = %event.id, error = %format!("{err:#}"), attempt, "event delivery failed; retrying");
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}
