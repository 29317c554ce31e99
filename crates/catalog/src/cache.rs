//! The product read cache: serialized responses (product pages, lists, search results) kept
//! for a short time. In-process (moka) here; in the distributed mode a Redis second level
//! shared by the replicas comes behind the same trait ([`crate::redis_cache`]).
//!
//! A read that started before a change must not put the old answer back after the change
//! invalidated it. Every invalidation bumps a generation; a reader remembers the generation it
//! saw before reading the database and the insert is dropped if it moved meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

#[async_trait]
pub trait Cache: Send + Sync {
    /// The current generation, to pass to [`Cache::insert`] after computing a value.
    async fn generation(&self) -> u64;
    async fn get(&self, key: &str) -> Option<Bytes>;
    /// Stores `value` unless an invalidation happened after `generation` was read.
    async fn insert(&self, key: String, value: Bytes, generation: u64);
    /// Drops the given keys and every list and search answer (any of which may hold them).
    async fn invalidate(&self, keys: &[String]);
    async fn invalidate_all(&self);
    /// The share of lookups answered from the cache since start, per part.
    fn hit_ratios(&self) -> Vec<(&'static str, f64)>;
}

const KINDS: [&str; 4] = ["product", "list", "search", "other"];

/// Which part of the catalog a cache key belongs to, for the hit-rate metric.
fn kind_of(key: &str) -> &'static str {
    match key.split_once(':').map(|(kind, _)| kind) {
        Some("product") => "product",
        Some("list") => "list",
        Some("search") => "search",
        _ => "other",
    }
}

/// The in-process cache.
pub struct MemoryCache {
    /// Product pages, by the id or slug they were asked for.
    products: moka::sync::Cache<String, Bytes>,
    /// Lists and search answers, by their normalized query; any product change clears them all.
    queries: moka::sync::Cache<String, Bytes>,
    generation: AtomicU64,
    /// (hits, misses) per entry of `KINDS`.
    counts: [(AtomicU64, AtomicU64); 4],
}

impl MemoryCache {
    /// A cache whose parts each hold up to `max_bytes` of keys and answers.
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        let build = || {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, value: &Bytes| (key.len() + value.len()).try_into().unwrap_or(u32::MAX))
                .time_to_live(ttl)
                .build()
        };
        Self {
            products: build(),
            queries: build(),
            generation: AtomicU64::new(0),
            counts: Default::default(),
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn part(&self, key: &str) -> &moka::sync::Cache<String, Bytes> {
        if key.starts_with("product:") {
            &self.products
        } else {
            &self.queries
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        let found = self.part(key).get(key);
        let kind = kind_of(key);
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("mercato_cache_requests_total", "cache" => kind, "result" => result).increment(1);
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            let counter = if found.is_some() {
                &self.counts[i].0
            } else {
                &self.counts[i].1
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    async fn insert(&self, key: String, value: Bytes, generation: u64) {
        let part = self.part(&key);
        part.insert(key, value);
        // An invalidation that raced with this read may have run before the insert: undo it.
        if self.generation.load(Ordering::SeqCst) != generation {
            part.invalidate_all();
        }
    }

    async fn invalidate(&self, keys: &[String]) {
        self.bump();
        for key in keys {
            self.products.invalidate(key);
        }
        self.queries.invalidate_all();
    }

    async fn invalidate_all(&self) {
        self.bump();
        self.products.invalidate_all();
        self.queries.invalidate_all();
    }

    fn hit_ratios(&self) -> Vec<(&'static str, f64)> {
        KINDS
            .iter()
            .zip(&self.counts)
            .filter_map(|(kind, (hits, misses))| {
                let (hits, misses) = (hits.load(Ordering::Relaxed), misses.load(Ordering::Relaxed));
                (hits + misses > 0).then(|| (*kind, hits as f64 / (hits + misses) as f64))
            })
            .collect()
    }
}

/// The keys a product's page is cached under.
pub fn product_keys(id: &str, slugs: &[&str]) -> Vec<String> {
    std::iter::once(id)
        .chain(slugs.iter().copied())
        .map(|key| format!("product:{key}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_part_is_bounded_in_bytes() {
        let cache = MemoryCache::new(Duration::from_secs(60), 64 * 1024);
        let g = cache.generation().await;
        let answer = Bytes::from(vec![b'x'; 10_000]);
        for i in 0..100 {
            cache.insert(format!("search:q{i}"), answer.clone(), g).await;
        }
        cache.queries.run_pending_tasks();
        assert!(
            cache.queries.weighted_size() <= 64 * 1024,
            "{}",
            cache.queries.weighted_size()
        );
        let kept = cache.queries.entry_count();
        assert!((1..=6).contains(&kept), "{kept} answers of 10 kB kept in 64 KiB");
        // The product part has a budget of its own.
        cache.insert("product:p1".to_owned(), answer.clone(), g).await;
        assert_eq!(cache.get("product:p1").await, Some(answer));
    }

    #[tokio::test]
    async fn a_stale_read_does_not_outlive_the_invalidation_it_raced() {
        let cache = MemoryCache::new(Duration::from_secs(60), 1 << 20);
        let seen = cache.generation().await;
        // The product changes while the reader is still reading the old row.
        cache.invalidate(&product_keys("p1", &["shoe"])).await;
        cache
            .insert("product:p1".to_owned(), Bytes::from_static(b"old"), seen)
            .await;
        assert_eq!(cache.get("product:p1").await, None);
        // A read that starts afterwards is kept.
        let seen = cache.generation().await;
        cache
            .insert("product:p1".to_owned(), Bytes::from_static(b"new"), seen)
            .await;
        assert_eq!(cache.get("product:p1").await, Some(Bytes::from_static(b"new")));
    }

    #[tokio::test]
    async fn a_product_change_clears_its_page_and_every_list() {
        let cache = MemoryCache::new(Duration::from_secs(60), 1 << 20);
        let g = cache.generation().await;
        cache.insert("product:p1".to_owned(), Bytes::from_static(b"1"), g).await;
        cache.insert("product:p2".to_owned(), Bytes::from_static(b"2"), g).await;
        cache
            .insert("list:sort=newest".to_owned(), Bytes::from_static(b"l"), g)
            .await;
        cache
            .insert("search:q=shoe".to_owned(), Bytes::from_static(b"s"), g)
            .await;
        cache.invalidate(&product_keys("p1", &[])).await;
        assert_eq!(cache.get("product:p1").await, None);
        assert_eq!(cache.get("product:p2").await, Some(Bytes::from_static(b"2")));
        assert_eq!(cache.get("list:sort=newest").await, None);
        assert_eq!(cache.get("search:q=shoe").await, None);
    }
}
