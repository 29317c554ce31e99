//! The transactional outbox: an event is written in the same transaction as the change it
//! announces, and a relay publishes it afterwards. No event without its change, no change
//! without its event.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::events::Event;
use crate::store::{Db, Migration, Tx};

/// The platform's tables, present in every service database: the outbox, the consumer's
/// processed-event ids and its dead letters.
pub const PLATFORM_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "outbox, processed events, dead letters",
    sql: "CREATE TABLE outbox (
            seq SERIAL_KEY,
            event_id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at BIGINT NOT NULL);
          CREATE TABLE processed_events (
            consumer TEXT NOT NULL,
            event_id TEXT NOT NULL,
            processed_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, event_id));
          CREATE TABLE dead_letters (
            id TEXT PRIMARY KEY,
            consumer TEXT NOT NULL,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            error TEXT NOT NULL,
            attempts BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            replayed_at BIGINT,
            replay_error TEXT);
          CREATE INDEX dead_letters_open ON dead_letters (replayed_at, id)",
    postgres: None,
}];

/// Writes `event` to the outbox inside the caller's transaction.
pub async fn enqueue(tx: &mut Tx, event: &Event) -> Result<(), sqlx::Error> {
    enqueue_all(tx, std::slice::from_ref(event)).await
}

/// Writes `events` to the outbox inside the caller's transaction, in their order, a few hundred
/// to a statement.
pub async fn enqueue_all(tx: &mut Tx, events: &[Event]) -> Result<(), sqlx::Error> {
    let now = crate::clock::now_ms();
    for chunk in events.chunks(crate::store::ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO outbox (event_id, event_type, payload, created_at) VALUES {}",
            crate::store::value_rows(chunk.len(), 4)
        );
        let mut query = sqlx::query(&sql);
        for event in chunk {
            query = query
                .bind(event.id.to_string())
                .bind(event.kind.clone())
                .bind(event.to_json())
                .bind(now);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// PostgreSQL: an `INSERT` of the outbox rows bound at `param` as one JSON array (made by
/// [`json_rows`]), in their order. It is meant for a data-modifying `WITH` that writes a
/// service's tables and its outbox in one statement; its text does not depend on how many
/// events there are.
pub fn insert_json_rows(param: &str) -> String {
    format!(
        "INSERT INTO outbox (event_id, event_type, payload, created_at)
         SELECT e.event_id, e.event_type, e.payload, e.created_at
         FROM json_to_recordset({param}::json)
           AS e(n BIGINT, event_id TEXT, event_type TEXT, payload TEXT, created_at BIGINT)
         ORDER BY e.n"
    )
}

/// The outbox rows of `events` as the JSON array [`insert_json_rows`] reads.
pub fn json_rows(events: &[Event]) -> String {
    let now = crate::clock::now_ms();
    let rows: Vec<serde_json::Value> = events
        .iter()
        .enumerate()
        .map(|(n, event)| {
            serde_json::json!({
                "n": n,
                "event_id": event.id.to_string(),
                "event_type": event.kind,
                "payload": event.to_json(),
                "created_at": now,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// The rows a relay publishes next, oldest first.
const NEXT_BATCH: &str = "SELECT seq, payload FROM outbox ORDER BY seq LIMIT 100";
/// The `LIMIT` of [`NEXT_BATCH`]: a batch this full may have more rows behind it.
const BATCH_ROWS: usize = 100;
/// How often a relay refreshes its backlog gauges.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// A service's handle on its outbox: call [`Outbox::wake`] after committing a transaction
/// that enqueued events so the relay publishes them now rather than at its next poll.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
    notify: Arc<Notify>,
}

impl Outbox {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Events written but not yet published.
    pub async fn pending(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(self.db.reader())
            .await
    }

    /// Events not yet published, and when the oldest of them was written (unix ms).
    pub async fn lag(&self) -> Result<(i64, Option<i64>), sqlx::Error> {
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox")
            .fetch_one(self.db.reader())
            .await
    }

    /// Starts the relay: publishes outbox rows in order and deletes each once the bus has it.
    /// A row whose publish fails stays and is retried; the bus deduplicates on the event id,
    /// so a crash between publish and delete only causes a duplicate the bus drops.
    pub fn spawn_relay(
        &self,
        service: &'static str,
        bus: Arc<dyn Bus>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let outbox = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            let mut gauged_at: Option<std::time::Instant> = None;
            loop {
                // A wake-up (`notify_one`) that comes while the batch runs is kept for the
                // `select!` below, so a partial batch can wait without missing new rows.
                let notified = outbox.notify.notified();
                let wait = match outbox.relay_batch(service, bus.as_ref()).await {
                    Ok(published) if published >= BATCH_ROWS => {
                        failures = 0;
                        continue;
                    }
                    Ok(_) => {
                        failures = 0;
                        Duration::from_millis(500)
                    }
                    Err(err) => {
                        failures += 1;
                        tracing::warn!(service, error = %format!("{err:#}"), "outbox relay failed; will retry");
                        Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                    }
                };
                if gauged_at.is_none_or(|at| at.elapsed() >= GAUGE_EVERY) {
                    if let Ok((pending, oldest)) = outbox.lag().await {
                        metrics::gauge!("mercato_outbox_pending", "service" => service).set(pending as f64);
                        let age = oldest.map_or(0.0, |at| (crate::clock::now_ms() - at).max(0) as f64 / 1000.0);
                        metrics::gauge!("mercato_outbox_oldest_age_seconds", "service" => service).set(age);
                    }
                    gauged_at = Some(std::time::Instant::now());
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = notified => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    /// Publishes up to 100 rows ([`NEXT_BATCH`]); answers how many were published.
    ///
    /// On PostgreSQL every replica of a service runs a relay over the one outbox: the batch runs
    /// in a transaction holding an advisory lock of the service's outbox, and a relay that
    /// cannot take it leaves the batch to the one that holds it. So each row is published by
    /// one relay, once (barring a crash between publishing and deleting), and in `seq` order.
    async fn relay_batch(&self, service: &str, bus: &dyn Bus) -> anyhow::Result<usize> {
        if self.db.backend() != crate::store::Backend::Postgres {
            let rows: Vec<(i64, String)> = sqlx::query_as(NEXT_BATCH).fetch_all(self.db.reader()).await?;
            let (published, outcome) = Self::publish_rows(bus, &rows).await;
            if !published.is_empty() {
                Self::delete_rows(self.db.writer(), &published).await?;
            }
            return outcome;
        }
        let mut tx = self.db.begin().await?;
        // Per database and schema (services may share a database, each in its own schema).
        let mine: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('mercato.outbox'), hashtext(current_schema() || '.' || $1))",
        )
        .bind(service)
        .fetch_one(&mut *tx)
        .await?;
        if !mine {
            tx.rollback().await?;
            return Ok(0);
        }
        let rows: Vec<(i64, String)> = sqlx::query_as(NEXT_BATCH).fetch_all(&mut *tx).await?;
        let (published, outcome) = Self::publish_rows(bus, &rows).await;
        if !published.is_empty() {
            Self::delete_rows(&mut *tx, &published).await?;
        }
        tx.commit().await?;
        outcome
    }

    /// Publishes rows in order, as one batch, until one fails: the seqs published, and how
    /// many rows there were (or the failure). A row that does not parse stops the batch there.
    async fn publish_rows(bus: &dyn Bus, rows: &[(i64, String)]) -> (Vec<i64>, anyhow::Result<usize>) {
        let mut events = Vec::with_capacity(rows.len());
        let mut unreadable = None;
        for (_, payload) in rows {
            match Event::from_json(payload) {
                Ok(event) => events.push(event),
                Err(err) => {
                    unreadable = Some(anyhow::Error::from(err));
                    break;
                }
            }
        }
        let (published, sent) = bus.publish_all(&events).await;
        let seqs = rows[..published.min(events.len())]
            .iter()
            .map(|(seq, _)| *seq)
            .collect();
        let outcome = match (sent, unreadable) {
            (Err(err), _) | (Ok(()), Some(err)) => Err(err),
            (Ok(()), None) => Ok(rows.len()),
        };
        (seqs, outcome)
    }

    /// One delete for what the bus has, by explicit seq: a row with a lower seq that commits
    /// late (PostgreSQL hands out seqs before commit) is never deleted unpublished.
    async fn delete_rows<'c, E>(executor: E, published: &[i64]) -> Result<(), sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let sql = format!(
            "DELETE FROM outbox WHERE seq IN ({})",
            crate::store::placeholders(1, published.len())
        );
        let mut query = sqlx::query(&sql);
        for seq in published {
            query = query.bind(*seq);
        }
        query.execute(executor).await?;
        Ok(())
    }
}
