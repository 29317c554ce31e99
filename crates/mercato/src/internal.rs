//! The `/internal/v1` routes: what one service answers another over HTTP in the distributed
//! mode. Each route calls the same in-process adapter (`crate::local`) the all-in-one mode
//! calls directly, so both modes share one meaning; `crate::peers` is the calling side.
//!
//! Only a caller holding the cluster's service token gets through (`X-Service-Token`, compared
//! in constant time). An end user's token is refused, and the gateway never proxies
//! `/internal`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use cart::Cart;
use catalog::Catalog;
use identity::Identity;
use inventory::Inventory;
use orders::service::{Carts, Customers, Payments as _, Stock as _, StockRefusal};
use platform::ApiError;
use serde::Deserialize;
use uuid::Uuid;

use crate::local::{CartLines, IdentityCustomers, InventoryReservations, PaymentsForOrders};

/// The header a service presents its token in.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

/// The bodies of the internal routes, shared by the routes and their callers.
pub mod wire {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    /// A SKU as the catalog sells it now.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Sku {
        pub sku: String,
        pub product_id: String,
        pub name: String,
        pub slug: String,
        pub seller_id: String,
        pub image: Option<String>,
        pub price: i64,
        pub currency: String,
        pub on_sale: bool,
    }

    impl From<catalog::service::SkuDetails> for Sku {
        fn from(d: catalog::service::SkuDetails) -> Self {
            Self {
                sku: d.sku,
                product_id: d.product_id,
                name: d.name,
                slug: d.slug,
                seller_id: d.seller_id,
                image: d.image,
                price: d.price,
                currency: d.currency,
                on_sale: d.on_sale,
            }
        }
    }

    impl From<Sku> for cart::service::SkuInfo {
        fn from(d: Sku) -> Self {
            Self {
                sku: d.sku,
                product_id: d.product_id,
                name: d.name,
                slug: d.slug,
                image: d.image,
                price: d.price,
                currency: d.currency,
                active: d.on_sale,
            }
        }
    }

    impl From<Sku> for orders::service::PricedSku {
        fn from(d: Sku) -> Self {
            Self {
                sku: d.sku,
                product_id: d.product_id,
                seller_id: d.seller_id,
                name: d.name,
                price: d.price,
                currency: d.currency,
                on_sale: d.on_sale,
            }
        }
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Line {
        pub sku: String,
        pub quantity: i64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Reserve {
        pub lines: Vec<Line>,
        pub correlation_id: Option<String>,
    }

    /// A user as other services see them.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct User {
        pub email: String,
        pub full_name: String,
        pub role: String,
        pub active: bool,
    }

    impl From<identity::store::UserRow> for User {
        fn from(row: identity::store::UserRow) -> Self {
            Self {
                email: row.email,
                full_name: row.full_name,
                role: row.role,
                active: row.disabled_at.is_none(),
            }
        }
    }

    impl From<User> for delivery::DirectoryUser {
        fn from(u: User) -> Self {
            Self {
                full_name: u.full_name,
                role: u.role,
                active: u.active,
            }
        }
    }

    impl From<User> for notifications::Contact {
        fn from(u: User) -> Self {
            Self {
                email: u.email,
                full_name: u.full_name,
            }
        }
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct StartPayment {
        pub order_number: String,
        pub user_id: Uuid,
        pub method: String,
        pub amount_minor: i64,
        pub currency: String,
        pub correlation_id: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Refund {
        pub amount_minor: Option<i64>,
        pub reason: String,
        pub correlation_id: Option<String>,
    }
}

/// Refuses every request without the service token.
pub fn guard(routes: Router, token: &str) -> Router {
    let token: Arc<str> = Arc::from(token);
    routes.layer(middleware::from_fn_with_state(token, check_token))
}

async fn check_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(SERVICE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if presented.is_empty() || !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        return ApiError::Unauthorized("internal routes answer services only".to_owned()).into_response();
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `?skus=A-1,B-2`
#[derive(Deserialize)]
struct SkuList {
    #[serde(default)]
    skus: String,
}

impl SkuList {
    fn parse(&self) -> Result<Vec<String>, ApiError> {
        let skus: Vec<String> = self
            .skus
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if skus.len() > 500 {
            return Err(ApiError::validation("skus", "at most 500 at a time"));
        }
        Ok(skus)
    }
}

fn failed(err: &anyhow::Error) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("{err:#}"))
}

// ----- identity ------------------------------------------------------------------------------

pub fn identity(identity: Arc<Identity>) -> Router {
    Router::new()
        .route("/internal/v1/users/{id}", get(user))
        .route("/internal/v1/users/{id}/addresses/{address}", get(address))
        .with_state(identity)
}

async fn user(State(identity): State<Arc<Identity>>, Path(id): Path<Uuid>) -> Result<Json<wire::User>, ApiError> {
    Ok(Json(identity.user(id).await?.into()))
}

async fn address(
    State(identity): State<Arc<Identity>>,
    Path((user, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<orders::service::Address>, ApiError> {
    match IdentityCustomers(identity).address(user, id).await {
        Ok(Some(address)) => Ok(Json(address)),
        Ok(None) => Err(ApiError::not_found("address")),
        Err(err) => Err(failed(&err)),
    }
}

// ----- catalog -------------------------------------------------------------------------------

pub fn catalog(catalog: Arc<Catalog>) -> Router {
    Router::new()
        .route("/internal/v1/catalog/skus", get(skus))
        .with_state(catalog)
}

async fn skus(
    State(catalog): State<Arc<Catalog>>,
    Query(list): Query<SkuList>,
) -> Result<Json<Vec<wire::Sku>>, ApiError> {
    let details = catalog.sku_details(&list.parse()?).await?;
    Ok(Json(details.into_iter().map(wire::Sku::from).collect()))
}

// ----- inventory -----------------------------------------------------------------------------

pub fn inventory(inventory: Arc<Inventory>) -> Router {
    Router::new()
        .route("/internal/v1/inventory/available", get(available))
        .route(
            "/internal/v1/inventory/reservations/{order_id}",
            put(reserve).delete(release),
        )
        .with_state(inventory)
}

async fn available(
    State(inventory): State<Arc<Inventory>>,
    Query(list): Query<SkuList>,
) -> Result<Json<HashMap<String, i64>>, ApiError> {
    use cart::service::Stock;
    crate::local::InventoryStock(inventory)
        .available(&list.parse()?)
        .await
        .map(Json)
        .map_err(|err| failed(&err))
}

/// Idempotent per order (a second call answers the first reservation), hence `PUT`.
async fn reserve(
    State(inventory): State<Arc<Inventory>>,
    Path(order_id): Path<Uuid>,
    Json(body): Json<wire::Reserve>,
) -> Result<StatusCode, ApiError> {
    let lines: Vec<orders::service::CartLine> = body
        .lines
        .into_iter()
        .map(|l| orders::service::CartLine {
            sku: l.sku,
            quantity: l.quantity,
        })
        .collect();
    match InventoryReservations(inventory)
        .reserve(order_id, &lines, body.correlation_id.as_deref())
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(StockRefusal::Short(short)) => Err(ApiError::ConflictWith {
            message: "some lines are short of stock".to_owned(),
            members: serde_json::json!({ "short": short }),
        }),
        Err(StockRefusal::Failed(err)) => Err(failed(&err)),
    }
}

#[derive(Deserialize)]
struct Correlation {
    correlation_id: Option<String>,
}

async fn release(
    State(inventory): State<Arc<Inventory>>,
    Path(order_id): Path<Uuid>,
    Query(q): Query<Correlation>,
) -> Result<StatusCode, ApiError> {
    InventoryReservations(inventory)
        .release(order_id, q.correlation_id.as_deref())
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(|err| failed(&err))
}

// ----- cart ----------------------------------------------------------------------------------

pub fn cart(cart: Arc<Cart>) -> Router {
    Router::new()
        .route("/internal/v1/carts/users/{user_id}/holds/{order_id}", put(hold_cart))
        .route("/internal/v1/carts/holds/{order_id}", delete(release_cart_hold))
        .with_state(cart)
}

/// What checkout buys: the cart's free units, held for the order (idempotent per order).
async fn hold_cart(
    State(cart): State<Arc<Cart>>,
    Path((user, order_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Vec<wire::Line>>, ApiError> {
    let lines = CartLines(cart).hold(user, order_id).await.map_err(|err| failed(&err))?;
    Ok(Json(
        lines
            .into_iter()
            .map(|l| wire::Line {
                sku: l.sku,
                quantity: l.quantity,
            })
            .collect(),
    ))
}

async fn release_cart_hold(State(cart): State<Arc<Cart>>, Path(order_id): Path<Uuid>) -> Result<StatusCode, ApiError> {
    CartLines(cart)
        .release(order_id)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(|err| failed(&err))
}

// ----- payments ------------------------------------------------------------------------------

pub fn payments(payments: Arc<payments::Payments>) -> Router {
    Router::new()
        .route("/internal/v1/payments/orders/{order_id}", put(start_payment))
        .route("/internal/v1/payments/orders/{order_id}/refunds/{key}", put(refund))
        .with_state(payments)
}

/// Idempotent per order: while the order has a live payment, that one is answered.
async fn start_payment(
    State(payments): State<Arc<payments::Payments>>,
    Path(order_id): Path<Uuid>,
    Json(body): Json<wire::StartPayment>,
) -> Result<Json<orders::service::StartedPayment>, ApiError> {
    PaymentsForOrders(payments)
        .start(orders::service::StartPayment {
            order_id,
            order_number: body.order_number,
            user_id: body.user_id,
            method: body.method,
            amount_minor: body.amount_minor,
            currency: body.currency,
            correlation_id: body.correlation_id,
        })
        .await
        .map(Json)
}

/// Idempotent per key: the same key answers the first refund made with it.
async fn refund(
    State(payments): State<Arc<payments::Payments>>,
    Path((order_id, key)): Path<(Uuid, String)>,
    Json(body): Json<wire::Refund>,
) -> Result<StatusCode, ApiError> {
    PaymentsForOrders(payments)
        .refund(
            order_id,
            body.amount_minor,
            &body.reason,
            &key,
            body.correlation_id.as_deref(),
        )
        .await
        .map(|()| StatusCode::NO_CONTENT)
}
