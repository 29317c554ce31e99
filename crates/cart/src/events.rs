//! The cart's consumers: product events refresh the price snapshots of every cart holding the
//! SKU; order.paid takes what was bought out of the buyer's cart, then frees the order's hold;
//! order.payment_failed and order.cancelled free the order's hold. Both are idempotent (snapshots
//! are set, deductions happen once per order), so they run before the consumer's transaction and
//! again on a redelivery.

use std::sync::Arc;

use async_trait::async_trait;
use platform::consumer::EventHandler;
use platform::events::Event;
use platform::store::Tx;
use serde::Deserialize;

use crate::service::Cart;
use crate::store::{Details, Snapshot};

pub const PRODUCT_EVENTS: &[&str] = &["product.created", "product.updated", "product.deleted"];
pub const ORDER_PAID: &str = "order.paid";
/// The orders after which the buyer's cart is emptied: paid, or accepted for cash on delivery.
pub const ORDER_EVENTS: &[&str] = &[ORDER_PAID, "order.confirmed"];

pub struct Reprice {
    pub cart: Arc<Cart>,
}

#[derive(Deserialize)]
struct ProductChanged {
    product_id: String,
    slug: String,
    name: String,
    status: String,
    currency: Option<String>,
    #[serde(default)]
    variants: Vec<Variant>,
    image: Option<Image>,
}

#[derive(Deserialize)]
struct Variant {
    sku: String,
    price: i64,
}

#[derive(Deserialize)]
struct Image {
    url: String,
}

#[derive(Deserialize)]
struct ProductDeleted {
    #[serde(default)]
    skus: Vec<String>,
}

#[async_trait]
impl EventHandler for Reprice {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        if event.kind == "product.deleted" {
            let deleted: ProductDeleted = event.data_as()?;
            let gone = Snapshot {
                active: false,
                details: None,
            };
            for sku in &deleted.skus {
                self.cart.reprice(sku, &gone).await?;
            }
            return Ok(());
        }
        let product: ProductChanged = event.data_as()?;
        for variant in &product.variants {
            let snapshot = Snapshot {
                active: product.status == "active",
                details: Some(Details {
                    product_id: product.product_id.clone(),
                    name: product.name.clone(),
                    slug: product.slug.clone(),
                    image: product.image.as_ref().map(|i| i.url.clone()),
                    unit_price: variant.price,
                    currency: product.currency.clone().unwrap_or_else(|| "USD".to_owned()),
                }),
            };
            self.cart.reprice(&variant.sku, &snapshot).await?;
        }
        Ok(())
    }

    async fn handle(&self, _tx: &mut Tx, _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }
}

/// order.paid and order.confirmed `{user_id, items: [{sku, quantity}]}` → what the order bought
/// leaves the buyer's cart (once per order: the store keeps a marker), and lines added since
/// checking out stay.
pub struct ClearOnPaid {
    pub cart: Arc<Cart>,
}

#[derive(Deserialize)]
struct Paid {
    user_id: Option<uuid::Uuid>,
    /// What the order bought; absent in events from before orders listed it (then the whole
    /// cart is emptied).
    items: Option<Vec<Bought>>,
}

#[derive(Deserialize)]
struct Bought {
    sku: String,
    quantity: i64,
}

#[async_trait]
impl EventHandler for ClearOnPaid {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        let paid: Paid = event.data_as()?;
        let Some(user) = paid.user_id else {
            self.cart.release_hold(&event.subject).await?;
            return Ok(());
        };
        let bought: Option<Vec<(String, i64)>> = paid
            .items
            .map(|items| items.into_iter().map(|i| (i.sku, i.quantity)).collect());
        self.cart.bought(user, &event.subject, bought.as_deref()).await
    }

    async fn handle(&self, _tx: &mut Tx, _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }
}

/// order.cancelled and order.payment_failed → the units the order held in the cart are free
/// again (the customer may check them out once more).
pub struct ReleaseHolds {
    pub cart: Arc<Cart>,
}

/// The orders whose units go back to being free in the cart.
pub const ENDED_ORDER_EVENTS: &[&str] = &["order.cancelled", "order.payment_failed"];

#[async_trait]
impl EventHandler for ReleaseHolds {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        self.cart.release_hold(&event.subject).await?;
        Ok(())
    }

    async fn handle(&self, _tx: &mut Tx, _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }
}

/// order.created → `cart.checked_out` `{user_id, order_id, number, item_count, total_minor,
/// currency}`: the cart's own record that a cart became an order (the funnel's last step). It is
/// written in the consumer's transaction, so a redelivered order.created announces nothing twice.
pub struct CheckedOut;

pub const ORDER_CREATED: &str = "order.created";
pub const CHECKED_OUT: &str = "cart.checked_out";

#[derive(Deserialize)]
struct Created {
    order_id: String,
    number: Option<String>,
    user_id: Option<String>,
    total_minor: Option<i64>,
    currency: Option<String>,
    #[serde(default)]
    items: Vec<CreatedItem>,
}

#[derive(Deserialize)]
struct CreatedItem {
    quantity: i64,
}

#[async_trait]
impl EventHandler for CheckedOut {
    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        let created: Created = event.data_as()?;
        let data = serde_json::json!({
            "user_id": created.user_id, "order_id": created.order_id, "number": created.number,
            "item_count": created.items.iter().map(|i| i.quantity).sum::<i64>(),
            "total_minor": created.total_minor, "currency": created.currency,
        });
        let subject = created.user_id.clone().unwrap_or_else(|| created.order_id.clone());
        let announced = Event::new(
            crate::SERVICE,
            CHECKED_OUT,
            subject,
            data,
            event.correlationid.as_deref(),
        );
        platform::outbox::enqueue(tx, &announced).await?;
        Ok(())
    }
}
