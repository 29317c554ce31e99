//! The inventory's HTTP API: public availability, and the admin side (levels, adjustments, the
//! ledger, reservations).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Router};
use platform::auth::{Admin, TokenVerifier};
use platform::error::{ApiError, ApiResult, Problem};
use platform::extract::{Json, Path, Query};
use platform::page::{Page, PageParams};
use platform::telemetry::RequestIds;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::domain::{Line, ReleaseReason, ReservationStatus};
use crate::service::{parse_sku, Context, Inventory, Reservation, Shortage, StockChange, StockView};
use crate::store::{LedgerRow, StockFilter};

/// Routes anyone may call without a token (`METHOD /path`, a trailing `/` meaning "and below").
pub const PUBLIC_ROUTES: &[&str] = &["GET /api/v1/inventory", "GET /api/v1/inventory/"];

/// Most SKUs one bulk availability request may name.
pub const MAX_BULK_SKUS: usize = 100;

pub fn router(inventory: Arc<Inventory>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/inventory", get(bulk_availability))
        .route("/api/v1/inventory/{sku}", get(availability))
        .route("/api/v1/admin/inventory", get(list_stock))
        .route("/api/v1/admin/inventory/{sku}", get(get_stock).put(set_stock))
        .route("/api/v1/admin/inventory/{sku}/adjust", post(adjust_stock))
        .route("/api/v1/admin/inventory/{sku}/ledger", get(ledger))
        .route("/api/v1/admin/reservations", get(list_reservations))
        .route("/api/v1/admin/reservations/{order_id}", get(get_reservation))
        .route(
            "/api/v1/admin/reservations/{order_id}/release",
            post(release_reservation),
        )
        .layer(Extension(verifier))
        .with_state(inventory)
}

#[derive(OpenApi)]
#[openapi(
    paths(availability, bulk_availability, list_stock, get_stock, set_stock, adjust_stock, ledger,
          list_reservations, get_reservation, release_reservation),
    components(schemas(Availability, AvailabilityList, StockView, SetStockRequest, AdjustStockRequest, LedgerEntry,
                       Reservation, Line, ReservationStatus, Shortage, ReleaseReason)),
    tags((name = "inventory", description = "Stock levels, the stock ledger and reservations"))
)]
pub struct InventoryApi;

/// What a shopper may know of a SKU's stock.
#[derive(Debug, Serialize, ToSchema)]
pub struct Availability {
    pub sku: String,
    pub available: i64,
    pub in_stock: bool,
}

impl From<&StockView> for Availability {
    fn from(stock: &StockView) -> Self {
        let available = stock.sellable();
        Self {
            sku: stock.sku.clone(),
            available,
            in_stock: available > 0,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AvailabilityList {
    /// The known SKUs among those asked, in SKU order; unknown SKUs are left out.
    pub items: Vec<Availability>,
}

/// A SKU's availability.
#[utoipa::path(get, path = "/api/v1/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)),
    responses((status = 200, body = Availability), (status = 404, body = Problem)))]
async fn availability(
    State(inventory): State<Arc<Inventory>>,
    Path(sku): Path<String>,
) -> ApiResult<Json<Availability>> {
    Ok(Json(Availability::from(&inventory.stock(&sku).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BulkParams {
    /// Up to 100 SKUs separated by commas.
    pub skus: String,
}

/// The availability of several SKUs at once.
#[utoipa::path(get, path = "/api/v1/inventory", tag = "inventory", params(BulkParams),
    responses((status = 200, body = AvailabilityList), (status = 422, body = Problem)))]
async fn bulk_availability(
    State(inventory): State<Arc<Inventory>>,
    Query(params): Query<BulkParams>,
) -> ApiResult<Json<AvailabilityList>> {
    let mut skus = Vec::new();
    for raw in params.skus.split(',').filter(|s| !s.trim().is_empty()) {
        let sku = parse_sku(raw).map_err(|_| ApiError::validation("skus", format!("`{raw}` is not a SKU code")))?;
        if !skus.contains(&sku) {
            skus.push(sku);
        }
    }
    if skus.is_empty() || skus.len() > MAX_BULK_SKUS {
        return Err(ApiError::validation(
            "skus",
            format!("must name 1–{MAX_BULK_SKUS} SKUs"),
        ));
    }
    let items = inventory.stocks(&skus).await?.iter().map(Availability::from).collect();
    Ok(Json(AvailabilityList { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StockListParams {
    /// Only SKUs at or below their low-stock threshold.
    #[serde(default)]
    pub low_stock: bool,
    /// Only the SKUs of this product.
    pub product_id: Option<String>,
    /// Only SKUs starting with this text.
    pub sku_prefix: Option<String>,
}

/// Stock levels, in SKU order (admin).
#[utoipa::path(get, path = "/api/v1/admin/inventory", tag = "inventory", security(("bearer" = [])),
    params(StockListParams, PageParams), responses((status = 200, body = Page<StockView>)))]
async fn list_stock(
    State(inventory): State<Arc<Inventory>>,
    _admin: Admin,
    Query(params): Query<StockListParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<StockView>>> {
    let page = page.parse()?;
    let sku_prefix = match params.sku_prefix.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        Some(prefix) => {
            Some(parse_sku(prefix).map_err(|_| ApiError::validation("sku_prefix", "is not part of a SKU code"))?)
        }
        None => None,
    };
    let filter = StockFilter {
        low_stock: params.low_stock,
        product_id: params.product_id,
        sku_prefix,
    };
    let rows = crate::store::list_stock(
        inventory.db().reader(),
        &filter,
        page.after.as_deref(),
        page.fetch_limit(),
    )
    .await?;
    let rows = rows.into_iter().map(StockView::from).collect();
    Ok(Json(Page::from_rows(rows, &page, |s: &StockView| s.sku.clone())))
}

/// One SKU's levels (admin).
#[utoipa::path(get, path = "/api/v1/admin/inventory/{sku}", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path)), responses((status = 200, body = StockView), (status = 404, body = Problem)))]
async fn get_stock(
    State(inventory): State<Arc<Inventory>>,
    _admin: Admin,
    Path(sku): Path<String>,
) -> ApiResult<Json<StockView>> {
    Ok(Json(inventory.stock(&sku).await?))
}

/// The version an edit expects, when the caller names one (body or `If-Match`); stock edits
/// may also go without one.
fn optional_version(explicit: Option<i64>, headers: &http::HeaderMap) -> Result<Option<i64>, ApiError> {
    if explicit.is_none() && !headers.contains_key(http::header::IF_MATCH) {
        return Ok(None);
    }
    platform::extract::expected_version(explicit, headers).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStockRequest {
    /// Units on hand; must cover what is reserved.
    pub on_hand: i64,
    /// Available at or below this alerts operations once per dip (0 = never).
    pub low_stock_threshold: Option<i64>,
    /// The version you read; a stale one is refused with 409. `If-Match` works too.
    pub version: Option<i64>,
}

/// Set a SKU's stock level (admin). Recorded in the ledger.
#[utoipa::path(put, path = "/api/v1/admin/inventory/{sku}", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path)), request_body = SetStockRequest,
    responses((status = 200, body = StockView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "stale version, or below what is reserved")))]
async fn set_stock(
    State(inventory): State<Arc<Inventory>>,
    Admin(admin): Admin,
    ids: RequestIds,
    Path(sku): Path<String>,
    headers: http::HeaderMap,
    Json(body): Json<SetStockRequest>,
) -> ApiResult<Json<StockView>> {
    let version = optional_version(body.version, &headers)?;
    let actor = admin.id.to_string();
    let change = StockChange::Set {
        on_hand: body.on_hand,
        threshold: body.low_stock_threshold,
    };
    let ctx = Context {
        actor: Some(&actor),
        correlation_id: Some(&ids.correlation_id),
    };
    Ok(Json(inventory.change_stock(&sku, change, version, ctx).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStockRequest {
    /// Units to add (positive) or remove (negative).
    pub delta: i64,
    /// Why, for the ledger: "damaged in transit", "stock count".
    pub reason: String,
    pub version: Option<i64>,
}

/// Adjust a SKU's stock by a delta with a reason (admin).
#[utoipa::path(post, path = "/api/v1/admin/inventory/{sku}/adjust", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path)), request_body = AdjustStockRequest,
    responses((status = 200, body = StockView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "stale version, or below what is reserved")))]
async fn adjust_stock(
    State(inventory): State<Arc<Inventory>>,
    Admin(admin): Admin,
    ids: RequestIds,
    Path(sku): Path<String>,
    headers: http::HeaderMap,
    Json(body): Json<AdjustStockRequest>,
) -> ApiResult<Json<StockView>> {
    let version = optional_version(body.version, &headers)?;
    let actor = admin.id.to_string();
    let change = StockChange::Adjust {
        delta: body.delta,
        reason: body.reason,
    };
    let ctx = Context {
        actor: Some(&actor),
        correlation_id: Some(&ids.correlation_id),
    };
    Ok(Json(inventory.change_stock(&sku, change, version, ctx).await?))
}

/// One movement of stock.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub sku: String,
    /// `set`, `adjust`, `reserve`, `commit`, `release` or `restock`.
    pub kind: String,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The order a reservation movement belongs to, or a restock's reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// RFC 3339.
    pub at: String,
}

impl From<LedgerRow> for LedgerEntry {
    fn from(row: LedgerRow) -> Self {
        Self {
            id: row.id,
            sku: row.sku,
            kind: row.kind,
            on_hand_delta: row.on_hand_delta,
            reserved_delta: row.reserved_delta,
            on_hand_after: row.on_hand_after,
            reserved_after: row.reserved_after,
            reason: row.reason,
            reference: row.reference,
            actor: row.actor,
            at: platform::clock::rfc3339(row.created_at),
        }
    }
}

/// A SKU's stock ledger, newest first (admin).
#[utoipa::path(get, path = "/api/v1/admin/inventory/{sku}/ledger", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path), PageParams), responses((status = 200, body = Page<LedgerEntry>), (status = 404, body = Problem)))]
async fn ledger(
    State(inventory): State<Arc<Inventory>>,
    _admin: Admin,
    Path(sku): Path<String>,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<LedgerEntry>>> {
    let page = params.parse()?;
    let before = match &page.after {
        Some(raw) => Some(
            raw.parse::<i64>()
                .map_err(|_| ApiError::validation("cursor", "is not a valid cursor"))?,
        ),
        None => None,
    };
    let rows = inventory.ledger(&sku, before, page.fetch_limit()).await?;
    let rows = rows.into_iter().map(LedgerEntry::from).collect();
    Ok(Json(Page::from_rows(rows, &page, |e: &LedgerEntry| e.id.to_string())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReservationListParams {
    pub status: Option<ReservationStatus>,
}

/// Reservations, newest first (admin).
#[utoipa::path(get, path = "/api/v1/admin/reservations", tag = "inventory", security(("bearer" = [])),
    params(ReservationListParams, PageParams), responses((status = 200, body = Page<Reservation>)))]
async fn list_reservations(
    State(inventory): State<Arc<Inventory>>,
    _admin: Admin,
    Query(params): Query<ReservationListParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Reservation>>> {
    let page = page.parse()?;
    let rows = inventory
        .reservations(params.status, page.after.as_deref(), page.fetch_limit())
        .await?;
    Ok(Json(Page::from_rows(rows, &page, |r: &Reservation| r.id.clone())))
}

/// One order's reservation (admin).
#[utoipa::path(get, path = "/api/v1/admin/reservations/{order_id}", tag = "inventory", security(("bearer" = [])),
    params(("order_id" = String, Path)), responses((status = 200, body = Reservation), (status = 404, body = Problem)))]
async fn get_reservation(
    State(inventory): State<Arc<Inventory>>,
    _admin: Admin,
    Path(order_id): Path<String>,
) -> ApiResult<Json<Reservation>> {
    Ok(Json(inventory.reservation(&order_id).await?))
}

/// Release an order's reservation by hand (admin); releasing a released one changes nothing.
#[utoipa::path(post, path = "/api/v1/admin/reservations/{order_id}/release", tag = "inventory", security(("bearer" = [])),
    params(("order_id" = String, Path)),
    responses((status = 200, body = Reservation), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "the reservation was committed")))]
async fn release_reservation(
    State(inventory): State<Arc<Inventory>>,
    Admin(admin): Admin,
    ids: RequestIds,
    Path(order_id): Path<String>,
) -> ApiResult<Json<Reservation>> {
    let actor = admin.id.to_string();
    let ctx = Context {
        actor: Some(&actor),
        correlation_id: Some(&ids.correlation_id),
    };
    Ok(Json(inventory.release(&order_id, ReleaseReason::Admin, ctx).await?))
}
