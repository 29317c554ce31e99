//! The inventory's use cases: stock levels set and adjusted by admins, reservations for orders
//! (reserve every line or none, commit, release, expire), restocks, and the invariant check.
//! Each runs in one transaction with its ledger entries and its outbox events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use platform::clock::SharedClock;
use platform::error::ApiError;
use platform::events::Event;
use platform::outbox::{self, Outbox};
use platform::store::{is_unique_violation, Db, Tx};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Outcome, Who};
use crate::domain::{self, Levels, Line, Movement, ReleaseReason, ReservationStatus};
use crate::store::{self, After, Entry, ReservationRow, StockRow};

pub const SERVICE: &str = "inventory";

pub const RESERVED: &str = "inventory.reserved";
pub const COMMITTED: &str = "inventory.committed";
pub const RELEASED: &str = "inventory.released";
/// An order was paid after its reservation expired and its units are gone: it cannot be
/// filled (orders cancels it, payments refunds it).
pub const UNFILLABLE: &str = "inventory.unfillable";
pub const RESTOCKED: &str = "inventory.restocked";
pub const LOW_STOCK: &str = "inventory.low_stock";
/// `{sku, available}` when a SKU goes in or out of stock (the catalog's in-stock filter).
pub const AVAILABILITY_CHANGED: &str = "inventory.availability_changed";

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a reservation holds stock unless committed or released.
    pub reservation_ttl: Duration,
    /// The low-stock threshold new SKUs get (0 = no alerts).
    pub default_low_stock_threshold: i64,
    /// How often the sweeper looks for expired reservations.
    pub sweep_interval: Duration,
    /// Reserves, commits and releases that arrive together are written together, in one
    /// transaction of a few multi-row statements (see `batch`); `false` gives each its own.
    pub batch_reservations: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            reservation_ttl: Duration::from_secs(15 * 60),
            default_low_stock_threshold: 5,
            sweep_interval: Duration::from_secs(5),
            batch_reservations: true,
        }
    }
}

/// A reservation with its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    pub id: String,
    pub order_id: String,
    pub status: ReservationStatus,
    pub lines: Vec<Line>,
    /// Unix milliseconds.
    pub expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Reservation {
    pub(crate) fn from_row(row: ReservationRow, lines: Vec<Line>) -> Result<Self, ApiError> {
        let status = ReservationStatus::parse(&row.status)
            .ok_or_else(|| anyhow::anyhow!("unknown reservation status {:?}", row.status))?;
        Ok(Self {
            id: row.id,
            order_id: row.order_id,
            status,
            lines,
            expires_at: row.expires_at,
            release_reason: row.release_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A line that could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Shortage {
    pub sku: String,
    pub requested: i64,
    /// What is available now (0 for an unknown or discontinued SKU).
    pub available: i64,
}

/// Why a reservation was refused.
#[derive(Debug)]
pub enum ReserveError {
    /// These lines are short; nothing was reserved.
    Short(Vec<Shortage>),
    Api(ApiError),
}

impl From<ApiError> for ReserveError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl From<sqlx::Error> for ReserveError {
    fn from(err: sqlx::Error) -> Self {
        Self::Api(err.into())
    }
}

impl From<ReserveError> for ApiError {
    fn from(err: ReserveError) -> Self {
        match err {
            ReserveError::Api(err) => err,
            ReserveError::Short(short) => {
                let skus: Vec<&str> = short.iter().map(|s| s.sku.as_str()).collect();
                ApiError::ConflictWith {
                    message: format!("not enough stock for {}", skus.join(", ")),
                    members: json!({ "shortages": short }),
                }
            }
        }
    }
}

/// A SKU's levels as an admin sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StockView {
    pub sku: String,
    pub product_id: Option<String>,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub low_stock_threshold: i64,
    /// Available at or below the threshold.
    pub low_stock: bool,
    /// No longer sold (its product was deleted or dropped it); nothing can be reserved.
    pub discontinued: bool,
    pub version: i64,
    pub updated_at: i64,
}

impl StockView {
    /// What can still be sold: nothing of a discontinued SKU, never below zero.
    pub fn sellable(&self) -> i64 {
        if self.discontinued {
            0
        } else {
            self.available.max(0)
        }
    }
}

impl From<StockRow> for StockView {
    fn from(row: StockRow) -> Self {
        let available = row.available();
        Self {
            low_stock: row.low_stock_threshold > 0 && available <= row.low_stock_threshold,
            discontinued: row.discontinued_at.is_some(),
            sku: row.sku,
            product_id: row.product_id,
            on_hand: row.on_hand,
            reserved: row.reserved,
            available,
            low_stock_threshold: row.low_stock_threshold,
            version: row.version,
            updated_at: row.updated_at,
        }
    }
}

/// What a caller wants done to a level.
#[derive(Debug, Clone)]
pub enum StockChange {
    /// Set on hand (and optionally the low-stock threshold).
    Set { on_hand: i64, threshold: Option<i64> },
    /// Add a delta (either sign) to on hand, with a reason.
    Adjust { delta: i64, reason: String },
}

/// Who and why, for the ledger and the events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    pub actor: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
}

/// The result of `inventory check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub skus: i64,
    pub violations: Vec<store::Violation>,
}

pub struct Inventory {
    db: Db,
    outbox: Outbox,
    clock: SharedClock,
    settings: Settings,
    levels: Arc<KeptLevels>,
    /// The queue of the batch writer, started by the first reservation command.
    batches: OnceLock<mpsc::Sender<batch::Command>>,
}

/// Stock levels kept in memory for [`Inventory::kept_stocks`]: every transaction of this
/// service that may move a level drops them all once it has committed, and a read that raced
/// such a commit keeps nothing (the generation moved). Writes of another process do not reach
/// them, hence the short time to live and the rule that only callers in this process (the
/// all-in-one cart) use them.
pub(crate) struct KeptLevels {
    views: moka::sync::Cache<String, StockView>,
    generation: AtomicU64,
}

/// How long a kept level may be served without a write of this process dropping it.
const KEPT_LEVELS_TTL: Duration = Duration::from_secs(1);

impl KeptLevels {
    fn new() -> Self {
        Self {
            views: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KEPT_LEVELS_TTL)
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn forget(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.views.invalidate_all();
    }
}

impl Inventory {
    pub fn new(db: Db, clock: SharedClock, settings: Settings) -> Self {
        Self {
            outbox: Outbox::new(db.clone()),
            db,
            clock,
            settings,
            levels: Arc::new(KeptLevels::new()),
            batches: OnceLock::new(),
        }
    }

    /// A movement of several SKUs' units may be one statement: on SQLite (see
    /// [`store::reserve_lines`]).
    fn one_statement(&self) -> bool {
        self.db.backend() == platform::store::Backend::Sqlite
    }

    /// Commits a transaction of the service, then lets the relay know (it may hold events)
    /// and drops the kept levels (it may have moved some).
    async fn commit_tx(&self, tx: Tx) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.outbox.wake();
        self.levels.forget();
        Ok(())
    }

    /// Drops the kept levels: a transaction this service did not commit itself (an event
    /// consumer's) changed stock rows.
    pub fn levels_changed(&self) {
        self.levels.forget();
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn emit(
        tx: &mut Tx,
        kind: &str,
        subject: &str,
        data: serde_json::Value,
        ctx: Context<'_>,
    ) -> Result<(), sqlx::Error> {
        outbox::enqueue(tx, &event(kind, subject, data, ctx)).await
    }

    /// Announces what a change from `before` to `after` implies, and records the alert state.
    async fn signal(
        tx: &mut Tx,
        sku: &str,
        before: &Levels,
        after: &After,
        ctx: Context<'_>,
    ) -> Result<(), sqlx::Error> {
        let (events, alerted) = signal_events(sku, before, &after.levels(), after.product_id.as_deref(), ctx);
        outbox::enqueue_all(tx, &events).await?;
        if let Some(alerted) = alerted {
            store::set_alerted(tx, sku, alerted).await?;
        }
        Ok(())
    }

    // ----- stock levels ---------------------------------------------------------------------

    pub async fn stock(&self, sku: &str) -> Result<StockView, ApiError> {
        let sku = parse_sku(sku)?;
        store::stock(self.db.reader(), &sku)
            .await?
            .map(StockView::from)
            .ok_or_else(|| ApiError::not_found("SKU"))
    }

    /// Known SKUs among `skus` with their levels (unknown ones are left out).
    pub async fn stocks(&self, skus: &[String]) -> Result<Vec<StockView>, ApiError> {
        Ok(store::stocks(self.db.reader(), skus)
            .await?
            .into_iter()
            .map(StockView::from)
            .collect())
    }

    /// [`Inventory::stocks`] from the levels kept in memory where they are: what the cart reads
    /// on every view and add. For callers in this process only (see `KeptLevels`).
    pub async fn kept_stocks(&self, skus: &[String]) -> Result<Vec<StockView>, ApiError> {
        let mut found = Vec::with_capacity(skus.len());
        let mut missing = Vec::new();
        for sku in skus {
            match self.levels.views.get(sku) {
                Some(view) => found.push(view),
                None => missing.push(sku.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        // Read after the generation: a commit meanwhile moves it past `generation`.
        let generation = self.levels.generation.load(Ordering::SeqCst);
        let read = self.stocks(&missing).await?;
        for view in &read {
            self.levels.views.insert(view.sku.clone(), view.clone());
        }
        if self.levels.generation.load(Ordering::SeqCst) != generation {
            self.levels.views.invalidate_all();
        }
        found.extend(read);
        Ok(found)
    }

    /// Applies an admin's change. `version`, when given, must be the current one (else 409).
    pub async fn change_stock(
        &self,
        sku: &str,
        change: StockChange,
        version: Option<i64>,
        ctx: Context<'_>,
    ) -> Result<StockView, ApiError> {
        let sku = parse_sku(sku)?;
        match &change {
            StockChange::Set { on_hand, threshold } => {
                let mut errors = Vec::new();
                if !(0..=domain::MAX_ON_HAND).contains(on_hand) {
                    errors.push(platform::FieldError::new(
                        "on_hand",
                        format!("must be between 0 and {}", domain::MAX_ON_HAND),
                    ));
                }
                if threshold.is_some_and(|t| !(0..=domain::MAX_ON_HAND).contains(&t)) {
                    errors.push(platform::FieldError::new(
                        "low_stock_threshold",
                        format!("must be between 0 and {}", domain::MAX_ON_HAND),
                    ));
                }
                if !errors.is_empty() {
                    return Err(ApiError::Validation(errors));
                }
            }
            StockChange::Adjust { delta, reason } => {
                if *delta == 0 || delta.abs() > domain::MAX_ON_HAND {
                    return Err(ApiError::validation(
                        "delta",
                        format!(
                            "must be a non-zero number of units, at most {} either way",
                            domain::MAX_ON_HAND
                        ),
                    ));
                }
                let reason = reason.trim();
                if reason.is_empty() || reason.chars().count() > 200 {
                    return Err(ApiError::validation("reason", "must be 1–200 characters"));
                }
            }
        }
        // Setting a level is a compare-and-set on the level read: a commit or another admin
        // may change it between the read and the write; then read again.
        for _ in 0..10 {
            let now = self.now();
            let mut tx = self.db.begin().await?;
            let current = store::stock_in(&mut tx, &sku)
                .await?
                .ok_or_else(|| ApiError::not_found("SKU"))?;
            if version.is_some_and(|v| v != current.version) {
                return Err(stale());
            }
            let before = current.levels();
            let (delta, after, reason, kind) = match &change {
                StockChange::Set { on_hand, threshold } => {
                    let threshold = threshold.unwrap_or(current.low_stock_threshold);
                    let after = store::set_levels(
                        &mut tx,
                        &sku,
                        current.on_hand,
                        *on_hand,
                        threshold,
                        Some(current.version),
                        now,
                    )
                    .await?;
                    (*on_hand - current.on_hand, after, None, Movement::Set)
                }
                StockChange::Adjust { delta, reason } => {
                    let after = store::adjust_on_hand(&mut tx, &sku, *delta, Some(current.version), now).await?;
                    (*delta, after, Some(reason.trim()), Movement::Adjust)
                }
            };
            let Some(after) = after else {
                tx.rollback().await?;
                let fresh = store::stock(self.db.reader(), &sku)
                    .await?
                    .ok_or_else(|| ApiError::not_found("SKU"))?;
                let wanted = match &change {
                    StockChange::Set { on_hand, .. } => *on_hand,
                    StockChange::Adjust { delta, .. } => fresh.on_hand + delta,
                };
                if wanted < fresh.reserved {
                    return Err(ApiError::ConflictWith {
                        message: format!(
                            "{} units of {sku} are reserved; on hand cannot go below that",
                            fresh.reserved
                        ),
                        members: json!({"reserved": fresh.reserved, "on_hand": fresh.on_hand}),
                    });
                }
                if wanted > domain::MAX_ON_HAND {
                    return Err(ApiError::validation(
                        "delta",
                        format!("would take on hand above {}", domain::MAX_ON_HAND),
                    ));
                }
                continue;
            };
            if delta != 0 {
                store::record(
                    &mut tx,
                    Entry {
                        sku: &sku,
                        kind,
                        on_hand_delta: delta,
                        reserved_delta: 0,
                        after: &after,
                        reason,
                        reference: None,
                        actor: ctx.actor,
                        at: now,
                    },
                )
                .await?;
            }
            if delta > 0 {
                let data = json!({
                    "sku": sku, "product_id": after.product_id, "added": delta, "on_hand": after.on_hand,
                    "available": after.on_hand - after.reserved, "reason": reason.unwrap_or(kind.as_str()),
                });
                Self::emit(&mut tx, RESTOCKED, &sku, data, ctx).await?;
            }
            Self::signal(&mut tx, &sku, &before, &after, ctx).await?;
            self.commit_tx(tx).await?;
            return self.stock(&sku).await;
        }
        Err(ApiError::Conflict(
            "the stock level keeps changing; try again".to_owned(),
        ))
    }

    pub async fn ledger(&self, sku: &str, before: Option<i64>, limit: i64) -> Result<Vec<store::LedgerRow>, ApiError> {
        let sku = parse_sku(sku)?;
        if store::stock(self.db.reader(), &sku).await?.is_none() {
            return Err(ApiError::not_found("SKU"));
        }
        Ok(store::ledger(self.db.reader(), &sku, before, limit).await?)
    }

    // ----- SKUs from the catalog ------------------------------------------------------------

    /// Registers a product's SKUs (product.created / product.updated) with no stock, and
    /// discontinues the SKUs it no longer has.
    pub async fn sync_product(
        &self,
        tx: &mut Tx,
        product_id: &str,
        seller_id: Option<&str>,
        skus: &[String],
    ) -> Result<(), sqlx::Error> {
        let now = self.now();
        for sku in store::skus_of_product(tx, product_id).await? {
            if !skus.contains(&sku) {
                store::discontinue(tx, &sku, now).await?;
            }
        }
        for sku in skus {
            store::ensure_sku(
                tx,
                sku,
                product_id,
                seller_id,
                self.settings.default_low_stock_threshold,
                now,
            )
            .await?;
        }
        Ok(())
    }

    /// product.deleted: nothing more of these SKUs can be reserved.
    pub async fn discontinue(&self, tx: &mut Tx, skus: &[String]) -> Result<(), sqlx::Error> {
        let now = self.now();
        for sku in skus {
            store::discontinue(tx, sku, now).await?;
        }
        Ok(())
    }

    // ----- reservations ---------------------------------------------------------------------

    /// Reserves every line for `order_id` or none. Calling it again for the same order answers
    /// the reservation made the first time (the same lines are required).
    pub async fn reserve(
        &self,
        order_id: &str,
        lines: &[Line],
        ttl: Option<Duration>,
        ctx: Context<'_>,
    ) -> Result<Reservation, ReserveError> {
        let order_id = parse_order_id(order_id)?;
        let lines = domain::merge_lines(lines)?;
        let ttl = ttl.unwrap_or(self.settings.reservation_ttl);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let batched = self
            .batched(|reply| batch::Command::Reserve {
                order_id: order_id.clone(),
                lines: lines.clone(),
                ttl_ms,
                who: Who::of(ctx),
                reply,
            })
            .await;
        match batched {
            Some(result) => result,
            None => self.reserve_alone(order_id, lines, ttl_ms, ctx).await,
        }
    }

    /// Sends a command (made with the sender of its answer) to the batch writer and waits for
    /// its answer. `None`: batches are off, the batch was rolled back, or the writer is gone;
    /// the command must run alone.
    async fn batched<T>(&self, command: impl FnOnce(oneshot::Sender<Outcome<T>>) -> batch::Command) -> Option<T> {
        if !self.settings.batch_reservations {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let queue = self.batches.get_or_init(|| {
            batch::Writer {
                db: self.db.clone(),
                outbox: self.outbox.clone(),
                clock: self.clock.clone(),
                levels: self.levels.clone(),
            }
            .spawn()
        });
        queue.send(command(reply)).await.ok()?;
        match answer.await {
            Ok(Outcome::Done(result)) => Some(result),
            Ok(Outcome::Alone) | Err(_) => None,
        }
    }

    /// [`Inventory::reserve`] in a transaction of its own.
    async fn reserve_alone(
        &self,
        order_id: String,
        lines: Vec<Line>,
        ttl_ms: i64,
        ctx: Context<'_>,
    ) -> Result<Reservation, ReserveError> {
        let now = self.now();
        let row = ReservationRow {
            id: platform::id::new_id().to_string(),
            order_id: order_id.clone(),
            status: ReservationStatus::Active.as_str().to_owned(),
            expires_at: now.saturating_add(ttl_ms),
            release_reason: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db.begin().await?;
        if let Err(err) = store::insert_reservation(&mut tx, &row).await {
            tx.rollback().await?;
            if !is_unique_violation(&err) {
                return Err(err.into());
            }
            let existing = self.reservation(&order_id).await?;
            if existing.lines != lines {
                return Err(other_lines(&order_id).into());
            }
            return Ok(existing);
        }
        let mut short = Vec::new();
        let mut changed = Vec::new();
        let reserved = store::reserve_lines(&mut tx, self.one_statement(), &lines, now).await?;
        for (line, after) in lines.iter().zip(reserved) {
            match after {
                Some(after) => changed.push((line, after)),
                None => short.push(line),
            }
        }
        if !short.is_empty() {
            tx.rollback().await?;
            let skus: Vec<String> = short.iter().map(|l| l.sku.clone()).collect();
            let known = store::stocks(self.db.reader(), &skus).await?;
            let shortages = short
                .iter()
                .map(|line| Shortage {
                    sku: line.sku.clone(),
                    requested: line.quantity,
                    available: known
                        .iter()
                        .find(|s| s.sku == line.sku && s.discontinued_at.is_none())
                        .map_or(0, |s| s.available().max(0)),
                })
                .collect();
            return Err(ReserveError::Short(shortages));
        }
        store::insert_lines(&mut tx, &row.id, &lines).await?;
        let entries: Vec<Entry<'_>> = changed
            .iter()
            .map(|(line, after)| Entry {
                sku: &line.sku,
                kind: Movement::Reserve,
                on_hand_delta: 0,
                reserved_delta: line.quantity,
                after,
                reason: None,
                reference: Some(&order_id),
                actor: ctx.actor,
                at: now,
            })
            .collect();
        store::record_all(&mut tx, &entries).await?;
        for (line, after) in &changed {
            let before = Levels {
                reserved: after.reserved - line.quantity,
                ..after.levels()
            };
            Self::signal(&mut tx, &line.sku, &before, after, ctx).await?;
        }
        let reservation = Reservation::from_row(row, lines)?;
        outbox::enqueue(&mut tx, &reserved_event(&reservation, ctx)).await?;
        self.commit_tx(tx).await?;
        Ok(reservation)
    }

    pub async fn reservation(&self, order_id: &str) -> Result<Reservation, ApiError> {
        let order_id = parse_order_id(order_id)?;
        let row = store::reservation(self.db.reader(), &order_id)
            .await?
            .ok_or_else(|| ApiError::not_found("reservation"))?;
        let lines = store::lines_of(self.db.reader(), std::slice::from_ref(&row.id))
            .await?
            .into_iter()
            .map(|(_, line)| line)
            .collect();
        Reservation::from_row(row, lines)
    }

    pub async fn reservations(
        &self,
        status: Option<ReservationStatus>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Reservation>, ApiError> {
        let rows =
            store::list_reservations(self.db.reader(), status.map(ReservationStatus::as_str), before, limit).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut lines = store::lines_of(self.db.reader(), &ids).await?;
        rows.into_iter()
            .map(|row| {
                let mine = lines
                    .extract_if(.., |(id, _)| *id == row.id)
                    .map(|(_, line)| line)
                    .collect();
                Reservation::from_row(row, mine)
            })
            .collect()
    }

    /// Turns the order's reserved units into sold ones. Idempotent: committing a committed
    /// reservation changes nothing. A released one cannot be committed (409).
    pub async fn commit(&self, order_id: &str, ctx: Context<'_>) -> Result<Reservation, ApiError> {
        self.finish(order_id, ReservationStatus::Committed, None, ctx).await
    }

    /// Gives the order's reserved units back. Idempotent: releasing a released reservation
    /// changes nothing. A committed one cannot be released (409; restock instead).
    pub async fn release(
        &self,
        order_id: &str,
        reason: ReleaseReason,
        ctx: Context<'_>,
    ) -> Result<Reservation, ApiError> {
        self.finish(order_id, ReservationStatus::Released, Some(reason), ctx)
            .await
    }

    async fn finish(
        &self,
        order_id: &str,
        to: ReservationStatus,
        reason: Option<ReleaseReason>,
        ctx: Context<'_>,
    ) -> Result<Reservation, ApiError> {
        let order_id = parse_order_id(order_id)?;
        let batched = self
            .batched(|reply| batch::Command::Finish {
                order_id: order_id.clone(),
                to,
                reason,
                who: Who::of(ctx),
                reply,
            })
            .await;
        match batched {
            Some(result) => result,
            None => self.finish_alone(order_id, to, reason, ctx).await,
        }
    }

    /// [`Inventory::finish`] in a transaction of its own.
    async fn finish_alone(
        &self,
        order_id: String,
        to: ReservationStatus,
        reason: Option<ReleaseReason>,
        ctx: Context<'_>,
    ) -> Result<Reservation, ApiError> {
        let now = self.now();
        let mut tx = self.db.begin().await?;
        let reason_text = reason.map(ReleaseReason::as_str);
        let mut attempts = 0;
        let row = loop {
            if let Some(row) = store::finish_reservation(&mut tx, &order_id, to.as_str(), reason_text, now).await? {
                break row;
            }
            let existing = store::reservation_in(&mut tx, &order_id).await?;
            attempts += 1;
            // Active now but not when the update began: the reservation's own transaction
            // committed in between (on PostgreSQL each statement sees what is committed when it
            // starts). The next update sees it.
            if existing
                .as_ref()
                .is_some_and(|row| row.status == ReservationStatus::Active.as_str())
                && attempts < 3
            {
                continue;
            }
            tx.rollback().await?;
            return match existing {
                None => Err(ApiError::not_found("reservation")),
                Some(row) if row.status == to.as_str() => self.reservation(&order_id).await,
                Some(row) if row.status == ReservationStatus::Active.as_str() => Err(ApiError::Unavailable {
                    message: format!("the reservation of order {order_id} kept changing; try again"),
                    retry_after_secs: 1,
                }),
                Some(row) => Err(already_finished(&order_id, &row.status)),
            };
        };
        let lines = store::lines_in(&mut tx, &row.id).await?;
        let (kind, sold) = if to == ReservationStatus::Committed {
            (Movement::Commit, true)
        } else {
            (Movement::Release, false)
        };
        let moved = if sold {
            store::commit_lines(&mut tx, self.one_statement(), &lines, now).await?
        } else {
            store::release_lines(&mut tx, self.one_statement(), &lines, now).await?
        };
        let mut changed = Vec::with_capacity(lines.len());
        for (line, after) in lines.iter().zip(moved) {
            // The reservation holds these units, so the row has them reserved; anything else
            // is a broken invariant, and nothing of this change may be kept.
            let after = after.ok_or_else(|| {
                anyhow::anyhow!(
                    "SKU {} holds fewer reserved units than order {order_id}'s reservation",
                    line.sku
                )
            })?;
            changed.push(Moved {
                line,
                after,
                on_hand_delta: if sold { -line.quantity } else { 0 },
                reserved_delta: -line.quantity,
            });
        }
        let (event, data) = finish_event_data(to, reason_text);
        let moves = Moves {
            reservation: &row,
            lines: &lines,
            changed: &changed,
            kind,
            reason: reason_text,
            now,
        };
        self.record_moves(&mut tx, moves, event, data, ctx).await?;
        self.commit_tx(tx).await?;
        Reservation::from_row(row, lines)
    }

    /// Records the units a reservation moved in the ledger, announces the level changes they
    /// make, and publishes `event` with `data` plus the reservation, its order and its lines.
    async fn record_moves(
        &self,
        tx: &mut Tx,
        moves: Moves<'_>,
        event: &str,
        data: serde_json::Value,
        ctx: Context<'_>,
    ) -> Result<(), ApiError> {
        let order_id = moves.reservation.order_id.as_str();
        let entries: Vec<Entry<'_>> = moves
            .changed
            .iter()
            .map(|moved| Entry {
                sku: &moved.line.sku,
                kind: moves.kind,
                on_hand_delta: moved.on_hand_delta,
                reserved_delta: moved.reserved_delta,
                after: &moved.after,
                reason: moves.reason,
                reference: Some(order_id),
                actor: ctx.actor,
                at: moves.now,
            })
            .collect();
        store::record_all(tx, &entries).await?;
        for moved in moves.changed {
            let before = Levels {
                on_hand: moved.after.on_hand - moved.on_hand_delta,
                reserved: moved.after.reserved - moved.reserved_delta,
                ..moved.after.levels()
            };
            Self::signal(tx, &moved.line.sku, &before, &moved.after, ctx).await?;
        }
        outbox::enqueue(tx, &moved_event(event, data, moves.reservation, moves.lines, ctx)).await?;
        Ok(())
    }

    /// Commits the reservation of an order paid after the reservation expired: its units are
    /// sold again if they are still free, all or none. `Ok(None)`: they are not, and
    /// `inventory.unfillable` is published instead. 409 when the reservation is not one that
    /// expired (committed, or released for another reason).
    pub async fn commit_late(&self, order_id: &str, ctx: Context<'_>) -> Result<Option<Reservation>, ApiError> {
        let order_id = parse_order_id(order_id)?;
        let now = self.now();
        let mut tx = self.db.begin().await?;
        let Some(row) = store::commit_expired(&mut tx, &order_id, now).await? else {
            tx.rollback().await?;
            return Err(ApiError::Conflict(format!(
                "the reservation of order {order_id} did not expire"
            )));
        };
        let lines = store::lines_in(&mut tx, &row.id).await?;
        let mut changed = Vec::with_capacity(lines.len());
        for line in &lines {
            match store::sell_free_units(&mut tx, &line.sku, line.quantity, now).await? {
                Some(after) => changed.push(Moved {
                    line,
                    after,
                    on_hand_delta: -line.quantity,
                    reserved_delta: 0,
                }),
                None => {
                    tx.rollback().await?;
                    tracing::warn!(order_id, sku = %line.sku, "an order was paid after its reservation expired and its units are gone");
                    let mut tx = self.db.begin().await?;
                    let data = json!({ "order_id": order_id, "reservation_id": row.id, "lines": lines });
                    Self::emit(&mut tx, UNFILLABLE, &order_id, data, ctx).await?;
                    self.commit_tx(tx).await?;
                    return Ok(None);
                }
            }
        }
        let moves = Moves {
            reservation: &row,
            lines: &lines,
            changed: &changed,
            kind: Movement::Commit,
            reason: Some("paid after the reservation expired"),
            now,
        };
        self.record_moves(&mut tx, moves, COMMITTED, json!({ "late": true }), ctx)
            .await?;
        self.commit_tx(tx).await?;
        Reservation::from_row(row, lines).map(Some)
    }

    /// Releases every active reservation whose expiry has passed, with reason `expired`.
    /// Answers how many it released. Safe beside commits: each release is conditional on the
    /// reservation still being active.
    pub async fn release_expired(&self) -> Result<usize, ApiError> {
        let mut released = 0;
        loop {
            let due = store::expired(self.db.reader(), self.now(), 100).await?;
            if due.is_empty() {
                return Ok(released);
            }
            let batch = due.len();
            for order_id in due {
                match self
                    .release(&order_id, ReleaseReason::Expired, Context::default())
                    .await
                {
                    Ok(_) => released += 1,
                    // Committed or released meanwhile: nothing to do.
                    Err(ApiError::Conflict(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            if batch < 100 {
                return Ok(released);
            }
        }
    }

    /// Runs `release_expired` every `sweep_interval` until cancelled.
    pub fn spawn_sweeper(self: &std::sync::Arc<Self>, cancel: CancellationToken) {
        let inventory = self.clone();
        platform::periodic::spawn_every(
            "release expired reservations",
            self.settings.sweep_interval,
            cancel,
            move || {
                let inventory = inventory.clone();
                async move {
                    inventory
                        .release_expired()
                        .await
                        .map_err(|err| anyhow::anyhow!("{err}"))
                }
            },
        );
    }

    /// Puts units back on hand (a return, or a cancellation after commit), once per
    /// `reference`: the same reference twice restocks once.
    pub async fn restock(
        &self,
        reference: &str,
        lines: &[Line],
        reason: &str,
        ctx: Context<'_>,
    ) -> Result<bool, ApiError> {
        let lines = domain::merge_lines(lines)?;
        let reference = reference.trim();
        if reference.is_empty() || reference.len() > 200 {
            return Err(ApiError::validation("reference", "must be 1–200 characters"));
        }
        let now = self.now();
        let mut tx = self.db.begin().await?;
        if !store::claim_restock(&mut tx, reference, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        for line in &lines {
            let after = store::restock_units(&mut tx, &line.sku, line.quantity, now)
                .await?
                .ok_or_else(|| ApiError::not_found(&format!("SKU {}", line.sku)))?;
            store::record(
                &mut tx,
                Entry {
                    sku: &line.sku,
                    kind: Movement::Restock,
                    on_hand_delta: line.quantity,
                    reserved_delta: 0,
                    after: &after,
                    reason: Some(reason),
                    reference: Some(reference),
                    actor: ctx.actor,
                    at: now,
                },
            )
            .await?;
            let data = json!({
                "sku": line.sku, "product_id": after.product_id, "added": line.quantity, "on_hand": after.on_hand,
                "available": after.on_hand - after.reserved, "reason": reason, "reference": reference,
            });
            Self::emit(&mut tx, RESTOCKED, &line.sku, data, ctx).await?;
            let before = Levels {
                on_hand: after.on_hand - line.quantity,
                ..after.levels()
            };
            Self::signal(&mut tx, &line.sku, &before, &after, ctx).await?;
        }
        self.commit_tx(tx).await?;
        Ok(true)
    }

    // ----- the invariant check --------------------------------------------------------------

    /// Proves, for every SKU, reserved == the sum of its active reservations, on hand >= 0 and
    /// reserved <= on hand; lists the SKUs that break it.
    pub async fn check(&self) -> Result<CheckReport, ApiError> {
        Ok(CheckReport {
            skus: store::count_skus(self.db.reader()).await?,
            violations: store::violations(self.db.reader()).await?,
        })
    }
}

/// An event of this service.
fn event(kind: &str, subject: &str, data: serde_json::Value, ctx: Context<'_>) -> Event {
    Event::new(SERVICE, kind, subject, data, ctx.correlation_id)
}

/// The events a change of `sku` from `before` to `after` announces, and the new value of its
/// alerted flag when that changes.
pub(crate) fn signal_events(
    sku: &str,
    before: &Levels,
    after: &Levels,
    product_id: Option<&str>,
    ctx: Context<'_>,
) -> (Vec<Event>, Option<bool>) {
    let signals = domain::signals(before, after);
    let mut events = Vec::new();
    if let Some(available) = signals.availability_changed {
        let data = json!({"sku": sku, "available": available});
        events.push(event(AVAILABILITY_CHANGED, sku, data, ctx));
    }
    if signals.low_stock {
        let data = json!({
            "sku": sku, "product_id": product_id, "available": after.available(),
            "on_hand": after.on_hand, "threshold": after.low_stock_threshold,
        });
        events.push(event(LOW_STOCK, sku, data, ctx));
    }
    (events, signals.alerted)
}

/// `inventory.reserved` for a new reservation.
pub(crate) fn reserved_event(reservation: &Reservation, ctx: Context<'_>) -> Event {
    let data = json!({
        "reservation_id": reservation.id, "order_id": reservation.order_id, "lines": reservation.lines,
        "expires_at": platform::clock::rfc3339(reservation.expires_at),
    });
    event(RESERVED, &reservation.order_id, data, ctx)
}

/// The event of a finished reservation and what it says beyond the reservation.
fn finish_event_data(to: ReservationStatus, reason: Option<&str>) -> (&'static str, serde_json::Value) {
    match to {
        ReservationStatus::Committed => (COMMITTED, json!({})),
        _ => (RELEASED, json!({ "reason": reason })),
    }
}

/// `inventory.committed` or `inventory.released` for a reservation finished as `to`.
pub(crate) fn finished_event(
    reservation: &ReservationRow,
    lines: &[Line],
    to: ReservationStatus,
    reason: Option<&str>,
    ctx: Context<'_>,
) -> Event {
    let (kind, data) = finish_event_data(to, reason);
    moved_event(kind, data, reservation, lines, ctx)
}

/// `kind` with `data` plus the reservation, its order and its lines.
fn moved_event(
    kind: &str,
    mut data: serde_json::Value,
    reservation: &ReservationRow,
    lines: &[Line],
    ctx: Context<'_>,
) -> Event {
    data["reservation_id"] = json!(reservation.id);
    data["order_id"] = json!(reservation.order_id);
    data["lines"] = json!(lines);
    event(kind, &reservation.order_id, data, ctx)
}

/// 409: the order's reservation holds other lines than a second reserve asks for.
pub(crate) fn other_lines(order_id: &str) -> ApiError {
    ApiError::Conflict(format!("order {order_id} already holds a reservation with other lines"))
}

/// 409: the order's reservation was already committed or released (`status`).
pub(crate) fn already_finished(order_id: &str, status: &str) -> ApiError {
    ApiError::Conflict(format!("the reservation of order {order_id} is already {status}"))
}

fn stale() -> ApiError {
    ApiError::Conflict(
        "the stock level was changed by someone else (stale version); reload it and try again".to_owned(),
    )
}

pub use platform::sku::sku_param as parse_sku;

/// Order ids are opaque to inventory but bounded: 1–100 visible ASCII characters.
/// One SKU's units a reservation moved: the levels after, and by how much on hand and reserved
/// changed.
struct Moved<'a> {
    line: &'a Line,
    after: After,
    on_hand_delta: i64,
    reserved_delta: i64,
}

/// What a change to a reservation moved, for [`Inventory::record_moves`].
struct Moves<'a> {
    reservation: &'a ReservationRow,
    lines: &'a [Line],
    changed: &'a [Moved<'a>],
    kind: Movement,
    reason: Option<&'a str>,
    now: i64,
}

fn parse_order_id(raw: &str) -> Result<String, ApiError> {
    let id = raw.trim();
    if id.is_empty() || id.len() > 100 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::validation(
            "order_id",
            "must be 1–100 visible ASCII characters",
        ));
    }
    Ok(id.to_owned())
}

/// A SKU the demo catalog holds, for [`Inventory::seed_demo_stock`].
#[derive(Debug, Clone)]
pub struct DemoSku {
    pub sku: String,
    pub product_id: String,
    pub seller_id: Option<String>,
}

impl Inventory {
    /// Gives each demo SKU not yet known a deterministic stock level (10–200 units, from the
    /// SKU's text), recorded in the ledger as `demo seed`. Known SKUs keep their levels, so a
    /// second run changes nothing. Answers how many SKUs it stocked.
    pub async fn seed_demo_stock(&self, skus: &[DemoSku]) -> Result<usize, ApiError> {
        let mut stocked = 0;
        for batch in skus.chunks(500) {
            let now = self.now();
            let mut tx = self.db.begin().await?;
            for item in batch {
                let on_hand = demo_level(&item.sku);
                let threshold = self.settings.default_low_stock_threshold;
                let seller = item.seller_id.as_deref();
                if store::insert_stocked(&mut tx, &item.sku, &item.product_id, seller, on_hand, threshold, now).await? {
                    let after = After {
                        on_hand,
                        reserved: 0,
                        low_stock_threshold: self.settings.default_low_stock_threshold,
                        low_stock_alerted: 0,
                        product_id: Some(item.product_id.clone()),
                    };
                    let entry = Entry {
                        sku: &item.sku,
                        kind: Movement::Set,
                        on_hand_delta: on_hand,
                        reserved_delta: 0,
                        after: &after,
                        reason: Some("demo seed"),
                        reference: None,
                        actor: None,
                        at: now,
                    };
                    store::record(&mut tx, entry).await?;
                    stocked += 1;
                }
            }
            self.commit_tx(tx).await?;
        }
        Ok(stocked)
    }
}

/// 10–200 units (above the default low-stock threshold), the same for a SKU on every run.
fn demo_level(sku: &str) -> i64 {
    let hash = sku.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    10 + (hash % 191) as i64
}
