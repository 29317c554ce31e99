//! The delivery service's persistence: agents with their service areas, shipments (one per
//! order, with the address snapshot and the delivery code's hash) and their tracking rows, and
//! the orders cancelled before they had a shipment. Every status or agent change is a
//! compare-and-set on the shipment's status and version.

use platform::store::{Backend, Conditions, Migration, SqlValue, Tx};
use sqlx::{AnyPool, FromRow};

use crate::domain::ShipmentStatus;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "agents, service areas, shipments, tracking, cancelled orders",
    sql: "CREATE TABLE agents (
            user_id TEXT PRIMARY KEY,
            full_name TEXT NOT NULL,
            disabled_at BIGINT,
            last_assigned_at BIGINT,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL);
          CREATE TABLE agent_areas (
            agent_id TEXT NOT NULL REFERENCES agents (user_id) ON DELETE CASCADE,
            city_key TEXT NOT NULL,
            city TEXT NOT NULL,
            PRIMARY KEY (agent_id, city_key));
          CREATE INDEX agent_areas_city ON agent_areas (city_key, agent_id);
          CREATE TABLE shipments (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL UNIQUE,
            order_number TEXT NOT NULL,
            user_id TEXT NOT NULL,
            status TEXT NOT NULL,
            agent_id TEXT REFERENCES agents (user_id),
            address TEXT NOT NULL,
            city TEXT NOT NULL,
            city_key TEXT NOT NULL,
            payment_method TEXT NOT NULL,
            code_hash TEXT NOT NULL,
            code_attempts BIGINT NOT NULL DEFAULT 0,
            proof TEXT,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            assigned_at BIGINT,
            delivered_at BIGINT,
            recalled_at BIGINT);
          CREATE INDEX shipments_agent ON shipments (agent_id, status, id);
          CREATE INDEX shipments_status ON shipments (status, id);
          CREATE INDEX shipments_city ON shipments (city_key, id);
          CREATE INDEX shipments_user ON shipments (user_id);
          CREATE TABLE shipment_events (
            seq SERIAL_KEY,
            shipment_id TEXT NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
            status TEXT NOT NULL,
            note TEXT,
            actor TEXT NOT NULL,
            at BIGINT NOT NULL);
          CREATE INDEX shipment_events_shipment ON shipment_events (shipment_id, seq);
          CREATE TABLE cancelled_orders (
            order_id TEXT PRIMARY KEY,
            at BIGINT NOT NULL)",
    postgres: None,
}];

// ----- shipments -----------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct ShipmentRow {
    pub id: String,
    pub order_id: String,
    pub order_number: String,
    pub user_id: String,
    pub status: String,
    pub agent_id: Option<String>,
    /// The order's shipping address as JSON, as it was when the shipment was created.
    pub address: String,
    pub city: String,
    pub city_key: String,
    /// The order's payment method; `cod` is cash on delivery.
    pub payment_method: String,
    pub code_hash: String,
    /// Codes tried and found wrong since the code was issued.
    pub code_attempts: i64,
    pub proof: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub assigned_at: Option<i64>,
    pub delivered_at: Option<i64>,
    /// Set (once) when the order was cancelled after the parcel was picked up: the parcel goes
    /// back to the sender and is never delivered.
    pub recalled_at: Option<i64>,
    /// The assigned agent's name (joined from `agents`; not a column of `shipments`).
    pub agent_name: Option<String>,
}

impl ShipmentRow {
    pub fn is_cod(&self) -> bool {
        self.payment_method == "cod"
    }
}

const SHIPMENT_COLUMNS: &str = "id, order_id, order_number, user_id, status, agent_id, address, city, city_key, \
     payment_method, code_hash, code_attempts, proof, version, created_at, updated_at, assigned_at, delivered_at, \
     recalled_at";

/// The shipment columns plus the agent's name, for a `FROM shipments s LEFT JOIN agents a`.
const SELECT_SHIPMENT: &str = "SELECT s.id, s.order_id, s.order_number, s.user_id, s.status, s.agent_id, s.address, \
     s.city, s.city_key, s.payment_method, s.code_hash, s.code_attempts, s.proof, s.version, s.created_at, \
     s.updated_at, s.assigned_at, s.delivered_at, s.recalled_at, a.full_name AS agent_name \
     FROM shipments s LEFT JOIN agents a ON a.user_id = s.agent_id";

/// Inserts the shipment unless its order already has one. Answers whether it was inserted.
pub async fn insert_shipment(tx: &mut Tx, s: &ShipmentRow) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO shipments ({SHIPMENT_COLUMNS}) VALUES ({})
         ON CONFLICT (order_id) DO NOTHING",
        platform::store::placeholders(1, 19)
    );
    let inserted = sqlx::query(&sql)
        .bind(&s.id)
        .bind(&s.order_id)
        .bind(&s.order_number)
        .bind(&s.user_id)
        .bind(&s.status)
        .bind(&s.agent_id)
        .bind(&s.address)
        .bind(&s.city)
        .bind(&s.city_key)
        .bind(&s.payment_method)
        .bind(&s.code_hash)
        .bind(s.code_attempts)
        .bind(&s.proof)
        .bind(s.version)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.assigned_at)
        .bind(s.delivered_at)
        .bind(s.recalled_at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

pub async fn shipment<'e, E>(executor: E, id: &str) -> Result<Option<ShipmentRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("{SELECT_SHIPMENT} WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

pub async fn shipment_of_order<'e, E>(executor: E, order_id: &str) -> Result<Option<ShipmentRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("{SELECT_SHIPMENT} WHERE s.order_id = $1"))
        .bind(order_id)
        .fetch_optional(executor)
        .await
}

/// Reads the order's shipment and holds its row until the transaction ends (a no-op update:
/// the portable spelling of `SELECT … FOR UPDATE`), so a decision taken on it cannot race.
pub async fn lock_shipment_of_order(tx: &mut Tx, order_id: &str) -> Result<Option<ShipmentRow>, sqlx::Error> {
    let locked: Option<String> =
        sqlx::query_scalar("UPDATE shipments SET version = version WHERE order_id = $1 RETURNING id")
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await?;
    match locked {
        Some(id) => shipment(&mut **tx, &id).await,
        None => Ok(None),
    }
}

/// One change of a shipment, applied only if it is still at `from` and `version`.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub id: &'a str,
    pub from: ShipmentStatus,
    pub version: i64,
    pub to: ShipmentStatus,
    /// The agent after the change (unchanged when it is the current one).
    pub agent_id: Option<&'a str>,
    /// Set on delivery.
    pub proof: Option<&'a str>,
    pub now: i64,
}

/// The compare-and-set every change goes through: answers whether the shipment was still at
/// `from`/`version` and so changed. Stamps `assigned_at` when the agent changes and
/// `delivered_at` on delivery.
pub async fn apply_change(tx: &mut Tx, c: Change<'_>) -> Result<bool, sqlx::Error> {
    let delivered = c.to == ShipmentStatus::Delivered;
    let sql = format!(
        "UPDATE shipments SET status = $4, agent_id = $5, version = version + 1, updated_at = $6,
           assigned_at = CASE WHEN $5 IS NOT NULL AND (agent_id IS NULL OR agent_id <> $5) THEN $6 ELSE assigned_at END{}
         WHERE id = $1 AND status = $2 AND version = $3",
        if delivered {
            ", delivered_at = $6, proof = $7"
        } else {
            ""
        }
    );
    let mut query = sqlx::query(&sql)
        .bind(c.id)
        .bind(c.from.as_str())
        .bind(c.version)
        .bind(c.to.as_str())
        .bind(c.agent_id)
        .bind(c.now);
    if delivered {
        query = query.bind(c.proof);
    }
    Ok(query.execute(&mut **tx).await?.rows_affected() == 1)
}

/// Counts one code try against the shipment inside `tx`, if it has tries left
/// (`attempts < max`). Answers the tries counted now and the code's hash to check against, or
/// `None` when none are left. Taken before the code is checked, and the update holds the
/// shipment's row until `tx` ends, so parallel guesses can never try more codes than `max`. The
/// try counts only once `tx` commits: a try whose request fails is rolled back with it.
pub async fn take_code_attempt(tx: &mut Tx, id: &str, max: i64) -> Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE shipments SET code_attempts = code_attempts + 1 WHERE id = $1 AND code_attempts < $2
         RETURNING code_attempts, code_hash",
    )
    .bind(id)
    .bind(max)
    .fetch_optional(&mut **tx)
    .await
}

/// Gives back, inside `tx`, the try a right code took (only wrong codes count).
pub async fn return_code_attempt(tx: &mut Tx, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE shipments SET code_attempts = code_attempts - 1 WHERE id = $1 AND code_attempts > 0")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `IN (…)` of statuses, as SQL literals.
fn statuses_sql(statuses: impl IntoIterator<Item = ShipmentStatus>) -> String {
    statuses
        .into_iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Replaces the code's hash and clears the tries, while a delivery may still lie ahead (not
/// closed, not heading back, not recalled). Answers whether it did.
pub async fn replace_code(tx: &mut Tx, id: &str, code_hash: &str, now: i64) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE shipments SET code_hash = $2, code_attempts = 0, version = version + 1, updated_at = $3
         WHERE id = $1 AND recalled_at IS NULL AND status IN ({})",
        statuses_sql(ShipmentStatus::ALL.into_iter().filter(|s| s.may_be_delivered()))
    );
    Ok(sqlx::query(&sql)
        .bind(id)
        .bind(code_hash)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        == 1)
}

/// Marks the shipment recalled (its order was cancelled after pickup), once: answers whether it
/// was marked now (false when it already was, or changed since `version`). Bumps the version, so
/// a status change racing with the recall fails its compare-and-set and sees the recall.
pub async fn recall(tx: &mut Tx, id: &str, version: i64, now: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE shipments SET recalled_at = $3, version = version + 1, updated_at = $3
         WHERE id = $1 AND version = $2 AND recalled_at IS NULL",
    )
    .bind(id)
    .bind(version)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// Where an active agent serves the shipment's city (`s` is the shipment).
const SERVED: &str = "EXISTS (SELECT 1 FROM agent_areas r JOIN agents a ON a.user_id = r.agent_id
                       WHERE r.city_key = s.city_key AND a.disabled_at IS NULL)";

/// Shipments still waiting for an agent whose city at least one active agent serves, oldest
/// first. Those nobody can serve are left out, so they never crowd out the ones that can be.
pub async fn assignable_pending_shipments(pool: &AnyPool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT s.id FROM shipments s WHERE s.status = 'pending' AND {SERVED} ORDER BY s.id LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many shipments wait for an agent in a city no active agent serves.
pub async fn unassignable_pending_count(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM shipments s WHERE s.status = 'pending' AND NOT {SERVED}"
    ))
    .fetch_one(pool)
    .await
}

// ----- orders cancelled before their shipment --------------------------------------------------

/// Serializes the transactions deciding about one order's shipment (its creation and its
/// cancellation) until `tx` ends. PostgreSQL takes a transaction-scoped advisory lock on the
/// order id; SQLite needs nothing (its one writer connection runs transactions one at a time).
pub async fn lock_order(tx: &mut Tx, backend: Backend, order_id: &str) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        // The two-key form keeps delivery's keys apart from single-key advisory locks.
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(72707370, hashtext($1))) AS locked")
            .bind(order_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Records that the order was cancelled before it had a shipment (once; a repeat changes nothing).
pub async fn record_cancelled_order(tx: &mut Tx, order_id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO cancelled_orders (order_id, at) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING")
        .bind(order_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether the order was cancelled before it had a shipment.
pub async fn is_cancelled_order(tx: &mut Tx, order_id: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT 1 FROM cancelled_orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

/// Which shipments a list shows.
#[derive(Debug, Clone, Default)]
pub struct ShipmentFilter {
    pub statuses: Vec<ShipmentStatus>,
    pub agent_id: Option<String>,
    pub city_key: Option<String>,
    pub order_id: Option<String>,
    pub user_id: Option<String>,
}

/// Newest first, after the cursor `after` (a shipment id), up to `limit` rows.
pub async fn list_shipments(
    pool: &AnyPool,
    filter: &ShipmentFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ShipmentRow>, sqlx::Error> {
    let mut c = Conditions::default();
    if let Some(v) = &filter.agent_id {
        c.push("s.agent_id = ?", SqlValue::Text(v.clone()));
    }
    if let Some(v) = &filter.city_key {
        c.push("s.city_key = ?", SqlValue::Text(v.clone()));
    }
    if let Some(v) = &filter.order_id {
        c.push("s.order_id = ?", SqlValue::Text(v.clone()));
    }
    if let Some(v) = &filter.user_id {
        c.push("s.user_id = ?", SqlValue::Text(v.clone()));
    }
    if let Some(v) = after {
        c.push("s.id < ?", SqlValue::Text(v.to_owned()));
    }
    c.push_in(
        "s.status",
        filter.statuses.iter().map(|s| SqlValue::Text(s.as_str().to_owned())),
    );
    let limit = c.bind(SqlValue::Int(limit));
    let sql = format!("{SELECT_SHIPMENT} {} ORDER BY s.id DESC LIMIT {limit}", c.where_sql());
    sqlx::query_as_with(&sql, c.into_arguments()).fetch_all(pool).await
}

// ----- tracking ------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct TrackingRow {
    pub seq: i64,
    pub shipment_id: String,
    pub status: String,
    pub note: Option<String>,
    /// `agent:<id>`, `admin:<id>`, `orders` (an order event) or `system` (automatic assignment).
    pub actor: String,
    pub at: i64,
}

/// One tracking row to write.
#[derive(Debug, Clone, Copy)]
pub struct TrackingEntry<'a> {
    pub shipment_id: &'a str,
    pub status: ShipmentStatus,
    pub note: Option<&'a str>,
    pub actor: &'a str,
    pub at: i64,
}

pub async fn append_tracking(tx: &mut Tx, e: TrackingEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO shipment_events (shipment_id, status, note, actor, at) VALUES ($1, $2, $3, $4, $5)")
        .bind(e.shipment_id)
        .bind(e.status.as_str())
        .bind(e.note)
        .bind(e.actor)
        .bind(e.at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A shipment's tracking rows, oldest first.
pub async fn tracking(pool: &AnyPool, shipment_id: &str) -> Result<Vec<TrackingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, shipment_id, status, note, actor, at FROM shipment_events WHERE shipment_id = $1 ORDER BY seq",
    )
    .bind(shipment_id)
    .fetch_all(pool)
    .await
}

// ----- agents --------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct AgentRow {
    pub user_id: String,
    pub full_name: String,
    /// Set while the agent takes no new assignments.
    pub disabled_at: Option<i64>,
    pub last_assigned_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Shipments the agent holds now (statuses in [`ShipmentStatus::ACTIVE`]); computed.
    pub load: i64,
}

/// `IN (…)` of the statuses that count towards an agent's load, as SQL literals.
fn active_statuses_sql() -> String {
    statuses_sql(ShipmentStatus::ACTIVE)
}

fn select_agent() -> String {
    format!(
        "SELECT a.user_id, a.full_name, a.disabled_at, a.last_assigned_at, a.version, a.created_at, a.updated_at,
           (SELECT COUNT(*) FROM shipments s WHERE s.agent_id = a.user_id AND s.status IN ({})) AS load
         FROM agents a",
        active_statuses_sql()
    )
}

pub async fn agent<'e, E>(executor: E, user_id: &str) -> Result<Option<AgentRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("{} WHERE a.user_id = $1", select_agent()))
        .bind(user_id)
        .fetch_optional(executor)
        .await
}

/// Agents by user id, after the cursor `after`, up to `limit` rows.
pub async fn list_agents(pool: &AnyPool, after: Option<&str>, limit: i64) -> Result<Vec<AgentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{} WHERE ($1 IS NULL OR a.user_id > $1) ORDER BY a.user_id LIMIT $2",
        select_agent()
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The cities each of these agents serves, as `(agent_id, city)` in city-key order.
pub async fn areas_of(pool: &AnyPool, agent_ids: &[String]) -> Result<Vec<(String, String)>, sqlx::Error> {
    if agent_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT agent_id, city FROM agent_areas WHERE agent_id IN ({}) ORDER BY agent_id, city_key",
        platform::store::placeholders(1, agent_ids.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in agent_ids {
        query = query.bind(id);
    }
    query.fetch_all(pool).await
}

/// Creates the agent, or updates its name and activity if `expected_version` (when given)
/// matches. Answers `None` on a stale version, else whether the agent was created.
pub async fn upsert_agent(
    tx: &mut Tx,
    user_id: &str,
    full_name: &str,
    active: bool,
    expected_version: Option<i64>,
    now: i64,
) -> Result<Option<bool>, sqlx::Error> {
    let disabled_at = (!active).then_some(now);
    let created = sqlx::query(
        "INSERT INTO agents (user_id, full_name, disabled_at, last_assigned_at, version, created_at, updated_at)
         VALUES ($1, $2, $3, NULL, 1, $4, $4) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(full_name)
    .bind(disabled_at)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if created {
        return Ok(match expected_version {
            // A version names an agent the caller read; this one did not exist.
            Some(_) => None,
            None => Some(true),
        });
    }
    // An agent already disabled keeps the instant it was disabled at.
    let updated = sqlx::query(
        "UPDATE agents SET full_name = $2,
           disabled_at = CASE WHEN $3 = 1 THEN NULL ELSE COALESCE(disabled_at, $4) END,
           version = version + 1, updated_at = $4
         WHERE user_id = $1 AND ($5 IS NULL OR version = $5)",
    )
    .bind(user_id)
    .bind(full_name)
    .bind(i64::from(active))
    .bind(now)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    Ok(updated.then_some(false))
}

/// Replaces the agent's service area with `cities` (`(key, name)` pairs, keys distinct).
pub async fn replace_areas(tx: &mut Tx, agent_id: &str, cities: &[(String, String)]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM agent_areas WHERE agent_id = $1")
        .bind(agent_id)
        .execute(&mut **tx)
        .await?;
    if cities.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO agent_areas (agent_id, city_key, city) VALUES {}",
        platform::store::value_rows(cities.len(), 3)
    );
    let mut query = sqlx::query(&sql);
    for (key, city) in cities {
        query = query.bind(agent_id).bind(key).bind(city);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// The agent an automatic assignment picks for a shipment to `city_key`: among the active
/// agents serving the city, the least loaded; on a tie the one whose last assignment is oldest
/// (never assigned counts as oldest), then the lowest user id. Deterministic.
pub async fn least_loaded_agent(tx: &mut Tx, city_key: &str) -> Result<Option<String>, sqlx::Error> {
    let sql = format!(
        "SELECT a.user_id FROM agents a JOIN agent_areas r ON r.agent_id = a.user_id
         WHERE r.city_key = $1 AND a.disabled_at IS NULL
         ORDER BY (SELECT COUNT(*) FROM shipments s WHERE s.agent_id = a.user_id AND s.status IN ({})),
                  COALESCE(a.last_assigned_at, 0), a.user_id
         LIMIT 1",
        active_statuses_sql()
    );
    sqlx::query_scalar(&sql).bind(city_key).fetch_optional(&mut **tx).await
}

/// Takes an agent out of automatic and explicit assignment (the directory no longer knows them
/// as an active delivery agent). Answers whether it was active until now.
pub async fn deactivate_agent(pool: &AnyPool, user_id: &str, now: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE agents SET disabled_at = $2, version = version + 1, updated_at = $2
         WHERE user_id = $1 AND disabled_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Records that the agent was just given a shipment, if the agent exists and is active. Answers
/// whether it is. The update also holds the agent's row until the transaction ends, so a
/// concurrent deactivation waits for (or precedes) this assignment.
pub async fn touch_active_agent(tx: &mut Tx, agent_id: &str, now: i64) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE agents SET last_assigned_at = $2 WHERE user_id = $1 AND disabled_at IS NULL")
            .bind(agent_id)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1,
    )
}
