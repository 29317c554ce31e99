//! The calls one service makes to another, answered in process: the all-in-one mode's
//! side of each client trait. `crate::peers` holds the same traits over HTTP.

use std::sync::Arc;

use async_trait::async_trait;
use cart::Cart;
use catalog::Catalog;
use identity::Identity;
use inventory::Inventory;

use crate::internal::wire;

/// The catalog's SKUs as other services see them.
async fn skus(catalog: &Catalog, skus: &[String]) -> anyhow::Result<Vec<wire::Sku>> {
    let details = catalog
        .sku_details(skus)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok(details.into_iter().map(wire::Sku::from).collect())
}

/// A user as other services see them; `None` for an unknown one.
async fn user(identity: &Identity, id: uuid::Uuid) -> anyhow::Result<Option<wire::User>> {
    match identity.user(id).await {
        Ok(row) => Ok(Some(row.into())),
        Err(platform::ApiError::NotFound(_)) => Ok(None),
        Err(err) => Err(anyhow::anyhow!("{err}")),
    }
}

/// The catalog as the cart calls it, in process.
pub struct CatalogProducts(pub Arc<Catalog>);

#[async_trait]
impl cart::service::Products for CatalogProducts {
    async fn skus(&self, wanted: &[String]) -> anyhow::Result<Vec<cart::service::SkuInfo>> {
        Ok(skus(&self.0, wanted).await?.into_iter().map(Into::into).collect())
    }
}

/// Inventory as the cart calls it, in process.
pub struct InventoryStock(pub Arc<Inventory>);

#[async_trait]
impl cart::service::Stock for InventoryStock {
    async fn available(&self, skus: &[String]) -> anyhow::Result<std::collections::HashMap<String, i64>> {
        let stocks = self.0.kept_stocks(skus).await.map_err(|err| anyhow::anyhow!("{err}"))?;
        Ok(stocks.into_iter().map(|s| (s.sku.clone(), s.sellable())).collect())
    }
}

/// Identity's accounts as delivery checks its agents, in process.
pub struct IdentityAgents(pub Arc<Identity>);

#[async_trait]
impl delivery::AgentDirectory for IdentityAgents {
    async fn user(&self, id: uuid::Uuid) -> anyhow::Result<Option<delivery::DirectoryUser>> {
        Ok(user(&self.0, id).await?.map(Into::into))
    }
}

/// Identity's contact details as notifications reads them, in process.
pub struct IdentityContacts(pub Arc<Identity>);

#[async_trait]
impl notifications::Directory for IdentityContacts {
    async fn contact(&self, id: uuid::Uuid) -> anyhow::Result<Option<notifications::Contact>> {
        Ok(user(&self.0, id).await?.map(Into::into))
    }
}

/// The cart as checkout reads it, in process.
pub struct CartLines(pub Arc<Cart>);

#[async_trait]
impl orders::service::Carts for CartLines {
    async fn hold(&self, user: uuid::Uuid, order_id: uuid::Uuid) -> anyhow::Result<Vec<orders::service::CartLine>> {
        let held = self.0.hold_for_order(user, &order_id.to_string()).await?;
        Ok(held
            .into_iter()
            .map(|(sku, quantity)| orders::service::CartLine { sku, quantity })
            .collect())
    }

    async fn release(&self, order_id: uuid::Uuid) -> anyhow::Result<()> {
        self.0.release_hold(&order_id.to_string()).await.map(|_| ())
    }
}

/// The catalog's prices as checkout reads them, in process.
pub struct CatalogPrices(pub Arc<Catalog>);

#[async_trait]
impl orders::service::Prices for CatalogPrices {
    async fn skus(&self, wanted: &[String]) -> anyhow::Result<Vec<orders::service::PricedSku>> {
        Ok(skus(&self.0, wanted).await?.into_iter().map(Into::into).collect())
    }
}

/// Identity's addresses and emails as checkout reads them, in process.
pub struct IdentityCustomers(pub Arc<Identity>);

#[async_trait]
impl orders::service::Customers for IdentityCustomers {
    async fn address(&self, user: uuid::Uuid, id: uuid::Uuid) -> anyhow::Result<Option<orders::service::Address>> {
        match self.0.address(user, id).await {
            Ok(row) => Ok(Some(orders::service::Address {
                full_name: row.full_name,
                phone: row.phone,
                line1: row.line1,
                line2: row.line2,
                city: row.city,
                region: row.region,
                postal_code: row.postal_code,
                country: row.country,
            })),
            Err(platform::ApiError::NotFound(_)) => Ok(None),
            Err(err) => Err(anyhow::anyhow!("{err}")),
        }
    }

    async fn email(&self, id: uuid::Uuid) -> anyhow::Result<Option<String>> {
        Ok(user(&self.0, id).await?.map(|u| u.email))
    }
}

/// Inventory's reservations as checkout calls them, in process.
pub struct InventoryReservations(pub Arc<Inventory>);

#[async_trait]
impl orders::service::Stock for InventoryReservations {
    async fn reserve(
        &self,
        order_id: uuid::Uuid,
        lines: &[orders::service::CartLine],
        correlation_id: Option<&str>,
    ) -> Result<(), orders::service::StockRefusal> {
        let lines: Vec<inventory::domain::Line> = lines
            .iter()
            .map(|l| inventory::domain::Line {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect();
        let ctx = inventory::Context {
            actor: None,
            correlation_id,
        };
        match self.0.reserve(&order_id.to_string(), &lines, None, ctx).await {
            Ok(_) => Ok(()),
            Err(inventory::service::ReserveError::Short(short)) => Err(orders::service::StockRefusal::Short(
                short
                    .into_iter()
                    .map(|s| orders::service::Shortage {
                        sku: s.sku,
                        requested: s.requested,
                        available: s.available,
                    })
                    .collect(),
            )),
            Err(inventory::service::ReserveError::Api(err)) => {
                Err(orders::service::StockRefusal::Failed(anyhow::anyhow!("{err}")))
            }
        }
    }

    async fn release(&self, order_id: uuid::Uuid, correlation_id: Option<&str>) -> anyhow::Result<()> {
        let ctx = inventory::Context {
            actor: None,
            correlation_id,
        };
        match self
            .0
            .release(&order_id.to_string(), inventory::domain::ReleaseReason::Cancelled, ctx)
            .await
        {
            Ok(_) | Err(platform::ApiError::NotFound(_) | platform::ApiError::Conflict(_)) => Ok(()),
            Err(err) => Err(anyhow::anyhow!("{err}")),
        }
    }
}

/// Payments as checkout and the orders consumers call them, in process.
pub struct PaymentsForOrders(pub Arc<payments::Payments>);

#[async_trait]
impl orders::service::Payments for PaymentsForOrders {
    async fn start(
        &self,
        request: orders::service::StartPayment,
    ) -> Result<orders::service::StartedPayment, platform::ApiError> {
        let method = payments::domain::Method::parse(&request.method)
            .ok_or_else(|| platform::ApiError::validation("payment_method", "is not a payment method"))?;
        let view = self
            .0
            .create_for_order(payments::service::CreatePayment {
                order_id: request.order_id,
                order_number: request.order_number,
                user_id: request.user_id,
                method,
                amount_minor: request.amount_minor,
                currency: request.currency,
                correlation_id: request.correlation_id,
            })
            .await?;
        Ok(orders::service::StartedPayment {
            id: view.id.to_string(),
            method: view.method.as_str().to_owned(),
            status: view.status.as_str().to_owned(),
            redirect_url: view.redirect_url,
        })
    }

    async fn refund(
        &self,
        order_id: uuid::Uuid,
        amount: Option<i64>,
        reason: &str,
        key: &str,
        correlation_id: Option<&str>,
    ) -> Result<(), platform::ApiError> {
        self.0
            .refund_order(
                order_id,
                payments::service::RefundRequest {
                    amount_minor: amount,
                    reason: Some(reason.to_owned()),
                    idempotency_key: key.to_owned(),
                    actor: None,
                    correlation_id: correlation_id.map(str::to_owned),
                },
            )
            .await
            .map(|_| ())
    }
}
