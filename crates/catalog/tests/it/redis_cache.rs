//! The read cache's Redis second level, as two catalog replicas share it (needs
//! `MERCATO_TEST_REDIS_URL`; skipped without it).

use std::time::Duration;

use bytes::Bytes;
use catalog::cache::{product_keys, Cache};
use catalog::redis_cache::TieredCache;

/// Two replicas on one Redis. Their own memory keeps nothing (a zero lifetime), so what the
/// tests see is the shared level.
async fn replicas() -> Option<(TieredCache, TieredCache)> {
    let Some(url) = platform::testing::server_url(platform::testing::REDIS_URL_VAR) else {
        eprintln!("MERCATO_TEST_REDIS_URL is not set: the Redis cache tests are skipped");
        return None;
    };
    // A fresh prefix per test keeps concurrent tests (and earlier runs) apart.
    let prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
    let connect = || TieredCache::connect(&url, &prefix, Duration::from_secs(60), Duration::ZERO, 1 << 20);
    Some((connect().await.unwrap(), connect().await.unwrap()))
}

#[tokio::test]
async fn what_one_replica_caches_the_other_reads() {
    let Some((a, b)) = replicas().await else {
        return;
    };
    let seen = a.generation().await;
    a.insert("product:p1".to_owned(), Bytes::from_static(b"page"), seen)
        .await;
    a.insert("search:q=rain".to_owned(), Bytes::from_static(b"hits"), seen)
        .await;
    assert_eq!(b.get("product:p1").await, Some(Bytes::from_static(b"page")));
    assert_eq!(b.get("search:q=rain").await, Some(Bytes::from_static(b"hits")));
    assert_eq!(b.get("product:p2").await, None);
}

#[tokio::test]
async fn a_change_on_one_replica_clears_the_page_and_every_answer_for_all() {
    let Some((a, b)) = replicas().await else {
        return;
    };
    let seen = a.generation().await;
    a.insert("product:p1".to_owned(), Bytes::from_static(b"1"), seen).await;
    a.insert("product:p2".to_owned(), Bytes::from_static(b"2"), seen).await;
    a.insert("list:sort=newest".to_owned(), Bytes::from_static(b"l"), seen)
        .await;
    b.invalidate(&product_keys("p1", &["shoe"])).await;
    assert_eq!(a.get("product:p1").await, None);
    assert_eq!(a.get("list:sort=newest").await, None);
    assert_eq!(
        a.get("product:p2").await,
        Some(Bytes::from_static(b"2")),
        "other pages stay"
    );
    b.invalidate_all().await;
    assert_eq!(a.get("product:p2").await, None);
}

#[tokio::test]
async fn an_answer_read_before_another_replicas_change_is_not_stored() {
    let Some((a, b)) = replicas().await else {
        return;
    };
    // A reads the old row; meanwhile B changes the product.
    let seen = a.generation().await;
    b.invalidate(&product_keys("p1", &[])).await;
    a.insert("product:p1".to_owned(), Bytes::from_static(b"old"), seen)
        .await;
    a.insert("search:q=p1".to_owned(), Bytes::from_static(b"old"), seen)
        .await;
    assert_eq!(a.get("product:p1").await, None);
    assert_eq!(b.get("product:p1").await, None);
    assert_eq!(b.get("search:q=p1").await, None);
    // A read that starts after the change is kept.
    let seen = a.generation().await;
    a.insert("product:p1".to_owned(), Bytes::from_static(b"new"), seen)
        .await;
    assert_eq!(b.get("product:p1").await, Some(Bytes::from_static(b"new")));
}
