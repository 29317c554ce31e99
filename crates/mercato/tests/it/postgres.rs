//! The identity service on PostgreSQL: a journey through every identity query, run when
//! `MERCATO_TEST_POSTGRES_URL` is set (CI sets it). The other tests run it on SQLite.

use serde_json::json;

use crate::helpers::{id_of, refresh_of, token_of, TestApp, PASSWORD};

async fn spawn_on_postgres() -> Option<TestApp> {
    let Some(url) = platform::testing::postgres_database_url()
        .await
        .expect("test database created")
    else {
        eprintln!("MERCATO_TEST_POSTGRES_URL is not set: identity-on-PostgreSQL journey skipped");
        return None;
    };
    Some(
        TestApp::spawn_with(
            |config| {
                config.database.urls.insert("identity".to_owned(), url);
            },
            Vec::new(),
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_journey_on_postgres() {
    let Some(app) = spawn_on_postgres().await else { return };
    assert_eq!(app.app.identity.db().backend(), platform::store::Backend::Postgres);

    // Accounts: insert, unique violation, login, profile.
    let user = app.register("Pg@Example.com").await;
    let user_id = id_of(&user);
    app.post(
        "/api/v1/auth/register",
        None,
        json!({"email": "pg@example.com", "full_name": "X", "password": PASSWORD}),
    )
    .await
    .expect_problem(409);
    let token = token_of(&app.login("pg@example.com", PASSWORD).await.expect(200).body);
    app.patch("/api/v1/users/me", Some(&token), json!({"full_name": "Pat Gres"}))
        .await
        .expect(200);
    assert_eq!(
        app.get("/api/v1/users/me", Some(&token)).await.expect(200).body["full_name"],
        "Pat Gres"
    );

    // Sessions: rotation, reuse revokes the family.
    let first = refresh_of(&user);
    let second = refresh_of(
        &app.post("/api/v1/auth/refresh", None, json!({"refresh_token": first}))
            .await
            .expect(200)
            .body,
    );
    app.post("/api/v1/auth/refresh", None, json!({"refresh_token": first}))
        .await
        .expect_problem(401);
    app.post("/api/v1/auth/refresh", None, json!({"refresh_token": second}))
        .await
        .expect_problem(401);

    // One-time tokens: verification and reset (UPDATE … RETURNING).
    let verification = app.wait_for_event("user.email_verification_requested", &user_id).await;
    app.post(
        "/api/v1/auth/email/verify",
        None,
        json!({"token": verification.data["token"]}),
    )
    .await
    .expect(204);
    app.post(
        "/api/v1/auth/email/verify",
        None,
        json!({"token": verification.data["token"]}),
    )
    .await
    .expect_problem(400);
    app.post("/api/v1/auth/password/forgot", None, json!({"email": "pg@example.com"}))
        .await
        .expect(202);
    let reset = app.wait_for_event("user.password_reset_requested", &user_id).await;
    let body = json!({"token": reset.data["token"], "new_password": "a brand new passphrase"});
    app.post("/api/v1/auth/password/reset", None, body.clone())
        .await
        .expect(204);
    app.post("/api/v1/auth/password/reset", None, body)
        .await
        .expect_problem(400);
    let token = token_of(
        &app.login("pg@example.com", "a brand new passphrase")
            .await
            .expect(200)
            .body,
    );

    // Addresses: the partial unique index and default promotion.
    let address = |line1: &str| json!({"full_name": "P", "line1": line1, "city": "Lyon", "postal_code": "69001", "country": "FR"});
    let first = app
        .post("/api/v1/users/me/addresses", Some(&token), address("1 Rue A"))
        .await
        .expect(201);
    let mut second_body = address("2 Rue B");
    second_body["is_default"] = json!(true);
    app.post("/api/v1/users/me/addresses", Some(&token), second_body)
        .await
        .expect(201);
    let list = app.get("/api/v1/users/me/addresses", Some(&token)).await.expect(200);
    let defaults: Vec<_> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["is_default"] == true)
        .collect();
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0]["line1"], "2 Rue B");
    app.delete(
        &format!("/api/v1/users/me/addresses/{}", id_of(&defaults[0].clone())),
        Some(&token),
    )
    .await
    .expect(204);
    let promoted = app
        .get(
            &format!("/api/v1/users/me/addresses/{}", id_of(&first.body)),
            Some(&token),
        )
        .await
        .expect(200);
    assert_eq!(promoted.body["is_default"], true);

    // Administration: search with LIKE … ESCAPE, keyset paging, optimistic locking.
    for i in 0..3 {
        app.register(&format!("pg_{i}@example.com")).await;
    }
    let admin = app.admin_token().await;
    let found = app.get("/api/v1/admin/users?email=pg_", Some(&admin)).await.expect(200);
    assert_eq!(
        found.body["items"].as_array().unwrap().len(),
        3,
        "`_` is matched literally"
    );
    let page = app.get("/api/v1/admin/users?limit=2", Some(&admin)).await.expect(200);
    let cursor = page.body["next_cursor"].as_str().expect("more pages").to_owned();
    let rest = app
        .get(&format!("/api/v1/admin/users?limit=10&cursor={cursor}"), Some(&admin))
        .await
        .expect(200);
    assert_eq!(
        page.body["items"].as_array().unwrap().len() + rest.body["items"].as_array().unwrap().len(),
        5
    );
    let path = format!("/api/v1/admin/users/{user_id}");
    let version = app.get(&path, Some(&admin)).await.expect(200).body["version"]
        .as_i64()
        .unwrap();
    app.patch(&path, Some(&admin), json!({"role": "seller", "version": version}))
        .await
        .expect(200);
    app.patch(&path, Some(&admin), json!({"role": "admin", "version": version}))
        .await
        .expect_problem(409);

    // Sessions: the correlated sub-query, and ending one.
    let sessions = app.get("/api/v1/users/me/sessions", Some(&token)).await.expect(200);
    let sessions = sessions.body.as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "the reset ended every earlier session: {sessions:?}");
    assert_eq!(sessions[0]["current"], true);
    let path = format!("/api/v1/users/me/sessions/{}", sessions[0]["id"].as_str().unwrap());
    app.delete(&path, Some(&token)).await.expect(204);
    app.delete(&path, Some(&token)).await.expect_problem(404);

    // Signing keys: rotation keeps old tokens valid.
    app.app.identity.keys().rotate().await.unwrap();
    app.get("/api/v1/users/me", Some(&token)).await.expect(200);
    let jwks = app.get("/.well-known/jwks.json", None).await.expect(200);
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 2);
    assert!(app.outboxes_drain().await, "outbox drained");
}

/// The catalog on PostgreSQL: seeding, categories, products, lists, search, reviews and the
/// wishlist, through every catalog query the HTTP API reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_journey_on_postgres() {
    let Some(url) = platform::testing::postgres_database_url()
        .await
        .expect("test database created")
    else {
        eprintln!("MERCATO_TEST_POSTGRES_URL is not set: catalog-on-PostgreSQL journey skipped");
        return;
    };
    let app = TestApp::spawn_with(
        |config| {
            config.database.urls.insert("catalog".to_owned(), url);
            config.catalog.seed_products = 30;
        },
        Vec::new(),
    )
    .await;
    assert_eq!(app.app.catalog.db().backend(), platform::store::Backend::Postgres);
    let admin = app.admin_token().await;

    let seeded = app
        .get("/api/v1/products?limit=100&sort=price_desc", None)
        .await
        .expect(200)
        .body;
    let prices: Vec<i64> = seeded["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["price"]["min"].as_i64().unwrap())
        .collect();
    assert_eq!(prices.len(), 30);
    assert!(prices.windows(2).all(|w| w[0] >= w[1]), "sorted by price, descending");

    let parent = app
        .post("/api/v1/admin/categories", Some(&admin), json!({"name": "Pg Parent"}))
        .await
        .expect(201)
        .body;
    let child = app
        .post(
            "/api/v1/admin/categories",
            Some(&admin),
            json!({"name": "Pg Child", "parent_id": parent["id"]}),
        )
        .await
        .expect(201)
        .body;
    let product = app
        .post(
            "/api/v1/products",
            Some(&admin),
            json!({"name": "Postgres Mug", "brand": "Elephant", "category_id": child["id"], "status": "active",
                   "variants": [{"sku": "PG-MUG", "price": 1_250}]}),
        )
        .await
        .expect(201)
        .body;
    let id = product["id"].as_str().unwrap();
    app.post(
        "/api/v1/products",
        Some(&admin),
        json!({"name": "Postgres Mug", "brand": "X", "category_id": child["id"], "variants": [{"sku": "PG-2", "price": 1}]}),
    )
    .await
    .expect_problem(409);
    app.patch(
        &format!("/api/v1/products/{id}"),
        Some(&admin),
        json!({"version": 1, "brand": "Elephant Co"}),
    )
    .await
    .expect(200);
    app.patch(
        &format!("/api/v1/products/{id}"),
        Some(&admin),
        json!({"version": 1, "brand": "Stale"}),
    )
    .await
    .expect_problem(409);
    let in_parent = app
        .get("/api/v1/products?category=pg-parent&brand=elephant%20co", None)
        .await
        .expect(200)
        .body;
    assert_eq!(in_parent["items"][0]["id"], product["id"]);

    app.app.catalog.indexer().catch_up().await.unwrap();
    let found = app.get("/api/v1/search?q=postgress+mug", None).await.expect(200).body;
    assert_eq!(found["items"][0]["id"], product["id"]);

    let token = app.customer_token("pg-reviewer@example.com").await;
    let review = app
        .post(
            &format!("/api/v1/products/{id}/reviews"),
            Some(&token),
            json!({"rating": 4, "title": "Holds tea"}),
        )
        .await
        .expect(201)
        .body;
    app.post(
        &format!("/api/v1/products/{id}/reviews"),
        Some(&token),
        json!({"rating": 4, "title": "Again"}),
    )
    .await
    .expect_problem(409);
    app.post(
        &format!("/api/v1/admin/reviews/{}/moderation", review["id"].as_str().unwrap()),
        Some(&admin),
        json!({"status": "approved"}),
    )
    .await
    .expect(200);
    let rated = app.get(&format!("/api/v1/products/{id}"), None).await.expect(200).body;
    assert_eq!(rated["rating"], json!({"average": 4.0, "count": 1}));

    app.post("/api/v1/users/me/wishlist", Some(&token), json!({"product_id": id}))
        .await
        .expect(201);
    let wishlist = app
        .get("/api/v1/users/me/wishlist", Some(&token))
        .await
        .expect(200)
        .body;
    assert_eq!(wishlist["items"][0]["product"]["id"], product["id"]);
    app.delete(&format!("/api/v1/products/{id}?version=2"), Some(&admin))
        .await
        .expect(204);
    app.delete(
        &format!("/api/v1/admin/categories/{}?version=1", child["id"].as_str().unwrap()),
        Some(&admin),
    )
    .await
    .expect(204);
}

/// Inventory on PostgreSQL: the demo stock seed and the admin lists (filters, prefix, paging),
/// reservations and the ledger through HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_journey_on_postgres() {
    let Some(url) = platform::testing::postgres_database_url()
        .await
        .expect("test database created")
    else {
        eprintln!("MERCATO_TEST_POSTGRES_URL is not set: inventory-on-PostgreSQL journey skipped");
        return;
    };
    let app = TestApp::spawn_with(
        |config| {
            config.database.urls.insert("inventory".to_owned(), url);
            config.catalog.seed_products = 12;
        },
        Vec::new(),
    )
    .await;
    assert_eq!(app.app.inventory.db().backend(), platform::store::Backend::Postgres);
    let admin = app.admin_token().await;

    // Every demo SKU was stocked; page through them two at a time.
    let mut skus = Vec::new();
    let mut path = "/api/v1/admin/inventory?limit=2".to_owned();
    loop {
        let page = app.get(&path, Some(&admin)).await.expect(200).body;
        for item in page["items"].as_array().unwrap() {
            assert!(item["on_hand"].as_i64().unwrap() >= 5);
            skus.push(item["sku"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/admin/inventory?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert!(skus.len() >= 12, "{skus:?}");
    let mut sorted = skus.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, skus, "SKU order, no repeats");

    // A prefix filter, and the low-stock filter after a reservation takes one SKU low.
    let first = &skus[0];
    let prefix = &first[..first.len() - 1];
    let by_prefix = app
        .get(
            &format!("/api/v1/admin/inventory?sku_prefix={prefix}&limit=100"),
            Some(&admin),
        )
        .await
        .expect(200)
        .body;
    let found: Vec<&str> = by_prefix["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert!(found.contains(&first.as_str()) && found.iter().all(|s| s.starts_with(prefix)));
    let stock = app
        .get(&format!("/api/v1/admin/inventory/{first}"), Some(&admin))
        .await
        .expect(200)
        .body;
    let take = stock["available"].as_i64().unwrap() - 1;
    let lines = [inventory::domain::Line {
        sku: first.clone(),
        quantity: take,
    }];
    app.app
        .inventory
        .reserve("pg-order", &lines, None, inventory::Context::default())
        .await
        .unwrap();
    let low = app
        .get("/api/v1/admin/inventory?low_stock=true", Some(&admin))
        .await
        .expect(200)
        .body;
    let low: Vec<&str> = low["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(low, vec![first.as_str()]);
    let active = app
        .get("/api/v1/admin/reservations?status=active", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(active["items"][0]["order_id"], "pg-order");
    assert_eq!(active["items"][0]["lines"][0]["quantity"], take);
    let committed = app
        .get("/api/v1/admin/reservations?status=committed", Some(&admin))
        .await
        .expect(200)
        .body;
    assert_eq!(committed["items"], json!([]));
    let ledger = app
        .get(&format!("/api/v1/admin/inventory/{first}/ledger"), Some(&admin))
        .await
        .expect(200)
        .body;
    let kinds: Vec<&str> = ledger["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["reserve", "set"]);
    app.wait_for_event("inventory.low_stock", first).await;
    assert!(app.app.inventory.check().await.unwrap().violations.is_empty());
}
