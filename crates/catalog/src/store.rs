//! The catalog's tables and the queries on them. One SQL text serves SQLite and PostgreSQL.
//!
//! Every write that changes what a shopper or the search index sees stamps the product with the
//! next value of the `product_seq` counter, in the same transaction. The counter's row lock
//! orders those stamps by commit, so "everything with `seq` above what the index holds" is
//! exactly what the index is missing.

use platform::store::{Conditions, Migration, SqlValue, Tx};
use sqlx::{AnyPool, FromRow};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "categories, products, variants, reviews, wishlists, verified purchases",
    sql: "CREATE TABLE categories (
            id TEXT PRIMARY KEY,
            parent_id TEXT REFERENCES categories (id),
            name TEXT NOT NULL,
            slug TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL UNIQUE,
            position BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            version BIGINT NOT NULL);
          CREATE INDEX categories_parent ON categories (parent_id);
          CREATE TABLE products (
            id TEXT PRIMARY KEY,
            slug TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            description TEXT NOT NULL,
            brand TEXT NOT NULL,
            brand_key TEXT NOT NULL,
            category_id TEXT NOT NULL REFERENCES categories (id),
            seller_id TEXT NOT NULL,
            status TEXT NOT NULL,
            attributes TEXT NOT NULL,
            images TEXT NOT NULL,
            price_min BIGINT NOT NULL,
            price_max BIGINT NOT NULL,
            rating_sum BIGINT NOT NULL,
            rating_count BIGINT NOT NULL,
            rating_x100 BIGINT NOT NULL,
            in_stock BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            deleted_at BIGINT,
            version BIGINT NOT NULL);
          CREATE INDEX products_newest ON products (status, created_at, id);
          CREATE INDEX products_price ON products (status, price_min, id);
          CREATE INDEX products_rating ON products (status, rating_x100, id);
          CREATE INDEX products_category ON products (category_id);
          CREATE INDEX products_brand ON products (brand_key);
          CREATE INDEX products_seller ON products (seller_id, created_at);
          CREATE INDEX products_seq ON products (seq, id);
          CREATE TABLE variants (
            id TEXT PRIMARY KEY,
            product_id TEXT NOT NULL REFERENCES products (id),
            sku TEXT NOT NULL UNIQUE,
            options TEXT NOT NULL,
            price BIGINT NOT NULL,
            compare_at_price BIGINT,
            weight_grams BIGINT,
            position BIGINT NOT NULL,
            in_stock BIGINT NOT NULL);
          CREATE INDEX variants_product ON variants (product_id, position);
          CREATE TABLE reviews (
            id TEXT PRIMARY KEY,
            product_id TEXT NOT NULL REFERENCES products (id),
            user_id TEXT NOT NULL,
            author_name TEXT NOT NULL,
            rating BIGINT NOT NULL,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            status TEXT NOT NULL,
            verified_buyer BIGINT NOT NULL,
            moderation_note TEXT,
            moderated_by TEXT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            UNIQUE (product_id, user_id));
          CREATE INDEX reviews_product ON reviews (product_id, status, id);
          CREATE INDEX reviews_status ON reviews (status, id);
          CREATE INDEX reviews_user ON reviews (user_id, id);
          CREATE TABLE wishlist_items (
            user_id TEXT NOT NULL,
            product_id TEXT NOT NULL REFERENCES products (id),
            created_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, product_id));
          CREATE INDEX wishlist_items_newest ON wishlist_items (user_id, created_at);
          CREATE TABLE verified_purchases (
            user_id TEXT NOT NULL,
            product_id TEXT NOT NULL,
            order_id TEXT NOT NULL,
            delivered_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, product_id));
          CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL);
          INSERT INTO counters (name, value) VALUES ('product_seq', 0)",
    postgres: None,
}];

/// Which column an id-or-slug key names: ids are UUIDs, and a slug can never look like one.
fn key_column(id_or_slug: &str) -> &'static str {
    if uuid::Uuid::try_parse(id_or_slug).is_ok() {
        "id"
    } else {
        "slug"
    }
}

/// `$1, $2, …` for `n` values.
fn placeholders(n: usize) -> String {
    platform::store::placeholders(1, n)
}

// ----- categories ---------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct CategoryRow {
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub slug: String,
    pub path: String,
    pub position: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

const CATEGORY_COLUMNS: &str = "id, parent_id, name, slug, path, position, created_at, updated_at, version";

pub async fn insert_category(tx: &mut Tx, c: &CategoryRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO categories ({CATEGORY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(&c.id)
    .bind(&c.parent_id)
    .bind(&c.name)
    .bind(&c.slug)
    .bind(&c.path)
    .bind(c.position)
    .bind(c.created_at)
    .bind(c.updated_at)
    .bind(c.version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn all_categories(pool: &AnyPool) -> Result<Vec<CategoryRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CATEGORY_COLUMNS} FROM categories ORDER BY position, name, id"
    ))
    .fetch_all(pool)
    .await
}

pub async fn category<'e, E>(executor: E, id_or_slug: &str) -> Result<Option<CategoryRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let column = key_column(id_or_slug);
    sqlx::query_as(&format!(
        "SELECT {CATEGORY_COLUMNS} FROM categories WHERE {column} = $1"
    ))
    .bind(id_or_slug)
    .fetch_optional(executor)
    .await
}

/// Writes name, slug, parent, path and position when the version matches; answers whether it did.
pub async fn update_category(tx: &mut Tx, c: &CategoryRow, expected_version: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE categories SET parent_id = $1, name = $2, slug = $3, path = $4, position = $5, updated_at = $6,
                version = version + 1
         WHERE id = $7 AND version = $8",
    )
    .bind(&c.parent_id)
    .bind(&c.name)
    .bind(&c.slug)
    .bind(&c.path)
    .bind(c.position)
    .bind(c.updated_at)
    .bind(&c.id)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Rewrites the paths of every category strictly below `old_path` to hang under `new_path`.
pub async fn move_descendants(tx: &mut Tx, old_path: &str, new_path: &str) -> Result<(), sqlx::Error> {
    let keep_from = i64::try_from(old_path.len()).unwrap_or(i64::MAX) + 1;
    sqlx::query(
        "UPDATE categories SET path = $1 || substr(path, CAST($2 AS INTEGER))
         WHERE path LIKE $3 AND path <> $4",
    )
    .bind(new_path)
    .bind(keep_from)
    .bind(format!("{old_path}%"))
    .bind(old_path)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn count_children(tx: &mut Tx, id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM categories WHERE parent_id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await
}

/// Products (not deleted) directly in the category.
pub async fn count_products_in(tx: &mut Tx, category_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM products WHERE category_id = $1 AND deleted_at IS NULL")
        .bind(category_id)
        .fetch_one(&mut **tx)
        .await
}

pub async fn delete_category(tx: &mut Tx, id: &str, expected_version: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM categories WHERE id = $1 AND version = $2")
        .bind(id)
        .bind(expected_version)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves every product (deleted ones too, which keep a valid reference) of one category to another.
pub async fn reassign_products(tx: &mut Tx, from: &str, to: &str, seq: i64, now: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE products SET category_id = $1, seq = $2, updated_at = $3, version = version + 1
         WHERE category_id = $4",
    )
    .bind(to)
    .bind(seq)
    .bind(now)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Stamps every product in a subtree (its category path starts with `path`) with `seq`, so the
/// index picks up a renamed or moved category.
pub async fn touch_subtree(tx: &mut Tx, path: &str, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE products SET seq = $1 WHERE category_id IN (SELECT id FROM categories WHERE path LIKE $2)")
        .bind(seq)
        .bind(format!("{path}%"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ----- the change counter -------------------------------------------------------------------

/// The next change sequence number. Holds the counter's row lock until the transaction ends.
pub async fn next_seq(tx: &mut Tx) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = 'product_seq' RETURNING value")
        .fetch_one(&mut **tx)
        .await
}

pub async fn current_seq(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM counters WHERE name = 'product_seq'")
        .fetch_one(pool)
        .await
}

// ----- products -----------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct ProductRow {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub brand_key: String,
    pub category_id: String,
    pub seller_id: String,
    pub status: String,
    /// JSON array of `{name, value}`.
    pub attributes: String,
    /// JSON array of `{url, alt}`.
    pub images: String,
    pub price_min: i64,
    pub price_max: i64,
    pub rating_sum: i64,
    pub rating_count: i64,
    pub rating_x100: i64,
    pub in_stock: i64,
    pub seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    pub version: i64,
}

const PRODUCT_COLUMNS: &str = "id, slug, name, description, brand, brand_key, category_id, seller_id, status, \
     attributes, images, price_min, price_max, rating_sum, rating_count, rating_x100, in_stock, seq, created_at, \
     updated_at, deleted_at, version";

pub async fn insert_product(tx: &mut Tx, p: &ProductRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO products ({PRODUCT_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
    ))
    .bind(&p.id)
    .bind(&p.slug)
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.brand)
    .bind(&p.brand_key)
    .bind(&p.category_id)
    .bind(&p.seller_id)
    .bind(&p.status)
    .bind(&p.attributes)
    .bind(&p.images)
    .bind(p.price_min)
    .bind(p.price_max)
    .bind(p.rating_sum)
    .bind(p.rating_count)
    .bind(p.rating_x100)
    .bind(p.in_stock)
    .bind(p.seq)
    .bind(p.created_at)
    .bind(p.updated_at)
    .bind(p.deleted_at)
    .bind(p.version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the editable fields when the version matches; answers whether it did.
pub async fn update_product(tx: &mut Tx, p: &ProductRow, expected_version: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE products SET slug = $1, name = $2, description = $3, brand = $4, brand_key = $5, category_id = $6,
                status = $7, attributes = $8, images = $9, price_min = $10, price_max = $11,
                in_stock = COALESCE((SELECT MAX(in_stock) FROM variants WHERE product_id = $17), $12),
                seq = $13, updated_at = $14, deleted_at = $15, version = $16
         WHERE id = $17 AND version = $18 AND deleted_at IS NULL",
    )
    .bind(&p.slug)
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.brand)
    .bind(&p.brand_key)
    .bind(&p.category_id)
    .bind(&p.status)
    .bind(&p.attributes)
    .bind(&p.images)
    .bind(p.price_min)
    .bind(p.price_max)
    .bind(p.in_stock)
    .bind(p.seq)
    .bind(p.updated_at)
    .bind(p.deleted_at)
    .bind(p.version)
    .bind(&p.id)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A product that is not deleted, by id or slug.
pub async fn product<'e, E>(executor: E, id_or_slug: &str) -> Result<Option<ProductRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let column = key_column(id_or_slug);
    sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE {column} = $1 AND deleted_at IS NULL"
    ))
    .bind(id_or_slug)
    .fetch_optional(executor)
    .await
}

/// Products changed after `(seq, id)` (deleted and hidden ones too), in (seq, id) order. An
/// empty `id` means after every row of `seq`.
pub async fn changed_after(pool: &AnyPool, seq: i64, id: &str, limit: i64) -> Result<Vec<ProductRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE seq >= $1 AND (seq > $1 OR ($2 <> '' AND id > $2))
         ORDER BY seq, id LIMIT $3"
    ))
    .bind(seq)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn set_rating(tx: &mut Tx, id: &str, delta_sum: i64, delta_count: i64, seq: i64) -> Result<(), sqlx::Error> {
    let (sum, count): (i64, i64) = sqlx::query_as(
        "UPDATE products SET rating_sum = rating_sum + $1, rating_count = rating_count + $2, seq = $3
         WHERE id = $4 RETURNING rating_sum, rating_count",
    )
    .bind(delta_sum)
    .bind(delta_count)
    .bind(seq)
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("UPDATE products SET rating_x100 = $1 WHERE id = $2")
        .bind(crate::domain::rating_x100(sum, count))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks one variant in or out of stock and recomputes the product's flag (any variant in
/// stock). Answers the product id when the SKU is known and something changed.
pub async fn set_variant_stock(
    tx: &mut Tx,
    sku: &str,
    in_stock: bool,
    seq: i64,
) -> Result<Option<String>, sqlx::Error> {
    let product_id: Option<String> =
        sqlx::query_scalar("UPDATE variants SET in_stock = $1 WHERE sku = $2 AND in_stock <> $1 RETURNING product_id")
            .bind(i64::from(in_stock))
            .bind(sku)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(product_id) = &product_id {
        sqlx::query(
            "UPDATE products SET seq = $1,
                    in_stock = (SELECT COALESCE(MAX(in_stock), 0) FROM variants WHERE product_id = $2)
             WHERE id = $2",
        )
        .bind(seq)
        .bind(product_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(product_id)
}

// ----- variants -----------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct VariantRow {
    pub id: String,
    pub product_id: String,
    pub sku: String,
    /// JSON object of option name → value.
    pub options: String,
    pub price: i64,
    pub compare_at_price: Option<i64>,
    pub weight_grams: Option<i64>,
    pub position: i64,
    pub in_stock: i64,
}

const VARIANT_COLUMNS: &str = "id, product_id, sku, options, price, compare_at_price, weight_grams, position, in_stock";

pub async fn variants_of<'e, E>(executor: E, product_id: &str) -> Result<Vec<VariantRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!(
        "SELECT {VARIANT_COLUMNS} FROM variants WHERE product_id = $1 ORDER BY position"
    ))
    .bind(product_id)
    .fetch_all(executor)
    .await
}

/// The variants of many products at once, grouped by the caller.
pub async fn variants_of_many(pool: &AnyPool, product_ids: &[String]) -> Result<Vec<VariantRow>, sqlx::Error> {
    if product_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {VARIANT_COLUMNS} FROM variants WHERE product_id IN ({}) ORDER BY product_id, position",
        placeholders(product_ids.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in product_ids {
        query = query.bind(id);
    }
    query.fetch_all(pool).await
}

pub async fn delete_variant(tx: &mut Tx, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM variants WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn upsert_variant(tx: &mut Tx, v: &VariantRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO variants ({VARIANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET options = $4, price = $5, compare_at_price = $6, weight_grams = $7,
             position = $8"
    ))
    .bind(&v.id)
    .bind(&v.product_id)
    .bind(&v.sku)
    .bind(&v.options)
    .bind(v.price)
    .bind(v.compare_at_price)
    .bind(v.weight_grams)
    .bind(v.position)
    .bind(v.in_stock)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

// ----- product lists ------------------------------------------------------------------------

/// What a product list is narrowed to. `category_path` is the materialized path of the chosen
/// category (its descendants share the prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub category_path: Option<String>,
    pub brand_keys: Vec<String>,
    pub price_min: Option<i64>,
    pub price_max: Option<i64>,
    pub min_rating_x100: Option<i64>,
    pub in_stock: Option<bool>,
    /// `None`: active products only (the storefront). `Some`: this seller's products, any status.
    pub seller_id: Option<String>,
    /// With `seller_id` absent and this set: every product of every status (admins).
    pub all_statuses: bool,
}

/// The key a list is ordered by, and which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder {
    NewestFirst,
    PriceAscending,
    PriceDescending,
    RatingDescending,
}

impl ListOrder {
    fn column(self) -> &'static str {
        match self {
            Self::NewestFirst => "created_at",
            Self::PriceAscending | Self::PriceDescending => "price_min",
            Self::RatingDescending => "rating_x100",
        }
    }

    fn descending(self) -> bool {
        !matches!(self, Self::PriceAscending)
    }

    /// The sort key of a row, for its cursor.
    pub fn key_of(self, row: &ProductRow) -> i64 {
        match self {
            Self::NewestFirst => row.created_at,
            Self::PriceAscending | Self::PriceDescending => row.price_min,
            Self::RatingDescending => row.rating_x100,
        }
    }
}

/// One page of products in `order`, after the row with sort key `after = (key, id)`.
pub async fn list_products(
    pool: &AnyPool,
    filter: &ListFilter,
    order: ListOrder,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<ProductRow>, sqlx::Error> {
    let mut c = Conditions::default();
    c.add("deleted_at IS NULL");
    match (&filter.seller_id, filter.all_statuses) {
        (Some(seller), _) => {
            c.push("seller_id = ?", SqlValue::Text(seller.clone()));
        }
        (None, true) => {}
        (None, false) => c.add("status = 'active'"),
    }
    if let Some(path) = &filter.category_path {
        c.push(
            "category_id IN (SELECT id FROM categories WHERE path LIKE ?)",
            SqlValue::Text(format!("{path}%")),
        );
    }
    c.push_in("brand_key", filter.brand_keys.iter().map(|b| SqlValue::Text(b.clone())));
    if let Some(min) = filter.price_min {
        c.push("price_min >= ?", SqlValue::Int(min));
    }
    if let Some(max) = filter.price_max {
        c.push("price_min <= ?", SqlValue::Int(max));
    }
    if let Some(min) = filter.min_rating_x100 {
        c.push("rating_x100 >= ?", SqlValue::Int(min));
    }
    if let Some(in_stock) = filter.in_stock {
        c.push("in_stock = ?", SqlValue::Int(i64::from(in_stock)));
    }
    let column = order.column();
    let (cmp, dir) = if order.descending() {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((key, id)) = after {
        let k = c.bind(SqlValue::Int(key));
        let i = c.bind(SqlValue::Text(id));
        c.add(format!("({column} {cmp} {k} OR ({column} = {k} AND id {cmp} {i}))"));
    }
    let l = c.bind(SqlValue::Int(limit));
    let sql = format!(
        "SELECT {PRODUCT_COLUMNS} FROM products {} ORDER BY {column} {dir}, id {dir} LIMIT {l}",
        c.where_sql()
    );
    sqlx::query_as_with(&sql, c.into_arguments()).fetch_all(pool).await
}

// ----- reviews ------------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct ReviewRow {
    pub id: String,
    pub product_id: String,
    pub user_id: String,
    pub author_name: String,
    pub rating: i64,
    pub title: String,
    pub body: String,
    pub status: String,
    pub verified_buyer: i64,
    pub moderation_note: Option<String>,
    pub moderated_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const REVIEW_COLUMNS: &str = "id, product_id, user_id, author_name, rating, title, body, status, verified_buyer, \
     moderation_note, moderated_by, created_at, updated_at";

pub async fn insert_review(tx: &mut Tx, r: &ReviewRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO reviews ({REVIEW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
             (SELECT COUNT(*) FROM verified_purchases WHERE user_id = $3 AND product_id = $2), $9, $10, $11, $12)"
    ))
    .bind(&r.id)
    .bind(&r.product_id)
    .bind(&r.user_id)
    .bind(&r.author_name)
    .bind(r.rating)
    .bind(&r.title)
    .bind(&r.body)
    .bind(&r.status)
    .bind(&r.moderation_note)
    .bind(&r.moderated_by)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn review<'e, E>(executor: E, id: &str) -> Result<Option<ReviewRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Reviews newest first, after the cursor id, narrowed by product, status and author.
pub async fn list_reviews(
    pool: &AnyPool,
    product_id: Option<&str>,
    status: Option<&str>,
    user_id: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ReviewRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REVIEW_COLUMNS} FROM reviews
         WHERE ($1 IS NULL OR product_id = $1) AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR user_id = $3)
           AND ($4 IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(product_id)
    .bind(status)
    .bind(user_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Sets a review's status if it is still `expected`; answers whether it did.
pub async fn moderate_review(
    tx: &mut Tx,
    id: &str,
    expected: &str,
    status: &str,
    note: Option<&str>,
    moderator: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE reviews SET status = $1, moderation_note = $2, moderated_by = $3, updated_at = $4
         WHERE id = $5 AND status = $6",
    )
    .bind(status)
    .bind(note)
    .bind(moderator)
    .bind(now)
    .bind(id)
    .bind(expected)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a review; answers its status and rating as they were, or `None` if it was gone.
pub async fn delete_review(tx: &mut Tx, id: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query_as("DELETE FROM reviews WHERE id = $1 RETURNING status, rating")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

/// Records that `user_id` received `product_id`, and flags their review (if any) as verified.
pub async fn record_verified_purchase(
    tx: &mut Tx,
    user_id: &str,
    product_id: &str,
    order_id: &str,
    delivered_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO verified_purchases (user_id, product_id, order_id, delivered_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, product_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(product_id)
    .bind(order_id)
    .bind(delivered_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE reviews SET verified_buyer = 1 WHERE user_id = $1 AND product_id = $2")
        .bind(user_id)
        .bind(product_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ----- wishlists ----------------------------------------------------------------------------

pub async fn add_to_wishlist(tx: &mut Tx, user_id: &str, product_id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO wishlist_items (user_id, product_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, product_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(product_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn in_wishlist(tx: &mut Tx, user_id: &str, product_id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wishlist_items WHERE user_id = $1 AND product_id = $2")
        .bind(user_id)
        .bind(product_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(n > 0)
}

pub async fn count_wishlist(tx: &mut Tx, user_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM wishlist_items WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await
}

pub async fn remove_from_wishlist(pool: &AnyPool, user_id: &str, product_id: Option<&str>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM wishlist_items WHERE user_id = $1 AND ($2 IS NULL OR product_id = $2)")
        .bind(user_id)
        .bind(product_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// (added at, product) of a wishlist, newest first, after the cursor `(created_at, product_id)`.
pub async fn wishlist(
    pool: &AnyPool,
    user_id: &str,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<(i64, ProductRow)>, sqlx::Error> {
    let (after_at, after_id) = after.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    let columns: Vec<String> = PRODUCT_COLUMNS.split(", ").map(|c| format!("p.{}", c.trim())).collect();
    let rows: Vec<WishlistRow> = sqlx::query_as(&format!(
        "SELECT w.created_at AS added_at, {} FROM wishlist_items w JOIN products p ON p.id = w.product_id
         WHERE w.user_id = $1 AND p.deleted_at IS NULL AND ($2 IS NULL OR w.created_at < $2 OR (w.created_at = $2 AND w.product_id < $3))
         ORDER BY w.created_at DESC, w.product_id DESC LIMIT $4",
        columns.join(", ")
    ))
    .bind(user_id)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.added_at, r.product)).collect())
}

#[derive(FromRow)]
struct WishlistRow {
    added_at: i64,
    #[sqlx(flatten)]
    product: ProductRow,
}

/// Products (any state) with the given ids, in no particular order.
pub async fn products_by_ids(pool: &AnyPool, ids: &[String]) -> Result<Vec<ProductRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id IN ({})",
        placeholders(ids.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in ids {
        query = query.bind(id);
    }
    query.fetch_all(pool).await
}

/// A SKU with what a cart shows of its product.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct SkuDetailRow {
    pub sku: String,
    pub product_id: String,
    pub name: String,
    pub slug: String,
    pub seller_id: String,
    pub status: String,
    pub deleted_at: Option<i64>,
    pub images: String,
    pub price: i64,
}

/// The variants with these SKUs and their products (unknown SKUs are left out).
pub async fn sku_details(pool: &AnyPool, skus: &[String]) -> Result<Vec<SkuDetailRow>, sqlx::Error> {
    if skus.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT v.sku, v.product_id, p.name, p.slug, p.seller_id, p.status, p.deleted_at, p.images, v.price
         FROM variants v JOIN products p ON p.id = v.product_id WHERE v.sku IN ({})",
        placeholders(skus.len())
    );
    let mut query = sqlx::query_as(&sql);
    for sku in skus {
        query = query.bind(sku);
    }
    query.fetch_all(pool).await
}
