//! The orders service's use cases besides checkout: reading orders, every status change
//! (through the one state machine, as a compare-and-set with its timeline entry and events in
//! one transaction), cancellation, and the clients it calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform::clock::{rfc3339, SharedClock};
use platform::error::{ApiError, FieldError};
use platform::events::Event;
use platform::outbox::{self, Outbox};
use platform::page::{Page, PageRequest};
use platform::store::{Db, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, OrderStatus, Pricing, Step, Totals, Trigger};
use crate::store::{self, LineRow, OrderFilter, OrderRow, TimelineEntry};

pub const SERVICE: &str = "orders";

pub const CREATED: &str = "order.created";
pub const PAID: &str = "order.paid";
/// A cash-on-delivery order was accepted: stock is taken now, the money comes on delivery.
pub const CONFIRMED: &str = "order.confirmed";
pub const CANCELLED: &str = "order.cancelled";
pub const PAYMENT_FAILED: &str = "order.payment_failed";
pub const SHIPPED: &str = "order.shipped";
pub const OUT_FOR_DELIVERY: &str = "order.out_for_delivery";
pub const DELIVERED: &str = "order.delivered";
/// Every status change, whatever else it announces.
pub const STATUS_CHANGED: &str = "order.status_changed";

/// What every order event carries: the order as it stands (lines with names and prices,
/// totals, the address snapshot), so consumers such as notifications and delivery need not
/// call back. Status events add `status`, `previous_status`, `reason` and `actor`.
pub(crate) fn event_data(row: &OrderRow, lines: &[LineRow]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            json!({"sku": l.sku, "product_id": l.product_id, "seller_id": l.seller_id, "name": l.name,
                   "quantity": l.quantity, "unit_price_minor": l.unit_price_minor})
        })
        .collect();
    let address = serde_json::from_str::<serde_json::Value>(&row.shipping_address).unwrap_or(serde_json::Value::Null);
    json!({
        "order_id": row.id, "number": row.number, "user_id": row.user_id, "status": row.status,
        "customer_email": row.customer_email, "payment_method": row.payment_method, "currency": row.currency,
        "subtotal_minor": row.subtotal_minor, "discount_minor": row.discount_minor,
        "shipping_minor": row.shipping_minor, "tax_minor": row.tax_minor, "total_minor": row.total_minor,
        "coupon_code": row.coupon_code, "items": items, "shipping_address": address,
    })
}

// ----- the services orders calls -------------------------------------------------------------

/// A cart line as checkout reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub sku: String,
    pub quantity: i64,
}

/// The cart, as orders calls it.
#[async_trait]
pub trait Carts: Send + Sync {
    /// What the order buys: the units of the user's cart that no other order of theirs awaiting
    /// payment holds, held for `order_id` from now on (the same units when asked again).
    async fn hold(&self, user: Uuid, order_id: Uuid) -> anyhow::Result<Vec<CartLine>>;
    /// The order will not be placed: its units are free in the cart again.
    async fn release(&self, order_id: Uuid) -> anyhow::Result<()>;
}

/// A SKU as the catalog sells it now: the authoritative price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedSku {
    pub sku: String,
    pub product_id: String,
    pub seller_id: String,
    pub name: String,
    pub price: i64,
    pub currency: String,
    pub on_sale: bool,
}

#[async_trait]
pub trait Prices: Send + Sync {
    /// The known SKUs among `skus`.
    async fn skus(&self, skus: &[String]) -> anyhow::Result<Vec<PricedSku>>;
}

/// Identity, as orders calls it: a customer's saved addresses and email.
#[async_trait]
pub trait Customers: Send + Sync {
    async fn address(&self, user: Uuid, id: Uuid) -> anyhow::Result<Option<Address>>;
    async fn email(&self, user: Uuid) -> anyhow::Result<Option<String>>;
}

/// A line inventory could not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Shortage {
    pub sku: String,
    pub requested: i64,
    pub available: i64,
}

#[derive(Debug)]
pub enum StockRefusal {
    Short(Vec<Shortage>),
    Failed(anyhow::Error),
}

/// Inventory, as orders calls it.
#[async_trait]
pub trait Stock: Send + Sync {
    /// Reserves every line for the order, or none.
    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[CartLine],
        correlation_id: Option<&str>,
    ) -> Result<(), StockRefusal>;
    /// Gives the order's reserved stock back (no-op when there is none).
    async fn release(&self, order_id: Uuid, correlation_id: Option<&str>) -> anyhow::Result<()>;
}

/// What checkout asks payments for.
#[derive(Debug, Clone)]
pub struct StartPayment {
    pub order_id: Uuid,
    pub order_number: String,
    pub user_id: Uuid,
    pub method: String,
    pub amount_minor: i64,
    pub currency: String,
    pub correlation_id: Option<String>,
}

/// What the client needs to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StartedPayment {
    pub id: String,
    pub method: String,
    pub status: String,
    /// The provider's hosted page to send the buyer to (absent for cash on delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
}

/// Payments, as orders calls it.
#[async_trait]
pub trait Payments: Send + Sync {
    async fn start(&self, request: StartPayment) -> Result<StartedPayment, ApiError>;
    /// Refunds `amount` (None: all that remains) of the order's captured payment, once per `key`.
    async fn refund(
        &self,
        order_id: Uuid,
        amount: Option<i64>,
        reason: &str,
        key: &str,
        correlation_id: Option<&str>,
    ) -> Result<(), ApiError>;
}

/// The clients checkout and the consumers use.
#[derive(Clone)]
pub struct Clients {
    pub carts: Arc<dyn Carts>,
    pub prices: Arc<dyn Prices>,
    pub customers: Arc<dyn Customers>,
    pub stock: Arc<dyn Stock>,
    pub payments: Arc<dyn Payments>,
}

// ----- views ---------------------------------------------------------------------------------

/// A shipping address, as given at checkout and kept on the order unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Address {
    pub full_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
}

impl Address {
    /// Trims every field and upper-cases the country; lists what is wrong, under `prefix`.
    pub fn normalized(mut self, prefix: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut required = |value: &mut String, name: &str, max: usize| {
            *value = value.trim().to_owned();
            if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    format!("{prefix}/{name}"),
                    format!("must be 1–{max} characters"),
                ));
            }
        };
        required(&mut self.full_name, "full_name", 100);
        required(&mut self.line1, "line1", 200);
        required(&mut self.city, "city", 100);
        required(&mut self.postal_code, "postal_code", 20);
        let mut optional = |value: &mut Option<String>, name: &str, max: usize| {
            if let Some(text) = value.as_mut() {
                *text = text.trim().to_owned();
                if text.chars().count() > max || text.chars().any(char::is_control) {
                    errors.push(FieldError::new(
                        format!("{prefix}/{name}"),
                        format!("must be at most {max} characters"),
                    ));
                }
            }
            if value.as_deref() == Some("") {
                *value = None;
            }
        };
        optional(&mut self.phone, "phone", 30);
        optional(&mut self.line2, "line2", 200);
        optional(&mut self.region, "region", 100);
        self.country = self.country.trim().to_ascii_uppercase();
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            errors.push(FieldError::new(
                format!("{prefix}/country"),
                "must be a two-letter ISO 3166 country code",
            ));
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderItem {
    pub sku: String,
    pub product_id: String,
    pub name: String,
    /// Minor units, as the catalog priced it at checkout.
    pub unit_price: i64,
    pub quantity: i64,
    pub line_total: i64,
    /// Units already returned.
    pub returned_quantity: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    /// `ORD-YYYY-NNNNNN`.
    pub number: String,
    pub status: OrderStatus,
    pub user_id: String,
    pub currency: String,
    pub items: Vec<OrderItem>,
    pub totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon_code: Option<String>,
    pub payment_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    pub shipping_address: Address,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipped_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
}

impl OrderView {
    pub(crate) fn from_rows(row: OrderRow, lines: Vec<LineRow>) -> Result<Self, ApiError> {
        let status = OrderStatus::parse(&row.status)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("unknown order status {:?}", row.status)))?;
        let shipping_address = serde_json::from_str(&row.shipping_address)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("unreadable address snapshot: {err}")))?;
        Ok(Self {
            items: lines
                .into_iter()
                .map(|l| OrderItem {
                    sku: l.sku,
                    product_id: l.product_id,
                    name: l.name,
                    unit_price: l.unit_price_minor,
                    quantity: l.quantity,
                    line_total: l.line_total_minor,
                    returned_quantity: l.returned_quantity,
                })
                .collect(),
            totals: Totals {
                subtotal: row.subtotal_minor,
                discount: row.discount_minor,
                shipping: row.shipping_minor,
                tax: row.tax_minor,
                total: row.total_minor,
            },
            id: row.id,
            number: row.number,
            status,
            user_id: row.user_id,
            currency: row.currency,
            coupon_code: row.coupon_code,
            payment_method: row.payment_method,
            payment_id: row.payment_id,
            shipping_address,
            cancel_reason: row.cancel_reason,
            version: row.version,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            paid_at: row.paid_at.map(rfc3339),
            shipped_at: row.shipped_at.map(rfc3339),
            delivered_at: row.delivered_at.map(rfc3339),
            cancelled_at: row.cancelled_at.map(rfc3339),
        })
    }
}

/// One entry of an order's timeline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimelineView {
    pub at: String,
    /// `created`, `status`, `payment`, `refund`, `return`, `note`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_status: Option<String>,
    /// `customer:<id>`, `admin:<id>`, `system`, or the service that caused it (`payments`).
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An order as one of its sellers sees it: only that seller's lines, no customer details
/// besides where to ship.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SellerOrderView {
    pub id: String,
    pub number: String,
    pub status: OrderStatus,
    pub currency: String,
    pub items: Vec<OrderItem>,
    pub shipping_address: Address,
    pub created_at: String,
}

// ----- the service ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Settings {
    pub currency: String,
    pub pricing: Pricing,
    pub return_window: Duration,
    pub idempotency_ttl: Duration,
    /// How long a duplicate request waits for the first one to finish.
    pub idempotency_wait: Duration,
    /// An order still pending this long after it was created is cancelled (`payment_timeout`).
    /// Normally the reservation's expiry cancels it first; this catches the order whose
    /// checkout died with its process before the stock was reserved, which nothing else would
    /// ever close. Set it well above the reservation's time to live.
    pub unpaid_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            currency: "USD".to_owned(),
            pricing: Pricing {
                shipping_flat: 499,
                free_shipping_threshold: Some(5_000),
                ..Pricing::default()
            },
            return_window: Duration::from_secs(30 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_wait: Duration::from_secs(30),
            unpaid_timeout: Duration::from_secs(2 * 15 * 60),
        }
    }
}

/// Who caused a change, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Customer(Uuid),
    Admin(Uuid),
    /// Another service, by name (`payments`, `inventory`).
    Service(&'static str),
    System,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Self::Customer(id) => format!("customer:{id}"),
            Self::Admin(id) => format!("admin:{id}"),
            Self::Service(name) => (*name).to_owned(),
            Self::System => "system".to_owned(),
        }
    }
}

/// The result of putting a trigger to an order.
#[derive(Debug, Clone)]
pub struct Applied {
    pub order: OrderRow,
    /// The status it moved from, when it moved.
    pub moved_from: Option<OrderStatus>,
}

pub struct Orders {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) clock: SharedClock,
    pub(crate) settings: Settings,
    pub(crate) clients: Clients,
    pub(crate) live: crate::live::LiveHub,
}

impl Orders {
    pub fn new(db: Db, clock: SharedClock, settings: Settings, clients: Clients) -> Self {
        Self {
            outbox: Outbox::new(db.clone()),
            db,
            clock,
            settings,
            clients,
            live: crate::live::LiveHub::default(),
        }
    }

    /// Wakes this process's live streams; subscribe it to [`crate::live::LIVE_EVENTS`].
    pub fn live(&self) -> &crate::live::LiveHub {
        &self.live
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) async fn emit(
        tx: &mut Tx,
        kind: &str,
        order_id: &str,
        data: serde_json::Value,
        correlation_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        outbox::enqueue(tx, &Event::new(SERVICE, kind, order_id, data, correlation_id)).await
    }

    // ----- reading ------------------------------------------------------------------------------

    pub(crate) async fn row(&self, id: &str) -> Result<OrderRow, ApiError> {
        store::order(self.db.reader(), id)
            .await?
            .ok_or_else(|| ApiError::not_found("order"))
    }

    pub(crate) async fn view_of(&self, row: OrderRow) -> Result<OrderView, ApiError> {
        let lines = store::lines_of(self.db.reader(), std::slice::from_ref(&row.id)).await?;
        OrderView::from_rows(row, lines)
    }

    /// The order, if the caller owns it or is an admin (404 otherwise: a stranger learns nothing).
    pub async fn order_for(&self, id: Uuid, caller: Uuid, admin: bool) -> Result<OrderView, ApiError> {
        let row = self.row(&id.to_string()).await?;
        if !admin && row.user_id != caller.to_string() {
            return Err(ApiError::not_found("order"));
        }
        self.view_of(row).await
    }

    pub async fn timeline(&self, id: Uuid, caller: Uuid, admin: bool) -> Result<Vec<TimelineView>, ApiError> {
        let row = self.row(&id.to_string()).await?;
        if !admin && row.user_id != caller.to_string() {
            return Err(ApiError::not_found("order"));
        }
        Ok(store::timeline(self.db.reader(), &row.id)
            .await?
            .into_iter()
            .map(|t| TimelineView {
                at: rfc3339(t.at),
                kind: t.kind,
                from_status: t.from_status,
                to_status: t.to_status,
                actor: t.actor,
                reason: t.reason,
            })
            .collect())
    }

    /// A page of orders, newest first.
    pub async fn list(&self, filter: &OrderFilter, page: &PageRequest) -> Result<Page<OrderView>, ApiError> {
        let rows = store::list_orders(self.db.reader(), filter, page.after.as_deref(), page.fetch_limit()).await?;
        let page = Page::from_rows(rows, page, |row| row.id.clone());
        let ids: Vec<String> = page.items.iter().map(|r| r.id.clone()).collect();
        let mut lines = group_lines(store::lines_of(self.db.reader(), &ids).await?);
        let mut items = Vec::with_capacity(page.items.len());
        for row in page.items {
            let own = lines.remove(&row.id).unwrap_or_default();
            items.push(OrderView::from_rows(row, own)?);
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    /// The orders holding `seller`'s products, with only that seller's lines.
    pub async fn seller_orders(&self, seller: Uuid, page: &PageRequest) -> Result<Page<SellerOrderView>, ApiError> {
        let seller = seller.to_string();
        let filter = OrderFilter {
            seller_id: Some(seller.clone()),
            ..OrderFilter::default()
        };
        let rows = store::list_orders(self.db.reader(), &filter, page.after.as_deref(), page.fetch_limit()).await?;
        let page = Page::from_rows(rows, page, |row| row.id.clone());
        let ids: Vec<String> = page.items.iter().map(|r| r.id.clone()).collect();
        let mut lines = group_lines(store::seller_lines(self.db.reader(), &seller, &ids).await?);
        let mut items = Vec::with_capacity(page.items.len());
        for row in page.items {
            let own = lines.remove(&row.id).unwrap_or_default();
            let view = OrderView::from_rows(row, own)?;
            items.push(SellerOrderView {
                id: view.id,
                number: view.number,
                status: view.status,
                currency: view.currency,
                items: view.items,
                shipping_address: view.shipping_address,
                created_at: view.created_at,
            });
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    // ----- status changes -----------------------------------------------------------------------

    /// Puts `trigger` to the order through the state machine: a move is written as a
    /// compare-and-set on the status, with its timeline entry and events, in one transaction
    /// (retried if another change got there first). `Stay` changes nothing; `Refuse` is a 409.
    /// `expected_version`, when given, must be the order's version (else 409).
    pub async fn apply(
        &self,
        order_id: &str,
        trigger: Trigger,
        actor: &Actor,
        reason: Option<&str>,
        expected_version: Option<i64>,
        correlation_id: Option<&str>,
    ) -> Result<Applied, ApiError> {
        loop {
            let row = self.row(order_id).await?;
            if expected_version.is_some_and(|v| v != row.version) {
                return Err(ApiError::Conflict(format!(
                    "the order changed since you read it (version {} now)",
                    row.version
                )));
            }
            let from = OrderStatus::parse(&row.status)
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("unknown order status {:?}", row.status)))?;
            let to = match domain::next(from, trigger) {
                Step::Move(to) => to,
                Step::Stay => {
                    return Ok(Applied {
                        order: row,
                        moved_from: None,
                    })
                }
                Step::Refuse(why) => return Err(ApiError::Conflict(why.to_owned())),
            };
            let now = self.now();
            let mut tx = self.db.begin().await?;
            let Some(order) = store::set_status(&mut tx, &row.id, from.as_str(), to.as_str(), reason, now).await?
            else {
                tx.rollback().await?;
                continue;
            };
            self.record_move(&mut tx, &row, from, to, trigger, actor, reason, now, correlation_id)
                .await?;
            tx.commit().await?;
            self.outbox.wake();
            return Ok(Applied {
                order,
                moved_from: Some(from),
            });
        }
    }

    /// The timeline entry, coupon give-back and events of a move already written in `tx`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_move(
        &self,
        tx: &mut Tx,
        row: &OrderRow,
        from: OrderStatus,
        to: OrderStatus,
        trigger: Trigger,
        actor: &Actor,
        reason: Option<&str>,
        now: i64,
        correlation_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let actor_label = actor.label();
        store::append_timeline(
            tx,
            TimelineEntry {
                order_id: &row.id,
                at: now,
                kind: "status",
                from_status: Some(from.as_str()),
                to_status: Some(to.as_str()),
                actor: &actor_label,
                reason,
            },
        )
        .await?;
        if matches!(to, OrderStatus::Cancelled | OrderStatus::PaymentFailed) {
            store::release_coupon_use(tx, &row.id, now).await?;
        }
        let lines = store::lines_of_tx(tx, &row.id).await?;
        let mut data = event_data(row, &lines);
        data["status"] = json!(to.as_str());
        data["previous_status"] = json!(from.as_str());
        data["reason"] = json!(reason);
        data["actor"] = json!(actor_label);
        let announced = match (to, trigger) {
            (OrderStatus::Paid, _) => Some(PAID),
            (OrderStatus::Processing, Trigger::CashOnDeliveryConfirmed) => Some(CONFIRMED),
            (OrderStatus::Cancelled, _) => Some(CANCELLED),
            (OrderStatus::PaymentFailed, _) => Some(PAYMENT_FAILED),
            (OrderStatus::Shipped, _) => Some(SHIPPED),
            (OrderStatus::OutForDelivery, _) => Some(OUT_FOR_DELIVERY),
            (OrderStatus::Delivered, Trigger::Deliver) => Some(DELIVERED),
            _ => None,
        };
        if let Some(kind) = announced {
            Self::emit(tx, kind, &row.id, data.clone(), correlation_id).await?;
        }
        Self::emit(tx, STATUS_CHANGED, &row.id, data, correlation_id).await?;
        Ok(())
    }

    /// A note on the timeline that changes no status (a payment or refund seen, say).
    pub async fn note(&self, order_id: &str, kind: &str, actor: &Actor, reason: &str) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        let label = actor.label();
        store::append_timeline(
            &mut tx,
            TimelineEntry {
                order_id,
                at: self.now(),
                kind,
                from_status: None,
                to_status: None,
                actor: &label,
                reason: Some(reason),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The customer (or an admin on their behalf) cancels the order before it ships. Stock goes
    /// back; a captured payment is refunded (payments does both on order.cancelled).
    pub async fn cancel(
        &self,
        id: Uuid,
        caller: Uuid,
        admin: bool,
        reason: Option<&str>,
        correlation_id: Option<&str>,
    ) -> Result<OrderView, ApiError> {
        let row = self.row(&id.to_string()).await?;
        if !admin && row.user_id != caller.to_string() {
            return Err(ApiError::not_found("order"));
        }
        let reason = clean_reason(reason)?;
        let actor = if admin && row.user_id != caller.to_string() {
            Actor::Admin(caller)
        } else {
            Actor::Customer(caller)
        };
        let reason = reason.unwrap_or_else(|| "cancelled_by_customer".to_owned());
        let applied = self
            .apply(&row.id, Trigger::Cancel, &actor, Some(&reason), None, correlation_id)
            .await?;
        self.view_of(applied.order).await
    }

    /// An admin sets a fulfilment status (processing, shipped, out for delivery, delivered,
    /// cancelled); the state machine decides whether the order may go there.
    pub async fn admin_set_status(
        &self,
        id: Uuid,
        admin: Uuid,
        to: &str,
        reason: Option<&str>,
        version: Option<i64>,
        correlation_id: Option<&str>,
    ) -> Result<OrderView, ApiError> {
        let status = OrderStatus::parse(to).ok_or_else(|| ApiError::validation("status", "is not an order status"))?;
        let trigger = domain::admin_trigger(status).ok_or_else(|| {
            ApiError::validation(
                "status",
                "cannot be set by hand (payment outcomes and returns have their own paths)",
            )
        })?;
        let reason = clean_reason(reason)?;
        let applied = self
            .apply(
                &id.to_string(),
                trigger,
                &Actor::Admin(admin),
                reason.as_deref(),
                version,
                correlation_id,
            )
            .await?;
        if applied.moved_from.is_none() && OrderStatus::parse(&applied.order.status) != Some(status) {
            return Err(ApiError::Conflict(format!(
                "the order is {}; it cannot become {to}",
                applied.order.status
            )));
        }
        self.view_of(applied.order).await
    }

    /// Cancels (`payment_timeout`) up to 100 orders pending for longer than the unpaid
    /// timeout; answers how many it cancelled. Safe beside a late payment: a capture that
    /// arrives for a cancelled order is refunded by payments.
    pub async fn cancel_unpaid(&self) -> Result<usize, ApiError> {
        let timeout = i64::try_from(self.settings.unpaid_timeout.as_millis()).unwrap_or(i64::MAX);
        let before = self.now().saturating_sub(timeout);
        let mut cancelled = 0;
        for id in store::pending_before(self.db.reader(), before, 100).await? {
            let applied = self
                .apply(
                    &id,
                    Trigger::ReservationExpired,
                    &Actor::System,
                    Some("payment_timeout"),
                    None,
                    None,
                )
                .await?;
            if applied.moved_from.is_some() {
                tracing::info!(order_id = %id, "an order pending past the unpaid timeout was cancelled");
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }

    /// Deletes idempotency keys past their time, now and then, and cancels orders left unpaid
    /// past the unpaid timeout (checked ten times per timeout, at most once a minute apart).
    pub fn spawn_sweeper(self: &Arc<Self>, cancel: CancellationToken) {
        let orders = self.clone();
        platform::periodic::spawn_every(
            "purge expired idempotency keys",
            Duration::from_secs(600),
            cancel.clone(),
            move || {
                let orders = orders.clone();
                async move {
                    let purged = store::purge_expired_keys(orders.db.writer(), orders.now()).await?;
                    Ok(usize::try_from(purged).unwrap_or(usize::MAX))
                }
            },
        );
        let orders = self.clone();
        let every = (self.settings.unpaid_timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        platform::periodic::spawn_every("cancel unpaid orders", every, cancel, move || {
            let orders = orders.clone();
            async move { orders.cancel_unpaid().await.map_err(|err| anyhow::anyhow!("{err}")) }
        });
    }
}

pub(crate) fn group_lines(lines: Vec<LineRow>) -> HashMap<String, Vec<LineRow>> {
    let mut grouped: HashMap<String, Vec<LineRow>> = HashMap::new();
    for line in lines {
        grouped.entry(line.order_id.clone()).or_default().push(line);
    }
    grouped
}

/// A reason as a person typed it: trimmed, at most 500 characters, empty = none.
pub(crate) fn clean_reason(reason: Option<&str>) -> Result<Option<String>, ApiError> {
    match reason.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) if text.chars().count() > 500 || text.chars().any(|c| c.is_control() && c != '\n') => {
            Err(ApiError::validation("reason", "must be at most 500 characters of text"))
        }
        Some(text) => Ok(Some(text.to_owned())),
    }
}
