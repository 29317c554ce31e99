//! Each test takes a fresh, migrated catalog database; `store_suite!` instantiates every test
//! once per backend.

use std::sync::Arc;
use std::time::Duration;

use catalog::cache::MemoryCache;
use catalog::indexer::Indexer;
use catalog::search::{self, SearchIndex, SearchQuery};
use catalog::store::{self, CategoryRow, ListFilter, ListOrder, ProductRow};
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::store::{is_unique_violation, Db};
use platform::testing::tempfile_guard::TempDir;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

macro_rules! store_suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            store_suite!(@tests $open;
                moving_a_category_rewrites_every_path_below_it,
                product_writes_check_the_version_and_slugs_and_skus_are_unique,
                changes_are_read_in_sequence_even_when_one_seq_spans_pages,
                approved_ratings_accumulate_on_the_product,
                wishlists_page_newest_first_without_repeats,
                an_index_ahead_of_the_database_is_rebuilt,
                list_filters_and_the_index_agree_with_a_brute_force_filter,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                match super::$open().await {
                    Some(fixture) => super::$test(fixture.db.clone()).await,
                    None => eprintln!("skipped: {} is not set", platform::testing::POSTGRES_URL_VAR),
                }
            }
        )+
    };
}

store_suite!(sqlite, open_sqlite);
store_suite!(postgres, open_postgres);

pub struct Fixture {
    db: Db,
    _dir: Option<TempDir>,
}

async fn migrated(db: Db, dir: Option<TempDir>) -> Fixture {
    db.migrate("platform", PLATFORM_MIGRATIONS)
        .await
        .expect("platform migrations");
    db.migrate(catalog::SERVICE, store::MIGRATIONS)
        .await
        .expect("catalog migrations");
    Fixture { db, _dir: dir }
}

async fn open_sqlite() -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.expect("sqlite");
    Some(migrated(db, Some(dir)).await)
}

async fn open_postgres() -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.expect("postgres")?;
    Some(migrated(db, None).await)
}

fn category(id: &str, parent: Option<&CategoryRow>) -> CategoryRow {
    CategoryRow {
        id: id.to_owned(),
        parent_id: parent.map(|p| p.id.clone()),
        name: id.to_uppercase(),
        slug: id.to_owned(),
        path: catalog::domain::category_path(parent.map(|p| p.path.as_str()), id),
        position: 0,
        created_at: 0,
        updated_at: 0,
        version: 1,
    }
}

fn product(id: &str, category: &str, seq: i64) -> ProductRow {
    ProductRow {
        id: id.to_owned(),
        slug: format!("slug-{id}"),
        name: format!("Product {id}"),
        description: String::new(),
        brand: "Acme".to_owned(),
        brand_key: "acme".to_owned(),
        category_id: category.to_owned(),
        seller_id: "seller".to_owned(),
        status: "active".to_owned(),
        attributes: "[]".to_owned(),
        images: "[]".to_owned(),
        price_min: 100,
        price_max: 100,
        rating_sum: 0,
        rating_count: 0,
        rating_x100: 0,
        in_stock: 1,
        seq,
        created_at: 1,
        updated_at: 1,
        deleted_at: None,
        version: 1,
    }
}

async fn insert_categories(db: &Db, rows: &[&CategoryRow]) {
    let mut tx = db.begin().await.unwrap();
    for row in rows {
        store::insert_category(&mut tx, row).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn moving_a_category_rewrites_every_path_below_it(db: Db) {
    let a = category("a", None);
    let b = category("b", Some(&a));
    let c = category("c", Some(&b));
    let z = category("z", None);
    insert_categories(&db, &[&a, &b, &c, &z]).await;

    // Move b (with c) under z.
    let mut tx = db.begin().await.unwrap();
    let moved = CategoryRow {
        parent_id: Some("z".to_owned()),
        path: catalog::domain::category_path(Some(&z.path), "b"),
        ..b.clone()
    };
    store::move_descendants(&mut tx, &b.path, &moved.path).await.unwrap();
    assert!(store::update_category(&mut tx, &moved, 1).await.unwrap());
    assert!(
        !store::update_category(&mut tx, &moved, 1).await.unwrap(),
        "a stale version writes nothing"
    );
    tx.commit().await.unwrap();

    let paths: Vec<(String, String)> = store::all_categories(db.reader())
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.path))
        .collect();
    for (id, path) in [("a", "/a/"), ("b", "/z/b/"), ("c", "/z/b/c/"), ("z", "/z/")] {
        assert!(
            paths.contains(&(id.to_owned(), path.to_owned())),
            "{id} at {path} in {paths:?}"
        );
    }
}

async fn product_writes_check_the_version_and_slugs_and_skus_are_unique(db: Db) {
    let a = category("a", None);
    insert_categories(&db, &[&a]).await;
    let mut tx = db.begin().await.unwrap();
    store::insert_product(&mut tx, &product("p1", "a", 1)).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    let mut duplicate = product("p2", "a", 2);
    duplicate.slug = "slug-p1".to_owned();
    let err = store::insert_product(&mut tx, &duplicate).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err}");
    drop(tx);

    let mut tx = db.begin().await.unwrap();
    let renamed = ProductRow {
        name: "Renamed".to_owned(),
        version: 2,
        ..product("p1", "a", 3)
    };
    assert!(store::update_product(&mut tx, &renamed, 1).await.unwrap());
    assert!(
        !store::update_product(&mut tx, &renamed, 1).await.unwrap(),
        "version 1 is stale now"
    );
    let variant = store::VariantRow {
        id: "v1".to_owned(),
        product_id: "p1".to_owned(),
        sku: "SKU-1".to_owned(),
        options: "{}".to_owned(),
        price: 100,
        compare_at_price: None,
        weight_grams: None,
        position: 0,
        in_stock: 0,
    };
    store::upsert_variant(&mut tx, &variant).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    let err = store::upsert_variant(
        &mut tx,
        &store::VariantRow {
            id: "v2".to_owned(),
            ..variant.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(is_unique_violation(&err), "one SKU, one variant: {err}");
    drop(tx);

    // A stock signal flips the variant and the product.
    let mut tx = db.begin().await.unwrap();
    assert_eq!(
        store::set_variant_stock(&mut tx, "SKU-1", true, 4)
            .await
            .unwrap()
            .as_deref(),
        Some("p1")
    );
    assert_eq!(
        store::set_variant_stock(&mut tx, "SKU-1", true, 5).await.unwrap(),
        None,
        "no change"
    );
    tx.commit().await.unwrap();
    let row = store::product(db.reader(), "slug-p1").await.unwrap().unwrap();
    assert_eq!((row.name.as_str(), row.in_stock, row.seq), ("Renamed", 1, 4));
}

async fn changes_are_read_in_sequence_even_when_one_seq_spans_pages(db: Db) {
    let a = category("a", None);
    insert_categories(&db, &[&a]).await;
    let mut tx = db.begin().await.unwrap();
    for i in 0..7 {
        let seq = store::next_seq(&mut tx).await.unwrap();
        store::insert_product(&mut tx, &product(&format!("p{i}"), "a", seq))
            .await
            .unwrap();
    }
    // One change stamps the whole subtree with one seq.
    let seq = store::next_seq(&mut tx).await.unwrap();
    store::touch_subtree(&mut tx, &a.path, seq).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store::current_seq(db.reader()).await.unwrap(), 8);

    let mut seen = Vec::new();
    let mut cursor = (0, "~".to_owned());
    loop {
        let rows = store::changed_after(db.reader(), cursor.0, &cursor.1, 3).await.unwrap();
        let Some(last) = rows.last() else { break };
        cursor = (last.seq, last.id.clone());
        seen.extend(rows.iter().map(|r| (r.seq, r.id.clone())));
    }
    let expected: Vec<(i64, String)> = (0..7).map(|i| (8, format!("p{i}"))).collect();
    assert_eq!(seen, expected, "every row of the shared seq, once, in id order");
}

async fn approved_ratings_accumulate_on_the_product(db: Db) {
    let a = category("a", None);
    insert_categories(&db, &[&a]).await;
    let mut tx = db.begin().await.unwrap();
    store::insert_product(&mut tx, &product("p1", "a", 1)).await.unwrap();
    store::set_rating(&mut tx, "p1", 5, 1, 2).await.unwrap();
    store::set_rating(&mut tx, "p1", 4, 1, 3).await.unwrap();
    store::set_rating(&mut tx, "p1", 4, 1, 4).await.unwrap();
    tx.commit().await.unwrap();
    let row = store::product(db.reader(), "slug-p1").await.unwrap().unwrap();
    assert_eq!(
        (row.rating_sum, row.rating_count, row.rating_x100, row.seq),
        (13, 3, 433, 4)
    );
}

async fn wishlists_page_newest_first_without_repeats(db: Db) {
    let a = category("a", None);
    insert_categories(&db, &[&a]).await;
    let mut tx = db.begin().await.unwrap();
    for i in 0..5 {
        store::insert_product(&mut tx, &product(&format!("p{i}"), "a", 1))
            .await
            .unwrap();
        // Two items share a timestamp: the product id breaks the tie.
        let at = if i == 3 { 2 } else { i };
        assert!(store::add_to_wishlist(&mut tx, "u1", &format!("p{i}"), at)
            .await
            .unwrap());
    }
    assert!(
        !store::add_to_wishlist(&mut tx, "u1", "p0", 99).await.unwrap(),
        "already there"
    );
    tx.commit().await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let rows = store::wishlist(db.reader(), "u1", after.clone(), 2).await.unwrap();
        if rows.is_empty() {
            break;
        }
        after = rows.last().map(|(at, p)| (*at, p.id.clone()));
        seen.extend(rows.into_iter().map(|(_, p)| p.id));
    }
    assert_eq!(seen, ["p4", "p3", "p2", "p1", "p0"]);
    assert_eq!(store::remove_from_wishlist(db.writer(), "u1", None).await.unwrap(), 5);
}

async fn an_index_ahead_of_the_database_is_rebuilt(db: Db) {
    let a = category("a", None);
    insert_categories(&db, &[&a]).await;
    let mut tx = db.begin().await.unwrap();
    let seq = store::next_seq(&mut tx).await.unwrap();
    store::insert_product(&mut tx, &product("p1", "a", seq)).await.unwrap();
    tx.commit().await.unwrap();
    // An index written for another (or a restored) database, far ahead of this one.
    let index = Arc::new(SearchIndex::in_memory().unwrap());
    let ghost = search::SearchDoc {
        id: "ghost".to_owned(),
        name: "Ghost".to_owned(),
        brand: String::new(),
        category_names: vec![],
        category_ids: vec![],
        description: String::new(),
        skus: vec![],
        price_min: 1,
        price_max: 1,
        rating_x100: 0,
        rating_count: 0,
        in_stock: true,
        created_at: 0,
    };
    index.apply(&[ghost], &[], 99).unwrap();
    let indexer = Indexer::new(
        db.clone(),
        index.clone(),
        Arc::new(MemoryCache::new(Duration::from_secs(1), 1 << 20)),
    );
    indexer.catch_up().await.unwrap();
    assert_eq!((index.num_docs(), index.indexed_seq()), (1, 1));
    let everything = SearchQuery {
        limit: 10,
        ..SearchQuery::default()
    };
    assert_eq!(index.search(&everything).unwrap().hits[0].id, "p1");
}

/// One randomly drawn list request.
#[derive(Debug, Clone)]
/// Bounds are indexes into the seeded products' own values, so the edges (`>=`, `<=`) are hit.
struct Case {
    category: Option<usize>,
    brands: Vec<usize>,
    price_min: Option<usize>,
    price_max: Option<usize>,
    min_rating_x100: Option<usize>,
    in_stock: Option<bool>,
    order: usize,
    page: i64,
}

fn cases(categories: usize, brands: usize, products: usize) -> impl Strategy<Value = Case> {
    (
        proptest::option::of(0..categories),
        proptest::collection::vec(0..brands, 0..3),
        proptest::option::of(0..products),
        proptest::option::of(0..products),
        proptest::option::of(0..products),
        proptest::option::of(any::<bool>()),
        0usize..4,
        1i64..40,
    )
        .prop_map(
            |(category, brands, price_min, price_max, min_rating_x100, in_stock, order, page)| Case {
                category,
                brands,
                price_min,
                price_max,
                min_rating_x100,
                in_stock,
                order,
                page,
            },
        )
}

const ORDERS: [ListOrder; 4] = [
    ListOrder::NewestFirst,
    ListOrder::PriceAscending,
    ListOrder::PriceDescending,
    ListOrder::RatingDescending,
];

/// The rows a filter keeps, in the order a list returns them: by key, then id.
fn brute_force(rows: &[ProductRow], categories: &[CategoryRow], filter: &ListFilter, order: ListOrder) -> Vec<String> {
    let mut kept: Vec<&ProductRow> = rows
        .iter()
        .filter(|r| r.status == "active" && r.deleted_at.is_none())
        .filter(|r| {
            filter.category_path.as_ref().is_none_or(|path| {
                categories
                    .iter()
                    .any(|c| c.id == r.category_id && c.path.starts_with(path.as_str()))
            })
        })
        .filter(|r| filter.brand_keys.is_empty() || filter.brand_keys.contains(&r.brand_key))
        .filter(|r| filter.price_min.is_none_or(|min| r.price_min >= min))
        .filter(|r| filter.price_max.is_none_or(|max| r.price_min <= max))
        .filter(|r| filter.min_rating_x100.is_none_or(|min| r.rating_x100 >= min))
        .filter(|r| filter.in_stock.is_none_or(|s| (r.in_stock != 0) == s))
        .collect();
    kept.sort_by(|a, b| {
        let by_key = (order.key_of(a), &a.id).cmp(&(order.key_of(b), &b.id));
        if order == ListOrder::PriceAscending {
            by_key
        } else {
            by_key.reverse()
        }
    });
    kept.into_iter().map(|r| r.id.clone()).collect()
}

async fn list_filters_and_the_index_agree_with_a_brute_force_filter(db: Db) {
    catalog::seed::seed(&db, 400, 0).await.expect("seeded");
    // Some variety in the stock flags (seeded products are all in stock).
    sqlx::query("UPDATE products SET in_stock = 0 WHERE price_min < 5000")
        .execute(db.writer())
        .await
        .unwrap();
    sqlx::query("UPDATE products SET status = 'draft' WHERE rating_count = 0")
        .execute(db.writer())
        .await
        .unwrap();
    let rows = store::changed_after(db.reader(), -1, "", 10_000).await.unwrap();
    assert_eq!(rows.len(), 400);
    let categories = store::all_categories(db.reader()).await.unwrap();
    let mut brands: Vec<String> = rows.iter().map(|r| r.brand_key.clone()).collect();
    brands.sort();
    brands.dedup();

    let index = Arc::new(SearchIndex::in_memory().unwrap());
    let indexer = Indexer::new(
        db.clone(),
        index.clone(),
        Arc::new(MemoryCache::new(Duration::from_secs(1), 1 << 20)),
    );
    indexer.catch_up().await.unwrap();
    assert!(index.num_docs() > 0 && index.num_docs() < 400, "drafts are not indexed");

    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&cases(categories.len(), brands.len(), rows.len()), |case| {
        let filter = ListFilter {
            category_path: case.category.map(|i| categories[i].path.clone()),
            brand_keys: case.brands.iter().map(|&i| brands[i].clone()).collect(),
            price_min: case.price_min.map(|i| rows[i].price_min),
            price_max: case.price_max.map(|i| rows[i].price_min),
            min_rating_x100: case.min_rating_x100.map(|i| rows[i].rating_x100),
            in_stock: case.in_stock,
            seller_id: None,
            all_statuses: false,
        };
        let order = ORDERS[case.order];
        let expected = brute_force(&rows, &categories, &filter, order);

        // The list, page by page.
        let listed = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let mut listed = Vec::new();
                let mut after = None;
                loop {
                    let page = store::list_products(db.reader(), &filter, order, after.clone(), case.page)
                        .await
                        .unwrap();
                    after = page.last().map(|r| (order.key_of(r), r.id.clone()));
                    let done = (page.len() as i64) < case.page;
                    listed.extend(page.into_iter().map(|r| r.id));
                    if done {
                        break;
                    }
                }
                listed
            })
        });
        prop_assert_eq!(&listed, &expected, "list for {:?}", case);

        // The index, with the same filters and no text: the same products, in key order.
        let query = SearchQuery {
            text: String::new(),
            filters: search::Filters {
                category_id: case.category.map(|i| categories[i].id.clone()),
                brands: filter.brand_keys.clone(),
                price_min: filter.price_min,
                price_max: filter.price_max,
                min_rating_x100: filter.min_rating_x100,
                in_stock: filter.in_stock,
            },
            sort: [
                search::Sort::Newest,
                search::Sort::PriceAsc,
                search::Sort::PriceDesc,
                search::Sort::Rating,
            ][case.order],
            offset: 0,
            limit: 500,
            with_facets: true,
        };
        let found = index.search(&query).unwrap();
        prop_assert_eq!(found.total, expected.len());
        let keys = |ids: &[String]| -> Vec<i64> {
            ids.iter()
                .map(|id| order.key_of(rows.iter().find(|r| &r.id == id).unwrap()))
                .collect()
        };
        let found_ids: Vec<String> = found.hits.iter().map(|h| h.id.clone()).collect();
        let mut sorted_found = found_ids.clone();
        sorted_found.sort();
        let mut sorted_expected = expected.clone();
        sorted_expected.sort();
        prop_assert_eq!(sorted_found, sorted_expected, "index for {:?}", case);
        prop_assert_eq!(keys(&found_ids), keys(&expected), "index order for {:?}", case);
        // Brand facet counts add up to the matches (every product has one brand).
        let facets = found.facets.unwrap();
        prop_assert_eq!(facets.brands.iter().map(|(_, n)| n).sum::<u64>(), expected.len() as u64);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
