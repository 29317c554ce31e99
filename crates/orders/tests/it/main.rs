//! The orders store against a real database: idempotency keys, order numbers and coupon
//! counters under concurrency. Every test runs on SQLite and, when `MERCATO_TEST_POSTGRES_URL`
//! is set, on PostgreSQL. (Checkout end to end is in `crates/mercato/tests/it/checkout.rs`.)

use std::collections::HashSet;

use futures::future::join_all;
use orders::store::{self, CouponRow, UseRefused};
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::store::Db;
use platform::testing::tempfile_guard::TempDir;

macro_rules! suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            suite!(@tests $open;
                a_key_is_claimed_once_and_answers_its_holder_only,
                a_dead_requests_key_is_taken_over_by_one_waiter,
                an_expired_key_is_claimed_afresh,
                order_numbers_are_unique_under_concurrency,
                coupon_uses_never_pass_their_limits,
                a_changed_coupon_is_not_used_on_stale_terms,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                match super::$open().await {
                    Some(fixture) => super::$test(fixture).await,
                    None => eprintln!("skipped: {} is not set", platform::testing::POSTGRES_URL_VAR),
                }
            }
        )+
    };
}

suite!(sqlite, open_sqlite);
suite!(postgres, open_postgres);

pub struct Fixture {
    db: Db,
    _dir: Option<TempDir>,
}

async fn fixture(db: Db, dir: Option<TempDir>) -> Fixture {
    db.migrate("platform", PLATFORM_MIGRATIONS)
        .await
        .expect("platform migrations");
    db.migrate(orders::SERVICE, store::MIGRATIONS)
        .await
        .expect("orders migrations");
    Fixture { db, _dir: dir }
}

async fn open_sqlite() -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.expect("sqlite");
    Some(fixture(db, Some(dir)).await)
}

async fn open_postgres() -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.expect("postgres")?;
    Some(fixture(db, None).await)
}

const NOW: i64 = 1_800_000_000_000;
const DAY: i64 = 86_400_000;

async fn a_key_is_claimed_once_and_answers_its_holder_only(f: Fixture) {
    let pool = f.db.writer();
    assert!(store::claim_key(pool, "u1", "k", "h1", "first", NOW, NOW + DAY)
        .await
        .unwrap()
        .is_none());
    let held = store::claim_key(pool, "u1", "k", "h2", "second", NOW + 1, NOW + DAY)
        .await
        .unwrap()
        .expect("held by the first");
    assert_eq!((held.request_hash.as_str(), held.claim.as_str()), ("h1", "first"));
    // Another user's key of the same name is another key.
    assert!(store::claim_key(pool, "u2", "k", "h1", "third", NOW, NOW + DAY)
        .await
        .unwrap()
        .is_none());

    // A request that lost the key can neither answer under it nor free it.
    store::store_response(pool, "u1", "k", "second", 201, "{}")
        .await
        .unwrap();
    store::release_key(pool, "u1", "k", "second").await.unwrap();
    let row = store::key_row(pool, "u1", "k").await.unwrap().expect("still there");
    assert_eq!((row.claim.as_str(), row.response_status), ("first", None));

    store::store_response(pool, "u1", "k", "first", 201, "{\"ok\":true}")
        .await
        .unwrap();
    let row = store::key_row(pool, "u1", "k").await.unwrap().unwrap();
    assert_eq!(row.response_status, Some(201));
    assert_eq!(row.response_body.as_deref(), Some("{\"ok\":true}"));
    // An answered key is not let go.
    store::release_key(pool, "u1", "k", "first").await.unwrap();
    assert!(store::key_row(pool, "u1", "k").await.unwrap().is_some());
}

async fn a_dead_requests_key_is_taken_over_by_one_waiter(f: Fixture) {
    let pool = f.db.writer();
    assert!(store::claim_key(pool, "u", "k", "h", "dead", NOW, NOW + DAY)
        .await
        .unwrap()
        .is_none());
    let tries = join_all((0..8).map(|n| {
        let claim = format!("waiter-{n}");
        async move {
            store::take_over_key(pool, "u", "k", "dead", &claim, "h", NOW + 200_000, NOW + DAY)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(tries.iter().filter(|won| **won).count(), 1, "{tries:?}");
    let row = store::key_row(pool, "u", "k").await.unwrap().unwrap();
    assert!(row.claim.starts_with("waiter-"));

    // A key whose request made an order is never taken over.
    assert!(store::claim_key(pool, "u", "made", "h", "maker", NOW, NOW + DAY)
        .await
        .unwrap()
        .is_none());
    let mut tx = f.db.begin().await.unwrap();
    assert!(store::attach_order(&mut tx, "u", "made", "maker", "order-1")
        .await
        .unwrap());
    assert!(!store::attach_order(&mut tx, "u", "made", "someone-else", "order-2")
        .await
        .unwrap());
    tx.commit().await.unwrap();
    assert!(
        !store::take_over_key(pool, "u", "made", "maker", "late", "h", NOW + 200_000, NOW + DAY)
            .await
            .unwrap()
    );
    assert_eq!(
        store::key_row(pool, "u", "made")
            .await
            .unwrap()
            .unwrap()
            .order_id
            .as_deref(),
        Some("order-1")
    );
}

async fn an_expired_key_is_claimed_afresh(f: Fixture) {
    let pool = f.db.writer();
    assert!(store::claim_key(pool, "u", "k", "old", "a", NOW, NOW + DAY)
        .await
        .unwrap()
        .is_none());
    store::store_response(pool, "u", "k", "a", 201, "{}").await.unwrap();
    // Before expiry the answer stands; after it, the key is a new one.
    assert!(
        store::claim_key(pool, "u", "k", "new", "b", NOW + DAY - 1, NOW + 2 * DAY)
            .await
            .unwrap()
            .is_some()
    );
    assert!(store::claim_key(pool, "u", "k", "new", "b", NOW + DAY, NOW + 2 * DAY)
        .await
        .unwrap()
        .is_none());
    let row = store::key_row(pool, "u", "k").await.unwrap().unwrap();
    assert_eq!(
        (row.request_hash.as_str(), row.claim.as_str(), row.response_status),
        ("new", "b", None)
    );
    assert_eq!(store::purge_expired_keys(pool, NOW + 3 * DAY).await.unwrap(), 1);
}

async fn order_numbers_are_unique_under_concurrency(f: Fixture) {
    let numbers = join_all((0..25).map(|_| {
        let db = f.db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let n = store::next_order_sequence(&mut tx, 2026).await.unwrap();
            tx.commit().await.unwrap();
            n
        }
    }))
    .await;
    let distinct: HashSet<i64> = numbers.iter().copied().collect();
    assert_eq!(distinct, (1..=25).collect::<HashSet<i64>>());
    let mut tx = f.db.begin().await.unwrap();
    assert_eq!(
        store::next_order_sequence(&mut tx, 2027).await.unwrap(),
        1,
        "a new year starts over"
    );
    tx.commit().await.unwrap();
}

fn coupon(id: &str, usage_limit: Option<i64>, per_customer_limit: Option<i64>) -> CouponRow {
    CouponRow {
        id: id.to_owned(),
        code: id.to_uppercase(),
        kind: "fixed".to_owned(),
        value: 100,
        min_subtotal_minor: 0,
        starts_at: None,
        ends_at: None,
        usage_limit,
        per_customer_limit,
        used_count: 0,
        disabled_at: None,
        description: None,
        version: 1,
        created_at: NOW,
        updated_at: NOW,
    }
}

/// Uses the coupon for `order` in a transaction of its own, committed when the use is granted.
async fn use_once(db: &Db, c: &CouponRow, user: &str, order: &str) -> Result<(), UseRefused> {
    let mut tx = db.begin().await.unwrap();
    let used = store::use_coupon(&mut tx, c, user, order, 100, NOW).await.unwrap();
    if used.is_ok() {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    used
}

async fn coupon_uses_never_pass_their_limits(f: Fixture) {
    let total = coupon("three", Some(3), None);
    store::insert_coupon(f.db.writer(), &total).await.unwrap();
    let results = join_all((0..12).map(|n| {
        let (db, c) = (f.db.clone(), total.clone());
        async move { use_once(&db, &c, &format!("user-{n}"), &format!("order-{n}")).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3, "{results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(UseRefused::Exhausted))));
    let stored = store::coupon(f.db.reader(), "three").await.unwrap().unwrap();
    assert_eq!(stored.used_count, 3);

    let each = coupon("each", None, Some(2));
    store::insert_coupon(f.db.writer(), &each).await.unwrap();
    let results = join_all((0..6).map(|n| {
        let (db, c) = (f.db.clone(), each.clone());
        async move { use_once(&db, &c, "same-user", &format!("each-{n}")).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2, "{results:?}");
    assert!(use_once(&f.db, &each, "other-user", "each-other").await.is_ok());

    // A cancelled order gives its use back, once.
    let mut tx = f.db.begin().await.unwrap();
    let granted = results.iter().position(Result::is_ok).unwrap();
    let order = format!("each-{granted}");
    assert!(store::release_coupon_use(&mut tx, &order, NOW).await.unwrap());
    assert!(!store::release_coupon_use(&mut tx, &order, NOW).await.unwrap());
    tx.commit().await.unwrap();
    assert!(use_once(&f.db, &each, "same-user", "each-again").await.is_ok());
    let stored = store::coupon(f.db.reader(), "each").await.unwrap().unwrap();
    assert_eq!(stored.used_count, 3);
}

async fn a_changed_coupon_is_not_used_on_stale_terms(f: Fixture) {
    let read = coupon("edited", None, None);
    store::insert_coupon(f.db.writer(), &read).await.unwrap();
    let mut edited = read.clone();
    edited.value = 5_000;
    edited.updated_at = NOW + 1;
    assert!(store::update_coupon(f.db.writer(), &edited, 1).await.unwrap());
    assert_eq!(use_once(&f.db, &read, "u", "o1").await, Err(UseRefused::Changed));
    let fresh = store::coupon(f.db.reader(), "edited").await.unwrap().unwrap();
    assert_eq!(fresh.version, 2);
    assert!(use_once(&f.db, &fresh, "u", "o2").await.is_ok());
    assert!(
        !store::update_coupon(f.db.writer(), &edited, 1).await.unwrap(),
        "a stale version is refused"
    );
}
