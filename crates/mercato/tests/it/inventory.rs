//! Inventory over HTTP and through events: SKUs appear with their products, admins set and
//! adjust stock, shoppers see availability, the catalog's in-stock filter follows, and order
//! events commit or release reservations.

use std::time::Duration;

use inventory::domain::Line;
use inventory::Context;
use platform::events::Event;
use serde_json::{json, Value};

use crate::helpers::TestApp;

/// An active product with one variant `sku`, created by the admin; answers the product.
async fn product_with_sku(app: &TestApp, admin: &str, sku: &str) -> Value {
    let category = app
        .post(
            "/api/v1/admin/categories",
            Some(admin),
            json!({"name": format!("Shelf {sku}")}),
        )
        .await
        .expect(201)
        .body;
    let body = json!({
        "name": format!("Tee {sku}"), "brand": "Acme", "category_id": category["id"], "status": "active",
        "description": "A tee.", "variants": [{"sku": sku, "price": 1500}],
    });
    app.post("/api/v1/products", Some(admin), body).await.expect(201).body
}

/// Waits until inventory knows `sku` (its product.created event has arrived).
async fn wait_for_sku(app: &TestApp, admin: &str, sku: &str) -> Value {
    let path = format!("/api/v1/admin/inventory/{sku}");
    platform::testing::eventually(Duration::from_secs(10), || async {
        let reply = app.get(&path, Some(admin)).await;
        (reply.status == 200).then_some(reply.body)
    })
    .await
    .unwrap_or_else(|| panic!("inventory never learned of {sku}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_follows_products_and_admins_and_the_catalog_follows_stock() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let customer = app.customer_token("shopper@example.com").await;
    let product = product_with_sku(&app, &admin, "TEE-1").await;

    let stock = wait_for_sku(&app, &admin, "TEE-1").await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["available"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(stock["product_id"], product["id"]);
    let public = app.get("/api/v1/inventory/TEE-1", None).await.expect(200).body;
    assert_eq!(public, json!({"sku": "TEE-1", "available": 0, "in_stock": false}));

    // Only admins manage stock.
    app.put("/api/v1/admin/inventory/TEE-1", Some(&customer), json!({"on_hand": 5}))
        .await
        .expect_problem(403);
    app.put("/api/v1/admin/inventory/TEE-1", None, json!({"on_hand": 5}))
        .await
        .expect_problem(401);

    let set = app
        .put("/api/v1/admin/inventory/TEE-1", Some(&admin), json!({"on_hand": 7}))
        .await
        .expect(200)
        .body;
    assert_eq!((set["on_hand"].as_i64(), set["available"].as_i64()), (Some(7), Some(7)));
    let public = app.get("/api/v1/inventory/TEE-1", None).await.expect(200).body;
    assert_eq!(public["in_stock"], true);

    // The catalog hears inventory.availability_changed and its in-stock filter follows.
    let product_id = product["id"].as_str().unwrap().to_owned();
    let listed = platform::testing::eventually(Duration::from_secs(10), || async {
        let list = app.get("/api/v1/products?in_stock=true", None).await.expect(200).body;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == product_id.as_str())
            .then_some(())
    })
    .await;
    assert!(listed.is_some(), "the product shows as in stock in the catalog");

    // Adjustments need a reason and may not remove reserved units; every one is in the ledger.
    let adjusted = app
        .post(
            "/api/v1/admin/inventory/TEE-1/adjust",
            Some(&admin),
            json!({"delta": -2, "reason": "damaged in transit"}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(adjusted["on_hand"], 5);
    assert_eq!(adjusted["low_stock"], true, "the default threshold is 5");
    let ledger = app
        .get("/api/v1/admin/inventory/TEE-1/ledger?limit=1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(ledger["items"][0]["kind"], "adjust");
    assert_eq!(ledger["items"][0]["reason"], "damaged in transit");
    let cursor = ledger["next_cursor"].as_str().expect("a second page").to_owned();
    let older = app
        .get(
            &format!("/api/v1/admin/inventory/TEE-1/ledger?cursor={cursor}"),
            Some(&admin),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(older["items"][0]["kind"], "set");
    assert!(older.get("next_cursor").is_none());

    // Optimistic versions through If-Match.
    let version = adjusted["version"].as_i64().unwrap();
    let stale = app
        .client
        .put(format!("{}/api/v1/admin/inventory/TEE-1", app.url))
        .bearer_auth(&admin)
        .header("If-Match", format!("\"{}\"", version - 1))
        .json(&json!({"on_hand": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);

    // Low-stock list for the admin.
    let low = app
        .get("/api/v1/admin/inventory?low_stock=true", Some(&admin))
        .await
        .expect(200)
        .body;
    assert!(low["items"].as_array().unwrap().iter().any(|s| s["sku"] == "TEE-1"));
    app.wait_for_event("inventory.low_stock", "TEE-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inventory_requests_are_problems_that_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    product_with_sku(&app, &admin, "MUG-1").await;
    wait_for_sku(&app, &admin, "MUG-1").await;
    app.put("/api/v1/admin/inventory/MUG-1", Some(&admin), json!({"on_hand": 3}))
        .await
        .expect(200);

    app.get("/api/v1/inventory/NOPE", None).await.expect_problem(404);
    app.get("/api/v1/inventory/bad%20sku", None).await.expect_problem(422);
    app.get("/api/v1/inventory?skus=", None).await.expect_problem(422);
    let many: Vec<String> = (0..101).map(|i| format!("S{i}")).collect();
    app.get(&format!("/api/v1/inventory?skus={}", many.join(",")), None)
        .await
        .expect_problem(422);
    let bulk = app
        .get("/api/v1/inventory?skus=MUG-1,NOPE,MUG-1", None)
        .await
        .expect(200)
        .body;
    assert_eq!(
        bulk["items"],
        json!([{"sku": "MUG-1", "available": 3, "in_stock": true}])
    );

    let put = |body: Value| {
        let app = &app;
        let admin = &admin;
        async move { app.put("/api/v1/admin/inventory/MUG-1", Some(admin), body).await }
    };
    let problem = put(json!({"on_hand": -1, "low_stock_threshold": -5}))
        .await
        .expect_problem(422);
    assert_eq!(problem.body["errors"].as_array().unwrap().len(), 2);
    put(json!({"on_hand": "many"})).await.expect_problem(422);
    put(json!({"on_hand": 1, "surprise": true})).await.expect_problem(422);
    app.put("/api/v1/admin/inventory/NOPE", Some(&admin), json!({"on_hand": 1}))
        .await
        .expect_problem(404);
    let adjust = |body: Value| {
        let app = &app;
        let admin = &admin;
        async move {
            app.post("/api/v1/admin/inventory/MUG-1/adjust", Some(admin), body)
                .await
        }
    };
    adjust(json!({"delta": 0, "reason": "nothing"}))
        .await
        .expect_problem(422);
    adjust(json!({"delta": 1, "reason": ""})).await.expect_problem(422);
    let short = adjust(json!({"delta": -4, "reason": "lost"})).await.expect_problem(409);
    assert_eq!(short.body["on_hand"], 3, "the problem carries the levels");
    app.get("/api/v1/admin/reservations?status=bogus", Some(&admin))
        .await
        .expect_problem(422);
    app.get(
        "/api/v1/admin/inventory/MUG-1/ledger?cursor=not-a-cursor!",
        Some(&admin),
    )
    .await
    .expect_problem(422);

    let stock = app
        .get("/api/v1/admin/inventory/MUG-1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["version"].as_i64()),
        (Some(3), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_commit_and_release_reservations() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    product_with_sku(&app, &admin, "CAP-1").await;
    wait_for_sku(&app, &admin, "CAP-1").await;
    app.put("/api/v1/admin/inventory/CAP-1", Some(&admin), json!({"on_hand": 10}))
        .await
        .expect(200);
    let inventory = &app.app.inventory;
    let lines = |quantity| {
        vec![Line {
            sku: "CAP-1".to_owned(),
            quantity,
        }]
    };
    // Order ids are UUIDs, as orders makes them (delivery refuses an order.paid without one).
    let (paid, cancelled, by_admin) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    for (order, quantity) in [(&paid, 3), (&cancelled, 2), (&by_admin, 1)] {
        inventory
            .reserve(order, &lines(quantity), None, Context::default())
            .await
            .unwrap();
    }
    let listed = app
        .get("/api/v1/admin/reservations?status=active", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);

    // The orders service's events (published here by hand until it exists), each twice.
    for (kind, order) in [("order.paid", &paid), ("order.cancelled", &cancelled)] {
        let data = json!({"order_id": order, "number": "ORD-2026-000009", "user_id": uuid::Uuid::now_v7(),
                          "payment_method": "card", "shipping_address": crate::checkout::address()});
        let event = Event::new("orders", kind, order, data, None);
        app.app.bus.publish(&event).await.unwrap();
        app.app.bus.publish(&event).await.unwrap();
    }
    app.wait_for_event("inventory.committed", &paid).await;
    app.wait_for_event("inventory.released", &cancelled).await;
    let stock = app
        .get("/api/v1/admin/inventory/CAP-1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(7), Some(1))
    );

    // An admin releases the last one by hand; a second release changes nothing.
    for _ in 0..2 {
        let released = app
            .post(
                &format!("/api/v1/admin/reservations/{by_admin}/release"),
                Some(&admin),
                json!({}),
            )
            .await
            .expect(200)
            .body;
        assert_eq!(released["status"], "released");
        assert_eq!(released["release_reason"], "admin");
    }
    app.post(
        &format!("/api/v1/admin/reservations/{paid}/release"),
        Some(&admin),
        json!({}),
    )
    .await
    .expect_problem(409);
    app.get("/api/v1/admin/reservations/nobody", Some(&admin))
        .await
        .expect_problem(404);
    let stock = app
        .get("/api/v1/admin/inventory/CAP-1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(7), Some(0))
    );
    let report = inventory.check().await.unwrap();
    assert!(report.violations.is_empty());
    let committed = app
        .bus_events()
        .await
        .into_iter()
        .filter(|e| e.kind == "inventory.committed")
        .count();
    assert_eq!(committed, 1, "a twice-delivered order.paid commits once");
}
