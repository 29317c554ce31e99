//! Address book: ownership and the one-default rule.

use serde_json::{json, Value};

use crate::helpers::{id_of, TestApp};

fn address(line1: &str) -> Value {
    json!({"full_name": "Test User", "line1": line1, "city": "Berlin", "postal_code": "10115", "country": "de"})
}

async fn defaults(app: &TestApp, token: &str) -> Vec<String> {
    let list = app.get("/api/v1/users/me/addresses", Some(token)).await.expect(200);
    list.body
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["is_default"] == true)
        .map(|a| a["line1"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_default_address() {
    let app = TestApp::spawn().await;
    let token = app.customer_token("ada@example.com").await;
    let first = app
        .post("/api/v1/users/me/addresses", Some(&token), address("First 1"))
        .await
        .expect(201);
    assert_eq!(first.body["is_default"], true, "the first address becomes the default");
    assert_eq!(first.body["country"], "DE");
    let second = app
        .post("/api/v1/users/me/addresses", Some(&token), address("Second 2"))
        .await
        .expect(201);
    assert_eq!(second.body["is_default"], false);
    assert_eq!(defaults(&app, &token).await, vec!["First 1"]);

    let mut third = address("Third 3");
    third["is_default"] = json!(true);
    app.post("/api/v1/users/me/addresses", Some(&token), third)
        .await
        .expect(201);
    assert_eq!(
        defaults(&app, &token).await,
        vec!["Third 3"],
        "a new default unsets the old"
    );

    let path = format!("/api/v1/users/me/addresses/{}", id_of(&second.body));
    app.patch(&path, Some(&token), json!({"is_default": true}))
        .await
        .expect(200);
    assert_eq!(defaults(&app, &token).await, vec!["Second 2"]);

    app.delete(&path, Some(&token)).await.expect(204);
    let remaining = defaults(&app, &token).await;
    assert_eq!(
        remaining.len(),
        1,
        "deleting the default promotes another: {remaining:?}"
    );
    app.get(&path, Some(&token)).await.expect_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_validated() {
    let app = TestApp::spawn().await;
    let token = app.customer_token("ada@example.com").await;
    let reply = app
        .post(
            "/api/v1/users/me/addresses",
            Some(&token),
            json!({"line1": "x", "country": "Germany"}),
        )
        .await
        .expect_problem(422);
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in ["full_name", "city", "postal_code", "country"] {
        assert!(fields.contains(&field), "{field} must be reported: {fields:?}");
    }
    let list = app.get("/api/v1/users/me/addresses", Some(&token)).await.expect(200);
    assert_eq!(list.body, json!([]), "an invalid address stores nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_a_cannot_read_or_change_user_b_addresses() {
    let app = TestApp::spawn().await;
    let alice = app.customer_token("alice@example.com").await;
    let bob = app.customer_token("bob@example.com").await;
    let created = app
        .post("/api/v1/users/me/addresses", Some(&alice), address("Alice Street 1"))
        .await
        .expect(201);
    let path = format!("/api/v1/users/me/addresses/{}", id_of(&created.body));

    app.get(&path, Some(&bob)).await.expect_problem(404);
    app.patch(&path, Some(&bob), json!({"line1": "Stolen"}))
        .await
        .expect_problem(404);
    app.delete(&path, Some(&bob)).await.expect_problem(404);
    let bobs = app.get("/api/v1/users/me/addresses", Some(&bob)).await.expect(200);
    assert_eq!(bobs.body, json!([]));

    let still = app.get(&path, Some(&alice)).await.expect(200);
    assert_eq!(still.body["line1"], "Alice Street 1");
}
