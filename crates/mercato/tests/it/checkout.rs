//! Checkout end to end in the all-in-one mode: the paid journey through the mock provider's
//! hosted page, the declined one, idempotency keys, a flash sale, coupon races, a provider
//! outage, cash on delivery through delivery and a return, and who may see what.

use std::time::Duration;

use futures::future::join_all;
use platform::auth::{Claims, Role};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cart::stocked;
use crate::helpers::{Reply, TestApp};

pub(crate) fn address() -> Value {
    json!({"full_name": "Ada Buyer", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "de"})
}

pub(crate) fn card() -> Value {
    json!({"payment_method": "card", "shipping_address": address()})
}

pub(crate) async fn checkout(app: &TestApp, token: &str, key: impl AsRef<str>, body: Value) -> Reply {
    let response = app
        .client
        .post(format!("{}/api/v1/checkout", app.url))
        .bearer_auth(token)
        .header("Idempotency-Key", key.as_ref())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// A valid access token for a new customer id, signed by identity's key (no account behind it:
/// checkout needs none besides the token, and hashing 2 000 passwords would be the slow part).
pub(crate) async fn minted_customer(app: &TestApp) -> (Uuid, String) {
    let id = Uuid::now_v7();
    let now = platform::clock::now_ms() / 1000;
    let claims = Claims {
        iss: app.config.auth.issuer.clone(),
        aud: app.config.auth.audience.clone(),
        sub: id.to_string(),
        role: Role::Customer,
        iat: now,
        exp: now + 3600,
        sid: Uuid::now_v7().to_string(),
    };
    let signer = app.app.identity.keys().signer().await.unwrap();
    (id, signer.sign(&claims).unwrap())
}

pub(crate) async fn add_to_cart(app: &TestApp, token: &str, sku: &str, quantity: i64) {
    app.post(
        "/api/v1/cart/items",
        Some(token),
        json!({"sku": sku, "quantity": quantity}),
    )
    .await
    .expect(200);
}

/// The path of a hosted-page URL (the configured public URL is not the test server's).
pub(crate) fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/')
        .map_or_else(|| "/".to_owned(), |at| rest[at..].to_owned())
}

async fn order_status(app: &TestApp, token: &str, order_id: &str) -> String {
    app.get(&format!("/api/v1/orders/{order_id}"), Some(token))
        .await
        .expect(200)
        .body["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn wait_for_status(app: &TestApp, token: &str, order_id: &str, status: &str) {
    let reached = platform::testing::eventually(Duration::from_secs(20), || async {
        (order_status(app, token, order_id).await == status).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "order {order_id} did not become {status}; it is {}",
        order_status(app, token, order_id).await
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Sqlite,
    Postgres,
}

/// The app with orders, payments, inventory and carts on SQLite, or each on its own PostgreSQL
/// database (`None` when `MERCATO_TEST_POSTGRES_URL` is not set).
async fn spawn(on: On, configure: impl FnOnce(&mut platform::config::Config)) -> Option<TestApp> {
    let mut urls = Vec::new();
    if on == On::Postgres {
        for service in ["orders", "payments", "inventory", "cart"] {
            match platform::testing::postgres_database_url()
                .await
                .expect("test database created")
            {
                Some(url) => urls.push((service, url)),
                None => {
                    eprintln!("MERCATO_TEST_POSTGRES_URL is not set: checkout on PostgreSQL skipped");
                    return None;
                }
            }
        }
    }
    let app = TestApp::spawn_with(
        |config| {
            for (service, url) in urls {
                config.database.urls.insert(service.to_owned(), url);
            }
            if on == On::Postgres {
                config.database.max_connections = 8;
            }
            configure(config);
        },
        Vec::new(),
    )
    .await;
    let backend = if on == On::Postgres {
        platform::store::Backend::Postgres
    } else {
        platform::store::Backend::Sqlite
    };
    assert_eq!(app.app.orders.db().backend(), backend);
    assert_eq!(app.app.payments.db().backend(), backend);
    Some(app)
}

/// PostgreSQL allows 100 connections by default; each app opens four pools. The checkout
/// tests on PostgreSQL take turns so they never run the server out of connections.
static POSTGRES_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test run on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$body(super::On::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                let _turn = super::POSTGRES_TURN.lock().await;
                super::$body(super::On::Postgres).await;
            }
        }
    };
}

/// Waits (up to 10 s) until the order's payment, as its owner sees it, passes `ready`.
async fn payment_when(app: &TestApp, token: &str, order_id: &str, ready: impl Fn(&Value) -> bool) -> Option<Value> {
    platform::testing::eventually(Duration::from_secs(10), || async {
        let payment = app
            .get(&format!("/api/v1/payments/{order_id}"), Some(token))
            .await
            .expect(200)
            .body;
        ready(&payment).then_some(payment)
    })
    .await
}

async fn stock(app: &TestApp, admin: &str, sku: &str) -> Value {
    app.get(&format!("/api/v1/admin/inventory/{sku}"), Some(admin))
        .await
        .expect(200)
        .body
}

on_both!(
    card_journey,
    a_card_checkout_is_paid_on_the_hosted_page_then_stock_is_committed_and_the_cart_emptied
);

async fn a_card_checkout_is_paid_on_the_hosted_page_then_stock_is_committed_and_the_cart_emptied(on: On) {
    let Some(app) = spawn(on, |config| {
        config.orders.tax_rates_bps.insert("DE".to_owned(), 1_900);
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "JOURNEY-1", 1_250, 10).await;
    let token = app.customer_token("journey@example.com").await;
    add_to_cart(&app, &token, "JOURNEY-1", 2).await;

    let placed = checkout(&app, &token, "journey-key-1", card()).await.expect(201).body;
    let order = &placed["order"];
    let order_id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["status"], "pending");
    assert!(order["number"].as_str().unwrap().starts_with("ORD-"), "{order}");
    // 2 × 12.50 = 25.00 < 50.00: flat shipping 4.99; 19 % German tax on 29.99 = 5.70.
    assert_eq!(
        order["totals"],
        json!({"subtotal": 2_500, "discount": 0, "shipping": 499, "tax": 570, "total": 3_569})
    );
    assert_eq!(order["shipping_address"]["country"], "DE");
    assert_eq!(stock(&app, &admin, "JOURNEY-1").await["reserved"], 2);

    let payment = &placed["payment"];
    assert_eq!(payment["status"], "requires_action");
    let page_path = path_of(payment["redirect_url"].as_str().unwrap());
    let page = app.client.get(format!("{}{page_path}", app.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("35.69") && html.contains("Approve"), "{html}");
    // Something else goes into the cart while the buyer is at the provider's page.
    stocked(&app, &admin, "JOURNEY-2", 300, 10).await;
    add_to_cart(&app, &token, "JOURNEY-2", 1).await;
    let approved = app
        .client
        .post(format!("{}{page_path}/approve", app.url))
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_success(), "{}", approved.status());

    wait_for_status(&app, &token, &order_id, "paid").await;
    app.wait_for_event("inventory.committed", &order_id).await;
    let levels = stock(&app, &admin, "JOURNEY-1").await;
    assert_eq!(
        (levels["on_hand"].as_i64(), levels["reserved"].as_i64()),
        (Some(8), Some(0))
    );
    let emptied = platform::testing::eventually(Duration::from_secs(10), || async {
        let cart = app.get("/api/v1/cart", Some(&token)).await.expect(200).body;
        let skus: Vec<String> = cart["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sku"].as_str().unwrap().to_owned())
            .collect();
        (skus == ["JOURNEY-2"]).then_some(())
    })
    .await;
    assert!(
        emptied.is_some(),
        "what was bought leaves the cart once the order is paid; what was added since stays"
    );

    let receipt = app
        .get(&format!("/api/v1/payments/{order_id}"), Some(&token))
        .await
        .expect(200)
        .body;
    assert_eq!(receipt["status"], "succeeded");
    assert_eq!(receipt["receipt"]["amount_minor"], 3_569);
    assert_eq!(receipt["receipt"]["method"], "card");

    let timeline = app
        .get(&format!("/api/v1/orders/{order_id}/timeline"), Some(&token))
        .await
        .expect(200)
        .body;
    let moves: Vec<(&str, &str)> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "status")
        .map(|e| (e["from_status"].as_str().unwrap(), e["to_status"].as_str().unwrap()))
        .collect();
    assert_eq!(moves, vec![("pending", "paid")]);
    assert!(timeline.as_array().unwrap().iter().any(|e| e["kind"] == "payment"));

    let user_id = order["user_id"].as_str().unwrap();
    let checked_out = app.wait_for_event("cart.checked_out", user_id).await;
    assert_eq!(checked_out.data["order_id"], order_id.as_str());
    assert_eq!(checked_out.data["item_count"], 2);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mercato_checkouts_total{outcome=\"placed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mercato_webhooks_total{outcome=\"applied\"}"),
        "{metrics}"
    );
    let mine = app.get("/api/v1/orders", Some(&token)).await.expect(200).body;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert!(app.outboxes_drain().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_fails_the_order_and_releases_its_stock() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "DECLINE-1", 900, 5).await;
    let token = app.customer_token("decline@example.com").await;
    add_to_cart(&app, &token, "DECLINE-1", 3).await;
    let placed = checkout(&app, &token, "decline-key", card()).await.expect(201).body;
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(stock(&app, &admin, "DECLINE-1").await["reserved"], 3);
    let page_path = path_of(placed["payment"]["redirect_url"].as_str().unwrap());
    let declined = app
        .client
        .post(format!("{}{page_path}/decline", app.url))
        .send()
        .await
        .unwrap();
    assert!(declined.status().is_success());
    wait_for_status(&app, &token, &order_id, "payment_failed").await;
    app.wait_for_event("inventory.released", &order_id).await;
    let levels = stock(&app, &admin, "DECLINE-1").await;
    assert_eq!(
        (levels["on_hand"].as_i64(), levels["reserved"].as_i64()),
        (Some(5), Some(0))
    );
    let cart = app.get("/api/v1/cart", Some(&token)).await.expect(200).body;
    assert_eq!(
        cart["lines"].as_array().unwrap().len(),
        1,
        "a declined order leaves the cart"
    );
    assert!(app.outboxes_drain().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_refuse_other_bodies_and_keep_nothing_for_invalid_requests() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "IDEM-1", 1_000, 20).await;
    let token = app.customer_token("idem@example.com").await;
    add_to_cart(&app, &token, "IDEM-1", 1).await;

    // No key, or a key that is not one: 422 and nothing happens.
    let missing = app.post("/api/v1/checkout", Some(&token), card()).await;
    missing.expect_problem(422);
    checkout(&app, &token, "has space", card()).await.expect_problem(422);

    // An invalid body under a key stores nothing: the same key then works with a valid body.
    let invalid = json!({"payment_method": "bitcoin", "shipping_address": address()});
    checkout(&app, &token, "key-a", invalid).await.expect_problem(422);
    let first = checkout(&app, &token, "key-a", card()).await.expect(201);
    assert!(first.headers.get("idempotency-replayed").is_none());

    let replay = checkout(&app, &token, "key-a", card()).await.expect(201);
    assert_eq!(
        replay.body, first.body,
        "the stored response, byte for byte the same JSON"
    );
    assert_eq!(replay.headers["idempotency-replayed"], "true");

    let other = json!({"payment_method": "wallet", "shipping_address": address()});
    checkout(&app, &token, "key-a", other).await.expect_problem(422);

    // Keys are the caller's: another customer's identical key is a different checkout.
    let stranger = app.customer_token("idem-other@example.com").await;
    add_to_cart(&app, &stranger, "IDEM-1", 1).await;
    let theirs = checkout(&app, &stranger, "key-a", card()).await.expect(201);
    assert_ne!(theirs.body["order"]["id"], first.body["order"]["id"]);

    let orders = app.get("/api/v1/orders", Some(&token)).await.expect(200).body;
    assert_eq!(orders["items"].as_array().unwrap().len(), 1);
    assert!(app.outboxes_drain().await);
}

on_both!(
    fifty_parallel,
    fifty_parallel_identical_checkouts_make_one_order_and_one_payment
);

async fn fifty_parallel_identical_checkouts_make_one_order_and_one_payment(on: On) {
    let Some(app) = spawn(on, |_| {}).await else { return };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "PAR-1", 2_000, 100).await;
    let token = app.customer_token("parallel@example.com").await;
    add_to_cart(&app, &token, "PAR-1", 2).await;
    let replies = join_all((0..50).map(|_| checkout(&app, &token, "same-key", card()))).await;
    let first = &replies[0].body;
    for reply in &replies {
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(reply.body, *first);
    }
    let order_id = first["order"]["id"].as_str().unwrap();
    let orders = app
        .get("/api/v1/admin/orders?limit=100", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(orders["items"].as_array().unwrap().len(), 1, "one order");
    let payments = app
        .get("/api/v1/admin/payments?limit=100", Some(&admin))
        .await
        .expect(200)
        .body;
    let payments = payments["items"].as_array().unwrap();
    assert_eq!(payments.len(), 1, "one payment");
    assert_eq!(payments[0]["order_id"], order_id);
    assert_eq!(stock(&app, &admin, "PAR-1").await["reserved"], 2, "reserved once");
    assert!(app.outboxes_drain().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_prices_totals_and_statuses_are_ignored_and_strangers_see_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "HONEST-1", 4_000, 10).await;
    let alice = app.customer_token("alice-orders@example.com").await;
    add_to_cart(&app, &alice, "HONEST-1", 1).await;
    let mut body = card();
    body["total"] = json!(1);
    body["totals"] = json!({"total": 1, "subtotal": 1});
    body["status"] = json!("paid");
    body["items"] = json!([{"sku": "HONEST-1", "unit_price": 1, "quantity": 50}]);
    body["price"] = json!(1);
    let placed = checkout(&app, &alice, "honest-key", body).await.expect(201).body;
    let order = &placed["order"];
    assert_eq!(order["status"], "pending");
    assert_eq!(order["items"][0]["unit_price"], 4_000);
    assert_eq!(order["items"][0]["quantity"], 1);
    assert_eq!(order["totals"]["total"], 4_000 + 499);
    assert_eq!(placed["payment"]["status"], "requires_action");
    let order_id = order["id"].as_str().unwrap();

    let bob = app.customer_token("bob-orders@example.com").await;
    app.get(&format!("/api/v1/orders/{order_id}"), Some(&bob))
        .await
        .expect_problem(404);
    app.get(&format!("/api/v1/orders/{order_id}/timeline"), Some(&bob))
        .await
        .expect_problem(404);
    app.get(&format!("/api/v1/payments/{order_id}"), Some(&bob))
        .await
        .expect_problem(404);
    app.post(&format!("/api/v1/orders/{order_id}/cancel"), Some(&bob), json!({}))
        .await
        .expect_problem(404);
    assert!(app.get("/api/v1/orders", Some(&bob)).await.expect(200).body["items"]
        .as_array()
        .unwrap()
        .is_empty());
    app.get("/api/v1/admin/orders", Some(&bob)).await.expect_problem(403);
    app.get(&format!("/api/v1/orders/{order_id}"), None)
        .await
        .expect_problem(401);
    // The admin sees it.
    app.get(&format!("/api/v1/admin/orders/{order_id}"), Some(&admin))
        .await
        .expect(200);
    assert!(app.outboxes_drain().await);
}

on_both!(flash_sale, a_flash_sale_of_2000_checkouts_on_100_units_pays_exactly_100);

async fn a_flash_sale_of_2000_checkouts_on_100_units_pays_exactly_100(on: On) {
    let Some(app) = spawn(on, |config| config.payments.mock_auto = true).await else {
        return;
    };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "FLASH-1", 1_999, 100).await;
    let mut buyers = Vec::new();
    for _ in 0..2_000 {
        buyers.push(minted_customer(&app).await);
    }
    for chunk in buyers.chunks(200) {
        join_all(chunk.iter().map(|(_, token)| add_to_cart(&app, token, "FLASH-1", 1))).await;
    }
    let mut created = Vec::new();
    let mut short = 0;
    for chunk in buyers.chunks(200) {
        let replies = join_all(
            chunk
                .iter()
                .map(|(id, token)| checkout(&app, token, format!("flash-{id}"), card())),
        )
        .await;
        for reply in replies {
            match reply.status.as_u16() {
                201 => created.push(reply.body["order"]["id"].as_str().unwrap().to_owned()),
                409 => {
                    assert_eq!(reply.body["shortages"][0]["sku"], "FLASH-1", "{}", reply.body);
                    short += 1;
                }
                other => panic!("unexpected {other}: {}", reply.body),
            }
        }
    }
    assert_eq!(created.len(), 100, "exactly the stock is sold");
    assert_eq!(short, 1_900);
    // Generous bounds: the whole suite shares two cores while this waits.
    let all_paid = platform::testing::eventually(Duration::from_secs(180), || async {
        let paid = app
            .get("/api/v1/admin/orders?status=paid&limit=100", Some(&admin))
            .await
            .expect(200)
            .body["items"]
            .as_array()
            .unwrap()
            .len();
        (paid == 100).then_some(())
    })
    .await;
    assert!(all_paid.is_some(), "the automatic provider pays all 100");
    let levels = platform::testing::eventually(Duration::from_secs(180), || async {
        let levels = stock(&app, &admin, "FLASH-1").await;
        (levels["reserved"] == 0).then_some(levels)
    })
    .await;
    let levels = match levels {
        Some(levels) => levels,
        None => panic!(
            "every reservation committed or released; now {} with reservations {}",
            stock(&app, &admin, "FLASH-1").await,
            app.get("/api/v1/admin/reservations?status=active", Some(&admin))
                .await
                .body
        ),
    };
    assert_eq!(levels["on_hand"], 0, "0 oversold, none left");
    let cancelled = app
        .get("/api/v1/admin/orders?status=cancelled&limit=1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(cancelled["items"][0]["cancel_reason"], "out_of_stock");
    assert!(app.outboxes_drain().await);
}

on_both!(
    coupon_race,
    the_last_use_of_a_coupon_goes_to_one_of_two_concurrent_checkouts
);

async fn the_last_use_of_a_coupon_goes_to_one_of_two_concurrent_checkouts(on: On) {
    let Some(app) = spawn(on, |_| {}).await else { return };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "COUPON-1", 10_000, 50).await;
    let coupon = app
        .post(
            "/api/v1/admin/coupons",
            Some(&admin),
            json!({"code": "last-one", "kind": "percent", "value": 10, "usage_limit": 1, "min_subtotal_minor": 5_000}),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(coupon["code"], "LAST-ONE");
    app.post(
        "/api/v1/admin/coupons",
        Some(&admin),
        json!({"code": "LAST-ONE", "kind": "fixed", "value": 1}),
    )
    .await
    .expect_problem(409);
    app.post(
        "/api/v1/admin/coupons",
        Some(&admin),
        json!({"code": "BAD", "kind": "percent", "value": 150}),
    )
    .await
    .expect_problem(422);

    let mut tokens = Vec::new();
    for n in 0..2 {
        let (_, token) = minted_customer(&app).await;
        add_to_cart(&app, &token, "COUPON-1", 1).await;
        tokens.push((n, token));
    }
    let body = json!({"payment_method": "card", "shipping_address": address(), "coupon_code": "last-one"});
    let replies = join_all(
        tokens
            .iter()
            .map(|(n, token)| checkout(&app, token, format!("coupon-{n}"), body.clone())),
    )
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 1, "{statuses:?}");
    let winner = replies.iter().find(|r| r.status == 201).unwrap();
    assert_eq!(winner.body["order"]["totals"]["discount"], 1_000);
    assert_eq!(winner.body["order"]["coupon_code"], "LAST-ONE");
    let id = coupon["id"].as_str().unwrap();
    let used = app
        .get(&format!("/api/v1/admin/coupons/{id}"), Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(used["used_count"], 1);

    // Cancelling the winner's order gives the use back.
    let order_id = winner.body["order"]["id"].as_str().unwrap();
    let (_, winner_token) = tokens
        .iter()
        .zip(&replies)
        .find(|(_, r)| r.status == 201)
        .map(|(t, _)| t.clone())
        .unwrap();
    app.post(
        &format!("/api/v1/orders/{order_id}/cancel"),
        Some(&winner_token),
        json!({"reason": "changed my mind"}),
    )
    .await
    .expect(200);
    let used = app
        .get(&format!("/api/v1/admin/coupons/{id}"), Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(used["used_count"], 0);
    // A subtotal under the minimum is refused before anything is kept.
    let (_, small) = minted_customer(&app).await;
    stocked(&app, &admin, "COUPON-2", 100, 5).await;
    add_to_cart(&app, &small, "COUPON-2", 1).await;
    checkout(&app, &small, "coupon-small", body).await.expect_problem(422);
    assert!(app.outboxes_drain().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_fails_checkout_fast_and_leaves_nothing_held() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "OUTAGE-1", 500, 4).await;
    let token = app.customer_token("outage@example.com").await;
    add_to_cart(&app, &token, "OUTAGE-1", 2).await;
    app.app.payments.set_provider_available(false);
    let reply = checkout(&app, &token, "outage-key", card()).await.expect_problem(503);
    assert!(reply.headers.get("retry-after").is_some());
    assert_eq!(stock(&app, &admin, "OUTAGE-1").await["reserved"], 0, "released at once");
    let orders = app.get("/api/v1/orders", Some(&token)).await.expect(200).body;
    let order = &orders["items"][0];
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["cancel_reason"], "payment_unavailable");

    // The key was let go: once the provider is back, the same key checks out.
    app.app.payments.set_provider_available(true);
    let retried = checkout(&app, &token, "outage-key", card()).await;
    // The breaker may still be open right after the outage; it lets a trial through later.
    if retried.status == 201 {
        assert_eq!(retried.body["order"]["status"], "pending");
        assert_eq!(stock(&app, &admin, "OUTAGE-1").await["reserved"], 2);
    } else {
        retried.expect_problem(503);
    }
    assert!(app.outboxes_drain().await);
}

on_both!(
    cod_and_returns,
    cash_on_delivery_ships_is_collected_on_delivery_and_can_be_returned_and_refunded
);

async fn cash_on_delivery_ships_is_collected_on_delivery_and_can_be_returned_and_refunded(on: On) {
    let Some(app) = spawn(on, |_| {}).await else { return };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "COD-1", 3_000, 6).await;
    let token = app.customer_token("cod@example.com").await;
    add_to_cart(&app, &token, "COD-1", 2).await;
    let body = json!({"payment_method": "cod", "shipping_address": address()});
    let placed = checkout(&app, &token, "cod-key", body).await.expect(201).body;
    assert_eq!(placed["order"]["status"], "processing");
    assert_eq!(placed["payment"]["status"], "awaiting_delivery");
    assert!(placed["payment"].get("redirect_url").is_none());
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    app.wait_for_event("inventory.committed", &order_id).await;
    assert_eq!(stock(&app, &admin, "COD-1").await["on_hand"], 4);

    let status = format!("/api/v1/admin/orders/{order_id}/status");
    // The state machine says no to skipping ahead or going back.
    app.patch(&status, Some(&admin), json!({"status": "delivered"}))
        .await
        .expect_problem(409);
    app.patch(&status, Some(&admin), json!({"status": "paid"}))
        .await
        .expect_problem(422);
    app.patch(&status, Some(&admin), json!({"status": "shipped", "version": 1}))
        .await
        .expect_problem(409);
    app.patch(&status, Some(&admin), json!({"status": "shipped", "reason": "DHL 123"}))
        .await
        .expect(200);
    app.post(&format!("/api/v1/orders/{order_id}/cancel"), Some(&token), json!({}))
        .await
        .expect_problem(409);
    app.patch(&status, Some(&admin), json!({"status": "out_for_delivery"}))
        .await
        .expect(200);
    let delivered = app
        .patch(&status, Some(&admin), json!({"status": "delivered"}))
        .await
        .expect(200)
        .body;
    assert_eq!(delivered["status"], "delivered");
    let collected = payment_when(&app, &token, &order_id, |payment| payment["status"] == "succeeded")
        .await
        .expect("cash collected on delivery");
    assert_eq!(collected["captured_minor"], placed["order"]["totals"]["total"]);

    // Delivered: the buyer is a verified buyer of the product now.
    let verified = platform::testing::eventually(Duration::from_secs(10), || async {
        app.bus_events()
            .await
            .into_iter()
            .any(|e| e.kind == "order.delivered" && e.data["items"][0]["product_id"].is_string())
            .then_some(())
    })
    .await;
    assert!(verified.is_some(), "order.delivered names the products");

    // A return of one of the two units.
    let returned = app
        .post(
            &format!("/api/v1/orders/{order_id}/returns"),
            Some(&token),
            json!({"items": [{"sku": "COD-1", "quantity": 1}], "reason": "too big"}),
        )
        .await
        .expect(201)
        .body;
    let return_id = returned["id"].as_str().unwrap();
    assert_eq!(returned["status"], "requested");
    assert_eq!(order_status(&app, &token, &order_id).await, "return_requested");
    app.post(
        &format!("/api/v1/admin/returns/{return_id}/receive"),
        Some(&admin),
        json!({}),
    )
    .await
    .expect_problem(409);
    app.post(
        &format!("/api/v1/admin/returns/{return_id}/approve"),
        Some(&admin),
        json!({}),
    )
    .await
    .expect(200);
    let received = app
        .post(
            &format!("/api/v1/admin/returns/{return_id}/receive"),
            Some(&admin),
            json!({"note": "box intact"}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(received["status"], "refunded");
    // One of two units came back: the order is delivered again, and the other may follow.
    assert_eq!(order_status(&app, &token, &order_id).await, "delivered");
    let restocked = platform::testing::eventually(Duration::from_secs(10), || async {
        let levels = stock(&app, &admin, "COD-1").await;
        (levels["on_hand"] == 5).then_some(())
    })
    .await;
    assert!(restocked.is_some(), "the returned unit is back on hand");
    let payment = payment_when(&app, &token, &order_id, |payment| {
        payment["refunded_minor"] == received["refund"]
    })
    .await;
    assert!(payment.is_some(), "the return's amount is refunded");

    // The second unit: a rejected return first (the window still counts from the delivery),
    // then an approved one that brings everything back and closes the order as refunded.
    let returns = format!("/api/v1/orders/{order_id}/returns");
    let again = json!({"items": [{"sku": "COD-1", "quantity": 2}], "reason": "both"});
    app.post(&returns, Some(&token), again).await.expect_problem(422);
    let one = json!({"items": [{"sku": "COD-1", "quantity": 1}], "reason": "the other one too"});
    let second = app.post(&returns, Some(&token), one.clone()).await.expect(201).body;
    let second_id = second["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/admin/returns/{second_id}/reject"),
        Some(&admin),
        json!({"note": "worn"}),
    )
    .await
    .expect(200);
    let delivered_at = app
        .get(&format!("/api/v1/orders/{order_id}"), Some(&token))
        .await
        .expect(200)
        .body["delivered_at"]
        .clone();
    assert_eq!(
        delivered_at, delivered["delivered_at"],
        "a rejection does not restart the window"
    );
    let third = app.post(&returns, Some(&token), one).await.expect(201).body;
    let third_id = third["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/admin/returns/{third_id}/approve"),
        Some(&admin),
        json!({}),
    )
    .await
    .expect(200);
    app.post(
        &format!("/api/v1/admin/returns/{third_id}/receive"),
        Some(&admin),
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(order_status(&app, &token, &order_id).await, "refunded");
    let listed = app.get(&returns, Some(&token)).await.expect(200).body;
    let statuses: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["refunded", "rejected", "refunded"]);
    assert!(app.outboxes_drain().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_is_cancelled_when_its_reservation_expires() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "EXPIRE-1", 700, 3).await;
    let token = app.customer_token("expire@example.com").await;
    add_to_cart(&app, &token, "EXPIRE-1", 3).await;
    let placed = checkout(&app, &token, "expire-key", card()).await.expect(201).body;
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    app.clock.advance(Duration::from_secs(16 * 60));
    assert_eq!(app.app.inventory.release_expired().await.unwrap(), 1);
    wait_for_status(&app, &token, &order_id, "cancelled").await;
    let order = app
        .get(&format!("/api/v1/orders/{order_id}"), Some(&token))
        .await
        .expect(200)
        .body;
    assert_eq!(order["cancel_reason"], "payment_timeout");
    let payment = payment_when(&app, &token, &order_id, |payment| payment["status"] == "cancelled").await;
    assert!(payment.is_some(), "the payment intent is cancelled with the order");
    assert_eq!(stock(&app, &admin, "EXPIRE-1").await["reserved"], 0);
    assert!(app.outboxes_drain().await);
}

/// The backstop for an order whose checkout died with its process before the stock was
/// reserved (so no reservation would ever expire): orders itself cancels what stays pending
/// past twice the reservation's time, and leaves a paid order alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_pending_past_the_unpaid_timeout_is_cancelled_by_orders_itself() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "UNPAID-1", 900, 5).await;
    let stuck = app.customer_token("stuck@example.com").await;
    add_to_cart(&app, &stuck, "UNPAID-1", 2).await;
    let placed = checkout(&app, &stuck, "unpaid-key", card()).await.expect(201).body;
    let stuck_id = placed["order"]["id"].as_str().unwrap().to_owned();
    let payer = app.customer_token("payer@example.com").await;
    add_to_cart(&app, &payer, "UNPAID-1", 1).await;
    let paid = checkout(&app, &payer, "paid-key", card()).await.expect(201).body;
    let paid_id = paid["order"]["id"].as_str().unwrap().to_owned();
    let page_path = path_of(paid["payment"]["redirect_url"].as_str().unwrap());
    let approved = app
        .client
        .post(format!("{}{page_path}/approve", app.url))
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_success(), "{}", approved.status());
    wait_for_status(&app, &payer, &paid_id, "paid").await;

    assert_eq!(
        app.app.orders.cancel_unpaid().await.unwrap(),
        0,
        "nothing is overdue yet"
    );
    app.clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(app.app.orders.cancel_unpaid().await.unwrap(), 1);
    assert_eq!(app.app.orders.cancel_unpaid().await.unwrap(), 0, "cancelled once");
    let order = app
        .get(&format!("/api/v1/orders/{stuck_id}"), Some(&stuck))
        .await
        .expect(200)
        .body;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["cancel_reason"], "payment_timeout");
    wait_for_status(&app, &payer, &paid_id, "paid").await;
    let payment = payment_when(&app, &stuck, &stuck_id, |payment| payment["status"] == "cancelled").await;
    assert!(payment.is_some(), "the payment intent is cancelled with the order");
    let released = platform::testing::eventually(Duration::from_secs(30), || async {
        let levels = stock(&app, &admin, "UNPAID-1").await;
        (levels["reserved"] == 0).then_some(levels)
    })
    .await
    .expect("the stuck order's stock goes back");
    assert_eq!(released["on_hand"], 4, "the paid unit is gone, the stuck two are back");
    assert!(app.outboxes_drain().await);
}

on_both!(
    cancel_after_payment,
    cancelling_a_paid_order_refunds_it_and_puts_the_stock_back
);

async fn cancelling_a_paid_order_refunds_it_and_puts_the_stock_back(on: On) {
    let Some(app) = spawn(on, |config| config.payments.mock_auto = true).await else {
        return;
    };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "REFUND-1", 2_500, 5).await;
    let token = app.customer_token("refund@example.com").await;
    add_to_cart(&app, &token, "REFUND-1", 2).await;
    let placed = checkout(&app, &token, "refund-key", card()).await.expect(201).body;
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &token, &order_id, "paid").await;
    app.wait_for_event("inventory.committed", &order_id).await;
    assert_eq!(stock(&app, &admin, "REFUND-1").await["on_hand"], 3);
    let cancelled = app
        .post(&format!("/api/v1/orders/{order_id}/cancel"), Some(&token), json!({}))
        .await
        .expect(200)
        .body;
    assert_eq!(cancelled["status"], "cancelled");
    let refunded = payment_when(&app, &token, &order_id, |payment| {
        payment["refunded_minor"] == payment["captured_minor"]
    })
    .await
    .expect("refunded in full");
    assert_eq!(refunded["status"], "refunded");
    let back = platform::testing::eventually(Duration::from_secs(10), || async {
        (stock(&app, &admin, "REFUND-1").await["on_hand"] == 5).then_some(())
    })
    .await;
    assert!(back.is_some(), "the units are back on hand");
    assert!(app.outboxes_drain().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sellers_see_only_their_lines_refunds_stay_within_the_capture_and_limits_hold() {
    let app = TestApp::spawn_with(|config| config.payments.mock_auto = true, Vec::new()).await;
    let admin = app.admin_token().await;
    let (seller, seller_id) = crate::catalog::seller(&app, &admin, "maker@sellers.example").await;
    let category = app
        .post("/api/v1/admin/categories", Some(&admin), json!({"name": "Crafts"}))
        .await
        .expect(201)
        .body;
    let product = json!({
        "name": "Clay Mug", "brand": "Maker", "category_id": category["id"], "status": "active",
        "description": "A mug.", "variants": [{"sku": "MAKER-MUG", "price": 1_500}],
    });
    app.post("/api/v1/products", Some(&seller), product).await.expect(201);
    let known = platform::testing::eventually(Duration::from_secs(10), || async {
        (app.get("/api/v1/admin/inventory/MAKER-MUG", Some(&admin)).await.status == 200).then_some(())
    })
    .await;
    assert!(known.is_some());
    app.put(
        "/api/v1/admin/inventory/MAKER-MUG",
        Some(&admin),
        json!({"on_hand": 10}),
    )
    .await
    .expect(200);
    stocked(&app, &admin, "HOUSE-1", 8_500, 10).await;

    let token = app.customer_token("mixed@example.com").await;
    add_to_cart(&app, &token, "MAKER-MUG", 2).await;
    add_to_cart(&app, &token, "HOUSE-1", 1).await;
    let placed = checkout(&app, &token, "mixed-key", card()).await.expect(201).body;
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    let total = placed["order"]["totals"]["total"].as_i64().unwrap();
    assert_eq!(total, 3_000 + 8_500, "free shipping above 50.00, no tax configured");
    wait_for_status(&app, &token, &order_id, "paid").await;

    // The seller sees the order with only the mugs; a customer may not ask.
    let theirs = app.get("/api/v1/seller/orders", Some(&seller)).await.expect(200).body;
    let orders = theirs["items"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    let skus: Vec<&str> = orders[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, vec!["MAKER-MUG"]);
    assert!(orders[0].get("totals").is_none() && orders[0].get("user_id").is_none());
    app.get("/api/v1/seller/orders", Some(&token)).await.expect_problem(403);
    let by_admin = app
        .get(&format!("/api/v1/seller/orders?seller_id={seller_id}"), Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(by_admin["items"].as_array().unwrap().len(), 1);

    // Twenty concurrent refunds of an eighth each: exactly eight go through.
    let payment = app
        .get(&format!("/api/v1/payments/{order_id}"), Some(&token))
        .await
        .expect(200)
        .body;
    let payment_id = payment["id"].as_str().unwrap().to_owned();
    let share = total / 8;
    let refunds = join_all((0..20).map(|n| {
        let request = app
            .client
            .post(format!("{}/api/v1/admin/payments/{payment_id}/refunds", app.url))
            .bearer_auth(&admin)
            .header("Idempotency-Key", format!("refund-{n}"))
            .json(&json!({"amount_minor": share, "reason": "goodwill"}));
        async move { request.send().await.unwrap().status().as_u16() }
    }))
    .await;
    let granted = refunds.iter().filter(|s| **s == 201).count() as i64;
    // Which eight go through is up to the race; replay one of them below.
    let granted_key = format!(
        "refund-{}",
        refunds.iter().position(|s| *s == 201).expect("a refund went through")
    );
    assert_eq!(granted, total / share, "{refunds:?}");
    assert!(refunds.iter().all(|s| [201, 409, 422].contains(s)), "{refunds:?}");
    let after = app
        .get(&format!("/api/v1/payments/{order_id}"), Some(&admin))
        .await
        .expect(200)
        .body;
    let refunded = after["refunded_minor"].as_i64().unwrap() + after["refund_pending_minor"].as_i64().unwrap();
    assert_eq!(refunded, granted * share);
    assert!(refunded <= after["captured_minor"].as_i64().unwrap());
    // The same key answers the same refund, and adds nothing.
    let replay = app
        .client
        .post(format!("{}/api/v1/admin/payments/{payment_id}/refunds", app.url))
        .bearer_auth(&admin)
        .header("Idempotency-Key", &granted_key)
        .json(&json!({"amount_minor": share, "reason": "goodwill"}))
        .send()
        .await
        .unwrap();
    assert!(replay.status().is_success(), "{}", replay.status());
    let again = app
        .get(&format!("/api/v1/payments/{order_id}"), Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(
        again["refunded_minor"].as_i64().unwrap() + again["refund_pending_minor"].as_i64().unwrap(),
        refunded
    );

    // A coupon once per customer: the second use by the same customer is refused.
    app.post(
        "/api/v1/admin/coupons",
        Some(&admin),
        json!({"code": "ONCE-EACH", "kind": "fixed", "value": 500, "per_customer_limit": 1}),
    )
    .await
    .expect(201);
    let with_coupon = json!({"payment_method": "card", "shipping_address": address(), "coupon_code": "once-each"});
    add_to_cart(&app, &token, "HOUSE-1", 1).await;
    let first = checkout(&app, &token, "once-1", with_coupon.clone())
        .await
        .expect(201)
        .body;
    assert_eq!(first["order"]["totals"]["discount"], 500);
    wait_for_status(&app, &token, first["order"]["id"].as_str().unwrap(), "paid").await;
    add_to_cart(&app, &token, "HOUSE-1", 1).await;
    let refused = checkout(&app, &token, "once-2", with_coupon).await.expect_problem(409);
    assert!(
        refused.body["detail"].as_str().unwrap().contains("as often as"),
        "{}",
        refused.body
    );

    // Delivered, then asked to return after the window: refused.
    for status in ["shipped", "delivered"] {
        app.patch(
            &format!("/api/v1/admin/orders/{order_id}/status"),
            Some(&admin),
            json!({"status": status}),
        )
        .await
        .expect(200);
    }
    app.clock.advance(Duration::from_secs(31 * 24 * 3600));
    app.post(
        &format!("/api/v1/orders/{order_id}/returns"),
        Some(&token),
        json!({"items": [{"sku": "HOUSE-1", "quantity": 1}], "reason": "late"}),
    )
    .await
    .expect_problem(422);
    assert!(app.outboxes_drain().await);
}

/// (SKU, quantity) of an order's items, in SKU order.
fn bought(order: &Value) -> Vec<(String, i64)> {
    let mut items: Vec<(String, i64)> = order["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["sku"].as_str().unwrap().to_owned(), i["quantity"].as_i64().unwrap()))
        .collect();
    items.sort();
    items
}

/// (SKU, quantity) of the customer's cart, in SKU order.
async fn cart_lines(app: &TestApp, token: &str) -> Vec<(String, i64)> {
    let cart = app.get("/api/v1/cart", Some(token)).await.expect(200).body;
    let mut lines: Vec<(String, i64)> = cart["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["sku"].as_str().unwrap().to_owned(), l["quantity"].as_i64().unwrap()))
        .collect();
    lines.sort();
    lines
}

fn units(sku: &str, quantity: i64) -> (String, i64) {
    (sku.to_owned(), quantity)
}

on_both!(held_units, a_checkout_buys_only_what_no_order_awaiting_payment_holds);

/// The cart/checkout crossing: the units of an order awaiting payment stay in the cart (they
/// leave when it is paid), held for that order. A second checkout meanwhile buys only what was
/// added since; a declined order's units are free again; paying deducts what the order bought.
async fn a_checkout_buys_only_what_no_order_awaiting_payment_holds(on: On) {
    let Some(app) = spawn(on, |_| {}).await else {
        return;
    };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "HOLD-1", 1_000, 20).await;
    stocked(&app, &admin, "HOLD-2", 500, 20).await;
    let token = app.customer_token("holds@example.com").await;
    add_to_cart(&app, &token, "HOLD-1", 2).await;
    let first = checkout(&app, &token, "hold-1", card()).await.expect(201).body;
    let first_id = first["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(bought(&first["order"]), vec![units("HOLD-1", 2)]);

    // Everything in the cart is held by the first order.
    let refused = checkout(&app, &token, "hold-2", card()).await.expect(422);
    assert!(
        refused.body["detail"].as_str().unwrap().contains("awaiting payment"),
        "{}",
        refused.body
    );
    assert_eq!(
        cart_lines(&app, &token).await,
        vec![units("HOLD-1", 2)],
        "the units stay in the cart"
    );

    // What is added meanwhile is what the next checkout buys.
    add_to_cart(&app, &token, "HOLD-1", 1).await;
    add_to_cart(&app, &token, "HOLD-2", 1).await;
    let second = checkout(&app, &token, "hold-2", card()).await.expect(201).body;
    let second_id = second["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(bought(&second["order"]), vec![units("HOLD-1", 1), units("HOLD-2", 1)]);

    // The first order's payment is declined: its two units are free again.
    let first_page = path_of(first["payment"]["redirect_url"].as_str().unwrap());
    let declined = app
        .client
        .post(format!("{}{first_page}/decline", app.url))
        .send()
        .await
        .unwrap();
    assert!(declined.status().is_success());
    wait_for_status(&app, &token, &first_id, "payment_failed").await;
    // A refused checkout keeps nothing, so the same key is tried until the cart has heard.
    let third = platform::testing::eventually(Duration::from_secs(10), || async {
        let reply = checkout(&app, &token, "hold-3", card()).await;
        (reply.status == 201).then_some(reply.body)
    })
    .await
    .expect("the declined order's units can be checked out again");
    assert_eq!(bought(&third["order"]), vec![units("HOLD-1", 2)]);

    // The second order is paid: what it bought leaves the cart, the third's units stay.
    let second_page = path_of(second["payment"]["redirect_url"].as_str().unwrap());
    let approved = app
        .client
        .post(format!("{}{second_page}/approve", app.url))
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_success());
    wait_for_status(&app, &token, &second_id, "paid").await;
    let deducted = platform::testing::eventually(Duration::from_secs(10), || async {
        (cart_lines(&app, &token).await == vec![units("HOLD-1", 2)]).then_some(())
    })
    .await;
    assert!(deducted.is_some(), "the cart is {:?}", cart_lines(&app, &token).await);
    // The third order still holds those two units.
    checkout(&app, &token, "hold-4", card()).await.expect(422);
    assert!(app.outboxes_drain().await);
}

on_both!(concurrent_holds, concurrent_checkouts_of_one_cart_buy_each_unit_once);

/// Ten checkouts of one cart at once, each with its own key: one order buys the three units,
/// the other nine find nothing left that no order holds.
async fn concurrent_checkouts_of_one_cart_buy_each_unit_once(on: On) {
    let Some(app) = spawn(on, |_| {}).await else {
        return;
    };
    let admin = app.admin_token().await;
    stocked(&app, &admin, "RACE-1", 1_000, 50).await;
    let token = app.customer_token("race@example.com").await;
    add_to_cart(&app, &token, "RACE-1", 3).await;
    let replies = join_all((0..10).map(|n| checkout(&app, &token, format!("race-{n}"), card()))).await;
    let placed: Vec<&Reply> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(
        placed.len(),
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(replies.iter().all(|r| r.status == 201 || r.status == 422));
    assert_eq!(bought(&placed[0].body["order"]), vec![units("RACE-1", 3)]);
    assert_eq!(stock(&app, &admin, "RACE-1").await["reserved"], 3);
}
