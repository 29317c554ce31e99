//! The store conformance suite: migrations, transactions, the portable SQL dialect, concurrent
//! writers, idempotent consumers and the transactional outbox, on SQLite and on PostgreSQL.
//!
//! Each test is a function taking a fresh, migrated [`Db`]; `store_suite!` instantiates all of
//! them once per backend. The PostgreSQL instance runs when `MERCATO_TEST_POSTGRES_URL` is set
//! and otherwise skips its tests with a note.

use std::sync::Arc;

use platform::bus::log::LogBus;
use platform::bus::Delivery;
use platform::id::new_id;
use platform::outbox::{enqueue, Outbox};
use platform::store::{is_unique_violation, Db, Migration};
use platform::testing::{self, eventually, tempfile_guard::TempDir};
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, applied, consumer, event, Fixture, DEADLINE};

macro_rules! store_suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            store_suite!(@tests $open;
                migrations_apply_in_version_order_once_and_rerunning_changes_nothing,
                failed_migration_leaves_no_partial_schema_and_is_not_recorded,
                rolled_back_or_dropped_transaction_leaves_nothing,
                unique_violations_are_recognised_and_other_errors_are_not,
                dollar_placeholders_on_conflict_and_returning_behave_alike,
                concurrent_transactional_increments_lose_no_update,
                idempotent_consumer_applies_the_same_event_once_per_group,
                failed_handler_records_nothing_so_the_retry_applies_the_event,
                committed_outbox_events_are_published_in_order_and_removed,
                rolled_back_outbox_event_is_never_published,
                a_transaction_knows_its_backend,
                filtered_lists_bind_their_values_in_order,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                crate::helpers::run(super::$open().await, |fixture: super::StoreFixture| {
                    super::$test(fixture.db)
                })
                .await;
            }
        )+
    };
}

store_suite!(sqlite, open_sqlite);
store_suite!(postgres, open_postgres);

/// A fresh database with the platform's and the suite's tables.
#[derive(Clone)]
pub struct StoreFixture {
    db: Db,
    /// Keeps a SQLite file's directory until the test is over.
    _dir: Option<Arc<TempDir>>,
}

async fn open_sqlite() -> anyhow::Result<Option<StoreFixture>> {
    let (db, dir) = testing::sqlite_db().await?;
    helpers::prepare(&db).await?;
    Ok(Some(StoreFixture {
        db,
        _dir: Some(Arc::new(dir)),
    }))
}

async fn open_postgres() -> anyhow::Result<Option<StoreFixture>> {
    let Some(db) = testing::postgres_db().await? else {
        eprintln!(
            "skipped: {} is not set, so the PostgreSQL store is not tested",
            testing::POSTGRES_URL_VAR
        );
        return Ok(None);
    };
    helpers::prepare(&db).await?;
    Ok(Some(StoreFixture { db, _dir: None }))
}

impl Fixture for StoreFixture {
    async fn check_leftovers(&self) -> anyhow::Result<()> {
        let (outbox, dead_letters) = helpers::leftovers(&self.db).await?;
        anyhow::ensure!(
            (outbox, dead_letters) == (0, 0),
            "{outbox} outbox rows and {dead_letters} dead letters"
        );
        Ok(())
    }

    async fn release(&self) -> anyhow::Result<()> {
        let dropped = async {
            if self.db.backend() == platform::store::Backend::Postgres {
                // The schema `testing::postgres_db` made for this test alone.
                let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                    .fetch_one(self.db.writer())
                    .await?;
                anyhow::ensure!(schema.starts_with("t_"), "{schema} is not a test schema");
                sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                    .execute(self.db.writer())
                    .await?;
            }
            Ok(())
        }
        .await;
        self.db.close().await;
        dropped
    }
}

async fn widget_count(db: &Db) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM widgets")
        .fetch_one(db.reader())
        .await?)
}

async fn recorded_migrations(db: &Db, scope: &str) -> anyhow::Result<Vec<(i64, String, i64)>> {
    Ok(
        sqlx::query_as("SELECT version, name, applied_at FROM _mercato_migrations WHERE scope = $1 ORDER BY version")
            .bind(scope)
            .fetch_all(db.reader())
            .await?,
    )
}

async fn migrations_apply_in_version_order_once_and_rerunning_changes_nothing(db: Db) -> anyhow::Result<()> {
    // Listed out of order on purpose; neither migration can run twice without failing.
    const SHELF: &[Migration] = &[
        Migration {
            version: 2,
            name: "stock the shelf",
            sql: "INSERT INTO shelf (id, label) VALUES ('s1', 'first')",
            postgres: None,
        },
        Migration {
            version: 1,
            name: "create the shelf",
            sql: "CREATE TABLE shelf (id TEXT PRIMARY KEY, label TEXT NOT NULL)",
            postgres: None,
        },
    ];
    db.migrate("shelf", SHELF).await?;
    let first_run = recorded_migrations(&db, "shelf").await?;
    let versions: Vec<(i64, &str)> = first_run
        .iter()
        .map(|(version, name, _)| (*version, name.as_str()))
        .collect();
    assert_eq!(versions, [(1, "create the shelf"), (2, "stock the shelf")]);

    db.migrate("shelf", SHELF).await?;
    assert_eq!(
        recorded_migrations(&db, "shelf").await?,
        first_run,
        "a second run records nothing new"
    );
    let shelf: Vec<(String, String)> = sqlx::query_as("SELECT id, label FROM shelf")
        .fetch_all(db.reader())
        .await?;
    assert_eq!(shelf, [("s1".to_owned(), "first".to_owned())]);

    // A later release adds a migration: only that one runs.
    let mut grown = SHELF.to_vec();
    grown.push(Migration {
        version: 3,
        name: "stock a second item",
        sql: "INSERT INTO shelf (id, label) VALUES ('s2', 'second')",
        postgres: None,
    });
    db.migrate("shelf", &grown).await?;
    let versions: Vec<i64> = recorded_migrations(&db, "shelf")
        .await?
        .iter()
        .map(|(version, _, _)| *version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    let items: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shelf")
        .fetch_one(db.reader())
        .await?;
    assert_eq!(items, 2);

    // Scopes are independent: the fixture's own migrations are recorded once each beside these.
    let scopes: Vec<(String, i64)> =
        sqlx::query_as("SELECT scope, COUNT(*) FROM _mercato_migrations GROUP BY scope ORDER BY scope")
            .fetch_all(db.reader())
            .await?;
    assert_eq!(
        scopes,
        [
            ("platform".to_owned(), 1),
            ("shelf".to_owned(), 3),
            ("suite".to_owned(), 1)
        ]
    );
    Ok(())
}

async fn failed_migration_leaves_no_partial_schema_and_is_not_recorded(db: Db) -> anyhow::Result<()> {
    const BROKEN: &[Migration] = &[Migration {
        version: 1,
        name: "half a change",
        sql: "CREATE TABLE half (id TEXT PRIMARY KEY); INSERT INTO no_such_table (id) VALUES ('x')",
        postgres: None,
    }];
    let err = db
        .migrate("broken", BROKEN)
        .await
        .expect_err("a migration with a failing statement fails");
    assert!(
        format!("{err:#}").contains("migration broken/1 `half a change` failed"),
        "the error names the migration: {err:#}"
    );
    assert!(recorded_migrations(&db, "broken").await?.is_empty());
    assert!(
        sqlx::query("SELECT COUNT(*) FROM half")
            .fetch_one(db.reader())
            .await
            .is_err(),
        "the statement before the failing one was rolled back"
    );

    // The fixed migration applies under the same version.
    const FIXED: &[Migration] = &[Migration {
        version: 1,
        name: "half a change, fixed",
        sql: "CREATE TABLE half (id TEXT PRIMARY KEY); INSERT INTO half (id) VALUES ('x')",
        postgres: None,
    }];
    db.migrate("broken", FIXED).await?;
    let versions: Vec<i64> = recorded_migrations(&db, "broken")
        .await?
        .iter()
        .map(|(version, _, _)| *version)
        .collect();
    assert_eq!(versions, [1]);
    Ok(())
}

async fn insert_widget(tx: &mut platform::store::Tx, id: &str, name: &str) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO widgets (id, name, quantity) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(name)
        .bind(1_i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn rolled_back_or_dropped_transaction_leaves_nothing(db: Db) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    insert_widget(&mut tx, "w1", "rolled back").await?;
    let inside: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM widgets")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(inside, 1, "the transaction sees its own write");
    tx.rollback().await?;
    assert_eq!(widget_count(&db).await?, 0);

    {
        let mut tx = db.begin().await?;
        insert_widget(&mut tx, "w2", "dropped").await?;
        // Dropped without commit, as when a handler returns early with `?`.
    }
    assert_eq!(widget_count(&db).await?, 0);

    let mut tx = db.begin().await?;
    insert_widget(&mut tx, "w3", "committed").await?;
    tx.commit().await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM widgets")
        .fetch_all(db.reader())
        .await?;
    assert_eq!(names, ["committed"]);
    Ok(())
}

async fn unique_violations_are_recognised_and_other_errors_are_not(db: Db) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    insert_widget(&mut tx, "w1", "bolt").await?;
    tx.commit().await?;

    let cases = [
        (
            "duplicate primary key",
            "INSERT INTO widgets (id, name, quantity) VALUES ('w1', 'nut', 1)",
            true,
        ),
        (
            "duplicate unique column",
            "INSERT INTO widgets (id, name, quantity) VALUES ('w2', 'bolt', 1)",
            true,
        ),
        (
            "missing NOT NULL value",
            "INSERT INTO widgets (id, name) VALUES ('w3', 'washer')",
            false,
        ),
        ("unknown table", "INSERT INTO nowhere (id) VALUES ('w4')", false),
    ];
    for (case, sql, expected) in cases {
        let err = sqlx::query(sql).execute(db.writer()).await.expect_err(case);
        assert_eq!(is_unique_violation(&err), expected, "{case}: {err}");
    }
    assert!(!is_unique_violation(&sqlx::Error::RowNotFound));

    // Inside a transaction, as services use it: recognised, and the transaction rolls back.
    let mut tx = db.begin().await?;
    insert_widget(&mut tx, "w5", "spring").await?;
    let err = sqlx::query("INSERT INTO widgets (id, name, quantity) VALUES ('w6', 'bolt', 1)")
        .execute(&mut *tx)
        .await
        .expect_err("the name is taken");
    assert!(is_unique_violation(&err), "{err}");
    tx.rollback().await?;
    assert_eq!(widget_count(&db).await?, 1);
    Ok(())
}

async fn dollar_placeholders_on_conflict_and_returning_behave_alike(db: Db) -> anyhow::Result<()> {
    // `$N` placeholders bind by number, whatever order they appear in.
    let inserted: (String, String, i64) =
        sqlx::query_as("INSERT INTO widgets (id, name, quantity) VALUES ($2, $1, $3) RETURNING id, name, quantity")
            .bind("bolt")
            .bind("w1")
            .bind(5_i64)
            .fetch_one(db.writer())
            .await?;
    assert_eq!(inserted, ("w1".to_owned(), "bolt".to_owned(), 5));
    // A placeholder may be used twice.
    let matches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM widgets WHERE id = $1 OR name = $1")
        .bind("bolt")
        .fetch_one(db.reader())
        .await?;
    assert_eq!(matches, 1);

    // ON CONFLICT DO NOTHING: nothing written, nothing returned.
    let skipped =
        sqlx::query("INSERT INTO widgets (id, name, quantity) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .bind("w1")
            .bind("other")
            .bind(9_i64)
            .execute(db.writer())
            .await?;
    assert_eq!(skipped.rows_affected(), 0);
    let returned: Option<String> = sqlx::query_scalar(
        "INSERT INTO widgets (id, name, quantity) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind("w2")
    .bind("bolt")
    .bind(9_i64)
    .fetch_optional(db.writer())
    .await?;
    assert_eq!(returned, None, "a conflict on the unique name returns no row");

    // ON CONFLICT DO UPDATE ... RETURNING gives the row as updated; so does UPDATE ... RETURNING.
    let upserted: i64 = sqlx::query_scalar(
        "INSERT INTO widgets (id, name, quantity) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET quantity = widgets.quantity + excluded.quantity
         RETURNING quantity",
    )
    .bind("w1")
    .bind("bolt")
    .bind(2_i64)
    .fetch_one(db.writer())
    .await?;
    assert_eq!(upserted, 7);
    let updated: i64 =
        sqlx::query_scalar("UPDATE widgets SET quantity = quantity - $1 WHERE id = $2 RETURNING quantity")
            .bind(3_i64)
            .bind("w1")
            .fetch_one(db.writer())
            .await?;
    assert_eq!(updated, 4);

    let rows: Vec<(String, String, i64)> = sqlx::query_as("SELECT id, name, quantity FROM widgets")
        .fetch_all(db.reader())
        .await?;
    assert_eq!(rows, [("w1".to_owned(), "bolt".to_owned(), 4)]);
    Ok(())
}

async fn concurrent_transactional_increments_lose_no_update(db: Db) -> anyhow::Result<()> {
    const WRITERS: i64 = 50;
    sqlx::query("INSERT INTO counters (name, value) VALUES ($1, 0)")
        .bind("hits")
        .execute(db.writer())
        .await?;
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin().await?;
                let value: i64 =
                    sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value")
                        .bind("hits")
                        .fetch_one(&mut *tx)
                        .await?;
                insert_widget(&mut tx, &new_id().to_string(), &format!("hit {value}")).await?;
                tx.commit().await?;
                anyhow::Ok(value)
            })
        })
        .collect();
    let mut seen = Vec::new();
    for writer in writers {
        seen.push(writer.await??);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=WRITERS).collect::<Vec<_>>(), "each writer saw its own value");
    let total: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = $1")
        .bind("hits")
        .fetch_one(db.reader())
        .await?;
    assert_eq!(total, WRITERS);
    assert_eq!(widget_count(&db).await?, WRITERS);
    Ok(())
}

async fn idempotent_consumer_applies_the_same_event_once_per_group(db: Db) -> anyhow::Result<()> {
    let (mailer, recorder) = consumer("mailer", &db);
    let registered = event("user.registered", 1);
    assert!(mailer.process(&registered).await?, "the first delivery applies");
    assert!(!mailer.process(&registered).await?, "the second delivery is recognised");
    // The path the bus takes: a redelivery succeeds without a second effect.
    mailer.deliver(&registered).await?;
    assert_eq!(applied(&db, "mailer").await?, vec![registered.clone()]);
    assert_eq!(recorder.calls(registered.id), 1, "the handler is not called again");

    // Another group keeps its own record and applies the event too.
    let (search, _) = consumer("search", &db);
    assert!(search.process(&registered).await?);
    assert_eq!(applied(&db, "search").await?, [registered]);
    Ok(())
}

async fn failed_handler_records_nothing_so_the_retry_applies_the_event(db: Db) -> anyhow::Result<()> {
    let (mailer, recorder) = consumer("mailer", &db);
    let registered = event("user.registered", 1);
    recorder.refuse(registered.id);
    let err = mailer.process(&registered).await.expect_err("the handler fails");
    assert!(format!("{err:#}").contains("the test refuses"), "{err:#}");
    let processed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(db.reader())
        .await?;
    assert_eq!(processed, 0, "a failed event is not marked processed");
    assert!(applied(&db, "mailer").await?.is_empty());

    recorder.accept(registered.id);
    assert!(mailer.process(&registered).await?);
    assert_eq!(applied(&db, "mailer").await?, vec![registered.clone()]);
    assert_eq!(recorder.calls(registered.id), 2);
    Ok(())
}

/// A relay from `db`'s outbox to a log bus in a SQLite database of its own, as in the
/// all-in-one mode.
struct Relay {
    outbox: Outbox,
    bus: LogBus,
    bus_db: Db,
    _bus_dir: TempDir,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(db: &Db) -> anyhow::Result<Self> {
        let (bus_db, bus_dir) = testing::sqlite_db().await?;
        let cancel = CancellationToken::new();
        let bus = LogBus::open(bus_db.clone(), cancel.clone()).await?;
        let outbox = Outbox::new(db.clone());
        let task = outbox.spawn_relay("suite", Arc::new(bus.clone()), cancel.clone());
        Ok(Self {
            outbox,
            bus,
            bus_db,
            _bus_dir: bus_dir,
            cancel,
            task,
        })
    }

    /// Waits until the bus holds at least `count` events; answers all of them.
    async fn published(&self, count: usize) -> Vec<platform::events::Event> {
        let bus = &self.bus;
        eventually(DEADLINE, || async move {
            let events = bus.events().await.ok()?;
            (events.len() >= count).then_some(events)
        })
        .await
        .unwrap_or_else(|| panic!("the relay did not publish {count} events in time"))
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await?;
        self.bus_db.close().await;
        Ok(())
    }
}

async fn committed_outbox_events_are_published_in_order_and_removed(db: Db) -> anyhow::Result<()> {
    let relay = Relay::start(&db).await?;
    let events = [
        event("order.placed", 1),
        event("order.paid", 2),
        event("order.shipped", 3),
    ];
    let mut tx = db.begin().await?;
    insert_widget(&mut tx, "w1", "the change the events announce").await?;
    for event in &events {
        enqueue(&mut tx, event).await?;
    }
    tx.commit().await?;
    relay.outbox.wake();

    assert_eq!(relay.published(events.len()).await, events);
    let outbox = &relay.outbox;
    let drained = eventually(
        DEADLINE,
        || async move { (outbox.pending().await.ok()? == 0).then_some(()) },
    )
    .await;
    assert!(drained.is_some(), "published rows leave the outbox");
    relay.stop().await
}

async fn rolled_back_outbox_event_is_never_published(db: Db) -> anyhow::Result<()> {
    let relay = Relay::start(&db).await?;
    let lost = event("order.placed", 1);
    let mut tx = db.begin().await?;
    insert_widget(&mut tx, "w1", "rolled back").await?;
    enqueue(&mut tx, &lost).await?;
    tx.rollback().await?;

    // Enqueued after the lost one: once the relay published it, it has passed where the
    // lost event would have been.
    let marker = event("order.placed", 2);
    let mut tx = db.begin().await?;
    insert_widget(&mut tx, "w2", "committed").await?;
    enqueue(&mut tx, &marker).await?;
    tx.commit().await?;
    relay.outbox.wake();

    assert_eq!(relay.published(1).await, [marker]);
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM widgets")
        .fetch_all(db.reader())
        .await?;
    assert_eq!(names, ["committed"]);
    let outbox = &relay.outbox;
    let drained = eventually(
        DEADLINE,
        || async move { (outbox.pending().await.ok()? == 0).then_some(()) },
    )
    .await;
    assert!(drained.is_some(), "the marker's row leaves the outbox");
    relay.stop().await
}

async fn a_transaction_knows_its_backend(db: Db) -> anyhow::Result<()> {
    let tx = db.begin().await?;
    anyhow::ensure!(
        platform::store::Backend::of(&tx) == Some(db.backend()),
        "{} is not {:?}",
        tx.backend_name(),
        db.backend()
    );
    tx.rollback().await?;
    Ok(())
}

async fn filtered_lists_bind_their_values_in_order(db: Db) -> anyhow::Result<()> {
    use platform::store::{Conditions, SqlValue};
    let mut tx = db.begin().await?;
    for (id, name) in [("w1", "alpha"), ("w2", "beta"), ("w3", "gamma"), ("w4", "delta")] {
        insert_widget(&mut tx, id, name).await?;
    }
    tx.commit().await?;
    let mut c = Conditions::default();
    c.push("name <> ?", SqlValue::Text("beta".to_owned()));
    c.push_in("id", ["w1", "w2", "w4"].map(|id| SqlValue::Text(id.to_owned())));
    c.push_in("id", std::iter::empty());
    let limit = c.bind(SqlValue::Int(5));
    let sql = format!("SELECT id FROM widgets {} ORDER BY id LIMIT {limit}", c.where_sql());
    let ids: Vec<String> = sqlx::query_scalar_with(&sql, c.into_arguments())
        .fetch_all(db.reader())
        .await?;
    anyhow::ensure!(ids == ["w1", "w4"], "{ids:?}");
    Ok(())
}

/// Counts every publish (the log bus would fold a second publish of an event into the first).
#[derive(Debug, Default)]
struct CountingBus {
    published: std::sync::Mutex<Vec<platform::events::Event>>,
}

#[async_trait::async_trait]
impl platform::bus::Bus for CountingBus {
    async fn publish(&self, event: &platform::events::Event) -> anyhow::Result<()> {
        self.published.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn subscribe(&self, _subscription: platform::bus::Subscription) -> anyhow::Result<()> {
        anyhow::bail!("not a bus to subscribe to")
    }

    async fn watch(&self, _types: Vec<String>, _handler: Arc<dyn Delivery>) -> anyhow::Result<()> {
        anyhow::bail!("not a bus to watch")
    }

    async fn ping(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Two replicas of a service, each with its relay, over one PostgreSQL outbox: every event is
/// published once, in the order it was enqueued (the relays take turns under an advisory lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_relays_publish_each_event_once_in_order() {
    let Some(fixture) = open_postgres().await.unwrap() else {
        return;
    };
    let db = fixture.db;
    let bus = Arc::new(CountingBus::default());
    let cancel = CancellationToken::new();
    let replicas = [Outbox::new(db.clone()), Outbox::new(db.clone())];
    let relays: Vec<_> = replicas
        .iter()
        .map(|outbox| outbox.spawn_relay("suite", bus.clone(), cancel.clone()))
        .collect();
    let mut expected = Vec::new();
    for batch in 0..20 {
        let mut tx = db.begin().await.unwrap();
        for i in 0..15 {
            let event = event("order.placed", batch * 15 + i);
            enqueue(&mut tx, &event).await.unwrap();
            expected.push(event);
        }
        tx.commit().await.unwrap();
        for outbox in &replicas {
            outbox.wake();
        }
    }
    let outbox = &replicas[0];
    let drained = eventually(
        DEADLINE,
        || async move { (outbox.pending().await.ok()? == 0).then_some(()) },
    )
    .await;
    assert!(drained.is_some(), "the relays drain the outbox");
    cancel.cancel();
    for relay in relays {
        relay.await.unwrap();
    }
    let published = bus.published.lock().unwrap().clone();
    assert_eq!(published.len(), expected.len(), "each event published once");
    assert_eq!(published, expected, "in the order enqueued");
}
