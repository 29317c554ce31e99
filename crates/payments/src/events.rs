//! The payments consumers: order.cancelled voids or refunds the order's payment, and
//! order.delivered captures a cash-on-delivery payment.

use std::sync::Arc;

use async_trait::async_trait;
use platform::consumer::EventHandler;
use platform::events::Event;
use platform::store::Tx;

use crate::service::Payments;

pub use crate::service::{FAILED, REFUND_SUCCEEDED, SUCCEEDED};

pub const ORDER_EVENTS: &[&str] = &["order.cancelled", "order.delivered"];

/// order.cancelled (subject: the order id) → an open payment is cancelled (its intent at the
/// provider too, best effort) and a captured one refunded in full. That needs provider calls
/// and transactions of its own, so it runs in `prepare`, outside the consumer's transaction
/// (on SQLite that transaction would hold the only writer the service needs); the service
/// makes it idempotent (statuses and the refund's key `cancel:<order id>`), so a redelivery
/// changes nothing.
///
/// order.delivered (subject: the order id) → a cash-on-delivery payment awaiting delivery is
/// captured and payment.succeeded announced, in the consumer's own transaction.
pub struct OrderPayments {
    pub payments: Arc<Payments>,
}

#[async_trait]
impl EventHandler for OrderPayments {
    async fn prepare(&self, event: &Event) -> anyhow::Result<()> {
        if event.kind == "order.cancelled" {
            self.payments
                .cancel_for_order(&event.subject)
                .await
                .map_err(|err| anyhow::anyhow!("cancelling the payment of order {}: {err}", event.subject))?;
        }
        Ok(())
    }

    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        if event.kind == "order.delivered" {
            self.payments
                .collect_on_delivery(tx, &event.subject)
                .await
                .map_err(|err| anyhow::anyhow!("collecting the payment of order {}: {err}", event.subject))?;
        }
        Ok(())
    }
}
