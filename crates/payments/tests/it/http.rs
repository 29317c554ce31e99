//! The routers over HTTP (on SQLite): the webhook endpoint, the hosted page, and the buyer's
//! and admins' routes with real access tokens.

use axum::body::Body;
use axum::Router;
use http::{header, Method as HttpMethod, Request, StatusCode};
use http_body_util::BodyExt;
use payments::domain::{self, Method};
use platform::auth::Role;
use platform::testing::TestTokens;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

use super::{decide, open_sqlite, pay, settings, Fixture, SECRET};

struct App {
    f: Fixture,
    router: Router,
    tokens: TestTokens,
}

async fn app() -> App {
    let f = open_sqlite(settings()).await.unwrap();
    let tokens = TestTokens::new();
    let verifier = tokens.verifier();
    let router =
        payments::api::router(f.payments.clone(), verifier).merge(payments::api::psp_router(f.payments.clone()));
    App { f, router, tokens }
}

impl App {
    fn token(&self, user: Uuid, role: Role) -> String {
        self.tokens.token(&user.to_string(), role)
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, http::HeaderMap, String) {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.call(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, http::HeaderMap, String) {
        let mut request = Request::builder().method(HttpMethod::POST).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.call(request.body(Body::from(body)).unwrap()).await
    }
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn the_webhook_endpoint_verifies_applies_and_deduplicates() {
    let app = app().await;
    let payment = pay(&app.f, Method::Card, 1_500).await;
    let body = serde_json::to_vec(&json!({
        "id": "evt_http", "type": "payment_intent.succeeded", "created": 1,
        "data": {"intent_id": payment.intent_id, "amount_minor": 1_500, "currency": "EUR"},
    }))
    .unwrap();
    let now = platform::clock::now_ms() / 1000;
    let signature = domain::sign(SECRET, now, &body);
    let path = "/api/v1/payments/webhooks/mock";
    let headers = [
        ("content-type", "application/json"),
        ("mercato-signature", signature.as_str()),
    ];
    let (status, _, answer) = app.post(path, &headers, body.clone()).await;
    assert_eq!(
        (status, json_of(&answer)),
        (StatusCode::OK, json!({"outcome": "applied"}))
    );
    let (status, _, answer) = app.post(path, &headers, body.clone()).await;
    assert_eq!(
        (status, json_of(&answer)),
        (StatusCode::OK, json!({"outcome": "duplicate"}))
    );

    let wrong = domain::sign("not-the-secret", now, &body);
    let (status, headers, answer) = app
        .post(path, &[("mercato-signature", wrong.as_str())], body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(json_of(&answer)["status"], 401);
    let (status, _, _) = app.post(path, &[], body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = app
        .post(
            "/api/v1/payments/webhooks/paypal",
            &[("mercato-signature", signature.as_str())],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = app
        .post(path, &[], vec![b'x'; payments::api::MAX_WEBHOOK_BYTES + 1])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_hosted_page_lets_the_buyer_decide_once() {
    let app = app().await;
    let payment = pay(&app.f, Method::NetBanking, 4_999).await;
    let page_path = format!("/psp/pay/{}", payment.intent_id.clone().unwrap());
    let (status, headers, page) = app.get(&page_path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
    assert!(page.contains("49.99 EUR") && page.contains("net banking") && page.contains("ORD-2026-000123"));
    assert!(page.contains("Approve") && page.contains("Decline"));

    let (status, _, result) = app.post(&format!("{page_path}/approve"), &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(result.contains("Payment approved"), "{result}");
    assert!(result.contains(&format!("http://shop.test/orders/{}", payment.order_id)));
    let (status, _, again) = app.post(&format!("{page_path}/decline"), &[], Vec::new()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(again.contains("already approved"), "{again}");
    assert_eq!(app.f.payments.mock().unwrap().deliveries(), 1, "no second webhook");
    let view = app.f.payments.payment(payment.id).await.unwrap();
    assert_eq!(view.status, payments::domain::PaymentStatus::Succeeded);

    for unknown in ["/psp/pay/pi_doesnotexist", "/psp/pay/%3Cscript%3E"] {
        let (status, _, page) = app.get(unknown, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
        assert!(page.contains("Payment not found"));
    }
    let (status, _, _) = app.post("/psp/pay/pi_doesnotexist/approve", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.f.payments.set_provider_available(false);
    let (status, _, page) = app.get(&page_path, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.contains("unavailable"));
}

#[tokio::test]
async fn buyers_see_their_payment_and_admins_refund_it() {
    let app = app().await;
    let payment = pay(&app.f, Method::Card, 2_000).await;
    decide(&app.f, &payment, true).await;
    let owner = app.token(payment.user_id, Role::Customer);
    let stranger = app.token(Uuid::now_v7(), Role::Customer);
    let admin = app.token(Uuid::now_v7(), Role::Admin);
    let path = format!("/api/v1/payments/{}", payment.order_id);

    let (status, _, body) = app.get(&path, Some(&owner)).await;
    assert_eq!(status, StatusCode::OK);
    let view = json_of(&body);
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["receipt"]["reference"], payment.reference);
    assert_eq!(view["receipt"]["amount_minor"], 2_000);
    assert_eq!(view["receipt"]["method"], "card");
    assert_eq!(app.get(&path, Some(&stranger)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&path, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get(&path, Some(&admin)).await.0, StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/payments/not-a-uuid", Some(&owner)).await.0,
        StatusCode::NOT_FOUND
    );

    let refunds = format!("/api/v1/admin/payments/{}/refunds", payment.id);
    let bearer = format!("Bearer {admin}");
    let json_headers = |key: Option<&'static str>| {
        let mut headers = vec![("content-type", "application/json"), ("authorization", bearer.as_str())];
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        headers
    };
    let body = |amount: i64| serde_json::to_vec(&json!({"amount_minor": amount, "reason": "scratched"})).unwrap();
    let (status, _, problem) = app.post(&refunds, &json_headers(None), body(500)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(json_of(&problem)["errors"][0]["field"], "Idempotency-Key");
    let (status, _, problem) = app.post(&refunds, &json_headers(Some("has space")), body(500)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    let (status, _, first) = app.post(&refunds, &json_headers(Some("r-1")), body(500)).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first = json_of(&first);
    assert_eq!(
        (first["amount_minor"].clone(), first["status"].clone()),
        (json!(500), json!("succeeded"))
    );
    let (status, _, replay) = app.post(&refunds, &json_headers(Some("r-1")), body(500)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(json_of(&replay)["id"], first["id"]);
    let (status, _, _) = app.post(&refunds, &json_headers(Some("r-1")), body(400)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = app.post(&refunds, &json_headers(Some("r-2")), body(1_501)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let customer = format!("Bearer {owner}");
    let (status, _, _) = app
        .post(
            &refunds,
            &[
                ("content-type", "application/json"),
                ("authorization", customer.as_str()),
                ("idempotency-key", "r-3"),
            ],
            body(1),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The provider is down: 503 with Retry-After, nothing refunded.
    app.f.payments.set_provider_available(false);
    let (status, headers, _) = app.post(&refunds, &json_headers(Some("r-4")), body(100)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    app.f.payments.set_provider_available(true);

    let (status, _, list) = app.get(&refunds, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&list)["items"].as_array().unwrap().len(), 1);
    let (status, _, one) = app
        .get(&format!("/api/v1/admin/payments/{}", payment.id), Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK);
    let one = json_of(&one);
    assert_eq!(
        (one["status"].clone(), one["refunded_minor"].clone()),
        (json!("partially_refunded"), json!(500))
    );
    let (status, _, page) = app
        .get("/api/v1/admin/payments?status=partially_refunded&limit=5", Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&page)["items"][0]["id"], json!(payment.id));
    assert_eq!(
        app.get("/api/v1/admin/payments?status=bogus", Some(&admin)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.get("/api/v1/admin/payments", Some(&owner)).await.0,
        StatusCode::FORBIDDEN
    );
}

#[test]
fn the_openapi_document_lists_the_routes() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(payments::api::PaymentsApi::openapi()).unwrap();
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for path in [
        "/api/v1/payments/{order_id}",
        "/api/v1/payments/webhooks/{provider}",
        "/api/v1/admin/payments",
        "/api/v1/admin/payments/{id}",
        "/api/v1/admin/payments/{id}/refunds",
    ] {
        assert!(paths.iter().any(|p| p.as_str() == path), "{path} in {paths:?}");
    }
    assert!(!paths.iter().any(|p| p.starts_with("/psp")));
}
