//! The durable in-process bus of the all-in-one mode: an append-only log table and one
//! position per consumer group, in a database of its own (`data/bus.db`).
//!
//! Events survive a restart (they are rows), each group resumes from its stored position, and
//! a position moves only after the group's handler succeeded or dead-lettered the event, so
//! delivery is at least once and in publish order.
//!
//! What it costs per event: the log is written by this process only, so the bus keeps the
//! highest committed sequence number in memory and wakes only the groups that want an appended
//! event's type. A woken group reads its events (one query) and hands them over; a group that
//! wants none of them is not woken, and moves past them on its once-a-second look. Positions
//! are written at most once a second per group, and when the bus stops: after a crash a group
//! may get up to a second of events again, which at-least-once delivery allows and the
//! idempotent consumers ([`crate::consumer::IdempotentConsumer`]) skip.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{deliver_with_retries, Bus, Subscription};
use crate::events::Event;
use crate::store::{Db, Migration};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "event log and consumer positions",
    sql: "CREATE TABLE bus_log (
            seq SERIAL_KEY,
            event_id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            published_at BIGINT NOT NULL);
          CREATE INDEX bus_log_type ON bus_log (event_type, seq);
          CREATE TABLE bus_positions (
            consumer TEXT PRIMARY KEY,
            position BIGINT NOT NULL)",
    postgres: None,
}];

const BATCH: i64 = 200;
/// Most events a group's handler takes in one transaction (a short hold on its database's
/// writer).
const TOGETHER: usize = 50;
/// How often a busy group writes its position down, and how often an idle one looks for
/// events it was not woken for.
const STORE_EVERY: Duration = Duration::from_secs(1);

/// A subscribed group as the publishing side sees it: what it wants, and how to wake it.
#[derive(Debug)]
struct Listener {
    types: Vec<String>,
    wake: Arc<Notify>,
}

#[derive(Debug, Clone)]
pub struct LogBus {
    db: Db,
    /// The highest sequence number committed to the log: every event up to it is readable.
    head: Arc<AtomicI64>,
    /// Held across an append and the move of `head`, so `head` never passes an event another
    /// append of this process has not committed yet.
    appending: Arc<tokio::sync::Mutex<()>>,
    listeners: Arc<Mutex<Vec<Listener>>>,
    groups: Arc<Mutex<HashSet<String>>>,
    watchers: Arc<Mutex<Vec<super::Watcher>>>,
    cancel: CancellationToken,
}

impl LogBus {
    /// Opens the log in `db` (migrating it) and stops every subscription when `cancel` fires.
    pub async fn open(db: Db, cancel: CancellationToken) -> anyhow::Result<Self> {
        db.migrate("bus", MIGRATIONS).await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM bus_log")
            .fetch_one(db.reader())
            .await?;
        Ok(Self {
            db,
            head: Arc::new(AtomicI64::new(head)),
            appending: Arc::default(),
            listeners: Arc::default(),
            groups: Arc::default(),
            watchers: Arc::default(),
            cancel,
        })
    }

    /// The stored position of a group (0 before its first event).
    pub async fn position(&self, group: &str) -> anyhow::Result<i64> {
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM bus_positions WHERE consumer = $1")
            .bind(group)
            .fetch_optional(self.db.reader())
            .await?;
        Ok(position.unwrap_or(0))
    }

    /// Every event in the log, oldest first (tests and diagnostics).
    pub async fn events(&self) -> anyhow::Result<Vec<Event>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT payload FROM bus_log ORDER BY seq")
            .fetch_all(self.db.reader())
            .await?;
        rows.iter()
            .map(|raw| Event::from_json(raw).map_err(Into::into))
            .collect()
    }

    /// Deletes events published before `cutoff_ms` (unix ms) that every consumer group has
    /// passed; answers how many. A group subscribed later starts from the oldest event kept.
    pub async fn prune(&self, cutoff_ms: i64) -> anyhow::Result<u64> {
        let deleted = sqlx::query(
            "DELETE FROM bus_log WHERE published_at < $1
               AND seq <= (SELECT COALESCE(MIN(position), 0) FROM bus_positions)",
        )
        .bind(cutoff_ms)
        .execute(self.db.writer())
        .await?;
        Ok(deleted.rows_affected())
    }

    /// Prunes events older than `retention` once an hour until the bus is cancelled.
    pub fn spawn_pruner(&self, retention: Duration) {
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                let cutoff = crate::clock::now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                match bus.prune(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "old events pruned from the event log"),
                    Err(err) => tracing::warn!(error = %format!("{err:#}"), "cannot prune the event log"),
                }
                tokio::select! {
                    () = bus.cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        });
    }

    /// The group's next events after `after`, and how far the log has been scanned for it: a
    /// group that wants few types still moves past the events it does not want, so it neither
    /// rescans them nor holds back pruning. Safe because every event up to `head` is
    /// committed (the appends of this process move it only after their commit).
    async fn next_batch(&self, subscription: &Subscription, after: i64) -> anyhow::Result<(Vec<(i64, String)>, i64)> {
        let end = self.head.load(Ordering::Acquire);
        if end <= after {
            return Ok((Vec::new(), after));
        }
        let all = subscription.types.iter().any(|t| t == "*");
        let rows: Vec<(i64, String)> = if all {
            sqlx::query_as("SELECT seq, payload FROM bus_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3")
                .bind(after)
                .bind(end)
                .bind(BATCH)
                .fetch_all(self.db.reader())
                .await?
        } else {
            let placeholders: Vec<String> = (0..subscription.types.len()).map(|i| format!("${}", i + 4)).collect();
            let sql = format!(
                "SELECT seq, payload FROM bus_log WHERE seq > $1 AND seq <= $2 AND event_type IN ({}) ORDER BY seq LIMIT $3",
                placeholders.join(", ")
            );
            let mut query = sqlx::query_as(&sql).bind(after).bind(end).bind(BATCH);
            for kind in &subscription.types {
                query = query.bind(kind);
            }
            query.fetch_all(self.db.reader()).await?
        };
        let scanned_to = match rows.last() {
            Some((seq, _)) if rows.len() as i64 == BATCH => *seq,
            _ => end.max(after),
        };
        Ok((rows, scanned_to))
    }

    async fn store_position(&self, group: &str, position: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO bus_positions (consumer, position) VALUES ($1, $2)
             ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
        )
        .bind(group)
        .bind(position)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    async fn run(self, subscription: Subscription, wake: Arc<Notify>) {
        let group = subscription.group.clone();
        let mut position = match self.position(&group).await {
            Ok(position) => position,
            Err(err) => {
                tracing::error!(%group, error = %format!("{err:#}"), "cannot read consumer position; consumer not started");
                return;
            }
        };
        let mut stored = position;
        let mut stored_at = Instant::now();
        loop {
            let (batch, scanned_to) = match self.next_batch(&subscription, position).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(%group, error = %format!("{err:#}"), "cannot read the event log");
                    (Vec::new(), position)
                }
            };
            let mut seqs = Vec::with_capacity(batch.len());
            let mut events = Vec::with_capacity(batch.len());
            for (seq, payload) in &batch {
                match Event::from_json(payload) {
                    Ok(event) => {
                        seqs.push(*seq);
                        events.push(event);
                    }
                    Err(err) => tracing::error!(%group, seq, error = %err, "unreadable event in the log skipped"),
                }
            }
            let mut complete = true;
            'chunks: for (seqs, events) in seqs.chunks(TOGETHER).zip(events.chunks(TOGETHER)) {
                if self.cancel.is_cancelled() {
                    complete = false;
                    break;
                }
                // Together in one transaction when the handler takes batches; else, or when
                // the batch fails, one at a time with retries and dead letters.
                let together = events.len() > 1 && matches!(subscription.handler.deliver_all(events).await, Ok(true));
                if together {
                    position = seqs[seqs.len() - 1];
                    continue;
                }
                for (seq, event) in seqs.iter().zip(events) {
                    if self.cancel.is_cancelled() {
                        complete = false;
                        break 'chunks;
                    }
                    if let Err(err) = deliver_with_retries(&subscription, event).await {
                        tracing::error!(%group, error = %format!("{err:#}"), "cannot dead-letter an event; will redeliver");
                        complete = false;
                        break 'chunks;
                    }
                    position = *seq;
                }
            }
            if complete {
                position = position.max(scanned_to);
            }
            if position > stored && stored_at.elapsed() >= STORE_EVERY {
                self.keep_position(&group, position, &mut stored).await;
                stored_at = Instant::now();
            }
            if complete && batch.len() as i64 == BATCH {
                continue;
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(STORE_EVERY) => {}
            }
        }
        if position > stored {
            self.keep_position(&group, position, &mut stored).await;
        }
    }

    /// Writes a group's position down (`stored` follows on success; a failure is retried with
    /// the next write).
    async fn keep_position(&self, group: &str, position: i64, stored: &mut i64) {
        match self.store_position(group, position).await {
            Ok(()) => *stored = position,
            Err(err) => tracing::warn!(%group, error = %format!("{err:#}"), "cannot store consumer position"),
        }
    }

    /// Appends events to the log in their order, in one transaction (an event id already in
    /// the log is skipped), and moves `head` past them once they are committed.
    async fn append(&self, events: &[Event]) -> Result<(), sqlx::Error> {
        let now = crate::clock::now_ms();
        let _appending = self.appending.lock().await;
        let mut tx = self.db.begin().await?;
        let mut last = 0;
        for chunk in events.chunks(crate::store::ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO bus_log (event_id, event_type, payload, published_at) VALUES {}
                 ON CONFLICT (event_id) DO NOTHING RETURNING seq",
                crate::store::value_rows(chunk.len(), 4)
            );
            let mut query = sqlx::query_scalar::<_, i64>(&sql);
            for event in chunk {
                query = query
                    .bind(event.id.to_string())
                    .bind(&event.kind)
                    .bind(event.to_json())
                    .bind(now);
            }
            last = query.fetch_all(&mut *tx).await?.into_iter().fold(last, i64::max);
        }
        tx.commit().await?;
        self.head.fetch_max(last, Ordering::Release);
        Ok(())
    }
}

#[async_trait]
impl Bus for LogBus {
    async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        self.publish_all(std::slice::from_ref(event)).await.1
    }

    /// One transaction for the whole batch: all of it is in the log, or none.
    async fn publish_all(&self, events: &[Event]) -> (usize, anyhow::Result<()>) {
        if events.is_empty() {
            return (0, Ok(()));
        }
        if let Err(err) = self.append(events).await {
            return (0, Err(err.into()));
        }
        for listener in self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|l| events.iter().any(|e| super::wants(&l.types, &e.kind)))
        {
            listener.wake.notify_one();
        }
        // The log lives in this process, so every publish to it is one this process can hand to
        // its watchers directly.
        let watchers: Vec<super::Watcher> = self
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for event in events {
            for watcher in watchers.iter().filter(|w| w.wants(&event.kind)) {
                if let Err(err) = watcher.handler.deliver(event).await {
                    tracing::debug!(event_type = %event.kind, error = %format!("{err:#}"), "a watcher failed");
                }
            }
        }
        (events.len(), Ok(()))
    }

    async fn watch(&self, types: Vec<String>, handler: Arc<dyn super::Delivery>) -> anyhow::Result<()> {
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(super::Watcher { types, handler });
        Ok(())
    }

    async fn subscribe(&self, subscription: Subscription) -> anyhow::Result<()> {
        super::claim_group(&self.groups, &subscription.group)?;
        let wake = Arc::new(Notify::new());
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Listener {
                types: subscription.types.clone(),
                wake: wake.clone(),
            });
        tokio::spawn(self.clone().run(subscription, wake));
        Ok(())
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.db.ping().await.map_err(Into::into)
    }
}
