//! The delivery use cases: a shipment per paid (or cash-on-delivery) order, its assignment to
//! the least-loaded agent serving the city (or by an admin), every status change (through the
//! one state machine, as a compare-and-set with its tracking row and event in one transaction),
//! proof of delivery by a one-time code, tracking for the customer, and agents' service areas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform::auth::{CurrentUser, Role};
use platform::clock::{rfc3339, SharedClock};
use platform::error::{ApiError, FieldError};
use platform::events::Event;
use platform::outbox::{self, Outbox};
use platform::page::{Page, PageRequest};
use platform::store::{Db, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, AssignRefused, MoveRefused, Proof, RecallRefused, ShipmentStatus, Step};
use crate::events::{self, OrderData};
use crate::store::{self, AgentRow, Change, ShipmentFilter, ShipmentRow, TrackingEntry, TrackingRow};

pub const SERVICE: &str = "delivery";

// ----- errors --------------------------------------------------------------------------------

impl From<MoveRefused> for ApiError {
    /// 409 naming both statuses, as `from` and `to` members of the problem.
    fn from(refused: MoveRefused) -> Self {
        ApiError::ConflictWith {
            message: refused.to_string(),
            members: json!({"from": refused.from.as_str(), "to": refused.to.as_str()}),
        }
    }
}

impl From<RecallRefused> for ApiError {
    /// 409: a recalled shipment does not go towards the customer (`from`, `to` and
    /// `recalled: true` members), or the move is not one of the state machine's.
    fn from(refused: RecallRefused) -> Self {
        match refused {
            RecallRefused::Recalled { from, to } => ApiError::ConflictWith {
                message: refused.to_string(),
                members: json!({"from": from.as_str(), "to": to.as_str(), "recalled": true}),
            },
            RecallRefused::Move(refused) => refused.into(),
        }
    }
}

impl From<AssignRefused> for ApiError {
    /// 409: the shipment is on the road or closed.
    fn from(refused: AssignRefused) -> Self {
        ApiError::Conflict(refused.to_string())
    }
}

// ----- the directory of users ----------------------------------------------------------------

/// A user as the identity service knows them, for registering delivery agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub full_name: String,
    /// `customer`, `seller`, `admin` or `delivery_agent`.
    pub role: String,
    /// False when the account is disabled.
    pub active: bool,
}

/// Identity, as delivery calls it.
#[async_trait]
pub trait AgentDirectory: Send + Sync {
    async fn user(&self, user_id: Uuid) -> anyhow::Result<Option<DirectoryUser>>;
}

// ----- views ---------------------------------------------------------------------------------

/// The order's shipping address, as it was when the order was paid (or confirmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShippingAddress {
    pub full_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub postal_code: String,
    #[serde(default)]
    pub country: String,
}

impl ShippingAddress {
    /// What keeps a parcel from being delivered to this address, if anything.
    fn unusable(&self) -> Option<&'static str> {
        if self.full_name.trim().is_empty() {
            Some("the shipping address has no recipient")
        } else if self.line1.trim().is_empty() {
            Some("the shipping address has no street line")
        } else if domain::city_key(&self.city).is_none() {
            Some("the shipping address has no city")
        } else {
            None
        }
    }
}

/// One entry of a shipment's history as agents and admins see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub status: ShipmentStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `agent:<id>`, `admin:<id>`, `orders` (the order's events) or `system` (automatic assignment).
    pub actor: String,
    /// RFC 3339.
    pub at: String,
}

/// A shipment as its agent and admins see it. The delivery code itself is never shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShipmentView {
    pub id: Uuid,
    pub order_id: Uuid,
    /// `ORD-YYYY-NNNNNN`.
    pub order_number: String,
    pub user_id: Uuid,
    pub status: ShipmentStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    pub address: ShippingAddress,
    /// Cash on delivery: the agent collects the money, and delivery needs the customer's code.
    pub cod: bool,
    pub payment_method: String,
    /// How the delivery was proven, once delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
    /// Wrong delivery codes tried since the code was issued.
    pub code_attempts: i64,
    /// Too many wrong codes: delivery needs a new code from an admin.
    pub code_locked: bool,
    /// The order was cancelled after the parcel was picked up: it is not delivered, it goes
    /// back to the sender (`returned_to_sender`, then `returned` once an admin receives it).
    pub recalled: bool,
    /// When the shipment was recalled, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalled_at: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// Every change, oldest first (on single-shipment reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
}

/// One step of a shipment as its customer sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrackingStep {
    pub status: ShipmentStatus,
    /// RFC 3339.
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where an order's parcel is, for its customer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrackingView {
    pub order_id: Uuid,
    pub order_number: String,
    pub shipment_id: Uuid,
    pub status: ShipmentStatus,
    /// Who brings the parcel, once someone does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// Cash on delivery: have the money and the delivery code ready.
    pub cod: bool,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// Oldest first.
    pub steps: Vec<TrackingStep>,
}

/// A delivery agent with their service area and current load.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentView {
    pub user_id: Uuid,
    pub full_name: String,
    /// Takes new assignments.
    pub active: bool,
    /// The cities served, as typed by the admin.
    pub cities: Vec<String>,
    /// Shipments the agent holds now (assigned up to rescheduled, and returned_to_sender until
    /// the parcel is received back).
    pub load: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_assigned_at: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// An agent's service area and activity, as an admin sets them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AgentInput {
    /// 1–50 cities, each 1–100 characters; matched ignoring case and spacing.
    pub cities: Vec<String>,
    pub active: bool,
    /// The version you read (or `If-Match`), when updating; optional.
    #[serde(default)]
    pub version: Option<i64>,
}

/// A status change an agent reports.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct StatusUpdate {
    /// `picked_up`, `in_transit`, `out_for_delivery`, `delivered`, `failed_attempt`,
    /// `rescheduled` or `returned_to_sender` (`returned` is an admin's, through the received route).
    pub status: String,
    /// Up to 500 characters; the customer sees it in the tracking.
    #[serde(default)]
    pub note: Option<String>,
    /// The customer's six-digit delivery code: required to deliver a cash-on-delivery
    /// shipment, checked when given for a prepaid one.
    #[serde(default)]
    pub code: Option<String>,
}

/// A new delivery code, also sent to the customer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedCode {
    pub shipment_id: Uuid,
    /// Six digits; the previous code no longer works.
    pub code: String,
    /// RFC 3339.
    pub issued_at: String,
}

/// Which of their shipments an agent lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssignmentFilter {
    /// Only this status (overrides `active_only`).
    pub status: Option<ShipmentStatus>,
    /// Only the shipments the agent holds now (assigned up to returned_to_sender).
    pub active_only: bool,
}

/// Which shipments an admin lists.
#[derive(Debug, Clone, Default)]
pub struct AdminFilter {
    pub status: Option<ShipmentStatus>,
    pub agent_id: Option<Uuid>,
    /// Matched ignoring case and spacing.
    pub city: Option<String>,
    pub order_id: Option<Uuid>,
}

fn parse_stored_id(raw: &str) -> Result<Uuid, ApiError> {
    platform::id::parse_id(raw).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored id {raw:?} is not a UUID")))
}

fn stored_status(raw: &str) -> anyhow::Result<ShipmentStatus> {
    ShipmentStatus::parse(raw).ok_or_else(|| anyhow::anyhow!("unknown shipment status {raw:?}"))
}

impl ShipmentView {
    fn from_row(row: ShipmentRow, max_attempts: i64) -> Result<Self, ApiError> {
        let status = stored_status(&row.status)?;
        let address = serde_json::from_str(&row.address)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("unreadable address snapshot: {err}")))?;
        Ok(Self {
            id: parse_stored_id(&row.id)?,
            order_id: parse_stored_id(&row.order_id)?,
            user_id: parse_stored_id(&row.user_id)?,
            agent_id: row.agent_id.as_deref().map(parse_stored_id).transpose()?,
            cod: row.is_cod(),
            code_locked: row.code_attempts >= max_attempts,
            recalled: row.recalled_at.is_some(),
            recalled_at: row.recalled_at.map(rfc3339),
            proof: row.proof.as_deref().and_then(Proof::parse),
            order_number: row.order_number,
            status,
            agent_name: row.agent_name,
            address,
            payment_method: row.payment_method,
            code_attempts: row.code_attempts,
            version: row.version,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            assigned_at: row.assigned_at.map(rfc3339),
            delivered_at: row.delivered_at.map(rfc3339),
            history: None,
        })
    }
}

impl AgentView {
    fn from_row(row: AgentRow, cities: Vec<String>) -> Result<Self, ApiError> {
        Ok(Self {
            user_id: parse_stored_id(&row.user_id)?,
            full_name: row.full_name,
            active: row.disabled_at.is_none(),
            cities,
            load: row.load,
            last_assigned_at: row.last_assigned_at.map(rfc3339),
            version: row.version,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
        })
    }
}

// ----- the service ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Settings {
    /// Wrong delivery codes after which the code is locked until an admin issues a new one.
    pub code_max_attempts: u32,
    /// Give each new shipment to the least-loaded agent serving its city.
    pub auto_assign: bool,
    /// How often the sweeper tries again to assign shipments no agent served when they came.
    pub sweep_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            code_max_attempts: 5,
            auto_assign: true,
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// Who caused a change, for the tracking rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Agent(Uuid),
    Admin(Uuid),
    /// An order event (the shipment's creation, cancellation or recall).
    Orders,
    /// The automatic assignment.
    System,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Self::Agent(id) => format!("agent:{id}"),
            Self::Admin(id) => format!("admin:{id}"),
            Self::Orders => "orders".to_owned(),
            Self::System => "system".to_owned(),
        }
    }

    fn of(caller: &CurrentUser) -> Self {
        if caller.is_admin() {
            Self::Admin(caller.id)
        } else {
            Self::Agent(caller.id)
        }
    }
}

/// One change to write: the status after it, the agent after it, and what to record.
struct Move<'a> {
    to: ShipmentStatus,
    agent_id: Option<&'a str>,
    actor: &'a Actor,
    note: Option<&'a str>,
    proof: Option<Proof>,
}

pub struct Delivery {
    db: Db,
    outbox: Outbox,
    clock: SharedClock,
    settings: Settings,
    agents: Arc<dyn AgentDirectory>,
}

impl Delivery {
    pub fn new(db: Db, clock: SharedClock, settings: Settings, agents: Arc<dyn AgentDirectory>) -> Self {
        Self {
            outbox: Outbox::new(db.clone()),
            db,
            clock,
            settings,
            agents,
        }
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

    fn max_attempts(&self) -> i64 {
        i64::from(self.settings.code_max_attempts)
    }

    async fn emit(
        tx: &mut Tx,
        kind: &str,
        order_id: &str,
        data: serde_json::Value,
        correlation_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        outbox::enqueue(tx, &Event::new(SERVICE, kind, order_id, data, correlation_id)).await
    }

    /// The data every `shipment.*` event carries.
    #[allow(clippy::too_many_arguments)]
    fn event_data(
        row: &ShipmentRow,
        status: ShipmentStatus,
        previous: Option<ShipmentStatus>,
        agent_id: Option<&str>,
        note: Option<&str>,
        proof: Option<Proof>,
        delivery_code: Option<&str>,
        at: i64,
    ) -> serde_json::Value {
        let mut data = json!({
            "shipment_id": row.id, "order_id": row.order_id, "order_number": row.order_number,
            "user_id": row.user_id, "status": status.as_str(),
            "previous_status": previous.map(ShipmentStatus::as_str), "agent_id": agent_id,
            "note": note, "cod": row.is_cod(), "at": rfc3339(at),
        });
        if let Some(object) = data.as_object_mut() {
            if status == ShipmentStatus::Delivered {
                object.insert("proof".to_owned(), json!(proof.map(Proof::as_str)));
            }
            if let Some(code) = delivery_code {
                object.insert("delivery_code".to_owned(), json!(code));
            }
        }
        data
    }

    /// Writes `change` to `row` inside `tx` as a compare-and-set on its status and version,
    /// with its tracking row and its event. Answers false (and writes nothing) when the shipment
    /// changed since `row` was read.
    async fn write_change(
        &self,
        tx: &mut Tx,
        row: &ShipmentRow,
        change: &Move<'_>,
        correlation_id: Option<&str>,
    ) -> anyhow::Result<bool> {
        let from = stored_status(&row.status)?;
        let now = self.now();
        let changed = store::apply_change(
            tx,
            Change {
                id: &row.id,
                from,
                version: row.version,
                to: change.to,
                agent_id: change.agent_id,
                proof: change.proof.map(Proof::as_str),
                now,
            },
        )
        .await?;
        if !changed {
            return Ok(false);
        }
        let actor = change.actor.label();
        store::append_tracking(
            tx,
            TrackingEntry {
                shipment_id: &row.id,
                status: change.to,
                note: change.note,
                actor: &actor,
                at: now,
            },
        )
        .await?;
        let new_agent = change.agent_id.is_some() && change.agent_id != row.agent_id.as_deref();
        let kind = if new_agent {
            events::SHIPMENT_ASSIGNED
        } else {
            events::kind_of(change.to)
        };
        let data = Self::event_data(
            row,
            change.to,
            Some(from),
            change.agent_id,
            change.note,
            change.proof,
            None,
            now,
        );
        Self::emit(tx, kind, &row.order_id, data, correlation_id).await?;
        Ok(true)
    }

    // ----- reacting to orders -------------------------------------------------------------------

    /// Creates the shipment of a paid (or cash-on-delivery) order inside the consumer's
    /// transaction, with its delivery code (announced once, in `shipment.created`), and gives it
    /// to an agent when automatic assignment is on. An order that already has a shipment keeps
    /// it unchanged, and an order cancelled before it had one (a replayed or late `order.paid`)
    /// gets none. Answers the new shipment's id, or `None` when none was created. An order
    /// without a usable address is an error (the event is retried, then dead-lettered).
    pub async fn create_for_order(
        &self,
        tx: &mut Tx,
        kind: &str,
        order: &OrderData,
        correlation_id: Option<&str>,
    ) -> anyhow::Result<Option<Uuid>> {
        let order_id =
            platform::id::parse_id(&order.order_id).ok_or_else(|| anyhow::anyhow!("order_id is not a UUID"))?;
        // Decided one order at a time against its cancellation (see `cancel_for_order`).
        store::lock_order(tx, self.db.backend(), &order_id.to_string()).await?;
        if store::is_cancelled_order(tx, &order_id.to_string()).await? {
            tracing::warn!(
                order_id = %order_id, kind,
                "the order was cancelled before it had a shipment; no shipment is created"
            );
            return Ok(None);
        }
        let user_id = platform::id::parse_id(&order.user_id).ok_or_else(|| anyhow::anyhow!("user_id is not a UUID"))?;
        let address = order
            .shipping_address
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("order {order_id} has no shipping address"))?;
        if let Some(problem) = address.unusable() {
            anyhow::bail!("order {order_id}: {problem}");
        }
        let city_key = domain::city_key(&address.city).unwrap_or_default();
        let payment_method = match order.payment_method.trim() {
            "" if kind == events::ORDER_CONFIRMED => "cod".to_owned(),
            "" => "unknown".to_owned(),
            method => method.to_ascii_lowercase(),
        };
        let id = platform::id::new_id().to_string();
        let code = domain::generate_code();
        let now = self.now();
        let row = ShipmentRow {
            code_hash: domain::hash_code(&id, &code),
            id,
            order_id: order_id.to_string(),
            order_number: order.number.clone(),
            user_id: user_id.to_string(),
            status: ShipmentStatus::Pending.as_str().to_owned(),
            agent_id: None,
            address: serde_json::to_string(address)?,
            city: address.city.split_whitespace().collect::<Vec<_>>().join(" "),
            city_key,
            payment_method,
            code_attempts: 0,
            proof: None,
            version: 1,
            created_at: now,
            updated_at: now,
            assigned_at: None,
            delivered_at: None,
            recalled_at: None,
            agent_name: None,
        };
        if !store::insert_shipment(tx, &row).await? {
            return Ok(None);
        }
        store::append_tracking(
            tx,
            TrackingEntry {
                shipment_id: &row.id,
                status: ShipmentStatus::Pending,
                note: None,
                actor: &Actor::Orders.label(),
                at: now,
            },
        )
        .await?;
        let data = Self::event_data(&row, ShipmentStatus::Pending, None, None, None, None, Some(&code), now);
        Self::emit(tx, events::SHIPMENT_CREATED, &row.order_id, data, correlation_id).await?;
        if self.settings.auto_assign {
            self.auto_assign(tx, &row, correlation_id).await?;
        }
        self.outbox.wake();
        parse_stored_id(&row.id)
            .map(Some)
            .map_err(|err| anyhow::anyhow!("{err}"))
    }

    /// Gives a pending shipment (as read in `tx`) to the least-loaded active agent serving its
    /// city. Answers the agent's id, or `None` when nobody serves the city (it stays pending).
    async fn auto_assign(
        &self,
        tx: &mut Tx,
        row: &ShipmentRow,
        correlation_id: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let Some(agent) = store::least_loaded_agent(tx, &row.city_key).await? else {
            return Ok(None);
        };
        if !store::touch_active_agent(tx, &agent, self.now()).await? {
            return Ok(None);
        }
        let change = Move {
            to: ShipmentStatus::Assigned,
            agent_id: Some(&agent),
            actor: &Actor::System,
            note: None,
            proof: None,
        };
        Ok(self
            .write_change(tx, row, &change, correlation_id)
            .await?
            .then_some(agent))
    }

    /// The order was cancelled, inside the consumer's transaction: a shipment nobody has picked
    /// up yet is cancelled with it; one on the road (picked up, and not delivered nor heading
    /// back yet) is recalled, so it is never delivered and goes back to the sender; an order
    /// without a shipment yet is recorded as cancelled, so a later `order.paid` creates none.
    pub async fn cancel_for_order(
        &self,
        tx: &mut Tx,
        order_id: &str,
        correlation_id: Option<&str>,
    ) -> anyhow::Result<()> {
        // One order at a time: a concurrent `order.paid` either created its shipment before
        // (and it is found here) or sees the record of the cancellation after.
        store::lock_order(tx, self.db.backend(), order_id).await?;
        let Some(row) = store::lock_shipment_of_order(tx, order_id).await? else {
            store::record_cancelled_order(tx, order_id, self.now()).await?;
            return Ok(());
        };
        let from = stored_status(&row.status)?;
        match domain::next(from, ShipmentStatus::Cancelled) {
            Ok(Step::Move) => {
                let change = Move {
                    to: ShipmentStatus::Cancelled,
                    agent_id: row.agent_id.as_deref(),
                    actor: &Actor::Orders,
                    note: Some("the order was cancelled"),
                    proof: None,
                };
                if !self.write_change(tx, &row, &change, correlation_id).await? {
                    anyhow::bail!("shipment {} changed while it was being cancelled", row.id);
                }
                self.outbox.wake();
            }
            Ok(Step::Stay) => {}
            Err(_) if from.is_recallable() => self.recall(tx, &row, from, correlation_id).await?,
            // Delivered, already heading back or back: nothing left to stop.
            Err(_) => {}
        }
        Ok(())
    }

    /// Marks a shipment on the road recalled (once), with a tracking note for its agent and
    /// `shipment.recalled`, inside `tx`. Its status stays; from now on it cannot be delivered.
    async fn recall(
        &self,
        tx: &mut Tx,
        row: &ShipmentRow,
        status: ShipmentStatus,
        correlation_id: Option<&str>,
    ) -> anyhow::Result<()> {
        if row.recalled_at.is_some() {
            return Ok(());
        }
        let now = self.now();
        if !store::recall(tx, &row.id, row.version, now).await? {
            anyhow::bail!("shipment {} changed while it was being recalled", row.id);
        }
        let note = "order cancelled: return the parcel";
        store::append_tracking(
            tx,
            TrackingEntry {
                shipment_id: &row.id,
                status,
                note: Some(note),
                actor: &Actor::Orders.label(),
                at: now,
            },
        )
        .await?;
        let data = Self::event_data(
            row,
            status,
            Some(status),
            row.agent_id.as_deref(),
            Some(note),
            None,
            None,
            now,
        );
        Self::emit(tx, events::SHIPMENT_RECALLED, &row.order_id, data, correlation_id).await?;
        tracing::warn!(
            shipment_id = %row.id, order_id = %row.order_id, status = status.as_str(),
            "order cancelled after its parcel was picked up; the shipment is recalled"
        );
        self.outbox.wake();
        Ok(())
    }

    /// One pass of the sweeper: gives shipments still pending (nobody served their city when
    /// they came) to an agent now serving it, oldest first among those an active agent serves,
    /// so shipments nobody can serve never crowd them out. Counts the ones nobody can serve into
    /// the gauge `mercato_shipments_unassignable` (with a warning when there are any). Answers
    /// how many it assigned.
    pub async fn assign_pending(&self) -> anyhow::Result<usize> {
        let unassignable = store::unassignable_pending_count(self.db.reader()).await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("mercato_shipments_unassignable").set(unassignable as f64);
        if unassignable > 0 {
            tracing::warn!(
                count = unassignable,
                "pending shipments wait in cities no active delivery agent serves"
            );
        }
        let mut assigned = 0;
        for id in store::assignable_pending_shipments(self.db.reader(), 100).await? {
            let mut tx = self.db.begin().await?;
            let row = store::shipment(&mut *tx, &id).await?;
            let agent = match row {
                Some(row) if row.status == ShipmentStatus::Pending.as_str() => {
                    self.auto_assign(&mut tx, &row, None).await?
                }
                _ => None,
            };
            if agent.is_some() {
                tx.commit().await?;
                assigned += 1;
            } else {
                tx.rollback().await?;
            }
        }
        if assigned > 0 {
            self.outbox.wake();
        }
        Ok(assigned)
    }

    /// Assigns shipments left pending, every `sweep_interval` (when automatic assignment is on).
    pub fn spawn_sweeper(self: &Arc<Self>, cancel: CancellationToken) {
        if !self.settings.auto_assign {
            return;
        }
        let delivery = self.clone();
        platform::periodic::spawn_every(
            "assign pending shipments",
            self.settings.sweep_interval,
            cancel,
            move || {
                let delivery = delivery.clone();
                async move { delivery.assign_pending().await }
            },
        );
    }

    // ----- reading ------------------------------------------------------------------------------

    async fn row(&self, id: Uuid) -> Result<ShipmentRow, ApiError> {
        store::shipment(self.db.reader(), &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("shipment"))
    }

    /// The shipment if the caller may handle it: an admin, or the agent it is assigned to.
    /// Other roles get 403; another agent gets 404 (an agent learns nothing of others' work).
    async fn row_for(&self, id: Uuid, caller: &CurrentUser) -> Result<ShipmentRow, ApiError> {
        caller.require(&[Role::DeliveryAgent, Role::Admin])?;
        let row = self.row(id).await?;
        if caller.is_admin() || row.agent_id.as_deref() == Some(caller.id.to_string().as_str()) {
            Ok(row)
        } else {
            Err(ApiError::not_found("shipment"))
        }
    }

    async fn view_with_history(&self, row: ShipmentRow) -> Result<ShipmentView, ApiError> {
        let history = store::tracking(self.db.reader(), &row.id)
            .await?
            .into_iter()
            .map(|t: TrackingRow| {
                Ok(HistoryEntry {
                    status: stored_status(&t.status)?,
                    note: t.note,
                    actor: t.actor,
                    at: rfc3339(t.at),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let mut view = ShipmentView::from_row(row, self.max_attempts())?;
        view.history = Some(history);
        Ok(view)
    }

    /// One shipment with its history, for its agent or an admin.
    pub async fn shipment_for(&self, id: Uuid, caller: &CurrentUser) -> Result<ShipmentView, ApiError> {
        let row = self.row_for(id, caller).await?;
        self.view_with_history(row).await
    }

    /// Any shipment with its history (admin).
    pub async fn shipment(&self, id: Uuid) -> Result<ShipmentView, ApiError> {
        let row = self.row(id).await?;
        self.view_with_history(row).await
    }

    async fn list(&self, filter: &ShipmentFilter, page: &PageRequest) -> Result<Page<ShipmentView>, ApiError> {
        let rows = store::list_shipments(self.db.reader(), filter, page.after.as_deref(), page.fetch_limit()).await?;
        let max = self.max_attempts();
        let views = rows
            .into_iter()
            .map(|row| ShipmentView::from_row(row, max))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(views, page, |s: &ShipmentView| s.id.to_string()))
    }

    /// The caller's shipments, newest first (delivery agents only).
    pub async fn assignments(
        &self,
        caller: &CurrentUser,
        filter: AssignmentFilter,
        page: &PageRequest,
    ) -> Result<Page<ShipmentView>, ApiError> {
        caller.require(&[Role::DeliveryAgent])?;
        let statuses = match (filter.status, filter.active_only) {
            (Some(status), _) => vec![status],
            (None, true) => ShipmentStatus::ACTIVE.to_vec(),
            (None, false) => Vec::new(),
        };
        let filter = ShipmentFilter {
            statuses,
            agent_id: Some(caller.id.to_string()),
            ..ShipmentFilter::default()
        };
        self.list(&filter, page).await
    }

    /// Shipments, newest first, filtered (admin).
    pub async fn admin_list(&self, filter: &AdminFilter, page: &PageRequest) -> Result<Page<ShipmentView>, ApiError> {
        let city_key = match filter.city.as_deref() {
            Some(raw) => Some(domain::city_key(raw).ok_or_else(|| ApiError::validation("city", "must not be empty"))?),
            None => None,
        };
        let filter = ShipmentFilter {
            statuses: filter.status.into_iter().collect(),
            agent_id: filter.agent_id.map(|id| id.to_string()),
            city_key,
            order_id: filter.order_id.map(|id| id.to_string()),
            user_id: None,
        };
        self.list(&filter, page).await
    }

    /// Where the order's parcel is: for the order's customer or an admin (404 for anyone else,
    /// and while the order has no shipment).
    pub async fn tracking(&self, order_id: Uuid, caller: &CurrentUser) -> Result<TrackingView, ApiError> {
        let row = store::shipment_of_order(self.db.reader(), &order_id.to_string())
            .await?
            .filter(|row| caller.is_admin() || row.user_id == caller.id.to_string())
            .ok_or_else(|| ApiError::not_found("shipment"))?;
        let steps = store::tracking(self.db.reader(), &row.id)
            .await?
            .into_iter()
            .map(|t| {
                Ok(TrackingStep {
                    status: stored_status(&t.status)?,
                    at: rfc3339(t.at),
                    note: t.note,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(TrackingView {
            order_id: parse_stored_id(&row.order_id)?,
            shipment_id: parse_stored_id(&row.id)?,
            status: stored_status(&row.status)?,
            cod: row.is_cod(),
            order_number: row.order_number,
            agent_name: row.agent_name,
            created_at: rfc3339(row.created_at),
            delivered_at: row.delivered_at.map(rfc3339),
            steps,
        })
    }

    // ----- status changes -----------------------------------------------------------------------

    /// The assigned agent (or an admin) reports a status: the state machine decides whether the
    /// shipment may go there (409 naming both statuses if not; the same status again changes
    /// nothing). A recalled shipment (its order was cancelled after pickup) is never delivered:
    /// `delivered`, `out_for_delivery` and `rescheduled` are a 409 saying so, and it may go
    /// `returned_to_sender` from anywhere on the road. Delivering needs the customer's code for
    /// cash on delivery; a wrong code is a 422 and counts, and after `code_max_attempts` wrong
    /// codes the code is locked until an admin issues a new one. The change is a compare-and-set
    /// with its tracking row and event.
    pub async fn update_status(
        &self,
        id: Uuid,
        caller: &CurrentUser,
        update: &StatusUpdate,
        correlation_id: Option<&str>,
    ) -> Result<ShipmentView, ApiError> {
        caller.require(&[Role::DeliveryAgent, Role::Admin])?;
        let to = ShipmentStatus::parse(update.status.trim())
            .ok_or_else(|| ApiError::validation("status", "is not a shipment status"))?;
        if !to.is_set_by_hand() {
            return Err(ApiError::validation(
                "status",
                "is set by assignment, by the order's cancellation or by an admin receiving the parcel back, \
                 not by hand",
            ));
        }
        let note =
            domain::parse_note(update.note.as_deref()).map_err(|message| ApiError::validation("note", message))?;
        let code = match update.code.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(code) if domain::is_code(code) => Some(code),
            Some(_) => {
                return Err(ApiError::validation(
                    "code",
                    "must be the six digits the customer received",
                ))
            }
        };
        let actor = Actor::of(caller);
        loop {
            let row = self.row_for(id, caller).await?;
            let from = stored_status(&row.status)?;
            let step = if row.recalled_at.is_some() {
                domain::next_recalled(from, to)?
            } else {
                domain::next(from, to)?
            };
            if step == Step::Stay {
                return self.view_with_history(row).await;
            }
            let mut tx = self.db.begin().await?;
            // Any error from here on drops `tx`, and a try the code took goes with it.
            let proof = if to == ShipmentStatus::Delivered {
                match self.check_code(&mut tx, &row, code).await? {
                    Ok(proof) => Some(proof),
                    Err(refused) => {
                        // A wrong code's try counts: it is all `tx` holds.
                        tx.commit().await?;
                        return Err(refused);
                    }
                }
            } else {
                None
            };
            let change = Move {
                to,
                agent_id: row.agent_id.as_deref(),
                actor: &actor,
                note: note.as_deref(),
                proof,
            };
            if !self.write_change(&mut tx, &row, &change, correlation_id).await? {
                tx.rollback().await?;
                continue;
            }
            tx.commit().await?;
            self.outbox.wake();
            return self.view_with_history(self.row(id).await?).await;
        }
    }

    /// How a delivery is proven: by the customer's code (required for cash on delivery), or by
    /// nothing for a prepaid order delivered without one. The outer error is a failure (the
    /// caller drops `tx`); the inner one a refusal, whose counted try the caller commits.
    ///
    /// A try is taken inside `tx` before the code is compared, holding the shipment's row, so
    /// parallel guesses never get more than `code_max_attempts` tries. A right code's try is given
    /// back in the same `tx`, which then writes the delivery: whatever fails after the try was
    /// taken rolls it back, so a right code never costs one.
    async fn check_code(
        &self,
        tx: &mut Tx,
        row: &ShipmentRow,
        code: Option<&str>,
    ) -> Result<Result<Proof, ApiError>, ApiError> {
        let Some(code) = code else {
            return Ok(if row.is_cod() {
                Err(ApiError::Unprocessable(
                    "a cash-on-delivery shipment is delivered only with the customer's delivery code".to_owned(),
                ))
            } else {
                Ok(Proof::None)
            });
        };
        let max = self.max_attempts();
        let Some((attempts, code_hash)) = store::take_code_attempt(tx, &row.id, max).await? else {
            return Ok(Err(ApiError::Unprocessable(
                "too many wrong delivery codes: the code is locked until an admin issues a new one".to_owned(),
            )));
        };
        if domain::verify_code(&row.id, code, &code_hash) {
            store::return_code_attempt(tx, &row.id).await?;
            return Ok(Ok(Proof::Code));
        }
        Ok(Err(match max - attempts {
            0 => ApiError::Unprocessable(
                "the delivery code is wrong; it is now locked until an admin issues a new one".to_owned(),
            ),
            left => ApiError::Unprocessable(format!("the delivery code is wrong ({left} tries left)")),
        }))
    }

    /// An admin received a parcel back at the warehouse: a shipment `returned_to_sender` becomes
    /// `returned` (final; `shipment.returned` tells orders to cancel, refund and restock). 409
    /// from any other status; the same again changes nothing.
    pub async fn receive_return(
        &self,
        id: Uuid,
        admin: Uuid,
        note: Option<&str>,
        correlation_id: Option<&str>,
    ) -> Result<ShipmentView, ApiError> {
        let note = domain::parse_note(note).map_err(|message| ApiError::validation("note", message))?;
        let actor = Actor::Admin(admin);
        loop {
            let row = self.row(id).await?;
            let from = stored_status(&row.status)?;
            if domain::next(from, ShipmentStatus::Returned)? == Step::Stay {
                return self.view_with_history(row).await;
            }
            let change = Move {
                to: ShipmentStatus::Returned,
                agent_id: row.agent_id.as_deref(),
                actor: &actor,
                note: note.as_deref(),
                proof: None,
            };
            let mut tx = self.db.begin().await?;
            if !self.write_change(&mut tx, &row, &change, correlation_id).await? {
                tx.rollback().await?;
                continue;
            }
            tx.commit().await?;
            self.outbox.wake();
            return self.view_with_history(self.row(id).await?).await;
        }
    }

    /// Whether the directory still knows `agent` as an active delivery agent, before an admin
    /// gives them a shipment. When it does not, the agent is made inactive (no automatic
    /// assignment either) and the answer is a 422.
    async fn recheck_agent(&self, agent: Uuid) -> Result<(), ApiError> {
        let user = self.agents.user(agent).await?;
        let problem = match &user {
            None => "is not a user",
            Some(user) if user.role != Role::DeliveryAgent.as_str() => "is no longer a delivery agent",
            Some(user) if !user.active => "belongs to a disabled account",
            Some(_) => return Ok(()),
        };
        if store::deactivate_agent(self.db.writer(), &agent.to_string(), self.now()).await? {
            tracing::warn!(
                agent_id = %agent, problem,
                "delivery agent made inactive: the directory no longer knows them as an active delivery agent"
            );
        }
        Err(ApiError::validation(
            "agent_id",
            format!("{problem}: not an active delivery agent"),
        ))
    }

    /// An admin gives the shipment to `agent` (any active agent, whether or not they serve the
    /// city), or with `None` to the least-loaded active agent serving its city (409 when none
    /// does). A pending shipment becomes `assigned`; reassigning keeps the status and changes
    /// the agent (see [`domain::status_after_assignment`]); the same agent again changes nothing.
    /// An agent named explicitly is checked with the directory first: one whose account is gone,
    /// disabled or no longer a delivery agent is a 422, and is made inactive.
    pub async fn assign(
        &self,
        id: Uuid,
        admin: Uuid,
        agent: Option<Uuid>,
        correlation_id: Option<&str>,
    ) -> Result<ShipmentView, ApiError> {
        let actor = Actor::Admin(admin);
        if let Some(agent) = agent {
            self.recheck_agent(agent).await?;
        }
        loop {
            let row = self.row(id).await?;
            let to = domain::status_after_assignment(stored_status(&row.status)?)?;
            let mut tx = self.db.begin().await?;
            let chosen = match agent {
                Some(agent) => agent.to_string(),
                None => match store::least_loaded_agent(&mut tx, &row.city_key).await? {
                    Some(agent) => agent,
                    None => {
                        tx.rollback().await?;
                        return Err(ApiError::Conflict(format!(
                            "no active delivery agent serves {}",
                            row.city
                        )));
                    }
                },
            };
            if row.agent_id.as_deref() == Some(chosen.as_str()) {
                tx.rollback().await?;
                return self.view_with_history(row).await;
            }
            if !store::touch_active_agent(&mut tx, &chosen, self.now()).await? {
                tx.rollback().await?;
                return Err(ApiError::validation("agent_id", "is not an active delivery agent"));
            }
            let note = (to != ShipmentStatus::Assigned || row.agent_id.is_some()).then_some("handed to another agent");
            let change = Move {
                to,
                agent_id: Some(&chosen),
                actor: &actor,
                note,
                proof: None,
            };
            if !self.write_change(&mut tx, &row, &change, correlation_id).await? {
                tx.rollback().await?;
                continue;
            }
            tx.commit().await?;
            self.outbox.wake();
            return self.view_with_history(self.row(id).await?).await;
        }
    }

    /// An admin issues a new delivery code (the customer lost theirs, or it is locked): the old
    /// one stops working, the tries start over, and `shipment.code_issued` carries the code to
    /// the customer. 409 once no delivery lies ahead (closed, on its way back, or recalled).
    pub async fn issue_code(&self, id: Uuid, correlation_id: Option<&str>) -> Result<IssuedCode, ApiError> {
        let row = self.row(id).await?;
        let code = domain::generate_code();
        let now = self.now();
        let mut tx = self.db.begin().await?;
        if !store::replace_code(&mut tx, &row.id, &domain::hash_code(&row.id, &code), now).await? {
            tx.rollback().await?;
            return Err(ApiError::Conflict(
                "the shipment is closed, on its way back or recalled; it needs no code".to_owned(),
            ));
        }
        let current = store::shipment(&mut *tx, &row.id)
            .await?
            .ok_or_else(|| ApiError::not_found("shipment"))?;
        let status = stored_status(&current.status)?;
        let data = Self::event_data(
            &current,
            status,
            Some(status),
            current.agent_id.as_deref(),
            None,
            None,
            Some(&code),
            now,
        );
        Self::emit(
            &mut tx,
            events::SHIPMENT_CODE_ISSUED,
            &current.order_id,
            data,
            correlation_id,
        )
        .await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(IssuedCode {
            shipment_id: id,
            code,
            issued_at: rfc3339(now),
        })
    }

    // ----- agents -------------------------------------------------------------------------------

    async fn agent_views(&self, rows: Vec<AgentRow>) -> Result<Vec<AgentView>, ApiError> {
        let ids: Vec<String> = rows.iter().map(|r| r.user_id.clone()).collect();
        let mut cities: HashMap<String, Vec<String>> = HashMap::new();
        for (agent, city) in store::areas_of(self.db.reader(), &ids).await? {
            cities.entry(agent).or_default().push(city);
        }
        rows.into_iter()
            .map(|row| {
                let own = cities.remove(&row.user_id).unwrap_or_default();
                AgentView::from_row(row, own)
            })
            .collect()
    }

    /// Agents by user id, with their cities and current load (admin).
    pub async fn agents(&self, page: &PageRequest) -> Result<Page<AgentView>, ApiError> {
        let rows = store::list_agents(self.db.reader(), page.after.as_deref(), page.fetch_limit()).await?;
        let page = Page::from_rows(rows, page, |row| row.user_id.clone());
        Ok(Page {
            items: self.agent_views(page.items).await?,
            next_cursor: page.next_cursor,
        })
    }

    /// One agent (admin).
    pub async fn agent(&self, user_id: Uuid) -> Result<AgentView, ApiError> {
        let row = store::agent(self.db.reader(), &user_id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("delivery agent"))?;
        self.agent_views(vec![row])
            .await?
            .pop()
            .ok_or_else(|| ApiError::not_found("delivery agent"))
    }

    /// Registers a user as a delivery agent, or changes an agent's service area and activity
    /// (admin). The user must exist with the `delivery_agent` role (422 otherwise); their name is
    /// taken from the directory each time. Answers the agent and whether it was created. An
    /// agent made inactive keeps their shipments (an admin reassigns them) but gets no new ones.
    pub async fn put_agent(
        &self,
        user_id: Uuid,
        input: &AgentInput,
        expected_version: Option<i64>,
    ) -> Result<(AgentView, bool), ApiError> {
        let cities = parse_cities(&input.cities)?;
        let user = self
            .agents
            .user(user_id)
            .await?
            .ok_or_else(|| ApiError::validation("user_id", "is not a user"))?;
        if user.role != Role::DeliveryAgent.as_str() {
            return Err(ApiError::validation(
                "user_id",
                "is not a delivery agent (the user needs the delivery_agent role)",
            ));
        }
        if input.active && !user.active {
            return Err(ApiError::validation("active", "the user's account is disabled"));
        }
        let id = user_id.to_string();
        let mut tx = self.db.begin().await?;
        let Some(created) = store::upsert_agent(
            &mut tx,
            &id,
            &user.full_name,
            input.active,
            expected_version,
            self.now(),
        )
        .await?
        else {
            tx.rollback().await?;
            return Err(ApiError::Conflict(
                "the agent changed since you read it (or does not exist yet)".to_owned(),
            ));
        };
        store::replace_areas(&mut tx, &id, &cities).await?;
        tx.commit().await?;
        Ok((self.agent(user_id).await?, created))
    }
}

/// A service area as given: 1–50 cities of 1–100 characters, each kept once by its key (the
/// first spelling wins). Answers `(key, city)` pairs.
fn parse_cities(raw: &[String]) -> Result<Vec<(String, String)>, ApiError> {
    if raw.is_empty() || raw.len() > domain::MAX_CITIES {
        return Err(ApiError::validation("cities", "must list 1–50 cities"));
    }
    let mut errors = Vec::new();
    let mut cities: Vec<(String, String)> = Vec::new();
    for (i, city) in raw.iter().enumerate() {
        match domain::parse_city(city).and_then(|city| domain::city_key(&city).map(|key| (key, city))) {
            Some((key, city)) => {
                if !cities.iter().any(|(k, _)| *k == key) {
                    cities.push((key, city));
                }
            }
            None => errors.push(FieldError::new(format!("cities/{i}"), "must be 1–100 characters")),
        }
    }
    if errors.is_empty() {
        Ok(cities)
    } else {
        Err(ApiError::Validation(errors))
    }
}
