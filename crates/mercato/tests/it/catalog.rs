//! The catalog over HTTP: categories, products, ownership, lists, search, reviews, wishlists,
//! events, the read cache and the search index across restarts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{id_of, token_of, TestApp, PASSWORD};

/// Registers an account and makes it a seller; answers (token, user id).
pub async fn seller(app: &TestApp, admin: &str, email: &str) -> (String, String) {
    let auth = app.register(email).await;
    let id = id_of(&auth);
    app.patch(
        &format!("/api/v1/admin/users/{id}"),
        Some(admin),
        json!({"role": "seller"}),
    )
    .await
    .expect(200);
    (token_of(&app.login(email, PASSWORD).await.expect(200).body), id)
}

async fn category(app: &TestApp, admin: &str, name: &str, parent: Option<&str>) -> Value {
    app.post(
        "/api/v1/admin/categories",
        Some(admin),
        json!({"name": name, "parent_id": parent}),
    )
    .await
    .expect(201)
    .body
}

fn product(name: &str, brand: &str, category: &Value, price: i64, sku: &str) -> Value {
    json!({
        "name": name, "brand": brand, "category_id": category["id"], "status": "active",
        "description": format!("{name} by {brand}."),
        "images": [{"url": format!("https://img.example/{sku}.png"), "alt": name}],
        "attributes": [{"name": "Material", "value": "Cotton"}],
        "variants": [{"sku": sku, "price": price, "options": {"size": "M"}}],
    })
}

async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    app.post("/api/v1/products", Some(token), body).await.expect(201).body
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categories_form_a_tree_and_a_move_below_itself_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let root = category(&app, &admin, "Clothing", None).await;
    let child = category(&app, &admin, "Shoes", Some(root["id"].as_str().unwrap())).await;
    let leaf = category(&app, &admin, "Running Shoes", Some(child["id"].as_str().unwrap())).await;
    assert_eq!(leaf["slug"], "running-shoes");
    assert_eq!(leaf["path"].as_array().unwrap().len(), 3, "breadcrumbs from the root");

    let tree = app.get("/api/v1/categories", None).await.expect(200).body;
    assert_eq!(tree[0]["name"], "Clothing");
    assert_eq!(tree[0]["children"][0]["children"][0]["name"], "Running Shoes");
    // The (cached) tree shows a new category at once.
    category(&app, &admin, "Hats", Some(root["id"].as_str().unwrap())).await;
    let tree = app.get("/api/v1/categories", None).await.expect(200).body;
    assert_eq!(tree[0]["children"].as_array().unwrap().len(), 2);
    // A slug shaped like an id would make id-or-slug lookups ambiguous.
    app.post(
        "/api/v1/admin/categories",
        Some(&admin),
        json!({"name": "Odd", "slug": "0190f0f0-0000-7000-8000-000000000000"}),
    )
    .await
    .expect_problem(422);

    // A duplicate slug, an unknown parent, a move below its own descendant.
    app.post("/api/v1/admin/categories", Some(&admin), json!({"name": "Shoes"}))
        .await
        .expect_problem(409);
    app.post(
        "/api/v1/admin/categories",
        Some(&admin),
        json!({"name": "X", "parent_id": "0190f0f0-0000-7000-8000-000000000000"}),
    )
    .await
    .expect_problem(422);
    let root_id = root["id"].as_str().unwrap();
    app.patch(
        &format!("/api/v1/admin/categories/{root_id}"),
        Some(&admin),
        json!({"version": 1, "parent_id": leaf["id"]}),
    )
    .await
    .expect_problem(409);

    // Moving a subtree rewrites the paths below it.
    let other = category(&app, &admin, "Sport", None).await;
    let moved = app
        .patch(
            &format!("/api/v1/admin/categories/{}", child["id"].as_str().unwrap()),
            Some(&admin),
            json!({"version": 1, "parent_id": other["id"]}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(moved["version"], 2);
    let leaf_now = app
        .get(&format!("/api/v1/categories/{}", leaf["slug"].as_str().unwrap()), None)
        .await
        .expect(200)
        .body;
    let path: Vec<&str> = leaf_now["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(path, ["Sport", "Shoes", "Running Shoes"]);
    // A stale version is refused; customers cannot manage categories.
    app.patch(
        &format!("/api/v1/admin/categories/{}", child["id"].as_str().unwrap()),
        Some(&admin),
        json!({"version": 1, "name": "Footwear"}),
    )
    .await
    .expect_problem(409);
    let customer = app.customer_token("shopper@example.com").await;
    app.post("/api/v1/admin/categories", Some(&customer), json!({"name": "Nope"}))
        .await
        .expect_problem(403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_holding_products_is_deleted_only_with_a_reassignment() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let old = category(&app, &admin, "Old", None).await;
    let new = category(&app, &admin, "New", None).await;
    let parent = category(&app, &admin, "Parent", None).await;
    category(&app, &admin, "Kid", Some(parent["id"].as_str().unwrap())).await;
    let p = create(&app, &admin, product("Lamp", "Acme", &old, 1_000, "LAMP-1")).await;
    let old_id = old["id"].as_str().unwrap();

    let refused = app
        .delete(&format!("/api/v1/admin/categories/{old_id}?version=1"), Some(&admin))
        .await
        .expect_problem(409);
    assert!(refused.body["detail"].as_str().unwrap().contains("1 product"));
    app.delete(
        &format!("/api/v1/admin/categories/{}?version=1", parent["id"].as_str().unwrap()),
        Some(&admin),
    )
    .await
    .expect_problem(409);
    app.delete(
        &format!(
            "/api/v1/admin/categories/{old_id}?version=1&reassign_to={}",
            new["id"].as_str().unwrap()
        ),
        Some(&admin),
    )
    .await
    .expect(204);
    let moved = app
        .get(&format!("/api/v1/products/{}", p["slug"].as_str().unwrap()), None)
        .await
        .expect(200)
        .body;
    assert_eq!(moved["category"]["id"], new["id"]);
    app.get(&format!("/api/v1/categories/{old_id}"), None)
        .await
        .expect_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_validated_and_read_by_id_or_slug() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let shoes = category(&app, &admin, "Shoes", None).await;
    let created = create(&app, &admin, product("Trail Runner", "Acme", &shoes, 8_999, "TR-1")).await;
    assert_eq!(created["slug"], "trail-runner");
    assert_eq!(created["version"], 1);
    assert_eq!(created["price"]["min"], 8_999);
    assert_eq!(created["variants"][0]["options"]["size"], "M");

    for key in [created["id"].as_str().unwrap(), "trail-runner"] {
        let got = app.get(&format!("/api/v1/products/{key}"), None).await.expect(200).body;
        assert_eq!(got["id"], created["id"]);
        assert_eq!(got["category"]["name"], "Shoes");
        assert_eq!(got["images"][0]["alt"], "Trail Runner");
        assert_eq!(got["rating"]["count"], 0);
    }

    // Negative price, duplicate slug, duplicate SKU, unknown category, no variants, bad image.
    let mut negative = product("Cheap", "Acme", &shoes, -1, "CH-1");
    app.post("/api/v1/products", Some(&admin), negative.take())
        .await
        .expect_problem(422);
    let duplicate_slug = product("Trail Runner", "Other", &shoes, 100, "TR-2");
    app.post("/api/v1/products", Some(&admin), duplicate_slug)
        .await
        .expect_problem(409);
    let duplicate_sku = product("Another Runner", "Acme", &shoes, 100, "TR-1");
    let reply = app
        .post("/api/v1/products", Some(&admin), duplicate_sku)
        .await
        .expect_problem(409);
    assert!(reply.body["detail"].as_str().unwrap().contains("TR-1"));
    let mut unknown_category = product("Ghost", "Acme", &shoes, 100, "GH-1");
    unknown_category["category_id"] = json!("0190f0f0-0000-7000-8000-000000000000");
    let reply = app
        .post("/api/v1/products", Some(&admin), unknown_category)
        .await
        .expect_problem(422);
    assert_eq!(reply.body["errors"][0]["field"], "category_id");
    let mut no_variants = product("Empty", "Acme", &shoes, 100, "EM-1");
    no_variants["variants"] = json!([]);
    no_variants["images"] = json!([{"url": "ftp://x"}]);
    let reply = app
        .post("/api/v1/products", Some(&admin), no_variants)
        .await
        .expect_problem(422);
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["images/0/url", "variants"]);

    // A draft is not in the shop until activated.
    let mut draft = product("Secret Shoe", "Acme", &shoes, 100, "SS-1");
    draft["status"] = json!("draft");
    let draft = create(&app, &admin, draft).await;
    app.get("/api/v1/products/secret-shoe", None).await.expect_problem(404);
    let managed = app
        .get(
            &format!("/api/v1/seller/products/{}", draft["id"].as_str().unwrap()),
            Some(&admin),
        )
        .await
        .expect(200);
    assert_eq!(managed.body["status"], "draft");
    app.patch(
        &format!("/api/v1/products/{}", draft["id"].as_str().unwrap()),
        Some(&admin),
        json!({"version": 1, "status": "active"}),
    )
    .await
    .expect(200);
    app.get("/api/v1/products/secret-shoe", None).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_version_is_refused_and_variants_keep_their_ids() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Bags", None).await;
    let p = create(&app, &admin, product("Tote", "Acme", &c, 2_000, "TOTE-M")).await;
    let id = p["id"].as_str().unwrap();
    let variant_id = p["variants"][0]["id"].clone();

    let updated = app
        .patch(
            &format!("/api/v1/products/{id}"),
            Some(&admin),
            json!({"version": 1, "name": "Big Tote", "variants": [
                {"sku": "TOTE-M", "price": 2_500, "options": {"size": "M"}},
                {"sku": "TOTE-L", "price": 3_000, "options": {"size": "L"}}]}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["variants"][0]["id"], variant_id, "a kept SKU keeps its id");
    assert_eq!(
        (updated["price"]["min"].clone(), updated["price"]["max"].clone()),
        (json!(2_500), json!(3_000))
    );

    // Someone else's edit came first.
    let stale = app
        .patch(
            &format!("/api/v1/products/{id}"),
            Some(&admin),
            json!({"version": 1, "name": "Old"}),
        )
        .await
        .expect_problem(409);
    assert!(stale.body["detail"].as_str().unwrap().contains("stale"));
    app.delete(&format!("/api/v1/products/{id}?version=1"), Some(&admin))
        .await
        .expect_problem(409);
    // No version at all is refused; `If-Match` may carry it instead of the body.
    app.patch(&format!("/api/v1/products/{id}"), Some(&admin), json!({"name": "Old"}))
        .await
        .expect_problem(422);
    let with_if_match = |value: &str| {
        app.client
            .patch(format!("{}/api/v1/products/{id}", app.url))
            .bearer_auth(&admin)
            .header("if-match", value)
            .json(&json!({"name": "Old"}))
    };
    let status = with_if_match("\"1\"").send().await.unwrap().status();
    assert_eq!(status.as_u16(), 409, "a stale If-Match");
    let after = app.get(&format!("/api/v1/products/{id}"), None).await.expect(200).body;
    assert_eq!(after["name"], "Big Tote", "the refused edits changed nothing");
    let status = with_if_match("W/\"2\"").send().await.unwrap().status();
    assert_eq!(status.as_u16(), 200, "a current If-Match");

    app.delete(&format!("/api/v1/products/{id}?version=3"), Some(&admin))
        .await
        .expect(204);
    app.get(&format!("/api/v1/products/{id}"), None)
        .await
        .expect_problem(404);
    // The slug is free again; the SKUs stay reserved.
    create(&app, &admin, product("Tote", "Acme", &c, 2_000, "TOTE-NEW")).await;
    app.post(
        "/api/v1/products",
        Some(&admin),
        product("Tote Two", "Acme", &c, 2_000, "TOTE-M"),
    )
    .await
    .expect_problem(409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sellers_manage_only_their_own_products() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Toys", None).await;
    let (alice, alice_id) = seller(&app, &admin, "alice@sellers.example").await;
    let (bob, _) = seller(&app, &admin, "bob@sellers.example").await;
    let kite = create(&app, &alice, product("Kite", "Skyward", &c, 1_500, "KITE-1")).await;
    assert_eq!(kite["seller_id"], alice_id.as_str());
    let kite_id = kite["id"].as_str().unwrap();

    app.patch(
        &format!("/api/v1/products/{kite_id}"),
        Some(&bob),
        json!({"version": 1, "name": "Mine"}),
    )
    .await
    .expect_problem(403);
    app.delete(&format!("/api/v1/products/{kite_id}?version=1"), Some(&bob))
        .await
        .expect_problem(403);
    app.get(&format!("/api/v1/seller/products/{kite_id}"), Some(&bob))
        .await
        .expect_problem(403);
    // A seller cannot create for someone else; a customer cannot create at all.
    let mut for_alice = product("Yo-yo", "Skyward", &c, 500, "YOYO-1");
    for_alice["seller_id"] = json!(alice_id);
    app.post("/api/v1/products", Some(&bob), for_alice)
        .await
        .expect_problem(403);
    let customer = app.customer_token("kid@example.com").await;
    app.post(
        "/api/v1/products",
        Some(&customer),
        product("Ball", "X", &c, 100, "BALL-1"),
    )
    .await
    .expect_problem(403);
    app.post("/api/v1/products", None, product("Ball", "X", &c, 100, "BALL-1"))
        .await
        .expect_problem(401);

    create(&app, &bob, product("Drone", "Skyward", &c, 9_900, "DRONE-1")).await;
    let bobs = app.get("/api/v1/seller/products", Some(&bob)).await.expect(200).body;
    assert_eq!(names(&bobs["items"]), ["Drone"]);
    let all = app.get("/api/v1/seller/products", Some(&admin)).await.expect(200).body;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    // Alice edits her own; the admin edits anyone's.
    app.patch(
        &format!("/api/v1/products/{kite_id}"),
        Some(&alice),
        json!({"version": 1, "name": "Box Kite"}),
    )
    .await
    .expect(200);
    app.patch(
        &format!("/api/v1/products/{kite_id}"),
        Some(&admin),
        json!({"version": 2, "brand": "Skyward Co"}),
    )
    .await
    .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_events_carry_skus_and_prices() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Kitchen", None).await;
    let p = create(&app, &admin, product("Kettle", "Brew", &c, 3_499, "KET-1")).await;
    let id = p["id"].as_str().unwrap();
    let created = app.wait_for_event("product.created", id).await;
    assert_eq!(created.data["variants"][0]["sku"], "KET-1");
    assert_eq!(created.data["variants"][0]["price"], 3_499);
    assert_eq!(created.data["currency"], "USD");
    app.patch(
        &format!("/api/v1/products/{id}"),
        Some(&admin),
        json!({"version": 1, "variants": [{"sku": "KET-1", "price": 2_999}]}),
    )
    .await
    .expect(200);
    let updated = app.wait_for_event("product.updated", id).await;
    assert_eq!(updated.data["variants"][0]["price"], 2_999);
    app.delete(&format!("/api/v1/products/{id}?version=2"), Some(&admin))
        .await
        .expect(204);
    let deleted = app.wait_for_event("product.deleted", id).await;
    assert_eq!(deleted.data["skus"], json!(["KET-1"]));
}

/// A small shop: two departments, brands, prices and ratings to filter on.
async fn shop(app: &TestApp, admin: &str) -> (Value, Value, Value) {
    let audio = category(app, admin, "Audio", None).await;
    let headphones = category(app, admin, "Headphones", Some(audio["id"].as_str().unwrap())).await;
    let garden = category(app, admin, "Garden", None).await;
    for (name, brand, cat, price, sku) in [
        ("Wireless Headphones", "Sonic", &headphones, 12_900, "HP-1"),
        ("Studio Headphones", "Acme", &headphones, 24_900, "HP-2"),
        ("Bluetooth Speaker", "Sonic", &audio, 5_900, "SP-1"),
        ("Garden Hose", "Greenly", &garden, 2_500, "GH-1"),
        ("Sonic Garden Sprinkler", "Greenly", &garden, 1_000, "GS-1"),
    ] {
        create(app, admin, product(name, brand, cat, price, sku)).await;
    }
    // Search follows writes within moments (the indexer runs beside the request); wait for it.
    app.app.catalog.indexer().catch_up().await.expect("index caught up");
    (audio, headphones, garden)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_sort_and_page() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (audio, _, garden) = shop(&app, &admin).await;

    let list = |query: String| {
        let app = &app;
        async move {
            names(
                &app.get(&format!("/api/v1/products?{query}"), None)
                    .await
                    .expect(200)
                    .body["items"],
            )
        }
    };
    // The category includes its subcategories.
    let mut in_audio = list(format!("category={}", audio["slug"].as_str().unwrap())).await;
    in_audio.sort();
    assert_eq!(
        in_audio,
        ["Bluetooth Speaker", "Studio Headphones", "Wireless Headphones"]
    );
    assert_eq!(
        list("sort=price_asc".to_owned()).await,
        [
            "Sonic Garden Sprinkler",
            "Garden Hose",
            "Bluetooth Speaker",
            "Wireless Headphones",
            "Studio Headphones"
        ]
    );
    assert_eq!(
        list("sort=price_desc&brand=SONIC,greenly&price_min=1000&price_max=12900".to_owned()).await,
        [
            "Wireless Headphones",
            "Bluetooth Speaker",
            "Garden Hose",
            "Sonic Garden Sprinkler"
        ]
    );
    assert_eq!(
        list(format!("category={}&sort=newest", garden["id"].as_str().unwrap())).await,
        ["Sonic Garden Sprinkler", "Garden Hose"]
    );
    assert!(list("min_rating=4".to_owned()).await.is_empty(), "nothing is rated yet");
    assert!(list("in_stock=true".to_owned()).await.is_empty(), "no stock signal yet");
    assert_eq!(list("in_stock=false".to_owned()).await.len(), 5);

    // Pages of two, in price order, neither repeat nor skip.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/api/v1/products?sort=price_asc&limit=2&cursor={c}"),
            None => "/api/v1/products?sort=price_asc&limit=2".to_owned(),
        };
        let page = app.get(&query, None).await.expect(200).body;
        seen.extend(names(&page["items"]));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, list("sort=price_asc".to_owned()).await);

    // Caps and refusals.
    let capped = app.get("/api/v1/products?limit=100000", None).await.expect(200).body;
    assert_eq!(capped["items"].as_array().unwrap().len(), 5);
    for bad in [
        "limit=0",
        "cursor=%%%",
        "cursor=bm90LWEtY3Vyc29y",
        "min_rating=6",
        "price_min=-5",
        "price_min=10&price_max=5",
        "category=no-such-category",
        "sort=cheapest",
        "in_stock=maybe",
    ] {
        let reply = app.get(&format!("/api/v1/products?{bad}"), None).await;
        assert!(
            reply.status.is_client_error(),
            "{bad} should be refused, got {}",
            reply.status
        );
        assert_eq!(reply.content_type(), "application/problem+json", "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_forgives_typos_ranks_names_first_and_counts_facets() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (audio, headphones, garden) = shop(&app, &admin).await;
    let search = |query: &'static str| {
        let app = &app;
        async move { app.get(&format!("/api/v1/search?{query}"), None).await.expect(200).body }
    };

    // A typo, a prefix, a brand word: name matches come before brand-only matches.
    assert_eq!(
        names(&search("q=headphnes").await["items"]).len(),
        2,
        "edit distance 2 on a long word"
    );
    assert_eq!(names(&search("q=blu").await["items"]), ["Bluetooth Speaker"]);
    let sonic = names(&search("q=sonic").await["items"]);
    assert_eq!(
        sonic[0], "Sonic Garden Sprinkler",
        "a name match outranks brand matches"
    );
    assert_eq!(sonic.len(), 3);
    assert!(names(&search("q=wireles+headphones").await["items"]).contains(&"Wireless Headphones".to_owned()));
    assert!(search("q=xyzzy").await["items"].as_array().unwrap().is_empty());
    // Filters and sorts as in the list.
    assert_eq!(
        names(&search("q=sonic&sort=price_asc&price_max=10000").await["items"]),
        ["Sonic Garden Sprinkler", "Bluetooth Speaker"]
    );

    // Facets count everything that matches, parents including their subcategories.
    let everything = search("q=").await;
    assert_eq!(everything["total"], 5);
    let facets = &everything["facets"];
    let count_of = |id: &Value| {
        facets["categories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| &f["id"] == id)
            .map(|f| f["count"].as_u64().unwrap())
    };
    assert_eq!(count_of(&audio["id"]), Some(3));
    assert_eq!(count_of(&headphones["id"]), Some(2));
    assert_eq!(count_of(&garden["id"]), Some(2));
    let brands: Vec<(String, u64)> = facets["brands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["brand"].as_str().unwrap().to_owned(), b["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(brands[0].1, 2);
    assert_eq!(brands.iter().map(|b| b.1).sum::<u64>(), 5);
    // 1,000 falls in [1,000, 2,500), 2,500 in [2,500, 5,000).
    let prices: Vec<u64> = facets["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .collect();
    assert_eq!(prices, [0, 1, 1, 1, 2, 0]);

    let suggestions = app.get("/api/v1/search/suggest?q=gard", None).await.expect(200).body;
    assert!(suggestions.as_array().unwrap().contains(&json!("Garden Hose")));
    app.get("/api/v1/search/suggest?q=a&limit=0", None)
        .await
        .expect_problem(422);
    let long = "a".repeat(201);
    app.get(&format!("/api/v1/search?q={long}"), None)
        .await
        .expect_problem(422);
    app.get("/api/v1/search?q=x&cursor=MTAwMA", None)
        .await
        .expect_problem(422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_one_per_customer_moderated_and_counted() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Books", None).await;
    let p = create(&app, &admin, product("Atlas", "Maps Co", &c, 4_000, "ATLAS-1")).await;
    let slug = p["slug"].as_str().unwrap();
    let ann = app.customer_token("ann@example.com").await;
    let ben = app.customer_token("ben@example.com").await;

    let review = |token: &str, rating: i64| {
        let (app, token) = (&app, token.to_owned());
        async move {
            app.post(
                &format!("/api/v1/products/{slug}/reviews"),
                Some(&token),
                json!({"rating": rating, "title": "My view", "body": "Thorough.", "author_name": "Reader"}),
            )
            .await
        }
    };
    let first = review(&ann, 5).await.expect(201).body;
    assert_eq!(first["status"], "pending");
    review(&ann, 4).await.expect_problem(409);
    review(&ben, 0).await.expect_problem(422);
    let second = review(&ben, 2).await.expect(201).body;
    app.wait_for_event("review.submitted", first["id"].as_str().unwrap())
        .await;

    let shown = app
        .get(&format!("/api/v1/products/{slug}/reviews"), None)
        .await
        .expect(200)
        .body;
    assert!(
        shown["items"].as_array().unwrap().is_empty(),
        "pending reviews are not shown"
    );
    let pending = app.get("/api/v1/admin/reviews", Some(&admin)).await.expect(200).body;
    assert_eq!(pending["items"].as_array().unwrap().len(), 2);
    app.get("/api/v1/admin/reviews", Some(&ann)).await.expect_problem(403);

    let moderate = |id: &Value, status: &str| {
        let (app, admin, id, status) = (&app, admin.clone(), id.as_str().unwrap().to_owned(), status.to_owned());
        async move {
            app.post(
                &format!("/api/v1/admin/reviews/{id}/moderation"),
                Some(&admin),
                json!({"status": status, "note": "checked"}),
            )
            .await
        }
    };
    moderate(&first["id"], "approved").await.expect(200);
    moderate(&second["id"], "approved").await.expect(200);
    let product = app
        .get(&format!("/api/v1/products/{slug}"), None)
        .await
        .expect(200)
        .body;
    assert_eq!(product["rating"], json!({"average": 3.5, "count": 2}));
    let shown = app
        .get(&format!("/api/v1/products/{slug}/reviews"), None)
        .await
        .expect(200)
        .body;
    assert_eq!(shown["items"].as_array().unwrap().len(), 2);
    assert!(
        shown["items"][0].get("moderation_note").is_none(),
        "notes are for the author"
    );

    // Rejecting an approved review takes its rating back out.
    moderate(&second["id"], "rejected").await.expect(200);
    moderate(&second["id"], "pending").await.expect_problem(422);
    let product = app
        .get(&format!("/api/v1/products/{slug}"), None)
        .await
        .expect(200)
        .body;
    assert_eq!(product["rating"], json!({"average": 5.0, "count": 1}));
    let mine = app.get("/api/v1/users/me/reviews", Some(&ben)).await.expect(200).body;
    assert_eq!(mine["items"][0]["status"], "rejected");
    assert_eq!(mine["items"][0]["moderation_note"], "checked");
    // The rating filter follows (the index catches up through the event path).
    let rated = platform::testing::eventually(Duration::from_secs(10), || async {
        let found = app.get("/api/v1/search?q=atlas&min_rating=4.5", None).await.body;
        (found["total"] == 1).then_some(found)
    })
    .await;
    assert!(rated.is_some(), "search sees the new rating");

    app.delete(
        &format!("/api/v1/users/me/reviews/{}", first["id"].as_str().unwrap()),
        Some(&ben),
    )
    .await
    .expect_problem(404);
    app.delete(
        &format!("/api/v1/users/me/reviews/{}", first["id"].as_str().unwrap()),
        Some(&ann),
    )
    .await
    .expect(204);
    app.delete(
        &format!("/api/v1/users/me/reviews/{}", first["id"].as_str().unwrap()),
        Some(&ann),
    )
    .await
    .expect_problem(404);
    let product = app
        .get(&format!("/api/v1/products/{slug}"), None)
        .await
        .expect(200)
        .body;
    assert_eq!(
        product["rating"],
        json!({"average": 0.0, "count": 0}),
        "taken out once, not twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_order_makes_the_reviewer_a_verified_buyer() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Tools", None).await;
    let p = create(&app, &admin, product("Hammer", "Forge", &c, 1_200, "HAM-1")).await;
    let auth = app.register("builder@example.com").await;
    let (token, user_id) = (token_of(&auth), id_of(&auth));
    app.post(
        &format!("/api/v1/products/{}/reviews", p["id"].as_str().unwrap()),
        Some(&token),
        json!({"rating": 4, "title": "Solid"}),
    )
    .await
    .expect(201);

    let delivered = platform::events::Event::new(
        "orders",
        "order.delivered",
        "order-1",
        json!({"order_id": "order-1", "user_id": user_id, "items": [{"product_id": p["id"], "sku": "HAM-1"}]}),
        None,
    );
    app.app.bus.publish(&delivered).await.expect("published");
    // Delivered twice (at least once delivery): no harm.
    app.app.bus.publish(&delivered).await.expect("published");
    let verified = platform::testing::eventually(Duration::from_secs(10), || async {
        let mine = app.get("/api/v1/users/me/reviews", Some(&token)).await.body;
        (mine["items"][0]["verified_buyer"] == true).then_some(())
    })
    .await;
    assert!(verified.is_some(), "the review is flagged as a verified buyer's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wishlist_adds_lists_and_removes() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Games", None).await;
    let chess = create(&app, &admin, product("Chess Set", "Kings", &c, 3_000, "CHESS-1")).await;
    let go = create(&app, &admin, product("Go Board", "Stones", &c, 5_000, "GO-1")).await;
    let token = app.customer_token("player@example.com").await;
    let path = "/api/v1/users/me/wishlist";

    app.post(path, Some(&token), json!({"product_id": chess["id"]}))
        .await
        .expect(201);
    app.post(path, Some(&token), json!({"product_id": chess["id"]}))
        .await
        .expect(200);
    app.post(path, Some(&token), json!({"product_id": "go-board"}))
        .await
        .expect(201);
    app.post(path, Some(&token), json!({"product_id": "nothing-here"}))
        .await
        .expect_problem(422);
    app.post(path, None, json!({"product_id": chess["id"]}))
        .await
        .expect_problem(401);

    let list = app.get(path, Some(&token)).await.expect(200).body;
    let listed: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["product"]["id"])
        .collect();
    assert_eq!(listed, [&go["id"], &chess["id"]], "newest first");
    let other = app.customer_token("other@example.com").await;
    assert!(app.get(path, Some(&other)).await.expect(200).body["items"]
        .as_array()
        .unwrap()
        .is_empty());

    app.delete(&format!("{path}/{}", chess["id"].as_str().unwrap()), Some(&token))
        .await
        .expect(204);
    app.delete(&format!("{path}/{}", chess["id"].as_str().unwrap()), Some(&token))
        .await
        .expect_problem(404);
    app.delete(&format!("{path}/go-board"), Some(&token)).await.expect(204);
    app.post(path, Some(&token), json!({"product_id": "go-board"}))
        .await
        .expect(201);
    app.delete(path, Some(&token)).await.expect(204);
    assert!(app.get(path, Some(&token)).await.expect(200).body["items"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_follow_writes_and_the_hit_rate_is_measured() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Lamps", None).await;
    let p = create(&app, &admin, product("Desk Lamp", "Lumen", &c, 2_000, "LAMP-D")).await;
    let id = p["id"].as_str().unwrap();
    for _ in 0..3 {
        app.get(&format!("/api/v1/products/{id}"), None).await.expect(200);
        app.get("/api/v1/products", None).await.expect(200);
    }
    app.patch(
        &format!("/api/v1/products/{id}"),
        Some(&admin),
        json!({"version": 1, "name": "Floor Lamp"}),
    )
    .await
    .expect(200);
    let fresh = app.get(&format!("/api/v1/products/{id}"), None).await.expect(200).body;
    assert_eq!(fresh["name"], "Floor Lamp", "a write is seen at once");
    let list = app.get("/api/v1/products", None).await.expect(200).body;
    assert_eq!(names(&list["items"]), ["Floor Lamp"]);

    let metrics = reqwest::get(format!("{}/metrics", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hits = metrics
        .lines()
        .find(|l| {
            l.starts_with("mercato_cache_requests_total")
                && l.contains("cache=\"product\"")
                && l.contains("result=\"hit\"")
        })
        .expect("a product cache hit counter");
    assert!(hits.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 2.0);
    assert!(metrics.contains("mercato_cache_hit_ratio{cache=\"product\"}"));
}

/// Search answers show products and categories as they are now, although the rows behind the
/// hits and the category names are kept in memory between searches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_shows_renamed_products_and_categories() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Clocks", None).await;
    let id = create(&app, &admin, product("Cuckoo Clock", "Tick", &c, 9_000, "CUCKOO-1")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.app.catalog.indexer().catch_up().await.expect("index caught up");
    let search = |query: &'static str| {
        let app = &app;
        async move { app.get(&format!("/api/v1/search?{query}"), None).await.expect(200).body }
    };
    let found = search("q=cuckoo").await;
    assert_eq!(names(&found["items"]), ["Cuckoo Clock"]);
    assert_eq!(found["facets"]["categories"][0]["name"], "Clocks");

    app.patch(
        &format!("/api/v1/products/{id}"),
        Some(&admin),
        json!({"version": 1, "name": "Cuckoo Clock Deluxe"}),
    )
    .await
    .expect(200);
    app.patch(
        &format!("/api/v1/admin/categories/{}", c["id"].as_str().unwrap()),
        Some(&admin),
        json!({"version": 1, "name": "Wall Clocks"}),
    )
    .await
    .expect(200);
    let renamed = platform::testing::eventually(Duration::from_secs(10), || async {
        let found = search("q=cuckoo&limit=5").await;
        (names(&found["items"]) == ["Cuckoo Clock Deluxe"]).then_some(found)
    })
    .await
    .expect("the renamed product is found under its new name");
    assert_eq!(renamed["facets"]["categories"][0]["name"], "Wall Clocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_survives_a_restart() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Clocks", None).await;
    create(&app, &admin, product("Cuckoo Clock", "Tick", &c, 9_000, "CUCKOO-1")).await;
    let app = app.restart(Vec::new()).await;
    let index = app.app.catalog.indexer().index();
    assert_eq!(index.num_docs(), 1, "the index was kept, not rebuilt empty");
    let found = app.get("/api/v1/search?q=cuckoo", None).await.expect(200).body;
    assert_eq!(names(&found["items"]), ["Cuckoo Clock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_catches_up_after_a_crash_between_commit_and_index_update() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = category(&app, &admin, "Vases", None).await;
    let config = app.config.clone();
    let admin_user = platform::auth::CurrentUser {
        id: uuid::Uuid::parse_str(
            app.get("/api/v1/users/me", Some(&admin)).await.expect(200).body["id"]
                .as_str()
                .unwrap(),
        )
        .unwrap(),
        role: platform::auth::Role::Admin,
        session_id: "test".to_owned(),
    };
    app.stop().await;

    // A process commits a product (and its event) and dies before its index sees it: here, a
    // catalog whose index is a throwaway in memory and whose relay never runs.
    let db = mercato::app::catalog_db(&config).await.unwrap();
    let crashed = catalog::Catalog::new(
        db.clone(),
        std::sync::Arc::new(platform::clock::SystemClock),
        std::sync::Arc::new(catalog::cache::MemoryCache::new(Duration::from_secs(1), 1 << 20)),
        std::sync::Arc::new(catalog::search::SearchIndex::in_memory().unwrap()),
        catalog::Settings {
            currency: "USD".to_owned(),
        },
    );
    let draft = catalog::domain::ProductDraft {
        name: "Crystal Vase".to_owned(),
        slug: None,
        description: String::new(),
        brand: "Glassworks".to_owned(),
        category_id: uuid::Uuid::parse_str(c["id"].as_str().unwrap()).ok(),
        status: catalog::domain::ProductStatus::Active,
        attributes: vec![],
        images: vec![],
        variants: vec![catalog::domain::VariantInput {
            sku: "VASE-1".to_owned(),
            options: Default::default(),
            price: 4_500,
            compare_at_price: None,
            weight_grams: None,
        }],
    };
    crashed.create_product(&admin_user, draft, None, None).await.unwrap();
    assert_eq!(
        crashed.outbox().pending().await.unwrap(),
        1,
        "the event waits in the outbox"
    );
    db.close().await;

    let app = app.restart(Vec::new()).await;
    let found = app.get("/api/v1/search?q=crystal", None).await.expect(200).body;
    assert_eq!(
        names(&found["items"]),
        ["Crystal Vase"],
        "the start caught the index up"
    );
    // The event is still delivered, and its consumer finds the index already there.
    let event = platform::testing::eventually(Duration::from_secs(10), || async {
        app.bus_events().await.into_iter().find(|e| e.kind == "product.created")
    })
    .await
    .expect("the outbox relayed the event");
    assert!(event.data["seq"].as_i64().unwrap() <= app.app.catalog.indexer().index().indexed_seq());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_seeds_a_deterministic_demo_catalog() {
    let seeded = |n| async move { TestApp::spawn_with(|c| c.catalog.seed_products = n, Vec::new()).await };
    let (one, two) = (seeded(60).await, seeded(60).await);
    let first = one.get("/api/v1/products?limit=100", None).await.expect(200).body;
    let second = two.get("/api/v1/products?limit=100", None).await.expect(200).body;
    assert_eq!(first["items"].as_array().unwrap().len(), 60);
    assert_eq!(
        ids(&first["items"]),
        ids(&second["items"]),
        "the same products, ids included"
    );
    let tree = one.get("/api/v1/categories", None).await.expect(200).body;
    assert!(
        tree[0]["children"][0]["children"][0]["id"].is_string(),
        "three levels deep"
    );
    let found = one.get("/api/v1/search?q=&limit=1", None).await.expect(200).body;
    assert_eq!(found["total"], 60, "the seeded products are searchable");
    // A second start does not seed again.
    let one = one.restart(Vec::new()).await;
    let again = one.get("/api/v1/search?q=&limit=1", None).await.expect(200).body;
    assert_eq!(again["total"], 60);
}
