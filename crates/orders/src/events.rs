//! The orders service's consumers: payment outcomes move orders (paid, payment failed), an
//! expired reservation cancels an unpaid order (`payment_timeout`), refunds are noted.
//!
//! Status changes go through [`Orders::apply`], which is idempotent (a repeated event meets the
//! state machine's `Stay`), so they run in `prepare`, outside the consumer's transaction: on
//! SQLite that transaction holds the only writer the change needs. The timeline note of each
//! event is written in the consumer's transaction, so a redelivery adds none.

use std::sync::Arc;

use async_trait::async_trait;
use platform::consumer::EventHandler;
use platform::error::ApiError;
use platform::events::Event;
use platform::store::Tx;
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{OrderStatus, Trigger};
use crate::service::{Actor, Orders};
use crate::store::{self, TimelineEntry};

pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";
pub const PAYMENT_FAILED: &str = "payment.failed";
pub const REFUND_SUCCEEDED: &str = "refund.succeeded";
pub const PAYMENT_EVENTS: &[&str] = &[PAYMENT_SUCCEEDED, PAYMENT_FAILED, REFUND_SUCCEEDED];
pub const INVENTORY_RELEASED: &str = "inventory.released";
pub const INVENTORY_UNFILLABLE: &str = "inventory.unfillable";

#[derive(Deserialize)]
struct PaymentData {
    order_id: String,
    #[serde(default)]
    amount_minor: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    fully_refunded: Option<bool>,
}

pub struct PaymentOutcomes {
    pub orders: Arc<Orders>,
}

fn as_anyhow(err: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

#[async_trait]
impl EventHandler for PaymentOutcomes {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        let data: PaymentData = event.data_as()?;
        let correlation = event.correlationid.as_deref();
        let actor = Actor::Service("payments");
        let trigger = match event.kind.as_str() {
            PAYMENT_SUCCEEDED => Trigger::PaymentSucceeded,
            PAYMENT_FAILED => Trigger::PaymentFailed,
            _ => return Ok(()),
        };
        let reason = data.reason.as_deref().or(Some(event.kind.as_str()));
        let applied = match self
            .orders
            .apply(&data.order_id, trigger, &actor, reason, None, correlation)
            .await
        {
            Ok(applied) => applied,
            Err(ApiError::NotFound(_)) => {
                tracing::warn!(order_id = %data.order_id, event = %event.kind, "payment event for an unknown order");
                return Ok(());
            }
            Err(err) => return Err(as_anyhow(err)),
        };
        // Money captured for an order that already ended (cancelled, or declined and its stock
        // given back): it goes back to the buyer.
        let status = OrderStatus::parse(&applied.order.status);
        if trigger == Trigger::PaymentSucceeded
            && applied.moved_from.is_none()
            && matches!(status, Some(OrderStatus::Cancelled | OrderStatus::PaymentFailed))
        {
            let order_id = Uuid::parse_str(&data.order_id)?;
            let key = format!("void:{}", data.order_id);
            match self
                .orders
                .clients
                .payments
                .refund(order_id, None, "captured after the order ended", &key, correlation)
                .await
            {
                Ok(()) => {}
                // Nothing left to refund (payments refunded it on order.cancelled already).
                Err(ApiError::Conflict(_) | ApiError::Unprocessable(_)) => {}
                Err(err) => return Err(as_anyhow(err)),
            }
        }
        Ok(())
    }

    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        let data: PaymentData = event.data_as()?;
        if store::order(&mut **tx, &data.order_id).await?.is_none() {
            return Ok(());
        }
        let amount = match (data.amount_minor, &data.currency) {
            (Some(amount), Some(currency)) => format!(" {amount} {currency}"),
            _ => String::new(),
        };
        let (kind, text) = match event.kind.as_str() {
            PAYMENT_SUCCEEDED => (
                "payment",
                format!(
                    "payment captured{amount}{}",
                    data.reference.map(|r| format!(" ({r})")).unwrap_or_default()
                ),
            ),
            PAYMENT_FAILED => (
                "payment",
                format!("payment failed: {}", data.reason.as_deref().unwrap_or("declined")),
            ),
            REFUND_SUCCEEDED => (
                "refund",
                format!(
                    "refunded{amount}{}",
                    if data.fully_refunded == Some(true) {
                        " (in full)"
                    } else {
                        ""
                    }
                ),
            ),
            _ => return Ok(()),
        };
        store::append_timeline(
            tx,
            TimelineEntry {
                order_id: &data.order_id,
                at: platform::clock::now_ms(),
                kind,
                from_status: None,
                to_status: None,
                actor: "payments",
                reason: Some(&text),
            },
        )
        .await?;
        Ok(())
    }
}

#[derive(Deserialize)]
struct Released {
    order_id: String,
    reason: Option<String>,
}

/// inventory.released with reason `expired`: nobody paid in time; the order is cancelled with
/// reason `payment_timeout` (payments then cancels the intent). inventory.unfillable: the
/// payment came after the reservation expired and the units were sold meanwhile; the paid order
/// is cancelled with reason `out_of_stock` (payments then refunds it).
pub struct ReservationExpiry {
    pub orders: Arc<Orders>,
}

#[async_trait]
impl EventHandler for ReservationExpiry {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        let data: Released = event.data_as()?;
        let (trigger, reason) = if event.kind == INVENTORY_UNFILLABLE {
            (Trigger::Cancel, "out_of_stock")
        } else if data.reason.as_deref() == Some("expired") {
            (Trigger::ReservationExpired, "payment_timeout")
        } else {
            return Ok(());
        };
        match self
            .orders
            .apply(
                &data.order_id,
                trigger,
                &Actor::Service("inventory"),
                Some(reason),
                None,
                event.correlationid.as_deref(),
            )
            .await
        {
            // Gone, or closed already (cancelled another way): nothing to do.
            Ok(_) | Err(ApiError::NotFound(_) | ApiError::Conflict(_)) => Ok(()),
            Err(err) => Err(as_anyhow(err)),
        }
    }

    async fn handle(&self, _tx: &mut Tx, _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }
}

pub const SHIPMENT_PICKED_UP: &str = "shipment.picked_up";
pub const SHIPMENT_IN_TRANSIT: &str = "shipment.in_transit";
pub const SHIPMENT_OUT_FOR_DELIVERY: &str = "shipment.out_for_delivery";
pub const SHIPMENT_DELIVERED: &str = "shipment.delivered";
pub const SHIPMENT_FAILED_ATTEMPT: &str = "shipment.failed_attempt";
pub const SHIPMENT_RESCHEDULED: &str = "shipment.rescheduled";
pub const SHIPMENT_RETURNED_TO_SENDER: &str = "shipment.returned_to_sender";
/// The parcel is back at the warehouse (an admin confirmed it).
pub const SHIPMENT_RETURNED: &str = "shipment.returned";
pub const SHIPMENT_ASSIGNED: &str = "shipment.assigned";
/// The order was cancelled while the parcel was on its way: it goes back.
pub const SHIPMENT_RECALLED: &str = "shipment.recalled";
/// What the delivery service tells orders about a parcel.
pub const SHIPMENT_EVENTS: &[&str] = &[
    SHIPMENT_ASSIGNED,
    SHIPMENT_PICKED_UP,
    SHIPMENT_IN_TRANSIT,
    SHIPMENT_OUT_FOR_DELIVERY,
    SHIPMENT_DELIVERED,
    SHIPMENT_FAILED_ATTEMPT,
    SHIPMENT_RESCHEDULED,
    SHIPMENT_RETURNED_TO_SENDER,
    SHIPMENT_RETURNED,
    SHIPMENT_RECALLED,
];

#[derive(Deserialize)]
struct ShipmentData {
    order_id: String,
    #[serde(default)]
    note: Option<String>,
}

/// shipment.* events move the order: picked up → `shipped`, out for delivery, delivered (which
/// in turn makes payments collect a cash-on-delivery payment), back at the warehouse
/// (`shipment.returned`, confirmed by an admin) → `cancelled` (stock back, money back). The
/// steps that change no status (assigned, in transit, a failed attempt, rescheduled, on its way
/// back to the sender, recalled), and steps the order's status no longer allows, are noted on
/// the timeline.
pub struct ShipmentProgress {
    pub orders: Arc<Orders>,
}

impl ShipmentProgress {
    fn trigger(kind: &str) -> Option<Trigger> {
        match kind {
            SHIPMENT_PICKED_UP => Some(Trigger::Ship),
            SHIPMENT_OUT_FOR_DELIVERY => Some(Trigger::OutForDelivery),
            SHIPMENT_DELIVERED => Some(Trigger::Deliver),
            SHIPMENT_RETURNED => Some(Trigger::ReturnedToSender),
            _ => None,
        }
    }
}

#[async_trait]
impl EventHandler for ShipmentProgress {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        let Some(trigger) = Self::trigger(&event.kind) else {
            return Ok(());
        };
        let data: ShipmentData = event.data_as()?;
        let reason = data
            .note
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&event.kind);
        match self
            .orders
            .apply(
                &data.order_id,
                trigger,
                &Actor::Service("delivery"),
                Some(reason),
                None,
                event.correlationid.as_deref(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(ApiError::NotFound(_)) => {
                tracing::warn!(order_id = %data.order_id, event = %event.kind, "shipment event for an unknown order");
                Ok(())
            }
            // The order went elsewhere (an admin moved it, or it was cancelled): the parcel's
            // step is noted on the timeline instead, in `handle`; retrying would not help.
            Err(ApiError::Conflict(why)) => {
                tracing::warn!(order_id = %data.order_id, event = %event.kind, %why, "shipment step does not move the order");
                Ok(())
            }
            Err(err) => Err(as_anyhow(err)),
        }
    }

    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        let data: ShipmentData = event.data_as()?;
        let Some(order) = store::order(&mut **tx, &data.order_id).await? else {
            return Ok(());
        };
        let step = event.kind.trim_start_matches("shipment.").replace('_', " ");
        let mut text = match data.note.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            Some(note) => format!("shipment {step}: {note}"),
            None => format!("shipment {step}"),
        };
        if let Some(trigger) = Self::trigger(&event.kind) {
            // `prepare` applied it, and the status change wrote its own entry, unless the
            // order's status does not allow the step.
            let Some(status) = OrderStatus::parse(&order.status) else {
                return Ok(());
            };
            match crate::domain::next(status, trigger) {
                crate::domain::Step::Refuse(why) => {
                    text = format!("{text} (the order stays {}: {why})", status.as_str())
                }
                _ => return Ok(()),
            }
        }
        store::append_timeline(
            tx,
            TimelineEntry {
                order_id: &data.order_id,
                at: platform::clock::now_ms(),
                kind: "shipment",
                from_status: None,
                to_status: None,
                actor: "delivery",
                reason: Some(&text),
            },
        )
        .await?;
        Ok(())
    }
}
