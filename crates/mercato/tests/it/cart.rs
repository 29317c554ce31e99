//! The cart over HTTP: guest carts and their merge at login, validation, one shopper's cart
//! hidden from another, warnings that follow product and stock changes, orders that clear the
//! cart, and abandoned carts reported once.

use std::time::Duration;

use platform::events::Event;
use serde_json::{json, Value};

use crate::helpers::{id_of, Reply, TestApp};

/// An active product with one variant, stocked with `on_hand` units; answers the product.
pub async fn stocked(app: &TestApp, admin: &str, sku: &str, price: i64, on_hand: i64) -> Value {
    let category = app
        .post(
            "/api/v1/admin/categories",
            Some(admin),
            json!({"name": format!("Aisle {sku}")}),
        )
        .await
        .expect(201)
        .body;
    let body = json!({
        "name": format!("Item {sku}"), "brand": "Acme", "category_id": category["id"], "status": "active",
        "description": "An item.", "images": [{"url": format!("https://img.example/{sku}.png"), "alt": sku}],
        "variants": [{"sku": sku, "price": price}],
    });
    let product = app.post("/api/v1/products", Some(admin), body).await.expect(201).body;
    let path = format!("/api/v1/admin/inventory/{sku}");
    let known = platform::testing::eventually(Duration::from_secs(10), || async {
        (app.get(&path, Some(admin)).await.status == 200).then_some(())
    })
    .await;
    assert!(known.is_some(), "inventory learns of {sku}");
    app.put(&path, Some(admin), json!({"on_hand": on_hand}))
        .await
        .expect(200);
    product
}

/// A cart request with an optional bearer token and an optional guest cart token.
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    guest: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = app.client.request(method, format!("{}{path}", app.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(guest) = guest {
        request = request.header("X-Cart-Token", guest);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn lines(cart: &Value) -> Vec<(String, i64)> {
    cart["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["sku"].as_str().unwrap().to_owned(), l["quantity"].as_i64().unwrap()))
        .collect()
}

fn add(sku: &str, quantity: i64) -> Option<Value> {
    Some(json!({"sku": sku, "quantity": quantity}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cart_merges_into_the_users_cart_at_login() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "G-1", 1_000, 5).await;
    stocked(&app, &admin, "G-2", 250, 3).await;
    use reqwest::Method;

    // A guest without a token adds an item: a token comes back, as a header and a cookie.
    let first = call(&app, Method::POST, "/api/v1/cart/items", None, None, add("G-1", 2))
        .await
        .expect(200);
    let guest = first.headers["x-cart-token"].to_str().unwrap().to_owned();
    let cookie = first.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with(&format!("mercato_cart={guest};")) && cookie.contains("HttpOnly"));
    assert_eq!(
        (first.body["subtotal"].as_i64(), first.body["item_count"].as_i64()),
        (Some(2_000), Some(2))
    );
    assert_eq!(first.body["lines"][0]["image"], "https://img.example/G-1.png");
    call(
        &app,
        Method::POST,
        "/api/v1/cart/items",
        None,
        Some(&guest),
        add("G-2", 3),
    )
    .await
    .expect(200);
    let seen = call(&app, Method::GET, "/api/v1/cart", None, Some(&guest), None)
        .await
        .expect(200);
    assert_eq!(lines(&seen.body), vec![("G-1".to_owned(), 2), ("G-2".to_owned(), 3)]);
    // Without the token, a guest has an empty cart (and gets no token for looking).
    let anonymous = call(&app, Method::GET, "/api/v1/cart", None, None, None)
        .await
        .expect(200);
    assert_eq!(anonymous.body["lines"], json!([]));
    assert!(anonymous.headers.get("x-cart-token").is_none());

    // The shopper has an account with a cart of its own.
    let user = app.customer_token("merge@example.com").await;
    call(
        &app,
        Method::POST,
        "/api/v1/cart/items",
        Some(&user),
        None,
        add("G-1", 2),
    )
    .await
    .expect(200);
    call(
        &app,
        Method::POST,
        "/api/v1/cart/items",
        Some(&user),
        None,
        add("G-2", 2),
    )
    .await
    .expect(200);

    // After login: summed, and capped by what is available (G-2: 2 + 3 > 3).
    let merged = call(
        &app,
        Method::POST,
        "/api/v1/cart/merge",
        Some(&user),
        Some(&guest),
        None,
    )
    .await
    .expect(200);
    assert_eq!(lines(&merged.body), vec![("G-1".to_owned(), 4), ("G-2".to_owned(), 3)]);
    assert_eq!(merged.body["subtotal"], 4 * 1_000 + 3 * 250);
    let gone = call(&app, Method::GET, "/api/v1/cart", None, Some(&guest), None)
        .await
        .expect(200);
    assert_eq!(gone.body["lines"], json!([]), "the guest cart is gone");

    // Any cart request carrying both merges too, and tells the browser to drop the cookie.
    let second = call(&app, Method::POST, "/api/v1/cart/items", None, None, add("G-1", 1))
        .await
        .expect(200);
    let second_guest = second.headers["x-cart-token"].to_str().unwrap().to_owned();
    let response = app
        .client
        .get(format!("{}/api/v1/cart", app.url))
        .bearer_auth(&user)
        .header("Cookie", format!("theme=dark; mercato_cart={second_guest}"))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(lines(&body), vec![("G-1".to_owned(), 5), ("G-2".to_owned(), 3)]);

    // Merging needs an account and a guest token.
    call(
        &app,
        Method::POST,
        "/api/v1/cart/merge",
        None,
        Some(&second_guest),
        None,
    )
    .await
    .expect_problem(401);
    call(&app, Method::POST, "/api/v1/cart/merge", Some(&user), None, None)
        .await
        .expect_problem(422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cart_requests_are_problems_and_carts_are_private() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "V-1", 500, 200).await;
    let draft = stocked(&app, &admin, "V-DRAFT", 500, 10).await;
    let path = format!("/api/v1/products/{}", id_of(&draft));
    app.patch(
        &path,
        Some(&admin),
        json!({"version": draft["version"], "status": "draft"}),
    )
    .await
    .expect(200);
    let alice = app.customer_token("alice@example.com").await;
    let bob = app.customer_token("bob@example.com").await;
    use reqwest::Method;
    let post = |token: &str, body: Value| {
        let token = token.to_owned();
        let app = &app;
        async move { call(app, Method::POST, "/api/v1/cart/items", Some(&token), None, Some(body)).await }
    };

    post(&alice, json!({"sku": "NOPE", "quantity": 1}))
        .await
        .expect_problem(404);
    post(&alice, json!({"sku": "bad sku", "quantity": 1}))
        .await
        .expect_problem(422);
    post(&alice, json!({"sku": "V-1", "quantity": 0}))
        .await
        .expect_problem(422);
    post(&alice, json!({"sku": "V-1", "quantity": 100}))
        .await
        .expect_problem(422);
    post(&alice, json!({"sku": "V-1"})).await.expect_problem(422);
    post(&alice, json!({"sku": "V-DRAFT", "quantity": 1}))
        .await
        .expect_problem(422);
    let short = post(&alice, json!({"sku": "V-1", "quantity": 1})).await.expect(200);
    assert_eq!(lines(&short.body), vec![("V-1".to_owned(), 1)]);
    // The per-line maximum (99) counts what the line already holds.
    post(&alice, json!({"sku": "V-1", "quantity": 98})).await.expect(200);
    let over = post(&alice, json!({"sku": "V-1", "quantity": 1}))
        .await
        .expect_problem(422);
    assert!(over.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("at most 99"));
    // More than available: 409 with the count.
    app.put("/api/v1/admin/inventory/V-1", Some(&admin), json!({"on_hand": 120}))
        .await
        .expect(200);
    let patch = |token: &str, sku: &str, quantity: i64| {
        let token = token.to_owned();
        let path = format!("/api/v1/cart/items/{sku}");
        let app = &app;
        async move {
            call(
                app,
                Method::PATCH,
                &path,
                Some(&token),
                None,
                Some(json!({"quantity": quantity})),
            )
            .await
        }
    };
    patch(&alice, "V-1", 50).await.expect(200);
    let conflict = post(&bob, json!({"sku": "V-1", "quantity": 99})).await.expect(200);
    assert_eq!(lines(&conflict.body), vec![("V-1".to_owned(), 99)]);
    app.put("/api/v1/admin/inventory/V-1", Some(&admin), json!({"on_hand": 60}))
        .await
        .expect(200);
    let short = patch(&alice, "V-1", 61).await.expect_problem(409);
    assert_eq!(short.body["available"], 60);
    let short = post(&alice, json!({"sku": "V-1", "quantity": 11}))
        .await
        .expect_problem(409);
    assert_eq!(short.body["available"], 60);
    patch(&alice, "V-1", 0).await.expect_problem(422);
    patch(&alice, "GHOST", 1).await.expect_problem(404);
    call(
        &app,
        Method::DELETE,
        "/api/v1/cart/items/GHOST",
        Some(&alice),
        None,
        None,
    )
    .await
    .expect_problem(404);
    call(&app, Method::GET, "/api/v1/cart", None, Some("not a token"), None)
        .await
        .expect_problem(422);
    call(&app, Method::GET, "/api/v1/cart", Some("not.a.jwt"), None, None)
        .await
        .expect_problem(401);

    // Bob's requests never touch Alice's cart.
    call(&app, Method::DELETE, "/api/v1/cart", Some(&bob), None, None)
        .await
        .expect(204);
    patch(&bob, "V-1", 5).await.expect_problem(404);
    let alices = call(&app, Method::GET, "/api/v1/cart", Some(&alice), None, None)
        .await
        .expect(200);
    assert_eq!(lines(&alices.body), vec![("V-1".to_owned(), 50)]);
    // Less stock than Alice's line holds: her view warns.
    app.put("/api/v1/admin/inventory/V-1", Some(&admin), json!({"on_hand": 30}))
        .await
        .expect(200);
    let alices = call(&app, Method::GET, "/api/v1/cart", Some(&alice), None, None)
        .await
        .expect(200);
    assert_eq!(
        alices.body["lines"][0]["warnings"],
        json!([{"kind": "insufficient_stock", "available": 30}])
    );
    call(&app, Method::DELETE, "/api/v1/cart/items/V-1", Some(&alice), None, None)
        .await
        .expect(200);
    let alices = call(&app, Method::GET, "/api/v1/cart", Some(&alice), None, None)
        .await
        .expect(200);
    assert_eq!(alices.body["lines"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_follow_price_stock_and_product_changes() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let product = stocked(&app, &admin, "W-1", 1_000, 4).await;
    stocked(&app, &admin, "W-2", 300, 4).await;
    let user = app.customer_token("warned@example.com").await;
    use reqwest::Method;
    for sku in ["W-1", "W-2"] {
        call(&app, Method::POST, "/api/v1/cart/items", Some(&user), None, add(sku, 2))
            .await
            .expect(200);
    }
    let cart = || async {
        call(&app, Method::GET, "/api/v1/cart", Some(&user), None, None)
            .await
            .expect(200)
            .body
    };
    let first = cart().await;
    assert_eq!(first["has_warnings"], false);
    assert_eq!(first["subtotal"], 2 * 1_000 + 2 * 300);

    // A new price reaches the cart through product.updated.
    let path = format!("/api/v1/products/{}", id_of(&product));
    let updated = app
        .patch(
            &path,
            Some(&admin),
            json!({"version": product["version"], "variants": [{"sku": "W-1", "price": 1_200}]}),
        )
        .await
        .expect(200)
        .body;
    // A line added now takes the new price at once (the SKU's cached details went with the change).
    let guest = call(&app, Method::POST, "/api/v1/cart/items", None, None, add("W-1", 1))
        .await
        .expect(200)
        .body;
    assert_eq!(guest["lines"][0]["unit_price"], 1_200, "{guest}");
    let repriced = platform::testing::eventually(Duration::from_secs(10), || async {
        let body = cart().await;
        (body["lines"][0]["unit_price"] == 1_200).then_some(body)
    })
    .await
    .expect("the cart hears the new price");
    assert_eq!(
        repriced["lines"][0]["warnings"],
        json!([{"kind": "price_changed", "previous_price": 1_000, "price": 1_200}])
    );
    assert_eq!(repriced["subtotal"], 2 * 1_200 + 2 * 300);

    // Out of stock.
    app.put("/api/v1/admin/inventory/W-2", Some(&admin), json!({"on_hand": 0}))
        .await
        .expect(200);
    assert_eq!(cart().await["lines"][1]["warnings"], json!([{"kind": "out_of_stock"}]));

    // The product is deleted: the line stays, marked, and leaves the subtotal.
    app.delete(&format!("{path}?version={}", updated["version"]), Some(&admin))
        .await
        .expect(204);
    let gone = platform::testing::eventually(Duration::from_secs(10), || async {
        let body = cart().await;
        (body["lines"][0]["warnings"][0]["kind"] == "product_unavailable").then_some(body)
    })
    .await
    .expect("the cart hears of the deletion");
    call(
        &app,
        Method::POST,
        "/api/v1/cart/items",
        Some(&user),
        None,
        add("W-1", 1),
    )
    .await
    .expect_problem(422);
    assert_eq!(gone["subtotal"], 2 * 300);
    assert_eq!(gone["item_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_orders_clear_the_cart_and_idle_carts_are_reported_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "A-1", 700, 10).await;
    use reqwest::Method;
    let buyer_auth = app.register("buyer@example.com").await;
    let buyer = crate::helpers::token_of(&buyer_auth);
    let idler_auth = app.register("idler@example.com").await;
    let idler = crate::helpers::token_of(&idler_auth);
    for token in [&buyer, &idler] {
        call(
            &app,
            Method::POST,
            "/api/v1/cart/items",
            Some(token),
            None,
            add("A-1", 1),
        )
        .await
        .expect(200);
    }

    // order.paid (published by hand until orders exist) empties the buyer's cart.
    let order_id = uuid::Uuid::now_v7().to_string();
    let paid = Event::new(
        "orders",
        "order.paid",
        &order_id,
        json!({"order_id": order_id, "number": "ORD-2026-000001", "user_id": id_of(&buyer_auth),
               "payment_method": "card", "shipping_address": crate::checkout::address()}),
        None,
    );
    app.app.bus.publish(&paid).await.unwrap();
    let cleared = platform::testing::eventually(Duration::from_secs(10), || async {
        let body = call(&app, Method::GET, "/api/v1/cart", Some(&buyer), None, None)
            .await
            .body;
        (body["lines"] == json!([])).then_some(())
    })
    .await;
    assert!(cleared.is_some(), "the buyer's cart is empty after payment");

    // Nothing is idle yet; two hours later the idler's cart is, and is reported once.
    assert_eq!(app.app.cart.sweep().await.unwrap(), 0);
    app.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(app.app.cart.sweep().await.unwrap(), 1);
    assert_eq!(app.app.cart.sweep().await.unwrap(), 0);
    let reported = platform::testing::eventually(Duration::from_secs(10), || async {
        let events: Vec<Event> = app
            .bus_events()
            .await
            .into_iter()
            .filter(|e| e.kind == "cart.abandoned")
            .collect();
        (!events.is_empty()).then_some(events)
    })
    .await
    .expect("cart.abandoned is published");
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].data["user_id"], id_of(&idler_auth).as_str());
    assert_eq!(reported[0].data["items"][0]["sku"], "A-1");
    assert_eq!(reported[0].data["subtotal"], 700);
    // A change makes the cart reportable again after another idle period.
    call(
        &app,
        Method::POST,
        "/api/v1/cart/items",
        Some(&idler),
        None,
        add("A-1", 1),
    )
    .await
    .expect(200);
    assert_eq!(app.app.cart.sweep().await.unwrap(), 0);
    app.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(app.app.cart.sweep().await.unwrap(), 1);
}

/// The whole app with carts in Redis (the distributed mode's store), when
/// `MERCATO_TEST_REDIS_URL` is set: a guest cart, the merge at login and repricing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_in_redis_behave_the_same() {
    let Some(url) = platform::testing::server_url(platform::testing::REDIS_URL_VAR) else {
        eprintln!("MERCATO_TEST_REDIS_URL is not set: carts-in-Redis journey skipped");
        return;
    };
    let app = TestApp::spawn_with(
        |config| {
            config.cart.store = platform::config::CartStoreKind::Redis;
            config.cart.redis_url = Some(url);
            config.cart.redis_prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
        },
        Vec::new(),
    )
    .await;
    let admin = app.admin_token().await;
    let product = stocked(&app, &admin, "R-1", 900, 3).await;
    use reqwest::Method;
    let guest = call(&app, Method::POST, "/api/v1/cart/items", None, None, add("R-1", 2))
        .await
        .expect(200)
        .headers["x-cart-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let user = app.customer_token("redis@example.com").await;
    call(
        &app,
        Method::POST,
        "/api/v1/cart/items",
        Some(&user),
        None,
        add("R-1", 2),
    )
    .await
    .expect(200);
    let merged = call(
        &app,
        Method::POST,
        "/api/v1/cart/merge",
        Some(&user),
        Some(&guest),
        None,
    )
    .await
    .expect(200);
    assert_eq!(
        lines(&merged.body),
        vec![("R-1".to_owned(), 3)],
        "capped at the 3 available"
    );

    let path = format!("/api/v1/products/{}", id_of(&product));
    app.patch(
        &path,
        Some(&admin),
        json!({"version": product["version"], "variants": [{"sku": "R-1", "price": 800}]}),
    )
    .await
    .expect(200);
    let repriced = platform::testing::eventually(Duration::from_secs(10), || async {
        let body = call(&app, Method::GET, "/api/v1/cart", Some(&user), None, None)
            .await
            .body;
        (body["subtotal"] == 2_400).then_some(body)
    })
    .await
    .expect("the Redis cart is repriced");
    assert_eq!(repriced["lines"][0]["warnings"][0]["kind"], "price_changed");
    let ready = app.get("/health/ready", None).await.expect(200).body;
    assert!(ready.to_string().contains("cart_store"), "{ready}");
}
