//! The inventory's consumers: product events register and discontinue SKUs; order.paid commits
//! the order's reservation and order.cancelled releases it.

use std::sync::Arc;

use async_trait::async_trait;
use platform::consumer::EventHandler;
use platform::error::ApiError;
use platform::events::Event;
use platform::store::Tx;
use serde::Deserialize;

use crate::domain::ReleaseReason;
use crate::service::{Context, Inventory};

pub const PRODUCT_EVENTS: &[&str] = &["product.created", "product.updated", "product.deleted"];
pub const ORDER_EVENTS: &[&str] = &["order.paid", "order.cancelled"];

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
}

/// order.paid → commit the order's reservation; order.cancelled → release it. Both are
/// idempotent in the service, so this runs before the consumer's transaction (on SQLite that
/// transaction would hold the only writer the service needs) and again on a redelivery.
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
            "order.paid" => self.inventory.commit(order_id, ctx).await,
            "order.cancelled" => self.inventory.release(order_id, ReleaseReason::Cancelled, ctx).await,
            _ => return Ok(()),
        };
        match result {
            Ok(_) => Ok(()),
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
