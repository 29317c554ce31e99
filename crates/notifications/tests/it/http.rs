//! The router over HTTP (on SQLite) with real access tokens: the admins' log and previews,
//! and a user's inbox.

use axum::body::Body;
use axum::Router;
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use notifications::NotificationKind;
use platform::auth::Role;
use platform::testing::TestTokens;
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

use super::{event_of, open_sqlite, Fixture, USER};
use crate::smtp::SmtpServer;

struct App {
    f: Fixture,
    server: SmtpServer,
    router: Router,
    tokens: TestTokens,
}

async fn app() -> App {
    let f = open_sqlite().await.unwrap();
    let server = SmtpServer::start().await;
    let notifications = f.smtp_service(&server);
    let tokens = TestTokens::new();
    let verifier = tokens.verifier();
    let consumer = f.consumer(&notifications);
    for kind in [
        NotificationKind::OrderPlaced,
        NotificationKind::PaymentReceived,
        NotificationKind::Welcome,
    ] {
        consumer.process(&event_of(kind)).await.unwrap();
    }
    App {
        router: notifications::router(notifications, verifier),
        f,
        server,
        tokens,
    }
}

impl App {
    fn token(&self, user: &str, role: Role) -> String {
        self.tokens.token(user, role)
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (StatusCode, http::HeaderMap, String) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn admins_preview_every_template_as_json_html_or_text() {
    let app = app().await;
    let admin = app.token(&Uuid::now_v7().to_string(), Role::Admin);
    let (status, _, body) = app
        .call("GET", "/api/v1/admin/notifications/templates", Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK);
    let templates = json_of(&body)["items"].as_array().unwrap().clone();
    assert_eq!(templates.len(), NotificationKind::ALL.len());
    assert_eq!(templates[0]["event_type"], "user.registered");

    for kind in NotificationKind::ALL {
        let path = format!("/api/v1/admin/notifications/templates/{}/preview", kind.as_str());
        let (status, _, body) = app.call("GET", &path, Some(&admin)).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        let preview = json_of(&body);
        assert_eq!(preview["kind"], kind.as_str());
        assert!(!preview["subject"].as_str().unwrap().is_empty());
        assert!(preview["html"].as_str().unwrap().starts_with("<!DOCTYPE html>"));
        assert!(!preview["text"].as_str().unwrap().is_empty());
    }

    let (status, headers, body) = app
        .call(
            "GET",
            "/api/v1/admin/notifications/templates/order.created/preview?format=html",
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(body.contains("Order placed — ORD-2026-000123") && body.contains("84.78 EUR"));
    let (status, headers, body) = app
        .call(
            "GET",
            "/api/v1/admin/notifications/templates/order_placed/preview?format=text",
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert!(body.contains("Total: 84.78 EUR"), "{body}");

    let (status, headers, body) = app
        .call(
            "GET",
            "/api/v1/admin/notifications/templates/order.paid/preview",
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(json_of(&body)["status"], 404);
    let (status, _, _) = app
        .call(
            "GET",
            "/api/v1/admin/notifications/templates/welcome/preview?format=pdf",
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let customer = app.token(USER, Role::Customer);
    let (status, _, _) = app
        .call(
            "GET",
            "/api/v1/admin/notifications/templates/welcome/preview",
            Some(&customer),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = app.call("GET", "/api/v1/admin/notifications/templates", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admins_list_the_log_with_filters() {
    let app = app().await;
    let admin = app.token(&Uuid::now_v7().to_string(), Role::Admin);
    let (status, _, body) = app.call("GET", "/api/v1/admin/notifications", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = json_of(&body)["items"].as_array().unwrap().clone();
    // Three emails and two inbox entries (the welcome email has none), newest first.
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["kind"], "welcome");
    assert!(items.iter().all(|i| i["status"] == "sent"));

    let (_, _, body) = app
        .call(
            "GET",
            "/api/v1/admin/notifications?channel=email&kind=order_placed",
            Some(&admin),
        )
        .await;
    let items = json_of(&body)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["recipient"], "asha@example.com");
    assert_eq!(items[0]["subject"], "Order placed — ORD-2026-000123");
    assert_eq!(items[0]["attempts"], 1);
    let event_id = items[0]["event_id"].as_str().unwrap().to_owned();
    let (_, _, body) = app
        .call(
            "GET",
            &format!("/api/v1/admin/notifications?event_id={event_id}"),
            Some(&admin),
        )
        .await;
    assert_eq!(json_of(&body)["items"].as_array().unwrap().len(), 2, "email and inbox");
    let (_, _, body) = app
        .call(
            "GET",
            &format!("/api/v1/admin/notifications?channel=inbox&user_id={USER}&limit=1"),
            Some(&admin),
        )
        .await;
    let page = json_of(&body);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string());

    let (status, headers, _) = app
        .call("GET", "/api/v1/admin/notifications?status=lost", Some(&admin))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let customer = app.token(USER, Role::Customer);
    let (status, _, _) = app.call("GET", "/api/v1/admin/notifications", Some(&customer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.server.accepted(), 3);
}

#[tokio::test]
async fn users_read_and_unread_their_own_inbox() {
    let app = app().await;
    let owner = app.token(USER, Role::Customer);
    let stranger = app.token(&Uuid::now_v7().to_string(), Role::Customer);
    let (status, _, body) = app.call("GET", "/api/v1/users/me/notifications", Some(&owner)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let inbox = json_of(&body);
    assert_eq!(inbox["unread_count"], 2);
    let items = inbox["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["title"], "Payment received — ORD-2026-000123");
    assert_eq!(items[0]["read"], false);
    let id = items[0]["id"].as_str().unwrap().to_owned();

    let read = format!("/api/v1/users/me/notifications/{id}/read");
    let (status, headers, _) = app.call("POST", &read, Some(&stranger)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let (status, _, body) = app.call("POST", &read, Some(&owner)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["read"], true);

    let (_, _, body) = app
        .call("GET", "/api/v1/users/me/notifications?unread=true", Some(&owner))
        .await;
    let unread = json_of(&body);
    assert_eq!(unread["unread_count"], 1);
    assert_eq!(unread["items"].as_array().unwrap().len(), 1);
    assert_ne!(unread["items"][0]["id"], id.as_str());

    let (status, _, body) = app
        .call(
            "POST",
            &format!("/api/v1/users/me/notifications/{id}/unread"),
            Some(&owner),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["read"], false);
    let (status, _, body) = app
        .call("POST", "/api/v1/users/me/notifications/read-all", Some(&stranger))
        .await;
    assert_eq!((status, json_of(&body)["updated"].as_u64()), (StatusCode::OK, Some(0)));
    let (_, _, body) = app
        .call("POST", "/api/v1/users/me/notifications/read-all", Some(&owner))
        .await;
    assert_eq!(json_of(&body)["updated"], 2);
    let (_, _, body) = app.call("GET", "/api/v1/users/me/notifications", Some(&stranger)).await;
    assert_eq!(json_of(&body)["items"].as_array().unwrap().len(), 0);

    let (status, _, _) = app.call("GET", "/api/v1/users/me/notifications", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = app
        .call("POST", "/api/v1/users/me/notifications/not-a-uuid/read", Some(&owner))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.f.inbox_entries(USER).await.len(), 2);
}

#[test]
fn the_openapi_document_describes_every_route() {
    use utoipa::OpenApi;
    let document = serde_json::to_value(notifications::NotificationsApi::openapi()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/admin/notifications", "get"),
        ("/api/v1/admin/notifications/templates", "get"),
        ("/api/v1/admin/notifications/templates/{kind}/preview", "get"),
        ("/api/v1/users/me/notifications", "get"),
        ("/api/v1/users/me/notifications/{id}/read", "post"),
        ("/api/v1/users/me/notifications/{id}/unread", "post"),
        ("/api/v1/users/me/notifications/read-all", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} is not documented");
    }
    assert_eq!(paths.len(), 7);
    assert!(document["components"]["schemas"]["InboxPage"].is_object());
}
