//! Registration, login, sessions, password resets and email verification.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{id_of, refresh_of, token_of, TestApp, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_login_then_read_me() {
    let app = TestApp::spawn().await;
    let registered = app.register("  Ada@Example.COM ").await;
    assert_eq!(registered["user"]["email"], "ada@example.com", "emails are normalized");
    assert_eq!(registered["user"]["role"], "customer");
    assert_eq!(registered["token_type"], "Bearer");
    assert!(
        registered["user"].get("password_hash").is_none(),
        "no hash in responses"
    );

    let login = app.login("ADA@example.com", PASSWORD).await.expect(200);
    let me = app
        .get("/api/v1/users/me", Some(&token_of(&login.body)))
        .await
        .expect(200);
    assert_eq!(me.body["id"], registered["user"]["id"]);
    assert_eq!(me.body["full_name"], "Test User");
    assert_eq!(me.body["email_verified"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_401_and_unknown_email_the_same() {
    let app = TestApp::spawn().await;
    app.register("bob@example.com").await;
    let wrong = app
        .login("bob@example.com", "not the password")
        .await
        .expect_problem(401);
    let unknown = app
        .login("nobody@example.com", "not the password")
        .await
        .expect_problem(401);
    assert_eq!(
        wrong.body["detail"], unknown.body["detail"],
        "no account enumeration through login"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_email_is_409_whatever_the_case() {
    let app = TestApp::spawn().await;
    app.register("carol@example.com").await;
    let body = json!({"email": "CAROL@example.com", "full_name": "Other", "password": PASSWORD});
    app.post("/api/v1/auth/register", None, body).await.expect_problem(409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_validates_every_field_and_stores_nothing_when_invalid() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"email": "not-an-email", "full_name": "A", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": "a@example.com", "full_name": "  ", "password": PASSWORD}),
            "full_name",
        ),
        (
            json!({"email": "a@example.com", "full_name": "A", "password": "short"}),
            "password",
        ),
        (
            json!({"email": "a@example.com", "full_name": "A", "password": "password123"}),
            "password",
        ),
    ];
    for (body, field) in cases {
        let reply = app.post("/api/v1/auth/register", None, body).await.expect_problem(422);
        assert!(
            reply.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{field} must be named: {}",
            reply.body
        );
    }
    // None of the invalid attempts created the account.
    app.register("a@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_cannot_be_mass_assigned() {
    let app = TestApp::spawn().await;
    let body = json!({"email": "mallory@example.com", "full_name": "M", "password": PASSWORD, "role": "admin"});
    app.post("/api/v1/auth/register", None, body).await.expect_problem(422);

    let token = app.customer_token("mallory@example.com").await;
    app.patch("/api/v1/users/me", Some(&token), json!({"role": "admin"}))
        .await
        .expect_problem(422);
    let me = app.get("/api/v1/users/me", Some(&token)).await.expect(200);
    assert_eq!(me.body["role"], "customer");
    let renamed = app
        .patch("/api/v1/users/me", Some(&token), json!({"full_name": "Mallory M"}))
        .await
        .expect(200);
    assert_eq!(renamed.body["full_name"], "Mallory M");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_whole_session() {
    let app = TestApp::spawn().await;
    let first = refresh_of(&app.register("dave@example.com").await);

    let second = app
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": first}))
        .await
        .expect(200);
    let second_refresh = refresh_of(&second.body);
    assert_ne!(second_refresh, first, "every refresh issues a new refresh token");
    app.get("/api/v1/users/me", Some(&token_of(&second.body)))
        .await
        .expect(200);

    // The old token again: reuse. It fails, and so does the newest one of the same session.
    app.post("/api/v1/auth/refresh", None, json!({"refresh_token": first}))
        .await
        .expect_problem(401);
    app.post("/api/v1/auth/refresh", None, json!({"refresh_token": second_refresh}))
        .await
        .expect_problem(401);

    // Another session of the same user is untouched.
    let other = refresh_of(&app.login("dave@example.com", PASSWORD).await.expect(200).body);
    app.post("/api/v1/auth/refresh", None, json!({"refresh_token": other}))
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_use_of_one_refresh_token_yields_one_winner() {
    let app = TestApp::spawn().await;
    let token = refresh_of(&app.register("erin@example.com").await);
    let attempts = (0..8).map(|_| app.post("/api/v1/auth/refresh", None, json!({"refresh_token": token})));
    let replies = futures::future::join_all(attempts).await;
    let winners = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(winners, 1, "exactly one rotation of one token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() {
    let app = TestApp::spawn().await;
    let refresh = refresh_of(&app.register("frank@example.com").await);
    app.post("/api/v1/auth/logout", None, json!({"refresh_token": refresh}))
        .await
        .expect(204);
    app.post("/api/v1/auth/refresh", None, json!({"refresh_token": refresh}))
        .await
        .expect_problem(401);
    app.post("/api/v1/auth/logout", None, json!({"refresh_token": refresh}))
        .await
        .expect(204);
}

async fn reset_token(app: &TestApp, user_id: &str) -> String {
    let count_before = app
        .bus_events()
        .await
        .iter()
        .filter(|e| e.kind == "user.password_reset_requested")
        .count();
    app.post(
        "/api/v1/auth/password/forgot",
        None,
        json!({"email": "grace@example.com"}),
    )
    .await
    .expect(202);
    let event = platform::testing::eventually(Duration::from_secs(10), || async {
        let events: Vec<_> = app
            .bus_events()
            .await
            .into_iter()
            .filter(|e| e.kind == "user.password_reset_requested" && e.subject == user_id)
            .collect();
        (events.len() > count_before).then(|| events.last().cloned()).flatten()
    })
    .await
    .expect("reset event published");
    event.data["token"].as_str().expect("token in event").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_token_works_once_and_ends_sessions() {
    let app = TestApp::spawn().await;
    let registered = app.register("grace@example.com").await;
    let user_id = id_of(&registered);
    let token = reset_token(&app, &user_id).await;

    let new_password = "a brand new passphrase";
    app.post(
        "/api/v1/auth/password/reset",
        None,
        json!({"token": token, "new_password": new_password}),
    )
    .await
    .expect(204);
    app.post(
        "/api/v1/auth/password/reset",
        None,
        json!({"token": token, "new_password": "yet another passphrase"}),
    )
    .await
    .expect_problem(400);
    app.login("grace@example.com", PASSWORD).await.expect_problem(401);
    app.login("grace@example.com", new_password).await.expect(200);
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": refresh_of(&registered)}),
    )
    .await
    .expect_problem(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_token_expires() {
    let app = TestApp::spawn().await;
    let user_id = id_of(&app.register("grace@example.com").await);
    let token = reset_token(&app, &user_id).await;
    app.clock.advance(Duration::from_secs(2 * 3600));
    app.post(
        "/api/v1/auth/password/reset",
        None,
        json!({"token": token, "new_password": "a brand new passphrase"}),
    )
    .await
    .expect_problem(400);
    app.login("grace@example.com", PASSWORD).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reset_link_voids_the_previous_one() {
    let app = TestApp::spawn().await;
    let user_id = id_of(&app.register("grace@example.com").await);
    let first = reset_token(&app, &user_id).await;
    let second = reset_token(&app, &user_id).await;
    app.post(
        "/api/v1/auth/password/reset",
        None,
        json!({"token": first, "new_password": "a brand new passphrase"}),
    )
    .await
    .expect_problem(400);
    app.post(
        "/api/v1/auth/password/reset",
        None,
        json!({"token": second, "new_password": "a brand new passphrase"}),
    )
    .await
    .expect(204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgot_password_answers_the_same_for_unknown_emails() {
    let app = TestApp::spawn().await;
    app.register("heidi@example.com").await;
    let known = app
        .post(
            "/api/v1/auth/password/forgot",
            None,
            json!({"email": "heidi@example.com"}),
        )
        .await
        .expect(202);
    let unknown = app
        .post(
            "/api/v1/auth/password/forgot",
            None,
            json!({"email": "ghost@example.com"}),
        )
        .await
        .expect(202);
    assert_eq!(known.body, unknown.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_verification_token_verifies_once() {
    let app = TestApp::spawn().await;
    let registered = app.register("ivan@example.com").await;
    let user_id = id_of(&registered);
    let event = app.wait_for_event("user.email_verification_requested", &user_id).await;
    let token = event.data["token"].as_str().unwrap().to_owned();

    app.post("/api/v1/auth/email/verify", None, json!({"token": token}))
        .await
        .expect(204);
    app.post("/api/v1/auth/email/verify", None, json!({"token": token}))
        .await
        .expect_problem(400);
    let access = token_of(&registered);
    let me = app.get("/api/v1/users/me", Some(&access)).await.expect(200);
    assert_eq!(me.body["email_verified"], true);
    app.post("/api/v1/auth/email/verify/resend", Some(&access), json!({}))
        .await
        .expect_problem(409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_login_failures_are_throttled_with_retry_after() {
    let app = TestApp::spawn().await;
    app.register("judy@example.com").await;
    for _ in 0..5 {
        app.login("judy@example.com", "not the password")
            .await
            .expect_problem(401);
    }
    let throttled = app.login("judy@example.com", PASSWORD).await.expect_problem(429);
    let retry_after: u64 = throttled.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    app.clock.advance(Duration::from_secs(retry_after + 1));
    app.login("judy@example.com", PASSWORD).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_needs_the_current_one() {
    let app = TestApp::spawn().await;
    let token = app.customer_token("ken@example.com").await;
    let body = json!({"current_password": "wrong one here", "new_password": "a brand new passphrase"});
    app.post("/api/v1/users/me/password", Some(&token), body)
        .await
        .expect_problem(422);
    let body = json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"});
    app.post("/api/v1/users/me/password", Some(&token), body)
        .await
        .expect(204);
    app.login("ken@example.com", "a brand new passphrase").await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_and_end_their_own_sessions() {
    let app = TestApp::spawn().await;
    let phone = app.register("lena@example.com").await;
    let laptop = app.login("lena@example.com", PASSWORD).await.expect(200).body;
    let intruder = app.customer_token("mia@example.com").await;

    let sessions = app
        .get("/api/v1/users/me/sessions", Some(&token_of(&laptop)))
        .await
        .expect(200);
    let sessions = sessions.body.as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        sessions.iter().filter(|s| s["current"] == true).count(),
        1,
        "{sessions:?}"
    );
    let phone_session = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = format!("/api/v1/users/me/sessions/{phone_session}");
    app.delete(&path, Some(&intruder)).await.expect_problem(404);
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": refresh_of(&phone)}),
    )
    .await
    .expect(200);
    let tablet = app.login("lena@example.com", PASSWORD).await.expect(200).body;
    let sessions = app
        .get("/api/v1/users/me/sessions", Some(&token_of(&laptop)))
        .await
        .expect(200);
    let lost = sessions
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false && s["id"] == phone_session.as_str())
        .cloned();
    assert!(lost.is_some(), "a refreshed session keeps its id");
    app.delete(&path, Some(&token_of(&laptop))).await.expect(204);
    app.delete(&path, Some(&token_of(&laptop))).await.expect_problem(404);

    app.delete("/api/v1/users/me/sessions", Some(&token_of(&laptop)))
        .await
        .expect(204);
    for session in [&laptop, &tablet] {
        app.post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh_of(session)}),
        )
        .await
        .expect_problem(401);
    }
    let sessions = app
        .get("/api/v1/users/me/sessions", Some(&token_of(&laptop)))
        .await
        .expect(200);
    assert_eq!(sessions.body, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_succeeds_even_when_the_ip_is_throttled_for_logins() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        app.login("nobody@example.com", "not the password")
            .await
            .expect_problem(401);
    }
    app.login("nobody@example.com", "not the password")
        .await
        .expect_problem(429);
    // The account is created and its session opened in one answer, never half of it.
    let registered = app.register("newcomer@example.com").await;
    app.get("/api/v1/users/me", Some(&token_of(&registered)))
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_people_logging_in_at_once_from_one_ip_are_not_locked_out() {
    let app = TestApp::spawn().await;
    let emails: Vec<String> = (0..12).map(|i| format!("office{i}@example.com")).collect();
    for email in &emails {
        app.register(email).await;
    }
    let logins = emails.iter().map(|email| app.login(email, PASSWORD));
    let replies = futures::future::join_all(logins).await;
    let refused: Vec<u16> = replies
        .iter()
        .map(|r| r.status.as_u16())
        .filter(|s| *s != 200)
        .collect();
    assert!(
        refused.is_empty(),
        "concurrent honest logins from one IP were refused: {refused:?}"
    );
}
