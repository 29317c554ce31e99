//! The payments HTTP API: a buyer's payment for an order, the provider's webhook, the admin
//! side (payments, refunds), and — on a router of its own — the mock provider's hosted page.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use platform::auth::{Admin, CurrentUser, TokenVerifier};
use platform::error::{ApiError, ApiResult, Problem};
use platform::extract::{Json, Path, Query};
use platform::page::{Page, PageParams};
use platform::telemetry::RequestIds;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::{self, Method, PaymentStatus, RefundStatus};
use crate::mock::{self, Decision};
use crate::service::{ListFilter, PaymentView, Payments, Receipt, RefundRequest, RefundView, WebhookOutcome};

/// Routes anyone may call without a token (`METHOD /path`, a trailing `/` meaning "and below").
pub const PUBLIC_ROUTES: &[&str] = &["POST /api/v1/payments/webhooks/", "GET /psp/", "POST /psp/"];

/// Largest webhook body accepted.
pub const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

pub fn router(payments: Arc<Payments>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/payments/{order_id}", get(order_payment))
        .route(
            "/api/v1/payments/webhooks/{provider}",
            post(webhook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES)),
        )
        .route("/api/v1/admin/payments", get(list_payments))
        .route("/api/v1/admin/payments/{id}", get(get_payment))
        .route(
            "/api/v1/admin/payments/{id}/refunds",
            get(list_refunds).post(create_refund),
        )
        .layer(Extension(verifier))
        .with_state(payments)
}

#[derive(OpenApi)]
#[openapi(
    paths(order_payment, webhook, list_payments, get_payment, create_refund, list_refunds),
    components(schemas(PaymentView, Receipt, RefundView, RefundList, RefundBody, WebhookAck, WebhookOutcome, Method,
                       PaymentStatus, RefundStatus)),
    tags((name = "payments", description = "Payments for orders, provider webhooks and refunds"))
)]
pub struct PaymentsApi;

/// The payment of one of your orders (the captured one, else the latest attempt); with a
/// `receipt` once captured. Admins may read any; another user's order answers 404.
#[utoipa::path(get, path = "/api/v1/payments/{order_id}", tag = "payments", security(("bearer" = [])),
    params(("order_id" = Uuid, Path)),
    responses((status = 200, body = PaymentView), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn order_payment(
    State(payments): State<Arc<Payments>>,
    user: CurrentUser,
    Path(order_id): Path<Uuid>,
) -> ApiResult<Json<PaymentView>> {
    Ok(Json(payments.payment_for_order(order_id, &user).await?))
}

/// What the webhook did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookAck {
    pub outcome: WebhookOutcome,
}

/// A payment provider's webhook (public; authenticated by its `Mercato-Signature`:
/// `t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, 5 minutes' tolerance).
/// A repeated event id has no second effect (`duplicate`); an event for an unknown intent is
/// answered `ignored` so the provider stops retrying.
#[utoipa::path(post, path = "/api/v1/payments/webhooks/{provider}", tag = "payments",
    params(("provider" = String, Path, description = "`mock`"),
           ("Mercato-Signature" = String, Header, description = "t=<unix secs>,v1=<hex HMAC-SHA256>")),
    request_body(content = String, description = "The provider's event, as signed", content_type = "application/json"),
    responses((status = 200, body = WebhookAck),
              (status = 400, body = Problem, description = "missing or malformed signature, or not an event"),
              (status = 401, body = Problem, description = "the signature does not match or is stale"),
              (status = 404, body = Problem, description = "unknown provider")))]
async fn webhook(
    State(payments): State<Arc<Payments>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<WebhookAck>> {
    let signature = headers
        .get(domain::SIGNATURE_HEADER)
        .map(|value| value.to_str().map_err(|_| domain::SignatureError::Malformed))
        .transpose()?;
    let outcome = payments.receive_webhook(&provider, &body, signature).await?;
    Ok(Json(WebhookAck { outcome }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaymentListParams {
    pub status: Option<PaymentStatus>,
    pub order_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

/// Payments, newest first (admin).
#[utoipa::path(get, path = "/api/v1/admin/payments", tag = "payments", security(("bearer" = [])),
    params(PaymentListParams, PageParams),
    responses((status = 200, body = Page<PaymentView>), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn list_payments(
    State(payments): State<Arc<Payments>>,
    _admin: Admin,
    Query(params): Query<PaymentListParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<PaymentView>>> {
    let page = page.parse()?;
    let filter = ListFilter {
        status: params.status,
        order_id: params.order_id,
        user_id: params.user_id,
    };
    Ok(Json(payments.list(&filter, &page).await?))
}

/// One payment (admin).
#[utoipa::path(get, path = "/api/v1/admin/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = PaymentView), (status = 404, body = Problem)))]
async fn get_payment(
    State(payments): State<Arc<Payments>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<PaymentView>> {
    Ok(Json(payments.payment(id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// At least 1, at most what is still refundable.
    pub amount_minor: i64,
    /// Why, for the record and the customer.
    pub reason: Option<String>,
}

/// Refund part or all of a captured payment (admin). Requires an `Idempotency-Key` header
/// (1–255 visible ASCII characters): repeating the request with the same key and amount
/// answers the first refund (again 201, the same body) and refunds nothing more; the same key
/// with another amount is a 422. 503 with `Retry-After` when the provider is unavailable
/// (nothing was refunded; retry with the same key).
#[utoipa::path(post, path = "/api/v1/admin/payments/{id}/refunds", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("Idempotency-Key" = String, Header)), request_body = RefundBody,
    responses((status = 201, body = RefundView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "nothing was captured"),
              (status = 422, body = Problem, description = "bad amount, more than is refundable, or a reused key"),
              (status = 503, body = Problem, description = "the provider is unavailable")))]
async fn create_refund(
    State(payments): State<Arc<Payments>>,
    Admin(admin): Admin,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<RefundBody>,
) -> ApiResult<(StatusCode, Json<RefundView>)> {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::validation("Idempotency-Key", "the header is required"))?;
    let request = RefundRequest {
        amount_minor: Some(body.amount_minor),
        reason: body.reason,
        // Checked (422 when malformed) by `Payments::refund`.
        idempotency_key: key.to_owned(),
        actor: Some(admin.id.to_string()),
        correlation_id: Some(ids.correlation_id),
    };
    Ok((StatusCode::CREATED, Json(payments.refund(id, request).await?)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefundList {
    /// Oldest first.
    pub items: Vec<RefundView>,
}

/// A payment's refunds (admin).
#[utoipa::path(get, path = "/api/v1/admin/payments/{id}/refunds", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = RefundList), (status = 404, body = Problem)))]
async fn list_refunds(
    State(payments): State<Arc<Payments>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<RefundList>> {
    Ok(Json(RefundList {
        items: payments.refunds(id).await?,
    }))
}

// ----- the mock provider's hosted page ------------------------------------------------------

/// The mock provider's hosted page (public, HTML): `GET /psp/pay/{intent}` shows the amount
/// and the Approve and Decline buttons, whose form posts decide the intent once.
pub fn psp_router(payments: Arc<Payments>) -> Router {
    Router::new()
        .route("/psp/pay/{intent}", get(psp_page))
        .route("/psp/pay/{intent}/approve", post(psp_approve))
        .route("/psp/pay/{intent}/decline", post(psp_decline))
        .with_state(payments)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// An intent id as the mock makes them (`pi_` and hex); anything else names nothing.
fn plausible_intent(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("pi_") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The mock provider, if it is in use and up and `intent` looks like one of its ids; else
/// the status of the page to answer instead.
fn psp_gate<'a>(payments: &'a Payments, intent: &str) -> Result<&'a mock::MockProvider, StatusCode> {
    let mock = payments
        .mock()
        .filter(|_| plausible_intent(intent))
        .ok_or(StatusCode::NOT_FOUND)?;
    if !mock.is_available() {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(mock)
}

fn refusal_page(status: StatusCode) -> Response {
    let body = if status == StatusCode::SERVICE_UNAVAILABLE {
        mock::render_unavailable()
    } else {
        mock::render_not_found()
    };
    html(status, body)
}

async fn psp_page(State(payments): State<Arc<Payments>>, Path(intent): Path<String>) -> ApiResult<Response> {
    let mock = match psp_gate(&payments, &intent) {
        Ok(mock) => mock,
        Err(status) => return Ok(refusal_page(status)),
    };
    Ok(match mock.intent(&intent).await? {
        Some(found) => html(StatusCode::OK, mock::render_intent(&found)),
        None => html(StatusCode::NOT_FOUND, mock::render_not_found()),
    })
}

async fn psp_approve(State(payments): State<Arc<Payments>>, Path(intent): Path<String>) -> ApiResult<Response> {
    psp_decide(&payments, &intent, true).await
}

async fn psp_decline(State(payments): State<Arc<Payments>>, Path(intent): Path<String>) -> ApiResult<Response> {
    psp_decide(&payments, &intent, false).await
}

async fn psp_decide(payments: &Payments, intent: &str, approve: bool) -> ApiResult<Response> {
    let mock = match psp_gate(payments, intent) {
        Ok(mock) => mock,
        Err(status) => return Ok(refusal_page(status)),
    };
    Ok(match mock.decide(intent, approve).await? {
        Some(Decision::Decided { intent, .. }) => html(StatusCode::OK, mock::render_decided(&intent, true)),
        Some(Decision::AlreadyDecided(intent)) => html(StatusCode::CONFLICT, mock::render_decided(&intent, false)),
        None => html(StatusCode::NOT_FOUND, mock::render_not_found()),
    })
}
