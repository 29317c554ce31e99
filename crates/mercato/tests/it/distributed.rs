//! The distributed mode for real: `scripts/stack.sh` starts every service in its own process
//! (two replicas of catalog and of orders) and the gateway, on the local PostgreSQL, Redis and
//! NATS JetStream; the journey goes through the gateway only. Needs
//! `MERCATO_TEST_POSTGRES_URL`, `MERCATO_TEST_NATS_URL` and `MERCATO_TEST_REDIS_URL` (CI sets
//! them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{token_of, Reply, ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD};

/// Eleven processes (thirteen with brokers of its own) are what this machine affords at once:
/// the stack tests take turns.
pub(crate) static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running stack; stopped and forgotten (databases, stream, Redis keys) when dropped.
pub(crate) struct Stack {
    pub(crate) url: String,
    port: u16,
    pub(crate) dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    pub(crate) client: reqwest::Client,
    /// The PostgreSQL server, without a database name.
    server: String,
    name: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/stack.sh")
}

/// Runs `scripts/stack.sh` with `env`.
fn stack_sh(env: &[(String, String)], args: &[&str]) -> std::io::Result<Output> {
    Command::new("bash")
        .arg(script())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
}

fn succeeded(args: &[&str], output: std::io::Result<Output>) {
    let output = output.expect("the stack script runs");
    assert!(
        output.status.success(),
        "stack.sh {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A base port with the thirteen ports above it free (processes, then NATS and Redis).
fn free_base() -> u16 {
    let seed = u16::try_from(std::process::id() % 1_000).unwrap_or(0);
    (0..200u16)
        .map(|i| 21_000 + ((seed + i * 37) % 1_000) * 16)
        .find(|base| (0..14).all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok()))
        .expect("a free port range")
}

/// The trace id the journey's checkout request arrives with.
const JOURNEY_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

impl Stack {
    /// With `own_brokers`, the stack runs a NATS and a Redis server of its own (so a test may
    /// kill them); `settings` reach every process.
    pub(crate) fn start_with(own_brokers: bool, settings: &[(&str, &str)]) -> Option<Self> {
        let (Ok(pg), Ok(nats), Ok(redis)) = (
            std::env::var("MERCATO_TEST_POSTGRES_URL"),
            std::env::var("MERCATO_TEST_NATS_URL"),
            std::env::var("MERCATO_TEST_REDIS_URL"),
        ) else {
            eprintln!("MERCATO_TEST_POSTGRES_URL, _NATS_URL and _REDIS_URL are not all set: distributed test skipped");
            return None;
        };
        // The server, without the test database's name.
        let server = match pg.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && !server.ends_with('/') => server.to_owned(),
            _ => pg.clone(),
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_base();
        let name = format!("t{}_{}", std::process::id(), port);
        let stack_name = name.clone();
        let mut env = vec![
            ("MERCATO_BIN".to_owned(), env!("CARGO_BIN_EXE_mercato").to_owned()),
            ("STACK_DIR".to_owned(), dir.path().display().to_string()),
            ("STACK_PORT".to_owned(), port.to_string()),
            ("STACK_NAME".to_owned(), name),
            ("STACK_FRESH".to_owned(), "1".to_owned()),
            ("POSTGRES_URL".to_owned(), server.clone()),
            ("NATS_URL".to_owned(), nats),
            ("REDIS_URL".to_owned(), redis),
            ("MERCATO_ADMIN_EMAIL".to_owned(), ADMIN_EMAIL.to_owned()),
            ("MERCATO_ADMIN_PASSWORD".to_owned(), ADMIN_PASSWORD.to_owned()),
            ("MERCATO_LOG_FORMAT".to_owned(), "json".to_owned()),
            (
                "STACK_OWN_BROKERS".to_owned(),
                if own_brokers { "1" } else { "0" }.to_owned(),
            ),
        ];
        env.extend(settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let stack = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            env,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            server,
            name: stack_name,
        };
        stack.run(&["start"]);
        Some(stack)
    }

    fn run(&self, args: &[&str]) {
        succeeded(args, stack_sh(&self.env, args));
    }

    /// Changes a setting for the processes started from now on (a revive restarts a process
    /// with it).
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// kill -9 of one process (`orders-1`, or `nats` / `redis` when the stack owns them).
    pub(crate) async fn kill(&self, process: &str) {
        self.run_async(&["kill", process]).await;
    }

    /// Starts a killed process again and waits until it is ready.
    pub(crate) async fn revive(&self, process: &str) {
        self.run_async(&["revive", process]).await;
    }

    /// [`Stack::run`] off the runtime's threads (the script waits for processes).
    async fn run_async(&self, args: &[&str]) {
        let env = self.env.clone();
        let owned: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            stack_sh(&env, &args)
        })
        .await
        .unwrap();
        succeeded(args, output);
    }

    /// One service's database, as the stack created it.
    pub(crate) async fn db(&self, service: &str) -> platform::store::Db {
        let url = format!("{}/mercato_{}_{service}", self.server, self.name);
        let options = platform::store::DbOptions {
            max_connections: 2,
            ..platform::store::DbOptions::default()
        };
        platform::store::Db::connect(&url, &options).await.unwrap()
    }

    /// The port of one process (`catalog-2`), as the script numbers them.
    fn port_of(&self, process: &str) -> u16 {
        let offset = match process {
            "identity-1" => 1,
            "catalog-1" => 2,
            "catalog-2" => 3,
            "orders-1" => 6,
            "orders-2" => 7,
            "notifications-1" => 9,
            other => panic!("no port known for {other}"),
        };
        self.port + offset
    }

    pub(crate) async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(&self.url, Method::GET, path, token, None).await
    }

    /// A token of the admin the stack was started with.
    pub(crate) async fn admin_token(&self) -> String {
        let body = json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD});
        token_of(&self.post("/api/v1/auth/login", None, body).await.expect(200).body)
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(&self.url, Method::POST, path, token, Some(body)).await
    }

    pub(crate) async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(&self.url, Method::PUT, path, token, Some(body)).await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The processes' logs outlive a failed test, for whoever reads its output.
            let kept = std::env::temp_dir().join(format!("mercato-stack-logs-{}", self.name));
            if std::fs::create_dir_all(&kept).is_ok() {
                for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                    if entry.path().extension().is_some_and(|e| e == "log") {
                        let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
                    }
                }
                eprintln!("the stack's logs are kept in {}", kept.display());
            }
        }
        let _ = stack_sh(&self.env, &["stop"]);
        let _ = stack_sh(&self.env, &["drop"]);
    }
}

pub(crate) async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    platform::testing::eventually(Duration::from_secs(30), check)
        .await
        .unwrap_or_else(|| panic!("{what} did not happen within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_journey_through_the_gateway_with_every_service_in_its_own_process() {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    // Every process exports its spans to this collector.
    let collector = platform::testing::OtlpCollector::start().await.unwrap();
    let settings = [
        ("MERCATO_TELEMETRY__OTLP_ENDPOINT", collector.url.as_str()),
        // The test is the trusted tracer in front of the gateway.
        ("MERCATO_TELEMETRY__TRUST_INCOMING_TRACEPARENT", "true"),
    ];
    let Some(stack) = Stack::start_with(false, &settings) else {
        return;
    };
    let admin = stack.admin_token().await;

    // The catalog (admin) → inventory learns the SKU from product.created over NATS.
    let category = stack
        .post("/api/v1/admin/categories", Some(&admin), json!({"name": "Distributed"}))
        .await
        .expect(201)
        .body;
    let product = stack
        .post(
            "/api/v1/products",
            Some(&admin),
            json!({
                "name": "Stratus Rain Jacket", "brand": "Acme", "category_id": category["id"],
                "status": "active", "description": "Keeps the rain out.",
                "variants": [{"sku": "DIST-1", "price": 1_250}],
            }),
        )
        .await
        .expect(201)
        .body;
    eventually("inventory learning DIST-1", || async {
        (stack.get("/api/v1/admin/inventory/DIST-1", Some(&admin)).await.status == StatusCode::OK).then_some(())
    })
    .await;
    stack
        .put("/api/v1/admin/inventory/DIST-1", Some(&admin), json!({"on_hand": 10}))
        .await
        .expect(200);

    // Each catalog replica indexes the product from the events itself.
    for replica in ["catalog-1", "catalog-2"] {
        let base = format!("http://127.0.0.1:{}", stack.port_of(replica));
        eventually(&format!("{replica} finding the product"), || async {
            let found = stack
                .call(&base, Method::GET, "/api/v1/search?q=stratus", None, None)
                .await
                .body;
            (found["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["id"] == product["id"])))
            .then_some(())
        })
        .await;
    }

    // The customer: cart (cart calls catalog and inventory), checkout (orders calls cart,
    // catalog, inventory and payments), the hosted page and its webhook (payments).
    let customer = stack
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "far@example.com", "full_name": "Far Away", "password": PASSWORD}),
        )
        .await
        .expect(201)
        .body;
    let token = token_of(&customer);
    let cart = stack
        .post(
            "/api/v1/cart/items",
            Some(&token),
            json!({"sku": "DIST-1", "quantity": 2}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(cart["subtotal"], 2_500, "{cart}");
    assert_eq!(cart["lines"][0]["name"], "Stratus Rain Jacket", "{cart}");
    stack
        .post(
            "/api/v1/cart/items",
            Some(&token),
            json!({"sku": "DIST-1", "quantity": 11}),
        )
        .await
        .expect_problem(409);

    let response = stack
        .client
        .post(format!("{}/api/v1/checkout", stack.url))
        .bearer_auth(&token)
        .header("Idempotency-Key", "distributed-1")
        .header("X-Correlation-Id", "journey-correlation-1")
        .header("traceparent", format!("00-{JOURNEY_TRACE}-00f067aa0ba902b7-01"))
        .json(&json!({
            "payment_method": "card",
            "shipping_address": {
                "full_name": "Far Away", "line1": "1 Long Road", "city": "Berlin",
                "postal_code": "10115", "country": "DE", "phone": "+49 30 1234567",
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let placed: Value = response.json().await.unwrap();
    let order_id = placed["order"]["id"].as_str().unwrap().to_owned();
    let number = placed["order"]["number"].as_str().unwrap().to_owned();
    assert_eq!(placed["order"]["totals"]["subtotal"], 2_500, "{placed}");
    let stock = stack
        .get("/api/v1/admin/inventory/DIST-1", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(stock["reserved"], 2, "the reservation went through inventory: {stock}");

    let redirect = placed["payment"]["redirect_url"].as_str().unwrap();
    assert!(
        redirect.starts_with(&stack.url),
        "the hosted page is behind the gateway: {redirect}"
    );
    let page = stack.client.get(redirect).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let approved = stack.client.post(format!("{redirect}/approve")).send().await.unwrap();
    assert!(approved.status().is_success(), "{}", approved.status());

    let path = format!("/api/v1/orders/{order_id}");
    eventually("the order becoming paid", || async {
        (stack.get(&path, Some(&token)).await.body["status"] == "paid").then_some(())
    })
    .await;
    eventually("inventory committing the reservation", || async {
        let stock = stack.get("/api/v1/admin/inventory/DIST-1", Some(&admin)).await.body;
        (stock["on_hand"] == 8 && stock["reserved"] == 0).then_some(())
    })
    .await;
    // Delivery made a shipment; notifications mailed the customer, whose address came from
    // identity over HTTP.
    eventually("a shipment to track", || async {
        let tracking = stack
            .get(&format!("/api/v1/orders/{order_id}/tracking"), Some(&token))
            .await;
        (tracking.status == StatusCode::OK).then_some(())
    })
    .await;
    let mail_dir = stack.dir.path().join("data/notifications-1/mail");
    eventually("the order email", || async {
        let mails = std::fs::read_dir(&mail_dir).ok()?;
        mails
            .filter_map(Result::ok)
            .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
            .any(|mail| mail.contains("far@example.com") && mail.contains(&number))
            .then_some(())
    })
    .await;
    // The checkout's correlation id reached the consumers in other processes, through the
    // events, and is on their log lines.
    for (process, consumer) in [
        ("inventory-1", "inventory-orders"),
        ("notifications-1", "notifications"),
    ] {
        let path = stack.dir.path().join(format!("{process}.log"));
        eventually(
            &format!("{process} logging the checkout's events under its correlation id"),
            || async {
                let log = std::fs::read_to_string(&path).ok()?;
                log.lines()
                    .any(|line| {
                        line.contains("event handled")
                            && line.contains("journey-correlation-1")
                            && line.contains(consumer)
                    })
                    .then_some(())
            },
        )
        .await;
    }
    // The checkout is one trace across the processes it crossed: the gateway's span, the
    // orders span under it, the calls orders made to other services, and the consumers of the
    // events it wrote, each process exporting its own spans.
    let spans = eventually("the checkout's spans at the collector", || async {
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == JOURNEY_TRACE)
            .collect();
        let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        let consumed = spans.iter().any(|s| s.name == "event");
        ([
            "mercato-gateway",
            "mercato-orders",
            "mercato-cart",
            "mercato-inventory",
            "mercato-payments",
        ]
        .iter()
        .all(|service| services.contains(service))
            && consumed)
            .then_some(spans.clone())
    })
    .await;
    let edge = spans
        .iter()
        .find(|s| s.service == "mercato-gateway" && s.name == "request")
        .expect("the gateway's request span");
    assert_eq!(
        edge.parent_span_id, "00f067aa0ba902b7",
        "the client's span is the gateway's parent"
    );
    let placing = spans
        .iter()
        .find(|s| s.service == "mercato-orders" && s.attribute("route") == Some("/api/v1/checkout"))
        .expect("the orders request span");
    assert_eq!(
        placing.parent_span_id, edge.span_id,
        "the proxied request continues the trace"
    );
    for service in ["mercato-inventory", "mercato-cart", "mercato-payments"] {
        assert!(
            spans
                .iter()
                .any(|s| s.service == service && s.name == "request" && s.parent_span_id == placing.span_id),
            "orders' call to {service} carries the trace: {spans:#?}"
        );
    }
    // A consumer's span continues from the span that wrote its event, in another process.
    let handling = spans.iter().find(|s| s.name == "event").unwrap();
    let writer = spans
        .iter()
        .find(|s| s.span_id == handling.parent_span_id)
        .expect("the span that wrote the event");
    assert_ne!(writer.service, handling.service, "{writer:?} {handling:?}");
    assert!(spans
        .iter()
        .all(|s| s.name != "request" || s.attribute("correlation_id") == Some("journey-correlation-1")));

    // Both orders replicas answer for the same order.
    for replica in ["orders-1", "orders-2"] {
        let base = format!("http://127.0.0.1:{}", stack.port_of(replica));
        let order = stack
            .call(&base, Method::GET, &path, Some(&token), None)
            .await
            .expect(200);
        assert_eq!(order.body["status"], "paid");
    }

    // Live updates stream through the gateway from whichever replica it picked: the next two
    // changes are made on one replica each, and both arrive.
    let mut stream =
        crate::live::SseStream::connect_at(&stack.client, &stack.url, &format!("{path}/events"), &token, None).await;
    while stream.next(Duration::from_millis(1_500)).await.is_some() {}
    let status = format!("/api/v1/admin/orders/{order_id}/status");
    for (replica, next) in [("orders-1", "shipped"), ("orders-2", "delivered")] {
        let base = format!("http://127.0.0.1:{}", stack.port_of(replica));
        stack
            .call(
                &base,
                Method::PATCH,
                &status,
                Some(&admin),
                Some(json!({"status": next})),
            )
            .await
            .expect(200);
        let event = stream
            .next_status(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("`{next}`, made on {replica}, did not come through the gateway's stream"));
        assert_eq!(event.data["to_status"], next, "{:?}", event.data);
    }

    internal_routes_answer_services_only_and_the_gateway_never_proxies_them(&stack, &customer, &token).await;
    the_gateway_shows_and_replays_every_services_dead_letters(&stack, &admin, &token).await;
}

/// Puts a dead letter of `consumer` into a service's database: `kind` for `subject`.
async fn dead_letter(stack: &Stack, service: &str, consumer: &str, kind: &str, subject: &str) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let event = platform::events::Event::new("orders", kind, subject, json!({"order_id": subject}), None);
    let db = stack.db(service).await;
    sqlx::query(
        "INSERT INTO dead_letters (id, consumer, event_id, event_type, payload, error, attempts, created_at)
         VALUES ($1, $2, $3, $4, $5, 'failed in the test', 3, $6)",
    )
    .bind(&id)
    .bind(consumer)
    .bind(event.id.to_string())
    .bind(kind)
    .bind(event.to_json())
    .bind(platform::clock::now_ms())
    .execute(db.writer())
    .await
    .unwrap();
    db.close().await;
    id
}

/// (Part of the journey's test.) Each service keeps its own dead letters; the gateway lists them
/// all, newest first, one page at a time, and replays each where it is.
async fn the_gateway_shows_and_replays_every_services_dead_letters(stack: &Stack, admin: &str, customer: &str) {
    let order = uuid::Uuid::now_v7().to_string();
    let older = dead_letter(stack, "inventory", "inventory-orders", "order.cancelled", &order).await;
    let newer = dead_letter(stack, "cart", "cart-holds", "order.cancelled", &order).await;

    let all = stack
        .get("/api/v1/admin/dead-letters", Some(admin))
        .await
        .expect(200)
        .body;
    let listed: Vec<(&str, &str)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["id"].as_str().unwrap(), item["service"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        vec![(newer.as_str(), "cart"), (older.as_str(), "inventory")],
        "{all}"
    );
    assert_eq!(all["unavailable"], json!([]));

    let first = stack
        .get("/api/v1/admin/dead-letters?limit=1", Some(admin))
        .await
        .expect(200)
        .body;
    assert_eq!(first["items"][0]["id"], newer.as_str());
    let cursor = first["next_cursor"].as_str().expect("a second page").to_owned();
    let second = stack
        .get(
            &format!("/api/v1/admin/dead-letters?limit=1&cursor={cursor}"),
            Some(admin),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(second["items"][0]["id"], older.as_str());
    assert!(second.get("next_cursor").is_none(), "{second}");

    // Customers see nothing of it.
    stack
        .get("/api/v1/admin/dead-letters", Some(customer))
        .await
        .expect_problem(403);

    // The cart's letter is replayed by the cart (freeing a hold the order never had succeeds).
    let replayed = stack
        .post(
            &format!("/api/v1/admin/dead-letters/{newer}/replay"),
            Some(admin),
            json!({}),
        )
        .await
        .expect(200)
        .body;
    assert!(replayed["replayed_at"].is_string(), "{replayed}");
    let left = stack
        .get("/api/v1/admin/dead-letters", Some(admin))
        .await
        .expect(200)
        .body;
    assert_eq!(left["items"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["items"][0]["id"], older.as_str());
    stack
        .post(
            &format!("/api/v1/admin/dead-letters/{}/replay", uuid::Uuid::now_v7()),
            Some(admin),
            json!({}),
        )
        .await
        .expect_problem(404);
}

/// (Part of the journey's test: one stack per test run is what this machine affords.)
async fn internal_routes_answer_services_only_and_the_gateway_never_proxies_them(
    stack: &Stack,
    customer: &Value,
    token: &str,
) {
    let token = token.to_owned();
    let user_id = customer["user"]["id"].as_str().unwrap().to_owned();
    let path = format!("/internal/v1/users/{user_id}");

    stack.get(&path, Some(&token)).await.expect_problem(404);
    let identity = format!("http://127.0.0.1:{}", stack.port_of("identity-1"));
    stack
        .call(&identity, Method::GET, &path, Some(&token), None)
        .await
        .expect_problem(401);
    let wrong = stack
        .client
        .get(format!("{identity}{path}"))
        .header("x-service-token", "x".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let secret = std::fs::read_to_string(stack.dir.path().join("service-token")).unwrap();
    let user: Value = stack
        .client
        .get(format!("{identity}{path}"))
        .header("x-service-token", secret.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["email"], "far@example.com");
    assert_eq!(user["active"], true);
}
