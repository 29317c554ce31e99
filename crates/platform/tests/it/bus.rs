//! The bus conformance suite: delivery to consumer groups, deduplication, order, type filters,
//! retries, dead letters and their replay, on the durable in-process log and on NATS JetStream.
//!
//! Each test is a function taking a [`BusFixture`]; `bus_suite!` instantiates all of them once
//! per backend. The NATS instance runs when `MERCATO_TEST_NATS_URL` is set, each test on a
//! stream and subject prefix of its own, and otherwise skips its tests with a note. The
//! restart test at the end is the log bus's alone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use platform::bus::log::LogBus;
use platform::bus::nats::{NatsBus, NatsConfig};
use platform::bus::{Bus, Delivery, Subscription};
use platform::consumer::{DeadLetter, DeadLetters};
use platform::error::ApiError;
use platform::events::Event;
use platform::id::new_id;
use platform::page::PageRequest;
use platform::store::{Db, DbOptions};
use platform::testing::{self, eventually, tempfile_guard::TempDir};
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, applied, consumer, event, Fixture, Recorder, DEADLINE, RETRY};

macro_rules! bus_suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            bus_suite!(@tests $open;
                published_event_reaches_the_subscribed_group,
                every_group_receives_every_event_from_its_own_position,
                event_published_twice_is_delivered_once,
                one_group_receives_events_in_publish_order,
                group_receives_only_the_types_it_subscribed_to,
                failing_event_is_tried_max_attempts_times_then_dead_lettered,
                replayed_dead_letter_is_applied_once_and_cannot_be_replayed_again,
                redelivered_event_is_applied_once,
                watchers_get_each_event_published_after_they_watch,
                a_batch_is_published_in_order_and_its_copies_once,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                crate::helpers::run(super::$open().await, super::$test).await;
            }
        )+
    };
}

bus_suite!(log, open_log);
bus_suite!(nats, open_nats);

/// A bus for one test, and the consumers' own database (processed events, dead letters and
/// the recorders' effects), which is SQLite on every backend.
#[derive(Clone)]
pub struct BusFixture {
    bus: Arc<dyn Bus>,
    db: Db,
    cancel: CancellationToken,
    /// Open dead letters the test means to leave; any other fails it.
    expected_dead_letters: Arc<AtomicI64>,
    /// The log bus's database, closed after the test.
    bus_db: Option<Db>,
    /// The NATS stream to delete after the test.
    nats: Option<NatsConfig>,
    _dirs: Arc<Vec<TempDir>>,
}

async fn open_log() -> anyhow::Result<Option<BusFixture>> {
    let (db, db_dir) = testing::sqlite_db().await?;
    helpers::prepare(&db).await?;
    let (bus_db, bus_dir) = testing::sqlite_db().await?;
    let cancel = CancellationToken::new();
    let bus = LogBus::open(bus_db.clone(), cancel.clone()).await?;
    Ok(Some(BusFixture {
        bus: Arc::new(bus),
        db,
        cancel,
        expected_dead_letters: Arc::default(),
        bus_db: Some(bus_db),
        nats: None,
        _dirs: Arc::new(vec![db_dir, bus_dir]),
    }))
}

async fn open_nats() -> anyhow::Result<Option<BusFixture>> {
    let Some(url) = testing::server_url(testing::NATS_URL_VAR) else {
        eprintln!(
            "skipped: {} is not set, so the NATS bus is not tested",
            testing::NATS_URL_VAR
        );
        return Ok(None);
    };
    let unique = new_id().simple();
    let config = NatsConfig {
        stream: format!("TEST_{unique}"),
        subject_prefix: format!("test{unique}"),
        ..NatsConfig::new(&url)
    };
    let (db, db_dir) = testing::sqlite_db().await?;
    helpers::prepare(&db).await?;
    let cancel = CancellationToken::new();
    let bus = NatsBus::connect(config.clone(), cancel.clone()).await?;
    Ok(Some(BusFixture {
        bus: Arc::new(bus),
        db,
        cancel,
        expected_dead_letters: Arc::default(),
        bus_db: None,
        nats: Some(config),
        _dirs: Arc::new(vec![db_dir]),
    }))
}

impl Fixture for BusFixture {
    async fn check_leftovers(&self) -> anyhow::Result<()> {
        let (_, dead_letters) = helpers::leftovers(&self.db).await?;
        let expected = self.expected_dead_letters.load(Ordering::SeqCst);
        anyhow::ensure!(
            dead_letters == expected,
            "{dead_letters} open dead letters, {expected} expected"
        );
        Ok(())
    }

    async fn release(&self) -> anyhow::Result<()> {
        self.cancel.cancel();
        if let Some(bus_db) = &self.bus_db {
            bus_db.close().await;
        }
        self.db.close().await;
        if let Some(config) = &self.nats {
            let client = async_nats::connect(&config.url).await?;
            async_nats::jetstream::new(client).delete_stream(&config.stream).await?;
        }
        Ok(())
    }
}

impl BusFixture {
    /// Subscribes group `group` to `types` with a handler that records every delivery.
    async fn tally(&self, group: &str, types: &[&str]) -> anyhow::Result<Arc<Tally>> {
        let tally = Arc::new(Tally::default());
        self.bus
            .subscribe(Subscription {
                group: group.to_owned(),
                types: types.iter().map(|t| (*t).to_owned()).collect(),
                handler: tally.clone(),
                retry: RETRY,
            })
            .await?;
        Ok(tally)
    }

    /// Starts idempotent consumer group `group` for every type, registered for dead letters.
    async fn start_consumer(&self, group: &str) -> anyhow::Result<(DeadLetters, Arc<Recorder>)> {
        let (consumer, recorder) = consumer(group, &self.db);
        let mut dead_letters = DeadLetters::default();
        dead_letters.register(consumer, &["*"]);
        dead_letters.start(self.bus.as_ref(), RETRY).await?;
        Ok((dead_letters, recorder))
    }

    /// Waits until `group` has applied at least `count` events; answers all it applied.
    async fn applied(&self, group: &str, count: usize) -> Vec<Event> {
        let db = &self.db;
        eventually(DEADLINE, || async move {
            let events = applied(db, group).await.ok()?;
            (events.len() >= count).then_some(events)
        })
        .await
        .unwrap_or_else(|| panic!("group {group} did not apply {count} events in time"))
    }

    /// Leaves `count` open dead letters without failing the test.
    fn expect_dead_letters(&self, count: i64) {
        self.expected_dead_letters.store(count, Ordering::SeqCst);
    }
}

/// A subscription handler that records every delivery, duplicates included, and never fails.
#[derive(Default)]
struct Tally {
    delivered: Mutex<Vec<Event>>,
}

impl Tally {
    /// Waits until at least `count` events were delivered; answers all of them.
    async fn received(&self, count: usize) -> Vec<Event> {
        eventually(DEADLINE, || async move {
            let delivered = self.delivered.lock().unwrap().clone();
            (delivered.len() >= count).then_some(delivered)
        })
        .await
        .unwrap_or_else(|| panic!("{count} events were not delivered in time"))
    }
}

#[async_trait]
impl Delivery for Tally {
    async fn deliver(&self, event: &Event) -> anyhow::Result<()> {
        self.delivered.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn dead_letter(&self, event: &Event, error: &str, _attempts: u32) -> anyhow::Result<()> {
        anyhow::bail!("a tally never fails, yet event {} was dead-lettered: {error}", event.id)
    }
}

/// The first page of a list, as an admin asks for it.
fn first_page() -> PageRequest {
    PageRequest { limit: 20, after: None }
}

/// Waits until `dead_letters` lists at least one letter; answers the list.
async fn dead_lettered(dead_letters: &DeadLetters) -> Vec<DeadLetter> {
    let first_page = first_page();
    let page = &first_page;
    eventually(DEADLINE, || async move {
        let letters = dead_letters.list(page).await.ok()?.items;
        (!letters.is_empty()).then_some(letters)
    })
    .await
    .expect("the failing event was not dead-lettered in time")
}

/// A watcher that keeps what it is handed.
#[derive(Default)]
struct Seen(Mutex<Vec<Event>>);

#[async_trait]
impl Delivery for Seen {
    async fn deliver(&self, event: &Event) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn dead_letter(&self, _event: &Event, _error: &str, _attempts: u32) -> anyhow::Result<()> {
        anyhow::bail!("watchers never dead-letter")
    }
}

impl Seen {
    async fn when(&self, n: usize) -> Vec<Event> {
        eventually(DEADLINE, || async {
            let seen = self.0.lock().unwrap().clone();
            (seen.len() >= n).then_some(seen)
        })
        .await
        .unwrap_or_else(|| self.0.lock().unwrap().clone())
    }
}

async fn watchers_get_each_event_published_after_they_watch(bus: BusFixture) -> anyhow::Result<()> {
    let before = event("user.registered", 0);
    bus.bus.publish(&before).await?;
    // Two watchers, as two processes would be: each gets every event it watches.
    let registrations = Arc::new(Seen::default());
    let everything = Arc::new(Seen::default());
    bus.bus
        .watch(vec!["user.registered".to_owned()], registrations.clone())
        .await?;
    bus.bus.watch(vec!["*".to_owned()], everything.clone()).await?;
    let (registered, paid) = (event("user.registered", 1), event("order.paid", 2));
    bus.bus.publish(&registered).await?;
    bus.bus.publish(&paid).await?;
    let all = everything.when(2).await;
    assert_eq!(all, [registered.clone(), paid], "nothing from before the watch");
    assert_eq!(registrations.when(1).await, [registered], "only the watched types");
    Ok(())
}

async fn published_event_reaches_the_subscribed_group(bus: BusFixture) -> anyhow::Result<()> {
    let mailer = bus.tally("mailer", &["user.registered"]).await?;
    assert!(bus.tally("mailer", &["*"]).await.is_err(), "a group subscribes once");
    let registered = event("user.registered", 1);
    bus.bus.publish(&registered).await?;
    assert_eq!(mailer.received(1).await, [registered]);
    bus.bus.ping().await
}

async fn every_group_receives_every_event_from_its_own_position(bus: BusFixture) -> anyhow::Result<()> {
    let early = bus.tally("early", &["*"]).await?;
    let first = [event("order.placed", 1), event("order.paid", 2)];
    for event in &first {
        bus.bus.publish(event).await?;
    }
    assert_eq!(early.received(2).await, first);

    // A group that joins later starts from the beginning, not from where the other one is.
    let late = bus.tally("late", &["*"]).await?;
    assert_eq!(late.received(2).await, first);

    let third = event("order.shipped", 3);
    bus.bus.publish(&third).await?;
    let all = [first[0].clone(), first[1].clone(), third];
    assert_eq!(early.received(3).await, all);
    assert_eq!(late.received(3).await, all);
    Ok(())
}

async fn event_published_twice_is_delivered_once(bus: BusFixture) -> anyhow::Result<()> {
    let group = bus.tally("billing", &["*"]).await?;
    let placed = event("order.placed", 1);
    // The outbox relay publishes twice when it crashes between publishing and deleting.
    bus.bus.publish(&placed).await?;
    bus.bus.publish(&placed).await?;
    // Published after both copies: once it arrives, a second copy would have arrived before it.
    let marker = event("order.paid", 2);
    bus.bus.publish(&marker).await?;
    assert_eq!(group.received(2).await, [placed, marker]);
    Ok(())
}

async fn one_group_receives_events_in_publish_order(bus: BusFixture) -> anyhow::Result<()> {
    let group = bus.tally("search", &["*"]).await?;
    let kinds = ["product.created", "product.updated", "product.deleted"];
    let published: Vec<Event> = (0..30).map(|n| event(kinds[n % kinds.len()], n)).collect();
    for event in &published {
        bus.bus.publish(event).await?;
    }
    assert_eq!(group.received(published.len()).await, published);
    Ok(())
}

async fn a_batch_is_published_in_order_and_its_copies_once(bus: BusFixture) -> anyhow::Result<()> {
    let group = bus.tally("search", &["*"]).await?;
    let kinds = ["product.created", "product.updated", "product.deleted"];
    let batch: Vec<Event> = (0..40).map(|n| event(kinds[n % kinds.len()], n)).collect();
    let (published, outcome) = bus.bus.publish_all(&batch[..25]).await;
    outcome?;
    assert_eq!(published, 25);
    // A relay that crashed before deleting sends the same rows again, with the rest.
    let (published, outcome) = bus.bus.publish_all(&batch[20..]).await;
    outcome?;
    assert_eq!(published, 20);
    assert_eq!(bus.bus.publish_all(&[]).await.0, 0);
    // Published after the copies: once it arrives, a second copy would have arrived before it.
    let marker = event("product.updated", 99);
    bus.bus.publish(&marker).await?;
    let mut expected = batch.clone();
    expected.push(marker);
    assert_eq!(group.received(expected.len()).await, expected);
    Ok(())
}

async fn group_receives_only_the_types_it_subscribed_to(bus: BusFixture) -> anyhow::Result<()> {
    let registered = event("user.registered", 1);
    let placed = event("order.placed", 2);
    let updated = event("cart.updated", 3);
    let paid = event("order.paid", 4);
    let cases = [
        ("everything", vec!["*"], vec![&registered, &placed, &updated, &paid]),
        ("orders", vec!["order.placed", "order.paid"], vec![&placed, &paid]),
        ("payments", vec!["order.paid"], vec![&paid]),
    ];
    let mut groups = Vec::new();
    for (group, types, _) in &cases {
        groups.push(bus.tally(group, types).await?);
    }
    for event in [&registered, &placed, &updated, &paid] {
        bus.bus.publish(event).await?;
    }
    // `paid` is the last event published, so every group has seen all it will see once it
    // arrives.
    for ((group, _, expected), tally) in cases.iter().zip(&groups) {
        let expected: Vec<Event> = expected.iter().map(|event| (*event).clone()).collect();
        assert_eq!(tally.received(expected.len()).await, expected, "group {group}");
    }
    Ok(())
}

async fn failing_event_is_tried_max_attempts_times_then_dead_lettered(bus: BusFixture) -> anyhow::Result<()> {
    let (dead_letters, recorder) = bus.start_consumer("billing").await?;
    let poison = event("order.placed", 1);
    recorder.refuse(poison.id);
    bus.bus.publish(&poison).await?;

    let letters = dead_lettered(&dead_letters).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.consumer, "billing");
    assert_eq!(letter.event_id, poison.id.to_string());
    assert_eq!(letter.event_type, "order.placed");
    assert_eq!(letter.attempts, i64::from(RETRY.max_attempts));
    assert!(
        letter.error.contains("the test refuses event"),
        "the handler's error is kept: {}",
        letter.error
    );
    assert_eq!(letter.event["id"], poison.id.to_string());
    assert!(letter.replayed_at.is_none());

    // The group moves past the dead letter and applies what follows.
    let next = event("order.placed", 2);
    bus.bus.publish(&next).await?;
    assert_eq!(bus.applied("billing", 1).await, [next]);
    assert_eq!(recorder.calls(poison.id), RETRY.max_attempts);
    assert_eq!(dead_letters.count().await?, 1);
    bus.expect_dead_letters(1);
    Ok(())
}

async fn replayed_dead_letter_is_applied_once_and_cannot_be_replayed_again(bus: BusFixture) -> anyhow::Result<()> {
    let (dead_letters, recorder) = bus.start_consumer("billing").await?;
    let poison = event("order.placed", 1);
    recorder.refuse(poison.id);
    bus.bus.publish(&poison).await?;
    let letter = dead_lettered(&dead_letters).await.remove(0);
    let mut calls = RETRY.max_attempts;
    assert_eq!(recorder.calls(poison.id), calls);

    // While the cause persists, a replay fails and the letter stays open with the reason.
    let failed = dead_letters.replay(letter.id).await;
    assert!(matches!(failed, Err(ApiError::Unprocessable(_))), "{failed:?}");
    calls += 1;
    let still_open = dead_letters.list(&first_page()).await?.items;
    assert_eq!(still_open.len(), 1);
    let replay_error = still_open[0].replay_error.as_deref().unwrap_or_default();
    assert!(replay_error.contains("the test refuses event"), "{replay_error}");

    recorder.accept(poison.id);
    let replayed = dead_letters.replay(letter.id).await?;
    calls += 1;
    assert!(replayed.replayed_at.is_some());
    assert!(replayed.replay_error.is_none());
    assert_eq!(applied(&bus.db, "billing").await?, vec![poison.clone()]);
    assert_eq!(recorder.calls(poison.id), calls);

    let again = dead_letters.replay(letter.id).await;
    assert!(matches!(again, Err(ApiError::Conflict(_))), "{again:?}");
    assert_eq!(applied(&bus.db, "billing").await?, vec![poison.clone()]);
    assert_eq!(recorder.calls(poison.id), calls, "a refused replay calls nothing");
    assert_eq!(dead_letters.count().await?, 0);
    assert!(dead_letters.list(&first_page()).await?.items.is_empty());

    let unknown = dead_letters.replay(new_id()).await;
    assert!(matches!(unknown, Err(ApiError::NotFound(_))), "{unknown:?}");
    Ok(())
}

async fn redelivered_event_is_applied_once(bus: BusFixture) -> anyhow::Result<()> {
    let (consumer, recorder) = consumer("mailer", &bus.db);
    bus.bus
        .subscribe(Subscription {
            group: "mailer".to_owned(),
            types: vec!["*".to_owned()],
            handler: Arc::new(consumer.clone()),
            retry: RETRY,
        })
        .await?;
    let registered = event("user.registered", 1);
    bus.bus.publish(&registered).await?;
    assert_eq!(bus.applied("mailer", 1).await, vec![registered.clone()]);

    // At-least-once delivery hands the consumer the same event again.
    consumer.deliver(&registered).await?;
    assert!(!consumer.process(&registered).await?);
    let marker = event("user.registered", 2);
    bus.bus.publish(&marker).await?;
    assert_eq!(bus.applied("mailer", 2).await, [registered.clone(), marker]);
    assert_eq!(recorder.calls(registered.id), 1);
    Ok(())
}

/// Opens the log bus kept in `path`, as a process does at start-up.
async fn open_log_at(path: &std::path::Path, cancel: &CancellationToken) -> anyhow::Result<(LogBus, Db)> {
    let url = format!("sqlite://{}", path.display());
    let db = Db::connect(&url, &DbOptions::default()).await?;
    Ok((LogBus::open(db.clone(), cancel.clone()).await?, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bus_keeps_events_and_group_positions_across_a_restart() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let path = dir.path().join("bus.db");
    let first = event("order.placed", 1);
    let second = event("order.paid", 2);

    let before_cancel = CancellationToken::new();
    let (before, before_db) = open_log_at(&path, &before_cancel).await?;
    let before_tally = Arc::new(Tally::default());
    before
        .subscribe(Subscription {
            group: "billing".to_owned(),
            types: vec!["*".to_owned()],
            handler: before_tally.clone(),
            retry: RETRY,
        })
        .await?;
    before.publish(&first).await?;
    assert_eq!(before_tally.received(1).await, vec![first.clone()]);
    let log = &before;
    let stored = eventually(DEADLINE, || async move {
        let position = log.position("billing").await.ok()?;
        (position > 0).then_some(position)
    })
    .await
    .expect("the group's position is stored after it processed the event");
    before_cancel.cancel();
    before_db.close().await;

    let after_cancel = CancellationToken::new();
    let (after, after_db) = open_log_at(&path, &after_cancel).await?;
    assert_eq!(after.events().await?, vec![first.clone()]);
    assert_eq!(after.position("billing").await?, stored);
    let after_tally = Arc::new(Tally::default());
    let fresh_tally = Arc::new(Tally::default());
    for (group, tally) in [("billing", &after_tally), ("audit", &fresh_tally)] {
        after
            .subscribe(Subscription {
                group: group.to_owned(),
                types: vec!["*".to_owned()],
                handler: tally.clone(),
                retry: RETRY,
            })
            .await?;
    }
    after.publish(&second).await?;

    assert_eq!(
        after_tally.received(1).await,
        vec![second.clone()],
        "resumes after event 1"
    );
    assert_eq!(fresh_tally.received(2).await, [first.clone(), second.clone()]);
    assert_eq!(after.events().await?, [first.clone(), second]);
    assert_eq!(
        before_tally.received(1).await,
        [first],
        "the closed bus delivers nothing more"
    );
    after_cancel.cancel();
    after_db.close().await;
    Ok(())
}

/// A busy group writes its position down at most once a second; what it held back is written
/// when the bus stops, so a clean restart delivers nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bus_writes_the_positions_it_held_back_when_it_stops() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let path = dir.path().join("bus.db");
    let cancel = CancellationToken::new();
    let (bus, db) = open_log_at(&path, &cancel).await?;
    let tally = Arc::new(Tally::default());
    bus.subscribe(Subscription {
        group: "billing".to_owned(),
        types: vec!["order.placed".to_owned()],
        handler: tally.clone(),
        retry: RETRY,
    })
    .await?;
    let events: Vec<Event> = (1..=3).map(|n| event("order.placed", n)).collect();
    for e in &events {
        bus.publish(e).await?;
    }
    assert_eq!(tally.received(3).await, events);
    // Within its first second a group writes nothing down (unless this machine was slow
    // enough to let a second pass, when it wrote its position as it went).
    cancel.cancel();
    let log = &bus;
    let stored = eventually(DEADLINE, || async move {
        let position = log.position("billing").await.ok()?;
        (position >= 3).then_some(position)
    })
    .await
    .expect("the position the group reached is written when the bus stops");
    assert_eq!(stored, 3);
    db.close().await;

    let again = CancellationToken::new();
    let (after, after_db) = open_log_at(&path, &again).await?;
    let later = Arc::new(Tally::default());
    after
        .subscribe(Subscription {
            group: "billing".to_owned(),
            types: vec!["order.placed".to_owned()],
            handler: later.clone(),
            retry: RETRY,
        })
        .await?;
    let fourth = event("order.placed", 4);
    after.publish(&fourth).await?;
    assert_eq!(later.received(1).await, vec![fourth], "nothing is delivered twice");
    again.cancel();
    after_db.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bus_prunes_only_old_events_every_group_has_passed() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let path = dir.path().join("bus.db");
    let (placed, paid, shipped) = (
        event("order.placed", 1),
        event("order.paid", 2),
        event("order.shipped", 3),
    );

    // First run: one group wants everything, one only `order.placed`.
    let first_cancel = CancellationToken::new();
    let (first, first_db) = open_log_at(&path, &first_cancel).await?;
    let (everything, placed_only) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    for (group, types, tally) in [("all", "*", &everything), ("placed", "order.placed", &placed_only)] {
        let subscription = Subscription {
            group: group.to_owned(),
            types: vec![types.to_owned()],
            handler: tally.clone(),
            retry: RETRY,
        };
        first.subscribe(subscription).await?;
    }
    first.publish(&placed).await?;
    first.publish(&paid).await?;
    assert_eq!(everything.received(2).await.len(), 2);
    assert_eq!(placed_only.received(1).await, vec![placed.clone()]);
    let log = &first;
    eventually(DEADLINE, || async move {
        let passed = log.position("all").await.ok()? >= 2 && log.position("placed").await.ok()? >= 2;
        passed.then_some(())
    })
    .await
    .expect("the filtered group moves past the event it does not want");
    first_cancel.cancel();
    first_db.close().await;

    // Second run without the `placed` group: it stays where it was and holds back pruning.
    let second_cancel = CancellationToken::new();
    let (second, second_db) = open_log_at(&path, &second_cancel).await?;
    let later_tally = Arc::new(Tally::default());
    let subscription = Subscription {
        group: "all".to_owned(),
        types: vec!["*".to_owned()],
        handler: later_tally.clone(),
        retry: RETRY,
    };
    second.subscribe(subscription).await?;
    second.publish(&shipped).await?;
    assert_eq!(later_tally.received(1).await, vec![shipped.clone()]);
    let log = &second;
    eventually(DEADLINE, || async move {
        (log.position("all").await.ok()? >= 3).then_some(())
    })
    .await
    .expect("stored");

    let before_publication = platform::clock::now_ms() - 60_000;
    assert_eq!(second.prune(before_publication).await?, 0, "nothing is old enough");
    let later = platform::clock::now_ms() + 1;
    assert_eq!(second.prune(later).await?, 2, "the events every group has passed");
    assert_eq!(
        second.events().await?,
        vec![shipped],
        "the event the `placed` group has not passed stays"
    );
    second_cancel.cancel();
    second_db.close().await;
    Ok(())
}

/// A new version subscribes a group to one more event type: its JetStream consumer is replaced
/// and carries on after the last event the old one had acknowledged (none lost, none again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_given_more_types_by_a_new_version_resumes_where_it_was() -> anyhow::Result<()> {
    let Some(url) = testing::server_url(testing::NATS_URL_VAR) else {
        eprintln!("skipped: {} is not set", testing::NATS_URL_VAR);
        return Ok(());
    };
    let unique = new_id().simple();
    let config = NatsConfig {
        stream: format!("TEST_{unique}"),
        subject_prefix: format!("test{unique}"),
        ..NatsConfig::new(&url)
    };
    let first = event("order.placed", 1);
    let (second, third) = (event("order.placed", 2), event("order.refunded", 3));

    let old_cancel = CancellationToken::new();
    let old = NatsBus::connect(config.clone(), old_cancel.clone()).await?;
    let old_tally = Arc::new(Tally::default());
    let subscription = |types: &[&str], handler: Arc<Tally>| Subscription {
        group: "billing".to_owned(),
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        handler,
        retry: RETRY,
    };
    old.subscribe(subscription(&["order.placed"], old_tally.clone()))
        .await?;
    old.publish(&first).await?;
    assert_eq!(old_tally.received(1).await, vec![first.clone()]);
    let jetstream = async_nats::jetstream::new(async_nats::connect(&url).await?);
    let stream = jetstream.get_stream(&config.stream).await?;
    let acknowledged = eventually(DEADLINE, || async {
        let info = stream.clone().consumer_info("billing").await.ok()?;
        (info.ack_floor.stream_sequence >= 1).then_some(())
    })
    .await;
    assert!(acknowledged.is_some(), "the old consumer acknowledged the first event");
    old_cancel.cancel();

    let new_cancel = CancellationToken::new();
    let new = NatsBus::connect(config.clone(), new_cancel.clone()).await?;
    new.publish(&second).await?;
    new.publish(&third).await?;
    let new_tally = Arc::new(Tally::default());
    new.subscribe(subscription(&["order.placed", "order.refunded"], new_tally.clone()))
        .await?;
    assert_eq!(new_tally.received(2).await, [second, third]);
    new_cancel.cancel();
    jetstream.delete_stream(&config.stream).await?;
    Ok(())
}

/// What a handler saw, in order: `handle` and `committed` calls by event number.
#[derive(Default)]
struct Steps(Mutex<Vec<(&'static str, i64)>>);

#[async_trait]
impl platform::consumer::EventHandler for Steps {
    async fn handle(&self, _tx: &mut platform::store::Tx, event: &Event) -> anyhow::Result<()> {
        let n = event.data["n"].as_i64().unwrap_or(-1);
        self.0.lock().unwrap().push(("handle", n));
        anyhow::ensure!(n != 13, "event 13 always fails");
        Ok(())
    }

    async fn committed(&self, event: &Event) {
        self.0
            .lock()
            .unwrap()
            .push(("committed", event.data["n"].as_i64().unwrap_or(-1)));
    }
}

/// A backlog reaches an idempotent consumer in batches, one transaction each: every event is
/// handled and committed once, in order, and one that fails sends its batch back to delivery
/// one at a time (the others applied once, it alone dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bus_hands_a_backlog_to_an_idempotent_consumer_in_batches() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let cancel = CancellationToken::new();
    let (bus, _bus_db) = open_log_at(&dir.path().join("bus.db"), &cancel).await?;
    let (db, _db_dir) = testing::sqlite_db().await?;
    db.migrate("platform", platform::outbox::PLATFORM_MIGRATIONS).await?;
    let published: Vec<Event> = (0..120).map(|n| event("order.placed", n)).collect();
    let (count, outcome) = bus.publish_all(&published).await;
    outcome?;
    assert_eq!(count, 120);

    let steps = Arc::new(Steps::default());
    let consumer = platform::consumer::IdempotentConsumer::new("billing", db.clone(), steps.clone());
    // Already processed before: skipped inside its batch, not handled again.
    assert!(consumer.process(&published[5]).await?);
    steps.0.lock().unwrap().clear();
    bus.subscribe(Subscription {
        group: "billing".to_owned(),
        types: vec!["*".to_owned()],
        handler: Arc::new(consumer),
        retry: RETRY,
    })
    .await?;

    let letters = eventually(DEADLINE, || async {
        let dead: Vec<String> = sqlx::query_scalar("SELECT event_id FROM dead_letters")
            .fetch_all(db.reader())
            .await
            .ok()?;
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
            .fetch_one(db.reader())
            .await
            .ok()?;
        (dead.len() == 1 && done == 119).then_some(dead)
    })
    .await
    .expect("119 events processed and one dead-lettered");
    assert_eq!(letters, [published[13].id.to_string()]);

    let steps = steps.0.lock().unwrap().clone();
    let committed: Vec<i64> = steps
        .iter()
        .filter(|(s, _)| *s == "committed")
        .map(|(_, n)| *n)
        .collect();
    let expected: Vec<i64> = (0..120).filter(|n| *n != 13 && *n != 5).collect();
    assert_eq!(committed, expected, "each event committed once, in order");
    // Batches: a run of handles before their commits (one at a time alternates, but for the
    // failing event, which never commits).
    assert!(
        steps
            .windows(2)
            .any(|w| w[0].0 == "handle" && w[1].0 == "handle" && w[0].1 != 13 && w[1].1 != 13),
        "{steps:?}"
    );
    // Event 13: once in its failed batch, then its three attempts alone.
    assert_eq!(steps.iter().filter(|s| **s == ("handle", 13)).count(), 4);
    cancel.cancel();
    Ok(())
}
