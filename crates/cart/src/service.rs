//! The cart's use cases: view (with totals and warnings), add, change, remove, clear, the
//! guest-to-user merge at login, repricing from product events, and abandoned-cart reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use platform::clock::SharedClock;
use platform::error::ApiError;
use platform::events::Event;
use platform::outbox::{self, Outbox};
use platform::store::Db;
use rand::RngCore;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::holds;
use crate::store::{CartStore, Snapshot, StoredLine};
use crate::stripes::Stripes;

pub const SERVICE: &str = "cart";
pub const ABANDONED: &str = "cart.abandoned";

/// A SKU as the catalog sells it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuInfo {
    pub sku: String,
    pub product_id: String,
    pub name: String,
    pub slug: String,
    pub image: Option<String>,
    pub price: i64,
    pub currency: String,
    /// The product is active (on sale).
    pub active: bool,
}

/// The catalog, as the cart calls it (in process, or over HTTP in the distributed mode).
#[async_trait]
pub trait Products: Send + Sync {
    /// The known SKUs among `skus` (unknown ones are left out).
    async fn skus(&self, skus: &[String]) -> anyhow::Result<Vec<SkuInfo>>;
}

/// Inventory, as the cart calls it.
#[async_trait]
pub trait Stock: Send + Sync {
    /// Units available per SKU; unknown SKUs are left out (and count as none).
    async fn available(&self, skus: &[String]) -> anyhow::Result<HashMap<String, i64>>;
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Most units of one SKU a cart may hold.
    pub max_quantity: i64,
    /// A cart with items untouched this long is reported abandoned (once).
    pub abandoned_after: Duration,
    /// How often abandoned and expired carts are looked for.
    pub sweep_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_quantity: 99,
            abandoned_after: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// Whose cart: a signed-in user's, or a guest's (by the token the guest holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    User(Uuid),
    Guest(String),
}

impl Owner {
    /// The store key. Guest tokens are kept hashed, so a store dump reveals no usable token.
    pub fn key(&self) -> String {
        match self {
            Self::User(id) => format!("user:{id}"),
            Self::Guest(token) => format!("guest:{}", guest_digest(token)),
        }
    }
}

fn guest_digest(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// A new guest cart token: 32 random bytes, URL-safe.
pub fn new_guest_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A guest token as the client sent it, if it has the shape of one.
pub fn parse_guest_token(raw: &str) -> Option<String> {
    let raw = raw.trim();
    ((20..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| raw.to_owned())
}

/// Something the shopper should know about a line before checking out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LineWarning {
    /// The price is not what it was when the line was added.
    PriceChanged { previous_price: i64, price: i64 },
    /// None left.
    OutOfStock,
    /// Fewer left than the line holds.
    InsufficientStock { available: i64 },
    /// The product is no longer sold (archived, unpublished or deleted).
    ProductUnavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LineView {
    pub sku: String,
    pub product_id: String,
    pub name: String,
    pub slug: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Minor units.
    pub unit_price: i64,
    pub quantity: i64,
    pub line_total: i64,
    pub warnings: Vec<LineWarning>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CartView {
    pub lines: Vec<LineView>,
    /// The sum of the lines that can be bought (minor units).
    pub subtotal: i64,
    /// Units in lines that can be bought.
    pub item_count: i64,
    pub currency: String,
    /// True when some line has a warning.
    pub has_warnings: bool,
}

pub struct Cart {
    db: Db,
    outbox: Outbox,
    store: Arc<dyn CartStore>,
    products: Arc<dyn Products>,
    stock: Arc<dyn Stock>,
    clock: SharedClock,
    settings: Settings,
    currency: String,
    /// Holds of one cart are made one at a time (see `holds`): a lock per stripe of cart keys.
    hold_turns: Stripes,
}

/// Stripes of [`Cart::hold_for_order`]'s locks.
const HOLD_STRIPES: usize = 64;
/// A hold the cart never heard the end of (its order's cancellation or payment was lost) is
/// dropped after this long. Orders ends an unpaid order well before (twice the reservation's
/// time to live, 30 minutes by default).
const HOLD_TTL_MS: i64 = 24 * 3600 * 1000;

impl Cart {
    pub fn new(
        db: Db,
        store: Arc<dyn CartStore>,
        products: Arc<dyn Products>,
        stock: Arc<dyn Stock>,
        clock: SharedClock,
        settings: Settings,
        currency: &str,
    ) -> Self {
        Self {
            outbox: Outbox::new(db.clone()),
            db,
            store,
            products,
            stock,
            clock,
            settings,
            currency: currency.to_owned(),
            hold_turns: Stripes::new(HOLD_STRIPES),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn store(&self) -> &Arc<dyn CartStore> {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn check_quantity(&self, quantity: i64) -> Result<(), ApiError> {
        if (1..=self.settings.max_quantity).contains(&quantity) {
            Ok(())
        } else {
            Err(ApiError::validation(
                "quantity",
                format!("must be between 1 and {}", self.settings.max_quantity),
            ))
        }
    }

    async fn sku_info(&self, sku: &str) -> Result<SkuInfo, ApiError> {
        let info = self
            .products
            .skus(&[sku.to_owned()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::not_found("SKU"))?;
        if !info.active {
            return Err(ApiError::Unprocessable(format!("{sku} is not on sale")));
        }
        Ok(info)
    }

    async fn available(&self, sku: &str) -> Result<i64, ApiError> {
        Ok(self
            .stock
            .available(&[sku.to_owned()])
            .await?
            .get(sku)
            .copied()
            .unwrap_or(0)
            .max(0))
    }

    fn short(sku: &str, available: i64) -> ApiError {
        ApiError::ConflictWith {
            message: format!("only {available} of {sku} available"),
            members: json!({"sku": sku, "available": available}),
        }
    }

    /// The cart of a guest who has none yet.
    pub fn empty_view(&self) -> CartView {
        CartView {
            lines: Vec::new(),
            subtotal: 0,
            item_count: 0,
            currency: self.currency.clone(),
            has_warnings: false,
        }
    }

    pub async fn view(&self, owner: &Owner) -> Result<CartView, ApiError> {
        let lines = self.store.lines(&owner.key(), self.now()).await?;
        self.render(lines).await
    }

    async fn render(&self, lines: Vec<StoredLine>) -> Result<CartView, ApiError> {
        let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
        let available = if skus.is_empty() {
            HashMap::new()
        } else {
            self.stock.available(&skus).await?
        };
        let mut view = CartView {
            lines: Vec::with_capacity(lines.len()),
            subtotal: 0,
            item_count: 0,
            currency: lines
                .first()
                .map_or_else(|| self.currency.clone(), |l| l.currency.clone()),
            has_warnings: false,
        };
        for line in lines {
            let mut warnings = Vec::new();
            let on_sale = line.active != 0;
            if !on_sale {
                warnings.push(LineWarning::ProductUnavailable);
            } else {
                match available.get(&line.sku).copied().unwrap_or(0).max(0) {
                    0 => warnings.push(LineWarning::OutOfStock),
                    n if n < line.quantity => warnings.push(LineWarning::InsufficientStock { available: n }),
                    _ => {}
                }
            }
            if line.unit_price != line.added_price {
                warnings.push(LineWarning::PriceChanged {
                    previous_price: line.added_price,
                    price: line.unit_price,
                });
            }
            let line_total = line.unit_price.saturating_mul(line.quantity);
            if on_sale {
                view.subtotal = view.subtotal.saturating_add(line_total);
                view.item_count += line.quantity;
            }
            view.has_warnings |= !warnings.is_empty();
            view.lines.push(LineView {
                sku: line.sku,
                product_id: line.product_id,
                name: line.name,
                slug: line.slug,
                image: line.image,
                unit_price: line.unit_price,
                quantity: line.quantity,
                line_total,
                warnings,
            });
        }
        Ok(view)
    }

    fn stored(info: &SkuInfo, quantity: i64, now: i64) -> StoredLine {
        StoredLine {
            sku: info.sku.clone(),
            product_id: info.product_id.clone(),
            name: info.name.clone(),
            slug: info.slug.clone(),
            image: info.image.clone(),
            unit_price: info.price,
            added_price: info.price,
            currency: info.currency.clone(),
            quantity,
            active: 1,
            added_at: now,
            updated_at: now,
        }
    }

    /// Adds units of a SKU: 404 for an unknown SKU, 422 when it is not on sale or the line
    /// would exceed the per-line maximum, 409 (with `available`) beyond the stock.
    pub async fn add(&self, owner: &Owner, sku: &str, quantity: i64) -> Result<CartView, ApiError> {
        let sku = parse_sku(sku)?;
        self.check_quantity(quantity)?;
        let info = self.sku_info(&sku).await?;
        let available = self.available(&sku).await?;
        if quantity > available {
            return Err(Self::short(&sku, available));
        }
        let now = self.now();
        let line = Self::stored(&info, quantity, now);
        // One atomic step checks both limits against what the line already holds.
        let limit = self.settings.max_quantity.min(available);
        match self.store.add(&owner.key(), &line, limit, now).await? {
            Ok(_) => self.view(owner).await,
            Err(held) if held + quantity > available => Err(Self::short(&sku, available)),
            Err(held) => Err(ApiError::validation(
                "quantity",
                format!(
                    "a cart holds at most {} of one SKU; it has {held}",
                    self.settings.max_quantity
                ),
            )),
        }
    }

    /// Sets a line's quantity: 404 when the cart has no such line, 409 beyond the stock.
    pub async fn set_quantity(&self, owner: &Owner, sku: &str, quantity: i64) -> Result<CartView, ApiError> {
        let sku = parse_sku(sku)?;
        self.check_quantity(quantity)?;
        let key = owner.key();
        let held = self.store.lines(&key, self.now()).await?.iter().any(|l| l.sku == sku);
        if !held {
            return Err(ApiError::not_found("cart line"));
        }
        let available = self.available(&sku).await?;
        if quantity > available {
            return Err(Self::short(&sku, available));
        }
        if !self.store.set_quantity(&key, &sku, quantity, self.now()).await? {
            return Err(ApiError::not_found("cart line"));
        }
        self.view(owner).await
    }

    pub async fn remove(&self, owner: &Owner, sku: &str) -> Result<CartView, ApiError> {
        let sku = parse_sku(sku)?;
        if !self.store.remove(&owner.key(), &sku, self.now()).await? {
            return Err(ApiError::not_found("cart line"));
        }
        self.view(owner).await
    }

    pub async fn clear(&self, owner: &Owner) -> Result<(), ApiError> {
        Ok(self.store.clear(&owner.key()).await?)
    }

    /// Moves a guest cart into the user's at login: quantities of the same SKU are summed,
    /// each line capped by what is available (and the per-line maximum); lines of SKUs no
    /// longer on sale or out of stock are dropped. The guest cart is gone afterwards.
    pub async fn merge(&self, guest_token: &str, user: Uuid) -> Result<CartView, ApiError> {
        let now = self.now();
        let owner = Owner::User(user);
        let guest = self
            .store
            .take(&Owner::Guest(guest_token.to_owned()).key(), now)
            .await?;
        if !guest.is_empty() {
            let skus: Vec<String> = guest.iter().map(|l| l.sku.clone()).collect();
            let available = self.stock.available(&skus).await?;
            let infos = self.products.skus(&skus).await?;
            for line in &guest {
                let Some(info) = infos.iter().find(|i| i.sku == line.sku && i.active) else {
                    continue;
                };
                let cap = available
                    .get(&line.sku)
                    .copied()
                    .unwrap_or(0)
                    .min(self.settings.max_quantity);
                if cap <= 0 {
                    continue;
                }
                let mut merged = Self::stored(info, line.quantity, now);
                merged.added_price = line.added_price;
                merged.added_at = line.added_at;
                self.store.merge_line(&owner.key(), &merged, cap, now).await?;
            }
        }
        self.view(&owner).await
    }

    /// A product event's news for every cart holding the SKU.
    pub async fn reprice(&self, sku: &str, snapshot: &Snapshot) -> anyhow::Result<u64> {
        self.store.reprice(sku, snapshot).await
    }

    /// What checkout buys for `order_id`: the units of the user's cart that no other order of
    /// theirs awaiting payment holds, now held for this order until it is paid (then the cart
    /// deducts them) or ends otherwise ([`Cart::release_hold`]). Asked again for the same order,
    /// the same units. Empty: nothing in the cart is free.
    pub async fn hold_for_order(&self, user: Uuid, order_id: &str) -> anyhow::Result<holds::Held> {
        let cart = Owner::User(user).key();
        let _turn = self.hold_turns.of(&cart).lock().await;
        let mut tx = holds::locked(&self.db, &cart).await?;
        let mut existing = match tx.as_mut() {
            Some(tx) => holds::of_cart(tx, &cart).await?,
            None => holds::of_cart(&mut *self.db.reader().acquire().await?, &cart).await?,
        };
        if let Some(held) = existing.remove(order_id) {
            return Ok(held);
        }
        let now = self.now();
        let lines: Vec<(String, i64)> = self
            .store
            .lines(&cart, now)
            .await?
            .into_iter()
            .map(|line| (line.sku, line.quantity))
            .collect();
        let free = holds::free(&lines, &existing);
        if !free.is_empty() {
            match tx.as_mut() {
                Some(tx) => holds::insert(tx, order_id, &cart, &free, now).await?,
                None => holds::insert(&mut *self.db.writer().acquire().await?, order_id, &cart, &free, now).await?,
            }
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        Ok(free)
    }

    /// The order's units are free again (its checkout failed, its payment failed, or it was
    /// cancelled). `false`: it held nothing.
    pub async fn release_hold(&self, order_id: &str) -> anyhow::Result<bool> {
        holds::delete(&self.db, order_id).await
    }

    /// The order was paid: what it bought leaves the user's cart (once per order; what was added
    /// since stays; `None`: the whole cart, for events that do not list the items), and its hold
    /// ends, in one turn of the cart's holds, so a checkout sees both or neither.
    pub async fn bought(&self, user: Uuid, order_id: &str, items: Option<&[(String, i64)]>) -> anyhow::Result<()> {
        let cart = Owner::User(user).key();
        let _turn = self.hold_turns.of(&cart).lock().await;
        let tx = holds::locked(&self.db, &cart).await?;
        match items {
            Some(bought) => self.store.deduct(&cart, order_id, bought, self.now()).await?,
            None => self.store.clear(&cart).await?,
        }
        holds::delete(&self.db, order_id).await?;
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        Ok(())
    }

    /// Reports every cart idle longer than `abandoned_after` once (cart.abandoned), and deletes
    /// expired carts. Answers how many it reported.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let now = self.now();
        let idle_ms = i64::try_from(self.settings.abandoned_after.as_millis()).unwrap_or(i64::MAX);
        let mut reported = 0;
        loop {
            let idle = self.store.idle(now.saturating_sub(idle_ms), now, 100).await?;
            let batch = idle.len();
            for cart in idle {
                // Marking first makes the report at most once even with two sweepers; a crash
                // between the mark and the event loses that one report.
                if !self.store.mark_reported(&cart.cart_key, cart.updated_at).await? {
                    continue;
                }
                let user_id = cart.cart_key.strip_prefix("user:").map(str::to_owned);
                let subtotal: i64 = cart
                    .lines
                    .iter()
                    .filter(|l| l.active != 0)
                    .map(|l| l.unit_price.saturating_mul(l.quantity))
                    .sum();
                let data = json!({
                    "cart_id": guest_digest(&cart.cart_key),
                    "user_id": user_id,
                    "items": cart.lines.iter().map(|l| json!({
                        "sku": l.sku, "product_id": l.product_id, "quantity": l.quantity, "unit_price": l.unit_price,
                    })).collect::<Vec<_>>(),
                    "subtotal": subtotal,
                    "currency": cart.lines.first().map_or(self.currency.as_str(), |l| l.currency.as_str()),
                    "idle_since": platform::clock::rfc3339(cart.updated_at),
                });
                let subject = guest_digest(&cart.cart_key);
                let mut tx = self.db.begin().await?;
                outbox::enqueue(&mut tx, &Event::new(SERVICE, ABANDONED, &subject, data, None)).await?;
                tx.commit().await?;
                reported += 1;
            }
            if batch < 100 {
                break;
            }
        }
        if reported > 0 {
            self.outbox.wake();
        }
        self.store.purge_expired(now).await?;
        holds::purge(&self.db, now.saturating_sub(HOLD_TTL_MS)).await?;
        Ok(reported)
    }

    pub fn spawn_sweeper(self: &Arc<Self>, cancel: CancellationToken) {
        let cart = self.clone();
        platform::periodic::spawn_every("cart sweeper", self.settings.sweep_interval, cancel, move || {
            let cart = cart.clone();
            async move { cart.sweep().await }
        });
    }
}

use platform::sku::sku_param as parse_sku;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_tokens_are_random_and_stored_hashed() {
        let a = new_guest_token();
        let b = new_guest_token();
        assert_ne!(a, b);
        assert_eq!(parse_guest_token(&a), Some(a.clone()));
        let key = Owner::Guest(a.clone()).key();
        assert!(!key.contains(&a), "the store key does not hold the token");
        assert_eq!(key, Owner::Guest(a).key(), "the same token finds the same cart");
        for bad in ["", "short", "has spaces in it but long enough", &"x".repeat(65)] {
            assert_eq!(parse_guest_token(bad), None, "{bad:?}");
        }
    }
}
