//! Carts kept in memory in front of the SQL store: the all-in-one mode, where this process is
//! the only writer of the cart database.
//!
//! Reads are answered from memory (a cart not in memory is loaded once). A write changes the
//! cart in memory and in SQL: the changes of concurrent requests are written together, one
//! transaction per batch (group commit), and each request is answered only once its batch has
//! committed, so an acknowledged change is as durable as with the SQL store alone.
//!
//! Memory and the database agree because:
//! - every change of a cart, and every load of one into memory, holds that cart's lock (one of a
//!   fixed set of striped locks) until it is committed and kept. The batch writer keeps the
//!   change and only then lets the lock go, so a request dropped while it waits (a client that
//!   hung up) cannot leave memory behind the database;
//! - a cart evicted from memory is loaded again (the database has every committed change), and
//!   one whose write failed is dropped from memory, to be loaded again;
//! - repricing, which changes lines of many carts, waits for every other write to finish, keeps
//!   new ones out while it runs, and drops the carts holding the SKU from memory first;
//! - the rarer one-cart operations (merging, taking, deducting an order) run on the SQL store
//!   under the cart's lock, the cart dropped from memory before they start.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use platform::store::{placeholders, value_rows, Db};
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock};

use crate::store::{bind_line, CartStore, IdleCart, Snapshot, SqlCartStore, StoredLine, LINE_COLUMNS};
use crate::stripes::Stripes;

/// Striped cart locks: two carts share a lock only by chance, and then only wait.
const STRIPES: usize = 1024;
/// Most carts' changes written in one transaction.
const MAX_BATCH: usize = 128;
/// Rows per multi-row statement (13 parameters each, well under every backend's limit).
const ROWS_PER_STATEMENT: usize = 64;
/// How much is kept: carts plus their lines, each counting one.
const KEPT_WEIGHT: u64 = 250_000;
/// A cart nobody reads or writes for this long leaves memory (it stays in the database).
const KEPT_IDLE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CartRow {
    updated_at: i64,
    expires_at: i64,
}

/// A cart as the database holds it: its row (none when there is no cart) and its lines, oldest
/// first.
#[derive(Debug, Clone, Default)]
struct Kept {
    row: Option<CartRow>,
    lines: Vec<StoredLine>,
}

impl Kept {
    fn live(&self, now: i64) -> bool {
        self.row.is_some_and(|row| row.expires_at > now)
    }

    fn live_line(&self, sku: &str, now: i64) -> Option<usize> {
        if self.live(now) {
            self.lines.iter().position(|l| l.sku == sku)
        } else {
            None
        }
    }

    fn weight(&self) -> u32 {
        u32::try_from(self.lines.len()).unwrap_or(u32::MAX).saturating_add(1)
    }
}

/// What one request changes in one cart, written in this order.
#[derive(Debug, Default)]
struct Change {
    cart: String,
    /// Delete every line first (the cart had expired, or is being cleared).
    drop_lines: bool,
    /// Delete the cart's row (cleared).
    drop_row: bool,
    /// The cart's row after the change.
    row: Option<CartRow>,
    delete_skus: Vec<String>,
    upsert: Vec<StoredLine>,
}

impl Change {
    fn is_empty(&self) -> bool {
        !self.drop_lines
            && !self.drop_row
            && self.row.is_none()
            && self.delete_skus.is_empty()
            && self.upsert.is_empty()
    }
}

type Carts = moka::sync::Cache<String, Arc<Kept>>;

/// A cart's locks: all carts' shared, and its own.
type Locks = (OwnedRwLockReadGuard<()>, OwnedMutexGuard<()>);

/// A change waiting for the batch writer, with the cart as it is once written, and its locks,
/// held until then.
struct Pending {
    change: Change,
    next: Kept,
    locks: Locks,
    done: oneshot::Sender<Result<(), String>>,
}

pub struct KeptCartStore {
    sql: SqlCartStore,
    ttl_ms: i64,
    carts: Carts,
    stripes: Stripes,
    /// Held shared by every one-cart write and load, exclusively by repricing.
    all_carts: Arc<RwLock<()>>,
    writes: mpsc::Sender<Pending>,
}

impl KeptCartStore {
    /// Keeps the carts of `db` in memory; spawns the batch writer on the current runtime (it
    /// stops when the store is dropped).
    pub fn new(db: Db, ttl: Duration) -> Self {
        let carts: Carts = moka::sync::Cache::builder()
            .max_capacity(KEPT_WEIGHT)
            .weigher(|_, kept: &Arc<Kept>| kept.weight())
            .time_to_idle(KEPT_IDLE)
            .build();
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(db.clone(), carts.clone(), queue));
        Self {
            sql: SqlCartStore::new(db, ttl),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            carts,
            stripes: Stripes::new(STRIPES),
            all_carts: Arc::new(RwLock::new(())),
            writes,
        }
    }

    /// Takes the cart's locks (after every earlier change of it is written and kept).
    async fn lock(&self, cart: &str) -> Locks {
        let shared = self.all_carts.clone().read_owned().await;
        (shared, self.stripes.of(cart).clone().lock_owned().await)
    }

    /// The cart as kept, loading it when it is not; the caller holds the cart's lock.
    async fn kept(&self, cart: &str) -> anyhow::Result<Arc<Kept>> {
        if let Some(kept) = self.carts.get(cart) {
            return Ok(kept);
        }
        let (row, lines) = self.sql.row_and_lines(cart).await?;
        let kept = Arc::new(Kept {
            row: row.map(|(updated_at, expires_at)| CartRow { updated_at, expires_at }),
            lines,
        });
        self.carts.insert(cart.to_owned(), kept.clone());
        Ok(kept)
    }

    /// Changes one cart: `plan` works the change out on a copy of the cart and answers; the
    /// change is written (with others, in one transaction) and then kept.
    async fn update<T>(&self, cart: &str, plan: impl FnOnce(&mut Kept, &mut Change) -> T) -> anyhow::Result<T> {
        let locks = self.lock(cart).await;
        let mut next = Kept::clone(&*self.kept(cart).await?);
        let mut change = Change {
            cart: cart.to_owned(),
            ..Change::default()
        };
        let answer = plan(&mut next, &mut change);
        if change.is_empty() {
            return Ok(answer);
        }
        let (done, written) = oneshot::channel();
        let stopped = || anyhow!("the cart writer has stopped");
        let pending = Pending {
            change,
            next,
            locks,
            done,
        };
        // Not sent: nothing was written or kept, and the locks go with `pending`.
        self.writes.send(pending).await.map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?.map_err(anyhow::Error::msg)?;
        Ok(answer)
    }

    /// Runs a one-cart operation on the SQL store under the cart's lock, the cart forgotten
    /// first: it is loaded again after, whether or not the operation finished.
    async fn on_sql<T>(
        &self,
        cart: &str,
        op: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let _locks = self.lock(cart).await;
        self.carts.invalidate(cart);
        op.await
    }

    /// The cart's row refreshed, as every write does; the lines of an expired cart go first.
    fn touch(&self, kept: &mut Kept, change: &mut Change, now: i64) {
        if !kept.live(now) {
            change.drop_lines = kept.row.is_some() || !kept.lines.is_empty();
            kept.lines.clear();
        }
        let row = CartRow {
            updated_at: now,
            expires_at: now.saturating_add(self.ttl_ms),
        };
        kept.row = Some(row);
        change.row = Some(row);
    }
}

#[async_trait]
impl CartStore for KeptCartStore {
    async fn lines(&self, cart: &str, now: i64) -> anyhow::Result<Vec<StoredLine>> {
        let kept = match self.carts.get(cart) {
            Some(kept) => kept,
            None => {
                let _locks = self.lock(cart).await;
                self.kept(cart).await?
            }
        };
        Ok(if kept.live(now) { kept.lines.clone() } else { Vec::new() })
    }

    async fn add(&self, cart: &str, line: &StoredLine, max: i64, now: i64) -> anyhow::Result<Result<i64, i64>> {
        self.update(cart, |kept, change| {
            let at = kept.live_line(&line.sku, now);
            let held = at.map_or(0, |i| kept.lines[i].quantity);
            if line.quantity > max || (at.is_some() && held.saturating_add(line.quantity) > max) {
                return Err(held);
            }
            self.touch(kept, change, now);
            let stored = match at {
                Some(i) => {
                    let l = &mut kept.lines[i];
                    l.quantity = held + line.quantity;
                    l.product_id.clone_from(&line.product_id);
                    l.name.clone_from(&line.name);
                    l.slug.clone_from(&line.slug);
                    l.image.clone_from(&line.image);
                    l.unit_price = line.unit_price;
                    l.currency.clone_from(&line.currency);
                    l.active = line.active;
                    l.updated_at = now;
                    l.clone()
                }
                None => {
                    let new = StoredLine {
                        updated_at: now,
                        ..line.clone()
                    };
                    let at = kept
                        .lines
                        .partition_point(|l| (l.added_at, &l.sku) < (new.added_at, &new.sku));
                    kept.lines.insert(at, new.clone());
                    new
                }
            };
            let quantity = stored.quantity;
            change.upsert.push(stored);
            Ok(quantity)
        })
        .await
    }

    async fn set_quantity(&self, cart: &str, sku: &str, quantity: i64, now: i64) -> anyhow::Result<bool> {
        self.update(cart, |kept, change| {
            let Some(i) = kept.live_line(sku, now) else {
                return false;
            };
            let l = &mut kept.lines[i];
            l.quantity = quantity;
            l.updated_at = now;
            change.upsert.push(l.clone());
            self.touch(kept, change, now);
            true
        })
        .await
    }

    async fn remove(&self, cart: &str, sku: &str, now: i64) -> anyhow::Result<bool> {
        self.update(cart, |kept, change| {
            let Some(i) = kept.live_line(sku, now) else {
                return false;
            };
            kept.lines.remove(i);
            change.delete_skus.push(sku.to_owned());
            self.touch(kept, change, now);
            true
        })
        .await
    }

    async fn clear(&self, cart: &str) -> anyhow::Result<()> {
        self.update(cart, |kept, change| {
            if kept.row.is_some() || !kept.lines.is_empty() {
                change.drop_lines = true;
                change.drop_row = true;
            }
            *kept = Kept::default();
        })
        .await
    }

    async fn deduct(&self, cart: &str, order_id: &str, bought: &[(String, i64)], now: i64) -> anyhow::Result<()> {
        self.on_sql(cart, self.sql.deduct(cart, order_id, bought, now)).await
    }

    async fn take(&self, cart: &str, now: i64) -> anyhow::Result<Vec<StoredLine>> {
        self.on_sql(cart, self.sql.take(cart, now)).await
    }

    async fn merge_line(&self, cart: &str, line: &StoredLine, cap: i64, now: i64) -> anyhow::Result<i64> {
        self.on_sql(cart, self.sql.merge_line(cart, line, cap, now)).await
    }

    async fn reprice(&self, sku: &str, snapshot: &Snapshot) -> anyhow::Result<u64> {
        // Nothing is loaded or written while this holds every cart's lock, so the carts dropped
        // here are loaded again only after the database has the new snapshot (or kept its old).
        let _all = self.all_carts.write().await;
        let holding: Vec<Arc<String>> = self
            .carts
            .iter()
            .filter(|(_, kept)| kept.lines.iter().any(|l| l.sku == sku))
            .map(|(cart, _)| cart)
            .collect();
        for cart in holding {
            self.carts.invalidate(cart.as_str());
        }
        self.sql.reprice(sku, snapshot).await
    }

    async fn idle(&self, idle_before: i64, now: i64, limit: usize) -> anyhow::Result<Vec<IdleCart>> {
        // Every acknowledged write is committed, so the database has them all.
        self.sql.idle(idle_before, now, limit).await
    }

    async fn mark_reported(&self, cart: &str, updated_at: i64) -> anyhow::Result<bool> {
        // Only the database keeps the report mark; every write clears it there.
        self.sql.mark_reported(cart, updated_at).await
    }

    async fn purge_expired(&self, now: i64) -> anyhow::Result<u64> {
        // A cart in memory past its time is already empty to readers, and a write to it deletes
        // its lines first whether or not this has removed them.
        self.sql.purge_expired(now).await
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.sql.ping().await
    }
}

/// The batch writer: takes what is queued (up to [`MAX_BATCH`] changes), writes it in one
/// transaction and answers each request. When a batch fails, each of its changes is tried
/// alone, so one bad change fails only its own request.
async fn write_batches(db: Db, carts: Carts, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let changes: Vec<&Change> = batch.iter().map(|p| &p.change).collect();
        let written = write(&db, &changes).await;
        drop(changes);
        match written {
            Ok(()) => {
                for pending in batch.drain(..) {
                    finish(&carts, pending, Ok(()));
                }
            }
            Err(error) if batch.len() == 1 => {
                for pending in batch.drain(..) {
                    finish(&carts, pending, Err(error.to_string()));
                }
            }
            Err(_) => {
                for pending in batch.drain(..) {
                    let alone = write(&db, &[&pending.change]).await.map_err(|e| e.to_string());
                    finish(&carts, pending, alone);
                }
            }
        }
    }
}

/// Keeps a written change (or forgets the cart, when the write failed: the database says what
/// it holds at the next load), lets the cart's locks go and answers the request.
fn finish(carts: &Carts, pending: Pending, written: Result<(), String>) {
    let Pending {
        change,
        next,
        locks,
        done,
    } = pending;
    if written.is_ok() {
        carts.insert(change.cart, Arc::new(next));
    } else {
        carts.invalidate(&change.cart);
    }
    drop(locks);
    let _ = done.send(written);
}

/// `DELETE FROM {table} WHERE cart_key IN (…)` for `carts`, a statement per chunk.
async fn delete_carts_from(tx: &mut platform::store::Tx, table: &str, carts: &[&str]) -> Result<(), sqlx::Error> {
    for chunk in carts.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "DELETE FROM {table} WHERE cart_key IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for cart in chunk {
            query = query.bind(*cart);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes the changes of distinct carts in one transaction.
async fn write(db: &Db, changes: &[&Change]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let dropped: Vec<&str> = changes
        .iter()
        .filter(|c| c.drop_lines)
        .map(|c| c.cart.as_str())
        .collect();
    delete_carts_from(&mut tx, "cart_lines", &dropped).await?;
    let gone: Vec<&str> = changes.iter().filter(|c| c.drop_row).map(|c| c.cart.as_str()).collect();
    delete_carts_from(&mut tx, "carts", &gone).await?;
    let rows: Vec<(&str, CartRow)> = changes
        .iter()
        .filter_map(|c| c.row.map(|row| (c.cart.as_str(), row)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({}, NULL)", placeholders(3 * i + 1, 3)))
            .collect();
        let sql = format!(
            "INSERT INTO carts (cart_key, updated_at, expires_at, reported_at) VALUES {}
             ON CONFLICT (cart_key) DO UPDATE SET updated_at = excluded.updated_at,
               expires_at = excluded.expires_at, reported_at = NULL",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (cart, row) in chunk {
            query = query.bind(*cart).bind(row.updated_at).bind(row.expires_at);
        }
        query.execute(&mut *tx).await?;
    }
    let removed: Vec<(&str, &str)> = changes
        .iter()
        .flat_map(|c| c.delete_skus.iter().map(|sku| (c.cart.as_str(), sku.as_str())))
        .collect();
    for chunk in removed.chunks(ROWS_PER_STATEMENT) {
        let pairs: Vec<String> = (0..chunk.len())
            .map(|i| format!("(cart_key = ${} AND sku = ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let sql = format!("DELETE FROM cart_lines WHERE {}", pairs.join(" OR "));
        let mut query = sqlx::query(&sql);
        for (cart, sku) in chunk {
            query = query.bind(*cart).bind(*sku);
        }
        query.execute(&mut *tx).await?;
    }
    let lines: Vec<(&str, &StoredLine)> = changes
        .iter()
        .flat_map(|c| c.upsert.iter().map(|line| (c.cart.as_str(), line)))
        .collect();
    for chunk in lines.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO cart_lines ({LINE_COLUMNS}) VALUES {}
             ON CONFLICT (cart_key, sku) DO UPDATE SET product_id = excluded.product_id,
               name = excluded.name, slug = excluded.slug, image = excluded.image,
               unit_price = excluded.unit_price, added_price = excluded.added_price,
               currency = excluded.currency, quantity = excluded.quantity, active = excluded.active,
               added_at = excluded.added_at, updated_at = excluded.updated_at",
            value_rows(chunk.len(), 13)
        );
        let mut query = sqlx::query(&sql);
        for (cart, l) in chunk {
            query = bind_line(query, cart, l, l.quantity, l.updated_at);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}
