//! The events delivery publishes (`shipment.*`, subject = the order id, so they keep their order
//! per order) and its consumer of order events: a paid or cash-on-delivery order gets its
//! shipment (unless it was cancelled first), a cancelled one has its shipment cancelled while
//! nobody has picked it up, and recalled once it is on the road.
//!
//! Every `shipment.*` event's data is `{shipment_id, order_id, order_number, user_id, status,
//! previous_status, agent_id, note, cod, at}`, plus `proof` (`code` or `none`) on
//! `shipment.delivered` and `delivery_code` (the plain six digits, for the customer's eyes only)
//! on `shipment.created` and `shipment.code_issued`. On `shipment.recalled` and
//! `shipment.code_issued`, `status` and `previous_status` are both the unchanged status.

use std::sync::Arc;

use async_trait::async_trait;
use platform::consumer::EventHandler;
use platform::events::Event;
use platform::store::Tx;
use serde::Deserialize;

use crate::domain::ShipmentStatus;
use crate::service::{Delivery, ShippingAddress};

/// A shipment exists for the order (status `pending`); carries `delivery_code`.
pub const SHIPMENT_CREATED: &str = "shipment.created";
/// An agent was given the shipment (first assignment or a hand-over; `status` says which).
pub const SHIPMENT_ASSIGNED: &str = "shipment.assigned";
pub const SHIPMENT_PICKED_UP: &str = "shipment.picked_up";
pub const SHIPMENT_IN_TRANSIT: &str = "shipment.in_transit";
pub const SHIPMENT_OUT_FOR_DELIVERY: &str = "shipment.out_for_delivery";
/// Carries `proof`; for cash on delivery the agent collected the money.
pub const SHIPMENT_DELIVERED: &str = "shipment.delivered";
pub const SHIPMENT_FAILED_ATTEMPT: &str = "shipment.failed_attempt";
pub const SHIPMENT_RESCHEDULED: &str = "shipment.rescheduled";
/// The agent reports the parcel is on its way back to the warehouse. Informational: the order
/// ends only once the parcel is back (`shipment.returned`).
pub const SHIPMENT_RETURNED_TO_SENDER: &str = "shipment.returned_to_sender";
/// An admin received the parcel back at the warehouse (final): the order is cancelled, refunded
/// and restocked on this event.
pub const SHIPMENT_RETURNED: &str = "shipment.returned";
pub const SHIPMENT_CANCELLED: &str = "shipment.cancelled";
/// The order was cancelled after the parcel was picked up: the shipment (status unchanged) will
/// not be delivered, and its agent brings the parcel back.
pub const SHIPMENT_RECALLED: &str = "shipment.recalled";
/// An admin issued a new delivery code; carries `delivery_code`.
pub const SHIPMENT_CODE_ISSUED: &str = "shipment.code_issued";

/// Every type delivery publishes.
pub const SHIPMENT_EVENTS: &[&str] = &[
    SHIPMENT_CREATED,
    SHIPMENT_ASSIGNED,
    SHIPMENT_PICKED_UP,
    SHIPMENT_IN_TRANSIT,
    SHIPMENT_OUT_FOR_DELIVERY,
    SHIPMENT_DELIVERED,
    SHIPMENT_FAILED_ATTEMPT,
    SHIPMENT_RESCHEDULED,
    SHIPMENT_RETURNED_TO_SENDER,
    SHIPMENT_RETURNED,
    SHIPMENT_CANCELLED,
    SHIPMENT_RECALLED,
    SHIPMENT_CODE_ISSUED,
];

pub const ORDER_PAID: &str = "order.paid";
/// A cash-on-delivery order was accepted: it ships now and is paid on delivery.
pub const ORDER_CONFIRMED: &str = "order.confirmed";
pub const ORDER_CANCELLED: &str = "order.cancelled";
/// What the delivery consumer subscribes to.
pub const ORDER_EVENTS: &[&str] = &[ORDER_PAID, ORDER_CONFIRMED, ORDER_CANCELLED];

/// The event announcing that a shipment reached `status` (by a status change, not an assignment).
pub fn kind_of(status: ShipmentStatus) -> &'static str {
    match status {
        ShipmentStatus::Pending => SHIPMENT_CREATED,
        ShipmentStatus::Assigned => SHIPMENT_ASSIGNED,
        ShipmentStatus::PickedUp => SHIPMENT_PICKED_UP,
        ShipmentStatus::InTransit => SHIPMENT_IN_TRANSIT,
        ShipmentStatus::OutForDelivery => SHIPMENT_OUT_FOR_DELIVERY,
        ShipmentStatus::Delivered => SHIPMENT_DELIVERED,
        ShipmentStatus::FailedAttempt => SHIPMENT_FAILED_ATTEMPT,
        ShipmentStatus::Rescheduled => SHIPMENT_RESCHEDULED,
        ShipmentStatus::ReturnedToSender => SHIPMENT_RETURNED_TO_SENDER,
        ShipmentStatus::Returned => SHIPMENT_RETURNED,
        ShipmentStatus::Cancelled => SHIPMENT_CANCELLED,
    }
}

/// What delivery reads of an order event's data (the rest is ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct OrderData {
    pub order_id: String,
    /// The order's human number, `ORD-YYYY-NNNNNN`.
    #[serde(default)]
    pub number: String,
    #[serde(default)]
    pub user_id: String,
    /// `cod` for cash on delivery.
    #[serde(default)]
    pub payment_method: String,
    #[serde(default)]
    pub shipping_address: Option<ShippingAddress>,
}

/// order.paid and order.confirmed → the order's shipment is created (once per order, and not for
/// an order already cancelled) and assigned; order.cancelled → a shipment not yet picked up is
/// cancelled, one on the road recalled, and an order without a shipment is recorded as
/// cancelled. The effect is written
/// in the consumer's transaction, together with the record that the event was processed, and
/// the `shipment.*` events go to the outbox in that same transaction.
pub struct OrderShipments {
    pub delivery: Arc<Delivery>,
}

#[async_trait]
impl EventHandler for OrderShipments {
    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        let correlation = event.correlationid.as_deref();
        match event.kind.as_str() {
            ORDER_PAID | ORDER_CONFIRMED => {
                let order: OrderData = event.data_as()?;
                self.delivery
                    .create_for_order(tx, &event.kind, &order, correlation)
                    .await?;
            }
            ORDER_CANCELLED => {
                let order: OrderData = event.data_as()?;
                self.delivery.cancel_for_order(tx, &order.order_id, correlation).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
