//! What both suites share: the tables the tests write to, an event handler that records what
//! it applied, the retry policy, and the runner that tears a backend down after each test and
//! fails a test that left work behind it did not expect.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use platform::bus::RetryPolicy;
use platform::consumer::{EventHandler, IdempotentConsumer};
use platform::events::Event;
use platform::id::Uuid;
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::store::{Db, Migration, Tx};

/// How long a test waits for asynchronous work (a relay, a subscription) before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Three attempts a few milliseconds apart, so the retry tests stay fast.
pub const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_backoff: Duration::from_millis(5),
};

/// The suite's own tables, beside the platform's: rows for the store tests to write, a counter
/// for concurrent writers, and one row per event a [`Recorder`] applied.
pub const SUITE_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "widgets, counters and handler effects",
    sql: "CREATE TABLE widgets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            quantity BIGINT NOT NULL);
          CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL);
          CREATE TABLE effects (
            seq SERIAL_KEY,
            consumer TEXT NOT NULL,
            payload TEXT NOT NULL)",
    postgres: None,
}];

/// Gives a fresh database the platform's tables and the suite's.
pub async fn prepare(db: &Db) -> anyhow::Result<()> {
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate("suite", SUITE_MIGRATIONS).await?;
    Ok(())
}

/// An event of type `kind` whose data carries `n`, so events of one test tell apart.
pub fn event(kind: &str, n: usize) -> Event {
    Event::new(
        "suite",
        kind,
        format!("subject-{n}"),
        serde_json::json!({ "n": n }),
        None,
    )
}

/// A handler that writes one `effects` row per event it applies, inside the consumer's
/// transaction, counts every call, and fails on the events a test refuses.
#[derive(Debug)]
pub struct Recorder {
    consumer: String,
    /// Calls per event id, failed ones included: how often the bus or a replay tried.
    calls: Mutex<HashMap<Uuid, u32>>,
    /// Events the handler fails on until the test accepts them again.
    refused: Mutex<HashSet<Uuid>>,
}

impl Recorder {
    pub fn refuse(&self, id: Uuid) {
        self.refused.lock().unwrap().insert(id);
    }

    pub fn accept(&self, id: Uuid) {
        self.refused.lock().unwrap().remove(&id);
    }

    pub fn calls(&self, id: Uuid) -> u32 {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        *self.calls.lock().unwrap().entry(event.id).or_default() += 1;
        if self.refused.lock().unwrap().contains(&event.id) {
            anyhow::bail!("the test refuses event {}", event.id);
        }
        sqlx::query("INSERT INTO effects (consumer, payload) VALUES ($1, $2)")
            .bind(&self.consumer)
            .bind(event.to_json())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// An idempotent consumer group `name` in `db`, with the recorder that is its handler.
pub fn consumer(name: &str, db: &Db) -> (IdempotentConsumer, Arc<Recorder>) {
    let recorder = Arc::new(Recorder {
        consumer: name.to_owned(),
        calls: Mutex::default(),
        refused: Mutex::default(),
    });
    let consumer = IdempotentConsumer::new(name, db.clone(), recorder.clone());
    (consumer, recorder)
}

/// The events `consumer` applied, in the order it applied them.
pub async fn applied(db: &Db, consumer: &str) -> anyhow::Result<Vec<Event>> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT payload FROM effects WHERE consumer = $1 ORDER BY seq")
        .bind(consumer)
        .fetch_all(db.reader())
        .await?;
    rows.iter()
        .map(|raw| Event::from_json(raw).map_err(Into::into))
        .collect()
}

/// Outbox rows not yet published and dead letters not yet replayed.
pub async fn leftovers(db: &Db) -> anyhow::Result<(i64, i64)> {
    let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(db.reader())
        .await?;
    let dead_letters: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL")
        .fetch_one(db.reader())
        .await?;
    Ok((outbox, dead_letters))
}

/// A backend opened for one test.
pub trait Fixture: Clone {
    /// Fails when the test left work behind it did not expect (crates.io's `TestApp` check).
    async fn check_leftovers(&self) -> anyhow::Result<()>;
    /// Stops the backend's background tasks and removes what it created on shared servers.
    async fn release(&self) -> anyhow::Result<()>;
}

/// Runs one suite test on a backend: skips it when the backend is not configured (`None`),
/// and always releases the backend, even when the test panics. A passing test still fails
/// when it left work behind or the backend could not be released.
pub async fn run<X, F, Fut>(opened: anyhow::Result<Option<X>>, test: F)
where
    X: Fixture,
    F: FnOnce(X) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let fixture = match opened {
        Ok(Some(fixture)) => fixture,
        Ok(None) => return,
        Err(err) => panic!("cannot open the backend: {err:#}"),
    };
    let outcome = AssertUnwindSafe(test(fixture.clone())).catch_unwind().await;
    let leftovers = match &outcome {
        Ok(Ok(())) => fixture.check_leftovers().await,
        _ => Ok(()),
    };
    let released = fixture.release().await;
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(err)) => panic!("{err:#}"),
        Ok(Ok(())) => {}
    }
    if let Err(err) = leftovers {
        panic!("the test left work behind: {err:#}");
    }
    if let Err(err) = released {
        panic!("cannot release the backend: {err:#}");
    }
}
