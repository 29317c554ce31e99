//! The orders service's persistence: orders with their lines and timeline, the per-year order
//! number sequence, idempotency keys with their stored responses, coupons with their usage
//! counters, and returns. Every status change is a compare-and-set on the current status.

use platform::store::{placeholders, value_rows, Backend, Conditions, Migration, SqlValue, Tx};
use sqlx::{AnyPool, FromRow};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "orders, lines, timeline, sequences, idempotency keys, coupons, returns",
    sql: "CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            number TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            customer_email TEXT,
            status TEXT NOT NULL,
            currency TEXT NOT NULL,
            subtotal_minor BIGINT NOT NULL,
            discount_minor BIGINT NOT NULL,
            shipping_minor BIGINT NOT NULL,
            tax_minor BIGINT NOT NULL,
            total_minor BIGINT NOT NULL,
            coupon_id TEXT,
            coupon_code TEXT,
            payment_method TEXT NOT NULL,
            payment_id TEXT,
            shipping_address TEXT NOT NULL,
            cancel_reason TEXT,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            paid_at BIGINT,
            shipped_at BIGINT,
            delivered_at BIGINT,
            cancelled_at BIGINT);
          CREATE INDEX orders_user ON orders (user_id, id);
          CREATE INDEX orders_status ON orders (status, id);
          CREATE INDEX orders_created ON orders (created_at);
          CREATE TABLE order_lines (
            order_id TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            line_no BIGINT NOT NULL,
            sku TEXT NOT NULL,
            product_id TEXT NOT NULL,
            seller_id TEXT NOT NULL,
            name TEXT NOT NULL,
            unit_price_minor BIGINT NOT NULL,
            quantity BIGINT NOT NULL CHECK (quantity > 0),
            line_total_minor BIGINT NOT NULL,
            returned_quantity BIGINT NOT NULL DEFAULT 0 CHECK (returned_quantity <= quantity),
            PRIMARY KEY (order_id, line_no));
          CREATE INDEX order_lines_seller ON order_lines (seller_id, order_id);
          CREATE TABLE order_timeline (
            seq SERIAL_KEY,
            order_id TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            at BIGINT NOT NULL,
            kind TEXT NOT NULL,
            from_status TEXT,
            to_status TEXT,
            actor TEXT NOT NULL,
            reason TEXT);
          CREATE INDEX order_timeline_order ON order_timeline (order_id, seq);
          CREATE TABLE order_sequences (
            year BIGINT PRIMARY KEY,
            last BIGINT NOT NULL);
          CREATE TABLE idempotency_keys (
            user_id TEXT NOT NULL,
            key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            claim TEXT NOT NULL,
            order_id TEXT,
            response_status BIGINT,
            response_body TEXT,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, key));
          CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
          CREATE TABLE coupons (
            id TEXT PRIMARY KEY,
            code TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            value BIGINT NOT NULL,
            min_subtotal_minor BIGINT NOT NULL,
            starts_at BIGINT,
            ends_at BIGINT,
            usage_limit BIGINT,
            per_customer_limit BIGINT,
            used_count BIGINT NOT NULL DEFAULT 0,
            disabled_at BIGINT,
            description TEXT,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            CHECK (usage_limit IS NULL OR used_count <= usage_limit));
          CREATE TABLE coupon_customer_uses (
            coupon_id TEXT NOT NULL REFERENCES coupons (id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            uses BIGINT NOT NULL,
            PRIMARY KEY (coupon_id, user_id));
          CREATE TABLE coupon_order_uses (
            order_id TEXT PRIMARY KEY,
            coupon_id TEXT NOT NULL REFERENCES coupons (id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            discount_minor BIGINT NOT NULL,
            used_at BIGINT NOT NULL,
            released_at BIGINT);
          CREATE TABLE returns (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT NOT NULL,
            refund_minor BIGINT NOT NULL,
            decision_note TEXT,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL);
          CREATE INDEX returns_order ON returns (order_id);
          CREATE INDEX returns_status ON returns (status, id);
          CREATE TABLE return_lines (
            return_id TEXT NOT NULL REFERENCES returns (id) ON DELETE CASCADE,
            line_no BIGINT NOT NULL,
            sku TEXT NOT NULL,
            quantity BIGINT NOT NULL CHECK (quantity > 0),
            refund_minor BIGINT NOT NULL,
            PRIMARY KEY (return_id, line_no))",
    postgres: None,
}];

// ----- orders --------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct OrderRow {
    pub id: String,
    pub number: String,
    pub user_id: String,
    pub customer_email: Option<String>,
    pub status: String,
    pub currency: String,
    pub subtotal_minor: i64,
    pub discount_minor: i64,
    pub shipping_minor: i64,
    pub tax_minor: i64,
    pub total_minor: i64,
    pub coupon_id: Option<String>,
    pub coupon_code: Option<String>,
    pub payment_method: String,
    pub payment_id: Option<String>,
    pub shipping_address: String,
    pub cancel_reason: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub paid_at: Option<i64>,
    pub shipped_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

const ORDER_COLUMNS: &str = "id, number, user_id, customer_email, status, currency, subtotal_minor, discount_minor, \
     shipping_minor, tax_minor, total_minor, coupon_id, coupon_code, payment_method, payment_id, shipping_address, \
     cancel_reason, version, created_at, updated_at, paid_at, shipped_at, delivered_at, cancelled_at";

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct LineRow {
    pub order_id: String,
    pub line_no: i64,
    pub sku: String,
    pub product_id: String,
    pub seller_id: String,
    pub name: String,
    pub unit_price_minor: i64,
    pub quantity: i64,
    pub line_total_minor: i64,
    pub returned_quantity: i64,
}

const LINE_COLUMNS: &str = "order_id, line_no, sku, product_id, seller_id, name, unit_price_minor, quantity, \
     line_total_minor, returned_quantity";

#[derive(Debug, Clone, FromRow)]
pub struct TimelineRow {
    pub seq: i64,
    pub order_id: String,
    pub at: i64,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
}

/// The next order number of `year` (1, 2, …), taken inside the order's transaction.
pub async fn next_order_sequence(tx: &mut Tx, year: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO order_sequences (year, last) VALUES ($1, 1)
         ON CONFLICT (year) DO UPDATE SET last = order_sequences.last + 1
         RETURNING last",
    )
    .bind(year)
    .fetch_one(&mut **tx)
    .await
}

pub async fn insert_order(tx: &mut Tx, o: &OrderRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO orders ({ORDER_COLUMNS}) VALUES ({})",
        placeholders(1, 24)
    ))
    .bind(&o.id)
    .bind(&o.number)
    .bind(&o.user_id)
    .bind(&o.customer_email)
    .bind(&o.status)
    .bind(&o.currency)
    .bind(o.subtotal_minor)
    .bind(o.discount_minor)
    .bind(o.shipping_minor)
    .bind(o.tax_minor)
    .bind(o.total_minor)
    .bind(&o.coupon_id)
    .bind(&o.coupon_code)
    .bind(&o.payment_method)
    .bind(&o.payment_id)
    .bind(&o.shipping_address)
    .bind(&o.cancel_reason)
    .bind(o.version)
    .bind(o.created_at)
    .bind(o.updated_at)
    .bind(o.paid_at)
    .bind(o.shipped_at)
    .bind(o.delivered_at)
    .bind(o.cancelled_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts all lines in one statement.
pub async fn insert_lines(tx: &mut Tx, lines: &[LineRow]) -> Result<(), sqlx::Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO order_lines ({LINE_COLUMNS}) VALUES {}",
        value_rows(lines.len(), 10)
    );
    let mut query = sqlx::query(&sql);
    for l in lines {
        query = query
            .bind(&l.order_id)
            .bind(l.line_no)
            .bind(&l.sku)
            .bind(&l.product_id)
            .bind(&l.seller_id)
            .bind(&l.name)
            .bind(l.unit_price_minor)
            .bind(l.quantity)
            .bind(l.line_total_minor)
            .bind(l.returned_quantity);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// One timeline entry to write.
#[derive(Debug, Clone, Copy)]
pub struct TimelineEntry<'a> {
    pub order_id: &'a str,
    pub at: i64,
    pub kind: &'a str,
    pub from_status: Option<&'a str>,
    pub to_status: Option<&'a str>,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
}

pub async fn append_timeline(tx: &mut Tx, e: TimelineEntry<'_>) -> Result<(), sqlx::Error> {
    // PostgreSQL's sequences hand out numbers before commit: hold the order's row first, so
    // an order's entries are numbered in commit order and a live stream that has sent entry n
    // never meets an n - 1 committed later. (SQLite has one writer: commit order already.)
    if Backend::of(tx) == Some(Backend::Postgres) {
        sqlx::query("UPDATE orders SET version = version WHERE id = $1")
            .bind(e.order_id)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO order_timeline (order_id, at, kind, from_status, to_status, actor, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(e.order_id)
    .bind(e.at)
    .bind(e.kind)
    .bind(e.from_status)
    .bind(e.to_status)
    .bind(e.actor)
    .bind(e.reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn order<'e, E>(executor: E, id: &str) -> Result<Option<OrderRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Orders placed after `after` (ids are UUIDv7, so in time order), oldest first.
pub async fn orders_after(pool: &AnyPool, after: &str, limit: i64) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The id of the newest order, if any.
pub async fn newest_order_id(pool: &AnyPool) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders ORDER BY id DESC LIMIT 1")
        .fetch_optional(pool)
        .await
}

/// The lines of these orders, in order and line order.
pub async fn lines_of(pool: &AnyPool, order_ids: &[String]) -> Result<Vec<LineRow>, sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {LINE_COLUMNS} FROM order_lines WHERE order_id IN ({}) ORDER BY order_id, line_no",
        placeholders(1, order_ids.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in order_ids {
        query = query.bind(id);
    }
    query.fetch_all(pool).await
}

/// The lines of one order, read inside a transaction.
pub async fn lines_of_tx(tx: &mut Tx, order_id: &str) -> Result<Vec<LineRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {LINE_COLUMNS} FROM order_lines WHERE order_id = $1 ORDER BY line_no"
    ))
    .bind(order_id)
    .fetch_all(&mut **tx)
    .await
}

pub async fn timeline(pool: &AnyPool, order_id: &str) -> Result<Vec<TimelineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, order_id, at, kind, from_status, to_status, actor, reason
         FROM order_timeline WHERE order_id = $1 ORDER BY seq",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// Moves the order from `from` to `to` if it is still in `from`, and stamps the instant column
/// that belongs to `to`: the row as it is now, or `None` when the order was not in `from`
/// (another writer moved it first).
pub async fn set_status(
    tx: &mut Tx,
    id: &str,
    from: &str,
    to: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let stamp = match to {
        "paid" => ", paid_at = $4",
        "shipped" => ", shipped_at = $4",
        // A rejected return moves the order back to delivered: the first delivery counts.
        "delivered" => ", delivered_at = COALESCE(delivered_at, $4)",
        "cancelled" | "payment_failed" => ", cancelled_at = $4, cancel_reason = $5",
        _ => "",
    };
    let sql = format!(
        "UPDATE orders SET status = $3, version = version + 1, updated_at = $4{stamp}
         WHERE id = $1 AND status = $2
         RETURNING {ORDER_COLUMNS}"
    );
    let mut query = sqlx::query_as(&sql).bind(id).bind(from).bind(to).bind(now);
    if stamp.contains("$5") {
        query = query.bind(reason);
    }
    query.fetch_optional(&mut **tx).await
}

/// Records the order's payment: the row as it is now (`None` for an unknown order).
pub async fn set_payment_id(
    pool: &AnyPool,
    id: &str,
    payment_id: &str,
    now: i64,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE orders SET payment_id = $2, updated_at = $3 WHERE id = $1 RETURNING {ORDER_COLUMNS}"
    ))
    .bind(id)
    .bind(payment_id)
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// Which orders a list shows.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub customer_email: Option<String>,
    /// Unix ms, inclusive.
    pub created_from: Option<i64>,
    /// Unix ms, exclusive.
    pub created_to: Option<i64>,
    /// Orders with at least one line of this seller.
    pub seller_id: Option<String>,
}

/// Newest first, after the cursor `after` (an order id), up to `limit` rows.
pub async fn list_orders(
    pool: &AnyPool,
    filter: &OrderFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    let mut c = Conditions::default();
    if let Some(v) = &filter.user_id {
        c.push("user_id = ?", SqlValue::Text(v.clone()));
    }
    if let Some(v) = &filter.status {
        c.push("status = ?", SqlValue::Text(v.clone()));
    }
    if let Some(v) = &filter.customer_email {
        c.push("LOWER(customer_email) = ?", SqlValue::Text(v.to_lowercase()));
    }
    if let Some(v) = filter.created_from {
        c.push("created_at >= ?", SqlValue::Int(v));
    }
    if let Some(v) = filter.created_to {
        c.push("created_at < ?", SqlValue::Int(v));
    }
    if let Some(v) = &filter.seller_id {
        c.push(
            "id IN (SELECT order_id FROM order_lines WHERE seller_id = ?)",
            SqlValue::Text(v.clone()),
        );
    }
    if let Some(v) = after {
        c.push("id < ?", SqlValue::Text(v.to_owned()));
    }
    let limit = c.bind(SqlValue::Int(limit));
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders {} ORDER BY id DESC LIMIT {limit}",
        c.where_sql()
    );
    sqlx::query_as_with(&sql, c.into_arguments()).fetch_all(pool).await
}

/// Lines of `seller_id` in these orders.
pub async fn seller_lines(pool: &AnyPool, seller_id: &str, order_ids: &[String]) -> Result<Vec<LineRow>, sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {LINE_COLUMNS} FROM order_lines WHERE seller_id = $1 AND order_id IN ({})
         ORDER BY order_id, line_no",
        placeholders(2, order_ids.len())
    );
    let mut query = sqlx::query_as(&sql).bind(seller_id);
    for id in order_ids {
        query = query.bind(id);
    }
    query.fetch_all(pool).await
}

// ----- idempotency keys ----------------------------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct IdempotencyRow {
    pub request_hash: String,
    /// The token of the request that holds the key.
    pub claim: String,
    pub order_id: Option<String>,
    pub response_status: Option<i64>,
    pub response_body: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Claims `key` for this request (`claim` is its token) in one statement: answers `None` when
/// this request now owns it (a new row, or one whose time was up, replaced), else the row
/// another request holds.
pub async fn claim_key(
    pool: &AnyPool,
    user_id: &str,
    key: &str,
    request_hash: &str,
    claim: &str,
    now: i64,
    expires_at: i64,
) -> Result<Option<IdempotencyRow>, sqlx::Error> {
    // A holder may let its key go between the claim and the read; then claim again.
    for _ in 0..3 {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, claim, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (user_id, key) DO UPDATE SET request_hash = excluded.request_hash,
                 claim = excluded.claim, order_id = NULL, response_status = NULL, response_body = NULL,
                 created_at = excluded.created_at, expires_at = excluded.expires_at
             WHERE idempotency_keys.expires_at <= excluded.created_at",
        )
        .bind(user_id)
        .bind(key)
        .bind(request_hash)
        .bind(claim)
        .bind(now)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            return Ok(None);
        }
        if let Some(row) = key_row(pool, user_id, key).await? {
            return Ok(Some(row));
        }
    }
    Err(sqlx::Error::RowNotFound)
}

/// Takes over a key whose request died (held by `dead`, no answer, no order) for the request
/// with token `claim`; answers whether it did. Of several requests trying at once, one wins.
#[allow(clippy::too_many_arguments)]
pub async fn take_over_key(
    pool: &AnyPool,
    user_id: &str,
    key: &str,
    dead: &str,
    claim: &str,
    request_hash: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE idempotency_keys SET claim = $4, request_hash = $5, created_at = $6, expires_at = $7
         WHERE user_id = $1 AND key = $2 AND claim = $3 AND response_status IS NULL AND order_id IS NULL",
    )
    .bind(user_id)
    .bind(key)
    .bind(dead)
    .bind(claim)
    .bind(request_hash)
    .bind(now)
    .bind(expires_at)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

pub async fn key_row(pool: &AnyPool, user_id: &str, key: &str) -> Result<Option<IdempotencyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_hash, claim, order_id, response_status, response_body, created_at, expires_at
         FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// Ties the key to the order its request created, in the order's own transaction (only while
/// this request still holds it).
pub async fn attach_order(
    tx: &mut Tx,
    user_id: &str,
    key: &str,
    claim: &str,
    order_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE idempotency_keys SET order_id = $4 WHERE user_id = $1 AND key = $2 AND claim = $3")
            .bind(user_id)
            .bind(key)
            .bind(claim)
            .bind(order_id)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1,
    )
}

pub async fn store_response(
    pool: &AnyPool,
    user_id: &str,
    key: &str,
    claim: &str,
    status: u16,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = $4, response_body = $5
         WHERE user_id = $1 AND key = $2 AND claim = $3",
    )
    .bind(user_id)
    .bind(key)
    .bind(claim)
    .bind(i64::from(status))
    .bind(body)
    .execute(pool)
    .await?;
    Ok(())
}

/// Lets the key go (a request that stored nothing), if this request still holds it.
pub async fn release_key(pool: &AnyPool, user_id: &str, key: &str, claim: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND claim = $3 AND response_status IS NULL",
    )
    .bind(user_id)
    .bind(key)
    .bind(claim)
    .execute(pool)
    .await?;
    Ok(())
}

/// Orders still pending that were created before `before`, oldest first.
pub async fn pending_before(pool: &AnyPool, before: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE status = 'pending' AND created_at < $1 ORDER BY id LIMIT $2")
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await
}

pub async fn purge_expired_keys(pool: &AnyPool, now: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected())
}

// ----- coupons -------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct CouponRow {
    pub id: String,
    pub code: String,
    pub kind: String,
    pub value: i64,
    pub min_subtotal_minor: i64,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub usage_limit: Option<i64>,
    pub per_customer_limit: Option<i64>,
    pub used_count: i64,
    pub disabled_at: Option<i64>,
    pub description: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COUPON_COLUMNS: &str = "id, code, kind, value, min_subtotal_minor, starts_at, ends_at, usage_limit, \
     per_customer_limit, used_count, disabled_at, description, version, created_at, updated_at";

pub async fn insert_coupon(pool: &AnyPool, c: &CouponRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO coupons ({COUPON_COLUMNS}) VALUES ({})",
        placeholders(1, 15)
    ))
    .bind(&c.id)
    .bind(&c.code)
    .bind(&c.kind)
    .bind(c.value)
    .bind(c.min_subtotal_minor)
    .bind(c.starts_at)
    .bind(c.ends_at)
    .bind(c.usage_limit)
    .bind(c.per_customer_limit)
    .bind(c.used_count)
    .bind(c.disabled_at)
    .bind(&c.description)
    .bind(c.version)
    .bind(c.created_at)
    .bind(c.updated_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Replaces the editable fields if `version` is current; answers whether it did. A usage limit
/// below the uses already taken breaks the table's CHECK (a database error the caller maps).
pub async fn update_coupon(pool: &AnyPool, c: &CouponRow, version: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE coupons SET kind = $2, value = $3, min_subtotal_minor = $4, starts_at = $5, ends_at = $6,
            usage_limit = $7, per_customer_limit = $8, disabled_at = $9, description = $10,
            version = version + 1, updated_at = $11
         WHERE id = $1 AND version = $12",
    )
    .bind(&c.id)
    .bind(&c.kind)
    .bind(c.value)
    .bind(c.min_subtotal_minor)
    .bind(c.starts_at)
    .bind(c.ends_at)
    .bind(c.usage_limit)
    .bind(c.per_customer_limit)
    .bind(c.disabled_at)
    .bind(&c.description)
    .bind(c.updated_at)
    .bind(version)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

pub async fn delete_coupon(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM coupons WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected()
        == 1)
}

pub async fn coupon<'e, E>(executor: E, id: &str) -> Result<Option<CouponRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

pub async fn coupon_by_code<'e, E>(executor: E, code: &str) -> Result<Option<CouponRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("SELECT {COUPON_COLUMNS} FROM coupons WHERE code = $1"))
        .bind(code)
        .fetch_optional(executor)
        .await
}

/// Coupons by code, after the cursor `after` (a code).
pub async fn list_coupons(pool: &AnyPool, after: Option<&str>, limit: i64) -> Result<Vec<CouponRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COUPON_COLUMNS} FROM coupons WHERE code > $1 ORDER BY code LIMIT $2"
    ))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Why a coupon use was refused by its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseRefused {
    /// Every use of the coupon is taken.
    Exhausted,
    /// This customer used it as often as allowed.
    CustomerLimit,
    /// An admin changed or deleted the coupon since it was read.
    Changed,
}

/// Takes one use of the coupon for `order_id` inside the order's transaction, atomically against
/// both limits (conditional updates, never read-then-write). On a refusal the caller rolls back.
pub async fn use_coupon(
    tx: &mut Tx,
    coupon: &CouponRow,
    user_id: &str,
    order_id: &str,
    discount: i64,
    now: i64,
) -> Result<Result<(), UseRefused>, sqlx::Error> {
    let counted = sqlx::query(
        "UPDATE coupons SET used_count = used_count + 1
         WHERE id = $1 AND version = $2 AND disabled_at IS NULL AND (usage_limit IS NULL OR used_count < usage_limit)",
    )
    .bind(&coupon.id)
    .bind(coupon.version)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if !counted {
        let changed = sqlx::query_scalar::<_, i64>("SELECT version FROM coupons WHERE id = $1")
            .bind(&coupon.id)
            .fetch_optional(&mut **tx)
            .await?
            != Some(coupon.version);
        return Ok(Err(if changed {
            UseRefused::Changed
        } else {
            UseRefused::Exhausted
        }));
    }
    let limit = coupon.per_customer_limit.unwrap_or(i64::MAX);
    let customer_ok = sqlx::query(
        "INSERT INTO coupon_customer_uses (coupon_id, user_id, uses) VALUES ($1, $2, 1)
         ON CONFLICT (coupon_id, user_id) DO UPDATE SET uses = coupon_customer_uses.uses + 1
         WHERE coupon_customer_uses.uses < $3",
    )
    .bind(&coupon.id)
    .bind(user_id)
    .bind(limit)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if !customer_ok || limit < 1 {
        return Ok(Err(UseRefused::CustomerLimit));
    }
    sqlx::query(
        "INSERT INTO coupon_order_uses (order_id, coupon_id, user_id, discount_minor, used_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(order_id)
    .bind(&coupon.id)
    .bind(user_id)
    .bind(discount)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(Ok(()))
}

/// Gives back the coupon use of a cancelled order, once.
pub async fn release_coupon_use(tx: &mut Tx, order_id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let used: Option<(String, String)> = sqlx::query_as(
        "UPDATE coupon_order_uses SET released_at = $2 WHERE order_id = $1 AND released_at IS NULL
         RETURNING coupon_id, user_id",
    )
    .bind(order_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((coupon_id, user_id)) = used else {
        return Ok(false);
    };
    sqlx::query("UPDATE coupons SET used_count = used_count - 1 WHERE id = $1 AND used_count > 0")
        .bind(&coupon_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE coupon_customer_uses SET uses = uses - 1 WHERE coupon_id = $1 AND user_id = $2 AND uses > 0")
        .bind(&coupon_id)
        .bind(&user_id)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

// ----- returns -------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct ReturnRow {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub status: String,
    pub reason: String,
    pub refund_minor: i64,
    pub decision_note: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const RETURN_COLUMNS: &str =
    "id, order_id, user_id, status, reason, refund_minor, decision_note, version, created_at, updated_at";

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ReturnLineRow {
    pub return_id: String,
    pub line_no: i64,
    pub sku: String,
    pub quantity: i64,
    pub refund_minor: i64,
}

pub async fn insert_return(tx: &mut Tx, r: &ReturnRow, lines: &[ReturnLineRow]) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO returns ({RETURN_COLUMNS}) VALUES ({})",
        placeholders(1, 10)
    ))
    .bind(&r.id)
    .bind(&r.order_id)
    .bind(&r.user_id)
    .bind(&r.status)
    .bind(&r.reason)
    .bind(r.refund_minor)
    .bind(&r.decision_note)
    .bind(r.version)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(&mut **tx)
    .await?;
    for l in lines {
        sqlx::query(
            "INSERT INTO return_lines (return_id, line_no, sku, quantity, refund_minor) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&l.return_id)
        .bind(l.line_no)
        .bind(&l.sku)
        .bind(l.quantity)
        .bind(l.refund_minor)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub async fn return_row<'e, E>(executor: E, id: &str) -> Result<Option<ReturnRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("SELECT {RETURN_COLUMNS} FROM returns WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

pub async fn returns_of_order(pool: &AnyPool, order_id: &str) -> Result<Vec<ReturnRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RETURN_COLUMNS} FROM returns WHERE order_id = $1 ORDER BY id"
    ))
    .bind(order_id)
    .fetch_all(pool)
    .await
}

pub async fn return_lines(pool: &AnyPool, return_ids: &[String]) -> Result<Vec<ReturnLineRow>, sqlx::Error> {
    if return_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT return_id, line_no, sku, quantity, refund_minor FROM return_lines WHERE return_id IN ({})
         ORDER BY return_id, line_no",
        placeholders(1, return_ids.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in return_ids {
        query = query.bind(id);
    }
    query.fetch_all(pool).await
}

/// Returns newest first, optionally of one status, after the cursor `after` (a return id).
pub async fn list_returns(
    pool: &AnyPool,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ReturnRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RETURN_COLUMNS} FROM returns
         WHERE ($1 = '' OR status = $1) AND ($2 = '' OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(status.unwrap_or(""))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Moves a return from `from` to `to` if it is still in `from`.
pub async fn set_return_status(
    tx: &mut Tx,
    id: &str,
    from: &str,
    to: &str,
    note: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE returns SET status = $3, decision_note = COALESCE($4, decision_note), version = version + 1,
            updated_at = $5
         WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(note)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// Counts returned units on the order's lines; refuses (answers false) past what was bought.
pub async fn add_returned_quantity(tx: &mut Tx, order_id: &str, sku: &str, quantity: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE order_lines SET returned_quantity = returned_quantity + $3
         WHERE order_id = $1 AND sku = $2 AND returned_quantity + $3 <= quantity",
    )
    .bind(order_id)
    .bind(sku)
    .bind(quantity)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}
