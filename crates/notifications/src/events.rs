//! The notifications consumer: every event a customer or the operations team should hear of
//! becomes one email and, for a customer's order, payment, refund, return or shipment, one
//! inbox entry.
//!
//! The email is sent in `prepare`, outside the consumer's transaction: sending can take
//! seconds, and on SQLite that transaction would hold the database's only writer meanwhile.
//! [`Notifications::send_email`] makes it idempotent through the notification log (one claim
//! per event), so redeliveries send nothing more, and a failed attempt answers `Err` so the bus
//! retries and, after its last attempt, dead-letters the event; an admin's replay sends once.
//! The inbox entry is written in `handle`, in the consumer's transaction, so exactly once.

use std::sync::Arc;

use async_trait::async_trait;
use platform::consumer::EventHandler;
use platform::events::Event;
use platform::store::Tx;

use crate::service::Notifications;

/// Every event type the consumer handles (one per [`crate::domain::NotificationKind`]).
pub const EVENT_TYPES: &[&str] = &[
    "user.registered",
    "user.email_verification_requested",
    "user.password_reset_requested",
    "order.created",
    "payment.succeeded",
    "payment.failed",
    "order.shipped",
    "order.out_for_delivery",
    "order.delivered",
    "order.cancelled",
    "refund.succeeded",
    "return.requested",
    "return.approved",
    "return.rejected",
    "return.received",
    "return.refunded",
    "inventory.low_stock",
    "shipment.created",
    "shipment.code_issued",
    "shipment.failed_attempt",
];

/// The consumer. Event types it has no template for are ignored.
pub struct NotificationEvents {
    pub notifications: Arc<Notifications>,
}

#[async_trait]
impl EventHandler for NotificationEvents {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        self.notifications.send_email(event).await.map(|_| ())
    }

    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        self.notifications.record_inbox(tx, event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NotificationKind;

    #[test]
    fn the_event_types_are_exactly_those_of_the_templates() {
        let from_kinds: Vec<&str> = NotificationKind::ALL.iter().map(|k| k.event_type()).collect();
        assert_eq!(EVENT_TYPES, from_kinds.as_slice());
    }
}
