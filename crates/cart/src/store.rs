//! Where carts live: the [`CartStore`] trait, with a SQL implementation (the all-in-one mode,
//! in the cart's own database) and a Redis one (`redis_store.rs`). One conformance suite runs on
//! both (`tests/it`).
//!
//! Every operation on one cart is atomic in the store itself (a transaction, or a Lua script),
//! so two requests on one cart never lose each other's change. Every write refreshes the cart's
//! time to live.

use async_trait::async_trait;
use platform::store::{Db, Migration};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, Row};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "carts and their lines",
        sql: "CREATE TABLE carts (
            cart_key TEXT PRIMARY KEY,
            updated_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            reported_at BIGINT);
          CREATE INDEX carts_idle ON carts (reported_at, updated_at);
          CREATE INDEX carts_expiry ON carts (expires_at);
          CREATE TABLE cart_lines (
            cart_key TEXT NOT NULL REFERENCES carts (cart_key) ON DELETE CASCADE,
            sku TEXT NOT NULL,
            product_id TEXT NOT NULL,
            name TEXT NOT NULL,
            slug TEXT NOT NULL,
            image TEXT,
            unit_price BIGINT NOT NULL,
            added_price BIGINT NOT NULL,
            currency TEXT NOT NULL,
            quantity BIGINT NOT NULL,
            active BIGINT NOT NULL,
            added_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (cart_key, sku));
          CREATE INDEX cart_lines_sku ON cart_lines (sku)",
        postgres: None,
    },
    Migration {
        version: 2,
        name: "orders whose purchases were taken out of a cart",
        sql: "CREATE TABLE cart_deductions (
            order_id TEXT PRIMARY KEY,
            at BIGINT NOT NULL)",
        postgres: None,
    },
    crate::holds::MIGRATION,
];

/// One line as stored: the SKU, how many, and a snapshot of the product taken when it was
/// added and refreshed by product events since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, FromRow)]
pub struct StoredLine {
    pub sku: String,
    pub product_id: String,
    pub name: String,
    pub slug: String,
    pub image: Option<String>,
    /// The current price (minor units), as last heard from the catalog.
    pub unit_price: i64,
    /// The price when the line was first added: a difference is shown as a warning.
    pub added_price: i64,
    pub currency: String,
    pub quantity: i64,
    /// 1 while the product is active; 0 once it is archived, unpublished or deleted.
    pub active: i64,
    pub added_at: i64,
    pub updated_at: i64,
}

/// What the catalog says of a SKU now, applied to every cart line of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub active: bool,
    /// The product's current details; `None` when only the status is known (a deletion).
    pub details: Option<Details>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Details {
    pub product_id: String,
    pub name: String,
    pub slug: String,
    pub image: Option<String>,
    pub unit_price: i64,
    pub currency: String,
}

/// A cart with items nobody touched for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleCart {
    pub cart_key: String,
    pub updated_at: i64,
    pub lines: Vec<StoredLine>,
}

#[async_trait]
pub trait CartStore: Send + Sync {
    /// The cart's lines (none when it is missing or expired), oldest first.
    async fn lines(&self, cart: &str, now: i64) -> anyhow::Result<Vec<StoredLine>>;

    /// Adds `line.quantity` units to the SKU's line, creating it from `line` (whose snapshot
    /// also refreshes an existing line; the first `added_price` and `added_at` are kept).
    /// Refuses, changing nothing, when the line would exceed `max`: `Err(current quantity)`.
    async fn add(&self, cart: &str, line: &StoredLine, max: i64, now: i64) -> anyhow::Result<Result<i64, i64>>;

    /// Sets a line's quantity; `false` when the cart has no such line.
    async fn set_quantity(&self, cart: &str, sku: &str, quantity: i64, now: i64) -> anyhow::Result<bool>;

    /// Removes a line; `false` when the cart had no such line.
    async fn remove(&self, cart: &str, sku: &str, now: i64) -> anyhow::Result<bool>;

    /// Empties the cart.
    async fn clear(&self, cart: &str) -> anyhow::Result<()>;

    /// Takes `(sku, quantity)` units out of the cart in one step (what order `order_id` bought):
    /// a line left with none goes; lines added since, and units beyond those bought, stay. An
    /// emptied cart goes. Once per order: calling it again for the order changes nothing.
    async fn deduct(&self, cart: &str, order_id: &str, bought: &[(String, i64)], now: i64) -> anyhow::Result<()>;

    /// Removes the cart and answers its lines, in one step (a guest cart being merged).
    async fn take(&self, cart: &str, now: i64) -> anyhow::Result<Vec<StoredLine>>;

    /// Adds `line.quantity` to the SKU's line but to no more than `cap` (creating it); answers
    /// the line's quantity after.
    async fn merge_line(&self, cart: &str, line: &StoredLine, cap: i64, now: i64) -> anyhow::Result<i64>;

    /// Applies the catalog's current snapshot of `sku` to every cart holding it; answers how
    /// many lines it changed.
    async fn reprice(&self, sku: &str, snapshot: &Snapshot) -> anyhow::Result<u64>;

    /// Carts with items untouched since before `idle_before` and not reported yet.
    async fn idle(&self, idle_before: i64, now: i64, limit: usize) -> anyhow::Result<Vec<IdleCart>>;

    /// Marks an idle cart reported, unless it changed after `updated_at`; `true` when marked.
    /// A later change makes the cart reportable again.
    async fn mark_reported(&self, cart: &str, updated_at: i64) -> anyhow::Result<bool>;

    /// Deletes carts past their time to live (Redis expires keys by itself).
    async fn purge_expired(&self, now: i64) -> anyhow::Result<u64>;

    /// Readiness: the store answers.
    async fn ping(&self) -> anyhow::Result<()>;
}

/// Carts in the cart service's own SQL database.
pub struct SqlCartStore {
    db: Db,
    ttl_ms: i64,
}

impl SqlCartStore {
    pub fn new(db: Db, ttl: std::time::Duration) -> Self {
        Self {
            db,
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Starts a write on `cart`: the cart row exists, fresh, and lines of an expired cart are gone.
    /// A live cart (the usual case) takes one statement; a missing or expired one three. The
    /// lines are deleted only if the cart is found expired by that statement itself: on
    /// PostgreSQL another transaction may create the cart between the two, and its lines stay.
    async fn touch(&self, tx: &mut platform::store::Tx, cart: &str, now: i64) -> Result<(), sqlx::Error> {
        let expires_at = now.saturating_add(self.ttl_ms);
        let live = sqlx::query(
            "UPDATE carts SET updated_at = $2, expires_at = $3, reported_at = NULL
             WHERE cart_key = $1 AND expires_at > $2",
        )
        .bind(cart)
        .bind(now)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if live {
            return Ok(());
        }
        sqlx::query(
            "DELETE FROM cart_lines WHERE cart_key = $1
             AND EXISTS (SELECT 1 FROM carts WHERE cart_key = $1 AND expires_at <= $2)",
        )
        .bind(cart)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO carts (cart_key, updated_at, expires_at, reported_at) VALUES ($1, $2, $3, NULL)
             ON CONFLICT (cart_key) DO UPDATE SET updated_at = excluded.updated_at,
               expires_at = excluded.expires_at, reported_at = NULL",
        )
        .bind(cart)
        .bind(now)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The cart's row (`updated_at`, `expires_at`), if any, and all its lines, expired or not,
    /// oldest first: what [`crate::kept_store::KeptCartStore`] keeps of it.
    pub(crate) async fn row_and_lines(&self, cart: &str) -> anyhow::Result<(Option<(i64, i64)>, Vec<StoredLine>)> {
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT updated_at, expires_at FROM carts WHERE cart_key = $1")
            .bind(cart)
            .fetch_optional(self.db.reader())
            .await?;
        let lines = sqlx::query_as(&format!(
            "SELECT {SELECT_LINE} FROM cart_lines WHERE cart_key = $1 ORDER BY added_at, sku"
        ))
        .bind(cart)
        .fetch_all(self.db.reader())
        .await?;
        Ok((row, lines))
    }

    async fn upsert(
        &self,
        cart: &str,
        line: &StoredLine,
        quantity_sql: &str,
        cap: i64,
        now: i64,
    ) -> anyhow::Result<Option<i64>> {
        let mut tx = self.db.begin().await?;
        self.touch(&mut tx, cart, now).await?;
        let sql = format!(
            "INSERT INTO cart_lines ({LINE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (cart_key, sku) DO UPDATE SET quantity = {quantity_sql},
               product_id = excluded.product_id, name = excluded.name, slug = excluded.slug,
               image = excluded.image, unit_price = excluded.unit_price, currency = excluded.currency,
               active = excluded.active, updated_at = excluded.updated_at
             WHERE {quantity_sql} <= $14
             RETURNING quantity"
        );
        let quantity: Option<i64> = bind_line(sqlx::query(&sql), cart, line, line.quantity.min(cap), now)
            .bind(cap)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        if quantity.is_some() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(quantity)
    }
}

/// A statement built at run time, as the SQL stores bind it.
pub(crate) type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds a line's [`LINE_COLUMNS`], in their order, with `quantity` and `updated_at` as given.
pub(crate) fn bind_line<'q>(
    query: Query<'q>,
    cart: &'q str,
    line: &'q StoredLine,
    quantity: i64,
    updated_at: i64,
) -> Query<'q> {
    query
        .bind(cart)
        .bind(&line.sku)
        .bind(&line.product_id)
        .bind(&line.name)
        .bind(&line.slug)
        .bind(&line.image)
        .bind(line.unit_price)
        .bind(line.added_price)
        .bind(&line.currency)
        .bind(quantity)
        .bind(line.active)
        .bind(line.added_at)
        .bind(updated_at)
}

pub(crate) const LINE_COLUMNS: &str =
    "cart_key, sku, product_id, name, slug, image, unit_price, added_price, currency, \
     quantity, active, added_at, updated_at";
const SELECT_LINE: &str = "sku, product_id, name, slug, image, unit_price, added_price, currency, quantity, active, \
     added_at, updated_at";

#[async_trait]
impl CartStore for SqlCartStore {
    async fn lines(&self, cart: &str, now: i64) -> anyhow::Result<Vec<StoredLine>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {SELECT_LINE} FROM cart_lines WHERE cart_key = $1
             AND EXISTS (SELECT 1 FROM carts WHERE cart_key = $1 AND expires_at > $2)
             ORDER BY added_at, sku"
        ))
        .bind(cart)
        .bind(now)
        .fetch_all(self.db.reader())
        .await?)
    }

    async fn add(&self, cart: &str, line: &StoredLine, max: i64, now: i64) -> anyhow::Result<Result<i64, i64>> {
        if line.quantity > max {
            let current = self.lines(cart, now).await?;
            return Ok(Err(current
                .iter()
                .find(|l| l.sku == line.sku)
                .map_or(0, |l| l.quantity)));
        }
        match self
            .upsert(cart, line, "cart_lines.quantity + excluded.quantity", max, now)
            .await?
        {
            Some(quantity) => Ok(Ok(quantity)),
            None => {
                let current = self.lines(cart, now).await?;
                Ok(Err(current
                    .iter()
                    .find(|l| l.sku == line.sku)
                    .map_or(0, |l| l.quantity)))
            }
        }
    }

    async fn set_quantity(&self, cart: &str, sku: &str, quantity: i64, now: i64) -> anyhow::Result<bool> {
        let mut tx = self.db.begin().await?;
        let changed = sqlx::query(
            "UPDATE cart_lines SET quantity = $3, updated_at = $4 WHERE cart_key = $1 AND sku = $2
             AND EXISTS (SELECT 1 FROM carts WHERE cart_key = $1 AND expires_at > $4)",
        )
        .bind(cart)
        .bind(sku)
        .bind(quantity)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            self.touch(&mut tx, cart, now).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn remove(&self, cart: &str, sku: &str, now: i64) -> anyhow::Result<bool> {
        let mut tx = self.db.begin().await?;
        let removed = sqlx::query(
            "DELETE FROM cart_lines WHERE cart_key = $1 AND sku = $2
             AND EXISTS (SELECT 1 FROM carts WHERE cart_key = $1 AND expires_at > $3)",
        )
        .bind(cart)
        .bind(sku)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if removed {
            self.touch(&mut tx, cart, now).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn deduct(&self, cart: &str, order_id: &str, bought: &[(String, i64)], now: i64) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await?;
        let first =
            sqlx::query("INSERT INTO cart_deductions (order_id, at) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING")
                .bind(order_id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if !first {
            tx.rollback().await?;
            return Ok(());
        }
        for (sku, quantity) in bought {
            sqlx::query("DELETE FROM cart_lines WHERE cart_key = $1 AND sku = $2 AND quantity <= $3")
                .bind(cart)
                .bind(sku)
                .bind(quantity)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE cart_lines SET quantity = quantity - $3 WHERE cart_key = $1 AND sku = $2")
                .bind(cart)
                .bind(sku)
                .bind(quantity)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "DELETE FROM carts WHERE cart_key = $1 AND NOT EXISTS (SELECT 1 FROM cart_lines WHERE cart_key = $1)",
        )
        .bind(cart)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn clear(&self, cart: &str) -> anyhow::Result<()> {
        // The lines go with the cart (ON DELETE CASCADE).
        sqlx::query("DELETE FROM carts WHERE cart_key = $1")
            .bind(cart)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    async fn take(&self, cart: &str, now: i64) -> anyhow::Result<Vec<StoredLine>> {
        let mut tx = self.db.begin().await?;
        let mut lines: Vec<StoredLine> = sqlx::query_as(&format!(
            "DELETE FROM cart_lines WHERE cart_key = $1 RETURNING {SELECT_LINE}"
        ))
        .bind(cart)
        .fetch_all(&mut *tx)
        .await?;
        let expires_at: Option<i64> = sqlx::query_scalar("DELETE FROM carts WHERE cart_key = $1 RETURNING expires_at")
            .bind(cart)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        // An expired cart's lines are gone, not handed over.
        if expires_at.is_none_or(|at| at <= now) {
            return Ok(Vec::new());
        }
        lines.sort_by(|a, b| (a.added_at, &a.sku).cmp(&(b.added_at, &b.sku)));
        Ok(lines)
    }

    async fn merge_line(&self, cart: &str, line: &StoredLine, cap: i64, now: i64) -> anyhow::Result<i64> {
        // `cap` may be below what the line already holds (stock fell): then keep it at the cap.
        let quantity_sql = format!("MIN(cart_lines.quantity + excluded.quantity, {cap})");
        let quantity_sql = if self.db.backend() == platform::store::Backend::Postgres {
            quantity_sql.replace("MIN(", "LEAST(")
        } else {
            quantity_sql
        };
        Ok(self.upsert(cart, line, &quantity_sql, cap, now).await?.unwrap_or(0))
    }

    async fn reprice(&self, sku: &str, snapshot: &Snapshot) -> anyhow::Result<u64> {
        let active = i64::from(snapshot.active);
        let Some(d) = &snapshot.details else {
            return Ok(sqlx::query("UPDATE cart_lines SET active = $2 WHERE sku = $1")
                .bind(sku)
                .bind(active)
                .execute(self.db.writer())
                .await?
                .rows_affected());
        };
        Ok(sqlx::query(
            "UPDATE cart_lines SET product_id = $2, name = $3, slug = $4, image = $5, unit_price = $6,
               currency = $7, active = $8 WHERE sku = $1",
        )
        .bind(sku)
        .bind(&d.product_id)
        .bind(&d.name)
        .bind(&d.slug)
        .bind(&d.image)
        .bind(d.unit_price)
        .bind(&d.currency)
        .bind(active)
        .execute(self.db.writer())
        .await?
        .rows_affected())
    }

    async fn idle(&self, idle_before: i64, now: i64, limit: usize) -> anyhow::Result<Vec<IdleCart>> {
        let carts: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT c.cart_key, c.updated_at FROM carts c
             WHERE c.reported_at IS NULL AND c.updated_at < $1 AND c.expires_at > $2
               AND EXISTS (SELECT 1 FROM cart_lines l WHERE l.cart_key = c.cart_key)
             ORDER BY c.updated_at LIMIT {limit}"
        ))
        .bind(idle_before)
        .bind(now)
        .fetch_all(self.db.reader())
        .await?;
        let mut idle = Vec::with_capacity(carts.len());
        for (cart_key, updated_at) in carts {
            let lines = self.lines(&cart_key, now).await?;
            idle.push(IdleCart {
                cart_key,
                updated_at,
                lines,
            });
        }
        Ok(idle)
    }

    async fn mark_reported(&self, cart: &str, updated_at: i64) -> anyhow::Result<bool> {
        Ok(sqlx::query(
            "UPDATE carts SET reported_at = updated_at WHERE cart_key = $1 AND updated_at = $2 AND reported_at IS NULL",
        )
        .bind(cart)
        .bind(updated_at)
        .execute(self.db.writer())
        .await?
        .rows_affected()
            == 1)
    }

    async fn purge_expired(&self, now: i64) -> anyhow::Result<u64> {
        // The lines go with their carts (ON DELETE CASCADE).
        Ok(sqlx::query("DELETE FROM carts WHERE expires_at <= $1")
            .bind(now)
            .execute(self.db.writer())
            .await?
            .rows_affected())
    }

    async fn ping(&self) -> anyhow::Result<()> {
        Ok(self.db.ping().await?)
    }
}
