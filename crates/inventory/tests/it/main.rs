//! The inventory service against a real database: every test runs on SQLite and, when
//! `MERCATO_TEST_POSTGRES_URL` is set, on PostgreSQL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inventory::domain::{Line, ReleaseReason, ReservationStatus};
use inventory::service::{ReserveError, StockChange};
use inventory::{Context, Inventory, Settings};
use platform::clock::{OffsetClock, SharedClock};
use platform::error::ApiError;
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::store::Db;
use platform::testing::tempfile_guard::TempDir;

macro_rules! suite {
    ($backend:ident, $open:ident, $batch:expr) => {
        mod $backend {
            suite!(@tests $open, $batch;
                a_reservation_takes_every_line_or_none,
                lines_of_one_sku_are_summed_before_reserving,
                commit_and_release_are_idempotent_and_final,
                a_second_reserve_for_the_order_answers_the_first,
                expired_reservations_are_released_by_the_sweeper,
                low_stock_is_announced_once_per_crossing,
                availability_changes_are_announced_when_crossing_zero,
                admin_changes_keep_reserved_units_and_check_versions,
                every_movement_is_in_the_ledger,
                product_events_register_and_discontinue_skus,
                restocks_happen_once_per_reference,
                the_check_names_skus_that_break_the_invariant,
                flash_sale_sells_exactly_the_stock,
                flash_sale_of_bundles_sells_exactly_the_stock,
                an_order_paid_after_its_reservation_expired_takes_free_units_or_is_unfillable,
                kept_levels_follow_every_write,
                concurrent_duplicates_of_a_command_have_one_effect,
                a_command_that_breaks_its_batch_does_not_undo_the_others,
                admin_changes_interleave_with_reservations,
                a_reservation_can_be_finished_by_the_batch_that_makes_it,
            );
        }
    };
    (@tests $open:ident, $batch:expr; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                match super::$open($batch).await {
                    Some(fixture) => super::$test(fixture).await,
                    None => eprintln!("skipped: {} is not set", platform::testing::POSTGRES_URL_VAR),
                }
            }
        )+
    };
}

// Every test runs with reservations written in batches (the default) and with a transaction
// per command.
suite!(sqlite, open_sqlite, true);
suite!(postgres, open_postgres, true);
suite!(sqlite_alone, open_sqlite, false);
suite!(postgres_alone, open_postgres, false);

pub struct Fixture {
    inventory: Arc<Inventory>,
    clock: Arc<OffsetClock>,
    db: Db,
    _dir: Option<TempDir>,
}

async fn fixture(db: Db, dir: Option<TempDir>, batch: bool) -> Fixture {
    db.migrate("platform", PLATFORM_MIGRATIONS)
        .await
        .expect("platform migrations");
    db.migrate(inventory::SERVICE, inventory::store::MIGRATIONS)
        .await
        .expect("inventory migrations");
    let clock = Arc::new(OffsetClock::default());
    let shared: SharedClock = clock.clone();
    let settings = Settings {
        batch_reservations: batch,
        ..Settings::default()
    };
    let inventory = Arc::new(Inventory::new(db.clone(), shared, settings));
    Fixture {
        inventory,
        clock,
        db,
        _dir: dir,
    }
}

async fn open_sqlite(batch: bool) -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.expect("sqlite");
    Some(fixture(db, Some(dir), batch).await)
}

async fn open_postgres(batch: bool) -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.expect("postgres")?;
    Some(fixture(db, None, batch).await)
}

const CTX: Context<'static> = Context {
    actor: Some("tester"),
    correlation_id: None,
};

fn line(sku: &str, quantity: i64) -> Line {
    Line {
        sku: sku.to_owned(),
        quantity,
    }
}

/// Registers `sku` (as product.created would) and sets its stock.
async fn stock(f: &Fixture, sku: &str, on_hand: i64) {
    let mut tx = f.db.begin().await.unwrap();
    f.inventory
        .sync_product(&mut tx, &format!("product-{sku}"), None, &[sku.to_owned()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let change = StockChange::Set {
        on_hand,
        threshold: Some(0),
    };
    f.inventory.change_stock(sku, change, None, CTX).await.unwrap();
}

async fn levels(f: &Fixture, sku: &str) -> (i64, i64) {
    let view = f.inventory.stock(sku).await.unwrap();
    (view.on_hand, view.reserved)
}

/// The events in the outbox, oldest first, as (type, data).
async fn events(f: &Fixture, kind: &str) -> Vec<serde_json::Value> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT event_type, payload FROM outbox ORDER BY seq")
        .fetch_all(f.db.reader())
        .await
        .unwrap();
    rows.into_iter()
        .filter(|(t, _)| t == kind)
        .map(|(_, payload)| serde_json::from_str::<serde_json::Value>(&payload).unwrap()["data"].clone())
        .collect()
}

async fn assert_consistent(f: &Fixture) {
    let report = f.inventory.check().await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

fn shortages(err: ReserveError) -> Vec<(String, i64)> {
    match err {
        ReserveError::Short(short) => short.into_iter().map(|s| (s.sku, s.available)).collect(),
        ReserveError::Api(err) => panic!("expected a shortage, got {err:?}"),
    }
}

async fn a_reservation_takes_every_line_or_none(f: Fixture) {
    stock(&f, "A", 5).await;
    stock(&f, "B", 1).await;
    let err = f
        .inventory
        .reserve("order-1", &[line("A", 2), line("B", 2), line("GHOST", 1)], None, CTX)
        .await
        .unwrap_err();
    assert_eq!(
        shortages(err),
        vec![("B".to_owned(), 1), ("GHOST".to_owned(), 0)],
        "every short line is named"
    );
    assert_eq!(levels(&f, "A").await, (5, 0), "A was not kept reserved");
    assert!(matches!(
        f.inventory.reservation("order-1").await,
        Err(ApiError::NotFound(_))
    ));
    assert!(events(&f, "inventory.reserved").await.is_empty());

    let reservation = f
        .inventory
        .reserve("order-1", &[line("A", 2), line("B", 1)], None, CTX)
        .await
        .unwrap();
    assert_eq!(reservation.status, ReservationStatus::Active);
    assert_eq!(levels(&f, "A").await, (5, 2));
    assert_eq!(levels(&f, "B").await, (1, 1));
    let reserved = events(&f, "inventory.reserved").await;
    assert_eq!(reserved.len(), 1);
    assert_eq!(reserved[0]["order_id"], "order-1");
    assert_consistent(&f).await;
}

async fn lines_of_one_sku_are_summed_before_reserving(f: Fixture) {
    stock(&f, "BUNDLED", 3).await;
    // Each line alone fits; together they do not.
    let err = f
        .inventory
        .reserve("order-1", &[line("BUNDLED", 2), line("BUNDLED", 2)], None, CTX)
        .await
        .unwrap_err();
    assert_eq!(shortages(err), vec![("BUNDLED".to_owned(), 3)]);
    let ok = f
        .inventory
        .reserve("order-2", &[line("BUNDLED", 1), line("BUNDLED", 2)], None, CTX)
        .await
        .unwrap();
    assert_eq!(ok.lines, vec![line("BUNDLED", 3)]);
    assert_eq!(levels(&f, "BUNDLED").await, (3, 3));
}

async fn commit_and_release_are_idempotent_and_final(f: Fixture) {
    stock(&f, "A", 10).await;
    f.inventory.reserve("paid", &[line("A", 3)], None, CTX).await.unwrap();
    f.inventory
        .reserve("cancelled", &[line("A", 2)], None, CTX)
        .await
        .unwrap();
    assert_eq!(levels(&f, "A").await, (10, 5));

    for _ in 0..2 {
        let committed = f.inventory.commit("paid", CTX).await.unwrap();
        assert_eq!(committed.status, ReservationStatus::Committed);
        assert_eq!(levels(&f, "A").await, (7, 2), "the second commit changes nothing");
    }
    for _ in 0..2 {
        let released = f
            .inventory
            .release("cancelled", ReleaseReason::Cancelled, CTX)
            .await
            .unwrap();
        assert_eq!(released.status, ReservationStatus::Released);
        assert_eq!(released.release_reason.as_deref(), Some("cancelled"));
        assert_eq!(levels(&f, "A").await, (7, 0), "the second release changes nothing");
    }
    assert_eq!(events(&f, "inventory.committed").await.len(), 1);
    assert_eq!(events(&f, "inventory.released").await.len(), 1);
    // A finished reservation cannot go the other way.
    assert!(matches!(
        f.inventory.release("paid", ReleaseReason::Cancelled, CTX).await,
        Err(ApiError::Conflict(_))
    ));
    assert!(matches!(
        f.inventory.commit("cancelled", CTX).await,
        Err(ApiError::Conflict(_))
    ));
    assert!(matches!(
        f.inventory.commit("never-reserved", CTX).await,
        Err(ApiError::NotFound(_))
    ));
    assert_consistent(&f).await;
}

async fn a_second_reserve_for_the_order_answers_the_first(f: Fixture) {
    stock(&f, "A", 10).await;
    let first = f.inventory.reserve("order", &[line("A", 4)], None, CTX).await.unwrap();
    let again = f.inventory.reserve("order", &[line("A", 4)], None, CTX).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(levels(&f, "A").await, (10, 4), "reserved once");
    let other = f.inventory.reserve("order", &[line("A", 5)], None, CTX).await;
    assert!(matches!(other, Err(ReserveError::Api(ApiError::Conflict(_)))));
    assert_eq!(events(&f, "inventory.reserved").await.len(), 1);
}

async fn expired_reservations_are_released_by_the_sweeper(f: Fixture) {
    stock(&f, "A", 10).await;
    f.inventory
        .reserve("short-lived", &[line("A", 3)], Some(Duration::from_secs(60)), CTX)
        .await
        .unwrap();
    f.inventory
        .reserve("paid-in-time", &[line("A", 2)], Some(Duration::from_secs(60)), CTX)
        .await
        .unwrap();
    f.inventory
        .reserve("long-lived", &[line("A", 1)], Some(Duration::from_secs(3600)), CTX)
        .await
        .unwrap();
    assert_eq!(f.inventory.release_expired().await.unwrap(), 0, "nothing is due yet");
    f.inventory.commit("paid-in-time", CTX).await.unwrap();

    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.inventory.release_expired().await.unwrap(), 1);
    let expired = f.inventory.reservation("short-lived").await.unwrap();
    assert_eq!(expired.status, ReservationStatus::Released);
    assert_eq!(expired.release_reason.as_deref(), Some("expired"));
    assert_eq!(
        f.inventory.reservation("paid-in-time").await.unwrap().status,
        ReservationStatus::Committed
    );
    assert_eq!(
        f.inventory.reservation("long-lived").await.unwrap().status,
        ReservationStatus::Active
    );
    assert_eq!(levels(&f, "A").await, (8, 1));
    let released = events(&f, "inventory.released").await;
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["reason"], "expired");
    assert_eq!(released[0]["order_id"], "short-lived");
    assert_eq!(f.inventory.release_expired().await.unwrap(), 0, "released once");
    assert_consistent(&f).await;
}

async fn an_order_paid_after_its_reservation_expired_takes_free_units_or_is_unfillable(f: Fixture) {
    stock(&f, "A", 5).await;
    for order in ["late-lucky", "late-unlucky"] {
        f.inventory
            .reserve(order, &[line("A", 2)], Some(Duration::from_secs(60)), CTX)
            .await
            .unwrap();
    }
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.inventory.release_expired().await.unwrap(), 2);
    // Someone else takes what the expired reservations gave back, leaving 2 free.
    f.inventory
        .reserve("meanwhile", &[line("A", 3)], None, CTX)
        .await
        .unwrap();
    assert_eq!(levels(&f, "A").await, (5, 3));

    // The first payment comes in: the units are free, so they are sold after all.
    assert!(matches!(
        f.inventory.commit("late-lucky", CTX).await,
        Err(ApiError::Conflict(_))
    ));
    let late = f
        .inventory
        .commit_late("late-lucky", CTX)
        .await
        .unwrap()
        .expect("free units");
    assert_eq!(late.status, ReservationStatus::Committed);
    assert_eq!(levels(&f, "A").await, (3, 3));
    let committed = events(&f, "inventory.committed").await;
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0]["late"], true);

    // The second: nothing is free any more; nothing changes and orders is told.
    assert!(f.inventory.commit_late("late-unlucky", CTX).await.unwrap().is_none());
    assert_eq!(levels(&f, "A").await, (3, 3));
    assert_eq!(
        f.inventory.reservation("late-unlucky").await.unwrap().status,
        ReservationStatus::Released
    );
    let unfillable = events(&f, "inventory.unfillable").await;
    assert_eq!(unfillable.len(), 1);
    assert_eq!(unfillable[0]["order_id"], "late-unlucky");
    // Only an expired reservation is committed late.
    assert!(matches!(
        f.inventory.commit_late("meanwhile", CTX).await,
        Err(ApiError::Conflict(_))
    ));
    assert!(matches!(
        f.inventory.commit_late("late-lucky", CTX).await,
        Err(ApiError::Conflict(_))
    ));
    assert_consistent(&f).await;
}

async fn low_stock_is_announced_once_per_crossing(f: Fixture) {
    stock(&f, "A", 10).await;
    let threshold = StockChange::Set {
        on_hand: 10,
        threshold: Some(3),
    };
    f.inventory.change_stock("A", threshold, None, CTX).await.unwrap();
    // 10 → 7 available: above the threshold.
    f.inventory.reserve("o1", &[line("A", 3)], None, CTX).await.unwrap();
    assert!(events(&f, "inventory.low_stock").await.is_empty());
    // 7 → 3: crosses; 3 → 1: still below, no second alert.
    f.inventory.reserve("o2", &[line("A", 4)], None, CTX).await.unwrap();
    f.inventory.reserve("o3", &[line("A", 2)], None, CTX).await.unwrap();
    let alerts = events(&f, "inventory.low_stock").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["available"], 3);
    assert_eq!(alerts[0]["threshold"], 3);
    // Back above (release 4 → 5 available), then below again: a second alert.
    f.inventory.release("o2", ReleaseReason::Cancelled, CTX).await.unwrap();
    assert_eq!(events(&f, "inventory.low_stock").await.len(), 1);
    f.inventory.reserve("o4", &[line("A", 3)], None, CTX).await.unwrap();
    assert_eq!(events(&f, "inventory.low_stock").await.len(), 2);
    assert!(f.inventory.stock("A").await.unwrap().low_stock);
}

async fn availability_changes_are_announced_when_crossing_zero(f: Fixture) {
    stock(&f, "A", 2).await;
    let changes = events(&f, "inventory.availability_changed").await;
    assert_eq!(changes.len(), 1, "0 → 2 puts the SKU in stock: {changes:?}");
    assert_eq!(changes[0]["available"], 2);
    f.inventory.reserve("o1", &[line("A", 1)], None, CTX).await.unwrap();
    assert_eq!(events(&f, "inventory.availability_changed").await.len(), 1);
    f.inventory.reserve("o2", &[line("A", 1)], None, CTX).await.unwrap();
    let changes = events(&f, "inventory.availability_changed").await;
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1], serde_json::json!({"sku": "A", "available": 0}));
    f.inventory.release("o2", ReleaseReason::Expired, CTX).await.unwrap();
    assert_eq!(events(&f, "inventory.availability_changed").await[2]["available"], 1);
}

async fn admin_changes_keep_reserved_units_and_check_versions(f: Fixture) {
    stock(&f, "A", 10).await;
    f.inventory.reserve("o1", &[line("A", 6)], None, CTX).await.unwrap();
    let below = StockChange::Set {
        on_hand: 5,
        threshold: None,
    };
    let Err(ApiError::ConflictWith { members, .. }) = f.inventory.change_stock("A", below, None, CTX).await else {
        panic!("setting on hand below what is reserved must be refused");
    };
    assert_eq!(members["reserved"], 6);
    let remove = StockChange::Adjust {
        delta: -5,
        reason: "damaged".to_owned(),
    };
    assert!(matches!(
        f.inventory.change_stock("A", remove, None, CTX).await,
        Err(ApiError::ConflictWith { .. })
    ));
    assert_eq!(levels(&f, "A").await, (10, 6), "refused changes change nothing");

    let current = f.inventory.stock("A").await.unwrap();
    let add = StockChange::Adjust {
        delta: 5,
        reason: "delivery".to_owned(),
    };
    let after = f
        .inventory
        .change_stock("A", add.clone(), Some(current.version), CTX)
        .await
        .unwrap();
    assert_eq!(
        (after.on_hand, after.available, after.version),
        (15, 9, current.version + 1)
    );
    assert!(matches!(
        f.inventory.change_stock("A", add, Some(current.version), CTX).await,
        Err(ApiError::Conflict(_))
    ));
    let bad = StockChange::Adjust {
        delta: 0,
        reason: " ".to_owned(),
    };
    assert!(matches!(
        f.inventory.change_stock("A", bad, None, CTX).await,
        Err(ApiError::Validation(_))
    ));
    let negative = StockChange::Set {
        on_hand: -1,
        threshold: Some(-2),
    };
    let Err(ApiError::Validation(errors)) = f.inventory.change_stock("A", negative, None, CTX).await else {
        panic!("negative levels must be refused");
    };
    assert_eq!(errors.len(), 2);
    let unknown = StockChange::Set {
        on_hand: 1,
        threshold: None,
    };
    assert!(matches!(
        f.inventory.change_stock("NOPE", unknown, None, CTX).await,
        Err(ApiError::NotFound(_))
    ));
    assert_eq!(
        events(&f, "inventory.restocked").await.len(),
        2,
        "the first set and the delivery"
    );
}

async fn every_movement_is_in_the_ledger(f: Fixture) {
    stock(&f, "A", 10).await;
    f.inventory.reserve("o1", &[line("A", 4)], None, CTX).await.unwrap();
    f.inventory.commit("o1", CTX).await.unwrap();
    f.inventory.reserve("o2", &[line("A", 1)], None, CTX).await.unwrap();
    f.inventory
        .release("o2", ReleaseReason::PaymentFailed, CTX)
        .await
        .unwrap();
    let change = StockChange::Adjust {
        delta: -2,
        reason: "stock count".to_owned(),
    };
    f.inventory.change_stock("A", change, None, CTX).await.unwrap();
    let ledger = f.inventory.ledger("A", None, 100).await.unwrap();
    let kinds: Vec<(&str, i64, i64, i64, i64)> = ledger
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.on_hand_delta,
                e.reserved_delta,
                e.on_hand_after,
                e.reserved_after,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("adjust", -2, 0, 4, 0),
            ("release", 0, -1, 6, 0),
            ("reserve", 0, 1, 6, 1),
            ("commit", -4, -4, 6, 0),
            ("reserve", 0, 4, 10, 4),
            ("set", 10, 0, 10, 0),
        ]
    );
    assert_eq!(ledger[0].reason.as_deref(), Some("stock count"));
    assert_eq!(ledger[1].reason.as_deref(), Some("payment_failed"));
    assert_eq!(ledger[1].reference.as_deref(), Some("o2"));
    // Paging: entries before the third one.
    let older = f.inventory.ledger("A", Some(ledger[2].id), 2).await.unwrap();
    assert_eq!(older, ledger[3..5].to_vec());
}

async fn product_events_register_and_discontinue_skus(f: Fixture) {
    let mut tx = f.db.begin().await.unwrap();
    f.inventory
        .sync_product(&mut tx, "p1", Some("seller"), &["S".to_owned(), "M".to_owned()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let small = f.inventory.stock("S").await.unwrap();
    assert_eq!((small.on_hand, small.reserved, small.discontinued), (0, 0, false));
    f.inventory
        .change_stock(
            "M",
            StockChange::Set {
                on_hand: 4,
                threshold: None,
            },
            None,
            CTX,
        )
        .await
        .unwrap();
    // The product drops S and gains L; M keeps its stock.
    let mut tx = f.db.begin().await.unwrap();
    f.inventory
        .sync_product(&mut tx, "p1", Some("seller"), &["M".to_owned(), "L".to_owned()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(f.inventory.stock("S").await.unwrap().discontinued);
    assert_eq!(f.inventory.stock("M").await.unwrap().on_hand, 4);
    assert!(f.inventory.stock("L").await.is_ok());
    let err = f.inventory.reserve("o", &[line("S", 1)], None, CTX).await.unwrap_err();
    assert_eq!(shortages(err), vec![("S".to_owned(), 0)]);
    // The product is deleted: nothing more can be reserved.
    let mut tx = f.db.begin().await.unwrap();
    f.inventory
        .discontinue(&mut tx, &["M".to_owned(), "L".to_owned()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let err = f.inventory.reserve("o", &[line("M", 1)], None, CTX).await.unwrap_err();
    assert_eq!(shortages(err), vec![("M".to_owned(), 0)]);
}

/// The levels kept in memory for the cart, read first so they are kept, against the database.
async fn kept_is_current(f: &Fixture, sku: &str) -> (i64, i64, bool) {
    let skus = [sku.to_owned()];
    let kept = f.inventory.kept_stocks(&skus).await.unwrap();
    let read = f.inventory.stocks(&skus).await.unwrap();
    assert_eq!(kept, read, "kept levels of {sku} are the database's");
    (read[0].on_hand, read[0].reserved, read[0].discontinued)
}

async fn kept_levels_follow_every_write(f: Fixture) {
    stock(&f, "A", 5).await;
    assert_eq!(kept_is_current(&f, "A").await, (5, 0, false));
    f.inventory.reserve("o1", &[line("A", 2)], None, CTX).await.unwrap();
    assert_eq!(kept_is_current(&f, "A").await, (5, 2, false));
    f.inventory.commit("o1", CTX).await.unwrap();
    assert_eq!(kept_is_current(&f, "A").await, (3, 0, false));
    let change = StockChange::Adjust {
        delta: 7,
        reason: "delivery".to_owned(),
    };
    f.inventory.change_stock("A", change, None, CTX).await.unwrap();
    assert_eq!(kept_is_current(&f, "A").await, (10, 0, false));
    f.inventory
        .reserve("o2", &[line("A", 4)], Some(Duration::from_secs(60)), CTX)
        .await
        .unwrap();
    assert_eq!(kept_is_current(&f, "A").await, (10, 4, false));
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.inventory.release_expired().await.unwrap(), 1);
    assert_eq!(kept_is_current(&f, "A").await, (10, 0, false));
    // A product event, applied by the consumer in its own transaction, drops the SKU.
    let consumer = platform::consumer::IdempotentConsumer::new(
        "inventory-products",
        f.db.clone(),
        Arc::new(inventory::events::ProductSkus {
            inventory: f.inventory.clone(),
        }),
    );
    let event = platform::events::Event::new(
        "catalog",
        "product.updated",
        "product-A",
        serde_json::json!({"product_id": "product-A", "variants": [{"sku": "B"}]}),
        None,
    );
    assert!(consumer.process(&event).await.unwrap());
    assert_eq!(kept_is_current(&f, "A").await, (10, 0, true));
}

async fn restocks_happen_once_per_reference(f: Fixture) {
    stock(&f, "A", 3).await;
    f.inventory.reserve("o1", &[line("A", 3)], None, CTX).await.unwrap();
    f.inventory.commit("o1", CTX).await.unwrap();
    assert_eq!(levels(&f, "A").await, (0, 0));
    for expected in [true, false] {
        let done = f
            .inventory
            .restock("return-1", &[line("A", 2)], "returned", CTX)
            .await
            .unwrap();
        assert_eq!(done, expected);
    }
    assert_eq!(levels(&f, "A").await, (2, 0));
    assert!(matches!(
        f.inventory
            .restock("return-2", &[line("GHOST", 1)], "returned", CTX)
            .await,
        Err(ApiError::NotFound(_))
    ));
}

async fn the_check_names_skus_that_break_the_invariant(f: Fixture) {
    stock(&f, "A", 5).await;
    stock(&f, "B", 5).await;
    f.inventory
        .reserve("o1", &[line("A", 2), line("B", 1)], None, CTX)
        .await
        .unwrap();
    assert_consistent(&f).await;
    // Corrupt B behind the service's back: reserved no longer matches its reservations.
    sqlx::query("UPDATE stock SET reserved = 3 WHERE sku = 'B'")
        .execute(f.db.writer())
        .await
        .unwrap();
    let report = f.inventory.check().await.unwrap();
    assert_eq!(report.skus, 2);
    assert_eq!(report.violations.len(), 1);
    assert_eq!(
        (
            report.violations[0].sku.as_str(),
            report.violations[0].reserved,
            report.violations[0].held
        ),
        ("B", 3, 1)
    );
}

/// 2,000 reservations of one unit from 200 tasks against 100 units: exactly 100 succeed, the
/// available level never goes below zero, and reserved equals the active reservations.
async fn flash_sale_sells_exactly_the_stock(f: Fixture) {
    stock(&f, "HOT", 100).await;
    let sold = flash_sale(&f, |_| vec![line("HOT", 1)]).await;
    assert_eq!(sold, 100);
    assert_eq!(levels(&f, "HOT").await, (100, 100));
    assert_consistent(&f).await;
}

/// The same with two-SKU bundles: every sale takes one of each, or none.
async fn flash_sale_of_bundles_sells_exactly_the_stock(f: Fixture) {
    stock(&f, "BUNDLE-A", 100).await;
    stock(&f, "BUNDLE-B", 100).await;
    // Half the buyers list the SKUs in the other order: locks are still taken in one order.
    let sold = flash_sale(&f, |i| {
        if i % 2 == 0 {
            vec![line("BUNDLE-A", 1), line("BUNDLE-B", 1)]
        } else {
            vec![line("BUNDLE-B", 1), line("BUNDLE-A", 1)]
        }
    })
    .await;
    assert_eq!(sold, 100);
    assert_eq!(levels(&f, "BUNDLE-A").await, (100, 100));
    assert_eq!(levels(&f, "BUNDLE-B").await, (100, 100));
    assert_consistent(&f).await;
}

/// Runs 2,000 reservations from 200 concurrent tasks while a watcher checks that no SKU's
/// available level is ever negative; answers how many succeeded.
async fn flash_sale(f: &Fixture, lines: impl Fn(usize) -> Vec<Line> + Send + Sync + 'static) -> usize {
    let lines = Arc::new(lines);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let db = f.db.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            while !done.load(Ordering::SeqCst) {
                let negative: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock WHERE on_hand - reserved < 0")
                    .fetch_one(db.reader())
                    .await
                    .unwrap();
                assert_eq!(negative, 0, "available went below zero");
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for task in 0..200 {
        let inventory = f.inventory.clone();
        let lines = lines.clone();
        tasks.push(tokio::spawn(async move {
            let mut sold = 0;
            for attempt in 0..10 {
                let n = task * 10 + attempt;
                match inventory.reserve(&format!("order-{n}"), &lines(n), None, CTX).await {
                    Ok(_) => sold += 1,
                    Err(ReserveError::Short(_)) => {}
                    Err(ReserveError::Api(err)) => panic!("reservation {n} failed: {err:?}"),
                }
            }
            sold
        }));
    }
    let mut sold = 0;
    for task in tasks {
        sold += task.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(watcher.await.unwrap() > 0, "the watcher sampled the levels");
    sold
}

/// The same reserve, commit or release sent 20 times at once (retries of one order): one
/// reservation, one movement of units, one event; every copy gets the same answer.
async fn concurrent_duplicates_of_a_command_have_one_effect(f: Fixture) {
    stock(&f, "A", 50).await;
    stock(&f, "B", 50).await;
    let lines = vec![line("B", 2), line("A", 3)];
    let reserves = (0..20).map(|_| {
        let inventory = f.inventory.clone();
        let lines = lines.clone();
        tokio::spawn(async move { inventory.reserve("dup", &lines, None, CTX).await })
    });
    let mut ids = std::collections::BTreeSet::new();
    for reserve in reserves.collect::<Vec<_>>() {
        let reservation = reserve
            .await
            .unwrap()
            .expect("every copy is answered with the reservation");
        assert_eq!(reservation.lines, vec![line("A", 3), line("B", 2)]);
        ids.insert(reservation.id);
    }
    assert_eq!(ids.len(), 1, "one reservation: {ids:?}");
    assert_eq!(levels(&f, "A").await, (50, 3));
    assert_eq!(levels(&f, "B").await, (50, 2));
    assert_eq!(events(&f, "inventory.reserved").await.len(), 1);

    let commits = (0..20).map(|_| {
        let inventory = f.inventory.clone();
        tokio::spawn(async move { inventory.commit("dup", CTX).await })
    });
    for commit in commits.collect::<Vec<_>>() {
        let committed = commit.await.unwrap().expect("every copy is answered with the commit");
        assert_eq!(committed.status, ReservationStatus::Committed);
    }
    assert_eq!(levels(&f, "A").await, (47, 0), "sold once");
    assert_eq!(levels(&f, "B").await, (48, 0));
    assert_eq!(events(&f, "inventory.committed").await.len(), 1);

    let releases = (0..20).map(|_| {
        let inventory = f.inventory.clone();
        tokio::spawn(async move { inventory.release("dup", ReleaseReason::Cancelled, CTX).await })
    });
    for release in releases.collect::<Vec<_>>() {
        assert!(matches!(release.await.unwrap(), Err(ApiError::Conflict(_))));
    }
    assert!(events(&f, "inventory.released").await.is_empty());
    assert_consistent(&f).await;
}

/// 20 commits at once, one of them of a reservation whose SKU lost its reserved units behind
/// the service's back: that commit fails and changes nothing, the 19 others are each done
/// exactly once, whichever commands shared a transaction.
async fn a_command_that_breaks_its_batch_does_not_undo_the_others(f: Fixture) {
    stock(&f, "A", 100).await;
    stock(&f, "BROKEN", 10).await;
    for n in 0..19 {
        f.inventory
            .reserve(&format!("good-{n}"), &[line("A", 1)], None, CTX)
            .await
            .unwrap();
    }
    f.inventory
        .reserve("bad", &[line("BROKEN", 2)], None, CTX)
        .await
        .unwrap();
    sqlx::query("UPDATE stock SET reserved = 0 WHERE sku = 'BROKEN'")
        .execute(f.db.writer())
        .await
        .unwrap();
    let commits: Vec<_> = (0..20)
        .map(|n| {
            let inventory = f.inventory.clone();
            let order = if n == 7 {
                "bad".to_owned()
            } else {
                format!("good-{}", n - usize::from(n > 7))
            };
            tokio::spawn(async move { (order.clone(), inventory.commit(&order, CTX).await) })
        })
        .collect();
    for commit in commits {
        let (order, result) = commit.await.unwrap();
        if order == "bad" {
            assert!(matches!(result, Err(ApiError::Internal(_))), "{result:?}");
        } else {
            assert_eq!(result.unwrap().status, ReservationStatus::Committed, "{order}");
        }
    }
    assert_eq!(levels(&f, "A").await, (81, 0), "each good commit sold its unit once");
    assert_eq!(levels(&f, "BROKEN").await, (10, 0), "the broken commit moved nothing");
    assert_eq!(
        f.inventory.reservation("bad").await.unwrap().status,
        ReservationStatus::Active
    );
    let committed = events(&f, "inventory.committed").await;
    assert_eq!(committed.len(), 19);
    assert!(committed.iter().all(|data| data["order_id"] != "bad"));
    let ledger = f.inventory.ledger("A", None, 100).await.unwrap();
    assert_eq!(ledger.iter().filter(|entry| entry.kind == "commit").count(), 19);
}

/// Reservations and commits of one SKU from 50 tasks while an admin adjusts it 20 times: every
/// change counts once, and the ledger adds up to the level.
async fn admin_changes_interleave_with_reservations(f: Fixture) {
    stock(&f, "BUSY", 1_000).await;
    let buyers: Vec<_> = (0..50)
        .map(|task| {
            let inventory = f.inventory.clone();
            tokio::spawn(async move {
                for n in 0..4 {
                    let order = format!("order-{task}-{n}");
                    inventory.reserve(&order, &[line("BUSY", 1)], None, CTX).await.unwrap();
                    inventory.commit(&order, CTX).await.unwrap();
                }
            })
        })
        .collect();
    let admin = {
        let inventory = f.inventory.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let change = StockChange::Adjust {
                    delta: 1,
                    reason: "found one".to_owned(),
                };
                inventory.change_stock("BUSY", change, None, CTX).await.unwrap();
            }
        })
    };
    for buyer in buyers {
        buyer.await.unwrap();
    }
    admin.await.unwrap();
    assert_eq!(levels(&f, "BUSY").await, (1_000 + 20 - 200, 0));
    let ledger = f.inventory.ledger("BUSY", None, 1_000).await.unwrap();
    assert_eq!(ledger.len(), 1 + 20 + 200 + 200, "set, adjustments, reserves, commits");
    let on_hand: i64 = ledger.iter().map(|entry| entry.on_hand_delta).sum();
    assert_eq!(on_hand, 820, "the ledger adds up to the level");
    assert_consistent(&f).await;
}

/// Each order's reserve and its commit (or release) sent at once, so that they often share a
/// batch: whichever runs first, the order ends as its answers say, the stock agrees, and each
/// event is written once.
async fn a_reservation_can_be_finished_by_the_batch_that_makes_it(f: Fixture) {
    stock(&f, "A", 1_000).await;
    let pairs: Vec<_> = (0..60)
        .map(|n| {
            let inventory = f.inventory.clone();
            tokio::spawn(async move {
                let order = format!("o-{n}");
                let lines = [line("A", 2)];
                let reserve = inventory.reserve(&order, &lines, None, CTX);
                let finish = async {
                    if n % 2 == 0 {
                        inventory.commit(&order, CTX).await
                    } else {
                        inventory.release(&order, ReleaseReason::Cancelled, CTX).await
                    }
                };
                let (reserved, finished) = tokio::join!(reserve, finish);
                reserved.expect("the stock covers every order");
                (order, finished.map(|reservation| reservation.status))
            })
        })
        .collect();
    let (mut sold, mut held, mut committed, mut released) = (0, 0, 0, 0);
    for pair in pairs {
        let (order, finished) = pair.await.unwrap();
        let stored = f.inventory.reservation(&order).await.unwrap();
        match finished {
            Ok(status) => {
                assert_eq!(stored.status, status, "{order}");
                if status == ReservationStatus::Committed {
                    sold += 2;
                    committed += 1;
                } else {
                    released += 1;
                }
            }
            // The finish ran before the reserve: the reservation stays active.
            Err(err) => {
                assert!(matches!(err, ApiError::NotFound(_)), "{order}: {err:?}");
                assert_eq!(stored.status, ReservationStatus::Active, "{order}");
                held += 2;
            }
        }
    }
    assert_eq!(levels(&f, "A").await, (1_000 - sold, held));
    assert_eq!(events(&f, "inventory.reserved").await.len(), 60);
    assert_eq!(events(&f, "inventory.committed").await.len(), committed);
    assert_eq!(events(&f, "inventory.released").await.len(), released);
    assert_consistent(&f).await;
}
