//! No secret reaches a log line: passwords, access and refresh tokens, reset and verification
//! tokens are all absent from everything logged at debug level during their use.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::helpers::{id_of, refresh_of, token_of, TestApp, PASSWORD};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .finish();
    // This test owns the process's global subscriber; other tests' lines are captured too,
    // which only makes the check stricter.
    tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in this test binary");

    let app = TestApp::spawn().await;
    let registered = app.register("secretive@example.com").await;
    let user_id = id_of(&registered);
    let verification = app.wait_for_event("user.email_verification_requested", &user_id).await;
    let verification_token = verification.data["token"].as_str().unwrap().to_owned();
    app.post("/api/v1/auth/email/verify", None, json!({"token": verification_token}))
        .await
        .expect(204);
    let refreshed = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh_of(&registered)}),
        )
        .await
        .expect(200);
    // A reused refresh token is logged as an incident: the token itself must not be.
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": refresh_of(&registered)}),
    )
    .await
    .expect_problem(401);
    app.login("secretive@example.com", "a wrong password given")
        .await
        .expect_problem(401);
    app.post(
        "/api/v1/auth/password/forgot",
        None,
        json!({"email": "secretive@example.com"}),
    )
    .await
    .expect(202);
    let reset = app.wait_for_event("user.password_reset_requested", &user_id).await;
    let reset_token = reset.data["token"].as_str().unwrap().to_owned();
    let new_password = "the new secret passphrase";
    app.post(
        "/api/v1/auth/password/reset",
        None,
        json!({"token": reset_token, "new_password": new_password}),
    )
    .await
    .expect(204);
    let forged = format!("{}x", token_of(&registered));
    app.get("/api/v1/users/me", Some(&forged)).await.expect_problem(401);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request finished"),
        "the capture works: {} bytes",
        logs.len()
    );
    let secrets = [
        ("password", PASSWORD.to_owned()),
        ("wrong password", "a wrong password given".to_owned()),
        ("new password", new_password.to_owned()),
        ("access token", token_of(&registered)),
        ("refresh token", refresh_of(&registered)),
        ("rotated refresh token", refresh_of(&refreshed.body)),
        ("verification token", verification_token),
        ("reset token", reset_token),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(&secret), "the {what} appears in the logs");
    }
}
