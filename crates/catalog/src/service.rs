//! The catalog's use cases: categories, products, reviews and wishlists. Each write runs in
//! one transaction with its outbox event and stamps the changed products with the next change
//! number, so the search index and the caches follow (see `indexer.rs`).

use std::sync::Arc;

use platform::auth::{CurrentUser, Role};
use platform::clock::SharedClock;
use platform::error::ApiError;
use platform::events::Event;
use platform::outbox::{self, Outbox};
use platform::page::{Page, PageRequest};
use platform::store::{Db, Tx};
use serde_json::json;
use uuid::Uuid;

use crate::cache::{product_keys, Cache};
use crate::domain::{
    self, category_path, path_ids, CategorySpec, ProductDraft, ProductSpec, ProductStatus, ReviewSpec, ReviewStatus,
    SortOrder,
};
use crate::indexer::Indexer;
use crate::search::{self, SearchIndex, SearchQuery};
use crate::store::{self, CategoryRow, ListFilter, ListOrder, ProductRow, ReviewRow, VariantRow};
use crate::views::{self, CategoryNode, CategoryView, ProductSummary, ProductView, ReviewView, WishlistItem};

pub const SERVICE: &str = "catalog";
/// How many products one wishlist may hold.
pub const WISHLIST_LIMIT: i64 = 500;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The shop currency every price is in (ISO 4217).
    pub currency: String,
}

pub struct Catalog {
    db: Db,
    outbox: Outbox,
    clock: SharedClock,
    cache: Arc<dyn Cache>,
    indexer: Arc<Indexer>,
    settings: Settings,
    /// Every category, with the read cache's generation it was read at: any category change
    /// moves that generation (on every replica, in the distributed mode).
    categories: std::sync::Mutex<Option<(u64, Arc<Vec<CategoryRow>>)>>,
}

/// A partial product edit: absent fields keep their value; `variants`, when present, replaces
/// the set (matched by SKU, so a kept SKU keeps its id).
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
    pub brand: Option<String>,
    pub category_id: Option<Uuid>,
    pub status: Option<ProductStatus>,
    pub attributes: Option<Vec<domain::Attribute>>,
    pub images: Option<Vec<domain::Image>>,
    pub variants: Option<Vec<domain::VariantInput>>,
}

/// A partial category edit. `parent_id: Some(None)` moves the category to the top level.
#[derive(Debug, Clone, Default)]
pub struct CategoryPatch {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub parent_id: Option<Option<Uuid>>,
    pub position: Option<i64>,
}

/// A product list request after parsing.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// A category id or slug; includes its descendants.
    pub category: Option<String>,
    pub brands: Vec<String>,
    pub price_min: Option<i64>,
    pub price_max: Option<i64>,
    pub min_rating_x100: Option<i64>,
    pub in_stock: Option<bool>,
    pub sort: SortOrder,
}

/// A SKU as other services see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkuDetails {
    pub sku: String,
    pub product_id: String,
    pub name: String,
    pub slug: String,
    /// The seller's user id.
    pub seller_id: String,
    pub image: Option<String>,
    pub price: i64,
    pub currency: String,
    /// The product is active and not deleted.
    pub on_sale: bool,
}

/// The read cache's key of a SKU's details (in the part any product change clears).
fn sku_key(sku: &str) -> String {
    format!("sku:{sku}")
}

/// A foreign key that no longer holds: the category went away during the request.
fn missing_category(err: sqlx::Error, field: &str) -> ApiError {
    if err.as_database_error().is_some_and(|e| e.is_foreign_key_violation()) {
        ApiError::validation(field, "is not a category")
    } else {
        ApiError::conflict_on_unique(err, "this slug is already taken")
    }
}

fn stale(what: &str) -> ApiError {
    ApiError::Conflict(format!(
        "the {what} was changed by someone else (stale version); reload it and try again"
    ))
}

impl Catalog {
    pub fn new(db: Db, clock: SharedClock, cache: Arc<dyn Cache>, index: Arc<SearchIndex>, settings: Settings) -> Self {
        let indexer = Arc::new(Indexer::new(db.clone(), index, cache.clone()));
        Self {
            outbox: Outbox::new(db.clone()),
            db,
            clock,
            cache,
            indexer,
            settings,
            categories: std::sync::Mutex::new(None),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn cache(&self) -> &Arc<dyn Cache> {
        &self.cache
    }

    pub fn indexer(&self) -> &Arc<Indexer> {
        &self.indexer
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Commits, then lets the index, the caches and the relay know at once.
    async fn commit(&self, tx: Tx, changed: &[String]) -> Result<(), ApiError> {
        tx.commit().await?;
        self.outbox.wake();
        if !changed.is_empty() {
            self.cache.invalidate(changed).await;
        }
        self.indexer.wake();
        Ok(())
    }

    async fn enqueue(
        tx: &mut Tx,
        kind: &str,
        subject: &str,
        data: serde_json::Value,
        correlation: Option<&str>,
    ) -> Result<(), ApiError> {
        outbox::enqueue(tx, &Event::new(SERVICE, kind, subject, data, correlation)).await?;
        Ok(())
    }

    // ----- categories -------------------------------------------------------------------------

    /// Every category, from memory unless the read cache's generation moved since they were read
    /// (searches name the categories of their facets on every request).
    pub async fn all_categories(&self) -> Result<Arc<Vec<CategoryRow>>, ApiError> {
        let generation = self.cache.generation().await;
        let lock = || self.categories.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((seen, categories)) = lock().as_ref() {
            if *seen == generation {
                return Ok(Arc::clone(categories));
            }
        }
        // Read after the generation: a change committed meanwhile moves it past `generation`.
        let categories = Arc::new(store::all_categories(self.db.reader()).await?);
        *lock() = Some((generation, Arc::clone(&categories)));
        Ok(categories)
    }

    pub async fn category_tree(&self) -> Result<Vec<CategoryNode>, ApiError> {
        Ok(views::tree(&self.all_categories().await?))
    }

    /// The category and its ancestors, root first.
    async fn category_path(&self, row: &CategoryRow) -> Result<Vec<CategoryRow>, ApiError> {
        let mut path = Vec::new();
        for id in path_ids(&row.path) {
            if id == row.id {
                path.push(row.clone());
            } else if let Some(ancestor) = store::category(self.db.reader(), &id).await? {
                path.push(ancestor);
            }
        }
        Ok(path)
    }

    pub async fn category(&self, id_or_slug: &str) -> Result<CategoryView, ApiError> {
        let row = store::category(self.db.reader(), id_or_slug)
            .await?
            .ok_or_else(|| ApiError::not_found("category"))?;
        let path = self.category_path(&row).await?;
        Ok(views::category(&row, &path))
    }

    pub async fn create_category(
        &self,
        name: &str,
        slug: Option<&str>,
        parent_id: Option<Uuid>,
        position: i64,
    ) -> Result<CategoryView, ApiError> {
        let spec = CategorySpec::parse(name, slug, parent_id, position).map_err(ApiError::Validation)?;
        let mut tx = self.db.begin().await?;
        // Category writes take the change counter's lock first: one at a time, so a move cannot
        // race another move (a cycle) or a child's creation (a stale path).
        store::next_seq(&mut tx).await?;
        let parent = match spec.parent_id {
            Some(parent) => Some(
                store::category(&mut *tx, &parent.to_string())
                    .await?
                    .ok_or_else(|| ApiError::validation("parent_id", "is not a category"))?,
            ),
            None => None,
        };
        let id = platform::id::new_id().to_string();
        let now = self.now();
        let row = CategoryRow {
            path: category_path(parent.as_ref().map(|p| p.path.as_str()), &id),
            id,
            parent_id: parent.map(|p| p.id),
            name: spec.name,
            slug: spec.slug.into_string(),
            position: spec.position,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        store::insert_category(&mut tx, &row)
            .await
            .map_err(|err| missing_category(err, "parent_id"))?;
        self.commit(tx, &[]).await?;
        self.cache.invalidate_all().await;
        self.category(&row.id).await
    }

    pub async fn update_category(
        &self,
        id: Uuid,
        patch: CategoryPatch,
        version: i64,
    ) -> Result<CategoryView, ApiError> {
        let mut tx = self.db.begin().await?;
        let seq = store::next_seq(&mut tx).await?;
        let current = store::category(&mut *tx, &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("category"))?;
        if current.version != version {
            return Err(stale("category"));
        }
        let parent_id = match patch.parent_id {
            Some(parent) => parent,
            None => current.parent_id.as_deref().and_then(platform::id::parse_id),
        };
        let slug = patch.slug.as_deref().unwrap_or(&current.slug);
        let spec = CategorySpec::parse(
            patch.name.as_deref().unwrap_or(&current.name),
            Some(slug),
            parent_id,
            patch.position.unwrap_or(current.position),
        )
        .map_err(ApiError::Validation)?;
        let parent = match spec.parent_id {
            Some(parent) => {
                let parent = store::category(&mut *tx, &parent.to_string())
                    .await?
                    .ok_or_else(|| ApiError::validation("parent_id", "is not a category"))?;
                if parent.path.starts_with(&current.path) {
                    return Err(ApiError::Conflict(
                        "a category cannot move below itself or one of its descendants".to_owned(),
                    ));
                }
                Some(parent)
            }
            None => None,
        };
        let path = category_path(parent.as_ref().map(|p| p.path.as_str()), &current.id);
        let row = CategoryRow {
            parent_id: parent.map(|p| p.id),
            name: spec.name,
            slug: spec.slug.into_string(),
            path,
            position: spec.position,
            updated_at: self.now(),
            ..current.clone()
        };
        let moved = row.path != current.path;
        if moved {
            store::move_descendants(&mut tx, &current.path, &row.path).await?;
        }
        if !store::update_category(&mut tx, &row, version)
            .await
            .map_err(|err| ApiError::conflict_on_unique(err, "this category slug is already taken"))?
        {
            return Err(stale("category"));
        }
        // Names and paths are in the search documents of every product below.
        if moved || row.name != current.name {
            store::touch_subtree(&mut tx, &row.path, seq).await?;
        }
        self.commit(tx, &[]).await?;
        self.cache.invalidate_all().await;
        self.category(&row.id).await
    }

    /// Deletes a category without subcategories. One that holds products needs `reassign_to`,
    /// where its products move first.
    pub async fn delete_category(&self, id: Uuid, version: i64, reassign_to: Option<Uuid>) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        let seq = store::next_seq(&mut tx).await?;
        let current = store::category(&mut *tx, &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("category"))?;
        if current.version != version {
            return Err(stale("category"));
        }
        if store::count_children(&mut tx, &current.id).await? > 0 {
            return Err(ApiError::Conflict(
                "this category has subcategories; move or delete them first".to_owned(),
            ));
        }
        let products = store::count_products_in(&mut tx, &current.id).await?;
        match reassign_to {
            Some(target) if target == id => {
                return Err(ApiError::validation("reassign_to", "must be another category"));
            }
            Some(target) => {
                let target = store::category(&mut *tx, &target.to_string())
                    .await?
                    .ok_or_else(|| ApiError::validation("reassign_to", "is not a category"))?;
                store::reassign_products(&mut tx, &current.id, &target.id, seq, self.now()).await?;
            }
            None if products > 0 => {
                return Err(ApiError::Conflict(format!(
                    "this category holds {products} product(s); pass `reassign_to` to move them to another category"
                )));
            }
            None => {
                // Deleted products still point here; give them the parent, if any.
                if let Some(parent) = &current.parent_id {
                    store::reassign_products(&mut tx, &current.id, parent, seq, self.now()).await?;
                }
            }
        }
        if !store::delete_category(&mut tx, &current.id, version)
            .await
            .map_err(|err| {
                if err.as_database_error().is_some_and(|e| e.is_foreign_key_violation()) {
                    ApiError::Conflict("deleted products still refer to this category; pass `reassign_to`".to_owned())
                } else {
                    err.into()
                }
            })?
        {
            return Err(stale("category"));
        }
        self.commit(tx, &[]).await?;
        self.cache.invalidate_all().await;
        Ok(())
    }

    // ----- products: reads --------------------------------------------------------------------

    /// A shopper's view: active products only.
    pub async fn product(&self, id_or_slug: &str) -> Result<ProductView, ApiError> {
        let row = self
            .active_product(id_or_slug)
            .await?
            .ok_or_else(|| ApiError::not_found("product"))?;
        self.product_view(row).await
    }

    /// A seller's or admin's view: any status, own products only for sellers.
    pub async fn managed_product(&self, user: &CurrentUser, id: Uuid) -> Result<ProductView, ApiError> {
        let row = self.owned(user, id).await?;
        self.product_view(row).await
    }

    async fn product_view(&self, row: ProductRow) -> Result<ProductView, ApiError> {
        let variants = store::variants_of(self.db.reader(), &row.id).await?;
        let path = match store::category(self.db.reader(), &row.category_id).await? {
            Some(category) => self.category_path(&category).await?,
            None => Vec::new(),
        };
        Ok(views::product(row, variants, &path, &self.settings.currency))
    }

    async fn owned(&self, user: &CurrentUser, id: Uuid) -> Result<ProductRow, ApiError> {
        user.require(&[Role::Seller, Role::Admin])?;
        let row = store::product(self.db.reader(), &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("product"))?;
        check_owner(user, &row)?;
        Ok(row)
    }

    /// An active product, by id or slug.
    async fn active_product(&self, id_or_slug: &str) -> Result<Option<ProductRow>, ApiError> {
        Ok(store::product(self.db.reader(), id_or_slug)
            .await?
            .filter(|p| p.status == ProductStatus::Active.as_str()))
    }

    /// The category a list or search is narrowed to; an unknown one is a 422.
    async fn filter_category(&self, query: &ListQuery) -> Result<Option<CategoryRow>, ApiError> {
        match &query.category {
            Some(key) => {
                Ok(Some(store::category(self.db.reader(), key).await?.ok_or_else(
                    || ApiError::validation("category", "is not a category"),
                )?))
            }
            None => Ok(None),
        }
    }

    async fn list_filter(&self, query: &ListQuery) -> Result<ListFilter, ApiError> {
        let category_path = self.filter_category(query).await?.map(|c| c.path);
        Ok(ListFilter {
            category_path,
            brand_keys: query.brands.iter().map(|b| brand_key(b)).collect(),
            price_min: query.price_min,
            price_max: query.price_max,
            min_rating_x100: query.min_rating_x100,
            in_stock: query.in_stock,
            seller_id: None,
            all_statuses: false,
        })
    }

    /// Active products, filtered and sorted, a page at a time.
    pub async fn list_products(&self, query: &ListQuery, page: &PageRequest) -> Result<Page<ProductSummary>, ApiError> {
        let filter = self.list_filter(query).await?;
        self.list(&filter, query.sort, page).await
    }

    /// A seller's own products (admins: every product, or one seller's), any status.
    pub async fn managed_products(
        &self,
        user: &CurrentUser,
        seller: Option<Uuid>,
        query: &ListQuery,
        page: &PageRequest,
    ) -> Result<Page<ProductSummary>, ApiError> {
        user.require(&[Role::Seller, Role::Admin])?;
        let mut filter = self.list_filter(query).await?;
        match (user.is_admin(), seller) {
            (false, _) => filter.seller_id = Some(user.id.to_string()),
            (true, Some(seller)) => filter.seller_id = Some(seller.to_string()),
            (true, None) => filter.all_statuses = true,
        }
        self.list(&filter, query.sort, page).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        sort: SortOrder,
        page: &PageRequest,
    ) -> Result<Page<ProductSummary>, ApiError> {
        let order = match sort {
            SortOrder::Relevance | SortOrder::Newest => ListOrder::NewestFirst,
            SortOrder::PriceAsc => ListOrder::PriceAscending,
            SortOrder::PriceDesc => ListOrder::PriceDescending,
            SortOrder::Rating => ListOrder::RatingDescending,
        };
        let after = match &page.after {
            Some(raw) => {
                Some(parse_list_cursor(raw).ok_or_else(|| ApiError::validation("cursor", "is not a valid cursor"))?)
            }
            None => None,
        };
        let rows = store::list_products(self.db.reader(), filter, order, after, page.fetch_limit()).await?;
        let page = Page::from_rows(rows, page, |row| format!("{}:{}", order.key_of(row), row.id));
        let currency = &self.settings.currency;
        Ok(page.map(|row| views::summary(&row, currency)))
    }

    // ----- products: writes -------------------------------------------------------------------

    /// Creates a product. Sellers own what they create; an admin may name the seller.
    pub async fn create_product(
        &self,
        user: &CurrentUser,
        draft: ProductDraft,
        seller_id: Option<Uuid>,
        correlation: Option<&str>,
    ) -> Result<ProductView, ApiError> {
        user.require(&[Role::Seller, Role::Admin])?;
        let seller = match (user.is_admin(), seller_id) {
            (true, Some(seller)) => seller,
            (false, Some(seller)) if seller != user.id => {
                return Err(ApiError::Forbidden(
                    "sellers create products for themselves only".to_owned(),
                ))
            }
            _ => user.id,
        };
        let spec = ProductSpec::parse(draft).map_err(ApiError::Validation)?;
        let mut tx = self.db.begin().await?;
        self.require_category(&mut tx, spec.category_id).await?;
        let now = self.now();
        let seq = store::next_seq(&mut tx).await?;
        let row = ProductRow {
            id: platform::id::new_id().to_string(),
            slug: spec.slug.as_str().to_owned(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            brand: spec.brand.clone(),
            brand_key: brand_key(&spec.brand),
            category_id: spec.category_id.to_string(),
            seller_id: seller.to_string(),
            status: spec.status.as_str().to_owned(),
            attributes: serde_json::to_string(&spec.attributes).map_err(anyhow::Error::from)?,
            images: serde_json::to_string(&spec.images).map_err(anyhow::Error::from)?,
            price_min: spec.price_min(),
            price_max: spec.price_max(),
            rating_sum: 0,
            rating_count: 0,
            rating_x100: 0,
            in_stock: 0,
            seq,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            version: 1,
        };
        store::insert_product(&mut tx, &row)
            .await
            .map_err(|err| missing_category(err, "category_id"))?;
        let variants = self.write_variants(&mut tx, &row.id, &spec, &[]).await?;
        Self::enqueue(
            &mut tx,
            "product.created",
            &row.id,
            self.product_event(&row, &variants),
            correlation,
        )
        .await?;
        self.commit(tx, &product_keys(&row.id, &[&row.slug])).await?;
        self.product_view(row).await
    }

    pub async fn update_product(
        &self,
        user: &CurrentUser,
        id: Uuid,
        patch: ProductPatch,
        version: i64,
        correlation: Option<&str>,
    ) -> Result<ProductView, ApiError> {
        let current = self.owned(user, id).await?;
        if current.version != version {
            return Err(stale("product"));
        }
        let existing = store::variants_of(self.db.reader(), &current.id).await?;
        let draft = ProductDraft {
            name: patch.name.unwrap_or_else(|| current.name.clone()),
            slug: Some(patch.slug.unwrap_or_else(|| current.slug.clone())),
            description: patch.description.unwrap_or_else(|| current.description.clone()),
            brand: patch.brand.unwrap_or_else(|| current.brand.clone()),
            category_id: patch
                .category_id
                .or_else(|| platform::id::parse_id(&current.category_id)),
            status: patch
                .status
                .unwrap_or_else(|| ProductStatus::parse(&current.status).unwrap_or(ProductStatus::Draft)),
            attributes: match patch.attributes {
                Some(a) => a,
                None => serde_json::from_str(&current.attributes).map_err(anyhow::Error::from)?,
            },
            images: match patch.images {
                Some(i) => i,
                None => serde_json::from_str(&current.images).map_err(anyhow::Error::from)?,
            },
            variants: match patch.variants {
                Some(v) => v,
                None => existing.iter().map(variant_input).collect(),
            },
        };
        let spec = ProductSpec::parse(draft).map_err(ApiError::Validation)?;
        let mut tx = self.db.begin().await?;
        if spec.category_id.to_string() != current.category_id {
            self.require_category(&mut tx, spec.category_id).await?;
        }
        let seq = store::next_seq(&mut tx).await?;
        let row = ProductRow {
            slug: spec.slug.as_str().to_owned(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            brand: spec.brand.clone(),
            brand_key: brand_key(&spec.brand),
            category_id: spec.category_id.to_string(),
            status: spec.status.as_str().to_owned(),
            attributes: serde_json::to_string(&spec.attributes).map_err(anyhow::Error::from)?,
            images: serde_json::to_string(&spec.images).map_err(anyhow::Error::from)?,
            price_min: spec.price_min(),
            price_max: spec.price_max(),
            seq,
            updated_at: self.now(),
            version: current.version + 1,
            ..current.clone()
        };
        let variants = self.write_variants(&mut tx, &row.id, &spec, &existing).await?;
        let row = ProductRow {
            in_stock: i64::from(variants.iter().any(|v| v.in_stock != 0)),
            ..row
        };
        if !store::update_product(&mut tx, &row, version)
            .await
            .map_err(|err| missing_category(err, "category_id"))?
        {
            return Err(stale("product"));
        }
        Self::enqueue(
            &mut tx,
            "product.updated",
            &row.id,
            self.product_event(&row, &variants),
            correlation,
        )
        .await?;
        self.commit(tx, &product_keys(&row.id, &[&row.slug, &current.slug]))
            .await?;
        self.product_view(row).await
    }

    /// Deletes a product: it disappears from the shop and its slug is freed; its SKUs stay
    /// reserved (orders and stock records name them) and its reviews stay with it.
    pub async fn delete_product(
        &self,
        user: &CurrentUser,
        id: Uuid,
        version: i64,
        correlation: Option<&str>,
    ) -> Result<(), ApiError> {
        let current = self.owned(user, id).await?;
        if current.version != version {
            return Err(stale("product"));
        }
        let variants = store::variants_of(self.db.reader(), &current.id).await?;
        let mut tx = self.db.begin().await?;
        let seq = store::next_seq(&mut tx).await?;
        let now = self.now();
        let row = ProductRow {
            slug: format!("{}--deleted-{}", current.slug, current.id),
            status: ProductStatus::Archived.as_str().to_owned(),
            deleted_at: Some(now),
            updated_at: now,
            seq,
            version: current.version + 1,
            ..current.clone()
        };
        if !store::update_product(&mut tx, &row, version).await? {
            return Err(stale("product"));
        }
        Self::enqueue(
            &mut tx,
            "product.deleted",
            &row.id,
            json!({"product_id": row.id, "skus": variants.iter().map(|v| &v.sku).collect::<Vec<_>>(), "seq": seq}),
            correlation,
        )
        .await?;
        self.commit(tx, &product_keys(&row.id, &[&current.slug])).await
    }

    /// The cache keys of a product's page (by id and by slug).
    async fn page_keys(tx: &mut Tx, product_id: &str) -> Result<Vec<String>, ApiError> {
        let slug = store::product(&mut **tx, product_id).await?.map(|p| p.slug);
        Ok(product_keys(
            product_id,
            &slug.as_deref().into_iter().collect::<Vec<_>>(),
        ))
    }

    async fn require_category(&self, tx: &mut Tx, id: Uuid) -> Result<(), ApiError> {
        match store::category(&mut **tx, &id.to_string()).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::validation("category_id", "is not a category")),
        }
    }

    /// Makes the product's variants equal to the spec's, keeping the id (and stock flag) of
    /// every SKU that stays. A SKU another product holds is a conflict.
    async fn write_variants(
        &self,
        tx: &mut Tx,
        product_id: &str,
        spec: &ProductSpec,
        existing: &[VariantRow],
    ) -> Result<Vec<VariantRow>, ApiError> {
        for old in existing {
            if !spec.variants.iter().any(|v| v.sku == old.sku) {
                store::delete_variant(tx, &old.id).await?;
            }
        }
        let mut written = Vec::with_capacity(spec.variants.len());
        for (position, variant) in spec.variants.iter().enumerate() {
            let kept = existing.iter().find(|old| old.sku == variant.sku);
            let row = VariantRow {
                id: kept.map_or_else(|| platform::id::new_id().to_string(), |old| old.id.clone()),
                product_id: product_id.to_owned(),
                sku: variant.sku.clone(),
                options: serde_json::to_string(&variant.options).map_err(anyhow::Error::from)?,
                price: variant.price,
                compare_at_price: variant.compare_at_price,
                weight_grams: variant.weight_grams,
                position: position as i64,
                in_stock: kept.map_or(0, |old| old.in_stock),
            };
            store::upsert_variant(tx, &row).await.map_err(|err| {
                ApiError::conflict_on_unique(err, format!("SKU {} belongs to another product", variant.sku))
            })?;
            written.push(row);
        }
        Ok(written)
    }

    /// The data of product.created / product.updated: what inventory and carts need.
    fn product_event(&self, row: &ProductRow, variants: &[VariantRow]) -> serde_json::Value {
        json!({
            "product_id": row.id,
            "slug": row.slug,
            "name": row.name,
            "status": row.status,
            "seller_id": row.seller_id,
            "category_id": row.category_id,
            "currency": self.settings.currency,
            "variants": variants.iter().map(|v| json!({
                "sku": v.sku,
                "price": v.price,
                "compare_at_price": v.compare_at_price,
                "options": serde_json::from_str::<serde_json::Value>(&v.options).unwrap_or_default(),
            })).collect::<Vec<_>>(),
            "image": serde_json::from_str::<Vec<domain::Image>>(&row.images).ok().and_then(|i| i.into_iter().next()),
            "seq": row.seq,
            "version": row.version,
        })
    }

    /// What other services need of some SKUs (the cart's snapshot): product name, slug, first
    /// image, price, and whether the product is on sale. Unknown SKUs are left out. Served from
    /// the read cache where it has them: every cart add and checkout asks, and any product
    /// change clears them (with the lists and searches).
    pub async fn sku_details(&self, skus: &[String]) -> Result<Vec<SkuDetails>, ApiError> {
        let mut found = Vec::with_capacity(skus.len());
        let mut missing = Vec::new();
        for sku in skus {
            let cached = self.cache.get(&sku_key(sku)).await;
            match cached.and_then(|bytes| serde_json::from_slice::<SkuDetails>(&bytes).ok()) {
                Some(details) => found.push(details),
                None => missing.push(sku.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        // Read after the generation: a change committed meanwhile moves it past `generation`.
        let generation = self.cache.generation().await;
        for details in self.read_sku_details(&missing).await? {
            if let Ok(bytes) = serde_json::to_vec(&details) {
                self.cache.insert(sku_key(&details.sku), bytes.into(), generation).await;
            }
            found.push(details);
        }
        Ok(found)
    }

    async fn read_sku_details(&self, skus: &[String]) -> Result<Vec<SkuDetails>, ApiError> {
        let rows = store::sku_details(self.db.reader(), skus).await?;
        Ok(rows
            .into_iter()
            .map(|row| SkuDetails {
                on_sale: row.status == ProductStatus::Active.as_str() && row.deleted_at.is_none(),
                image: serde_json::from_str::<Vec<domain::Image>>(&row.images)
                    .ok()
                    .and_then(|images| images.into_iter().next())
                    .map(|image| image.url),
                sku: row.sku,
                product_id: row.product_id,
                name: row.name,
                slug: row.slug,
                seller_id: row.seller_id,
                price: row.price,
                currency: self.settings.currency.clone(),
            })
            .collect())
    }

    // ----- search ----------------------------------------------------------------------------

    /// Full-text search over active products with the list's filters and sorts.
    pub async fn search(
        &self,
        text: &str,
        query: &ListQuery,
        offset: usize,
        limit: usize,
        with_facets: bool,
    ) -> Result<SearchAnswer, ApiError> {
        let category_id = self.filter_category(query).await?.map(|c| c.id);
        let request = SearchQuery {
            text: text.to_owned(),
            filters: search::Filters {
                category_id,
                brands: query.brands.clone(),
                price_min: query.price_min,
                price_max: query.price_max,
                min_rating_x100: query.min_rating_x100,
                in_stock: query.in_stock,
            },
            sort: query.sort,
            offset,
            limit,
            with_facets,
        };
        let index = self.indexer.index().clone();
        let result = tokio::task::spawn_blocking(move || index.search(&request))
            .await
            .map_err(anyhow::Error::from)??;
        let ids: Vec<String> = result.hits.iter().map(|h| h.id.clone()).collect();
        let rows = self.indexer.rows().get(self.db.reader(), &ids).await?;
        let currency = &self.settings.currency;
        // The index may briefly hold a product the database has just hidden: skip it.
        let items = ids
            .iter()
            .filter_map(|id| rows.iter().find(|r| &r.id == id))
            .filter(|r| r.status == ProductStatus::Active.as_str() && r.deleted_at.is_none())
            .map(|r| views::summary(r, currency))
            .collect();
        Ok(SearchAnswer {
            total: result.total,
            items,
            facets: result.facets,
        })
    }

    pub async fn suggest(&self, prefix: &str, limit: usize) -> Result<Vec<String>, ApiError> {
        let index = self.indexer.index().clone();
        let prefix = prefix.to_owned();
        Ok(tokio::task::spawn_blocking(move || index.suggest(&prefix, limit))
            .await
            .map_err(anyhow::Error::from)??)
    }

    // ----- reviews ---------------------------------------------------------------------------

    pub async fn submit_review(
        &self,
        user: &CurrentUser,
        product: &str,
        author_name: Option<&str>,
        spec: ReviewSpec,
        correlation: Option<&str>,
    ) -> Result<ReviewView, ApiError> {
        let product = self
            .active_product(product)
            .await?
            .ok_or_else(|| ApiError::not_found("product"))?;
        let author_name = match author_name {
            Some(name) => domain::text("author_name", name, 1, 60).map_err(|e| ApiError::Validation(vec![e]))?,
            None => "A shopper".to_owned(),
        };
        let now = self.now();
        let row = ReviewRow {
            id: platform::id::new_id().to_string(),
            product_id: product.id.clone(),
            user_id: user.id.to_string(),
            author_name,
            rating: spec.rating,
            title: spec.title,
            body: spec.body,
            status: ReviewStatus::Pending.as_str().to_owned(),
            verified_buyer: 0,
            moderation_note: None,
            moderated_by: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db.begin().await?;
        store::insert_review(&mut tx, &row)
            .await
            .map_err(|err| ApiError::conflict_on_unique(err, "you have already reviewed this product"))?;
        Self::enqueue(
            &mut tx,
            "review.submitted",
            &row.id,
            json!({"review_id": row.id, "product_id": row.product_id, "user_id": row.user_id, "rating": row.rating}),
            correlation,
        )
        .await?;
        self.commit(tx, &[]).await?;
        let row = store::review(self.db.reader(), &row.id)
            .await?
            .ok_or_else(|| ApiError::not_found("review"))?;
        Ok(views::review(row, true))
    }

    /// Approved reviews of an active product, newest first.
    pub async fn product_reviews(&self, product: &str, page: &PageRequest) -> Result<Page<ReviewView>, ApiError> {
        let product = self
            .active_product(product)
            .await?
            .ok_or_else(|| ApiError::not_found("product"))?;
        self.reviews(Some(&product.id), Some(ReviewStatus::Approved), None, page, false)
            .await
    }

    pub async fn reviews(
        &self,
        product_id: Option<&str>,
        status: Option<ReviewStatus>,
        user_id: Option<&str>,
        page: &PageRequest,
        with_notes: bool,
    ) -> Result<Page<ReviewView>, ApiError> {
        let rows = store::list_reviews(
            self.db.reader(),
            product_id,
            status.map(ReviewStatus::as_str),
            user_id,
            page.after.as_deref(),
            page.fetch_limit(),
        )
        .await?;
        Ok(Page::from_rows(rows, page, |r| r.id.clone()).map(|r| views::review(r, with_notes)))
    }

    /// Approves or rejects a review; the product's rating follows.
    pub async fn moderate_review(
        &self,
        moderator: &CurrentUser,
        id: Uuid,
        decision: ReviewStatus,
        note: Option<&str>,
    ) -> Result<ReviewView, ApiError> {
        moderator.require(&[Role::Admin])?;
        if decision == ReviewStatus::Pending {
            return Err(ApiError::validation("status", "must be `approved` or `rejected`"));
        }
        let note = match note {
            Some(note) => Some(domain::text("note", note, 0, 1_000).map_err(|e| ApiError::Validation(vec![e]))?),
            None => None,
        };
        let mut tx = self.db.begin().await?;
        let review = store::review(&mut *tx, &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("review"))?;
        let before = ReviewStatus::parse(&review.status).unwrap_or(ReviewStatus::Pending);
        if !store::moderate_review(
            &mut tx,
            &review.id,
            before.as_str(),
            decision.as_str(),
            note.as_deref(),
            &moderator.id.to_string(),
            self.now(),
        )
        .await?
        {
            return Err(ApiError::Conflict(
                "the review was moderated meanwhile; reload it".to_owned(),
            ));
        }
        let (delta_sum, delta_count) = domain::rating_delta(before, decision, review.rating);
        if delta_count != 0 {
            let seq = store::next_seq(&mut tx).await?;
            store::set_rating(&mut tx, &review.product_id, delta_sum, delta_count, seq).await?;
        }
        let keys = Self::page_keys(&mut tx, &review.product_id).await?;
        self.commit(tx, &keys).await?;
        let row = store::review(self.db.reader(), &review.id)
            .await?
            .ok_or_else(|| ApiError::not_found("review"))?;
        Ok(views::review(row, true))
    }

    /// The author withdraws a review (an admin may remove any).
    pub async fn delete_review(&self, user: &CurrentUser, id: Uuid) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        let review = store::review(&mut *tx, &id.to_string())
            .await?
            .filter(|r| user.is_admin() || r.user_id == user.id.to_string())
            .ok_or_else(|| ApiError::not_found("review"))?;
        // What the delete removed, not what was read before it: a moderation may have come
        // between, and a second delete removes nothing.
        let (status, rating) = store::delete_review(&mut tx, &review.id)
            .await?
            .ok_or_else(|| ApiError::not_found("review"))?;
        if status == ReviewStatus::Approved.as_str() {
            let seq = store::next_seq(&mut tx).await?;
            store::set_rating(&mut tx, &review.product_id, -rating, -1, seq).await?;
        }
        let keys = Self::page_keys(&mut tx, &review.product_id).await?;
        self.commit(tx, &keys).await
    }

    // ----- wishlists ---------------------------------------------------------------------------

    pub async fn wishlist(&self, user: &CurrentUser, page: &PageRequest) -> Result<Page<WishlistItem>, ApiError> {
        let after = match &page.after {
            Some(raw) => {
                Some(parse_list_cursor(raw).ok_or_else(|| ApiError::validation("cursor", "is not a valid cursor"))?)
            }
            None => None,
        };
        let rows = store::wishlist(self.db.reader(), &user.id.to_string(), after, page.fetch_limit()).await?;
        let currency = &self.settings.currency;
        Ok(
            Page::from_rows(rows, page, |(at, product)| format!("{at}:{}", product.id)).map(|(at, product)| {
                WishlistItem {
                    added_at: platform::clock::rfc3339(at),
                    product: views::summary(&product, currency),
                }
            }),
        )
    }

    /// Adds a product (idempotent: adding it again changes nothing). Answers whether it was new.
    pub async fn add_to_wishlist(&self, user: &CurrentUser, product: &str) -> Result<bool, ApiError> {
        let product = self
            .active_product(product)
            .await?
            .ok_or_else(|| ApiError::validation("product_id", "is not a product in the shop"))?;
        let mut tx = self.db.begin().await?;
        let user_id = user.id.to_string();
        if store::in_wishlist(&mut tx, &user_id, &product.id).await? {
            return Ok(false);
        }
        if store::count_wishlist(&mut tx, &user_id).await? >= WISHLIST_LIMIT {
            return Err(ApiError::Unprocessable(format!(
                "a wishlist holds at most {WISHLIST_LIMIT} products"
            )));
        }
        let added = store::add_to_wishlist(&mut tx, &user_id, &product.id, self.now()).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Removes one product (by id or slug), or every product when `product` is `None`.
    /// Answers how many went.
    pub async fn remove_from_wishlist(&self, user: &CurrentUser, product: Option<&str>) -> Result<u64, ApiError> {
        let product = match product {
            Some(key) if platform::id::parse_id(key).is_some() => Some(key.to_owned()),
            Some(slug) => match store::product(self.db.reader(), slug).await? {
                Some(row) => Some(row.id),
                None => return Ok(0),
            },
            None => None,
        };
        Ok(store::remove_from_wishlist(self.db.writer(), &user.id.to_string(), product.as_deref()).await?)
    }
}

/// What a search answers before serialization.
#[derive(Debug, Clone)]
pub struct SearchAnswer {
    pub total: usize,
    pub items: Vec<ProductSummary>,
    pub facets: Option<search::Facets>,
}

/// Sellers may touch their own products only; admins any. 403 says which rule refused.
pub fn check_owner(user: &CurrentUser, row: &ProductRow) -> Result<(), ApiError> {
    if user.is_admin() || (user.role == Role::Seller && row.seller_id == user.id.to_string()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("you may manage your own products only".to_owned()))
    }
}

/// The case-folded brand that filters compare.
pub fn brand_key(brand: &str) -> String {
    brand.trim().to_lowercase()
}

fn variant_input(row: &VariantRow) -> domain::VariantInput {
    domain::VariantInput {
        sku: row.sku.clone(),
        options: serde_json::from_str(&row.options).unwrap_or_default(),
        price: row.price,
        compare_at_price: row.compare_at_price,
        weight_grams: row.weight_grams,
    }
}

/// A `key:id` cursor.
fn parse_list_cursor(raw: &str) -> Option<(i64, String)> {
    let (key, id) = raw.split_once(':')?;
    Some((key.parse().ok()?, id.to_owned()))
}
