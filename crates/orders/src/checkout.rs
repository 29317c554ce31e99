//! Checkout (DESIGN.md §3): an `Idempotency-Key` with Stripe's semantics, then the order at the
//! catalog's prices with an address snapshot and the coupon, then the reservation, then the
//! payment.
//!
//! What is stored under a key: the response of every request that created an order (201, or
//! the 409 of a stock shortage that cancelled it). A request refused before an order existed
//! (invalid input, an empty cart, a used-up coupon) stores nothing, and neither does one that
//! failed on a dependency (503): the key is let go, so a retry runs again.

use std::time::{Duration, Instant};

use platform::error::ApiError;
use platform::id::new_id;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, CouponKind, CouponTerms, OrderStatus, Trigger};
use crate::service::{Actor, Address, CartLine, OrderView, Orders, StartPayment, StartedPayment, StockRefusal};
use crate::store::{self, LineRow, OrderRow, TimelineEntry, UseRefused};

pub const PAYMENT_METHODS: &[&str] = &["card", "upi", "net_banking", "wallet", "cod"];

/// A key whose request has run this long without an answer is taken to have died with its
/// process.
const STALE_AFTER_MS: i64 = 120_000;

/// The body of `POST /api/v1/checkout`. Anything else the client sends (prices, totals, a
/// status) is ignored: the order is priced from the catalog.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CheckoutRequest {
    /// One of the caller's saved addresses…
    #[serde(default)]
    pub shipping_address_id: Option<Uuid>,
    /// …or an address given here (exactly one of the two).
    #[serde(default)]
    pub shipping_address: Option<Address>,
    /// `card`, `upi`, `net_banking`, `wallet` or `cod` (cash on delivery).
    pub payment_method: String,
    #[serde(default)]
    pub coupon_code: Option<String>,
}

/// A successful checkout.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckoutResponse {
    pub order: OrderView,
    pub payment: StartedPayment,
}

/// What the handler answers: the status and JSON body, first-time or replayed.
#[derive(Debug, Clone)]
pub struct CheckoutOutcome {
    pub status: u16,
    pub body: serde_json::Value,
    /// True when this is a stored response played back.
    pub replayed: bool,
}

/// The most an order may total (what a payment can carry).
pub const MAX_TOTAL_MINOR: i64 = 1_000_000_000_000;

/// Whether this request owns the key (its claim token) or gets a stored answer.
enum Claimed {
    Mine(String),
    Answered(CheckoutOutcome),
}

/// How placing an order ended, for what gets stored under the key.
enum Placement {
    /// An order exists but did not go through (a stock shortage cancelled it): store and
    /// answer this.
    Recorded(u16, serde_json::Value),
    /// Refused before any order existed: store nothing.
    Refused(ApiError),
    /// A dependency failed: store nothing; a retry may run again.
    Failed(ApiError),
}

impl From<ApiError> for Placement {
    fn from(err: ApiError) -> Self {
        if err.status().is_server_error() {
            Self::Failed(err)
        } else {
            Self::Refused(err)
        }
    }
}

impl From<sqlx::Error> for Placement {
    fn from(err: sqlx::Error) -> Self {
        Self::Failed(err.into())
    }
}

/// The fingerprint a key is bound to: the caller and the body as sent.
fn request_hash(user: Uuid, body: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    // serde_json's maps are sorted, so equal bodies serialize equally whatever their key order.
    hasher.update(body.to_string().as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The request, checked without I/O.
struct Checked {
    address_id: Option<Uuid>,
    address: Option<Address>,
    method: String,
    coupon: Option<String>,
}

fn check(request: CheckoutRequest) -> Result<Checked, ApiError> {
    let mut errors = Vec::new();
    let address = match (request.shipping_address_id, request.shipping_address) {
        (Some(_), Some(_)) | (None, None) => {
            errors.push(platform::FieldError::new(
                "shipping_address",
                "give either shipping_address_id or shipping_address",
            ));
            None
        }
        (None, Some(address)) => match address.normalized("shipping_address") {
            Ok(address) => Some(address),
            Err(mut fields) => {
                errors.append(&mut fields);
                None
            }
        },
        (Some(_), None) => None,
    };
    let method = request.payment_method.trim().to_ascii_lowercase();
    if !PAYMENT_METHODS.contains(&method.as_str()) {
        errors.push(platform::FieldError::new(
            "payment_method",
            format!("must be one of {}", PAYMENT_METHODS.join(", ")),
        ));
    }
    let coupon = match request.coupon_code.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => match domain::normalize_coupon_code(raw) {
            Some(code) => Some(code),
            None => {
                errors.push(platform::FieldError::new("coupon_code", "is not a coupon code"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(Checked {
        address_id: request.shipping_address_id,
        address,
        method,
        coupon,
    })
}

fn year_of(ms: i64) -> i32 {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(|t| t.year())
        .unwrap_or(1970)
}

impl Orders {
    /// Runs a checkout for `user` under `key`, or plays back the answer the key already holds.
    pub async fn checkout(
        &self,
        user: Uuid,
        key: &str,
        body: serde_json::Value,
        correlation_id: Option<&str>,
    ) -> Result<CheckoutOutcome, ApiError> {
        if !platform::extract::valid_idempotency_key(key) {
            return Err(ApiError::validation(
                "Idempotency-Key",
                "is required: 1–255 visible ASCII characters, unique per checkout",
            ));
        }
        let request: CheckoutRequest =
            serde_json::from_value(body.clone()).map_err(|err| ApiError::validation("body", err.to_string()))?;
        let checked = check(request)?;
        let hash = request_hash(user, &body);
        let user_id = user.to_string();
        let claim = match self.claim(&user_id, key, &hash).await? {
            Claimed::Answered(outcome) => return Ok(outcome),
            Claimed::Mine(claim) => claim,
        };
        let order_id = new_id();
        let placed = self.place(user, key, &claim, order_id, checked, correlation_id).await;
        if placed.is_err() {
            // The order was refused, or cancelled on the way: what it held in the cart is free.
            // (Its cancellation event frees it too; this is at once.)
            if let Err(err) = self.clients.carts.release(order_id).await {
                tracing::warn!(order_id = %order_id, error = %format!("{err:#}"), "cannot free the cart's units now; they are freed when the cart hears of the order's end");
            }
        }
        let outcome = match &placed {
            Ok(_) => "placed",
            Err(Placement::Recorded(..)) => "out_of_stock",
            Err(Placement::Refused(_)) => "refused",
            Err(Placement::Failed(_)) => "failed",
        };
        metrics::counter!("mercato_checkouts_total", "outcome" => outcome).increment(1);
        match placed {
            Ok((status, body)) | Err(Placement::Recorded(status, body)) => {
                store::store_response(self.db.writer(), &user_id, key, &claim, status, &body.to_string()).await?;
                Ok(CheckoutOutcome {
                    status,
                    body,
                    replayed: false,
                })
            }
            Err(Placement::Refused(err) | Placement::Failed(err)) => {
                if let Err(release) = store::release_key(self.db.writer(), &user_id, key, &claim).await {
                    tracing::warn!(error = %release, "cannot let an idempotency key go");
                }
                Err(err)
            }
        }
    }

    /// Owns the key for this request (its claim token), or answers what the request that owns
    /// it answered, waiting for it while it runs.
    async fn claim(&self, user_id: &str, key: &str, hash: &str) -> Result<Claimed, ApiError> {
        let deadline = Instant::now() + self.settings.idempotency_wait;
        let ttl = i64::try_from(self.settings.idempotency_ttl.as_millis()).unwrap_or(i64::MAX);
        let token = new_id().to_string();
        let mut pause = Duration::from_millis(5);
        loop {
            let now = self.now();
            let held = match store::claim_key(
                self.db.writer(),
                user_id,
                key,
                hash,
                &token,
                now,
                now.saturating_add(ttl),
            )
            .await?
            {
                None => return Ok(Claimed::Mine(token)),
                Some(row) => row,
            };
            // Wait on reads (not claims) until the holder answers, lets go or dies.
            let mut row = held;
            loop {
                if row.request_hash != hash {
                    return Err(ApiError::Unprocessable(
                        "this Idempotency-Key was already used with a different request".to_owned(),
                    ));
                }
                if let (Some(status), Some(body)) = (row.response_status, &row.response_body) {
                    let body = serde_json::from_str(body)
                        .map_err(|err| ApiError::Internal(anyhow::anyhow!("unreadable stored response: {err}")))?;
                    metrics::counter!("mercato_checkouts_total", "outcome" => "replayed").increment(1);
                    return Ok(Claimed::Answered(CheckoutOutcome {
                        status: u16::try_from(status).unwrap_or(500),
                        body,
                        replayed: true,
                    }));
                }
                if self.now() - row.created_at > STALE_AFTER_MS {
                    match &row.order_id {
                        Some(order_id) => {
                            return Err(ApiError::ConflictWith {
                                message: format!(
                                    "the request with this Idempotency-Key was interrupted after creating order \
                                     {order_id}; look it up instead of retrying"
                                ),
                                members: json!({ "order_id": order_id }),
                            })
                        }
                        // Its request died before making an order: take the key over (one of
                        // several waiting requests wins; the others keep waiting on the winner).
                        None => {
                            let now = self.now();
                            let taken = store::take_over_key(
                                self.db.writer(),
                                user_id,
                                key,
                                &row.claim,
                                &token,
                                hash,
                                now,
                                now.saturating_add(ttl),
                            )
                            .await?;
                            if taken {
                                return Ok(Claimed::Mine(token));
                            }
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return Err(ApiError::Conflict(
                        "a request with this Idempotency-Key is still being processed; retry shortly".to_owned(),
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
                match store::key_row(self.db.reader(), user_id, key).await? {
                    Some(next) => row = next,
                    // Let go (its request stored nothing): try to own it.
                    None => break,
                }
            }
        }
    }

    /// Creates the order, reserves its stock and starts its payment: the 201 to store, or how
    /// it ended otherwise.
    async fn place(
        &self,
        user: Uuid,
        key: &str,
        claim: &str,
        order_id: Uuid,
        checked: Checked,
        correlation_id: Option<&str>,
    ) -> Result<(u16, serde_json::Value), Placement> {
        let clients = &self.clients;
        let lines = clients.carts.hold(user, order_id).await.map_err(dependency("cart"))?;
        if lines.is_empty() {
            return Err(Placement::Refused(ApiError::Unprocessable(
                "your cart is empty, or everything in it is in an order awaiting payment".to_owned(),
            )));
        }
        let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
        let priced = clients.prices.skus(&skus).await.map_err(dependency("catalog"))?;
        let mut unavailable = Vec::new();
        let mut order_lines = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            match priced.iter().find(|p| p.sku == line.sku) {
                Some(p) if p.on_sale && p.currency == self.settings.currency => order_lines.push((index, line, p)),
                _ => unavailable.push(line.sku.clone()),
            }
        }
        if !unavailable.is_empty() {
            return Err(Placement::Refused(ApiError::ConflictWith {
                message: format!("no longer sold: {}; remove them from your cart", unavailable.join(", ")),
                members: json!({ "unavailable_skus": unavailable }),
            }));
        }
        let address = match (checked.address, checked.address_id) {
            (Some(address), _) => address,
            (None, Some(id)) => clients
                .customers
                .address(user, id)
                .await
                .map_err(dependency("identity"))?
                .ok_or_else(|| {
                    Placement::Refused(ApiError::validation(
                        "shipping_address_id",
                        "is not one of your saved addresses",
                    ))
                })?,
            (None, None) => {
                return Err(Placement::Refused(ApiError::validation(
                    "shipping_address",
                    "is required",
                )))
            }
        };
        let email = clients.customers.email(user).await.map_err(dependency("identity"))?;
        let amounts: Vec<(i64, i64)> = order_lines.iter().map(|(_, l, p)| (p.price, l.quantity)).collect();
        let now = self.now();
        let coupon = match &checked.coupon {
            None => None,
            Some(code) => {
                let row = store::coupon_by_code(self.db.reader(), code)
                    .await?
                    .ok_or_else(|| Placement::Refused(ApiError::validation("coupon_code", "is not a known coupon")))?;
                Some(row)
            }
        };
        let subtotal = amounts
            .iter()
            .try_fold(0i64, |sum, (p, q)| sum.checked_add(p.checked_mul(*q)?))
            .ok_or_else(|| Placement::Refused(ApiError::Unprocessable("the order is too large".to_owned())))?;
        let discount = match &coupon {
            None => 0,
            Some(c) => {
                let terms = CouponTerms {
                    kind: CouponKind::parse(&c.kind).unwrap_or(CouponKind::Fixed),
                    value: c.value,
                    min_subtotal: c.min_subtotal_minor,
                    starts_at: c.starts_at,
                    ends_at: c.ends_at,
                    active: c.disabled_at.is_none(),
                };
                terms
                    .discount(subtotal, now)
                    .map_err(|why| Placement::Refused(ApiError::validation("coupon_code", why.message())))?
            }
        };
        let totals = self
            .settings
            .pricing
            .totals(&amounts, discount, &address.country)
            .ok_or_else(|| Placement::Refused(ApiError::Unprocessable("the order is too large".to_owned())))?;
        // What a payment can carry: checked before anything is kept.
        if !(1..=MAX_TOTAL_MINOR).contains(&totals.total) {
            return Err(Placement::Refused(ApiError::Unprocessable(format!(
                "an order must come to between 1 and {MAX_TOTAL_MINOR} minor units to be paid; this one is {}",
                totals.total
            ))));
        }

        let id = order_id.to_string();
        let user_id = user.to_string();
        let address_json =
            serde_json::to_string(&address).map_err(|err| Placement::Failed(anyhow::Error::from(err).into()))?;
        let line_rows: Vec<LineRow> = order_lines
            .iter()
            .enumerate()
            .map(|(n, (_, line, p))| LineRow {
                order_id: id.clone(),
                line_no: i64::try_from(n).unwrap_or(i64::MAX) + 1,
                sku: p.sku.clone(),
                product_id: p.product_id.clone(),
                seller_id: p.seller_id.clone(),
                name: p.name.clone(),
                unit_price_minor: p.price,
                quantity: line.quantity,
                line_total_minor: p.price * line.quantity,
                returned_quantity: 0,
            })
            .collect();

        let mut tx = self.db.begin().await?;
        let year = year_of(now);
        let sequence = store::next_order_sequence(&mut tx, i64::from(year)).await?;
        let row = OrderRow {
            id: id.clone(),
            number: domain::order_number(year, sequence),
            user_id: user_id.clone(),
            customer_email: email,
            status: OrderStatus::Pending.as_str().to_owned(),
            currency: self.settings.currency.clone(),
            subtotal_minor: totals.subtotal,
            discount_minor: totals.discount,
            shipping_minor: totals.shipping,
            tax_minor: totals.tax,
            total_minor: totals.total,
            coupon_id: coupon.as_ref().map(|c| c.id.clone()),
            coupon_code: coupon.as_ref().map(|c| c.code.clone()),
            payment_method: checked.method.clone(),
            payment_id: None,
            shipping_address: address_json,
            cancel_reason: None,
            version: 1,
            created_at: now,
            updated_at: now,
            paid_at: None,
            shipped_at: None,
            delivered_at: None,
            cancelled_at: None,
        };
        store::insert_order(&mut tx, &row).await?;
        store::insert_lines(&mut tx, &line_rows).await?;
        let actor = Actor::Customer(user).label();
        store::append_timeline(
            &mut tx,
            TimelineEntry {
                order_id: &id,
                at: now,
                kind: "created",
                from_status: None,
                to_status: Some(OrderStatus::Pending.as_str()),
                actor: &actor,
                reason: None,
            },
        )
        .await?;
        if let Some(c) = &coupon {
            if let Err(refused) = store::use_coupon(&mut tx, c, &user_id, &id, totals.discount, now).await? {
                tx.rollback().await?;
                let message = match refused {
                    UseRefused::Exhausted => "this coupon has been used up",
                    UseRefused::CustomerLimit => "you have used this coupon as often as it allows",
                    UseRefused::Changed => "the coupon changed while you checked out; try again",
                };
                return Err(Placement::Refused(ApiError::Conflict(message.to_owned())));
            }
        }
        if !store::attach_order(&mut tx, &user_id, key, claim, &id).await? {
            tx.rollback().await?;
            return Err(Placement::Refused(ApiError::Conflict(
                "another request took this Idempotency-Key over; look up your orders before retrying".to_owned(),
            )));
        }
        Self::emit(
            &mut tx,
            crate::service::CREATED,
            &id,
            crate::service::event_data(&row, &line_rows),
            correlation_id,
        )
        .await?;
        tx.commit().await?;
        self.outbox.wake();

        let to_reserve: Vec<CartLine> = line_rows
            .iter()
            .map(|l| CartLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect();
        match clients.stock.reserve(order_id, &to_reserve, correlation_id).await {
            Ok(()) => {}
            Err(StockRefusal::Short(shortages)) => {
                self.apply(
                    &id,
                    Trigger::Cancel,
                    &Actor::System,
                    Some("out_of_stock"),
                    None,
                    correlation_id,
                )
                .await?;
                let skus: Vec<&str> = shortages.iter().map(|s| s.sku.as_str()).collect();
                let problem = ApiError::ConflictWith {
                    message: format!(
                        "not enough stock for {}; order {} was cancelled",
                        skus.join(", "),
                        row.number
                    ),
                    members: json!({ "shortages": shortages, "order_id": id, "order_number": row.number }),
                }
                .to_problem();
                let body =
                    serde_json::to_value(problem).map_err(|err| Placement::Failed(anyhow::Error::from(err).into()))?;
                return Err(Placement::Recorded(409, body));
            }
            Err(StockRefusal::Failed(err)) => {
                tracing::warn!(order_id = %id, error = %format!("{err:#}"), "reservation failed; cancelling the order");
                self.apply(
                    &id,
                    Trigger::Cancel,
                    &Actor::System,
                    Some("inventory_unavailable"),
                    None,
                    correlation_id,
                )
                .await?;
                return Err(Placement::Failed(ApiError::Unavailable {
                    message: "inventory is not answering; try again shortly".to_owned(),
                    retry_after_secs: 5,
                }));
            }
        }

        let started = clients
            .payments
            .start(StartPayment {
                order_id,
                order_number: row.number.clone(),
                user_id: user,
                method: checked.method.clone(),
                amount_minor: totals.total,
                currency: row.currency.clone(),
                correlation_id: correlation_id.map(str::to_owned),
            })
            .await;
        let started = match started {
            Ok(started) => started,
            Err(err) => {
                // Nothing stays stuck: the stock goes back now, and the order is cancelled.
                if let Err(release) = clients.stock.release(order_id, correlation_id).await {
                    tracing::warn!(order_id = %id, error = %format!("{release:#}"), "cannot release stock now; the cancellation event will");
                }
                self.apply(
                    &id,
                    Trigger::Cancel,
                    &Actor::System,
                    Some("payment_unavailable"),
                    None,
                    correlation_id,
                )
                .await?;
                return Err(Placement::from(err));
            }
        };
        let mut current = store::set_payment_id(self.db.writer(), &id, &started.id, self.now())
            .await?
            .ok_or_else(|| {
                Placement::Failed(ApiError::Internal(anyhow::anyhow!(
                    "order {id} vanished during checkout"
                )))
            })?;
        if checked.method == "cod" {
            current = self
                .apply(
                    &id,
                    Trigger::CashOnDeliveryConfirmed,
                    &Actor::System,
                    Some("cash on delivery"),
                    None,
                    correlation_id,
                )
                .await?
                .order;
        }
        // Nothing changes an order's lines during its checkout.
        let order = OrderView::from_rows(current, line_rows)?;
        let body = serde_json::to_value(CheckoutResponse {
            order,
            payment: started,
        })
        .map_err(|err| Placement::Failed(anyhow::Error::from(err).into()))?;
        Ok((201, body))
    }
}

/// A dependency's failure as a 503 that stores nothing.
fn dependency(service: &'static str) -> impl Fn(anyhow::Error) -> Placement {
    move |err| {
        tracing::warn!(service, error = %format!("{err:#}"), "checkout dependency failed");
        Placement::Failed(ApiError::Unavailable {
            message: format!("the {service} service is not answering; try again shortly"),
            retry_after_secs: 5,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bodies_hash_equally_whatever_the_key_order() {
        let user = Uuid::nil();
        let a: serde_json::Value = serde_json::from_str(r#"{"payment_method":"card","coupon_code":"X"}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"coupon_code":"X","payment_method":"card"}"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"coupon_code":"Y","payment_method":"card"}"#).unwrap();
        assert_eq!(request_hash(user, &a), request_hash(user, &b));
        assert_ne!(request_hash(user, &a), request_hash(user, &c));
        assert_ne!(request_hash(user, &a), request_hash(Uuid::from_u128(1), &a));
    }

    #[test]
    fn the_request_is_checked_before_anything_is_stored() {
        let parse = |raw: &str| check(serde_json::from_str(raw).unwrap());
        assert!(parse(r#"{"payment_method":"card"}"#).is_err(), "no address");
        assert!(
            parse(r#"{"payment_method":"bitcoin","shipping_address_id":"00000000-0000-0000-0000-000000000001"}"#)
                .is_err()
        );
        let address = r#"{"full_name":"A","line1":"B","city":"C","postal_code":"1","country":"de"}"#;
        let ok = parse(&format!(
            r#"{{"payment_method":"CARD","shipping_address":{address},"coupon_code":" save10 "}}"#
        ))
        .unwrap();
        assert_eq!(ok.method, "card");
        assert_eq!(ok.coupon.as_deref(), Some("SAVE10"));
        assert_eq!(ok.address.unwrap().country, "DE");
        let both = format!(
            r#"{{"payment_method":"card","shipping_address":{address},"shipping_address_id":"00000000-0000-0000-0000-000000000001"}}"#
        );
        assert!(parse(&both).is_err());
    }
}
