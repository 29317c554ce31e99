//! The inventory's tables and queries. One SQL text serves SQLite and PostgreSQL, but for a
//! batch's writes, which PostgreSQL takes as one statement ([`write_batch`]).
//!
//! Every change of a stock level is one conditional `UPDATE … WHERE <the rule still holds>`:
//! the database checks the rule and applies the change atomically, so there is no
//! read-then-write race and no lock service. A `CHECK` on the table is the last line of defence.

use std::collections::BTreeMap;

use platform::events::Event;
use platform::outbox;
use platform::store::{json_values, placeholders, value_rows, Backend, Migration, Tx, ROWS_PER_STATEMENT};
use serde_json::json;
use sqlx::{AnyPool, FromRow, Row};

use crate::domain::{Levels, Line, Movement};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "stock, ledger, reservations",
    sql: "CREATE TABLE stock (
            sku TEXT PRIMARY KEY,
            product_id TEXT,
            seller_id TEXT,
            on_hand BIGINT NOT NULL,
            reserved BIGINT NOT NULL,
            low_stock_threshold BIGINT NOT NULL,
            low_stock_alerted BIGINT NOT NULL,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            discontinued_at BIGINT,
            CHECK (reserved >= 0 AND on_hand >= reserved));
          CREATE INDEX stock_product ON stock (product_id);
          CREATE TABLE stock_ledger (
            id SERIAL_KEY,
            sku TEXT NOT NULL,
            kind TEXT NOT NULL,
            on_hand_delta BIGINT NOT NULL,
            reserved_delta BIGINT NOT NULL,
            on_hand_after BIGINT NOT NULL,
            reserved_after BIGINT NOT NULL,
            reason TEXT,
            reference TEXT,
            actor TEXT,
            created_at BIGINT NOT NULL);
          CREATE INDEX stock_ledger_sku ON stock_ledger (sku, id);
          CREATE TABLE reservations (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            release_reason TEXT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL);
          CREATE INDEX reservations_expiry ON reservations (status, expires_at);
          CREATE TABLE reservation_lines (
            reservation_id TEXT NOT NULL REFERENCES reservations (id),
            sku TEXT NOT NULL,
            quantity BIGINT NOT NULL,
            PRIMARY KEY (reservation_id, sku));
          CREATE INDEX reservation_lines_sku ON reservation_lines (sku);
          CREATE TABLE restocks (
            reference TEXT PRIMARY KEY,
            created_at BIGINT NOT NULL)",
    postgres: None,
}];

// ----- stock --------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct StockRow {
    pub sku: String,
    pub product_id: Option<String>,
    pub seller_id: Option<String>,
    pub on_hand: i64,
    pub reserved: i64,
    pub low_stock_threshold: i64,
    pub low_stock_alerted: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub discontinued_at: Option<i64>,
}

impl StockRow {
    pub fn levels(&self) -> Levels {
        Levels {
            on_hand: self.on_hand,
            reserved: self.reserved,
            low_stock_threshold: self.low_stock_threshold,
            low_stock_alerted: self.low_stock_alerted != 0,
        }
    }

    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

const STOCK_COLUMNS: &str = "sku, product_id, seller_id, on_hand, reserved, low_stock_threshold, \
     low_stock_alerted, version, created_at, updated_at, discontinued_at";

/// Registers a SKU of a product with no stock, or re-attaches a known one (a SKU that moves to
/// another product, or comes back after its product was deleted) keeping its levels.
pub async fn ensure_sku(
    tx: &mut Tx,
    sku: &str,
    product_id: &str,
    seller_id: Option<&str>,
    threshold: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO stock ({STOCK_COLUMNS}) VALUES ($1, $2, $3, 0, 0, $4, 0, 1, $5, $5, NULL)
         ON CONFLICT (sku) DO UPDATE SET product_id = excluded.product_id,
           seller_id = excluded.seller_id, discontinued_at = NULL"
    ))
    .bind(sku)
    .bind(product_id)
    .bind(seller_id)
    .bind(threshold)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Registers a SKU with `on_hand` units unless it is known already; `true` when it was new.
pub async fn insert_stocked(
    tx: &mut Tx,
    sku: &str,
    product_id: &str,
    seller_id: Option<&str>,
    on_hand: i64,
    threshold: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(&format!(
        "INSERT INTO stock ({STOCK_COLUMNS}) VALUES ($1, $2, $3, $4, 0, $5, 0, 1, $6, $6, NULL)
         ON CONFLICT (sku) DO NOTHING"
    ))
    .bind(sku)
    .bind(product_id)
    .bind(seller_id)
    .bind(on_hand)
    .bind(threshold)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// SKUs of `product_id` that are not among `keep`: the product dropped them.
pub async fn skus_of_product(tx: &mut Tx, product_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT sku FROM stock WHERE product_id = $1 AND discontinued_at IS NULL ORDER BY sku")
        .bind(product_id)
        .fetch_all(&mut **tx)
        .await
}

/// Marks a SKU as no longer sold: nothing more can be reserved; its history stays.
pub async fn discontinue(tx: &mut Tx, sku: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE stock SET discontinued_at = $2 WHERE sku = $1 AND discontinued_at IS NULL")
        .bind(sku)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn stock(pool: &AnyPool, sku: &str) -> Result<Option<StockRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {STOCK_COLUMNS} FROM stock WHERE sku = $1"))
        .bind(sku)
        .fetch_optional(pool)
        .await
}

pub async fn stock_in(tx: &mut Tx, sku: &str) -> Result<Option<StockRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {STOCK_COLUMNS} FROM stock WHERE sku = $1"))
        .bind(sku)
        .fetch_optional(&mut **tx)
        .await
}

/// The rows of the given SKUs (unknown ones are absent), in SKU order.
pub async fn stocks(pool: &AnyPool, skus: &[String]) -> Result<Vec<StockRow>, sqlx::Error> {
    if skus.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {STOCK_COLUMNS} FROM stock WHERE sku IN ({}) ORDER BY sku",
        placeholders(1, skus.len())
    );
    let mut query = sqlx::query_as(&sql);
    for sku in skus {
        query = query.bind(sku);
    }
    query.fetch_all(pool).await
}

/// The rows of the given SKUs inside a transaction, in SKU order. On PostgreSQL each row is
/// locked as it is read, so in SKU order, the order every writer of several rows follows: two
/// such transactions never wait on each other in opposite orders. The SKUs are bound as one
/// JSON array, so the statement's text (and plan) is the same for any number of them.
pub async fn stocks_in(tx: &mut Tx, skus: &[String]) -> Result<Vec<StockRow>, sqlx::Error> {
    let backend = backend_of(tx);
    let sql = format!(
        "SELECT {STOCK_COLUMNS} FROM stock WHERE sku IN ({}) ORDER BY sku{}",
        json_values(backend, "$1"),
        lock_clause(backend, "")
    );
    sqlx::query_as(&sql).bind(json_list(skus)).fetch_all(&mut **tx).await
}

/// The backend of a transaction: SQLite unless it says PostgreSQL.
fn backend_of(tx: &mut Tx) -> Backend {
    Backend::of(tx).unwrap_or(Backend::Sqlite)
}

/// ` FOR UPDATE[ OF tables]` on PostgreSQL, where a batch locks the rows it reads; nothing on
/// SQLite, whose one writer holds the whole database.
fn lock_clause(backend: Backend, of: &str) -> String {
    match backend {
        Backend::Postgres if of.is_empty() => " FOR UPDATE".to_owned(),
        Backend::Postgres => format!(" FOR UPDATE OF {of}"),
        Backend::Sqlite => String::new(),
    }
}

fn json_list(values: &[String]) -> String {
    serde_json::to_string(values).expect("a list of strings is JSON")
}

/// New levels for a SKU, to be written only if the row still holds the old ones.
#[derive(Debug, Clone)]
pub struct LevelChange {
    pub sku: String,
    pub from: Levels,
    pub to: Levels,
}

/// Writes each SKU's new levels where the row still holds its old ones (a compare-and-set, in
/// one statement per few hundred SKUs). Answers how many rows it changed: fewer than
/// `changes.len()` means some row moved meanwhile, and the caller must not keep the rest.
pub async fn set_levels_unchanged_since(tx: &mut Tx, changes: &[LevelChange], now: i64) -> Result<u64, sqlx::Error> {
    let mut changed = 0;
    for chunk in changes.chunks(ROWS_PER_STATEMENT) {
        let picks: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = |k: usize| 7 * i + k + 2;
                format!(
                    "SELECT CAST(${} AS TEXT) AS sku, CAST(${} AS BIGINT) AS on_hand, CAST(${} AS BIGINT) AS reserved, \
                     CAST(${} AS BIGINT) AS alerted, CAST(${} AS BIGINT) AS old_on_hand, \
                     CAST(${} AS BIGINT) AS old_reserved, CAST(${} AS BIGINT) AS old_alerted",
                    p(0), p(1), p(2), p(3), p(4), p(5), p(6)
                )
            })
            .collect();
        let sql = format!(
            "UPDATE stock SET on_hand = q.on_hand, reserved = q.reserved, low_stock_alerted = q.alerted, updated_at = $1
             FROM ({}) AS q
             WHERE stock.sku = q.sku AND stock.on_hand = q.old_on_hand AND stock.reserved = q.old_reserved
               AND stock.low_stock_alerted = q.old_alerted",
            picks.join(" UNION ALL ")
        );
        let mut query = sqlx::query(&sql).bind(now);
        for change in chunk {
            query = query
                .bind(&change.sku)
                .bind(change.to.on_hand)
                .bind(change.to.reserved)
                .bind(i64::from(change.to.low_stock_alerted))
                .bind(change.from.on_hand)
                .bind(change.from.reserved)
                .bind(i64::from(change.from.low_stock_alerted));
        }
        changed += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(changed)
}

/// Which stock rows an admin list shows.
#[derive(Debug, Clone, Default)]
pub struct StockFilter {
    pub low_stock: bool,
    pub product_id: Option<String>,
    /// SKUs starting with this text.
    pub sku_prefix: Option<String>,
}

/// A page of stock rows in SKU order after `after`.
pub async fn list_stock(
    pool: &AnyPool,
    filter: &StockFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<StockRow>, sqlx::Error> {
    let mut sql = format!("SELECT {STOCK_COLUMNS} FROM stock WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    if filter.low_stock {
        sql.push_str(" AND low_stock_threshold > 0 AND on_hand - reserved <= low_stock_threshold");
    }
    if let Some(product) = &filter.product_id {
        binds.push(product.clone());
        sql.push_str(&format!(" AND product_id = ${}", binds.len()));
    }
    if let Some(prefix) = &filter.sku_prefix {
        // SKUs are plain codes (no `%` or `_` wildcards can hide in a valid prefix but `_`).
        binds.push(format!("{}%", prefix.replace('_', "\\_")));
        sql.push_str(&format!(" AND sku LIKE ${} ESCAPE '\\'", binds.len()));
    }
    if let Some(after) = after {
        binds.push(after.to_owned());
        sql.push_str(&format!(" AND sku > ${}", binds.len()));
    }
    sql.push_str(&format!(" ORDER BY sku LIMIT {limit}"));
    let mut query = sqlx::query_as(&sql);
    for bind in &binds {
        query = query.bind(bind);
    }
    query.fetch_all(pool).await
}

/// The levels after a change, as `UPDATE … RETURNING` gives them.
#[derive(Debug, Clone, FromRow)]
pub struct After {
    pub on_hand: i64,
    pub reserved: i64,
    pub low_stock_threshold: i64,
    pub low_stock_alerted: i64,
    pub product_id: Option<String>,
}

impl After {
    pub fn levels(&self) -> Levels {
        Levels {
            on_hand: self.on_hand,
            reserved: self.reserved,
            low_stock_threshold: self.low_stock_threshold,
            low_stock_alerted: self.low_stock_alerted != 0,
        }
    }
}

const RETURNING: &str = "RETURNING on_hand, reserved, low_stock_threshold, low_stock_alerted, product_id";

/// Sets `on_hand` (and optionally the threshold) if the level is still `expected_on_hand`, the
/// version matches when given, and the new level covers what is reserved. `None`: one of those
/// no longer holds.
pub async fn set_levels(
    tx: &mut Tx,
    sku: &str,
    expected_on_hand: i64,
    on_hand: i64,
    threshold: i64,
    version: Option<i64>,
    now: i64,
) -> Result<Option<After>, sqlx::Error> {
    let version_check = if version.is_some() { " AND version = $6" } else { "" };
    let sql = format!(
        "UPDATE stock SET on_hand = $2, low_stock_threshold = $3, version = version + 1, updated_at = $4
         WHERE sku = $1 AND on_hand = $5 AND reserved <= $2{version_check} {RETURNING}"
    );
    let mut query = sqlx::query_as(&sql)
        .bind(sku)
        .bind(on_hand)
        .bind(threshold)
        .bind(now)
        .bind(expected_on_hand);
    if let Some(version) = version {
        query = query.bind(version);
    }
    query.fetch_optional(&mut **tx).await
}

/// Adds `delta` (either sign) to `on_hand` if the result still covers what is reserved.
pub async fn adjust_on_hand(
    tx: &mut Tx,
    sku: &str,
    delta: i64,
    version: Option<i64>,
    now: i64,
) -> Result<Option<After>, sqlx::Error> {
    let version_check = if version.is_some() { " AND version = $4" } else { "" };
    let sql = format!(
        "UPDATE stock SET on_hand = on_hand + $2, version = version + 1, updated_at = $3
         WHERE sku = $1 AND on_hand + $2 >= reserved AND on_hand + $2 <= {max}{version_check} {RETURNING}",
        max = crate::domain::MAX_ON_HAND
    );
    let mut query = sqlx::query_as(&sql).bind(sku).bind(delta).bind(now);
    if let Some(version) = version {
        query = query.bind(version);
    }
    query.fetch_optional(&mut **tx).await
}

/// One movement of units: `set` (with `$2` the quantity) applied where `condition` holds.
async fn move_units(
    tx: &mut Tx,
    sku: &str,
    set: &str,
    condition: &str,
    quantity: i64,
    now: i64,
) -> Result<Option<After>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE stock SET {set}, updated_at = $3 WHERE sku = $1{condition} {RETURNING}"
    ))
    .bind(sku)
    .bind(quantity)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

/// The same movement of units for every line (distinct SKUs): what each line's SKU holds after,
/// `None` where `condition` did not hold, in the order of `lines`.
///
/// One statement on SQLite, whose single writer takes no row locks. On PostgreSQL one statement
/// per line, in the order given (SKU order, as every caller passes them): one statement would
/// lock the rows in an order of the planner's choosing, and two such could deadlock.
async fn move_lines(
    tx: &mut Tx,
    one_statement: bool,
    lines: &[Line],
    set: &str,
    condition: &str,
    now: i64,
) -> Result<Vec<Option<After>>, sqlx::Error> {
    if !one_statement || lines.len() < 2 {
        let mut after = Vec::with_capacity(lines.len());
        for line in lines {
            after.push(move_units(tx, &line.sku, set, condition, line.quantity, now).await?);
        }
        return Ok(after);
    }
    let picks: Vec<String> = (0..lines.len())
        .map(|i| format!("SELECT ${} AS sku, ${} AS quantity", 2 * i + 2, 2 * i + 3))
        .collect();
    let sql = format!(
        "UPDATE stock SET {set}, updated_at = $1 FROM ({picks}) AS q WHERE stock.sku = q.sku{condition} \
         RETURNING sku, on_hand, reserved, low_stock_threshold, low_stock_alerted, product_id",
        set = set.replace("$2", "q.quantity"),
        condition = condition.replace("$2", "q.quantity"),
        picks = picks.join(" UNION ALL "),
    );
    let mut query = sqlx::query_as::<_, MovedRow>(&sql).bind(now);
    for line in lines {
        query = query.bind(&line.sku).bind(line.quantity);
    }
    let mut moved = query.fetch_all(&mut **tx).await?;
    Ok(lines
        .iter()
        .map(|line| {
            let at = moved.iter().position(|row| row.sku == line.sku)?;
            Some(moved.swap_remove(at).after)
        })
        .collect())
}

/// A row [`move_lines`] moved: its SKU and its levels after.
#[derive(FromRow)]
struct MovedRow {
    sku: String,
    #[sqlx(flatten)]
    after: After,
}

/// Reserves each line's units if that many are available (and the SKU is still sold).
pub async fn reserve_lines(
    tx: &mut Tx,
    one_statement: bool,
    lines: &[Line],
    now: i64,
) -> Result<Vec<Option<After>>, sqlx::Error> {
    let condition = " AND discontinued_at IS NULL AND on_hand - reserved >= $2";
    move_lines(tx, one_statement, lines, "reserved = reserved + $2", condition, now).await
}

/// Turns each line's reserved units into sold ones: both levels fall by its quantity.
pub async fn commit_lines(
    tx: &mut Tx,
    one_statement: bool,
    lines: &[Line],
    now: i64,
) -> Result<Vec<Option<After>>, sqlx::Error> {
    let set = "on_hand = on_hand - $2, reserved = reserved - $2";
    move_lines(tx, one_statement, lines, set, " AND reserved >= $2", now).await
}

/// Gives each line's reserved units back.
pub async fn release_lines(
    tx: &mut Tx,
    one_statement: bool,
    lines: &[Line],
    now: i64,
) -> Result<Vec<Option<After>>, sqlx::Error> {
    move_lines(
        tx,
        one_statement,
        lines,
        "reserved = reserved - $2",
        " AND reserved >= $2",
        now,
    )
    .await
}

/// Sells units nobody holds (an order paid after its reservation expired): on hand goes down
/// only if that many are free.
pub async fn sell_free_units(tx: &mut Tx, sku: &str, quantity: i64, now: i64) -> Result<Option<After>, sqlx::Error> {
    move_units(
        tx,
        sku,
        "on_hand = on_hand - $2",
        " AND on_hand - reserved >= $2",
        quantity,
        now,
    )
    .await
}

/// Puts sold units back on hand.
pub async fn restock_units(tx: &mut Tx, sku: &str, quantity: i64, now: i64) -> Result<Option<After>, sqlx::Error> {
    move_units(tx, sku, "on_hand = on_hand + $2", "", quantity, now).await
}

pub async fn set_alerted(tx: &mut Tx, sku: &str, alerted: bool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE stock SET low_stock_alerted = $2 WHERE sku = $1")
        .bind(sku)
        .bind(i64::from(alerted))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ----- ledger -------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct LedgerRow {
    pub id: i64,
    pub sku: String,
    pub kind: String,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    pub reason: Option<String>,
    pub reference: Option<String>,
    pub actor: Option<String>,
    pub created_at: i64,
}

/// One ledger entry: what moved, why, and the levels it left.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub sku: &'a str,
    pub kind: Movement,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub after: &'a After,
    pub reason: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub at: i64,
}

pub async fn record(tx: &mut Tx, entry: Entry<'_>) -> Result<(), sqlx::Error> {
    record_all(tx, &[entry]).await
}

/// Writes several ledger entries in one statement (a reservation's lines).
pub async fn record_all(tx: &mut Tx, entries: &[Entry<'_>]) -> Result<(), sqlx::Error> {
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO stock_ledger (sku, kind, on_hand_delta, reserved_delta, on_hand_after, reserved_after,
               reason, reference, actor, created_at) VALUES {}",
            value_rows(chunk.len(), 10)
        );
        let mut query = sqlx::query(&sql);
        for entry in chunk {
            query = query
                .bind(entry.sku)
                .bind(entry.kind.as_str())
                .bind(entry.on_hand_delta)
                .bind(entry.reserved_delta)
                .bind(entry.after.on_hand)
                .bind(entry.after.reserved)
                .bind(entry.reason)
                .bind(entry.reference)
                .bind(entry.actor)
                .bind(entry.at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A SKU's ledger, newest first, before the entry `before`.
pub async fn ledger(pool: &AnyPool, sku: &str, before: Option<i64>, limit: i64) -> Result<Vec<LedgerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, sku, kind, on_hand_delta, reserved_delta, on_hand_after, reserved_after, reason, reference,
           actor, created_at
         FROM stock_ledger WHERE sku = $1 AND id < $2 ORDER BY id DESC LIMIT {limit}"
    ))
    .bind(sku)
    .bind(before.unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

// ----- reservations -------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct ReservationRow {
    pub id: String,
    pub order_id: String,
    pub status: String,
    pub expires_at: i64,
    pub release_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const RESERVATION_COLUMNS: &str = "id, order_id, status, expires_at, release_reason, created_at, updated_at";

/// Inserts an active reservation; a unique violation means the order already has one.
pub async fn insert_reservation(tx: &mut Tx, r: &ReservationRow) -> Result<(), sqlx::Error> {
    insert_reservations(tx, std::slice::from_ref(r)).await
}

/// Inserts reservations, a few hundred to a statement; a unique violation means an order
/// already has one.
pub async fn insert_reservations(tx: &mut Tx, reservations: &[ReservationRow]) -> Result<(), sqlx::Error> {
    for chunk in reservations.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES {}",
            value_rows(chunk.len(), 7)
        );
        let mut query = sqlx::query(&sql);
        for r in chunk {
            query = query
                .bind(&r.id)
                .bind(&r.order_id)
                .bind(&r.status)
                .bind(r.expires_at)
                .bind(&r.release_reason)
                .bind(r.created_at)
                .bind(r.updated_at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes a reservation's lines in one statement.
pub async fn insert_lines(tx: &mut Tx, reservation_id: &str, lines: &[Line]) -> Result<(), sqlx::Error> {
    let rows: Vec<(&str, &Line)> = lines.iter().map(|line| (reservation_id, line)).collect();
    insert_lines_of(tx, &rows).await
}

/// Writes the lines of several reservations, as (reservation id, line), a few hundred to a
/// statement.
pub async fn insert_lines_of(tx: &mut Tx, lines: &[(&str, &Line)]) -> Result<(), sqlx::Error> {
    for chunk in lines.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO reservation_lines (reservation_id, sku, quantity) VALUES {}",
            value_rows(chunk.len(), 3)
        );
        let mut query = sqlx::query(&sql);
        for (reservation_id, line) in chunk {
            query = query.bind(*reservation_id).bind(&line.sku).bind(line.quantity);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The reservations of the given orders with their lines, one row per line (a reservation
/// without lines gives one row and `None`), in order-id and SKU order, inside a transaction.
/// On PostgreSQL the reservation rows are locked as they are read. Like [`stocks_in`], one
/// statement text for any number of orders.
pub async fn reservations_with_lines_in(
    tx: &mut Tx,
    order_ids: &[String],
) -> Result<Vec<(ReservationRow, Option<Line>)>, sqlx::Error> {
    let backend = backend_of(tx);
    let sql = format!(
        "SELECT r.id, r.order_id, r.status, r.expires_at, r.release_reason, r.created_at, r.updated_at,
           l.sku, l.quantity
         FROM reservations r LEFT JOIN reservation_lines l ON l.reservation_id = r.id
         WHERE r.order_id IN ({}) ORDER BY r.order_id, l.sku{}",
        json_values(backend, "$1"),
        lock_clause(backend, "r")
    );
    let mut rows = Vec::with_capacity(order_ids.len());
    for row in sqlx::query(&sql)
        .bind(json_list(order_ids))
        .fetch_all(&mut **tx)
        .await?
    {
        let reservation = ReservationRow::from_row(&row)?;
        let sku: Option<String> = row.try_get("sku")?;
        let quantity: Option<i64> = row.try_get("quantity")?;
        let line = sku.zip(quantity).map(|(sku, quantity)| Line { sku, quantity });
        rows.push((reservation, line));
    }
    Ok(rows)
}

/// Moves the given reservations (by id) to `status` where they are still active. Answers how
/// many it moved: fewer than `ids.len()` means one was finished meanwhile.
pub async fn finish_reservations(
    tx: &mut Tx,
    ids: &[&str],
    status: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let mut moved = 0;
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE reservations SET status = $1, release_reason = $2, updated_at = $3
             WHERE status = 'active' AND id IN ({})",
            placeholders(4, chunk.len())
        );
        let mut query = sqlx::query(&sql).bind(status).bind(reason).bind(now);
        for id in chunk {
            query = query.bind(*id);
        }
        moved += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(moved)
}

/// A reservation a batch finishes: its id, new status and release reason.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    pub id: &'a str,
    pub status: &'a str,
    pub reason: Option<&'a str>,
}

/// Everything one batch of reservation commands writes.
#[derive(Debug, Clone, Copy)]
pub struct BatchWrites<'a> {
    /// New reservations as the batch leaves them (one it also finished goes in finished).
    pub created: &'a [ReservationRow],
    /// Their lines, as (reservation id, line).
    pub lines: &'a [(&'a str, &'a Line)],
    /// Reservations read by the batch that it finishes (each one still active, it expects).
    pub finished: &'a [Finish<'a>],
    /// New levels of every SKU the batch moved, each a compare-and-set on the levels read.
    pub levels: &'a [LevelChange],
    pub ledger: &'a [Entry<'a>],
    pub events: &'a [Event],
    pub now: i64,
}

/// What a batch's writes found: how many reservations were still active to finish and how
/// many stock rows still held the levels read. Either short of what the batch expected means
/// another writer got there first, and the caller must roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub finished: u64,
    pub levels: u64,
}

/// Writes a batch inside the caller's transaction. On PostgreSQL it is one statement (a
/// data-modifying `WITH` over rows bound as JSON arrays): one round trip, and a text that does
/// not change with the batch's size, so it is planned once per connection. On SQLite, in
/// process, it is a multi-row statement per table.
pub async fn write_batch(tx: &mut Tx, writes: &BatchWrites<'_>) -> Result<BatchCounts, sqlx::Error> {
    match backend_of(tx) {
        Backend::Postgres => write_batch_in_one(tx, writes).await,
        Backend::Sqlite => write_batch_per_table(tx, writes).await,
    }
}

async fn write_batch_per_table(tx: &mut Tx, w: &BatchWrites<'_>) -> Result<BatchCounts, sqlx::Error> {
    insert_reservations(tx, w.created).await?;
    insert_lines_of(tx, w.lines).await?;
    let mut by_outcome: BTreeMap<(&str, Option<&str>), Vec<&str>> = BTreeMap::new();
    for finish in w.finished {
        by_outcome
            .entry((finish.status, finish.reason))
            .or_default()
            .push(finish.id);
    }
    let mut finished = 0;
    for ((status, reason), ids) in by_outcome {
        finished += finish_reservations(tx, &ids, status, reason, w.now).await?;
    }
    let levels = set_levels_unchanged_since(tx, w.levels, w.now).await?;
    record_all(tx, w.ledger).await?;
    outbox::enqueue_all(tx, w.events).await?;
    Ok(BatchCounts { finished, levels })
}

async fn write_batch_in_one(tx: &mut Tx, w: &BatchWrites<'_>) -> Result<BatchCounts, sqlx::Error> {
    let created: Vec<serde_json::Value> = w
        .created
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "order_id": r.order_id, "status": r.status, "expires_at": r.expires_at,
                "release_reason": r.release_reason, "created_at": r.created_at, "updated_at": r.updated_at,
            })
        })
        .collect();
    let lines: Vec<serde_json::Value> = w
        .lines
        .iter()
        .map(|(reservation_id, line)| json!({"reservation_id": reservation_id, "sku": line.sku, "quantity": line.quantity}))
        .collect();
    let finished: Vec<serde_json::Value> = w
        .finished
        .iter()
        .map(|f| json!({"id": f.id, "status": f.status, "release_reason": f.reason}))
        .collect();
    let levels: Vec<serde_json::Value> = w
        .levels
        .iter()
        .map(|c| {
            json!({
                "sku": c.sku, "on_hand": c.to.on_hand, "reserved": c.to.reserved,
                "alerted": i64::from(c.to.low_stock_alerted), "old_on_hand": c.from.on_hand,
                "old_reserved": c.from.reserved, "old_alerted": i64::from(c.from.low_stock_alerted),
            })
        })
        .collect();
    let ledger: Vec<serde_json::Value> = w
        .ledger
        .iter()
        .enumerate()
        .map(|(n, e)| {
            json!({
                "n": n, "sku": e.sku, "kind": e.kind.as_str(), "on_hand_delta": e.on_hand_delta,
                "reserved_delta": e.reserved_delta, "on_hand_after": e.after.on_hand,
                "reserved_after": e.after.reserved, "reason": e.reason, "reference": e.reference,
                "actor": e.actor, "created_at": e.at,
            })
        })
        .collect();
    let sql = format!(
        "WITH new_reservations AS (
           INSERT INTO reservations ({RESERVATION_COLUMNS})
           SELECT {RESERVATION_COLUMNS} FROM json_to_recordset($1::json) AS r(id TEXT, order_id TEXT,
             status TEXT, expires_at BIGINT, release_reason TEXT, created_at BIGINT, updated_at BIGINT)
         ), new_lines AS (
           INSERT INTO reservation_lines (reservation_id, sku, quantity)
           SELECT reservation_id, sku, quantity
           FROM json_to_recordset($2::json) AS l(reservation_id TEXT, sku TEXT, quantity BIGINT)
         ), finished AS (
           UPDATE reservations SET status = f.status, release_reason = f.release_reason, updated_at = $7
           FROM json_to_recordset($3::json) AS f(id TEXT, status TEXT, release_reason TEXT)
           WHERE reservations.id = f.id AND reservations.status = 'active'
           RETURNING 1
         ), levels AS (
           UPDATE stock SET on_hand = q.on_hand, reserved = q.reserved, low_stock_alerted = q.alerted,
             updated_at = $7
           FROM json_to_recordset($4::json) AS q(sku TEXT, on_hand BIGINT, reserved BIGINT, alerted BIGINT,
             old_on_hand BIGINT, old_reserved BIGINT, old_alerted BIGINT)
           WHERE stock.sku = q.sku AND stock.on_hand = q.old_on_hand AND stock.reserved = q.old_reserved
             AND stock.low_stock_alerted = q.old_alerted
           RETURNING 1
         ), ledger AS (
           INSERT INTO stock_ledger (sku, kind, on_hand_delta, reserved_delta, on_hand_after, reserved_after,
             reason, reference, actor, created_at)
           SELECT sku, kind, on_hand_delta, reserved_delta, on_hand_after, reserved_after, reason, reference,
             actor, created_at
           FROM json_to_recordset($5::json) AS e(n BIGINT, sku TEXT, kind TEXT, on_hand_delta BIGINT,
             reserved_delta BIGINT, on_hand_after BIGINT, reserved_after BIGINT, reason TEXT, reference TEXT,
             actor TEXT, created_at BIGINT)
           ORDER BY e.n
         ), events AS (
           {}
         )
         SELECT (SELECT count(*) FROM finished) AS finished, (SELECT count(*) FROM levels) AS levels",
        outbox::insert_json_rows("$6")
    );
    let row = sqlx::query(&sql)
        .bind(serde_json::Value::Array(created).to_string())
        .bind(serde_json::Value::Array(lines).to_string())
        .bind(serde_json::Value::Array(finished).to_string())
        .bind(serde_json::Value::Array(levels).to_string())
        .bind(serde_json::Value::Array(ledger).to_string())
        .bind(outbox::json_rows(w.events))
        .bind(w.now)
        .fetch_one(&mut **tx)
        .await?;
    Ok(BatchCounts {
        finished: row.try_get::<i64, _>("finished")? as u64,
        levels: row.try_get::<i64, _>("levels")? as u64,
    })
}

pub async fn reservation(pool: &AnyPool, order_id: &str) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

pub async fn reservation_in(tx: &mut Tx, order_id: &str) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await
}

/// Moves an active reservation to `status`. `None`: it is not active (any more).
pub async fn finish_reservation(
    tx: &mut Tx,
    order_id: &str,
    status: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE reservations SET status = $2, release_reason = $3, updated_at = $4
         WHERE order_id = $1 AND status = 'active' RETURNING {RESERVATION_COLUMNS}"
    ))
    .bind(order_id)
    .bind(status)
    .bind(reason)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

/// Moves a reservation released because it expired to committed (its order was paid late).
/// `None`: it is not such a reservation.
pub async fn commit_expired(tx: &mut Tx, order_id: &str, now: i64) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE reservations SET status = 'committed', release_reason = NULL, updated_at = $2
         WHERE order_id = $1 AND status = 'released' AND release_reason = 'expired' RETURNING {RESERVATION_COLUMNS}"
    ))
    .bind(order_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn lines_in(tx: &mut Tx, reservation_id: &str) -> Result<Vec<Line>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, quantity FROM reservation_lines WHERE reservation_id = $1 ORDER BY sku")
            .bind(reservation_id)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().map(|(sku, quantity)| Line { sku, quantity }).collect())
}

/// The lines of several reservations, by reservation id, each in SKU order.
pub async fn lines_of(pool: &AnyPool, reservation_ids: &[String]) -> Result<Vec<(String, Line)>, sqlx::Error> {
    let mut lines = Vec::new();
    for chunk in reservation_ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT reservation_id, sku, quantity FROM reservation_lines WHERE reservation_id IN ({})
             ORDER BY reservation_id, sku",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query_as::<_, (String, String, i64)>(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        lines.extend(
            query
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(id, sku, quantity)| (id, Line { sku, quantity })),
        );
    }
    Ok(lines)
}

/// Orders whose active reservations expired at or before `now`, oldest first.
pub async fn expired(pool: &AnyPool, now: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT order_id FROM reservations WHERE status = 'active' AND expires_at <= $1
         ORDER BY expires_at, id LIMIT {limit}"
    ))
    .bind(now)
    .fetch_all(pool)
    .await
}

/// A page of reservations, newest first (ids are UUIDv7), optionally of one status.
pub async fn list_reservations(
    pool: &AnyPool,
    status: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<ReservationRow>, sqlx::Error> {
    let mut sql = format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE 1 = 1");
    let mut binds = Vec::new();
    if let Some(status) = status {
        binds.push(status.to_owned());
        sql.push_str(&format!(" AND status = ${}", binds.len()));
    }
    if let Some(before) = before {
        binds.push(before.to_owned());
        sql.push_str(&format!(" AND id < ${}", binds.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    let mut query = sqlx::query_as(&sql);
    for bind in &binds {
        query = query.bind(bind);
    }
    query.fetch_all(pool).await
}

/// Records a restock by its reference; `false` when that reference was already restocked.
pub async fn claim_restock(tx: &mut Tx, reference: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO restocks (reference, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(reference)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

// ----- the invariant check ------------------------------------------------------------------

/// A SKU whose levels break an invariant.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Violation {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// The sum of the SKU's lines in active reservations.
    pub held: i64,
}

/// SKUs where `reserved` differs from the sum of active reservations, or a level is negative,
/// or more is reserved than is on hand.
pub async fn violations(pool: &AnyPool) -> Result<Vec<Violation>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.sku, s.on_hand, s.reserved, CAST(COALESCE(h.held, 0) AS BIGINT) AS held
         FROM stock s
         LEFT JOIN (SELECT l.sku, CAST(SUM(l.quantity) AS BIGINT) AS held
                    FROM reservation_lines l JOIN reservations r ON r.id = l.reservation_id
                    WHERE r.status = 'active' GROUP BY l.sku) h ON h.sku = s.sku
         WHERE s.on_hand < 0 OR s.reserved < 0 OR s.reserved > s.on_hand OR s.reserved <> COALESCE(h.held, 0)
         ORDER BY s.sku",
    )
    .fetch_all(pool)
    .await
}

/// How many SKUs the check covered.
pub async fn count_skus(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM stock").fetch_one(pool).await
}
