//! The catalog's HTTP API: routes, request and response bodies, and their OpenAPI description.
//! Public reads answer from the read cache: the serialized response, keyed by the normalized
//! request.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use platform::auth::{Admin, CurrentUser, TokenVerifier};
use platform::error::{ApiError, ApiResult, Problem};
use platform::extract::{expected_version, Json, Path, Query};
use platform::page::{encode_cursor, Page, PageParams, PageRequest};
use platform::telemetry::RequestIds;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::{
    self, Attribute, Image, ProductDraft, ProductStatus, ReviewSpec, ReviewStatus, SortOrder, VariantInput,
};
use crate::service::{Catalog, CategoryPatch, ListQuery, ProductPatch};
use crate::views::{
    CategoryCrumb, CategoryNode, CategoryRef, CategoryView, PriceRange, ProductSummary, ProductView, RatingSummary,
    ReviewView, VariantView, WishlistItem,
};

/// Routes anyone may call without a token, for the gateway's edge check (`METHOD /path`, a
/// trailing `/` meaning "and below").
pub const PUBLIC_ROUTES: &[&str] = &[
    "GET /api/v1/categories",
    "GET /api/v1/categories/",
    "GET /api/v1/products",
    "GET /api/v1/products/",
    "GET /api/v1/search",
    "GET /api/v1/search/suggest",
];

/// How deep a search may page: relevance paging beyond this is not useful and costs the most.
pub const MAX_SEARCH_OFFSET: usize = 1_000;

pub fn router(catalog: Arc<Catalog>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/categories", get(category_tree))
        .route("/api/v1/categories/{id_or_slug}", get(get_category))
        .route("/api/v1/admin/categories", post(create_category))
        .route(
            "/api/v1/admin/categories/{id}",
            axum::routing::patch(update_category).delete(delete_category),
        )
        .route("/api/v1/products", get(list_products).post(create_product))
        .route(
            "/api/v1/products/{id_or_slug}",
            get(get_product).patch(update_product).delete(delete_product),
        )
        .route(
            "/api/v1/products/{id_or_slug}/reviews",
            get(product_reviews).post(submit_review),
        )
        .route("/api/v1/seller/products", get(managed_products))
        .route("/api/v1/seller/products/{id}", get(managed_product))
        .route("/api/v1/search", get(search))
        .route("/api/v1/search/suggest", get(suggest))
        .route("/api/v1/users/me/reviews", get(my_reviews))
        .route("/api/v1/users/me/reviews/{id}", axum::routing::delete(delete_my_review))
        .route(
            "/api/v1/users/me/wishlist",
            get(wishlist).post(add_to_wishlist).delete(clear_wishlist),
        )
        .route(
            "/api/v1/users/me/wishlist/{product}",
            axum::routing::delete(remove_from_wishlist),
        )
        .route("/api/v1/admin/reviews", get(admin_reviews))
        .route("/api/v1/admin/reviews/{id}/moderation", post(moderate_review))
        .layer(Extension(verifier))
        .with_state(catalog)
}

#[derive(OpenApi)]
#[openapi(
    paths(
        category_tree, get_category, create_category, update_category, delete_category,
        list_products, get_product, create_product, update_product, delete_product, managed_products, managed_product,
        search, suggest, product_reviews, submit_review, my_reviews, delete_my_review, admin_reviews, moderate_review,
        wishlist, add_to_wishlist, remove_from_wishlist, clear_wishlist
    ),
    components(schemas(
        Problem, ProductView, ProductSummary, VariantView, PriceRange, RatingSummary, CategoryRef, CategoryCrumb,
        CategoryNode, CategoryView, ReviewView, WishlistItem, Attribute, Image, VariantInput, ProductStatus,
        ReviewStatus, SortOrder, SearchResponse, Facets, CategoryFacet, BrandFacet, PriceFacet, RatingFacet
    )),
    tags((name = "catalog", description = "Categories and products"), (name = "search", description = "Full-text search"),
         (name = "reviews", description = "Product reviews and their moderation"),
         (name = "wishlist", description = "The caller's wishlist"))
)]
pub struct CatalogApi;

// ----- the read cache -------------------------------------------------------------------------

fn json_bytes(bytes: Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        bytes,
    )
        .into_response()
}

/// Answers from the cache, or computes, stores and answers.
async fn cached<T, F>(catalog: &Catalog, key: String, compute: F) -> ApiResult<Response>
where
    T: Serialize,
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    let cache = catalog.cache();
    if let Some(bytes) = cache.get(&key).await {
        return Ok(json_bytes(bytes));
    }
    let generation = cache.generation().await;
    let value = compute.await?;
    let bytes = Bytes::from(serde_json::to_vec(&value).map_err(anyhow::Error::from)?);
    cache.insert(key, bytes.clone(), generation).await;
    Ok(json_bytes(bytes))
}

// ----- query parameters -----------------------------------------------------------------------

/// Filters and sort of product lists and searches.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// A category id or slug; its subcategories are included.
    pub category: Option<String>,
    /// One brand, or several separated by commas (case-insensitive).
    pub brand: Option<String>,
    /// Lowest "from" price (the cheapest variant), minor units, inclusive.
    pub price_min: Option<i64>,
    /// Highest "from" price, minor units, inclusive.
    pub price_max: Option<i64>,
    /// Minimum average rating, 0–5 (decimals allowed).
    pub min_rating: Option<f64>,
    /// `true`: only products with a variant in stock; `false`: only those without.
    pub in_stock: Option<bool>,
    /// `relevance` (default), `price_asc`, `price_desc`, `newest`, `rating`.
    pub sort: Option<SortOrder>,
    /// 1..=100, default 20.
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListParams {
    fn parse(&self) -> Result<(ListQuery, PageRequest), ApiError> {
        let mut errors = domain::Errors::default();
        let brands: Vec<String> = self
            .brand
            .as_deref()
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .map(str::to_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        if brands.len() > 20 || brands.iter().any(|b| b.chars().count() > 100) {
            errors.push("brand", "must be at most 20 brands of at most 100 characters");
        }
        if self.category.as_deref().is_some_and(|c| c.is_empty() || c.len() > 120) {
            errors.push("category", "must be a category id or slug");
        }
        if self.price_min.is_some_and(|p| p < 0) {
            errors.push("price_min", "must not be negative");
        }
        if self.price_max.is_some_and(|p| p < 0) {
            errors.push("price_max", "must not be negative");
        }
        if let (Some(min), Some(max)) = (self.price_min, self.price_max) {
            if max < min {
                errors.push("price_max", "must not be below price_min");
            }
        }
        let min_rating_x100 = match self.min_rating {
            Some(r) if !(0.0..=5.0).contains(&r) => {
                errors.push("min_rating", "must be between 0 and 5");
                None
            }
            Some(r) => Some((r * 100.0).round() as i64),
            None => None,
        };
        let page = PageParams {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
        .parse();
        errors.finish().map_err(ApiError::Validation)?;
        Ok((
            ListQuery {
                category: self.category.clone(),
                brands,
                price_min: self.price_min,
                price_max: self.price_max,
                min_rating_x100,
                in_stock: self.in_stock,
                sort: self.sort.unwrap_or_default(),
            },
            page?,
        ))
    }
}

/// A stable text form of a parsed list request, for cache keys.
fn cache_key(kind: &str, text: &str, query: &ListQuery, page: &PageRequest, extra: &str) -> String {
    format!(
        "{kind}:q={text}|c={:?}|b={:?}|p={:?}-{:?}|r={:?}|s={:?}|sort={:?}|l={}|a={:?}|{extra}",
        query.category,
        query.brands,
        query.price_min,
        query.price_max,
        query.min_rating_x100,
        query.in_stock,
        query.sort,
        page.limit,
        page.after
    )
}

// ----- categories -------------------------------------------------------------------------------

/// The category tree.
#[utoipa::path(get, path = "/api/v1/categories", tag = "catalog", responses((status = 200, body = Vec<CategoryNode>)))]
async fn category_tree(State(catalog): State<Arc<Catalog>>) -> ApiResult<Response> {
    cached(&catalog, "list:categories".to_owned(), catalog.category_tree()).await
}

/// One category with its path from the root.
#[utoipa::path(get, path = "/api/v1/categories/{id_or_slug}", tag = "catalog", params(("id_or_slug" = String, Path)),
    responses((status = 200, body = CategoryView), (status = 404, body = Problem)))]
async fn get_category(State(catalog): State<Arc<Catalog>>, Path(key): Path<String>) -> ApiResult<Json<CategoryView>> {
    Ok(Json(catalog.category(&key).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCategoryRequest {
    pub name: String,
    /// Derived from the name when absent.
    pub slug: Option<String>,
    pub parent_id: Option<Uuid>,
    #[serde(default)]
    pub position: i64,
}

/// Create a category (admin).
#[utoipa::path(post, path = "/api/v1/admin/categories", tag = "catalog", security(("bearer" = [])),
    request_body = CreateCategoryRequest,
    responses((status = 201, body = CategoryView), (status = 409, body = Problem, description = "the slug is taken")))]
async fn create_category(
    State(catalog): State<Arc<Catalog>>,
    _admin: Admin,
    Json(body): Json<CreateCategoryRequest>,
) -> ApiResult<(StatusCode, Json<CategoryView>)> {
    let view = catalog
        .create_category(&body.name, body.slug.as_deref(), body.parent_id, body.position)
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCategoryRequest {
    /// The version you read; a stale one is refused with 409. `If-Match` works too.
    pub version: Option<i64>,
    pub name: Option<String>,
    pub slug: Option<String>,
    /// Moves the category (with everything below it); `null` moves it to the top level.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<Uuid>>,
    pub position: Option<i64>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Rename, re-slug or move a category (admin). Moving below itself is a 409.
#[utoipa::path(patch, path = "/api/v1/admin/categories/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateCategoryRequest,
    responses((status = 200, body = CategoryView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "stale version, taken slug, or a move below itself")))]
async fn update_category(
    State(catalog): State<Arc<Catalog>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
    headers: http::HeaderMap,
    Json(body): Json<UpdateCategoryRequest>,
) -> ApiResult<Json<CategoryView>> {
    let version = expected_version(body.version, &headers)?;
    let patch = CategoryPatch {
        name: body.name,
        slug: body.slug,
        parent_id: body.parent_id,
        position: body.position,
    };
    Ok(Json(catalog.update_category(id, patch, version).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteCategoryParams {
    /// The version you read (or send `If-Match`).
    pub version: Option<i64>,
    /// Where the category's products move; required when it holds any.
    pub reassign_to: Option<Uuid>,
}

/// Delete a category without subcategories (admin); its products move to `reassign_to`.
#[utoipa::path(delete, path = "/api/v1/admin/categories/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path), DeleteCategoryParams),
    responses((status = 204), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "stale version, subcategories, or products without `reassign_to`")))]
async fn delete_category(
    State(catalog): State<Arc<Catalog>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
    headers: http::HeaderMap,
    Query(params): Query<DeleteCategoryParams>,
) -> ApiResult<StatusCode> {
    let version = expected_version(params.version, &headers)?;
    catalog.delete_category(id, version, params.reassign_to).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- products ---------------------------------------------------------------------------------

/// Active products, filtered and sorted (relevance = newest first here), a page at a time.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog", params(ListParams),
    responses((status = 200, body = Page<ProductSummary>), (status = 422, body = Problem)))]
async fn list_products(State(catalog): State<Arc<Catalog>>, Query(params): Query<ListParams>) -> ApiResult<Response> {
    let (query, page) = params.parse()?;
    let key = cache_key("list", "", &query, &page, "");
    cached(&catalog, key, catalog.list_products(&query, &page)).await
}

/// One active product by id or slug, with its variants, images and rating.
#[utoipa::path(get, path = "/api/v1/products/{id_or_slug}", tag = "catalog", params(("id_or_slug" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = Problem)))]
async fn get_product(State(catalog): State<Arc<Catalog>>, Path(key): Path<String>) -> ApiResult<Response> {
    if key.is_empty() || key.len() > 160 {
        return Err(ApiError::not_found("product"));
    }
    cached(&catalog, format!("product:{key}"), catalog.product(&key)).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    pub name: String,
    /// Derived from the name when absent.
    pub slug: Option<String>,
    #[serde(default)]
    pub description: String,
    pub brand: String,
    pub category_id: Uuid,
    /// `draft` (default), `active` or `archived`.
    pub status: Option<ProductStatus>,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    #[serde(default)]
    pub images: Vec<Image>,
    pub variants: Vec<VariantInput>,
    /// Admins only: the seller who owns the product (default: the caller).
    pub seller_id: Option<Uuid>,
}

/// Create a product (seller or admin).
#[utoipa::path(post, path = "/api/v1/products", tag = "catalog", security(("bearer" = [])),
    request_body = CreateProductRequest,
    responses((status = 201, body = ProductView), (status = 403, body = Problem),
              (status = 409, body = Problem, description = "the slug or a SKU is taken")))]
async fn create_product(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    ids: RequestIds,
    Json(body): Json<CreateProductRequest>,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    let draft = ProductDraft {
        name: body.name,
        slug: body.slug,
        description: body.description,
        brand: body.brand,
        category_id: Some(body.category_id),
        status: body.status.unwrap_or(ProductStatus::Draft),
        attributes: body.attributes,
        images: body.images,
        variants: body.variants,
    };
    let view = catalog
        .create_product(&user, draft, body.seller_id, Some(&ids.correlation_id))
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    /// The version you read; a stale one is refused with 409. `If-Match` works too.
    pub version: Option<i64>,
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
    pub brand: Option<String>,
    pub category_id: Option<Uuid>,
    pub status: Option<ProductStatus>,
    pub attributes: Option<Vec<Attribute>>,
    pub images: Option<Vec<Image>>,
    /// Replaces the variants; a SKU that stays keeps its id and stock.
    pub variants: Option<Vec<VariantInput>>,
}

/// Edit a product (its seller or an admin). Absent fields keep their value.
#[utoipa::path(patch, path = "/api/v1/products/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateProductRequest,
    responses((status = 200, body = ProductView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "stale version, or the slug or a SKU is taken")))]
async fn update_product(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    ids: RequestIds,
    Path(id): Path<String>,
    headers: http::HeaderMap,
    Json(body): Json<UpdateProductRequest>,
) -> ApiResult<Json<ProductView>> {
    let id = platform::id::parse_id(&id).ok_or_else(|| ApiError::not_found("product"))?;
    let version = expected_version(body.version, &headers)?;
    let patch = ProductPatch {
        name: body.name,
        slug: body.slug,
        description: body.description,
        brand: body.brand,
        category_id: body.category_id,
        status: body.status,
        attributes: body.attributes,
        images: body.images,
        variants: body.variants,
    };
    Ok(Json(
        catalog
            .update_product(&user, id, patch, version, Some(&ids.correlation_id))
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionParam {
    /// The version you read (or send `If-Match`).
    pub version: Option<i64>,
}

/// Delete a product (its seller or an admin).
#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path), VersionParam),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "stale version")))]
async fn delete_product(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    ids: RequestIds,
    Path(id): Path<String>,
    headers: http::HeaderMap,
    Query(params): Query<VersionParam>,
) -> ApiResult<StatusCode> {
    let id = platform::id::parse_id(&id).ok_or_else(|| ApiError::not_found("product"))?;
    let version = expected_version(params.version, &headers)?;
    catalog
        .delete_product(&user, id, version, Some(&ids.correlation_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SellerParams {
    /// Admins only: one seller's products.
    pub seller_id: Option<Uuid>,
}

/// The caller's products in every status (admins: every product, or one seller's).
#[utoipa::path(get, path = "/api/v1/seller/products", tag = "catalog", security(("bearer" = [])),
    params(ListParams, SellerParams), responses((status = 200, body = Page<ProductSummary>), (status = 403, body = Problem)))]
async fn managed_products(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    Query(params): Query<ListParams>,
    Query(seller): Query<SellerParams>,
) -> ApiResult<Json<Page<ProductSummary>>> {
    let (query, page) = params.parse()?;
    Ok(Json(
        catalog.managed_products(&user, seller.seller_id, &query, &page).await?,
    ))
}

/// One of the caller's products in any status (admins: any product).
#[utoipa::path(get, path = "/api/v1/seller/products/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = ProductView), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn managed_product(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ProductView>> {
    let id = platform::id::parse_id(&id).ok_or_else(|| ApiError::not_found("product"))?;
    Ok(Json(catalog.managed_product(&user, id).await?))
}

// ----- search -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Free text, up to 200 characters; typos and prefixes are forgiven.
    pub q: Option<String>,
    /// `false` leaves the facet counts out (faster).
    pub facets: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// How many products match in all.
    pub total: usize,
    pub items: Vec<ProductSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facets: Option<Facets>,
}

/// Counts over everything matching the query and filters.
#[derive(Debug, Serialize, ToSchema)]
pub struct Facets {
    /// Per category, counting its subcategories' products too.
    pub categories: Vec<CategoryFacet>,
    pub brands: Vec<BrandFacet>,
    pub prices: Vec<PriceFacet>,
    pub ratings: Vec<RatingFacet>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryFacet {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub parent_id: Option<String>,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BrandFacet {
    pub brand: String,
    pub count: u64,
}

/// `[from, to)` in minor units; `to` absent for the last bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceFacet {
    pub from: i64,
    pub to: Option<i64>,
    pub count: u64,
}

/// Products rated `min` or more.
#[derive(Debug, Serialize, ToSchema)]
pub struct RatingFacet {
    pub min: u8,
    pub count: u64,
}

/// Search active products, with facets and the list's filters and sorts.
#[utoipa::path(get, path = "/api/v1/search", tag = "search", params(SearchParams, ListParams),
    responses((status = 200, body = SearchResponse), (status = 422, body = Problem)))]
async fn search(
    State(catalog): State<Arc<Catalog>>,
    Query(text): Query<SearchParams>,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let q = text.q.unwrap_or_default();
    if q.chars().count() > 200 {
        return Err(ApiError::validation("q", "must have at most 200 characters"));
    }
    let q = q.trim().to_owned();
    let (query, page) = params.parse()?;
    let offset = match &page.after {
        Some(raw) => raw
            .parse::<usize>()
            .map_err(|_| ApiError::validation("cursor", "is not a valid cursor"))?,
        None => 0,
    };
    if offset >= MAX_SEARCH_OFFSET {
        return Err(ApiError::validation(
            "cursor",
            format!("search results are available up to the first {MAX_SEARCH_OFFSET}; narrow the query"),
        ));
    }
    let limit = (page.limit as usize).min(MAX_SEARCH_OFFSET - offset);
    let with_facets = text.facets.unwrap_or(true);
    let key = cache_key("search", &q, &query, &page, &format!("f={with_facets}"));
    let compute = async {
        let answer = catalog.search(&q, &query, offset, limit, with_facets).await?;
        let next = offset + limit;
        let next_cursor = (next < answer.total && next < MAX_SEARCH_OFFSET).then(|| encode_cursor(&next.to_string()));
        let facets = match answer.facets {
            Some(facets) => Some(facet_view(&catalog, facets).await?),
            None => None,
        };
        Ok::<_, ApiError>(SearchResponse {
            total: answer.total,
            items: answer.items,
            next_cursor,
            facets,
        })
    };
    cached(&catalog, key, compute).await
}

async fn facet_view(catalog: &Catalog, facets: crate::search::Facets) -> Result<Facets, ApiError> {
    let categories = catalog.all_categories().await?;
    Ok(Facets {
        categories: facets
            .categories
            .into_iter()
            .filter_map(|(id, count)| {
                categories.iter().find(|c| c.id == id).map(|c| CategoryFacet {
                    id,
                    name: c.name.clone(),
                    slug: c.slug.clone(),
                    parent_id: c.parent_id.clone(),
                    count,
                })
            })
            .collect(),
        brands: facets
            .brands
            .into_iter()
            .map(|(brand, count)| BrandFacet { brand, count })
            .collect(),
        prices: facets
            .prices
            .into_iter()
            .map(|b| PriceFacet {
                from: b.from,
                to: b.to,
                count: b.count,
            })
            .collect(),
        ratings: facets
            .ratings
            .into_iter()
            .map(|(min, count)| RatingFacet { min, count })
            .collect(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuggestParams {
    /// What the shopper has typed so far.
    pub q: String,
    /// 1..=20, default 8.
    pub limit: Option<usize>,
}

/// Autocomplete: product names for what has been typed so far.
#[utoipa::path(get, path = "/api/v1/search/suggest", tag = "search", params(SuggestParams),
    responses((status = 200, body = Vec<String>), (status = 422, body = Problem)))]
async fn suggest(State(catalog): State<Arc<Catalog>>, Query(params): Query<SuggestParams>) -> ApiResult<Response> {
    if params.q.chars().count() > 100 {
        return Err(ApiError::validation("q", "must have at most 100 characters"));
    }
    let limit = params.limit.unwrap_or(8);
    if !(1..=20).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 20"));
    }
    let q = params.q.trim().to_lowercase();
    let key = format!("search:suggest|{limit}|{q}");
    cached(&catalog, key, catalog.suggest(&q, limit)).await
}

// ----- reviews ----------------------------------------------------------------------------------

/// Approved reviews of a product, newest first.
#[utoipa::path(get, path = "/api/v1/products/{id_or_slug}/reviews", tag = "reviews",
    params(("id_or_slug" = String, Path), PageParams),
    responses((status = 200, body = Page<ReviewView>), (status = 404, body = Problem)))]
async fn product_reviews(
    State(catalog): State<Arc<Catalog>>,
    Path(key): Path<String>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<ReviewView>>> {
    Ok(Json(catalog.product_reviews(&key, &page.parse()?).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// 1 to 5.
    pub rating: i64,
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// The name shown with the review (default "A shopper").
    pub author_name: Option<String>,
}

/// Review a product; one review per customer and product. It shows once a moderator approves it.
#[utoipa::path(post, path = "/api/v1/products/{id_or_slug}/reviews", tag = "reviews", security(("bearer" = [])),
    params(("id_or_slug" = String, Path)), request_body = ReviewRequest,
    responses((status = 201, body = ReviewView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "already reviewed")))]
async fn submit_review(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    ids: RequestIds,
    Path(key): Path<String>,
    Json(body): Json<ReviewRequest>,
) -> ApiResult<(StatusCode, Json<ReviewView>)> {
    let spec = ReviewSpec::parse(body.rating, &body.title, &body.body).map_err(ApiError::Validation)?;
    let view = catalog
        .submit_review(
            &user,
            &key,
            body.author_name.as_deref(),
            spec,
            Some(&ids.correlation_id),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The caller's reviews in every state, newest first.
#[utoipa::path(get, path = "/api/v1/users/me/reviews", tag = "reviews", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<ReviewView>)))]
async fn my_reviews(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<ReviewView>>> {
    let user_id = user.id.to_string();
    Ok(Json(
        catalog
            .reviews(None, None, Some(&user_id), &page.parse()?, true)
            .await?,
    ))
}

/// Withdraw one of the caller's reviews.
#[utoipa::path(delete, path = "/api/v1/users/me/reviews/{id}", tag = "reviews", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = Problem)))]
async fn delete_my_review(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    catalog.delete_review(&user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminReviewParams {
    /// `pending` (default), `approved` or `rejected`.
    pub status: Option<ReviewStatus>,
    pub product_id: Option<Uuid>,
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Reviews for moderation, newest first (admin).
#[utoipa::path(get, path = "/api/v1/admin/reviews", tag = "reviews", security(("bearer" = [])), params(AdminReviewParams),
    responses((status = 200, body = Page<ReviewView>)))]
async fn admin_reviews(
    State(catalog): State<Arc<Catalog>>,
    _admin: Admin,
    Query(params): Query<AdminReviewParams>,
) -> ApiResult<Json<Page<ReviewView>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    let product = params.product_id.map(|p| p.to_string());
    let status = params.status.unwrap_or(ReviewStatus::Pending);
    Ok(Json(
        catalog
            .reviews(product.as_deref(), Some(status), None, &page, true)
            .await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerationRequest {
    /// `approved` or `rejected`.
    pub status: ReviewStatus,
    /// Why; shown to the author.
    pub note: Option<String>,
}

/// Approve or reject a review (admin); the product's rating follows.
#[utoipa::path(post, path = "/api/v1/admin/reviews/{id}/moderation", tag = "reviews", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = ModerationRequest,
    responses((status = 200, body = ReviewView), (status = 404, body = Problem)))]
async fn moderate_review(
    State(catalog): State<Arc<Catalog>>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
    Json(body): Json<ModerationRequest>,
) -> ApiResult<Json<ReviewView>> {
    Ok(Json(
        catalog
            .moderate_review(&admin, id, body.status, body.note.as_deref())
            .await?,
    ))
}

// ----- wishlist ---------------------------------------------------------------------------------

/// The caller's wishlist, newest first.
#[utoipa::path(get, path = "/api/v1/users/me/wishlist", tag = "wishlist", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<WishlistItem>)))]
async fn wishlist(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<WishlistItem>>> {
    Ok(Json(catalog.wishlist(&user, &page.parse()?).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WishlistRequest {
    /// A product id or slug.
    pub product_id: String,
}

/// Add a product to the wishlist: 201 when added, 200 when it was already there.
#[utoipa::path(post, path = "/api/v1/users/me/wishlist", tag = "wishlist", security(("bearer" = [])),
    request_body = WishlistRequest,
    responses((status = 201), (status = 200), (status = 422, body = Problem)))]
async fn add_to_wishlist(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    Json(body): Json<WishlistRequest>,
) -> ApiResult<StatusCode> {
    if body.product_id.is_empty() || body.product_id.len() > 160 {
        return Err(ApiError::validation("product_id", "is not a product in the shop"));
    }
    let added = catalog.add_to_wishlist(&user, &body.product_id).await?;
    Ok(if added { StatusCode::CREATED } else { StatusCode::OK })
}

/// Remove one product (by id or slug) from the wishlist.
#[utoipa::path(delete, path = "/api/v1/users/me/wishlist/{product}", tag = "wishlist", security(("bearer" = [])),
    params(("product" = String, Path, description = "a product id or slug")),
    responses((status = 204), (status = 404, body = Problem)))]
async fn remove_from_wishlist(
    State(catalog): State<Arc<Catalog>>,
    user: CurrentUser,
    Path(product): Path<String>,
) -> ApiResult<StatusCode> {
    if product.is_empty() || product.len() > 160 {
        return Err(ApiError::not_found("wishlist item"));
    }
    match catalog.remove_from_wishlist(&user, Some(&product)).await? {
        0 => Err(ApiError::not_found("wishlist item")),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// Empty the wishlist.
#[utoipa::path(delete, path = "/api/v1/users/me/wishlist", tag = "wishlist", security(("bearer" = [])),
    responses((status = 204)))]
async fn clear_wishlist(State(catalog): State<Arc<Catalog>>, user: CurrentUser) -> ApiResult<StatusCode> {
    catalog.remove_from_wishlist(&user, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
