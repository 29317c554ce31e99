//! The cart's HTTP API. A signed-in shopper's cart follows the access token; a guest's follows
//! a cart token, sent back in the `X-Cart-Token` header or the `mercato_cart` cookie (both are
//! set when a guest first adds an item). A request with both a valid access token and a guest
//! token merges the guest cart into the user's first, so the cart a shopper filled before logging
//! in is there after.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, patch, post};
use axum::{Extension, Router};
use platform::auth::{authenticate, bearer_token, CurrentUser, TokenVerifier};
use platform::error::{ApiError, ApiResult, Problem};
use platform::extract::{Json, Path};
use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};

use crate::service::{new_guest_token, parse_guest_token, Cart, CartView, LineView, LineWarning, Owner};

pub const CART_TOKEN_HEADER: &str = "x-cart-token";
pub const CART_COOKIE: &str = "mercato_cart";

/// Guests use the cart without an account (`METHOD /path`, a trailing `/` meaning "and below").
pub const PUBLIC_ROUTES: &[&str] = &[
    "GET /api/v1/cart",
    "DELETE /api/v1/cart",
    "POST /api/v1/cart/",
    "PATCH /api/v1/cart/",
    "DELETE /api/v1/cart/",
];

pub fn router(cart: Arc<Cart>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/cart", get(view).delete(clear))
        .route("/api/v1/cart/items", post(add))
        .route("/api/v1/cart/items/{sku}", patch(set_quantity).delete(remove))
        .route("/api/v1/cart/merge", post(merge))
        .layer(Extension(verifier))
        .with_state(cart)
}

#[derive(OpenApi)]
#[openapi(
    paths(view, clear, add, set_quantity, remove, merge),
    components(schemas(CartView, LineView, LineWarning, AddItemRequest, SetQuantityRequest)),
    tags((name = "cart", description = "The shopper's cart (signed in, or a guest with a cart token)"))
)]
pub struct CartApi;

/// Who is calling: a verified user, a guest token, both (just logged in) or neither.
pub struct Shopper {
    user: Option<CurrentUser>,
    guest: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Shopper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let user = match parts.extensions.get::<CurrentUser>() {
            Some(user) => Some(user.clone()),
            // A token that does not verify is refused (the client should refresh it), rather
            // than silently showing the guest cart.
            None if bearer_token(parts).is_some() => Some(authenticate(parts).await?),
            None => None,
        };
        let guest = match parts.headers.get(CART_TOKEN_HEADER) {
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(parse_guest_token)
                    .ok_or_else(|| ApiError::validation("X-Cart-Token", "is not a cart token"))?,
            ),
            // A malformed cookie is ignored: the browser may hold an old one.
            None => cookie(&parts.headers, CART_COOKIE).and_then(|v| parse_guest_token(&v)),
        };
        Ok(Self { user, guest })
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_guest_headers(headers: &mut HeaderMap, token: &str, max_age_secs: u64) {
    if let Ok(value) = HeaderValue::from_str(token) {
        headers.insert(CART_TOKEN_HEADER, value);
    }
    let cookie = format!("{CART_COOKIE}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
}

fn forget_guest(headers: &mut HeaderMap) {
    let cookie = format!("{CART_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
}

/// How long the guest cookie lives: a day, like the cart.
const GUEST_COOKIE_SECS: u64 = 24 * 3600;

/// The cart a request addresses. A signed-in user's guest cart is merged in first. `create`:
/// a guest without a token gets a new one (when adding an item). `None`: a guest without a cart.
async fn resolve(cart: &Cart, shopper: Shopper, create: bool, headers: &mut HeaderMap) -> ApiResult<Option<Owner>> {
    match (shopper.user, shopper.guest) {
        (Some(user), Some(guest)) => {
            cart.merge(&guest, user.id).await?;
            forget_guest(headers);
            Ok(Some(Owner::User(user.id)))
        }
        (Some(user), None) => Ok(Some(Owner::User(user.id))),
        (None, Some(guest)) => Ok(Some(Owner::Guest(guest))),
        (None, None) if create => {
            let token = new_guest_token();
            set_guest_headers(headers, &token, GUEST_COOKIE_SECS);
            Ok(Some(Owner::Guest(token)))
        }
        (None, None) => Ok(None),
    }
}

/// The caller's cart with totals and warnings.
#[utoipa::path(get, path = "/api/v1/cart", tag = "cart",
    params(("X-Cart-Token" = Option<String>, Header, description = "a guest's cart token")),
    responses((status = 200, body = CartView), (status = 401, body = Problem)))]
async fn view(State(cart): State<Arc<Cart>>, shopper: Shopper) -> ApiResult<(HeaderMap, Json<CartView>)> {
    let mut headers = HeaderMap::new();
    let view = match resolve(&cart, shopper, false, &mut headers).await? {
        Some(owner) => cart.view(&owner).await?,
        None => cart.empty_view(),
    };
    Ok((headers, Json(view)))
}

/// Empty the caller's cart.
#[utoipa::path(delete, path = "/api/v1/cart", tag = "cart", responses((status = 204)))]
async fn clear(State(cart): State<Arc<Cart>>, shopper: Shopper) -> ApiResult<(HeaderMap, StatusCode)> {
    let mut headers = HeaderMap::new();
    if let Some(owner) = resolve(&cart, shopper, false, &mut headers).await? {
        cart.clear(&owner).await?;
    }
    Ok((headers, StatusCode::NO_CONTENT))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemRequest {
    pub sku: String,
    /// 1 up to the per-line maximum (99 by default).
    pub quantity: i64,
}

/// Add units of a SKU. A guest without a cart token gets one (`X-Cart-Token` and a cookie).
#[utoipa::path(post, path = "/api/v1/cart/items", tag = "cart", request_body = AddItemRequest,
    responses((status = 200, body = CartView), (status = 404, body = Problem, description = "unknown SKU"),
              (status = 409, body = Problem, description = "more than available; `available` says how many"),
              (status = 422, body = Problem, description = "bad quantity, or the product is not on sale")))]
async fn add(
    State(cart): State<Arc<Cart>>,
    shopper: Shopper,
    Json(body): Json<AddItemRequest>,
) -> ApiResult<(HeaderMap, Json<CartView>)> {
    let mut headers = HeaderMap::new();
    let owner = resolve(&cart, shopper, true, &mut headers)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a cart owner is always resolved when creating"))?;
    // A refused add answers a problem without these headers: no token is handed out for it.
    Ok((headers, Json(cart.add(&owner, &body.sku, body.quantity).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuantityRequest {
    pub quantity: i64,
}

/// Change a line's quantity.
#[utoipa::path(patch, path = "/api/v1/cart/items/{sku}", tag = "cart", params(("sku" = String, Path)),
    request_body = SetQuantityRequest,
    responses((status = 200, body = CartView), (status = 404, body = Problem, description = "no such line"),
              (status = 409, body = Problem, description = "more than available")))]
async fn set_quantity(
    State(cart): State<Arc<Cart>>,
    shopper: Shopper,
    Path(sku): Path<String>,
    Json(body): Json<SetQuantityRequest>,
) -> ApiResult<(HeaderMap, Json<CartView>)> {
    let mut headers = HeaderMap::new();
    let owner = resolve(&cart, shopper, false, &mut headers)
        .await?
        .ok_or_else(|| ApiError::not_found("cart line"))?;
    Ok((headers, Json(cart.set_quantity(&owner, &sku, body.quantity).await?)))
}

/// Remove a line.
#[utoipa::path(delete, path = "/api/v1/cart/items/{sku}", tag = "cart", params(("sku" = String, Path)),
    responses((status = 200, body = CartView), (status = 404, body = Problem, description = "no such line")))]
async fn remove(
    State(cart): State<Arc<Cart>>,
    shopper: Shopper,
    Path(sku): Path<String>,
) -> ApiResult<(HeaderMap, Json<CartView>)> {
    let mut headers = HeaderMap::new();
    let owner = resolve(&cart, shopper, false, &mut headers)
        .await?
        .ok_or_else(|| ApiError::not_found("cart line"))?;
    Ok((headers, Json(cart.remove(&owner, &sku).await?)))
}

/// Merge the guest cart named by `X-Cart-Token` (or the cookie) into the signed-in user's cart:
/// quantities are summed and capped by what is available. Any cart request carrying both does
/// this too; this route does it explicitly, right after login.
#[utoipa::path(post, path = "/api/v1/cart/merge", tag = "cart", security(("bearer" = [])),
    params(("X-Cart-Token" = String, Header, description = "the guest's cart token")),
    responses((status = 200, body = CartView), (status = 422, body = Problem, description = "no guest cart token")))]
async fn merge(State(cart): State<Arc<Cart>>, shopper: Shopper) -> ApiResult<(HeaderMap, Json<CartView>)> {
    let Some(user) = &shopper.user else {
        return Err(ApiError::Unauthorized("missing bearer token".to_owned()));
    };
    let user = user.id;
    if shopper.guest.is_none() {
        return Err(ApiError::validation(
            "X-Cart-Token",
            "is required to merge a guest cart",
        ));
    }
    let mut headers = HeaderMap::new();
    resolve(&cart, shopper, false, &mut headers).await?;
    Ok((headers, Json(cart.view(&Owner::User(user)).await?)))
}
