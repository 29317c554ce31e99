//! The payments tables and queries. One SQL text serves SQLite and PostgreSQL.
//!
//! Money rules are enforced by the database, not by reading first: a refund reserves its
//! amount with one conditional `UPDATE … WHERE captured_minor - refunded_minor >= $amount`,
//! a `CHECK` keeps `refunded_minor <= captured_minor`, and a partial unique index allows one
//! captured payment per order. A webhook's receipt is inserted with `ON CONFLICT DO NOTHING`
//! in the transaction of its effect, so an event id has at most one effect.
//!
//! The `mock_*` tables are the mock provider's own state: it is a separate component that
//! happens to keep its books in the same database.

use platform::store::{Migration, Tx};
use sqlx::{AnyPool, FromRow};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "payments, refunds, webhook receipts, mock provider",
        sql: "CREATE TABLE payments (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL,
            order_number TEXT NOT NULL,
            user_id TEXT NOT NULL,
            method TEXT NOT NULL,
            status TEXT NOT NULL,
            amount_minor BIGINT NOT NULL,
            currency TEXT NOT NULL,
            provider TEXT NOT NULL,
            intent_id TEXT UNIQUE,
            redirect_url TEXT,
            reference TEXT NOT NULL UNIQUE,
            captured_minor BIGINT NOT NULL DEFAULT 0,
            refunded_minor BIGINT NOT NULL DEFAULT 0,
            refund_pending_minor BIGINT NOT NULL DEFAULT 0,
            captured_at BIGINT,
            failure_reason TEXT,
            auto_refund_reason TEXT,
            correlation_id TEXT,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            CHECK (amount_minor > 0),
            CHECK (captured_minor >= 0 AND refund_pending_minor >= 0),
            CHECK (refund_pending_minor <= refunded_minor AND refunded_minor <= captured_minor));
          CREATE UNIQUE INDEX payments_one_capture_per_order ON payments (order_id) WHERE captured_at IS NOT NULL;
          CREATE UNIQUE INDEX payments_one_open_per_order ON payments (order_id)
            WHERE status IN ('requires_action', 'awaiting_delivery');
          CREATE INDEX payments_order ON payments (order_id);
          CREATE INDEX payments_user ON payments (user_id);
          CREATE INDEX payments_status ON payments (status, id);
          CREATE TABLE refunds (
            id TEXT PRIMARY KEY,
            payment_id TEXT NOT NULL REFERENCES payments (id),
            order_id TEXT NOT NULL,
            amount_minor BIGINT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            idempotency_key TEXT UNIQUE,
            provider_refund_id TEXT UNIQUE,
            actor TEXT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            CHECK (amount_minor > 0));
          CREATE INDEX refunds_payment ON refunds (payment_id, id);
          CREATE TABLE webhook_receipts (
            event_id TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            signature_ok BIGINT NOT NULL,
            payment_id TEXT,
            received_at BIGINT NOT NULL,
            processed_at BIGINT,
            outcome TEXT NOT NULL);
          CREATE TABLE mock_intents (
            id TEXT PRIMARY KEY,
            payment_ref TEXT NOT NULL,
            amount_minor BIGINT NOT NULL,
            refunded_minor BIGINT NOT NULL DEFAULT 0,
            currency TEXT NOT NULL,
            method TEXT NOT NULL,
            status TEXT NOT NULL,
            order_ref TEXT NOT NULL,
            return_url TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            decided_at BIGINT,
            CHECK (refunded_minor <= amount_minor));
          CREATE TABLE mock_refunds (
            id TEXT PRIMARY KEY,
            intent_id TEXT NOT NULL REFERENCES mock_intents (id),
            amount_minor BIGINT NOT NULL,
            idempotency_key TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL)",
        postgres: None,
    },
    Migration {
        version: 2,
        name: "mock provider: when the merchant accepted each decision's webhook",
        sql: "ALTER TABLE mock_intents ADD COLUMN notified_at BIGINT;
          CREATE INDEX mock_intents_undecided ON mock_intents (created_at) WHERE status = 'requires_action';
          CREATE INDEX mock_intents_unnotified ON mock_intents (decided_at)
            WHERE notified_at IS NULL AND status IN ('succeeded', 'failed')",
        postgres: None,
    },
];

// ----- payments -----------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct PaymentRow {
    pub id: String,
    pub order_id: String,
    /// The order's human number, shown on the hosted page and the receipt.
    pub order_number: String,
    pub user_id: String,
    pub method: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    /// `mock` (online) or `cod`.
    pub provider: String,
    /// The provider's payment intent; absent for cash on delivery and while it is being created.
    pub intent_id: Option<String>,
    /// Where the buyer pays (the provider's hosted page).
    pub redirect_url: Option<String>,
    pub reference: String,
    pub captured_minor: i64,
    /// Refunded or being refunded: the amount no further refund may take again.
    pub refunded_minor: i64,
    /// The part of `refunded_minor` whose refunds are still with the provider.
    pub refund_pending_minor: i64,
    /// Set on the one capture that counts for the order (a duplicate capture leaves it empty).
    pub captured_at: Option<i64>,
    pub failure_reason: Option<String>,
    /// When set, whatever this payment captures is owed back in full (the order was cancelled,
    /// or another payment of the order was captured first).
    pub auto_refund_reason: Option<String>,
    /// The correlation id of the request that created the payment; events caused later by
    /// webhooks carry it, so a checkout can be followed end to end.
    pub correlation_id: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl PaymentRow {
    /// What has been refunded and confirmed by the provider.
    pub fn settled_refunds(&self) -> i64 {
        self.refunded_minor - self.refund_pending_minor
    }

    /// What another refund may still take.
    pub fn refundable(&self) -> i64 {
        self.captured_minor - self.refunded_minor
    }
}

const PAYMENT_COLUMNS: &str = "id, order_id, order_number, user_id, method, status, amount_minor, currency, provider, \
     intent_id, redirect_url, reference, captured_minor, refunded_minor, refund_pending_minor, captured_at, \
     failure_reason, auto_refund_reason, correlation_id, version, created_at, updated_at";

/// Inserts a payment; a unique violation means the order already has an open payment.
pub async fn insert_payment(tx: &mut Tx, p: &PaymentRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO payments ({PAYMENT_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
    ))
    .bind(&p.id)
    .bind(&p.order_id)
    .bind(&p.order_number)
    .bind(&p.user_id)
    .bind(&p.method)
    .bind(&p.status)
    .bind(p.amount_minor)
    .bind(&p.currency)
    .bind(&p.provider)
    .bind(&p.intent_id)
    .bind(&p.redirect_url)
    .bind(&p.reference)
    .bind(p.captured_minor)
    .bind(p.refunded_minor)
    .bind(p.refund_pending_minor)
    .bind(p.captured_at)
    .bind(&p.failure_reason)
    .bind(&p.auto_refund_reason)
    .bind(&p.correlation_id)
    .bind(p.version)
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn payment(pool: &AnyPool, id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Reads a payment and locks its row until the transaction ends (a no-op `UPDATE`: the
/// portable spelling of `SELECT … FOR UPDATE`), so decisions taken on it cannot race.
pub async fn lock_payment(tx: &mut Tx, id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET version = version WHERE id = $1 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
}

/// [`lock_payment`] by the provider's intent id.
pub async fn lock_by_intent(tx: &mut Tx, intent_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET version = version WHERE intent_id = $1 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(intent_id)
    .fetch_optional(&mut **tx)
    .await
}

/// The payment that stands for an order: the captured one if any, else the newest.
pub async fn current_for_order(pool: &AnyPool, order_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1
         ORDER BY CASE WHEN captured_at IS NULL THEN 1 ELSE 0 END, id DESC LIMIT 1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// The order's newest payment that neither failed nor was cancelled: the one a repeated
/// request to pay for the order answers with.
pub async fn live_for_order(pool: &AnyPool, order_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 AND status NOT IN ('failed', 'cancelled')
         ORDER BY CASE WHEN captured_at IS NULL THEN 1 ELSE 0 END, id DESC LIMIT 1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// Every payment of an order, oldest first, each locked until the transaction ends.
pub async fn lock_order_payments(tx: &mut Tx, order_id: &str) -> Result<Vec<PaymentRow>, sqlx::Error> {
    let mut rows: Vec<PaymentRow> = sqlx::query_as(&format!(
        "UPDATE payments SET version = version WHERE order_id = $1 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(order_id)
    .fetch_all(&mut **tx)
    .await?;
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rows)
}

/// Whether another payment of the order holds the order's capture.
pub async fn other_capture(tx: &mut Tx, order_id: &str, payment_id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT id FROM payments WHERE order_id = $1 AND captured_at IS NOT NULL AND id <> $2")
            .bind(order_id)
            .bind(payment_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
}

/// Records the provider's intent on a payment (unless a webhook recorded it first); answers
/// the payment as written, or `None` when it was not.
pub async fn set_intent(
    tx: &mut Tx,
    id: &str,
    intent_id: &str,
    redirect_url: &str,
    now: i64,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET intent_id = $2, redirect_url = $3, version = version + 1, updated_at = $4
         WHERE id = $1 AND (intent_id IS NULL OR intent_id = $2) RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .bind(intent_id)
    .bind(redirect_url)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

/// Attaches an intent to a payment a webhook found by its metadata before the creation recorded it.
pub async fn attach_intent(tx: &mut Tx, id: &str, intent_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET intent_id = $2 WHERE id = $1 AND intent_id IS NULL")
        .bind(id)
        .bind(intent_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes a payment whose intent could not be created, unless something happened to it
/// meanwhile. `true` when it was removed.
pub async fn delete_unstarted(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM payments WHERE id = $1 AND status = 'requires_action' AND intent_id IS NULL")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Payments whose intent creation never finished (the process stopped mid-way) before `before`.
pub async fn unstarted_before(pool: &AnyPool, before: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM payments WHERE status = 'requires_action' AND intent_id IS NULL AND created_at < $1
         ORDER BY id LIMIT {limit}"
    ))
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Records a capture of `amount`: the payment becomes `succeeded`. `captured_at` is `None` for a
/// capture that does not count for the order (another payment holds it).
pub async fn capture(
    tx: &mut Tx,
    id: &str,
    amount: i64,
    captured_at: Option<i64>,
    auto_refund_reason: Option<&str>,
    now: i64,
) -> Result<PaymentRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET status = 'succeeded', captured_minor = $2, captured_at = $3,
           auto_refund_reason = COALESCE(auto_refund_reason, $4), failure_reason = NULL,
           version = version + 1, updated_at = $5
         WHERE id = $1 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .bind(amount)
    .bind(captured_at)
    .bind(auto_refund_reason)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

/// Sets the status (and the failure reason, for `failed`).
pub async fn set_status(
    tx: &mut Tx,
    id: &str,
    status: &str,
    failure_reason: Option<&str>,
    now: i64,
) -> Result<PaymentRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET status = $2, failure_reason = COALESCE($3, failure_reason), version = version + 1,
           updated_at = $4
         WHERE id = $1 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(failure_reason)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

/// Marks every payment of the order as owed back in full if it ever captures.
pub async fn mark_auto_refund(tx: &mut Tx, order_id: &str, reason: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET auto_refund_reason = $2, updated_at = $3 WHERE order_id = $1 AND auto_refund_reason IS NULL",
    )
    .bind(order_id)
    .bind(reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Reserves `amount` for a refund if that much of the capture is not refunded yet. The only
/// way a refund takes money: the database checks and applies it in one step. `None`: too much.
pub async fn reserve_refund(tx: &mut Tx, id: &str, amount: i64, now: i64) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET refunded_minor = refunded_minor + $2, refund_pending_minor = refund_pending_minor + $2,
           version = version + 1, updated_at = $3
         WHERE id = $1 AND captured_minor > 0 AND captured_minor - refunded_minor >= $2 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .bind(amount)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

/// The provider confirmed a reserved refund: it is no longer pending.
pub async fn settle_refund(tx: &mut Tx, id: &str, amount: i64, now: i64) -> Result<PaymentRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET refund_pending_minor = refund_pending_minor - $2, version = version + 1, updated_at = $3
         WHERE id = $1 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .bind(amount)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

/// The provider refused a reserved refund: the amount is refundable again.
pub async fn release_refund(tx: &mut Tx, id: &str, amount: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET refunded_minor = refunded_minor - $2, refund_pending_minor = refund_pending_minor - $2,
           version = version + 1, updated_at = $3
         WHERE id = $1",
    )
    .bind(id)
    .bind(amount)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a refund the provider made on its own (one the service did not ask for), capped by
/// the database at what is not refunded yet. `None`: nothing of `amount` fits.
pub async fn add_settled_refund(
    tx: &mut Tx,
    id: &str,
    amount: i64,
    now: i64,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET refunded_minor = refunded_minor + $2, version = version + 1, updated_at = $3
         WHERE id = $1 AND captured_minor - refunded_minor >= $2 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .bind(amount)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

/// Which payments an admin list shows.
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    pub status: Option<String>,
    pub order_id: Option<String>,
    pub user_id: Option<String>,
}

/// A page of payments, newest first (ids are UUIDv7), before the id `before`.
pub async fn list_payments(
    pool: &AnyPool,
    filter: &PaymentFilter,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    let mut sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE 1 = 1");
    let mut binds: Vec<&str> = Vec::new();
    for (column, value) in [
        ("status", &filter.status),
        ("order_id", &filter.order_id),
        ("user_id", &filter.user_id),
    ] {
        if let Some(value) = value {
            binds.push(value);
            sql.push_str(&format!(" AND {column} = ${}", binds.len()));
        }
    }
    if let Some(before) = before {
        binds.push(before);
        sql.push_str(&format!(" AND id < ${}", binds.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    let mut query = sqlx::query_as(&sql);
    for bind in binds {
        query = query.bind(bind);
    }
    query.fetch_all(pool).await
}

/// Payments that captured money owed back in full and not yet (all) refunded.
pub async fn owed_refunds(pool: &AnyPool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM payments WHERE auto_refund_reason IS NOT NULL AND captured_minor > refunded_minor
         ORDER BY id LIMIT {limit}"
    ))
    .fetch_all(pool)
    .await
}

// ----- refunds ------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct RefundRow {
    pub id: String,
    pub payment_id: String,
    pub order_id: String,
    pub amount_minor: i64,
    pub status: String,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub provider_refund_id: Option<String>,
    pub actor: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const REFUND_COLUMNS: &str = "id, payment_id, order_id, amount_minor, status, reason, idempotency_key, \
     provider_refund_id, actor, created_at, updated_at";

/// Inserts a refund; a unique violation means the idempotency key (or the provider refund) is
/// recorded already.
pub async fn insert_refund(tx: &mut Tx, r: &RefundRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO refunds ({REFUND_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&r.id)
    .bind(&r.payment_id)
    .bind(&r.order_id)
    .bind(r.amount_minor)
    .bind(&r.status)
    .bind(&r.reason)
    .bind(&r.idempotency_key)
    .bind(&r.provider_refund_id)
    .bind(&r.actor)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn refund(pool: &AnyPool, id: &str) -> Result<Option<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn refund_by_key(pool: &AnyPool, key: &str) -> Result<Option<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(pool)
    .await
}

pub async fn refund_by_provider_id(tx: &mut Tx, provider_refund_id: &str) -> Result<Option<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE provider_refund_id = $1"
    ))
    .bind(provider_refund_id)
    .fetch_optional(&mut **tx)
    .await
}

/// A payment's refunds, oldest first.
pub async fn refunds_of(pool: &AnyPool, payment_id: &str) -> Result<Vec<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY id"
    ))
    .bind(payment_id)
    .fetch_all(pool)
    .await
}

/// Refunds still pending since before `before`: their provider call ended without the result
/// being recorded (the process stopped, or the database failed right after).
pub async fn stale_pending_refunds(pool: &AnyPool, before: i64, limit: i64) -> Result<Vec<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'pending' AND created_at < $1 ORDER BY id LIMIT {limit}"
    ))
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Marks a pending refund succeeded with the provider's id for it. `None`: it is not pending.
pub async fn succeed_refund(
    tx: &mut Tx,
    id: &str,
    provider_refund_id: Option<&str>,
    now: i64,
) -> Result<Option<RefundRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE refunds SET status = 'succeeded', provider_refund_id = $2, updated_at = $3
         WHERE id = $1 AND status = 'pending' RETURNING {REFUND_COLUMNS}"
    ))
    .bind(id)
    .bind(provider_refund_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

/// Removes a pending refund the provider did not make. `true` when it was pending.
pub async fn delete_pending_refund(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM refunds WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

// ----- webhook receipts ---------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct ReceiptRow {
    pub event_id: String,
    pub provider: String,
    pub event_type: String,
    pub payload: String,
    pub signature_ok: i64,
    pub payment_id: Option<String>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub outcome: String,
}

/// Records a verified webhook event. `false`: this event id was received before.
pub async fn insert_receipt(
    tx: &mut Tx,
    event_id: &str,
    provider: &str,
    event_type: &str,
    payload: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO webhook_receipts (event_id, provider, event_type, payload, signature_ok, payment_id,
           received_at, processed_at, outcome)
         VALUES ($1, $2, $3, $4, 1, NULL, $5, NULL, 'processing') ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(provider)
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn finish_receipt(
    tx: &mut Tx,
    event_id: &str,
    outcome: &str,
    payment_id: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_receipts SET outcome = $2, payment_id = $3, processed_at = $4 WHERE event_id = $1")
        .bind(event_id)
        .bind(outcome)
        .bind(payment_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn receipt(pool: &AnyPool, event_id: &str) -> Result<Option<ReceiptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, provider, event_type, payload, signature_ok, payment_id, received_at, processed_at, outcome
         FROM webhook_receipts WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(pool)
    .await
}

// ----- the mock provider's books ------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct IntentRow {
    pub id: String,
    /// The merchant's payment id, sent back in every webhook as metadata.
    pub payment_ref: String,
    pub amount_minor: i64,
    pub refunded_minor: i64,
    pub currency: String,
    pub method: String,
    /// `requires_action`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub order_ref: String,
    pub return_url: String,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    /// When the merchant accepted the webhook of the decision. Empty while a decision is still
    /// to be told: the catch-up pass delivers it again until the merchant accepts it.
    pub notified_at: Option<i64>,
}

const INTENT_COLUMNS: &str = "id, payment_ref, amount_minor, refunded_minor, currency, method, status, order_ref, \
     return_url, created_at, decided_at, notified_at";

pub async fn insert_intent(pool: &AnyPool, i: &IntentRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO mock_intents ({INTENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(&i.id)
    .bind(&i.payment_ref)
    .bind(i.amount_minor)
    .bind(i.refunded_minor)
    .bind(&i.currency)
    .bind(&i.method)
    .bind(&i.status)
    .bind(&i.order_ref)
    .bind(&i.return_url)
    .bind(i.created_at)
    .bind(i.decided_at)
    .bind(i.notified_at)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn intent(pool: &AnyPool, id: &str) -> Result<Option<IntentRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {INTENT_COLUMNS} FROM mock_intents WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Moves an undecided intent to `status`, once. `None`: unknown or decided already.
pub async fn decide_intent(pool: &AnyPool, id: &str, status: &str, now: i64) -> Result<Option<IntentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE mock_intents SET status = $2, decided_at = $3 WHERE id = $1 AND status = 'requires_action'
         RETURNING {INTENT_COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// Undecided intents created before `before`, oldest first: in automatic mode, the ones whose
/// decision was lost with the process that was to make it.
pub async fn undecided_before(pool: &AnyPool, before: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM mock_intents WHERE status = 'requires_action' AND created_at < $1
         ORDER BY created_at LIMIT {limit}"
    ))
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Intents approved or declined before `before` whose webhook the merchant has not accepted,
/// oldest decision first. Cancelled intents are left out: the merchant asked for those.
pub async fn unnotified_before(pool: &AnyPool, before: i64, limit: i64) -> Result<Vec<IntentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {INTENT_COLUMNS} FROM mock_intents
         WHERE notified_at IS NULL AND status IN ('succeeded', 'failed') AND decided_at < $1
         ORDER BY decided_at LIMIT {limit}"
    ))
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Records that the merchant accepted the webhook of an intent's decision (the first time only).
pub async fn mark_notified(pool: &AnyPool, id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE mock_intents SET notified_at = $2 WHERE id = $1 AND notified_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct MockRefundRow {
    pub id: String,
    pub intent_id: String,
    pub amount_minor: i64,
    pub idempotency_key: String,
    pub created_at: i64,
}

pub async fn mock_refund_by_key(tx: &mut Tx, key: &str) -> Result<Option<MockRefundRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, intent_id, amount_minor, idempotency_key, created_at FROM mock_refunds WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut **tx)
    .await
}

/// Takes `amount` of a succeeded intent's unrefunded money. `None`: not succeeded, or too much.
pub async fn refund_intent(tx: &mut Tx, id: &str, amount: i64) -> Result<Option<IntentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE mock_intents SET refunded_minor = refunded_minor + $2
         WHERE id = $1 AND status = 'succeeded' AND amount_minor - refunded_minor >= $2 RETURNING {INTENT_COLUMNS}"
    ))
    .bind(id)
    .bind(amount)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn insert_mock_refund(tx: &mut Tx, r: &MockRefundRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO mock_refunds (id, intent_id, amount_minor, idempotency_key, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&r.id)
    .bind(&r.intent_id)
    .bind(r.amount_minor)
    .bind(&r.idempotency_key)
    .bind(r.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
