//! Idempotent event consumers and their dead letters.
//!
//! An [`IdempotentConsumer`] records the event id in the consumer's own database in the same
//! transaction as the handler's effect, so a redelivered event has no second effect. Events
//! that fail every attempt are kept in that database's `dead_letters` table; admins list them
//! and replay them through [`DeadLetters`], which calls the same handler directly, once.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::bus::{Bus, Delivery, RetryPolicy, Subscription};
use crate::clock::{now_ms, rfc3339};
use crate::error::ApiError;
use crate::events::Event;
use crate::page::{Page, PageRequest};
use crate::store::{Db, Tx};

/// What a service does with an event. The effect goes into `tx`, which commits together with
/// the record that the event was processed.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Work that must not hold the consumer's database, such as bringing a derived index up to
    /// date. Runs before the transaction, on every delivery (also of an event already
    /// processed), so it must be idempotent; an `Err` counts as a failed attempt.
    async fn prepare(&self, _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }

    async fn handle(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()>;

    /// Runs once [`EventHandler::handle`]'s transaction has committed (not for an event
    /// already processed): the place to drop what the service keeps in memory of the rows
    /// it changed.
    async fn committed(&self, _event: &Event) {}
}

/// A consumer group of one service: its name, the types it wants, and its handler.
#[derive(Clone)]
pub struct IdempotentConsumer {
    name: String,
    db: Db,
    handler: Arc<dyn EventHandler>,
}

impl IdempotentConsumer {
    pub fn new(name: impl Into<String>, db: Db, handler: Arc<dyn EventHandler>) -> Self {
        Self {
            name: name.into(),
            db,
            handler,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies the event unless this consumer already did. Answers whether it was applied now.
    pub async fn process(&self, event: &Event) -> anyhow::Result<bool> {
        let applied = self
            .process_all(std::slice::from_ref(event), &[tracing::Span::current()])
            .await?;
        Ok(applied[0])
    }
}

impl IdempotentConsumer {
    /// The span an event is handled in: the consumer, the event and its correlation id, which
    /// every line the handler logs carries, continuing the trace of the span that wrote it.
    fn span_of(&self, event: &Event) -> tracing::Span {
        let span = tracing::info_span!(
            "event",
            consumer = %self.name,
            event_type = %event.kind,
            event_id = %event.id,
            correlation_id = %event.correlationid.as_deref().unwrap_or_default(),
        );
        crate::traces::continue_from(&span, event.traceparent.as_deref());
        span
    }

    /// Applies events in one transaction: every `prepare` first, in order, inside the event's
    /// span, then the events not processed before are recorded and handled in order. Answers
    /// which events were applied now.
    async fn process_all(&self, events: &[Event], spans: &[tracing::Span]) -> anyhow::Result<Vec<bool>> {
        for (event, span) in events.iter().zip(spans) {
            within(event, span, self.handler.prepare(event)).await?;
        }
        let mut tx = self.db.begin().await?;
        let sql = format!(
            "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES {}
             ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
            crate::store::value_rows(events.len(), 3)
        );
        let now = now_ms();
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for event in events {
            query = query.bind(&self.name).bind(event.id.to_string()).bind(now);
        }
        let fresh: std::collections::HashSet<String> = query.fetch_all(&mut *tx).await?.into_iter().collect();
        let applied: Vec<bool> = events.iter().map(|e| fresh.contains(&e.id.to_string())).collect();
        for ((event, span), applied) in events.iter().zip(spans).zip(&applied) {
            if *applied {
                within(event, span, self.handler.handle(&mut tx, event)).await?;
            }
        }
        tx.commit().await?;
        for (event, applied) in events.iter().zip(&applied) {
            if *applied {
                self.handler.committed(event).await;
            }
        }
        Ok(applied)
    }
}

/// Runs `work` inside the event's span, with the event's correlation id as the task's (so
/// calls it makes to other services pass it on).
async fn within<F: std::future::Future>(event: &Event, span: &tracing::Span, work: F) -> F::Output {
    let correlation_id = event.correlationid.clone().unwrap_or_default();
    crate::telemetry::with_correlation_id(correlation_id, tracing::Instrument::instrument(work, span.clone())).await
}

#[async_trait]
impl Delivery for IdempotentConsumer {
    /// Processes the event inside its span ([`IdempotentConsumer::span_of`]) and logs one line
    /// when it is done: a request's correlation id can be followed from the HTTP log into every
    /// consumer it set off.
    async fn deliver(&self, event: &Event) -> anyhow::Result<()> {
        let span = self.span_of(event);
        let started = std::time::Instant::now();
        let outcome = within(event, &span, self.process(event)).await;
        span.in_scope(|| match &outcome {
            Ok(applied) => tracing::info!(
                applied,
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "event handled"
            ),
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "event failed; it will be delivered again"),
        });
        outcome.map(|_| ())
    }

    /// One transaction for the batch; each event still gets its span and its log line. On an
    /// error nothing of the batch is kept and each event goes through [`Self::deliver`].
    async fn deliver_all(&self, events: &[Event]) -> anyhow::Result<bool> {
        let started = std::time::Instant::now();
        let spans: Vec<tracing::Span> = events.iter().map(|event| self.span_of(event)).collect();
        let applied = match self.process_all(events, &spans).await {
            Ok(applied) => applied,
            Err(err) => {
                tracing::debug!(consumer = %self.name, events = events.len(), error = %format!("{err:#}"), "a batch of events failed; each is delivered alone");
                return Err(err);
            }
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        for (span, applied) in spans.iter().zip(applied) {
            span.in_scope(|| tracing::info!(applied, latency_ms, batch = events.len(), "event handled"));
        }
        Ok(true)
    }

    async fn dead_letter(&self, event: &Event, error: &str, attempts: u32) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO dead_letters (id, consumer, event_id, event_type, payload, error, attempts, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(crate::id::new_id().to_string())
        .bind(&self.name)
        .bind(event.id.to_string())
        .bind(&event.kind)
        .bind(event.to_json())
        .bind(truncate(error, 2_000))
        .bind(i64::from(attempts))
        .bind(now_ms())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// A dead letter as admins see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    pub consumer: String,
    pub event_id: String,
    pub event_type: String,
    /// The last error, as the handler reported it.
    pub error: String,
    pub attempts: i64,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<String>,
    /// Why the last replay failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_error: Option<String>,
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

type DeadLetterRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
);

impl DeadLetter {
    fn from_row(row: DeadLetterRow) -> Self {
        let (id, consumer, event_id, event_type, payload, error, attempts, created_at, replayed_at, replay_error) = row;
        Self {
            id: Uuid::parse_str(&id).unwrap_or_default(),
            consumer,
            event_id,
            event_type,
            error,
            attempts,
            created_at: rfc3339(created_at),
            replayed_at: replayed_at.map(rfc3339),
            replay_error,
            event: redact(serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null)),
        }
    }
}

/// Hides one-time secrets (reset and verification tokens, delivery codes) that some events carry to the
/// notifications service: the dead-letter view is for diagnosis, not for taking accounts over.
fn redact(mut event: serde_json::Value) -> serde_json::Value {
    if let Some(data) = event.get_mut("data").and_then(serde_json::Value::as_object_mut) {
        for (key, value) in data.iter_mut() {
            if key == "token" || key.ends_with("_token") || key == "password" || key == "code" || key == "delivery_code"
            {
                *value = serde_json::Value::String("[redacted]".to_owned());
            }
        }
    }
    event
}

const DEAD_LETTER_COLUMNS: &str =
    "id, consumer, event_id, event_type, payload, error, attempts, created_at, replayed_at, replay_error";

/// Every consumer of this process, by group name, with the database each keeps its dead
/// letters in. Services register their consumers here; [`DeadLetters::start`] subscribes them.
#[derive(Clone, Default)]
pub struct DeadLetters {
    consumers: HashMap<String, (IdempotentConsumer, Vec<String>)>,
    dbs: Vec<Db>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("consumers", &self.consumers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DeadLetters {
    /// Registers a consumer group for `types` (or `*`).
    pub fn register(&mut self, consumer: IdempotentConsumer, types: &[&str]) {
        if !self.dbs.iter().any(|db| db.same_as(&consumer.db)) {
            self.dbs.push(consumer.db.clone());
        }
        let types = types.iter().map(|t| (*t).to_owned()).collect();
        self.consumers.insert(consumer.name.clone(), (consumer, types));
    }

    /// Subscribes every registered consumer to the bus.
    pub async fn start(&self, bus: &dyn Bus, retry: RetryPolicy) -> anyhow::Result<()> {
        for (consumer, types) in self.consumers.values() {
            bus.subscribe(Subscription {
                group: consumer.name.clone(),
                types: types.clone(),
                handler: Arc::new(consumer.clone()),
                retry,
            })
            .await?;
        }
        Ok(())
    }

    /// Dead letters not yet replayed successfully, newest first, across every database.
    pub async fn list(&self, page: &PageRequest) -> anyhow::Result<Page<DeadLetter>> {
        let mut rows: Vec<DeadLetterRow> = Vec::new();
        let after = page.after.clone();
        for db in &self.dbs {
            // No sentinel for "after everything": its place in the order depends on the collation.
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE replayed_at IS NULL AND ($1 IS NULL OR id < $1)
                 ORDER BY id DESC LIMIT $2"
            );
            let mut found: Vec<DeadLetterRow> = sqlx::query_as(&sql)
                .bind(&after)
                .bind(page.fetch_limit())
                .fetch_all(db.reader())
                .await?;
            rows.append(&mut found);
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0));
        rows.truncate(page.fetch_limit() as usize);
        let items = rows.into_iter().map(DeadLetter::from_row).collect();
        Ok(Page::from_rows(items, page, |letter: &DeadLetter| {
            letter.id.to_string()
        }))
    }

    /// Open dead letters across every database.
    pub async fn count(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for db in &self.dbs {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL")
                .fetch_one(db.reader())
                .await?;
            total += n;
        }
        Ok(total)
    }

    async fn find(&self, id: Uuid) -> anyhow::Result<Option<(Db, DeadLetterRow)>> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1");
        for db in &self.dbs {
            let row: Option<DeadLetterRow> = sqlx::query_as(&sql)
                .bind(id.to_string())
                .fetch_optional(db.reader())
                .await?;
            if let Some(row) = row {
                return Ok(Some((db.clone(), row)));
            }
        }
        Ok(None)
    }

    /// Hands a dead letter to its consumer again. The consumer is idempotent, so replaying an
    /// event it has meanwhile processed has no second effect.
    pub async fn replay(&self, id: Uuid) -> Result<DeadLetter, ApiError> {
        let (db, row) = self.find(id).await?.ok_or_else(|| ApiError::not_found("dead letter"))?;
        if row.8.is_some() {
            return Err(ApiError::Conflict("this dead letter was already replayed".to_owned()));
        }
        let (consumer, _) = self
            .consumers
            .get(&row.1)
            .ok_or_else(|| ApiError::Unprocessable(format!("consumer `{}` does not run in this process", row.1)))?;
        let event = Event::from_json(&row.4)
            .map_err(|err| ApiError::Unprocessable(format!("the stored event is unreadable: {err}")))?;
        match consumer.process(&event).await {
            Ok(_) => {
                sqlx::query("UPDATE dead_letters SET replayed_at = $1, replay_error = NULL WHERE id = $2")
                    .bind(now_ms())
                    .bind(id.to_string())
                    .execute(db.writer())
                    .await?;
            }
            Err(err) => {
                let error = format!("{err:#}");
                sqlx::query("UPDATE dead_letters SET replay_error = $1 WHERE id = $2")
                    .bind(truncate(&error, 2_000))
                    .bind(id.to_string())
                    .execute(db.writer())
                    .await?;
                return Err(ApiError::Unprocessable(format!(
                    "the replay failed again: {}",
                    truncate(&error, 300)
                )));
            }
        }
        let (_, row) = self.find(id).await?.ok_or_else(|| ApiError::not_found("dead letter"))?;
        Ok(DeadLetter::from_row(row))
    }
}

/// `GET /api/v1/admin/dead-letters` and `POST /api/v1/admin/dead-letters/{id}/replay`.
pub fn admin_router(dead_letters: Arc<DeadLetters>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/admin/dead-letters", get(list_dead_letters))
        .route("/api/v1/admin/dead-letters/{id}/replay", post(replay_dead_letter))
        .with_state(dead_letters)
}

/// Events that failed every delivery attempt and are not yet replayed, newest first.
#[utoipa::path(get, path = "/api/v1/admin/dead-letters", tag = "admin", security(("bearer" = [])),
    params(crate::page::PageParams),
    responses((status = 200, body = Page<DeadLetter>), (status = 403, body = crate::error::Problem)))]
async fn list_dead_letters(
    axum::extract::State(dead_letters): axum::extract::State<Arc<DeadLetters>>,
    _admin: crate::auth::Admin,
    crate::extract::Query(params): crate::extract::Query<crate::page::PageParams>,
) -> crate::error::ApiResult<crate::extract::Json<Page<DeadLetter>>> {
    let page = params.parse()?;
    Ok(crate::extract::Json(dead_letters.list(&page).await?))
}

/// Hands a dead letter to its consumer again. The consumer is idempotent: an event it has
/// processed meanwhile has no second effect.
#[utoipa::path(post, path = "/api/v1/admin/dead-letters/{id}/replay", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = DeadLetter), (status = 404, body = crate::error::Problem),
              (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem)))]
async fn replay_dead_letter(
    axum::extract::State(dead_letters): axum::extract::State<Arc<DeadLetters>>,
    _admin: crate::auth::Admin,
    crate::extract::Path(id): crate::extract::Path<Uuid>,
) -> crate::error::ApiResult<crate::extract::Json<DeadLetter>> {
    Ok(crate::extract::Json(dead_letters.replay(id).await?))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list_dead_letters, replay_dead_letter), components(schemas(DeadLetter)))]
pub struct DeadLettersApi;
