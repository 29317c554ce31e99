//! The `CartStore` conformance suite: every test runs on the SQL store over SQLite, over
//! PostgreSQL (`MERCATO_TEST_POSTGRES_URL`), on the Redis store (`MERCATO_TEST_REDIS_URL`) and on
//! the kept store (carts in memory in front of SQL) over SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use cart::kept_store::KeptCartStore;
use cart::redis_store::RedisCartStore;
use cart::store::{CartStore, Details, Snapshot, SqlCartStore, StoredLine};
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::testing::tempfile_guard::TempDir;

const TTL: Duration = Duration::from_secs(24 * 3600);
const TTL_MS: i64 = 24 * 3600 * 1000;

macro_rules! suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            suite!(@tests $open;
                adding_sums_quantities_up_to_the_maximum,
                lines_change_quantity_and_go,
                carts_are_kept_apart,
                taking_a_cart_empties_it_and_merging_caps_each_line,
                repricing_reaches_every_cart_holding_the_sku,
                an_idle_cart_is_reported_once_until_it_changes,
                concurrent_adds_to_one_cart_are_all_kept,
                every_write_refreshes_the_time_to_live,
                what_an_order_bought_leaves_the_cart_once,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                match super::$open().await {
                    Some(fixture) => super::$test(fixture).await,
                    None => eprintln!("skipped: this backend's test server is not configured"),
                }
            }
        )+
    };
}

suite!(sql_sqlite, open_sqlite);
suite!(sql_postgres, open_postgres);
suite!(on_redis, open_redis);
suite!(kept_sqlite, open_kept_sqlite);
suite!(kept_postgres, open_kept_postgres);

mod kept {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_agrees_with_memory() {
        let (db, _dir) = platform::testing::sqlite_db().await.unwrap();
        super::kept_carts_are_what_the_database_holds(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_agrees_with_memory() {
        match platform::testing::postgres_db().await.unwrap() {
            Some(db) => super::kept_carts_are_what_the_database_holds(db).await,
            None => eprintln!("skipped: this backend's test server is not configured"),
        }
    }
}

pub struct Fixture {
    store: Arc<dyn CartStore>,
    redis: Option<Arc<RedisCartStore>>,
    _dir: Option<TempDir>,
}

async fn sql(db: platform::store::Db, dir: Option<TempDir>) -> Fixture {
    db.migrate("platform", PLATFORM_MIGRATIONS).await.unwrap();
    db.migrate(cart::SERVICE, cart::store::MIGRATIONS).await.unwrap();
    Fixture {
        store: Arc::new(SqlCartStore::new(db, TTL)),
        redis: None,
        _dir: dir,
    }
}

async fn open_sqlite() -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.unwrap();
    Some(sql(db, Some(dir)).await)
}

async fn open_postgres() -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.unwrap()?;
    Some(sql(db, None).await)
}

async fn migrated(db: &platform::store::Db) {
    db.migrate("platform", PLATFORM_MIGRATIONS).await.unwrap();
    db.migrate(cart::SERVICE, cart::store::MIGRATIONS).await.unwrap();
}

async fn open_kept_sqlite() -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.unwrap();
    migrated(&db).await;
    Some(Fixture {
        store: Arc::new(KeptCartStore::new(db, TTL)),
        redis: None,
        _dir: Some(dir),
    })
}

async fn open_kept_postgres() -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.unwrap()?;
    migrated(&db).await;
    Some(Fixture {
        store: Arc::new(KeptCartStore::new(db, TTL)),
        redis: None,
        _dir: None,
    })
}

/// Many carts changed at once (so their writes share transactions), every kind of change: the
/// database, read by a plain SQL store, holds exactly what the kept store answers.
async fn kept_carts_are_what_the_database_holds(db: platform::store::Db) {
    migrated(&db).await;
    let kept = Arc::new(KeptCartStore::new(db.clone(), TTL));
    let plain = SqlCartStore::new(db, TTL);
    let mut tasks = Vec::new();
    for c in 0..24_i64 {
        let kept = kept.clone();
        tasks.push(tokio::spawn(async move {
            let cart = format!("cart-{c}");
            for i in 0..6_i64 {
                let sku = format!("SKU-{}", (c + i) % 5);
                kept.add(&cart, &line(&sku, 1 + i % 3, 100 * (i + 1)), 99, NOW + i)
                    .await
                    .unwrap()
                    .unwrap();
            }
            match c % 4 {
                0 => assert!(kept.remove(&cart, &format!("SKU-{}", c % 5), NOW + 10).await.unwrap()),
                1 => assert!(kept
                    .set_quantity(&cart, &format!("SKU-{}", (c + 1) % 5), 42, NOW + 10)
                    .await
                    .unwrap()),
                2 => kept.clear(&cart).await.unwrap(),
                _ => {
                    let bought = vec![(format!("SKU-{}", c % 5), 1)];
                    kept.deduct(&cart, &format!("order-{c}"), &bought, NOW + 10)
                        .await
                        .unwrap();
                }
            }
            // A write after the cart's time is up starts it afresh.
            if c % 6 == 5 {
                kept.add(&cart, &line("LATE", 1, 100), 99, NOW + TTL_MS + 20)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let repriced = Snapshot {
        active: false,
        details: None,
    };
    kept.reprice("SKU-3", &repriced).await.unwrap();
    for c in 0..24 {
        let cart = format!("cart-{c}");
        for at in [NOW + 11, NOW + TTL_MS + 21] {
            let from_memory = kept.lines(&cart, at).await.unwrap();
            assert_eq!(from_memory, plain.lines(&cart, at).await.unwrap(), "{cart} at {at}");
            if at == NOW + 11 && c % 4 != 2 {
                assert!(!from_memory.is_empty(), "{cart}");
            }
        }
        for line in kept.lines(&cart, NOW + 11).await.unwrap() {
            assert_eq!(line.active, i64::from(line.sku != "SKU-3"), "{cart}: {line:?}");
        }
    }
    assert_eq!(
        plain.lines("cart-5", NOW + TTL_MS + 21).await.unwrap().len(),
        1,
        "only the late line"
    );
    // Requests dropped part way (a client that hung up): whatever of them was written, memory
    // says the same as the database.
    let mut dropped = Vec::new();
    for i in 0..40 {
        let kept = kept.clone();
        dropped.push(tokio::spawn(async move {
            let cart = format!("dropped-{}", i % 8);
            kept.add(&cart, &line(&format!("D-{i}"), 1, 100), 99, NOW + 30).await
        }));
    }
    for (i, task) in dropped.into_iter().enumerate() {
        for _ in 0..i % 4 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
    }
    for i in 0..8 {
        let cart = format!("dropped-{i}");
        // A dropped request's change may still be on its way to the database; a write (of
        // nothing) waits for it, as it holds the cart's lock until then.
        assert!(!kept.remove(&cart, "NONE", NOW + 31).await.unwrap());
        assert_eq!(
            kept.lines(&cart, NOW + 31).await.unwrap(),
            plain.lines(&cart, NOW + 31).await.unwrap(),
            "{cart}"
        );
    }
}

async fn open_redis() -> Option<Fixture> {
    let url = platform::testing::server_url(platform::testing::REDIS_URL_VAR)?;
    // A fresh prefix per test keeps concurrent tests (and earlier runs) apart.
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let store = Arc::new(RedisCartStore::connect(&url, &prefix, TTL).await.unwrap());
    Some(Fixture {
        store: store.clone(),
        redis: Some(store),
        _dir: None,
    })
}

const NOW: i64 = 1_800_000_000_000;

fn line(sku: &str, quantity: i64, price: i64) -> StoredLine {
    StoredLine {
        sku: sku.to_owned(),
        product_id: format!("product-{sku}"),
        name: format!("Product {sku}"),
        slug: format!("product-{}", sku.to_lowercase()),
        image: None,
        unit_price: price,
        added_price: price,
        currency: "USD".to_owned(),
        quantity,
        active: 1,
        added_at: NOW,
        updated_at: NOW,
    }
}

fn quantities(lines: &[StoredLine]) -> Vec<(&str, i64)> {
    lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect()
}

async fn adding_sums_quantities_up_to_the_maximum(f: Fixture) {
    let s = &f.store;
    assert_eq!(s.add("c", &line("A", 2, 500), 10, NOW).await.unwrap(), Ok(2));
    assert_eq!(s.add("c", &line("A", 3, 600), 10, NOW + 1).await.unwrap(), Ok(5));
    assert_eq!(s.add("c", &line("B", 1, 100), 10, NOW + 2).await.unwrap(), Ok(1));
    // Over the maximum: refused, nothing changes, the current quantity is reported.
    assert_eq!(s.add("c", &line("A", 6, 600), 10, NOW + 3).await.unwrap(), Err(5));
    assert_eq!(s.add("c", &line("C", 11, 600), 10, NOW + 3).await.unwrap(), Err(0));
    let lines = s.lines("c", NOW + 4).await.unwrap();
    assert_eq!(quantities(&lines), vec![("A", 5), ("B", 1)]);
    // The snapshot is refreshed; the first price is kept as the price when added.
    assert_eq!((lines[0].unit_price, lines[0].added_price), (600, 500));
    assert_eq!(lines[0].added_at, NOW);
}

async fn lines_change_quantity_and_go(f: Fixture) {
    let s = &f.store;
    s.add("c", &line("A", 2, 500), 99, NOW).await.unwrap().unwrap();
    s.add("c", &line("B", 2, 500), 99, NOW).await.unwrap().unwrap();
    assert!(s.set_quantity("c", "A", 7, NOW + 1).await.unwrap());
    assert!(!s.set_quantity("c", "GHOST", 7, NOW + 1).await.unwrap());
    assert!(!s.set_quantity("other", "A", 7, NOW + 1).await.unwrap());
    assert!(s.remove("c", "B", NOW + 2).await.unwrap());
    assert!(!s.remove("c", "B", NOW + 2).await.unwrap());
    assert_eq!(quantities(&s.lines("c", NOW + 3).await.unwrap()), vec![("A", 7)]);
    s.clear("c").await.unwrap();
    assert!(s.lines("c", NOW + 4).await.unwrap().is_empty());
    // Removing the last line leaves an empty cart that can be filled again.
    s.add("c", &line("A", 1, 500), 99, NOW + 5).await.unwrap().unwrap();
    assert!(s.remove("c", "A", NOW + 6).await.unwrap());
    assert!(s.lines("c", NOW + 7).await.unwrap().is_empty());
    assert_eq!(s.add("c", &line("A", 1, 500), 99, NOW + 8).await.unwrap(), Ok(1));
}

async fn carts_are_kept_apart(f: Fixture) {
    let s = &f.store;
    s.add("user:a", &line("A", 1, 500), 99, NOW).await.unwrap().unwrap();
    s.add("user:b", &line("A", 4, 500), 99, NOW).await.unwrap().unwrap();
    s.set_quantity("user:b", "A", 9, NOW + 1).await.unwrap();
    s.clear("user:b").await.unwrap();
    assert_eq!(quantities(&s.lines("user:a", NOW + 2).await.unwrap()), vec![("A", 1)]);
    assert!(s.lines("user:b", NOW + 2).await.unwrap().is_empty());
}

async fn taking_a_cart_empties_it_and_merging_caps_each_line(f: Fixture) {
    let s = &f.store;
    s.add("guest", &line("A", 3, 500), 99, NOW).await.unwrap().unwrap();
    s.add("guest", &line("B", 5, 300), 99, NOW + 1).await.unwrap().unwrap();
    s.add("user", &line("A", 2, 500), 99, NOW).await.unwrap().unwrap();
    let taken = s.take("guest", NOW + 2).await.unwrap();
    assert_eq!(quantities(&taken), vec![("A", 3), ("B", 5)]);
    assert!(s.take("guest", NOW + 3).await.unwrap().is_empty(), "taken once");
    assert!(s.lines("guest", NOW + 3).await.unwrap().is_empty());
    // 2 + 3 capped at 4; 5 capped at 10 stays 5.
    assert_eq!(s.merge_line("user", &taken[0], 4, NOW + 4).await.unwrap(), 4);
    assert_eq!(s.merge_line("user", &taken[1], 10, NOW + 4).await.unwrap(), 5);
    assert_eq!(
        quantities(&s.lines("user", NOW + 5).await.unwrap()),
        vec![("A", 4), ("B", 5)]
    );
}

async fn repricing_reaches_every_cart_holding_the_sku(f: Fixture) {
    let s = &f.store;
    s.add("one", &line("A", 1, 500), 99, NOW).await.unwrap().unwrap();
    s.add("two", &line("A", 2, 500), 99, NOW).await.unwrap().unwrap();
    s.add("two", &line("B", 2, 700), 99, NOW).await.unwrap().unwrap();
    let snapshot = Snapshot {
        active: true,
        details: Some(Details {
            product_id: "product-A".to_owned(),
            name: "Renamed".to_owned(),
            slug: "renamed".to_owned(),
            image: Some("https://img.example/a.png".to_owned()),
            unit_price: 450,
            currency: "USD".to_owned(),
        }),
    };
    assert_eq!(s.reprice("A", &snapshot).await.unwrap(), 2);
    for cart in ["one", "two"] {
        let lines = s.lines(cart, NOW + 1).await.unwrap();
        let a = lines.iter().find(|l| l.sku == "A").unwrap();
        assert_eq!((a.unit_price, a.added_price, a.name.as_str()), (450, 500, "Renamed"));
        assert_eq!(a.image.as_deref(), Some("https://img.example/a.png"));
    }
    let b = &s.lines("two", NOW + 1).await.unwrap()[1];
    assert_eq!(b.unit_price, 700, "other SKUs are untouched");
    // A deletion only marks the lines unavailable.
    let gone = Snapshot {
        active: false,
        details: None,
    };
    assert_eq!(s.reprice("A", &gone).await.unwrap(), 2);
    let a = &s.lines("one", NOW + 2).await.unwrap()[0];
    assert_eq!((a.active, a.unit_price, a.name.as_str()), (0, 450, "Renamed"));
    // A cart that dropped the SKU is not touched.
    s.remove("one", "A", NOW + 3).await.unwrap();
    assert_eq!(s.reprice("A", &snapshot).await.unwrap(), 1);
}

async fn an_idle_cart_is_reported_once_until_it_changes(f: Fixture) {
    let s = &f.store;
    s.add("idle", &line("A", 1, 500), 99, NOW).await.unwrap().unwrap();
    s.add("busy", &line("A", 1, 500), 99, NOW + 50_000)
        .await
        .unwrap()
        .unwrap();
    s.add("empty", &line("A", 1, 500), 99, NOW).await.unwrap().unwrap();
    s.remove("empty", "A", NOW).await.unwrap();
    let idle = s.idle(NOW + 10_000, NOW + 60_000, 100).await.unwrap();
    assert_eq!(
        idle.iter().map(|c| c.cart_key.as_str()).collect::<Vec<_>>(),
        vec!["idle"]
    );
    assert_eq!(idle[0].lines.len(), 1);
    assert!(s.mark_reported("idle", idle[0].updated_at).await.unwrap());
    assert!(!s.mark_reported("idle", idle[0].updated_at).await.unwrap(), "once");
    assert!(s.idle(NOW + 10_000, NOW + 60_000, 100).await.unwrap().is_empty());
    // A change makes it reportable again, later.
    s.add("idle", &line("B", 1, 500), 99, NOW + 70_000)
        .await
        .unwrap()
        .unwrap();
    assert!(s.idle(NOW + 10_000, NOW + 80_000, 100).await.unwrap().is_empty());
    let again = s.idle(NOW + 80_000, NOW + 90_000, 100).await.unwrap();
    let keys: Vec<&str> = again.iter().map(|c| c.cart_key.as_str()).collect();
    assert_eq!(keys, vec!["busy", "idle"]);
    // A stale mark (the cart changed after it was read) is refused.
    let idle_entry = again.iter().find(|c| c.cart_key == "idle").unwrap();
    s.add("idle", &line("B", 1, 500), 99, NOW + 95_000)
        .await
        .unwrap()
        .unwrap();
    assert!(!s.mark_reported("idle", idle_entry.updated_at).await.unwrap());
}

async fn concurrent_adds_to_one_cart_are_all_kept(f: Fixture) {
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let sku = if i % 2 == 0 { "A" } else { "B" };
            store
                .add("shared", &line(sku, 1, 500), 99, NOW + i)
                .await
                .unwrap()
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let lines = f.store.lines("shared", NOW + 100).await.unwrap();
    assert_eq!(quantities(&lines), vec![("A", 20), ("B", 20)]);
}

async fn every_write_refreshes_the_time_to_live(f: Fixture) {
    let s = &f.store;
    s.add("c", &line("A", 1, 500), 99, NOW).await.unwrap().unwrap();
    match &f.redis {
        Some(redis) => {
            // Shorten the TTL by hand; a write puts it back to the full day.
            let ttl = redis.ttl("c").await.unwrap().unwrap();
            assert!(ttl > 24 * 3600 - 60, "{ttl}");
            let client =
                ::redis::Client::open(platform::testing::server_url(platform::testing::REDIS_URL_VAR).unwrap())
                    .unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let key = redis.cart_key("c");
            let _: i64 = ::redis::cmd("EXPIRE")
                .arg(&key)
                .arg(100)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(redis.ttl("c").await.unwrap().unwrap() <= 100);
            s.set_quantity("c", "A", 2, NOW + 1).await.unwrap();
            assert!(redis.ttl("c").await.unwrap().unwrap() > 24 * 3600 - 60);
            s.add("c", &line("B", 1, 500), 99, NOW + 2).await.unwrap().unwrap();
            assert!(redis.ttl("c").await.unwrap().unwrap() > 24 * 3600 - 60);
        }
        None => {
            // Just before the TTL runs out a write extends it; without one the cart expires.
            let late = NOW + TTL_MS - 1;
            assert_eq!(s.lines("c", late).await.unwrap().len(), 1);
            s.set_quantity("c", "A", 2, late).await.unwrap();
            assert_eq!(
                s.lines("c", NOW + TTL_MS + 1).await.unwrap().len(),
                1,
                "extended by the write"
            );
            assert!(
                s.lines("c", late + TTL_MS).await.unwrap().is_empty(),
                "expired without writes"
            );
            assert!(!s.set_quantity("c", "A", 3, late + TTL_MS).await.unwrap());
            // A write to an expired cart starts it afresh.
            assert_eq!(s.add("c", &line("B", 1, 500), 99, late + TTL_MS).await.unwrap(), Ok(1));
            assert_eq!(
                quantities(&s.lines("c", late + TTL_MS + 1).await.unwrap()),
                vec![("B", 1)]
            );
            assert_eq!(s.purge_expired(late + 3 * TTL_MS).await.unwrap(), 1);
        }
    }
}

async fn what_an_order_bought_leaves_the_cart_once(f: Fixture) {
    let s = &f.store;
    s.add("buyer", &line("A", 3, 500), 99, NOW).await.unwrap().unwrap();
    s.add("buyer", &line("B", 1, 300), 99, NOW).await.unwrap().unwrap();
    s.add("buyer", &line("C", 2, 300), 99, NOW).await.unwrap().unwrap();
    let bought = vec![("A".to_owned(), 2), ("B".to_owned(), 1), ("GONE".to_owned(), 4)];
    s.deduct("buyer", "order-1", &bought, NOW + 1).await.unwrap();
    assert_eq!(
        quantities(&s.lines("buyer", NOW + 2).await.unwrap()),
        vec![("A", 1), ("C", 2)]
    );
    // The same order again (a redelivered event): nothing more leaves.
    s.deduct("buyer", "order-1", &bought, NOW + 3).await.unwrap();
    assert_eq!(
        quantities(&s.lines("buyer", NOW + 4).await.unwrap()),
        vec![("A", 1), ("C", 2)]
    );
    // Another order taking the rest empties the cart, which can be filled again.
    let rest = vec![("A".to_owned(), 1), ("C".to_owned(), 5)];
    s.deduct("buyer", "order-2", &rest, NOW + 5).await.unwrap();
    assert!(s.lines("buyer", NOW + 6).await.unwrap().is_empty());
    assert_eq!(s.add("buyer", &line("A", 1, 500), 99, NOW + 7).await.unwrap(), Ok(1));
    // Other carts are untouched.
    s.add("other", &line("A", 2, 500), 99, NOW).await.unwrap().unwrap();
    s.deduct("buyer", "order-3", &[("A".to_owned(), 1)], NOW + 8)
        .await
        .unwrap();
    assert_eq!(quantities(&s.lines("other", NOW + 9).await.unwrap()), vec![("A", 2)]);
}
