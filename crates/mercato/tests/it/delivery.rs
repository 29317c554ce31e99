//! Delivery and notifications end to end in the all-in-one mode: a paid order becomes a
//! shipment assigned to the least-loaded agent serving the city; the agent's steps move the
//! order (seen live by its owner); the customer is emailed at each step and finds the delivery
//! code in the inbox; a cash-on-delivery parcel needs that code and is collected on delivery.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cart::stocked;
use crate::checkout::{add_to_cart, checkout, path_of, wait_for_status};
use crate::helpers::{token_of, TestApp, PASSWORD};
use crate::live::SseStream;

/// A delivery agent serving `cities`: an account given the role by an admin, then registered
/// with delivery. Answers the agent's id and a token carrying the role.
async fn agent(app: &TestApp, admin: &str, email: &str, cities: &[&str]) -> (String, String) {
    let auth = app.register(email).await;
    let id = auth["user"]["id"].as_str().unwrap().to_owned();
    let version = auth["user"]["version"].as_i64().unwrap_or(1);
    // Not yet an agent: delivery refuses to register the account.
    app.put(
        &format!("/api/v1/admin/delivery/agents/{id}"),
        Some(admin),
        json!({"cities": cities, "active": true}),
    )
    .await
    .expect_problem(422);
    app.patch(
        &format!("/api/v1/admin/users/{id}"),
        Some(admin),
        json!({"role": "delivery_agent", "version": version}),
    )
    .await
    .expect(200);
    app.put(
        &format!("/api/v1/admin/delivery/agents/{id}"),
        Some(admin),
        json!({"cities": cities, "active": true}),
    )
    .await
    .expect(201);
    let token = token_of(&app.login(email, PASSWORD).await.expect(200).body);
    (id, token)
}

fn berlin() -> Value {
    json!({"full_name": "Ada Buyer", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "de"})
}

/// The shipment of an order, once delivery has made it (and assigned it, when `assigned`).
async fn shipment_of(app: &TestApp, admin: &str, order_id: &str, assigned: bool) -> Value {
    platform::testing::eventually(Duration::from_secs(10), || async {
        let page = app
            .get(
                &format!("/api/v1/admin/delivery/shipments?order_id={order_id}"),
                Some(admin),
            )
            .await
            .expect(200)
            .body;
        page["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
            .filter(|s| !assigned || s["status"] == "assigned")
    })
    .await
    .unwrap_or_else(|| panic!("no shipment for order {order_id}"))
}

async fn report(app: &TestApp, token: &str, shipment: &str, body: Value) -> crate::helpers::Reply {
    app.post(
        &format!("/api/v1/delivery/shipments/{shipment}/status"),
        Some(token),
        body,
    )
    .await
}

/// Emails the notification log shows as sent for this order's events, by kind.
async fn sent_kinds(app: &TestApp, admin: &str, recipient: &str) -> Vec<String> {
    let log = app
        .get(
            &format!("/api/v1/admin/notifications?recipient={recipient}&channel=email&status=sent&limit=100"),
            Some(admin),
        )
        .await
        .expect(200)
        .body;
    let mut kinds: Vec<String> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_delivered_by_the_least_loaded_agent_and_the_customer_hears_of_each_step() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "SHIP-1", 2_000, 10).await;
    let (busy, _) = agent(&app, &admin, "busy-agent@example.com", &["Berlin"]).await;
    let (ada, ada_token) = agent(&app, &admin, "ada-agent@example.com", &["Berlin", "Potsdam"]).await;
    let (_, far_token) = agent(&app, &admin, "far-agent@example.com", &["Hamburg"]).await;

    // The first order goes to one Berlin agent; the second to the other, now less loaded.
    let customer = "shipper@example.com";
    let token = app.customer_token(customer).await;
    let mut orders = Vec::new();
    for key in ["ship-1", "ship-2"] {
        add_to_cart(&app, &token, "SHIP-1", 1).await;
        let body = json!({"payment_method": "card", "shipping_address": berlin()});
        let placed = checkout(&app, &token, key, body).await.expect(201).body;
        let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
        let page = path_of(placed["payment"]["redirect_url"].as_str().unwrap());
        let approved = app
            .client
            .post(format!("{}{page}/approve", app.url))
            .send()
            .await
            .unwrap();
        assert!(approved.status().is_success());
        wait_for_status(&app, &token, &order_id, "paid").await;
        orders.push((order_id.clone(), shipment_of(&app, &admin, &order_id, true).await));
    }
    let agents: Vec<&str> = orders.iter().map(|(_, s)| s["agent_id"].as_str().unwrap()).collect();
    assert!(
        agents.contains(&busy.as_str()) && agents.contains(&ada.as_str()),
        "{agents:?}"
    );
    let (order_id, shipment) = orders
        .iter()
        .find(|(_, s)| s["agent_id"] == ada.as_str())
        .cloned()
        .unwrap();
    let shipment_id = shipment["id"].as_str().unwrap().to_owned();
    assert_eq!(shipment["address"]["city"], "Berlin");

    let mine = app
        .get("/api/v1/delivery/assignments", Some(&ada_token))
        .await
        .expect(200)
        .body;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert_eq!(mine["items"][0]["id"], shipment_id.as_str());

    // Another agent cannot touch it, nor can the customer.
    report(&app, &far_token, &shipment_id, json!({"status": "picked_up"}))
        .await
        .expect_problem(404);
    report(&app, &token, &shipment_id, json!({"status": "picked_up"}))
        .await
        .expect_problem(403);
    // Skipping ahead is refused by the state machine.
    report(&app, &ada_token, &shipment_id, json!({"status": "delivered"}))
        .await
        .expect_problem(409);

    let mut live = SseStream::connect(&app, &format!("/api/v1/orders/{order_id}/events"), &token, None).await;
    let steps = [
        ("picked_up", Some("shipped")),
        ("in_transit", None),
        ("out_for_delivery", Some("out_for_delivery")),
        ("delivered", Some("delivered")),
    ];
    let mut seen = Vec::new();
    for (step, order_status) in steps {
        report(
            &app,
            &ada_token,
            &shipment_id,
            json!({"status": step, "note": format!("{step} by Ada")}),
        )
        .await
        .expect(200);
        if let Some(order_status) = order_status {
            wait_for_status(&app, &token, &order_id, order_status).await;
        }
    }
    while let Some(event) = live.next_status(Duration::from_secs(5)).await {
        seen.push(event.data["to_status"].as_str().unwrap().to_owned());
        if seen.last().map(String::as_str) == Some("delivered") {
            break;
        }
    }
    assert_eq!(seen, ["paid", "shipped", "out_for_delivery", "delivered"]);

    let tracking = app
        .get(&format!("/api/v1/orders/{order_id}/tracking"), Some(&token))
        .await
        .expect(200)
        .body;
    let statuses: Vec<&str> = tracking["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "pending",
            "assigned",
            "picked_up",
            "in_transit",
            "out_for_delivery",
            "delivered"
        ]
    );
    let stranger = app.customer_token("nosy@example.com").await;
    app.get(&format!("/api/v1/orders/{order_id}/tracking"), Some(&stranger))
        .await
        .expect_problem(404);
    let timeline = app
        .get(&format!("/api/v1/orders/{order_id}/timeline"), Some(&token))
        .await
        .expect(200)
        .body;
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "shipment" && e["reason"].as_str().unwrap().contains("in transit")),
        "{timeline}"
    );

    // Every step was emailed once, as an .eml file and in the log; order news is in the inbox.
    let expected = [
        "order_delivered",
        "order_placed",
        "order_shipped",
        "out_for_delivery",
        "payment_received",
        "shipment_created",
        "welcome",
    ];
    let kinds = platform::testing::eventually(Duration::from_secs(10), || async {
        let kinds = sent_kinds(&app, &admin, customer).await;
        // Two orders: the per-order kinds twice, except those only the delivered one reached.
        expected.iter().all(|k| kinds.iter().any(|s| s == k)).then_some(kinds)
    })
    .await
    .expect("every step is emailed");
    for once_per_order in ["order_placed", "payment_received", "shipment_created"] {
        assert_eq!(kinds.iter().filter(|k| *k == once_per_order).count(), 2, "{kinds:?}");
    }
    for once in ["order_shipped", "out_for_delivery", "order_delivered", "welcome"] {
        assert_eq!(kinds.iter().filter(|k| *k == once).count(), 1, "{kinds:?}");
    }
    let mail_dir = app.config.data_dir.join("mail");
    let files = std::fs::read_dir(&mail_dir).unwrap().count();
    assert!(files >= kinds.len(), "{files} .eml files for {} emails", kinds.len());
    let inbox = app
        .get("/api/v1/users/me/notifications?unread=true", Some(&token))
        .await
        .expect(200)
        .body;
    assert!(inbox["unread_count"].as_i64().unwrap() >= 6, "{inbox}");
    assert!(inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["kind"] == "order_delivered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cash_on_delivery_parcel_needs_the_code_from_the_customers_inbox_and_is_collected() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "SHIP-COD", 1_500, 5).await;
    let (_, agent_token) = agent(&app, &admin, "cod-agent@example.com", &["berlin "]).await;
    let token = app.customer_token("cod-buyer@example.com").await;
    add_to_cart(&app, &token, "SHIP-COD", 2).await;
    let body = json!({"payment_method": "cod", "shipping_address": berlin()});
    let placed = checkout(&app, &token, "cod-ship", body).await.expect(201).body;
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    let shipment = shipment_of(&app, &admin, &order_id, true).await;
    assert_eq!(shipment["cod"], true);
    let shipment_id = shipment["id"].as_str().unwrap().to_owned();

    for step in ["picked_up", "in_transit", "out_for_delivery"] {
        report(&app, &agent_token, &shipment_id, json!({"status": step}))
            .await
            .expect(200);
    }
    report(&app, &agent_token, &shipment_id, json!({"status": "delivered"}))
        .await
        .expect_problem(422);

    // The customer reads the code in the inbox (it was emailed too).
    let code = platform::testing::eventually(Duration::from_secs(10), || async {
        let inbox = app
            .get("/api/v1/users/me/notifications", Some(&token))
            .await
            .expect(200)
            .body;
        inbox["items"].as_array().unwrap().iter().find_map(|item| {
            (item["kind"] == "shipment_created").then(|| {
                item["body"]
                    .as_str()
                    .unwrap()
                    .rsplit(|c: char| !c.is_ascii_digit())
                    .find(|part| part.len() == 6)
                    .map(str::to_owned)
            })?
        })
    })
    .await
    .expect("the delivery code reaches the customer's inbox");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused = report(
        &app,
        &agent_token,
        &shipment_id,
        json!({"status": "delivered", "code": wrong}),
    )
    .await
    .expect_problem(422);
    assert!(
        refused.body["detail"].as_str().unwrap_or_default().contains("code"),
        "{}",
        refused.body
    );
    let delivered = report(
        &app,
        &agent_token,
        &shipment_id,
        json!({"status": "delivered", "code": code}),
    )
    .await
    .expect(200)
    .body;
    assert_eq!(delivered["proof"], "code");
    wait_for_status(&app, &token, &order_id, "delivered").await;
    let collected = platform::testing::eventually(Duration::from_secs(10), || async {
        let payment = app
            .get(&format!("/api/v1/payments/{order_id}"), Some(&token))
            .await
            .expect(200)
            .body;
        (payment["status"] == "succeeded").then_some(payment)
    })
    .await
    .expect("the cash is recorded as collected on delivery");
    assert_eq!(collected["captured_minor"], placed["order"]["totals"]["total"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parcel_back_at_the_warehouse_cancels_the_order_refunds_it_and_restocks() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "SHIP-BACK", 2_500, 4).await;
    let (_, agent_token) = agent(&app, &admin, "back-agent@example.com", &["Berlin"]).await;
    let token = app.customer_token("away@example.com").await;
    add_to_cart(&app, &token, "SHIP-BACK", 1).await;
    let body = json!({"payment_method": "card", "shipping_address": berlin()});
    let placed = checkout(&app, &token, "back-1", body).await.expect(201).body;
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    let page = path_of(placed["payment"]["redirect_url"].as_str().unwrap());
    let approved = app
        .client
        .post(format!("{}{page}/approve", app.url))
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_success());
    wait_for_status(&app, &token, &order_id, "paid").await;
    let shipment_id = shipment_of(&app, &admin, &order_id, true).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for step in [
        "picked_up",
        "in_transit",
        "out_for_delivery",
        "failed_attempt",
        "returned_to_sender",
    ] {
        report(
            &app,
            &agent_token,
            &shipment_id,
            json!({"status": step, "note": "nobody home"}),
        )
        .await
        .expect(200);
    }
    wait_for_status(&app, &token, &order_id, "out_for_delivery").await;
    // The agent's word alone gives nothing back: only the warehouse's receipt does.
    report(&app, &agent_token, &shipment_id, json!({"status": "returned"}))
        .await
        .expect_problem(422);
    let received = format!("/api/v1/admin/delivery/shipments/{shipment_id}/received");
    app.post(&received, Some(&agent_token), json!({}))
        .await
        .expect_problem(403);
    assert_eq!(
        app.get(&format!("/api/v1/payments/{order_id}"), Some(&token))
            .await
            .expect(200)
            .body["status"],
        "succeeded"
    );
    app.post(&received, Some(&admin), json!({"note": "back on the shelf"}))
        .await
        .expect(200);
    wait_for_status(&app, &token, &order_id, "cancelled").await;
    let refunded = platform::testing::eventually(Duration::from_secs(10), || async {
        let payment = app
            .get(&format!("/api/v1/payments/{order_id}"), Some(&token))
            .await
            .expect(200)
            .body;
        (payment["refunded_minor"] == payment["captured_minor"]).then_some(payment)
    })
    .await;
    assert!(refunded.is_some(), "the money goes back once the parcel is back");
    let restocked = platform::testing::eventually(Duration::from_secs(10), || async {
        let stock = app
            .get("/api/v1/admin/inventory/SHIP-BACK", Some(&admin))
            .await
            .expect(200)
            .body;
        (stock["on_hand"] == 4).then_some(())
    })
    .await;
    assert!(restocked.is_some(), "and so does the stock");
}
