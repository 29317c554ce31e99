//! The distributed mode under faults, on a stack with a NATS and a Redis server of its own:
//! a flash sale across two orders replicas, then a stream of checkouts during which the orders
//! and payments processes are killed (kill -9) and started again at random moments, NATS is
//! killed and restarted, and Redis is killed and restarted. Afterwards the books must agree:
//! every paid order captured once and every other one charged nothing, the outboxes drained,
//! every reservation committed or released, no email sent twice and none missing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use platform::auth::{Claims, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use crate::distributed::{eventually, Stack, ONE_STACK_AT_A_TIME};
use crate::helpers::{token_of, PASSWORD};

const FLASH_STOCK: i64 = 100;
const STORM_STOCK: i64 = 1_000_000;
/// Statuses of an order whose money was taken.
const CHARGED: [&str; 5] = ["paid", "processing", "shipped", "out_for_delivery", "delivered"];

fn address() -> Value {
    json!({"full_name": "Kim Storm", "line1": "9 Gale St", "city": "Berlin", "postal_code": "10115", "country": "DE"})
}

/// How one checkout ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Placed(String),
    Short,
    /// The request died after creating this order; the client looks it up instead.
    Interrupted(String),
    /// The cart was empty (its lines went with an earlier order that got paid meanwhile).
    Empty,
}

/// A small random source for the moments of the faults (the seed is printed).
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Sends the request `request` builds until the answer is one `again` does not send it again
/// for, as a careful client does: a broken connection, or an answer `again` names (a process
/// being killed), is tried again after a pause, for up to 240 s.
async fn answered(
    what: &str,
    request: impl Fn() -> reqwest::RequestBuilder,
    again: impl Fn(StatusCode, &Value) -> bool,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut pause = Duration::from_millis(100);
    loop {
        let failure = match request().send().await {
            Ok(response) => {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if !again(status, &body) {
                    return (status, body);
                }
                format!("{status}: {body}")
            }
            Err(err) => err.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{what} got no answer in 240 s; the last: {failure}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One checkout under `key`, sent again with the same key after every failure until it has an
/// answer.
async fn checkout(stack: &Stack, token: &str, key: &str) -> Answer {
    let request = || {
        stack
            .client
            .post(format!("{}/api/v1/checkout", stack.url))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({"payment_method": "card", "shipping_address": address()}))
    };
    // A gateway or dependency failure, or the key still held by a request that died.
    let again = |status: StatusCode, body: &Value| {
        matches!(status.as_u16(), 502..=504)
            || (status == StatusCode::CONFLICT && !body["shortages"].is_array() && !body["order_id"].is_string())
    };
    let (status, body) = answered(&format!("checkout {key}"), request, again).await;
    match status.as_u16() {
        201 => Answer::Placed(body["order"]["id"].as_str().unwrap().to_owned()),
        409 if body["shortages"].is_array() => Answer::Short,
        409 => Answer::Interrupted(body["order_id"].as_str().unwrap().to_owned()),
        422 if body["detail"].as_str().is_some_and(|d| d.contains("cart is empty")) => Answer::Empty,
        _ => panic!("checkout {key}: unexpected {status}: {body}"),
    }
}

fn server_error(status: StatusCode, _: &Value) -> bool {
    status.is_server_error()
}

/// Puts `quantity` of `sku` into the cart, trying again through failures.
async fn add_to_cart(stack: &Stack, token: &str, sku: &str, quantity: i64) {
    let request = || {
        stack
            .client
            .post(format!("{}/api/v1/cart/items", stack.url))
            .bearer_auth(token)
            .json(&json!({"sku": sku, "quantity": quantity}))
    };
    let (status, body) = answered(&format!("adding {sku}"), request, server_error).await;
    assert_eq!(status, StatusCode::OK, "adding {sku}: {body}");
}

/// Makes the cart hold exactly one of `sku` (whatever an earlier order left in it while its
/// payment was still on the way), trying again through failures.
async fn one_in_cart(stack: &Stack, token: &str, sku: &str) {
    let request = || {
        stack
            .client
            .patch(format!("{}/api/v1/cart/items/{sku}", stack.url))
            .bearer_auth(token)
            .json(&json!({"quantity": 1}))
    };
    match answered(&format!("setting {sku}"), request, server_error).await {
        (StatusCode::OK, _) => {}
        (StatusCode::NOT_FOUND, _) => add_to_cart(stack, token, sku, 1).await,
        (status, body) => panic!("setting {sku}: unexpected {status}: {body}"),
    }
}

/// Access tokens for customers without accounts, signed with identity's own key (read from its
/// database): hashing two thousand passwords would be the slow part of the flash sale.
async fn minted_customers(stack: &Stack, count: usize) -> Vec<(Uuid, String)> {
    let keys = identity::keys::Keys::new(
        stack.db("identity").await,
        std::sync::Arc::new(platform::clock::SystemClock),
        Duration::from_secs(900),
    );
    let signer = keys.signer().await.unwrap();
    let config = platform::config::Config::default();
    let now = platform::clock::now_ms() / 1000;
    (0..count)
        .map(|_| {
            let id = Uuid::now_v7();
            let claims = Claims {
                iss: config.auth.issuer.clone(),
                aud: config.auth.audience.clone(),
                sub: id.to_string(),
                role: Role::Customer,
                iat: now,
                exp: now + 3600,
                sid: Uuid::now_v7().to_string(),
            };
            (id, signer.sign(&claims).unwrap())
        })
        .collect()
}

async fn count(db: &platform::store::Db, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db.reader())
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

/// Orders awaiting payment and reservations still active: both 0 once checkouts have settled.
async fn open_orders(orders: &platform::store::Db, inventory: &platform::store::Db) -> (i64, i64) {
    let pending = count(orders, "SELECT COUNT(*) FROM orders WHERE status = 'pending'").await;
    let active = count(inventory, "SELECT COUNT(*) FROM reservations WHERE status = 'active'").await;
    (pending, active)
}

/// Units of the flash sale's product in orders that are paid (or further along).
async fn flash_paid(orders: &platform::store::Db) -> i64 {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(l.quantity), 0) AS BIGINT) FROM order_lines l JOIN orders o ON o.id = l.order_id
         WHERE l.sku = 'FLASH-1' AND o.status IN ('paid', 'processing', 'shipped', 'out_for_delivery', 'delivered')",
    )
    .fetch_one(orders.reader())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_survive_killed_processes_and_restarted_brokers() {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    // The flash sale runs with the default reservation time (15 minutes): every placed order's
    // payment is in long before it, so exactly the stock is paid. The storm then restarts
    // inventory and orders with 30 s (below).
    let Some(mut stack) = Stack::start_with(
        true,
        &[
            ("MERCATO_PAYMENTS__MOCK_AUTO", "true"),
            ("MERCATO_INVENTORY__SWEEP_INTERVAL_SECS", "1"),
            ("MERCATO_RATE_LIMIT__PER_IP_PER_MINUTE", "1000000"),
            ("MERCATO_RATE_LIMIT__PER_USER_PER_MINUTE", "1000000"),
            ("MERCATO_GATEWAY__HEALTH_INTERVAL_MS", "250"),
            ("MERCATO_DATABASE__MAX_CONNECTIONS", "6"),
        ],
    ) else {
        return;
    };
    let admin = stack.admin_token().await;
    let category = stack
        .post("/api/v1/admin/categories", Some(&admin), json!({"name": "Faults"}))
        .await
        .expect(201)
        .body;
    for (name, sku, price) in [("Gale Umbrella", "FLASH-1", 1_999), ("Storm Poncho", "STORM-1", 750)] {
        stack
            .post(
                "/api/v1/products",
                Some(&admin),
                json!({
                    "name": name, "brand": "Acme", "category_id": category["id"], "status": "active",
                    "variants": [{"sku": sku, "price": price}],
                }),
            )
            .await
            .expect(201);
    }
    for (sku, on_hand) in [("FLASH-1", FLASH_STOCK), ("STORM-1", STORM_STOCK)] {
        let path = format!("/api/v1/admin/inventory/{sku}");
        eventually(&format!("inventory learning {sku}"), || async {
            (stack.get(&path, Some(&admin)).await.status == StatusCode::OK).then_some(())
        })
        .await;
        stack
            .put(&path, Some(&admin), json!({"on_hand": on_hand}))
            .await
            .expect(200);
    }

    // ----- the flash sale: 2,000 checkouts for 100 units, 200 at a time, two orders replicas.
    let buyers = minted_customers(&stack, 2_000).await;
    stream::iter(&buyers)
        .for_each_concurrent(200, |(_, token)| add_to_cart(&stack, token, "FLASH-1", 1))
        .await;
    let answers: Vec<Answer> = stream::iter(&buyers)
        .map(|(id, token)| {
            let stack = &stack;
            async move { checkout(stack, token, &format!("flash-{id}")).await }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let placed = answers.iter().filter(|a| matches!(a, Answer::Placed(_))).count();
    let short = answers.iter().filter(|a| **a == Answer::Short).count();
    if placed != 100 || placed + short != 2_000 {
        let inventory = stack.db("inventory").await;
        let reservations: Vec<(String, i64)> = sqlx::query("SELECT status, COUNT(*) FROM reservations GROUP BY status")
            .fetch_all(inventory.reader())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let flash = stack.get("/api/v1/admin/inventory/FLASH-1", Some(&admin)).await.body;
        panic!("{placed} placed and {short} short of 2,000: stock {flash}, reservations {reservations:?}");
    }
    // The sale settles: every placed order paid, no reservation left active.
    let orders_db = stack.db("orders").await;
    let inventory_db = stack.db("inventory").await;
    let sale_settled = platform::testing::eventually(Duration::from_secs(120), || async {
        let (pending, active) = open_orders(&orders_db, &inventory_db).await;
        (pending == 0 && active == 0).then_some(())
    })
    .await;
    assert!(sale_settled.is_some(), "the flash sale has not settled after 120 s");
    assert_eq!(
        flash_paid(&orders_db).await,
        FLASH_STOCK,
        "exactly the flash sale's stock is paid"
    );

    // Unpaid orders of the storm (their checkout cut off by a kill) close within the test: the
    // reservation after 30 s, an order that never got one after 60 s.
    stack.set("MERCATO_INVENTORY__RESERVATION_TTL_SECS", "30");
    for process in ["inventory-1", "orders-1", "orders-2"] {
        stack.kill(process).await;
        stack.revive(process).await;
    }

    // ----- the storm: shoppers check out one unit after another while processes die.
    let mut shoppers = Vec::new();
    for n in 0..24 {
        let email = format!("storm{n}@example.com");
        let registered = stack
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "full_name": format!("Storm {n}"), "password": PASSWORD}),
            )
            .await
            .expect(201)
            .body;
        shoppers.push((n, token_of(&registered)));
    }
    // A cart filled before Redis goes down, looked at after it is back.
    let (_, keeper) = &minted_customers(&stack, 1).await[0];
    add_to_cart(&stack, keeper, "STORM-1", 3).await;

    let stop = AtomicBool::new(false);
    let ledger = Mutex::new(Vec::new());
    let shop = |n: usize, token: String| {
        let (stop, ledger, stack) = (&stop, &ledger, &stack);
        async move {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                one_in_cart(stack, &token, "STORM-1").await;
                let answer = checkout(stack, &token, &format!("storm-{n}-{round}")).await;
                ledger.lock().unwrap().push(answer);
                round += 1;
            }
        }
    };
    let seed = u64::from(std::process::id()) * 0x9E37_79B9 + 1;
    eprintln!("fault moments seed: {seed}");
    let mut moments = Moments(seed);
    let faults = async {
        let mut kills = Vec::new();
        let began = Instant::now();
        for round in 0..21 {
            let victim = ["orders-1", "payments-1", "orders-2"][round % 3];
            tokio::time::sleep(Duration::from_millis(300 + moments.next_ms(1_200))).await;
            stack.kill(victim).await;
            kills.push(victim);
            stack.revive(victim).await;
            eprintln!("{:>6.1} s: killed and revived {victim}", began.elapsed().as_secs_f64());
        }
        // NATS in the middle of the stream: events wait in the outboxes, consumers reconnect.
        tokio::time::sleep(Duration::from_millis(500 + moments.next_ms(1_000))).await;
        stack.kill("nats").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.revive("nats").await;
        kills.push("nats");
        eprintln!("{:>6.1} s: killed and restarted NATS", began.elapsed().as_secs_f64());
        // Redis: rate limits fail open (the catalog keeps serving), carts answer 503 until it is
        // back, then hold what they held.
        tokio::time::sleep(Duration::from_millis(500 + moments.next_ms(1_000))).await;
        stack.kill("redis").await;
        kills.push("redis");
        let products = stack.get("/api/v1/products", None).await;
        assert_eq!(
            products.status,
            StatusCode::OK,
            "the catalog serves without Redis: {:?}",
            products.body
        );
        let cart = stack
            .client
            .get(format!("{}/api/v1/cart", stack.url))
            .bearer_auth(keeper)
            .send()
            .await
            .unwrap();
        assert_eq!(cart.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            cart.headers()["content-type"],
            "application/problem+json",
            "a clear problem, not a hang"
        );
        stack.revive("redis").await;
        eprintln!("{:>6.1} s: killed and restarted Redis", began.elapsed().as_secs_f64());
        let cart = eventually("the cart answering again", || async {
            let cart = stack.get("/api/v1/cart", Some(keeper)).await;
            (cart.status == StatusCode::OK).then_some(cart.body)
        })
        .await;
        assert_eq!(cart["lines"][0]["quantity"], 3, "the cart survived the restart: {cart}");
        // A little more stream after the last fault, then the shoppers finish their round.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::SeqCst);
        kills
    };
    let (kills, _) = futures::join!(
        faults,
        futures::future::join_all(shoppers.into_iter().map(|(n, token)| shop(n, token)))
    );
    let process_kills = kills
        .iter()
        .filter(|k| k.starts_with("orders") || k.starts_with("payments"))
        .count();
    assert!(process_kills >= 20, "{kills:?}");
    let storm = ledger.into_inner().unwrap();
    eprintln!("storm checkouts answered: {}", storm.len());
    assert!(
        storm.iter().filter(|a| matches!(a, Answer::Placed(_))).count() >= 20,
        "checkouts went through during the storm: {storm:?}"
    );

    // ----- afterwards: everything settles, then the books must agree.
    let payments_db = stack.db("payments").await;
    let mut dbs = Vec::new();
    for service in platform::config::SERVICES_WITH_DATABASES {
        dbs.push((service, stack.db(service).await));
    }
    let settled = platform::testing::eventually(Duration::from_secs(240), || async {
        let (pending, active) = open_orders(&orders_db, &inventory_db).await;
        let mut unpublished = 0;
        for (_, db) in &dbs {
            unpublished += count(db, "SELECT COUNT(*) FROM outbox").await;
        }
        (pending == 0 && active == 0 && unpublished == 0).then_some(())
    })
    .await;
    if settled.is_none() {
        let (pending, active) = open_orders(&orders_db, &inventory_db).await;
        let mut outboxes = Vec::new();
        for (service, db) in &dbs {
            outboxes.push((service, count(db, "SELECT COUNT(*) FROM outbox").await));
        }
        panic!(
            "not settled after 240 s: {pending} orders pending, {active} reservations active, outboxes {outboxes:?}"
        );
    }

    // Money: a charged order has exactly its total captured once; any other order nothing.
    let orders: Vec<(String, String, String, i64)> =
        sqlx::query("SELECT id, number, status, total_minor FROM orders ORDER BY id")
            .fetch_all(orders_db.reader())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
    let mut charges: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for row in sqlx::query("SELECT order_id, captured_minor, refunded_minor FROM payments")
        .fetch_all(payments_db.reader())
        .await
        .unwrap()
    {
        charges.entry(row.get(0)).or_default().push((row.get(1), row.get(2)));
    }
    let mut charged_orders = 0;
    for (id, number, status, total) in &orders {
        let payments = charges.get(id).cloned().unwrap_or_default();
        let standing: Vec<&(i64, i64)> = payments
            .iter()
            .filter(|(captured, refunded)| captured > refunded)
            .collect();
        if CHARGED.contains(&status.as_str()) {
            charged_orders += 1;
            assert_eq!(
                standing.len(),
                1,
                "{number} ({status}) is charged exactly once: {payments:?}"
            );
            assert_eq!(
                standing[0],
                &(*total, 0),
                "{number} ({status}) captured its total: {payments:?}"
            );
        } else {
            assert!(standing.is_empty(), "{number} ({status}) keeps no money: {payments:?}");
        }
    }
    let standing_payments = charges
        .values()
        .flatten()
        .filter(|(captured, refunded)| captured > refunded)
        .count();
    assert_eq!(charged_orders, standing_payments, "paid orders = captured payments");

    // Stock: every reservation committed (its order paid) or released (its order not).
    let reservations: BTreeMap<String, String> = sqlx::query("SELECT order_id, status FROM reservations")
        .fetch_all(inventory_db.reader())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (id, number, status, _) in &orders {
        if let Some(reservation) = reservations.get(id) {
            let expected = if CHARGED.contains(&status.as_str()) {
                "committed"
            } else {
                "released"
            };
            assert_eq!(reservation, expected, "{number} is {status}");
        } else {
            assert!(
                !CHARGED.contains(&status.as_str()),
                "{number} was paid without a reservation"
            );
        }
    }
    assert_eq!(
        flash_paid(&orders_db).await,
        FLASH_STOCK,
        "the storm changed nothing of the sale"
    );
    let flash = stack
        .get("/api/v1/admin/inventory/FLASH-1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (flash["on_hand"].as_i64(), flash["reserved"].as_i64()),
        (Some(0), Some(0)),
        "{flash}"
    );
    let sold: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(l.quantity), 0) AS BIGINT) FROM order_lines l JOIN orders o ON o.id = l.order_id
         WHERE l.sku = 'STORM-1' AND o.status IN ('paid', 'processing', 'shipped', 'out_for_delivery', 'delivered')",
    )
    .fetch_one(orders_db.reader())
    .await
    .unwrap();
    let storm_stock = stack
        .get("/api/v1/admin/inventory/STORM-1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(
        storm_stock["on_hand"].as_i64(),
        Some(STORM_STOCK - sold),
        "{storm_stock}"
    );

    // Events: each paid order got its shipment and its customer one "payment received" email;
    // no email went out twice.
    let notifications = stack.db("notifications").await;
    let sent: Vec<(String, String, String)> =
        sqlx::query("SELECT recipient, subject, event_id FROM notification_log WHERE status = 'sent'")
            .fetch_all(notifications.reader())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
    // No event mailed twice, and no order's email twice (a low-stock alert may rightly come
    // again: the stock can cross its threshold again when reservations expire).
    let mut times: HashMap<(&str, &str), usize> = HashMap::new();
    for (recipient, subject, event_id) in &sent {
        *times.entry((recipient, event_id)).or_default() += 1;
        if subject.contains("ORD-") {
            *times.entry((recipient, subject)).or_default() += 1;
        }
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "emails sent more than once: {twice:?}");
    let delivery = stack.db("delivery").await;
    let shipped: Vec<String> = sqlx::query_scalar("SELECT order_id FROM shipments")
        .fetch_all(delivery.reader())
        .await
        .unwrap();
    let storm_customers: Vec<String> = sqlx::query_scalar("SELECT id FROM users WHERE email LIKE 'storm%'")
        .fetch_all(dbs[0].1.reader())
        .await
        .unwrap();
    for (id, number, status, _) in &orders {
        if !CHARGED.contains(&status.as_str()) {
            continue;
        }
        assert_eq!(
            shipped.iter().filter(|o| *o == id).count(),
            1,
            "{number} has one shipment"
        );
        let user: String = sqlx::query_scalar("SELECT user_id FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(orders_db.reader())
            .await
            .unwrap();
        if storm_customers.contains(&user) {
            let subject = format!("Payment received — {number}");
            assert!(
                sent.iter().any(|(_, s, _)| *s == subject),
                "{number}: the payment email was sent"
            );
        }
    }
}
