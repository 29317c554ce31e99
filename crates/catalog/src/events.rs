//! The catalog's consumers: its own product events (to keep the search index and the caches
//! of every replica current), delivered orders (verified-buyer reviews) and stock signals.

use std::sync::Arc;

use async_trait::async_trait;
use platform::events::Event;
use platform::store::Tx;
use serde::Deserialize;

use crate::indexer::Indexer;
use crate::store;

/// Event types that change what the index holds.
pub const INDEXED_EVENTS: &[&str] = &["product.created", "product.updated", "product.deleted"];
pub const ORDER_DELIVERED: &str = "order.delivered";
/// Published by inventory when a SKU's availability crosses zero: `{sku, available}`.
pub const AVAILABILITY_CHANGED: &str = "inventory.availability_changed";

/// Succeeds once the index holds the change the event announces; until then the bus redelivers
/// it, so a crash between a commit and the index update cannot leave the index behind for good.
pub struct IndexFollower {
    pub indexer: Arc<Indexer>,
}

#[derive(Deserialize)]
struct Sequenced {
    seq: i64,
}

#[async_trait]
impl platform::consumer::EventHandler for IndexFollower {
    /// Outside the consumer's transaction: on SQLite that transaction holds the only writer,
    /// and a long catch-up must not stall the catalog's writes.
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        let Sequenced { seq } = event.data_as()?;
        self.indexer.ensure(seq).await
    }

    async fn handle(&self, _tx: &mut Tx, _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }
}

/// order.delivered: `{order_id, user_id, items: [{product_id, …}]}` → the user may review those
/// products as a verified buyer.
pub struct VerifiedBuyers;

#[derive(Deserialize)]
struct Delivered {
    order_id: String,
    user_id: String,
    items: Vec<DeliveredItem>,
}

#[derive(Deserialize)]
struct DeliveredItem {
    product_id: String,
}

#[async_trait]
impl platform::consumer::EventHandler for VerifiedBuyers {
    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        let delivered: Delivered = event.data_as()?;
        let at = time::OffsetDateTime::parse(&event.time, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or_else(|_| platform::clock::now_ms());
        for item in &delivered.items {
            store::record_verified_purchase(tx, &delivered.user_id, &item.product_id, &delivered.order_id, at).await?;
        }
        Ok(())
    }
}

/// inventory.availability_changed → the variant's and the product's in-stock flags (which the
/// list and search filters use).
pub struct StockSignals;

#[derive(Deserialize)]
struct Availability {
    sku: String,
    available: i64,
}

#[async_trait]
impl platform::consumer::EventHandler for StockSignals {
    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        let availability: Availability = event.data_as()?;
        let seq = store::next_seq(tx).await?;
        store::set_variant_stock(tx, &availability.sku, availability.available > 0, seq).await?;
        Ok(())
    }
}
