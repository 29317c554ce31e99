//! The delivery service against a real database: every test runs on SQLite and, when
//! `MERCATO_TEST_POSTGRES_URL` is set, on PostgreSQL. `http` drives the router with real
//! access tokens.

mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use delivery::domain::{self, ShipmentStatus};
use delivery::events::{self as shipment_events, OrderShipments};
use delivery::service::{AgentInput, StatusUpdate};
use delivery::store::{self, Change};
use delivery::{AgentDirectory, Delivery, DirectoryUser, Settings};
use futures::future::join_all;
use platform::auth::{CurrentUser, Role};
use platform::clock::{OffsetClock, SharedClock};
use platform::consumer::IdempotentConsumer;
use platform::error::ApiError;
use platform::events::Event;
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::store::Db;
use platform::testing::tempfile_guard::TempDir;
use serde_json::{json, Value};
use uuid::Uuid;

macro_rules! suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            suite!(@tests $open;
                an_order_paid_twice_gets_one_shipment_and_one_code,
                the_least_loaded_active_agent_serving_the_city_gets_the_shipment,
                a_shipment_no_agent_serves_stays_pending_until_the_sweeper_finds_one,
                concurrent_status_updates_of_one_shipment_let_exactly_one_win,
                a_cancelled_order_cancels_its_shipment_until_the_parcel_is_picked_up,
                an_order_event_without_an_address_is_refused_and_changes_nothing,
                registering_an_agent_needs_a_delivery_agent_and_a_valid_area,
                reassigning_keeps_the_status_and_a_parcel_on_the_road_stays_with_its_agent,
                wrong_codes_lock_the_code_until_an_admin_issues_a_new_one,
                an_order_cancelled_before_it_is_paid_gets_no_shipment,
                an_order_cancelled_after_pickup_recalls_its_shipment_which_is_never_delivered,
                a_recall_and_a_delivery_racing_never_both_happen,
                a_returned_parcel_holds_its_agent_until_an_admin_receives_it,
                the_sweeper_assigns_servable_shipments_past_unservable_ones,
                a_right_code_costs_no_try_when_the_delivery_fails_to_be_written,
                an_explicit_assignment_rechecks_the_agent_with_the_directory,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                match super::$open().await {
                    Some(fixture) => super::$test(fixture).await,
                    None => eprintln!("skipped: {} is not set", platform::testing::POSTGRES_URL_VAR),
                }
            }
        )+
    };
}

suite!(sqlite, open_sqlite);
suite!(postgres, open_postgres);

// ----- the fixture ---------------------------------------------------------------------------

/// The identity service as delivery sees it: users the test puts there.
#[derive(Default)]
pub struct Directory(Mutex<HashMap<Uuid, DirectoryUser>>);

impl Directory {
    /// Changes a user's role and whether their account is active.
    pub fn set(&self, id: Uuid, role: Role, active: bool) {
        let mut users = self.0.lock().unwrap();
        let user = users.get_mut(&id).expect("a user in the directory");
        user.role = role.as_str().to_owned();
        user.active = active;
    }

    pub fn add(&self, name: &str, role: Role) -> Uuid {
        let id = Uuid::now_v7();
        self.0.lock().unwrap().insert(
            id,
            DirectoryUser {
                full_name: name.to_owned(),
                role: role.as_str().to_owned(),
                active: true,
            },
        );
        id
    }
}

#[async_trait]
impl AgentDirectory for Directory {
    async fn user(&self, user_id: Uuid) -> anyhow::Result<Option<DirectoryUser>> {
        Ok(self.0.lock().unwrap().get(&user_id).cloned())
    }
}

pub struct Fixture {
    pub delivery: Arc<Delivery>,
    /// Moved on a second before each order is shipped, so assignment instants differ.
    pub clock: Arc<OffsetClock>,
    pub consumer: IdempotentConsumer,
    pub directory: Arc<Directory>,
    pub db: Db,
    _dir: Option<TempDir>,
}

async fn fixture(db: Db, dir: Option<TempDir>) -> Fixture {
    db.migrate("platform", PLATFORM_MIGRATIONS)
        .await
        .expect("platform migrations");
    db.migrate(delivery::SERVICE, store::MIGRATIONS)
        .await
        .expect("delivery migrations");
    let clock = Arc::new(OffsetClock::default());
    let shared: SharedClock = clock.clone();
    let directory = Arc::new(Directory::default());
    let delivery = Arc::new(Delivery::new(
        db.clone(),
        shared,
        Settings::default(),
        directory.clone(),
    ));
    let consumer = IdempotentConsumer::new(
        "delivery-orders",
        db.clone(),
        Arc::new(OrderShipments {
            delivery: delivery.clone(),
        }),
    );
    Fixture {
        delivery,
        clock,
        consumer,
        directory,
        db,
        _dir: dir,
    }
}

pub async fn open_sqlite() -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.expect("sqlite");
    Some(fixture(db, Some(dir)).await)
}

async fn open_postgres() -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.expect("postgres")?;
    Some(fixture(db, None).await)
}

// ----- helpers -------------------------------------------------------------------------------

/// An order as orders announces it.
#[derive(Debug, Clone)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub city: String,
    pub payment_method: String,
}

pub fn order(city: &str, payment_method: &str) -> Order {
    Order {
        id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        city: city.to_owned(),
        payment_method: payment_method.to_owned(),
    }
}

pub fn order_event(kind: &str, order: &Order) -> Event {
    let data = json!({
        "order_id": order.id, "number": "ORD-2026-000042", "user_id": order.user_id,
        "customer_email": "buyer@example.com", "status": "paid", "payment_method": order.payment_method,
        "currency": "EUR", "total_minor": 2_500,
        "items": [{"sku": "SKU-1", "product_id": "p1", "seller_id": "s1", "name": "Mug", "quantity": 1,
                   "unit_price_minor": 2_500}],
        "shipping_address": {"full_name": "Asha Rao", "phone": "+91 98450 00000", "line1": "12 MG Road",
                             "city": order.city, "postal_code": "411001", "country": "IN"},
    });
    Event::new("orders", kind, order.id, data, Some("corr-1"))
}

impl Fixture {
    /// Puts a user with the delivery_agent role in the directory and registers them for `cities`.
    pub async fn agent(&self, name: &str, cities: &[&str], active: bool) -> Uuid {
        let id = self.directory.add(name, Role::DeliveryAgent);
        let input = AgentInput {
            cities: cities.iter().map(|c| (*c).to_owned()).collect(),
            active,
            version: None,
        };
        let (_, created) = self
            .delivery
            .put_agent(id, &input, None)
            .await
            .expect("agent registered");
        assert!(created);
        id
    }

    /// Delivers the order's `order.paid` (or `kind`) event to the consumer and answers the
    /// order's shipment.
    pub async fn ship(&self, kind: &str, order: &Order) -> store::ShipmentRow {
        self.clock.advance(std::time::Duration::from_secs(1));
        assert!(self
            .consumer
            .process(&order_event(kind, order))
            .await
            .expect("processed"));
        self.shipment_of(order).await
    }

    pub async fn shipment_of(&self, order: &Order) -> store::ShipmentRow {
        store::shipment_of_order(self.db.reader(), &order.id.to_string())
            .await
            .unwrap()
            .expect("the order has a shipment")
    }

    /// The outbox, oldest first: `(type, data)`.
    pub async fn outbox(&self) -> Vec<(String, Value)> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT event_type, payload FROM outbox ORDER BY seq")
            .fetch_all(self.db.reader())
            .await
            .unwrap();
        rows.into_iter()
            .map(|(kind, payload)| (kind, Event::from_json(&payload).unwrap().data))
            .collect()
    }

    /// The outbox events about one order, oldest first.
    pub async fn events_of(&self, order: &Order) -> Vec<(String, Value)> {
        let id = order.id.to_string();
        self.outbox()
            .await
            .into_iter()
            .filter(|(_, data)| data["order_id"] == id)
            .collect()
    }

    /// The code `shipment.created` carried for the order.
    pub async fn code_of(&self, order: &Order) -> String {
        self.events_of(order)
            .await
            .into_iter()
            .find(|(kind, _)| kind == shipment_events::SHIPMENT_CREATED)
            .and_then(|(_, data)| data["delivery_code"].as_str().map(str::to_owned))
            .expect("shipment.created carries the code")
    }

    /// Delivers the oldest shipment the agent has in `assigned`.
    pub async fn deliver_oldest_of(&self, agent: Uuid) {
        let page = self
            .delivery
            .admin_list(
                &delivery::service::AdminFilter {
                    agent_id: Some(agent),
                    status: Some(ShipmentStatus::Assigned),
                    ..Default::default()
                },
                &platform::page::PageParams::default().parse().unwrap(),
            )
            .await
            .unwrap();
        let oldest = page.items.last().expect("the agent holds a shipment").id.to_string();
        let row = store::shipment(self.db.reader(), &oldest).await.unwrap().unwrap();
        self.walk(&row, &["picked_up", "in_transit", "out_for_delivery", "delivered"])
            .await;
    }

    /// Moves the shipment along `path` as its agent.
    pub async fn walk(&self, shipment: &store::ShipmentRow, path: &[&str]) {
        let agent = agent_user(shipment.agent_id.as_deref().expect("assigned").parse().unwrap());
        for status in path {
            self.delivery
                .update_status(shipment.id.parse().unwrap(), &agent, &update(status, None), None)
                .await
                .unwrap_or_else(|err| panic!("{status}: {err}"));
        }
    }
}

pub fn user(id: Uuid, role: Role) -> CurrentUser {
    CurrentUser {
        id,
        role,
        session_id: "s".to_owned(),
    }
}

pub fn agent_user(id: Uuid) -> CurrentUser {
    user(id, Role::DeliveryAgent)
}

pub fn update(status: &str, code: Option<&str>) -> StatusUpdate {
    StatusUpdate {
        status: status.to_owned(),
        note: None,
        code: code.map(str::to_owned),
    }
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(kind, _)| kind.as_str()).collect()
}

// ----- the tests -----------------------------------------------------------------------------

async fn an_order_paid_twice_gets_one_shipment_and_one_code(f: Fixture) {
    let agent = f.agent("Ravi", &["Pune"], true).await;
    let o = order("Pune", "card");
    let first = order_event(shipment_events::ORDER_PAID, &o);
    assert!(f.consumer.process(&first).await.unwrap());
    assert!(
        !f.consumer.process(&first).await.unwrap(),
        "the same event is applied once"
    );
    // Another event for the same order (say order.confirmed after order.paid) changes nothing.
    let again = order_event(shipment_events::ORDER_CONFIRMED, &o);
    assert!(f.consumer.process(&again).await.unwrap());

    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shipments WHERE order_id = $1")
        .bind(o.id.to_string())
        .fetch_one(f.db.reader())
        .await
        .unwrap();
    assert_eq!(count, 1);
    let events = f.events_of(&o).await;
    assert_eq!(
        kinds(&events),
        [shipment_events::SHIPMENT_CREATED, shipment_events::SHIPMENT_ASSIGNED]
    );
    let shipment = f.shipment_of(&o).await;
    assert_eq!(shipment.status, "assigned");
    assert_eq!(shipment.agent_id, Some(agent.to_string()));
    assert_eq!(shipment.payment_method, "card");
    assert_eq!((shipment.city.as_str(), shipment.city_key.as_str()), ("Pune", "pune"));

    let created = &events[0].1;
    let code = created["delivery_code"].as_str().unwrap();
    assert!(domain::is_code(code), "{code}");
    assert!(domain::verify_code(&shipment.id, code, &shipment.code_hash));
    assert_ne!(shipment.code_hash, code, "only the hash is stored");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["order_number"], "ORD-2026-000042");
    assert_eq!(created["user_id"], o.user_id.to_string());
    assert_eq!(created["cod"], false);
    assert!(events[1].1.get("delivery_code").is_none(), "the code travels once");
    assert_eq!(events[1].1["agent_id"], agent.to_string());
    assert_eq!(events[1].1["previous_status"], "pending");

    let subjects: Vec<String> = sqlx::query_scalar::<_, String>("SELECT payload FROM outbox")
        .fetch_all(f.db.reader())
        .await
        .unwrap()
        .into_iter()
        .map(|p| Event::from_json(&p).unwrap().subject)
        .collect();
    assert!(
        subjects.iter().all(|s| *s == o.id.to_string()),
        "subject = the order id"
    );
}

async fn the_least_loaded_active_agent_serving_the_city_gets_the_shipment(f: Fixture) {
    // Registered first, so it has the lowest id and would win every tie if it were active.
    let inactive = f.agent("Off duty", &["Pune"], false).await;
    let a = f.agent("Asha", &["Pune"], true).await;
    let b = f.agent("Bala", &["  PUNE ", "Mumbai"], true).await;
    let c = f.agent("Chitra", &["mumbai"], true).await;

    let mut given = Vec::new();
    for _ in 0..4 {
        let shipment = f.ship(shipment_events::ORDER_PAID, &order(" pune", "card")).await;
        given.push(shipment.agent_id.unwrap());
    }
    // Equal loads go to whoever waited longest since their last assignment.
    assert_eq!(
        given,
        [a, b, a, b].map(|id| id.to_string()),
        "A and B take turns; the inactive agent gets nothing"
    );
    let mumbai = f.ship(shipment_events::ORDER_PAID, &order("Mumbai", "card")).await;
    assert_eq!(mumbai.agent_id, Some(c.to_string()), "B holds two already, C none");

    // A's first shipment is delivered: A is now the least loaded in Pune.
    f.deliver_oldest_of(a).await;
    let next = f.ship(shipment_events::ORDER_PAID, &order("Pune", "card")).await;
    assert_eq!(next.agent_id, Some(a.to_string()), "A holds one, B two");

    // Equal loads again (one each), and this time A (the lower id) was given one last: B has
    // waited longer.
    f.deliver_oldest_of(a).await;
    f.deliver_oldest_of(b).await;
    let next = f.ship(shipment_events::ORDER_PAID, &order("Pune", "card")).await;
    assert_eq!(
        next.agent_id,
        Some(b.to_string()),
        "the longest wait wins a tie, not the id"
    );

    let loads: HashMap<Uuid, i64> = f
        .delivery
        .agents(&platform::page::PageParams::default().parse().unwrap())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|agent| (agent.user_id, agent.load))
        .collect();
    assert_eq!(loads, HashMap::from([(inactive, 0), (a, 1), (b, 2), (c, 1)]));
}

async fn a_shipment_no_agent_serves_stays_pending_until_the_sweeper_finds_one(f: Fixture) {
    f.agent("Elsewhere", &["Chennai"], true).await;
    let o = order("Nagpur", "cod");
    let shipment = f.ship(shipment_events::ORDER_CONFIRMED, &o).await;
    assert_eq!(
        (shipment.status.as_str(), shipment.agent_id.as_deref()),
        ("pending", None)
    );
    assert_eq!(kinds(&f.events_of(&o).await), [shipment_events::SHIPMENT_CREATED]);
    assert!(shipment.is_cod());
    assert_eq!(
        f.delivery.assign_pending().await.unwrap(),
        0,
        "still nobody serves Nagpur"
    );

    let agent = f.agent("Neha", &["nagpur"], true).await;
    assert_eq!(f.delivery.assign_pending().await.unwrap(), 1);
    assert_eq!(f.delivery.assign_pending().await.unwrap(), 0, "assigned once");
    let shipment = f.shipment_of(&o).await;
    assert_eq!(shipment.status, "assigned");
    assert_eq!(shipment.agent_id, Some(agent.to_string()));
    let events = f.events_of(&o).await;
    assert_eq!(
        kinds(&events),
        [shipment_events::SHIPMENT_CREATED, shipment_events::SHIPMENT_ASSIGNED]
    );
    assert_eq!(events[1].1["cod"], true);
}

async fn concurrent_status_updates_of_one_shipment_let_exactly_one_win(f: Fixture) {
    f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "card");
    let shipment = f.ship(shipment_events::ORDER_PAID, &o).await;
    let id: Uuid = shipment.id.parse().unwrap();
    let agent = agent_user(shipment.agent_id.clone().unwrap().parse().unwrap());

    // The compare-and-set itself: of many writers holding the same version, one changes the row.
    let stale = f.shipment_of(&o).await;
    let wins = join_all((0..8).map(|_| {
        let (db, row) = (f.db.clone(), stale.clone());
        async move {
            let mut tx = db.begin().await.unwrap();
            let changed = store::apply_change(
                &mut tx,
                Change {
                    id: &row.id,
                    from: ShipmentStatus::Assigned,
                    version: row.version,
                    to: ShipmentStatus::Assigned,
                    agent_id: row.agent_id.as_deref(),
                    proof: None,
                    now: 1,
                },
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            changed
        }
    }))
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");

    // The same report eight times at once: one change, the rest see it done.
    let picked_up = update("picked_up", None);
    let results = join_all((0..8).map(|_| f.delivery.update_status(id, &agent, &picked_up, None))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    f.walk(&shipment, &["in_transit", "out_for_delivery"]).await;

    // Two different ends raced: exactly one of them happens.
    let ends = [update("delivered", None), update("failed_attempt", None)];
    let results = join_all((0..8).map(|n| f.delivery.update_status(id, &agent, &ends[n % 2], None))).await;
    let end = f.shipment_of(&o).await.status;
    assert!(end == "delivered" || end == "failed_attempt", "{end}");
    for result in &results {
        match result {
            Ok(view) => assert_eq!(view.status.as_str(), end),
            Err(ApiError::ConflictWith { members, .. }) => assert_eq!(members["from"], end.as_str()),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);

    let events = f.events_of(&o).await;
    let count = |kind: &str| events.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(count(shipment_events::SHIPMENT_PICKED_UP), 1);
    assert_eq!(
        count(shipment_events::SHIPMENT_DELIVERED) + count(shipment_events::SHIPMENT_FAILED_ATTEMPT),
        1
    );
    let tracking = store::tracking(f.db.reader(), &shipment.id).await.unwrap();
    let statuses: Vec<&str> = tracking.iter().map(|t| t.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "pending",
            "assigned",
            "picked_up",
            "in_transit",
            "out_for_delivery",
            end.as_str()
        ]
    );
}

async fn a_cancelled_order_cancels_its_shipment_until_the_parcel_is_picked_up(f: Fixture) {
    let agent = f.agent("Asha", &["Pune"], true).await;
    let waiting = order("Pune", "card");
    let shipment = f.ship(shipment_events::ORDER_PAID, &waiting).await;
    let on_its_way = order("Pune", "card");
    let moving = f.ship(shipment_events::ORDER_PAID, &on_its_way).await;
    f.walk(&moving, &["picked_up"]).await;
    let unassigned = order("Atlantis", "cod");
    f.ship(shipment_events::ORDER_CONFIRMED, &unassigned).await;
    assert_eq!(f.delivery.agent(agent).await.unwrap().load, 2);

    for o in [&waiting, &on_its_way, &unassigned] {
        assert!(f
            .consumer
            .process(&order_event(shipment_events::ORDER_CANCELLED, o))
            .await
            .unwrap());
    }
    // An order cancelled before it was paid has no shipment: nothing to do, and no error.
    assert!(f
        .consumer
        .process(&order_event(shipment_events::ORDER_CANCELLED, &order("Pune", "card")))
        .await
        .unwrap());

    let cancelled = f.shipment_of(&waiting).await;
    assert_eq!(cancelled.status, "cancelled");
    assert_eq!(cancelled.agent_id, shipment.agent_id, "who had it stays on record");
    assert_eq!(f.shipment_of(&unassigned).await.status, "cancelled");
    let recalled = f.shipment_of(&on_its_way).await;
    assert_eq!(
        (recalled.status.as_str(), recalled.recalled_at.is_some()),
        ("picked_up", true),
        "a parcel on its way keeps its status and is recalled"
    );
    let last = f.events_of(&waiting).await.pop().unwrap();
    assert_eq!(last.0, shipment_events::SHIPMENT_CANCELLED);
    assert_eq!(last.1["previous_status"], "assigned");
    assert_eq!(
        f.events_of(&on_its_way).await.last().unwrap().0,
        shipment_events::SHIPMENT_RECALLED
    );
    assert_eq!(
        f.delivery.agent(agent).await.unwrap().load,
        1,
        "a cancelled shipment is no load; the recalled parcel still is"
    );

    // A second cancellation of the same order changes nothing.
    let before = f.outbox().await.len();
    assert!(f
        .consumer
        .process(&order_event(shipment_events::ORDER_CANCELLED, &waiting))
        .await
        .unwrap());
    assert_eq!(f.outbox().await.len(), before);
    // The agent cannot move a cancelled shipment.
    let refused = f
        .delivery
        .update_status(
            cancelled.id.parse().unwrap(),
            &agent_user(agent),
            &update("picked_up", None),
            None,
        )
        .await;
    assert!(matches!(refused, Err(ApiError::ConflictWith { .. })), "{refused:?}");
}

async fn an_order_event_without_an_address_is_refused_and_changes_nothing(f: Fixture) {
    let o = order("Pune", "card");
    let mut event = order_event(shipment_events::ORDER_PAID, &o);
    event.data.as_object_mut().unwrap().remove("shipping_address");
    let error = f.consumer.process(&event).await.expect_err("no address");
    assert!(format!("{error:#}").contains("no shipping address"), "{error:#}");
    let mut blank_city = order_event(shipment_events::ORDER_PAID, &o);
    blank_city.data["shipping_address"]["city"] = json!("   ");
    assert!(f.consumer.process(&blank_city).await.is_err());

    let shipments: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shipments")
        .fetch_one(f.db.reader())
        .await
        .unwrap();
    let processed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(f.db.reader())
        .await
        .unwrap();
    assert_eq!((shipments, processed, f.outbox().await.len()), (0, 0, 0));
    // Once the address is there (a fixed replay), it goes through.
    assert!(f
        .consumer
        .process(&order_event(shipment_events::ORDER_PAID, &o))
        .await
        .unwrap());
}

async fn registering_an_agent_needs_a_delivery_agent_and_a_valid_area(f: Fixture) {
    let input = |cities: &[&str], active: bool| AgentInput {
        cities: cities.iter().map(|c| (*c).to_owned()).collect(),
        active,
        version: None,
    };
    let field_of = |err: ApiError| match err {
        ApiError::Validation(errors) => errors[0].field.clone(),
        other => panic!("expected a validation error, got {other:?}"),
    };
    let stranger = Uuid::now_v7();
    let err = f
        .delivery
        .put_agent(stranger, &input(&["Pune"], true), None)
        .await
        .unwrap_err();
    assert_eq!(field_of(err), "user_id");
    let customer = f.directory.add("Carla", Role::Customer);
    let err = f
        .delivery
        .put_agent(customer, &input(&["Pune"], true), None)
        .await
        .unwrap_err();
    assert_eq!(field_of(err), "user_id");

    let agent = f.directory.add("Dev", Role::DeliveryAgent);
    let err = f.delivery.put_agent(agent, &input(&[], true), None).await.unwrap_err();
    assert_eq!(field_of(err), "cities");
    let many: Vec<String> = (0..51).map(|n| format!("City {n}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        field_of(
            f.delivery
                .put_agent(agent, &input(&many, true), None)
                .await
                .unwrap_err()
        ),
        "cities"
    );
    let long = "x".repeat(101);
    let err = f
        .delivery
        .put_agent(agent, &input(&["Pune", &long], true), None)
        .await
        .unwrap_err();
    assert_eq!(field_of(err), "cities/1");
    assert!(
        matches!(f.delivery.agent(agent).await, Err(ApiError::NotFound(_))),
        "nothing stored"
    );

    let (view, created) = f
        .delivery
        .put_agent(agent, &input(&["Pune", " pune ", "Mumbai"], true), None)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(view.cities, ["Mumbai", "Pune"], "one entry per city");
    assert_eq!((view.full_name.as_str(), view.active, view.version), ("Dev", true, 1));

    let (view, created) = f
        .delivery
        .put_agent(agent, &input(&["Nashik"], false), Some(1))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(
        (view.cities.clone(), view.active, view.version),
        (vec!["Nashik".to_owned()], false, 2)
    );
    let stale = f.delivery.put_agent(agent, &input(&["Pune"], true), Some(1)).await;
    assert!(matches!(stale, Err(ApiError::Conflict(_))), "{stale:?}");
    assert_eq!(f.delivery.agent(agent).await.unwrap().cities, ["Nashik"]);
}

async fn reassigning_keeps_the_status_and_a_parcel_on_the_road_stays_with_its_agent(f: Fixture) {
    let admin = Uuid::now_v7();
    let o = order("Goa", "card");
    let shipment = f.ship(shipment_events::ORDER_PAID, &o).await;
    let id: Uuid = shipment.id.parse().unwrap();
    assert_eq!(shipment.status, "pending");
    let nobody = f.delivery.assign(id, admin, None, None).await;
    assert!(
        matches!(nobody, Err(ApiError::Conflict(_))),
        "no agent serves Goa: {nobody:?}"
    );

    let a = f.agent("Asha", &["Pune"], true).await;
    let b = f.agent("Bala", &["Goa"], true).await;
    let off = f.agent("Off", &["Goa"], false).await;
    let err = f.delivery.assign(id, admin, Some(off), None).await.unwrap_err();
    assert!(matches!(err, ApiError::Validation(_)), "an inactive agent: {err:?}");
    let err = f
        .delivery
        .assign(id, admin, Some(Uuid::now_v7()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Validation(_)), "not an agent: {err:?}");

    // An admin may give it to an agent who does not serve the city.
    let view = f.delivery.assign(id, admin, Some(a), None).await.unwrap();
    assert_eq!((view.status, view.agent_id), (ShipmentStatus::Assigned, Some(a)));
    assert_eq!(view.agent_name.as_deref(), Some("Asha"));
    // Automatic: the agent serving Goa.
    let view = f.delivery.assign(id, admin, None, None).await.unwrap();
    assert_eq!((view.status, view.agent_id), (ShipmentStatus::Assigned, Some(b)));
    let again = f.delivery.assign(id, admin, Some(b), None).await.unwrap();
    assert_eq!(again.version, view.version, "the same agent again changes nothing");

    f.walk(&f.shipment_of(&o).await, &["picked_up"]).await;
    let err = f.delivery.assign(id, admin, Some(a), None).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
    f.walk(
        &f.shipment_of(&o).await,
        &["in_transit", "out_for_delivery", "failed_attempt"],
    )
    .await;
    let view = f.delivery.assign(id, admin, Some(a), None).await.unwrap();
    assert_eq!((view.status, view.agent_id), (ShipmentStatus::FailedAttempt, Some(a)));
    // The old agent lost it: 404 for them now, and the new one carries on.
    let old = f
        .delivery
        .update_status(id, &agent_user(b), &update("rescheduled", None), None)
        .await;
    assert!(matches!(old, Err(ApiError::NotFound(_))), "{old:?}");
    f.walk(&f.shipment_of(&o).await, &["rescheduled"]).await;

    let events = f.events_of(&o).await;
    assert_eq!(
        kinds(&events),
        [
            shipment_events::SHIPMENT_CREATED,
            shipment_events::SHIPMENT_ASSIGNED,
            shipment_events::SHIPMENT_ASSIGNED,
            shipment_events::SHIPMENT_PICKED_UP,
            shipment_events::SHIPMENT_IN_TRANSIT,
            shipment_events::SHIPMENT_OUT_FOR_DELIVERY,
            shipment_events::SHIPMENT_FAILED_ATTEMPT,
            shipment_events::SHIPMENT_ASSIGNED,
            shipment_events::SHIPMENT_RESCHEDULED,
        ]
    );
    let handover = &events[7].1;
    assert_eq!(
        (handover["status"].clone(), handover["agent_id"].clone()),
        (json!("failed_attempt"), json!(a.to_string()))
    );
}

async fn wrong_codes_lock_the_code_until_an_admin_issues_a_new_one(f: Fixture) {
    let agent = f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "cod");
    let shipment = f.ship(shipment_events::ORDER_CONFIRMED, &o).await;
    let id: Uuid = shipment.id.parse().unwrap();
    f.walk(&shipment, &["picked_up", "in_transit", "out_for_delivery"])
        .await;
    let code = f.code_of(&o).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let me = agent_user(agent);
    let deliver = |code: Option<&str>| {
        let request = update("delivered", code);
        let delivery = f.delivery.clone();
        let me = me.clone();
        async move { delivery.update_status(id, &me, &request, None).await }
    };

    // 5 tries in parallel, all wrong: all counted, and the code is locked.
    let results = join_all((0..5).map(|_| deliver(Some(wrong)))).await;
    assert!(
        results.iter().all(|r| matches!(r, Err(ApiError::Unprocessable(_)))),
        "{results:?}"
    );
    let row = f.shipment_of(&o).await;
    assert_eq!((row.status.as_str(), row.code_attempts), ("out_for_delivery", 5));
    let locked = deliver(Some(&code)).await.unwrap_err();
    assert!(locked.to_string().contains("locked"), "{locked}");
    assert_eq!(
        f.shipment_of(&o).await.code_attempts,
        5,
        "a locked code takes no more tries"
    );

    let issued = f.delivery.issue_code(id, None).await.unwrap();
    assert!(domain::is_code(&issued.code));
    let event = f.events_of(&o).await.pop().unwrap();
    assert_eq!(event.0, shipment_events::SHIPMENT_CODE_ISSUED);
    assert_eq!(event.1["delivery_code"], issued.code.as_str());
    assert_eq!(event.1["status"], "out_for_delivery");
    if issued.code != code {
        assert!(deliver(Some(&code)).await.is_err(), "the old code no longer works");
    }
    let view = deliver(Some(&issued.code)).await.unwrap();
    assert_eq!(view.status, ShipmentStatus::Delivered);
    assert_eq!(view.proof, Some(domain::Proof::Code));
    assert!(view.delivered_at.is_some());
    let delivered = f.events_of(&o).await.pop().unwrap();
    assert_eq!(delivered.0, shipment_events::SHIPMENT_DELIVERED);
    assert_eq!(
        (delivered.1["proof"].clone(), delivered.1["cod"].clone()),
        (json!("code"), json!(true))
    );
    let closed = f.delivery.issue_code(id, None).await;
    assert!(matches!(closed, Err(ApiError::Conflict(_))), "{closed:?}");
}

/// Whether the order has a shipment at all.
async fn has_shipment(f: &Fixture, o: &Order) -> bool {
    store::shipment_of_order(f.db.reader(), &o.id.to_string())
        .await
        .unwrap()
        .is_some()
}

async fn an_order_cancelled_before_it_is_paid_gets_no_shipment(f: Fixture) {
    f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "card");
    assert!(f
        .consumer
        .process(&order_event(shipment_events::ORDER_CANCELLED, &o))
        .await
        .unwrap());
    assert!(!has_shipment(&f, &o).await);
    let tombstones: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cancelled_orders WHERE order_id = $1")
        .bind(o.id.to_string())
        .fetch_one(f.db.reader())
        .await
        .unwrap();
    assert_eq!(tombstones, 1, "the cancellation is recorded");
    // A second cancellation (another event) is no error and records nothing more.
    assert!(f
        .consumer
        .process(&order_event(shipment_events::ORDER_CANCELLED, &o))
        .await
        .unwrap());

    // The order's order.paid (replayed, or late) and order.confirmed are processed without
    // error, and create nothing.
    for kind in [shipment_events::ORDER_PAID, shipment_events::ORDER_CONFIRMED] {
        assert!(f.consumer.process(&order_event(kind, &o)).await.unwrap(), "{kind}");
    }
    assert!(!has_shipment(&f, &o).await, "a cancelled order gets no shipment");
    assert!(f.events_of(&o).await.is_empty(), "{:?}", f.events_of(&o).await);

    // Another order goes through as before.
    let other = order("Pune", "card");
    assert_eq!(f.ship(shipment_events::ORDER_PAID, &other).await.status, "assigned");
}

async fn an_order_cancelled_after_pickup_recalls_its_shipment_which_is_never_delivered(f: Fixture) {
    let agent = f.agent("Asha", &["Pune"], true).await;
    let me = agent_user(agent);
    let roads: [&[&str]; 5] = [
        &["picked_up"],
        &["picked_up", "in_transit"],
        &["picked_up", "in_transit", "out_for_delivery"],
        &["picked_up", "in_transit", "out_for_delivery", "failed_attempt"],
        &[
            "picked_up",
            "in_transit",
            "out_for_delivery",
            "failed_attempt",
            "rescheduled",
        ],
    ];
    for road in roads {
        let reached = *road.last().unwrap();
        let o = order("Pune", "cod");
        let shipment = f.ship(shipment_events::ORDER_CONFIRMED, &o).await;
        let id: Uuid = shipment.id.parse().unwrap();
        f.walk(&shipment, road).await;
        let before = f.shipment_of(&o).await;
        assert!(f
            .consumer
            .process(&order_event(shipment_events::ORDER_CANCELLED, &o))
            .await
            .unwrap());

        let row = f.shipment_of(&o).await;
        assert_eq!(row.status, reached, "the status stays");
        assert!(row.recalled_at.is_some(), "{reached}: recalled");
        assert!(row.version > before.version, "a recall is a change");
        let last = store::tracking(f.db.reader(), &row.id).await.unwrap().pop().unwrap();
        assert_eq!(
            (last.status.as_str(), last.note.as_deref(), last.actor.as_str()),
            (reached, Some("order cancelled: return the parcel"), "orders")
        );
        let (kind, data) = f.events_of(&o).await.pop().unwrap();
        assert_eq!(kind, shipment_events::SHIPMENT_RECALLED, "{reached}");
        assert_eq!(data["status"], reached);
        assert_eq!(data["previous_status"], reached);
        assert_eq!(data["agent_id"], agent.to_string());
        assert_eq!(data["shipment_id"], row.id.as_str());
        assert_eq!(data["note"], "order cancelled: return the parcel");
        assert_eq!(data["cod"], true);

        // Cancelled again: recalled once.
        let events = f.events_of(&o).await.len();
        assert!(f
            .consumer
            .process(&order_event(shipment_events::ORDER_CANCELLED, &o))
            .await
            .unwrap());
        assert_eq!(f.events_of(&o).await.len(), events, "{reached}: one recall");
        assert_eq!(f.shipment_of(&o).await.recalled_at, row.recalled_at);

        // Nothing takes it towards the customer, not even with the right code.
        let code = f.code_of(&o).await;
        for (status, code) in [
            ("delivered", Some(code.as_str())),
            ("out_for_delivery", None),
            ("rescheduled", None),
        ] {
            if status == reached {
                continue;
            }
            let refused = f.delivery.update_status(id, &me, &update(status, code), None).await;
            match refused {
                Err(ApiError::ConflictWith { message, members }) => {
                    assert!(message.contains("order was cancelled"), "{message}");
                    assert!(message.contains("back to the sender"), "{message}");
                    assert_eq!(members["recalled"], true);
                    assert_eq!(
                        (members["from"].as_str(), members["to"].as_str()),
                        (Some(reached), Some(status))
                    );
                }
                other => panic!("{reached} → {status}: {other:?}"),
            }
        }
        assert_eq!(
            f.shipment_of(&o).await.code_attempts,
            0,
            "a refused delivery takes no try"
        );
        let view = f.delivery.shipment(id).await.unwrap();
        assert!(view.recalled && view.recalled_at.is_some());

        // It goes back to the sender straight from where it is.
        let view = f
            .delivery
            .update_status(id, &me, &update("returned_to_sender", None), None)
            .await
            .unwrap_or_else(|err| panic!("{reached} → returned_to_sender: {err}"));
        assert_eq!(view.status, ShipmentStatus::ReturnedToSender);
        assert!(view.recalled);
    }
}

async fn a_recall_and_a_delivery_racing_never_both_happen(f: Fixture) {
    let agent = f.agent("Asha", &["Pune"], true).await;
    let me = agent_user(agent);
    for _ in 0..5 {
        let o = order("Pune", "card");
        let shipment = f.ship(shipment_events::ORDER_PAID, &o).await;
        f.walk(&shipment, &["picked_up", "in_transit", "out_for_delivery"])
            .await;
        let id: Uuid = shipment.id.parse().unwrap();
        let deliver = update("delivered", None);
        let cancel = order_event(shipment_events::ORDER_CANCELLED, &o);
        let (delivered, cancelled) = tokio::join!(
            f.delivery.update_status(id, &me, &deliver, None),
            f.consumer.process(&cancel)
        );
        assert!(cancelled.unwrap());
        let row = f.shipment_of(&o).await;
        let kinds: Vec<String> = f.events_of(&o).await.into_iter().map(|(kind, _)| kind).collect();
        let count = |kind: &str| kinds.iter().filter(|k| *k == kind).count();
        match delivered {
            Ok(_) => {
                assert_eq!(row.status, "delivered");
                assert!(row.recalled_at.is_none(), "a delivered parcel is not recalled");
                assert_eq!(count(shipment_events::SHIPMENT_RECALLED), 0);
            }
            Err(ApiError::ConflictWith { members, .. }) => {
                assert_eq!(members["recalled"], true);
                assert_eq!(row.status, "out_for_delivery");
                assert!(row.recalled_at.is_some());
                assert_eq!(count(shipment_events::SHIPMENT_DELIVERED), 0);
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

async fn a_returned_parcel_holds_its_agent_until_an_admin_receives_it(f: Fixture) {
    let admin = Uuid::now_v7();
    let agent = f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "card");
    let shipment = f.ship(shipment_events::ORDER_PAID, &o).await;
    let id: Uuid = shipment.id.parse().unwrap();
    f.walk(
        &shipment,
        &["picked_up", "in_transit", "out_for_delivery", "failed_attempt"],
    )
    .await;
    // Not yet on its way back: nothing to receive.
    let early = f.delivery.receive_return(id, admin, None, None).await;
    match early {
        Err(ApiError::ConflictWith { members, .. }) => {
            assert_eq!(
                (members["from"].as_str(), members["to"].as_str()),
                (Some("failed_attempt"), Some("returned"))
            );
        }
        other => panic!("{other:?}"),
    }
    f.walk(&shipment, &["returned_to_sender"]).await;
    assert_eq!(
        f.delivery.agent(agent).await.unwrap().load,
        1,
        "the agent still holds the parcel on its way back"
    );
    // The agent cannot close it, nor can an admin through the status route.
    for caller in [agent_user(agent), user(admin, Role::Admin)] {
        let refused = f
            .delivery
            .update_status(id, &caller, &update("returned", None), None)
            .await;
        assert!(matches!(refused, Err(ApiError::Validation(_))), "{refused:?}");
    }
    // Nor can anybody reassign or re-code it.
    let err = f.delivery.assign(id, admin, None, None).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
    let err = f.delivery.issue_code(id, None).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");

    let view = f
        .delivery
        .receive_return(id, admin, Some(" box dented "), None)
        .await
        .unwrap();
    assert_eq!(view.status, ShipmentStatus::Returned);
    assert_eq!(view.agent_id, Some(agent), "who had it stays on record");
    let last = view.history.unwrap().pop().unwrap();
    assert_eq!(
        (last.status, last.note.as_deref(), last.actor.clone()),
        (ShipmentStatus::Returned, Some("box dented"), format!("admin:{admin}"))
    );
    assert_eq!(f.delivery.agent(agent).await.unwrap().load, 0, "back at the warehouse");
    let (kind, data) = f.events_of(&o).await.pop().unwrap();
    assert_eq!(kind, shipment_events::SHIPMENT_RETURNED);
    assert_eq!(
        (data["status"].as_str(), data["previous_status"].as_str()),
        (Some("returned"), Some("returned_to_sender"))
    );
    assert_eq!(data["note"], "box dented");
    // Again: nothing changes; and it is final.
    let before = f.outbox().await.len();
    let again = f.delivery.receive_return(id, admin, None, None).await.unwrap();
    assert_eq!(again.version, view.version);
    assert_eq!(f.outbox().await.len(), before);
    let refused = f
        .delivery
        .update_status(id, &agent_user(agent), &update("returned_to_sender", None), None)
        .await;
    assert!(matches!(refused, Err(ApiError::ConflictWith { .. })), "{refused:?}");

    assert!(shipment_events::SHIPMENT_EVENTS.contains(&shipment_events::SHIPMENT_RETURNED));
    assert!(shipment_events::SHIPMENT_EVENTS.contains(&shipment_events::SHIPMENT_RECALLED));
    for status in ShipmentStatus::ALL {
        assert!(
            shipment_events::SHIPMENT_EVENTS.contains(&shipment_events::kind_of(status)),
            "{status:?}"
        );
    }
}

async fn the_sweeper_assigns_servable_shipments_past_unservable_ones(f: Fixture) {
    f.agent("Elsewhere", &["Chennai"], true).await;
    // A city only an inactive agent serves is as unserved as one nobody serves.
    f.agent("Off duty", &["Atlantis"], false).await;
    for _ in 0..150 {
        let o = order("Atlantis", "card");
        assert!(f
            .consumer
            .process(&order_event(shipment_events::ORDER_PAID, &o))
            .await
            .unwrap());
    }
    // The newest shipment of all; nobody serves Pune yet.
    let o = order("Pune", "card");
    assert_eq!(f.ship(shipment_events::ORDER_PAID, &o).await.status, "pending");
    assert_eq!(store::unassignable_pending_count(f.db.reader()).await.unwrap(), 151);

    let agent = f.agent("Neha", &["Pune"], true).await;
    assert_eq!(store::unassignable_pending_count(f.db.reader()).await.unwrap(), 150);
    assert_eq!(f.delivery.assign_pending().await.unwrap(), 1, "one sweep finds it");
    let shipment = f.shipment_of(&o).await;
    assert_eq!(
        (shipment.status.as_str(), shipment.agent_id),
        ("assigned", Some(agent.to_string()))
    );
    assert_eq!(f.delivery.assign_pending().await.unwrap(), 0);
    assert_eq!(
        store::unassignable_pending_count(f.db.reader()).await.unwrap(),
        150,
        "still waiting for an agent serving Atlantis"
    );
}

/// Makes every write of a tracking row fail (`on`), or lifts that (`!on`).
async fn break_tracking(f: &Fixture, on: bool) {
    use sqlx::Executor;
    let statements: &[&str] = match (f.db.backend(), on) {
        (platform::store::Backend::Sqlite, true) => {
            &["CREATE TRIGGER boom BEFORE INSERT ON shipment_events BEGIN SELECT RAISE(ABORT, 'boom'); END"]
        }
        (platform::store::Backend::Sqlite, false) => &["DROP TRIGGER boom"],
        (platform::store::Backend::Postgres, true) => &[
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$",
            "CREATE TRIGGER boom BEFORE INSERT ON shipment_events FOR EACH ROW EXECUTE FUNCTION boom()",
        ],
        (platform::store::Backend::Postgres, false) => &["DROP TRIGGER boom ON shipment_events"],
    };
    for statement in statements {
        f.db.writer().execute(*statement).await.unwrap();
    }
}

async fn a_right_code_costs_no_try_when_the_delivery_fails_to_be_written(f: Fixture) {
    let agent = f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "cod");
    let shipment = f.ship(shipment_events::ORDER_CONFIRMED, &o).await;
    let id: Uuid = shipment.id.parse().unwrap();
    f.walk(&shipment, &["picked_up", "in_transit", "out_for_delivery"])
        .await;
    let code = f.code_of(&o).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let me = agent_user(agent);
    let deliver = |code: &str| {
        let request = update("delivered", Some(code));
        let (delivery, me) = (f.delivery.clone(), me.clone());
        async move { delivery.update_status(id, &me, &request, None).await }
    };
    assert!(matches!(deliver(wrong).await, Err(ApiError::Unprocessable(_))));
    assert_eq!(f.shipment_of(&o).await.code_attempts, 1);

    // The right code, but the delivery cannot be written: an error, and no try is lost.
    break_tracking(&f, true).await;
    for _ in 0..3 {
        let failed = deliver(&code).await;
        assert!(matches!(failed, Err(ApiError::Internal(_))), "{failed:?}");
    }
    let row = f.shipment_of(&o).await;
    assert_eq!((row.status.as_str(), row.code_attempts), ("out_for_delivery", 1));
    break_tracking(&f, false).await;

    let view = deliver(&code).await.unwrap();
    assert_eq!((view.status, view.code_attempts), (ShipmentStatus::Delivered, 1));
}

async fn an_explicit_assignment_rechecks_the_agent_with_the_directory(f: Fixture) {
    let admin = Uuid::now_v7();
    let disabled = f.agent("Asha", &["Pune"], true).await;
    let demoted = f.agent("Bala", &["Pune"], true).await;
    let fine = f.agent("Chitra", &["Mumbai"], true).await;
    // Nobody serves Goa: the shipment waits, and only an explicit assignment moves it.
    let o = order("Goa", "card");
    let id: Uuid = f.ship(shipment_events::ORDER_PAID, &o).await.id.parse().unwrap();

    f.directory.set(disabled, Role::DeliveryAgent, false);
    f.directory.set(demoted, Role::Customer, true);
    for gone in [disabled, demoted] {
        let err = f.delivery.assign(id, admin, Some(gone), None).await.unwrap_err();
        match err {
            ApiError::Validation(errors) => assert_eq!(errors[0].field, "agent_id"),
            other => panic!("{other:?}"),
        }
        let view = f.delivery.agent(gone).await.unwrap();
        assert!(!view.active, "made inactive");
        assert_eq!(view.version, 2);
    }
    let row = f.shipment_of(&o).await;
    assert_eq!((row.status.as_str(), row.agent_id), ("pending", None));
    // Made inactive, they get nothing automatically either.
    let pune = f.ship(shipment_events::ORDER_PAID, &order("Pune", "card")).await;
    assert_eq!(pune.status, "pending");

    let view = f.delivery.assign(id, admin, Some(fine), None).await.unwrap();
    assert_eq!((view.status, view.agent_id), (ShipmentStatus::Assigned, Some(fine)));
}
