//! Keeps the search index equal to the database.
//!
//! Every product change carries a sequence number (`products.seq`, see `store.rs`) and the
//! index records the highest number it holds. Catching up means indexing every product with a
//! higher number. Three things trigger it: a write in this process (immediately), the product
//! events of the bus (the guarantee: an event is published only after its commit and is
//! redelivered until a handler succeeds, and the handler succeeds only once the index holds the
//! event's number), and a slow poll (for changes no event announces, such as stock signals).
//! At start the index catches up from whatever number it holds, which rebuilds a missing index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform::store::Db;
use sqlx::AnyPool;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::cache::{product_keys, Cache};
use crate::domain::path_ids;
use crate::search::{SearchDoc, SearchIndex};
use crate::store::{self, CategoryRow, ProductRow};

const BATCH: i64 = 1_000;
const POLL: Duration = Duration::from_secs(2);
/// A catch-up that indexed this many products merges the index into one segment afterwards.
const OPTIMIZE_AFTER: usize = 5_000;
/// How many product rows [`ProductRows`] keeps.
const ROW_CACHE_ENTRIES: u64 = 20_000;

/// The product rows behind search hits, kept in memory: showing a page of hits would otherwise
/// cost a database query per search. The indexer drops a product's row whenever it indexes a
/// change of that product, so a row here is never older than the index's own view of it.
pub struct ProductRows {
    rows: moka::sync::Cache<String, Arc<ProductRow>>,
    /// Moves on every drop, so that a row read before a drop is not put back after it.
    generation: AtomicU64,
}

impl ProductRows {
    pub fn new(max_entries: u64) -> Self {
        Self {
            rows: moka::sync::Cache::new(max_entries),
            generation: AtomicU64::new(0),
        }
    }

    /// The rows of `ids` that exist, in no particular order; those not in memory are read from
    /// `db` in one query.
    pub async fn get(&self, db: &AnyPool, ids: &[String]) -> Result<Vec<Arc<ProductRow>>, sqlx::Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.rows.get(id) {
                Some(row) => found.push(row),
                None => missing.push(id.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        for row in store::products_by_ids(db, &missing).await? {
            let row = Arc::new(row);
            if self.generation.load(Ordering::SeqCst) == generation {
                self.rows.insert(row.id.clone(), Arc::clone(&row));
                // A drop that began after the check must not miss this row: it moves the
                // generation before removing, so either it removes the row or this sees it moved.
                if self.generation.load(Ordering::SeqCst) != generation {
                    self.rows.invalidate(&row.id);
                }
            }
            found.push(row);
        }
        Ok(found)
    }

    /// Drops the rows of `ids` (their products changed).
    pub fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for id in ids {
            self.rows.invalidate(id);
        }
    }
}

pub struct Indexer {
    db: Db,
    index: Arc<SearchIndex>,
    cache: Arc<dyn Cache>,
    rows: ProductRows,
    /// One catch-up at a time; a caller that waited finds most of its work already done.
    running: Mutex<()>,
    wake: Notify,
}

impl Indexer {
    pub fn new(db: Db, index: Arc<SearchIndex>, cache: Arc<dyn Cache>) -> Self {
        Self {
            db,
            index,
            cache,
            rows: ProductRows::new(ROW_CACHE_ENTRIES),
            running: Mutex::new(()),
            wake: Notify::new(),
        }
    }

    pub fn index(&self) -> &Arc<SearchIndex> {
        &self.index
    }

    /// The rows of the indexed products, as fresh as the index.
    pub fn rows(&self) -> &ProductRows {
        &self.rows
    }

    /// Asks the background task to catch up now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Returns once the index holds every change up to `seq`.
    pub async fn ensure(&self, seq: i64) -> anyhow::Result<()> {
        if self.index.indexed_seq() >= seq {
            return Ok(());
        }
        self.catch_up().await?;
        anyhow::ensure!(
            self.index.indexed_seq() >= seq,
            "the index holds change {} but the event announced {seq}",
            self.index.indexed_seq()
        );
        Ok(())
    }

    /// Indexes every change the index does not hold yet. Answers how many products it looked at.
    pub async fn catch_up(&self) -> anyhow::Result<usize> {
        let _running = self.running.lock().await;
        let started = Instant::now();
        // Every transaction that took a seq up to this value has committed (the counter's row
        // lock is held to commit), so the scan below sees all of their rows.
        let ceiling = store::current_seq(self.db.reader()).await?;
        if self.index.indexed_seq() > ceiling {
            // The index belongs to another (or a restored) database: start over.
            tracing::warn!(
                indexed = self.index.indexed_seq(),
                database = ceiling,
                "the search index is ahead of the database; rebuilding it"
            );
            let index = self.index.clone();
            tokio::task::spawn_blocking(move || index.clear()).await??;
        }
        let mut seen = 0usize;
        // Rows sharing one seq (a category move stamps a whole subtree) may span batches, so
        // page by (seq, id) and only claim a seq once every row of it was indexed. An empty id
        // starts after everything of the indexed seq.
        let mut cursor = (self.index.indexed_seq(), String::new());
        loop {
            let rows = store::changed_after(self.db.reader(), cursor.0, &cursor.1, BATCH).await?;
            let Some(last) = rows.last() else { break };
            let full = rows.len() as i64 == BATCH;
            let complete_through = if full { last.seq - 1 } else { last.seq };
            cursor = (last.seq, last.id.clone());
            // Read per batch: a rename or move committed meanwhile must not be indexed stale.
            let categories: HashMap<String, CategoryRow> = store::all_categories(self.db.reader())
                .await?
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect();
            // One query for the SKUs of the whole batch.
            let active: Vec<String> = rows
                .iter()
                .filter(|row| searchable(row))
                .map(|row| row.id.clone())
                .collect();
            let mut skus: HashMap<String, Vec<String>> = HashMap::new();
            for variant in store::variants_of_many(self.db.reader(), &active).await? {
                skus.entry(variant.product_id).or_default().push(variant.sku);
            }
            let mut docs = Vec::new();
            let mut removed = Vec::new();
            let mut keys = Vec::new();
            for row in &rows {
                keys.extend(product_keys(&row.id, &[&row.slug]));
                if searchable(row) {
                    docs.push(document(row, skus.remove(&row.id).unwrap_or_default(), &categories));
                } else {
                    removed.push(row.id.clone());
                }
            }
            seen += rows.len();
            let index = self.index.clone();
            tokio::task::spawn_blocking(move || index.apply(&docs, &removed, complete_through)).await??;
            self.rows.forget(rows.iter().map(|row| row.id.as_str()));
            self.cache.invalidate(&keys).await;
            if !full {
                break;
            }
        }
        if self.index.indexed_seq() < ceiling {
            // Changes with no product row behind them still moved the counter.
            let index = self.index.clone();
            tokio::task::spawn_blocking(move || index.apply(&[], &[], ceiling)).await??;
        }
        if seen >= OPTIMIZE_AFTER {
            // Best effort: an unmerged index is slower, not wrong.
            let index = self.index.clone();
            if let Err(err) = tokio::task::spawn_blocking(move || index.optimize()).await? {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "could not merge the search index's segments"
                );
            }
        }
        if seen > 0 {
            tracing::info!(
                products = seen,
                seq = self.index.indexed_seq(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "search index caught up"
            );
        }
        metrics::gauge!("mercato_search_index_documents").set(self.index.num_docs() as f64);
        Ok(seen)
    }

    /// Catches up whenever woken, and every few seconds, until cancelled.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken) {
        let indexer = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = indexer.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                let behind = match store::current_seq(indexer.db.reader()).await {
                    Ok(current) => current > indexer.index.indexed_seq(),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the catalog's change counter");
                        continue;
                    }
                };
                if behind {
                    if let Err(err) = indexer.catch_up().await {
                        tracing::error!(error = format!("{err:#}"), "search index catch-up failed");
                    }
                }
            }
        });
    }
}

/// Only products shoppers can see are in the index.
fn searchable(row: &ProductRow) -> bool {
    row.status == "active" && row.deleted_at.is_none()
}

/// The search document of an active product.
fn document(row: &ProductRow, skus: Vec<String>, categories: &HashMap<String, CategoryRow>) -> SearchDoc {
    let path = categories
        .get(&row.category_id)
        .map(|c| path_ids(&c.path))
        .unwrap_or_else(|| vec![row.category_id.clone()]);
    let category_names = path
        .iter()
        .filter_map(|id| categories.get(id).map(|c| c.name.clone()))
        .collect();
    SearchDoc {
        id: row.id.clone(),
        name: row.name.clone(),
        brand: row.brand.clone(),
        category_names,
        category_ids: path,
        description: row.description.clone(),
        skus,
        price_min: row.price_min,
        price_max: row.price_max,
        rating_x100: row.rating_x100,
        rating_count: row.rating_count,
        in_stock: row.in_stock != 0,
        created_at: row.created_at,
    }
}
