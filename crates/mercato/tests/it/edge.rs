//! The gateway edge: limits, routing refusals, CORS, ids, docs and operations endpoints.

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_answers_429_with_retry_after() {
    let app = TestApp::spawn_with(|c| c.rate_limit.per_user_per_minute = 5, Vec::new()).await;
    let token = app.customer_token("busy@example.com").await;
    for _ in 0..5 {
        app.get("/api/v1/users/me", Some(&token)).await.expect(200);
    }
    let limited = app.get("/api/v1/users/me", Some(&token)).await.expect_problem(429);
    let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    // Another user is not affected.
    let other = app.customer_token("calm@example.com").await;
    app.get("/api/v1/users/me", Some(&other)).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_applies_to_anonymous_callers() {
    let app = TestApp::spawn_with(|c| c.rate_limit.per_ip_per_minute = 3, Vec::new()).await;
    for _ in 0..3 {
        app.get("/health/live", None).await.expect(200);
    }
    let limited = app.get("/health/live", None).await.expect_problem(429);
    assert!(limited.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_limits_in_redis_share_them() {
    let Some(url) = platform::testing::server_url(platform::testing::REDIS_URL_VAR) else {
        eprintln!("skipped: {} is not set", platform::testing::REDIS_URL_VAR);
        return;
    };
    let prefix = format!("test:{}:", platform::id::new_id().simple());
    let configure = |c: &mut platform::config::Config| {
        c.rate_limit.per_ip_per_minute = 4;
        c.rate_limit.store = platform::config::RateLimitStore::Redis;
        c.rate_limit.redis_url = Some(url.clone());
        c.rate_limit.redis_prefix = prefix.clone();
    };
    let (first, second) = (
        TestApp::spawn_with(configure, Vec::new()).await,
        TestApp::spawn_with(configure, Vec::new()).await,
    );
    for app in [&first, &second, &first, &second] {
        app.get("/health/live", None).await.expect(200);
    }
    // Four a minute for this IP, whichever replica answers.
    let limited = second.get("/health/live", None).await.expect_problem(429);
    assert!(limited.headers.contains_key("retry-after"));
    first.get("/health/live", None).await.expect_problem(429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_on_one_replica_lock_the_account_on_the_other() {
    let Some(url) = platform::testing::server_url(platform::testing::REDIS_URL_VAR) else {
        eprintln!("skipped: {} is not set", platform::testing::REDIS_URL_VAR);
        return;
    };
    let prefix = format!("test:{}:", platform::id::new_id().simple());
    let configure = |c: &mut platform::config::Config| {
        c.rate_limit.store = platform::config::RateLimitStore::Redis;
        c.rate_limit.redis_url = Some(url.clone());
        c.rate_limit.redis_prefix = prefix.clone();
        c.login_throttle.max_failures = 3;
    };
    let (first, second) = (
        TestApp::spawn_with(configure, Vec::new()).await,
        TestApp::spawn_with(configure, Vec::new()).await,
    );
    for app in [&first, &second] {
        app.register("shared@example.com").await;
    }
    first
        .login("shared@example.com", "not the password")
        .await
        .expect_problem(401);
    second
        .login("shared@example.com", "not the password")
        .await
        .expect_problem(401);
    first
        .login("shared@example.com", "not the password")
        .await
        .expect_problem(401);
    // Three failures between them: the account is locked on both.
    let locked = second
        .login("shared@example.com", crate::helpers::PASSWORD)
        .await
        .expect_problem(429);
    assert!(locked.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_and_change_nothing() {
    let app = TestApp::spawn_with(|c| c.http.body_limit_bytes = 1024, Vec::new()).await;
    let body = json!({"email": "big@example.com", "full_name": "x".repeat(4096), "password": "correct horse battery"});
    app.post("/api/v1/auth/register", None, body).await.expect_problem(413);
    app.login("big@example.com", "correct horse battery")
        .await
        .expect_problem(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_internal_routes_are_problems() {
    let app = TestApp::spawn().await;
    app.get("/api/v1/nothing-here", None).await.expect_problem(401);
    app.get("/nothing-here", None).await.expect_problem(404);
    let token = app.customer_token("x@example.com").await;
    app.get("/api/v1/nothing-here", Some(&token)).await.expect_problem(404);
    app.delete("/api/v1/users/me", Some(&token)).await.expect_problem(405);
    app.get("/internal/anything", Some(&token)).await.expect_problem(404);
    app.post("/internal/jobs", None, json!({})).await.expect_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_and_wrong_types_422() {
    let app = TestApp::spawn().await;
    let reply = app
        .client
        .post(format!("{}/api/v1/auth/login", app.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert_eq!(reply.headers()["content-type"], "application/problem+json");
    app.post("/api/v1/auth/login", None, json!({"email": 5, "password": []}))
        .await
        .expect_problem(422);
    let no_type = app
        .client
        .post(format!("{}/api/v1/auth/login", app.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::spawn_with(
        |c| c.http.cors_origins = vec!["https://shop.example".to_owned()],
        Vec::new(),
    )
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/api/v1/auth/login", app.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(!refused.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_correlation_ids_are_returned() {
    let app = TestApp::spawn().await;
    let reply = app
        .client
        .get(format!("{}/health/live", app.url))
        .header("x-correlation-id", "order-flow-42")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.headers()["x-correlation-id"], "order-flow-42");
    assert!(!reply.headers()["x-request-id"].is_empty());
    let hostile = app
        .client
        .get(format!("{}/health/live", app.url))
        .header("x-correlation-id", "a b\"<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(
        hostile.headers()["x-correlation-id"],
        "a b\"<script>",
        "unsafe ids are replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_id_travels_into_events() {
    let app = TestApp::spawn().await;
    let reply = app
        .client
        .post(format!("{}/api/v1/auth/register", app.url))
        .header("x-correlation-id", "signup-campaign-7")
        .json(&json!({"email": "corr@example.com", "full_name": "C", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let body: serde_json::Value = reply.json().await.unwrap();
    let event = app
        .wait_for_event("user.registered", body["user"]["id"].as_str().unwrap())
        .await;
    assert_eq!(event.correlationid.as_deref(), Some("signup-campaign-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_docs_health_and_metrics_are_served() {
    let app = TestApp::spawn().await;
    let spec = app.get("/api/openapi.json", None).await.expect(200);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/auth/register",
        "/api/v1/users/me/addresses/{id}",
        "/api/v1/admin/dead-letters/{id}/replay",
        "/api/v1/checkout",
        "/api/v1/orders/{id}/timeline",
        "/api/v1/admin/orders/{id}/status",
        "/api/v1/admin/coupons/{id}",
        "/api/v1/admin/returns/{id}/receive",
        "/api/v1/payments/{order_id}",
        "/api/v1/payments/webhooks/{provider}",
        "/api/v1/admin/payments/{id}/refunds",
    ] {
        assert!(spec.body["paths"].get(path).is_some(), "{path} documented");
    }
    let register = &spec.body["paths"]["/api/v1/auth/register"]["post"]["responses"];
    assert!(
        register["409"]["content"]["application/problem+json"].is_object(),
        "errors are documented as problem+json"
    );
    assert!(register["409"]["content"].get("application/json").is_none());
    for status in ["400", "413", "422", "429"] {
        assert!(register[status].is_object(), "register documents {status}");
    }
    let me = &spec.body["paths"]["/api/v1/users/me"]["get"]["responses"];
    assert!(me["401"]["content"]["application/problem+json"].is_object());
    let admin = &spec.body["paths"]["/api/v1/admin/users/{id}"]["get"]["responses"];
    assert!(admin["403"].is_object() && admin["401"].is_object());
    let docs = app.client.get(format!("{}/api/docs/", app.url)).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().to_lowercase().contains("swagger"));

    let ready = app.get("/health/ready", None).await.expect(200);
    assert_eq!(ready.body["checks"]["identity_db"], "ok");
    assert_eq!(ready.body["checks"]["bus"], "ok");
    assert_eq!(ready.body["checks"]["orders_db"], "ok");
    assert_eq!(ready.body["checks"]["payments_db"], "ok");

    app.get("/health/live", None).await.expect(200);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("mercato_http_requests_total"), "{metrics}");
    assert!(metrics.contains("mercato_http_request_duration_seconds"));
    assert!(metrics.contains("mercato_dead_letters_open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_process_has_no_edge_limits_but_still_checks_tokens() {
    let app = crate::helpers::TestApp::spawn_in_mode(
        |c| c.rate_limit.per_ip_per_minute = 1,
        Vec::new(),
        gateway::EdgeMode::Service,
    )
    .await;
    for _ in 0..3 {
        app.get("/health/live", None).await.expect(200);
    }
    app.get("/api/v1/users/me", None).await.expect_problem(401);
    app.get("/api/v1/users/me", Some("forged.token.here"))
        .await
        .expect_problem(401);
    let token = app.customer_token("svc@example.com").await;
    app.get("/api/v1/users/me", Some(&token)).await.expect(200);
    app.get("/api/v1/admin/users", Some(&token)).await.expect_problem(403);
}
