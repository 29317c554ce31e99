//! User administration and role checks.

use serde_json::json;

use crate::helpers::{id_of, refresh_of, TestApp, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_get_403_on_admin_routes() {
    let app = TestApp::spawn().await;
    let customer = app.customer_token("cust@example.com").await;
    let some_id = platform::id::new_id();
    app.get("/api/v1/admin/users", Some(&customer))
        .await
        .expect_problem(403);
    app.get(&format!("/api/v1/admin/users/{some_id}"), Some(&customer))
        .await
        .expect_problem(403);
    app.patch(
        &format!("/api/v1/admin/users/{some_id}"),
        Some(&customer),
        json!({"role": "admin"}),
    )
    .await
    .expect_problem(403);
    app.get("/api/v1/admin/dead-letters", Some(&customer))
        .await
        .expect_problem(403);
    app.post(
        &format!("/api/v1/admin/dead-letters/{some_id}/replay"),
        Some(&customer),
        json!({}),
    )
    .await
    .expect_problem(403);
    app.get("/api/v1/admin/users", None).await.expect_problem(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_and_search_users_page_by_page() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.register(&format!("shopper{i}@example.com")).await;
    }
    app.register("other@example.org").await;
    let admin = app.admin_token().await;

    let found = app
        .get("/api/v1/admin/users?email=SHOPPER", Some(&admin))
        .await
        .expect(200);
    assert_eq!(found.body["items"].as_array().unwrap().len(), 5);

    let mut seen = Vec::new();
    let mut path = "/api/v1/admin/users?limit=3".to_owned();
    loop {
        let page = app.get(&path, Some(&admin)).await.expect(200);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|u| u["email"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/admin/users?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen.len(),
        7,
        "every user exactly once (5 shoppers, other, admin): {seen:?}"
    );
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len());

    app.get("/api/v1/admin/users?limit=0", Some(&admin))
        .await
        .expect_problem(422);
    app.get("/api/v1/admin/users?cursor=%25%25", Some(&admin))
        .await
        .expect_problem(422);
    let capped = app
        .get("/api/v1/admin/users?limit=100000", Some(&admin))
        .await
        .expect(200);
    assert_eq!(capped.body["items"].as_array().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_change_roles_with_optimistic_locking() {
    let app = TestApp::spawn().await;
    let user = app.register("seller@example.com").await;
    let path = format!("/api/v1/admin/users/{}", id_of(&user));
    let admin = app.admin_token().await;

    let current = app.get(&path, Some(&admin)).await.expect(200);
    let version = current.body["version"].as_i64().unwrap();
    let updated = app
        .patch(&path, Some(&admin), json!({"role": "seller", "version": version}))
        .await
        .expect(200);
    assert_eq!(updated.body["role"], "seller");
    app.patch(
        &path,
        Some(&admin),
        json!({"role": "delivery_agent", "version": version}),
    )
    .await
    .expect_problem(409);
    app.patch(&path, Some(&admin), json!({"role": "overlord"}))
        .await
        .expect_problem(422);

    let token = crate::helpers::token_of(&app.login("seller@example.com", PASSWORD).await.expect(200).body);
    let me = app.get("/api/v1/users/me", Some(&token)).await.expect(200);
    assert_eq!(me.body["role"], "seller", "new tokens carry the new role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_users_cannot_log_in_or_refresh() {
    let app = TestApp::spawn().await;
    let user = app.register("gone@example.com").await;
    let admin = app.admin_token().await;
    let path = format!("/api/v1/admin/users/{}", id_of(&user));
    let disabled = app
        .patch(&path, Some(&admin), json!({"disabled": true}))
        .await
        .expect(200);
    assert_eq!(disabled.body["disabled"], true);
    app.login("gone@example.com", PASSWORD).await.expect_problem(403);
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": refresh_of(&user)}),
    )
    .await
    .expect_problem(401);

    app.patch(&path, Some(&admin), json!({"disabled": false}))
        .await
        .expect(200);
    app.login("gone@example.com", PASSWORD).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_cannot_lock_themselves_out() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let me = app.get("/api/v1/users/me", Some(&admin)).await.expect(200);
    let path = format!("/api/v1/admin/users/{}", id_of(&me.body));
    app.patch(&path, Some(&admin), json!({"disabled": true}))
        .await
        .expect_problem(422);
    app.patch(&path, Some(&admin), json!({"role": "customer"}))
        .await
        .expect_problem(422);
}
