//! The router over HTTP (on SQLite) with real access tokens: who may see and move which
//! shipment, the customer's tracking, proof of delivery, and the admin routes.

use axum::body::Body;
use axum::Router;
use delivery::events as shipment_events;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use platform::auth::Role;
use platform::testing::TestTokens;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

use super::{open_sqlite, order, Fixture, Order};

struct App {
    f: Fixture,
    router: Router,
    tokens: TestTokens,
}

async fn app() -> App {
    let f = open_sqlite().await.unwrap();
    let tokens = TestTokens::new();
    let verifier = tokens.verifier();
    let router = delivery::router(f.delivery.clone(), verifier);
    App { f, router, tokens }
}

/// An answer: status, content type, and the body as JSON (`Null` when empty).
type Answer = (StatusCode, String, Value);

impl App {
    fn token(&self, user: Uuid, role: Role) -> String {
        self.tokens.token(&user.to_string(), role)
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&json).unwrap())
            }
            None => Body::empty(),
        };
        let response = self.router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, content_type, json)
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn set_status(&self, shipment: &str, token: &str, body: Value) -> Answer {
        self.post(&format!("/api/v1/delivery/shipments/{shipment}/status"), token, body)
            .await
    }

    /// An order paid (or confirmed, for cash on delivery) and its shipment's id.
    async fn shipped(&self, o: &Order) -> String {
        let kind = if o.payment_method == "cod" {
            shipment_events::ORDER_CONFIRMED
        } else {
            shipment_events::ORDER_PAID
        };
        self.f.ship(kind, o).await.id
    }
}

fn problem(answer: &Answer, status: StatusCode) -> &Value {
    assert_eq!(answer.0, status, "{}", answer.2);
    assert_eq!(answer.1, "application/problem+json");
    &answer.2
}

#[tokio::test]
async fn agent_a_cannot_update_agent_bs_shipment_and_a_customer_cannot_update_any() {
    let app = app().await;
    let a = app.f.agent("Asha", &["Pune"], true).await;
    let b = app.f.agent("Bala", &["Mumbai"], true).await;
    let o = order("Mumbai", "card");
    let shipment = app.shipped(&o).await;
    let (token_a, token_b) = (app.token(a, Role::DeliveryAgent), app.token(b, Role::DeliveryAgent));
    let owner = app.token(o.user_id, Role::Customer);
    let seller = app.token(Uuid::now_v7(), Role::Seller);
    let body = json!({"status": "picked_up", "note": "collected"});

    // Agent A learns nothing of B's shipment: 404, as if it did not exist.
    problem(
        &app.set_status(&shipment, &token_a, body.clone()).await,
        StatusCode::NOT_FOUND,
    );
    problem(
        &app.get(&format!("/api/v1/delivery/shipments/{shipment}"), &token_a)
            .await,
        StatusCode::NOT_FOUND,
    );
    // Customers (even the order's own) and sellers may not report statuses at all.
    problem(
        &app.set_status(&shipment, &owner, body.clone()).await,
        StatusCode::FORBIDDEN,
    );
    problem(
        &app.set_status(&shipment, &seller, body.clone()).await,
        StatusCode::FORBIDDEN,
    );
    problem(
        &app.get(&format!("/api/v1/delivery/shipments/{shipment}"), &owner).await,
        StatusCode::FORBIDDEN,
    );
    problem(
        &app.get("/api/v1/delivery/assignments", &owner).await,
        StatusCode::FORBIDDEN,
    );
    let anonymous = app
        .call(
            Method::POST,
            &format!("/api/v1/delivery/shipments/{shipment}/status"),
            None,
            Some(body.clone()),
        )
        .await;
    problem(&anonymous, StatusCode::UNAUTHORIZED);
    assert_eq!(app.f.shipment_of(&o).await.status, "assigned", "nothing moved");

    // A's list is empty; B's holds the shipment, and B moves it.
    let (status, _, page) = app.get("/api/v1/delivery/assignments", &token_a).await;
    assert_eq!((status, page["items"].as_array().unwrap().len()), (StatusCode::OK, 0));
    let (status, _, page) = app.get("/api/v1/delivery/assignments", &token_b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"][0]["id"], shipment.as_str());
    assert_eq!(page["items"][0]["address"]["line1"], "12 MG Road");
    assert!(page["items"][0].get("code_hash").is_none());
    let (status, _, view) = app.set_status(&shipment, &token_b, body.clone()).await;
    assert_eq!((status, view["status"].clone()), (StatusCode::OK, json!("picked_up")));
    let (status, _, view) = app.set_status(&shipment, &token_b, body).await;
    assert_eq!(
        (status, view["status"].clone()),
        (StatusCode::OK, json!("picked_up")),
        "a repeat is a no-op"
    );
    let (status, _, view) = app
        .get(&format!("/api/v1/delivery/shipments/{shipment}"), &token_b)
        .await;
    assert_eq!(status, StatusCode::OK);
    let history: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["pending", "assigned", "picked_up"]);
    assert_eq!(view["history"][2]["note"], "collected");
    assert_eq!(view["history"][2]["actor"], format!("agent:{b}"));

    // Bad input: an unknown status and a status set by other means are 422, an invalid move a
    // 409 naming both ends, a too-long note a 422.
    let token_b = app.token(b, Role::DeliveryAgent);
    let answer = app
        .set_status(&shipment, &token_b, json!({"status": "teleported"}))
        .await;
    assert_eq!(
        problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["errors"][0]["field"],
        "status"
    );
    let answer = app
        .set_status(&shipment, &token_b, json!({"status": "cancelled"}))
        .await;
    problem(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    let answer = app
        .set_status(&shipment, &token_b, json!({"status": "delivered"}))
        .await;
    let conflict = problem(&answer, StatusCode::CONFLICT);
    assert_eq!(
        (conflict["from"].clone(), conflict["to"].clone()),
        (json!("picked_up"), json!("delivered"))
    );
    let answer = app
        .set_status(
            &shipment,
            &token_b,
            json!({"status": "in_transit", "note": "n".repeat(501)}),
        )
        .await;
    assert_eq!(
        problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["errors"][0]["field"],
        "note"
    );
    problem(
        &app.set_status("not-a-uuid", &token_b, json!({"status": "in_transit"}))
            .await,
        StatusCode::NOT_FOUND,
    );

    // An admin may move any shipment.
    let admin = app.token(Uuid::now_v7(), Role::Admin);
    let (status, _, view) = app.set_status(&shipment, &admin, json!({"status": "in_transit"})).await;
    assert_eq!((status, view["status"].clone()), (StatusCode::OK, json!("in_transit")));
}

#[tokio::test]
async fn the_owner_sees_the_tracking_and_another_customer_gets_404() {
    let app = app().await;
    let agent = app.f.agent("Asha Rao", &["Pune"], true).await;
    let o = order("Pune", "card");
    let shipment = app.shipped(&o).await;
    let path = format!("/api/v1/orders/{}/tracking", o.id);
    let owner = app.token(o.user_id, Role::Customer);
    let token = app.token(agent, Role::DeliveryAgent);
    app.set_status(&shipment, &token, json!({"status": "picked_up"})).await;
    app.set_status(
        &shipment,
        &token,
        json!({"status": "in_transit", "note": "left the hub"}),
    )
    .await;

    let (status, _, tracking) = app.get(&path, &owner).await;
    assert_eq!(status, StatusCode::OK, "{tracking}");
    assert_eq!(tracking["status"], "in_transit");
    assert_eq!(tracking["shipment_id"], shipment.as_str());
    assert_eq!(tracking["agent_name"], "Asha Rao");
    assert_eq!(tracking["cod"], false);
    assert_eq!(tracking["order_number"], "ORD-2026-000042");
    let steps: Vec<(&str, Option<&str>)> = tracking["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["status"].as_str().unwrap(), s["note"].as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("pending", None),
            ("assigned", None),
            ("picked_up", None),
            ("in_transit", Some("left the hub"))
        ]
    );
    assert!(tracking["steps"][0]["at"].as_str().unwrap().ends_with('Z'));
    assert!(tracking.get("delivered_at").is_none());
    assert!(tracking.get("address").is_none() && tracking["steps"][0].get("actor").is_none());

    let stranger = app.token(Uuid::now_v7(), Role::Customer);
    problem(&app.get(&path, &stranger).await, StatusCode::NOT_FOUND);
    let admin = app.token(Uuid::now_v7(), Role::Admin);
    assert_eq!(app.get(&path, &admin).await.0, StatusCode::OK);
    let unshipped = format!("/api/v1/orders/{}/tracking", Uuid::now_v7());
    problem(&app.get(&unshipped, &owner).await, StatusCode::NOT_FOUND);
    problem(
        &app.call(Method::GET, &path, None, None).await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn cash_on_delivery_needs_the_customers_code() {
    let app = app().await;
    let agent = app.f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "cod");
    let shipment = app.shipped(&o).await;
    let token = app.token(agent, Role::DeliveryAgent);
    for status in ["picked_up", "in_transit", "out_for_delivery"] {
        assert_eq!(
            app.set_status(&shipment, &token, json!({"status": status})).await.0,
            StatusCode::OK
        );
    }
    let code = app.f.code_of(&o).await;
    let wrong = if code == "123456" { "654321" } else { "123456" };

    let answer = app.set_status(&shipment, &token, json!({"status": "delivered"})).await;
    let detail = problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["detail"].clone();
    assert!(detail.as_str().unwrap().contains("code"), "{detail}");
    assert_eq!(app.f.shipment_of(&o).await.code_attempts, 0, "no code, no try");

    let answer = app
        .set_status(&shipment, &token, json!({"status": "delivered", "code": wrong}))
        .await;
    let detail = problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["detail"].clone();
    assert!(detail.as_str().unwrap().contains("4 tries left"), "{detail}");
    let answer = app
        .set_status(&shipment, &token, json!({"status": "delivered", "code": "12ab"}))
        .await;
    assert_eq!(
        problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["errors"][0]["field"],
        "code"
    );
    let row = app.f.shipment_of(&o).await;
    assert_eq!((row.status.as_str(), row.code_attempts), ("out_for_delivery", 1));

    let (status, _, view) = app
        .set_status(
            &shipment,
            &token,
            json!({"status": "delivered", "code": format!(" {code} "), "note": "cash collected"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (view["status"].clone(), view["proof"].clone(), view["cod"].clone()),
        (json!("delivered"), json!("code"), json!(true))
    );
    assert_eq!(view["code_attempts"], 1, "only the wrong code counts");
    assert!(view["delivered_at"].is_string());

    // A prepaid order is delivered without a code, but a code given is checked.
    let prepaid = order("Pune", "upi");
    let other = app.shipped(&prepaid).await;
    for status in ["picked_up", "in_transit", "out_for_delivery"] {
        app.set_status(&other, &token, json!({"status": status})).await;
    }
    let prepaid_code = app.f.code_of(&prepaid).await;
    let wrong = if prepaid_code == "000001" { "000002" } else { "000001" };
    let answer = app
        .set_status(&other, &token, json!({"status": "delivered", "code": wrong}))
        .await;
    problem(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, view) = app.set_status(&other, &token, json!({"status": "delivered"})).await;
    assert_eq!((status, view["proof"].clone()), (StatusCode::OK, json!("none")));
}

#[tokio::test]
async fn the_full_path_emits_its_events_in_order() {
    let app = app().await;
    let agent = app.f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "card");
    let shipment = app.shipped(&o).await;
    let token = app.token(agent, Role::DeliveryAgent);
    let path = [
        "picked_up",
        "in_transit",
        "out_for_delivery",
        "failed_attempt",
        "rescheduled",
        "out_for_delivery",
        "delivered",
    ];
    for status in path {
        let (code, _, view) = app
            .set_status(
                &shipment,
                &token,
                json!({"status": status, "note": format!("now {status}")}),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{status}: {view}");
    }
    let events = app.f.events_of(&o).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            shipment_events::SHIPMENT_CREATED,
            shipment_events::SHIPMENT_ASSIGNED,
            shipment_events::SHIPMENT_PICKED_UP,
            shipment_events::SHIPMENT_IN_TRANSIT,
            shipment_events::SHIPMENT_OUT_FOR_DELIVERY,
            shipment_events::SHIPMENT_FAILED_ATTEMPT,
            shipment_events::SHIPMENT_RESCHEDULED,
            shipment_events::SHIPMENT_OUT_FOR_DELIVERY,
            shipment_events::SHIPMENT_DELIVERED,
        ]
    );
    let mut previous = "assigned";
    for ((_, data), status) in events[2..].iter().zip(path) {
        assert_eq!(data["status"], status);
        assert_eq!(data["previous_status"], previous);
        assert_eq!(data["note"], format!("now {status}"));
        assert_eq!(data["agent_id"], agent.to_string());
        assert_eq!(data["shipment_id"], shipment.as_str());
        assert!(data.get("delivery_code").is_none());
        previous = status;
    }
    let delivered = &events.last().unwrap().1;
    assert_eq!(
        (delivered["proof"].clone(), delivered["cod"].clone()),
        (json!("none"), json!(false))
    );
    assert!(platform::clock::parse_rfc3339(delivered["at"].as_str().unwrap()).is_some());

    // Delivered is final.
    let answer = app
        .set_status(&shipment, &token, json!({"status": "returned_to_sender"}))
        .await;
    problem(&answer, StatusCode::CONFLICT);
    let (_, _, page) = app.get("/api/v1/delivery/assignments", &token).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "no longer held");
    let (_, _, page) = app.get("/api/v1/delivery/assignments?active=false", &token).await;
    assert_eq!(page["items"][0]["status"], "delivered");
    let (_, _, page) = app.get("/api/v1/delivery/assignments?status=delivered", &token).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    problem(
        &app.get("/api/v1/delivery/assignments?status=lost", &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
}

#[tokio::test]
async fn admins_register_agents_list_shipments_and_assign() {
    let app = app().await;
    let admin_id = Uuid::now_v7();
    let admin = app.token(admin_id, Role::Admin);
    let user = app.f.directory.add("Dev Kumar", Role::DeliveryAgent);
    let customer = app.f.directory.add("Carla", Role::Customer);
    let agent_path = format!("/api/v1/admin/delivery/agents/{user}");

    let put = |path: String, body: Value| {
        let app = &app;
        let admin = admin.clone();
        async move { app.call(Method::PUT, &path, Some(&admin), Some(body)).await }
    };
    let answer = put(
        format!("/api/v1/admin/delivery/agents/{customer}"),
        json!({"cities": ["Pune"], "active": true}),
    )
    .await;
    assert_eq!(
        problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["errors"][0]["field"],
        "user_id"
    );
    let answer = put(agent_path.clone(), json!({"cities": [], "active": true})).await;
    problem(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, view) = put(agent_path.clone(), json!({"cities": ["Goa", "Pune"], "active": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["full_name"], "Dev Kumar");
    let (status, _, view) = put(
        agent_path.clone(),
        json!({"cities": ["Goa"], "active": true, "version": 1}),
    )
    .await;
    assert_eq!((status, view["version"].clone()), (StatusCode::OK, json!(2)));
    let answer = put(
        agent_path.clone(),
        json!({"cities": ["Goa"], "active": true, "version": 1}),
    )
    .await;
    problem(&answer, StatusCode::CONFLICT);
    let agent_token = app.token(user, Role::DeliveryAgent);
    let answer = app
        .call(
            Method::PUT,
            &agent_path,
            Some(&agent_token),
            Some(json!({"cities": ["Goa"], "active": true})),
        )
        .await;
    problem(&answer, StatusCode::FORBIDDEN);

    let pending = order("Pune", "card");
    let shipment = app.shipped(&pending).await;
    let goa = order("goa", "card");
    app.shipped(&goa).await;

    let (status, _, agents) = app.get("/api/v1/admin/delivery/agents", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(agents["items"][0]["load"], 1);
    assert_eq!(agents["items"][0]["cities"], json!(["Goa"]));
    let (status, _, one) = app.get(&agent_path, &admin).await;
    assert_eq!(
        (status, one["user_id"].clone()),
        (StatusCode::OK, json!(user.to_string()))
    );
    problem(
        &app.get(&format!("/api/v1/admin/delivery/agents/{customer}"), &admin)
            .await,
        StatusCode::NOT_FOUND,
    );

    let (status, _, page) = app.get("/api/v1/admin/delivery/shipments?status=pending", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], shipment.as_str());
    let (_, _, page) = app.get("/api/v1/admin/delivery/shipments?city=%20GOA", &admin).await;
    assert_eq!(page["items"][0]["order_id"], goa.id.to_string());
    let (_, _, page) = app
        .get(
            &format!("/api/v1/admin/delivery/shipments?agent_id={user}&limit=1"),
            &admin,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page.get("next_cursor").is_none());
    let (_, _, page) = app
        .get(
            &format!("/api/v1/admin/delivery/shipments?order_id={}", pending.id),
            &admin,
        )
        .await;
    assert_eq!(page["items"][0]["id"], shipment.as_str());
    let (_, _, page) = app.get("/api/v1/admin/delivery/shipments?limit=1", &admin).await;
    let cursor = page["next_cursor"]
        .as_str()
        .expect("two shipments, one per page")
        .to_owned();
    let (_, _, next) = app
        .get(
            &format!("/api/v1/admin/delivery/shipments?limit=1&cursor={cursor}"),
            &admin,
        )
        .await;
    assert_ne!(next["items"][0]["id"], page["items"][0]["id"]);
    problem(
        &app.get("/api/v1/admin/delivery/shipments", &agent_token).await,
        StatusCode::FORBIDDEN,
    );

    // Nobody serves Pune: automatic assignment has nobody; an explicit agent works.
    let assign = format!("/api/v1/admin/delivery/shipments/{shipment}/assign");
    let answer = app.call(Method::POST, &assign, Some(&admin), None).await;
    problem(&answer, StatusCode::CONFLICT);
    let (status, _, view) = app.post(&assign, &admin, json!({"agent_id": user})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (view["status"].clone(), view["agent_name"].clone()),
        (json!("assigned"), json!("Dev Kumar"))
    );
    let (status, _, view) = app
        .get(&format!("/api/v1/admin/delivery/shipments/{shipment}"), &admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["history"][1]["actor"], format!("admin:{admin_id}"));

    let code_path = format!("/api/v1/admin/delivery/shipments/{shipment}/code");
    let (status, _, issued) = app.call(Method::POST, &code_path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(delivery::domain::is_code(issued["code"].as_str().unwrap()));
    problem(
        &app.call(Method::POST, &code_path, Some(&agent_token), None).await,
        StatusCode::FORBIDDEN,
    );
}

#[tokio::test]
async fn only_an_admin_receives_a_returned_parcel() {
    let app = app().await;
    let agent = app.f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "card");
    let shipment = app.shipped(&o).await;
    let token = app.token(agent, Role::DeliveryAgent);
    let admin = app.token(Uuid::now_v7(), Role::Admin);
    let received = format!("/api/v1/admin/delivery/shipments/{shipment}/received");

    // Not on its way back yet: 409 naming the move.
    let answer = app.call(Method::POST, &received, Some(&admin), None).await;
    let conflict = problem(&answer, StatusCode::CONFLICT);
    assert_eq!(
        (conflict["from"].clone(), conflict["to"].clone()),
        (json!("assigned"), json!("returned"))
    );
    for status in [
        "picked_up",
        "in_transit",
        "out_for_delivery",
        "failed_attempt",
        "returned_to_sender",
    ] {
        let (code, _, view) = app.set_status(&shipment, &token, json!({"status": status})).await;
        assert_eq!(code, StatusCode::OK, "{status}: {view}");
    }
    let (_, _, page) = app.get("/api/v1/delivery/assignments", &token).await;
    assert_eq!(
        page["items"][0]["status"], "returned_to_sender",
        "still the agent's until it is back"
    );

    // The agent can neither set `returned` (422, like the other statuses not set by hand) nor
    // call the admin route (403).
    for status in ["returned", "pending", "assigned", "cancelled"] {
        let answer = app.set_status(&shipment, &token, json!({"status": status})).await;
        assert_eq!(
            problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["errors"][0]["field"],
            "status",
            "{status}"
        );
    }
    problem(
        &app.post(&received, &token, json!({"note": "it is back"})).await,
        StatusCode::FORBIDDEN,
    );
    problem(
        &app.post(&received, &app.token(o.user_id, Role::Customer), json!({}))
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(app.f.shipment_of(&o).await.status, "returned_to_sender");
    assert_eq!(
        app.f.events_of(&o).await.last().unwrap().0,
        shipment_events::SHIPMENT_RETURNED_TO_SENDER
    );
    let answer = app.post(&received, &admin, json!({"note": "n".repeat(501)})).await;
    assert_eq!(
        problem(&answer, StatusCode::UNPROCESSABLE_ENTITY)["errors"][0]["field"],
        "note"
    );

    let (status, _, view) = app.post(&received, &admin, json!({"note": "sealed"})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "returned");
    assert_eq!(view["history"].as_array().unwrap().last().unwrap()["note"], "sealed");
    let (kind, data) = app.f.events_of(&o).await.pop().unwrap();
    assert_eq!(kind, shipment_events::SHIPMENT_RETURNED);
    assert_eq!(data["previous_status"], "returned_to_sender");
    // Again (with no body): no change.
    let (status, _, again) = app.call(Method::POST, &received, Some(&admin), None).await;
    assert_eq!(
        (status, again["version"].clone()),
        (StatusCode::OK, view["version"].clone())
    );
    let (_, _, page) = app.get("/api/v1/delivery/assignments", &token).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "no longer held");
    problem(
        &app.post(
            &format!("/api/v1/admin/delivery/shipments/{}/received", Uuid::now_v7()),
            &admin,
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn a_recalled_parcel_is_shown_recalled_and_cannot_be_delivered() {
    let app = app().await;
    let agent = app.f.agent("Asha", &["Pune"], true).await;
    let o = order("Pune", "cod");
    let shipment = app.shipped(&o).await;
    let token = app.token(agent, Role::DeliveryAgent);
    for status in ["picked_up", "in_transit", "out_for_delivery"] {
        app.set_status(&shipment, &token, json!({"status": status})).await;
    }
    let (_, _, page) = app.get("/api/v1/delivery/assignments", &token).await;
    assert_eq!(page["items"][0]["recalled"], false);

    // The order is cancelled while the parcel is out for delivery (the events crossed).
    assert!(app
        .f
        .consumer
        .process(&super::order_event(shipment_events::ORDER_CANCELLED, &o))
        .await
        .unwrap());
    let (_, _, page) = app.get("/api/v1/delivery/assignments", &token).await;
    assert_eq!(page["items"][0]["id"], shipment.as_str());
    assert_eq!(page["items"][0]["recalled"], true);
    assert!(page["items"][0]["recalled_at"].is_string());
    let (_, _, view) = app.get(&format!("/api/v1/delivery/shipments/{shipment}"), &token).await;
    assert_eq!(view["recalled"], true);
    assert_eq!(
        view["history"].as_array().unwrap().last().unwrap()["note"],
        "order cancelled: return the parcel"
    );

    let code = app.f.code_of(&o).await;
    let answer = app
        .set_status(&shipment, &token, json!({"status": "delivered", "code": code}))
        .await;
    let conflict = problem(&answer, StatusCode::CONFLICT);
    let detail = conflict["detail"].as_str().unwrap();
    assert!(
        detail.contains("order was cancelled") && detail.contains("back to the sender"),
        "{detail}"
    );
    assert_eq!(conflict["recalled"], true);
    let (status, _, view) = app
        .set_status(&shipment, &token, json!({"status": "returned_to_sender"}))
        .await;
    assert_eq!(
        (status, view["status"].clone()),
        (StatusCode::OK, json!("returned_to_sender"))
    );
    let admin = app.token(Uuid::now_v7(), Role::Admin);
    problem(
        &app.call(
            Method::POST,
            &format!("/api/v1/admin/delivery/shipments/{shipment}/code"),
            Some(&admin),
            None,
        )
        .await,
        StatusCode::CONFLICT,
    );
}

#[test]
fn the_openapi_document_lists_the_routes() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(delivery::DeliveryApi::openapi()).unwrap();
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for path in [
        "/api/v1/delivery/assignments",
        "/api/v1/delivery/shipments/{id}",
        "/api/v1/delivery/shipments/{id}/status",
        "/api/v1/orders/{id}/tracking",
        "/api/v1/admin/delivery/shipments",
        "/api/v1/admin/delivery/shipments/{id}",
        "/api/v1/admin/delivery/shipments/{id}/assign",
        "/api/v1/admin/delivery/shipments/{id}/code",
        "/api/v1/admin/delivery/shipments/{id}/received",
        "/api/v1/admin/delivery/agents",
        "/api/v1/admin/delivery/agents/{user_id}",
    ] {
        assert!(paths.iter().any(|p| p.as_str() == path), "{path} in {paths:?}");
    }
}
