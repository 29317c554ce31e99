//! The orders service's HTTP API: checkout, the customer's orders (timeline, cancel, returns),
//! sellers' view of their lines, and the admin side (orders, statuses, coupons, returns).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Router};
use platform::auth::{Admin, CurrentUser, Role, TokenVerifier};
use platform::error::{ApiError, ApiResult, Problem, PROBLEM_JSON};
use platform::extract::{Json, OptionalJson, Path, Query};
use platform::page::{Page, PageParams};
use platform::telemetry::RequestIds;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::checkout::{CheckoutRequest, CheckoutResponse};
use crate::coupons::{CouponInput, CouponView};
use crate::domain::{CouponKind, OrderStatus, ReturnStatus, Totals};
use crate::returns::{ReturnDecision, ReturnItem, ReturnLineView, ReturnRequest, ReturnView};
use crate::service::{Address, OrderItem, OrderView, Orders, SellerOrderView, Shortage, StartedPayment, TimelineView};
use crate::store::OrderFilter;

/// Routes anyone may call without a token: none (checkout needs an account).
pub const PUBLIC_ROUTES: &[&str] = &[];

pub fn router(orders: Arc<Orders>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/checkout", post(checkout))
        .route("/api/v1/orders", get(my_orders))
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/orders/{id}/timeline", get(timeline))
        .route("/api/v1/orders/{id}/events", get(order_events))
        .route("/api/v1/admin/orders/live", get(admin_live_orders))
        .route("/api/v1/orders/{id}/cancel", post(cancel))
        .route("/api/v1/orders/{id}/returns", get(order_returns).post(request_return))
        .route("/api/v1/seller/orders", get(seller_orders))
        .route("/api/v1/admin/orders", get(admin_orders))
        .route("/api/v1/admin/orders/{id}", get(admin_order))
        .route("/api/v1/admin/orders/{id}/status", patch(set_status))
        .route("/api/v1/admin/coupons", get(list_coupons).post(create_coupon))
        .route(
            "/api/v1/admin/coupons/{id}",
            get(get_coupon).put(update_coupon).delete(delete_coupon),
        )
        .route("/api/v1/admin/returns", get(list_returns))
        .route("/api/v1/admin/returns/{id}", get(get_return))
        .route("/api/v1/admin/returns/{id}/approve", post(approve_return))
        .route("/api/v1/admin/returns/{id}/reject", post(reject_return))
        .route("/api/v1/admin/returns/{id}/receive", post(receive_return))
        .layer(Extension(verifier))
        .with_state(orders)
}

#[derive(OpenApi)]
#[openapi(
    paths(checkout, my_orders, get_order, timeline, order_events, admin_live_orders, cancel, request_return, order_returns, seller_orders,
          admin_orders, admin_order, set_status, list_coupons, create_coupon, get_coupon, update_coupon,
          delete_coupon, list_returns, get_return, approve_return, reject_return, receive_return),
    components(schemas(CheckoutRequest, CheckoutResponse, Address, OrderView, OrderItem, OrderStatus, Totals,
                       StartedPayment, Shortage, TimelineView, SellerOrderView, CancelRequest, StatusRequest,
                       CouponInput, CouponView, CouponKind, ReturnRequest, ReturnItem, ReturnView,
                       ReturnLineView, ReturnStatus, DecisionRequest)),
    tags((name = "orders", description = "Checkout, orders, coupons and returns"))
)]
pub struct OrdersApi;

/// The `Idempotency-Key` header, if present and text.
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| {
            ApiError::validation(
                "Idempotency-Key",
                "is required: 1–255 visible ASCII characters, unique per checkout",
            )
        })
}

/// Place an order from the caller's cart. Requires `Idempotency-Key`: the same key and body
/// replay the stored answer (with `Idempotency-Replayed: true`), the same key with another body
/// is a 422, and a concurrent duplicate waits for the first. Prices, totals and statuses are
/// never taken from the client.
#[utoipa::path(post, path = "/api/v1/checkout", tag = "orders", security(("bearer" = [])),
    request_body = CheckoutRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per checkout attempt; kept 24 h")),
    responses((status = 201, body = CheckoutResponse),
              (status = 409, body = Problem, description = "stock short (the order is cancelled and named), a coupon used up, a SKU no longer sold, or the key still in progress"),
              (status = 422, body = Problem, description = "invalid input, empty cart, or the key reused with another body"),
              (status = 503, body = Problem, description = "payments or inventory down; nothing is kept, retry after `Retry-After`")))]
async fn checkout(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    ids: RequestIds,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    if !body.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let outcome = orders.checkout(user.id, &key, body, Some(&ids.correlation_id)).await?;
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(outcome.body)).into_response();
    if status.is_client_error() || status.is_server_error() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    }
    if outcome.replayed {
        response
            .headers_mut()
            .insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<OrderView>)))]
async fn my_orders(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<OrderView>>> {
    let filter = OrderFilter {
        user_id: Some(user.id.to_string()),
        ..OrderFilter::default()
    };
    Ok(Json(orders.list(&filter, &page.parse()?).await?))
}

/// One order (its owner or an admin; anyone else gets 404).
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = OrderView), (status = 404, body = Problem)))]
async fn get_order(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    Ok(Json(orders.order_for(id, user.id, user.is_admin()).await?))
}

/// Every change of an order, oldest first, with time, actor and reason.
#[utoipa::path(get, path = "/api/v1/orders/{id}/timeline", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = Vec<TimelineView>), (status = 404, body = Problem)))]
async fn timeline(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<TimelineView>>> {
    Ok(Json(orders.timeline(id, user.id, user.is_admin()).await?))
}

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok())
}

/// The order's changes as Server-Sent Events (its owner or an admin): every timeline entry
/// (`event:` is its kind: `created`, `status`, `payment`, `shipment`, …; `id:` its sequence
/// number), then each new one as it happens. Reconnect with `Last-Event-ID` to resume after
/// the last one seen. The stream ends when the order reaches a final status (cancelled,
/// payment failed, refunded) and after 15 minutes; a reconnect to a final order with nothing
/// new is a 204. At most 5 streams per user at once (429).
#[utoipa::path(get, path = "/api/v1/orders/{id}/events", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path),
           ("Last-Event-ID" = Option<String>, Header, description = "resume after this entry")),
    responses((status = 200, content_type = "text/event-stream", description = "a stream of timeline entries"),
              (status = 204, description = "the order is final and nothing came after `Last-Event-ID`"),
              (status = 404, body = Problem), (status = 422, body = Problem),
              (status = 429, body = Problem, description = "too many open streams")))]
async fn order_events(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let after = crate::live::timeline_position(last_event_id(&headers))?;
    match orders.follow(id, user.id, user.is_admin(), after).await? {
        Some(stream) => Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// New orders as they are placed, as Server-Sent Events (`event: order`, `id:` the order id).
/// Reconnect with `Last-Event-ID` to receive the orders placed since (up to a hundred).
#[utoipa::path(get, path = "/api/v1/admin/orders/live", tag = "orders", security(("bearer" = [])),
    params(("Last-Event-ID" = Option<String>, Header, description = "resume after this order")),
    responses((status = 200, content_type = "text/event-stream", description = "a stream of new orders"),
              (status = 422, body = Problem)))]
async fn admin_live_orders(
    State(orders): State<Arc<Orders>>,
    Admin(admin): Admin,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let after = crate::live::order_position(last_event_id(&headers))?;
    let stream = orders.new_orders(admin.id, after).await?;
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Cancel an order before it ships: the stock goes back, a captured payment is refunded.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = CancelRequest,
    responses((status = 200, body = OrderView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "already shipped or closed")))]
async fn cancel(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<CancelRequest>,
) -> ApiResult<Json<OrderView>> {
    let reason = body.and_then(|b| b.reason);
    Ok(Json(
        orders
            .cancel(
                id,
                user.id,
                user.is_admin(),
                reason.as_deref(),
                Some(&ids.correlation_id),
            )
            .await?,
    ))
}

/// Ask to return delivered items (within the return window).
#[utoipa::path(post, path = "/api/v1/orders/{id}/returns", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = ReturnRequest,
    responses((status = 201, body = ReturnView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "not delivered, or a return already open"),
              (status = 422, body = Problem, description = "invalid items, or the window has passed")))]
async fn request_return(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    Json(body): Json<ReturnRequest>,
) -> ApiResult<(StatusCode, Json<ReturnView>)> {
    let view = orders
        .request_return(id, user.id, &body, Some(&ids.correlation_id))
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// An order's returns.
#[utoipa::path(get, path = "/api/v1/orders/{id}/returns", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = Vec<ReturnView>), (status = 404, body = Problem)))]
async fn order_returns(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<ReturnView>>> {
    Ok(Json(orders.returns_of(id, user.id, user.is_admin()).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SellerParams {
    /// Admins only: whose lines to show.
    pub seller_id: Option<Uuid>,
}

/// The orders holding the caller's products, with only the caller's lines (sellers; admins
/// name a seller).
#[utoipa::path(get, path = "/api/v1/seller/orders", tag = "orders", security(("bearer" = [])),
    params(SellerParams, PageParams), responses((status = 200, body = Page<SellerOrderView>), (status = 403, body = Problem)))]
async fn seller_orders(
    State(orders): State<Arc<Orders>>,
    user: CurrentUser,
    Query(params): Query<SellerParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<SellerOrderView>>> {
    user.require(&[Role::Seller, Role::Admin])?;
    let seller = match (user.is_admin(), params.seller_id) {
        (true, Some(seller)) => seller,
        (true, None) => return Err(ApiError::validation("seller_id", "is required for admins")),
        (false, _) => user.id,
    };
    Ok(Json(orders.seller_orders(seller, &page.parse()?).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminOrderParams {
    pub status: Option<String>,
    /// The customer's user id.
    pub customer: Option<Uuid>,
    /// The customer's email, exactly (any case).
    pub email: Option<String>,
    /// Placed at or after this RFC 3339 instant.
    pub from: Option<String>,
    /// Placed before this RFC 3339 instant.
    pub to: Option<String>,
}

fn instant(raw: Option<&str>, field: &str) -> Result<Option<i64>, ApiError> {
    raw.map(|raw| {
        platform::clock::parse_rfc3339(raw).ok_or_else(|| ApiError::validation(field, "must be an RFC 3339 instant"))
    })
    .transpose()
}

/// Every order, newest first, filtered (admin).
#[utoipa::path(get, path = "/api/v1/admin/orders", tag = "orders", security(("bearer" = [])),
    params(AdminOrderParams, PageParams), responses((status = 200, body = Page<OrderView>)))]
async fn admin_orders(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    Query(params): Query<AdminOrderParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<OrderView>>> {
    let status = match params.status.as_deref() {
        Some(raw) => Some(
            OrderStatus::parse(raw)
                .ok_or_else(|| ApiError::validation("status", "is not an order status"))?
                .as_str()
                .to_owned(),
        ),
        None => None,
    };
    let filter = OrderFilter {
        user_id: params.customer.map(|c| c.to_string()),
        status,
        customer_email: params.email.map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()),
        created_from: instant(params.from.as_deref(), "from")?,
        created_to: instant(params.to.as_deref(), "to")?,
        seller_id: None,
    };
    Ok(Json(orders.list(&filter, &page.parse()?).await?))
}

/// One order (admin).
#[utoipa::path(get, path = "/api/v1/admin/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = OrderView), (status = 404, body = Problem)))]
async fn admin_order(
    State(orders): State<Arc<Orders>>,
    admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    Ok(Json(orders.order_for(id, admin.0.id, true).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StatusRequest {
    /// `processing`, `shipped`, `out_for_delivery`, `delivered` or `cancelled`.
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The version you read (or `If-Match`); optional.
    #[serde(default)]
    pub version: Option<i64>,
}

/// Move an order to a fulfilment status (admin); the state machine decides whether it may.
#[utoipa::path(patch, path = "/api/v1/admin/orders/{id}/status", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = StatusRequest,
    responses((status = 200, body = OrderView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "not allowed from the current status, or a stale version")))]
async fn set_status(
    State(orders): State<Arc<Orders>>,
    admin: Admin,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Json(body): Json<StatusRequest>,
) -> ApiResult<Json<OrderView>> {
    let version = if body.version.is_some() || headers.contains_key(header::IF_MATCH) {
        Some(platform::extract::expected_version(body.version, &headers)?)
    } else {
        None
    };
    Ok(Json(
        orders
            .admin_set_status(
                id,
                admin.0.id,
                &body.status,
                body.reason.as_deref(),
                version,
                Some(&ids.correlation_id),
            )
            .await?,
    ))
}

/// Coupons by code (admin).
#[utoipa::path(get, path = "/api/v1/admin/coupons", tag = "orders", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<CouponView>)))]
async fn list_coupons(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<CouponView>>> {
    Ok(Json(orders.coupons(&page.parse()?).await?))
}

/// Create a coupon (admin).
#[utoipa::path(post, path = "/api/v1/admin/coupons", tag = "orders", security(("bearer" = [])),
    request_body = CouponInput,
    responses((status = 201, body = CouponView), (status = 409, body = Problem, description = "the code exists")))]
async fn create_coupon(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    Json(body): Json<CouponInput>,
) -> ApiResult<(StatusCode, Json<CouponView>)> {
    Ok((StatusCode::CREATED, Json(orders.create_coupon(&body).await?)))
}

/// One coupon with its use count (admin).
#[utoipa::path(get, path = "/api/v1/admin/coupons/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = CouponView), (status = 404, body = Problem)))]
async fn get_coupon(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<CouponView>> {
    Ok(Json(orders.coupon(id).await?))
}

/// Replace a coupon's terms (admin; `version` or `If-Match` required).
#[utoipa::path(put, path = "/api/v1/admin/coupons/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = CouponInput,
    responses((status = 200, body = CouponView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "stale version")))]
async fn update_coupon(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Json(body): Json<CouponInput>,
) -> ApiResult<Json<CouponView>> {
    let version = platform::extract::expected_version(body.version, &headers)?;
    Ok(Json(orders.update_coupon(id, &body, version).await?))
}

/// Delete a coupon (admin). Orders keep the code they used.
#[utoipa::path(delete, path = "/api/v1/admin/coupons/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = Problem)))]
async fn delete_coupon(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    orders.delete_coupon(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReturnListParams {
    pub status: Option<String>,
}

/// Returns, newest first (admin).
#[utoipa::path(get, path = "/api/v1/admin/returns", tag = "orders", security(("bearer" = [])),
    params(ReturnListParams, PageParams), responses((status = 200, body = Page<ReturnView>)))]
async fn list_returns(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    Query(params): Query<ReturnListParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<ReturnView>>> {
    Ok(Json(
        orders.list_returns(params.status.as_deref(), &page.parse()?).await?,
    ))
}

/// One return (admin).
#[utoipa::path(get, path = "/api/v1/admin/returns/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = ReturnView), (status = 404, body = Problem)))]
async fn get_return(
    State(orders): State<Arc<Orders>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ReturnView>> {
    Ok(Json(orders.return_by_id(id).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DecisionRequest {
    #[serde(default)]
    pub note: Option<String>,
}

async fn decide(
    orders: &Orders,
    admin: &Admin,
    ids: &RequestIds,
    id: Uuid,
    decision: ReturnDecision,
    body: Option<DecisionRequest>,
) -> ApiResult<Json<ReturnView>> {
    let note = body.and_then(|b| b.note);
    Ok(Json(
        orders
            .decide_return(id, admin.0.id, decision, note.as_deref(), Some(&ids.correlation_id))
            .await?,
    ))
}

/// Approve a requested return (admin).
#[utoipa::path(post, path = "/api/v1/admin/returns/{id}/approve", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = DecisionRequest,
    responses((status = 200, body = ReturnView), (status = 409, body = Problem)))]
async fn approve_return(
    State(orders): State<Arc<Orders>>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<DecisionRequest>,
) -> ApiResult<Json<ReturnView>> {
    decide(&orders, &admin, &ids, id, ReturnDecision::Approve, body).await
}

/// Reject a return (admin); the order is delivered again.
#[utoipa::path(post, path = "/api/v1/admin/returns/{id}/reject", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = DecisionRequest,
    responses((status = 200, body = ReturnView), (status = 409, body = Problem)))]
async fn reject_return(
    State(orders): State<Arc<Orders>>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<DecisionRequest>,
) -> ApiResult<Json<ReturnView>> {
    decide(&orders, &admin, &ids, id, ReturnDecision::Reject, body).await
}

/// Mark an approved return's items received (admin): they are restocked and refunded.
#[utoipa::path(post, path = "/api/v1/admin/returns/{id}/receive", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = DecisionRequest,
    responses((status = 200, body = ReturnView), (status = 409, body = Problem),
              (status = 503, body = Problem, description = "the refund could not go out; receive again to retry")))]
async fn receive_return(
    State(orders): State<Arc<Orders>>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<DecisionRequest>,
) -> ApiResult<Json<ReturnView>> {
    decide(&orders, &admin, &ids, id, ReturnDecision::Receive, body).await
}
