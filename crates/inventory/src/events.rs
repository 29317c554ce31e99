//! The inventory's consumers: product events register and discontinue SKUs; order.paid commits
//! the order's reservation (or, when it expired before the payment came, sells the units again
//! if they are free) and order.cancelled releases it.

use std::sync::Arc;

use async_trait::async_trait;
use platform::consumer::EventHandler;
use platform::error::ApiError;
use platform::events::Event;
use platform::store::Tx;
use serde::Deserialize;

use crate::domain::{Line, ReleaseReason, ReservationStatus};
use crate::service::{Context, Inventory};

pub const PRODUCT_EVENTS: &[&str] = &["product.created", "product.updated", "product.deleted"];
pub const ORDER_EVENTS: &[&str] = &[
    "order.paid",
    "order.confirmed",
    "order.cancelled",
    "order.payment_failed",
    "return.received",
];

/// Registers the SKUs of created and updated products (with no stock) and discontinues the
/// SKUs of deleted products or those a product dropped.
pub struct ProductSkus {
    pub inventory: Arc<Inventory>,
}

#[derive(Deserialize)]
struct ProductChanged {
    product_id: String,
    seller_id: Option<String>,
    #[serde(default)]
    variants: Vec<VariantRef>,
}

#[derive(Deserialize)]
struct VariantRef {
    sku: String,
}

#[derive(Deserialize)]
struct ProductDeleted {
    #[serde(default)]
    skus: Vec<String>,
}

#[async_trait]
impl EventHandler for ProductSkus {
    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        if event.kind == "product.deleted" {
            let deleted: ProductDeleted = event.data_as()?;
            self.inventory.discontinue(tx, &deleted.skus).await?;
            return Ok(());
        }
        let changed: ProductChanged = event.data_as()?;
        let skus: Vec<String> = changed.variants.into_iter().map(|v| v.sku).collect();
        self.inventory
            .sync_product(tx, &changed.product_id, changed.seller_id.as_deref(), &skus)
            .await?;
        Ok(())
    }

    async fn committed(&self, _event: &Event) {
        self.inventory.levels_changed();
    }
}

/// order.paid and order.confirmed (cash on delivery) → commit the order's reservation;
/// order.cancelled and order.payment_failed → release it, or, when it was already committed
/// (an order cancelled after payment), put its units back on hand; return.received → put the
/// returned units back. All are idempotent in the service (restocks by their reference), so
/// this runs before the consumer's transaction (on SQLite that transaction would hold the only
/// writer the service needs) and again on a redelivery.
pub struct OrderReservations {
    pub inventory: Arc<Inventory>,
}

#[async_trait]
impl EventHandler for OrderReservations {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        let ctx = Context {
            actor: None,
            correlation_id: event.correlationid.as_deref(),
        };
        let order_id = event.subject.as_str();
        let result = match event.kind.as_str() {
            "order.paid" | "order.confirmed" => match self.inventory.commit(order_id, ctx).await {
                // Paid after the reservation expired: sell the units again if they are free
                // (or tell orders the order cannot be filled).
                Err(ApiError::Conflict(_)) => self.inventory.commit_late(order_id, ctx).await.map(|_| ()),
                other => other.map(|_| ()),
            },
            "order.cancelled" | "order.payment_failed" => {
                let reason = if event.kind == "order.cancelled" {
                    ReleaseReason::Cancelled
                } else {
                    ReleaseReason::PaymentFailed
                };
                match self.inventory.release(order_id, reason, ctx).await {
                    Err(ApiError::Conflict(_)) => self.restock_committed(order_id, ctx).await,
                    other => other.map(|_| ()),
                }
            }
            "return.received" => {
                let received: ReturnReceived = event.data_as()?;
                let lines: Vec<Line> = received
                    .lines
                    .into_iter()
                    .map(|l| Line {
                        sku: l.sku,
                        quantity: l.quantity,
                    })
                    .collect();
                let reference = format!("return:{}", received.return_id);
                self.inventory
                    .restock(&reference, &lines, "returned by the customer", ctx)
                    .await
                    .map(|_| ())
            }
            _ => return Ok(()),
        };
        match result {
            Ok(()) => Ok(()),
            // An order without a reservation (cash on delivery before stock was held, or an
            // order from before inventory existed) or one already finished the other way:
            // the orders service decides what that means; nothing to change here.
            Err(err @ (ApiError::NotFound(_) | ApiError::Conflict(_))) => {
                tracing::warn!(order_id, event = %event.kind, error = %err, "order event left the reservation as it is");
                Ok(())
            }
            Err(err) => Err(anyhow::anyhow!("{err}")),
        }
    }

    async fn handle(&self, _tx: &mut Tx, _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Deserialize)]
struct ReturnReceived {
    return_id: String,
    lines: Vec<ReturnedLine>,
}

#[derive(Deserialize)]
struct ReturnedLine {
    sku: String,
    quantity: i64,
}

impl OrderReservations {
    /// Puts a committed reservation's units back on hand (once per order).
    async fn restock_committed(&self, order_id: &str, ctx: Context<'_>) -> Result<(), ApiError> {
        let reservation = self.inventory.reservation(order_id).await?;
        if reservation.status != ReservationStatus::Committed {
            return Ok(());
        }
        let reference = format!("cancel:{order_id}");
        self.inventory
            .restock(&reference, &reservation.lines, "order cancelled after payment", ctx)
            .await
            .map(|_| ())
    }
}
