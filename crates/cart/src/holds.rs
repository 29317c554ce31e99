//! Units of a cart held for orders awaiting payment. Checkout takes what no other order of the
//! customer holds and holds it for the new order; the hold ends when the order is paid (after
//! the cart has deducted what it bought), fails or is cancelled. So a second checkout while the
//! first order's payment is pending does not buy the same units again, and units the customer
//! adds meanwhile are bought by it.
//!
//! The holds live in the cart's database, whichever store keeps the carts. Two holds of one cart
//! are made one after the other: in this process under a lock per cart, and across processes
//! (PostgreSQL) in a transaction holding an advisory lock of the cart.

use std::collections::HashMap;

use platform::store::{Backend, Db, Migration, Tx};
use sqlx::AnyConnection;

pub const MIGRATION: Migration = Migration {
    version: 3,
    name: "units held for orders awaiting payment",
    sql: "CREATE TABLE cart_holds (
            order_id TEXT PRIMARY KEY,
            cart_key TEXT NOT NULL,
            lines TEXT NOT NULL,
            created_at BIGINT NOT NULL);
          CREATE INDEX cart_holds_cart ON cart_holds (cart_key);
          CREATE INDEX cart_holds_age ON cart_holds (created_at)",
    postgres: None,
};

/// What one order holds: (SKU, units).
pub type Held = Vec<(String, i64)>;

/// The holds of a cart, by order id.
pub(crate) async fn of_cart(conn: &mut AnyConnection, cart: &str) -> anyhow::Result<HashMap<String, Held>> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT order_id, lines FROM cart_holds WHERE cart_key = $1")
        .bind(cart)
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|(order, lines)| Ok((order, serde_json::from_str(&lines)?)))
        .collect()
}

pub(crate) async fn insert(
    conn: &mut AnyConnection,
    order_id: &str,
    cart: &str,
    held: &Held,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO cart_holds (order_id, cart_key, lines, created_at) VALUES ($1, $2, $3, $4)")
        .bind(order_id)
        .bind(cart)
        .bind(serde_json::to_string(held)?)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn delete(db: &Db, order_id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM cart_holds WHERE order_id = $1")
        .bind(order_id)
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Drops holds made before `before`: a safety net for an order whose end the cart never heard of.
pub(crate) async fn purge(db: &Db, before: i64) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM cart_holds WHERE created_at < $1")
        .bind(before)
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected())
}

/// On PostgreSQL, a transaction holding the cart's advisory lock until it ends: the holds of one
/// cart are made one at a time across processes.
pub(crate) async fn locked(db: &Db, cart: &str) -> anyhow::Result<Option<Tx>> {
    if db.backend() != Backend::Postgres {
        return Ok(None);
    }
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mercato.cart_holds'), hashtext($1))")
        .bind(cart)
        .execute(&mut *tx)
        .await?;
    Ok(Some(tx))
}

/// The units of `lines` (SKU, quantity) that `holds` leave free, without the SKUs none are left of.
pub(crate) fn free(lines: &[(String, i64)], holds: &HashMap<String, Held>) -> Held {
    let mut held: HashMap<&str, i64> = HashMap::new();
    for lines in holds.values() {
        for (sku, units) in lines {
            *held.entry(sku.as_str()).or_default() += units;
        }
    }
    lines
        .iter()
        .filter_map(|(sku, quantity)| {
            let free = quantity - held.get(sku.as_str()).copied().unwrap_or(0);
            (free > 0).then(|| (sku.clone(), free))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_held_by_other_orders_are_not_free() {
        let lines = vec![("A".to_owned(), 3), ("B".to_owned(), 1), ("C".to_owned(), 2)];
        let holds = HashMap::from([
            ("o1".to_owned(), vec![("A".to_owned(), 1), ("B".to_owned(), 1)]),
            ("o2".to_owned(), vec![("A".to_owned(), 1), ("Z".to_owned(), 4)]),
        ]);
        assert_eq!(free(&lines, &holds), vec![("A".to_owned(), 1), ("C".to_owned(), 2)]);
        assert_eq!(free(&lines, &HashMap::new()), lines);
    }
}
