//! The edge in front of every service's routes in the all-in-one mode: request ids and
//! metrics, CORS, a body-size limit, a timeout, per-user and per-IP rate limits, the JWT check
//! for protected routes, and the refusal of `/internal/...` routes. Also the OpenAPI document
//! and its docs page.

pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use platform::auth::{authenticate, bearer_token, CurrentUser, TokenVerifier};
use platform::config::{HttpConfig, RateLimitConfig};
use platform::error::{method_not_allowed_fallback, not_found_fallback, ApiError};
use platform::ratelimit::{Decision, RateLimiter};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Where the layers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeMode {
    /// The public edge: refuses `/internal`, checks tokens on protected routes, rate-limits.
    Gateway,
    /// A service process behind the gateway: ids, metrics, limits and timeouts only; its
    /// handlers verify tokens themselves and its `/internal` routes serve other services.
    Service,
}

/// What the edge needs to know.
#[derive(Clone)]
pub struct Edge {
    pub mode: EdgeMode,
    pub http: HttpConfig,
    pub rate_limit: RateLimitConfig,
    pub limiter: Arc<dyn RateLimiter>,
    /// Paths under `/api/` callable without a token (exact, or a prefix when ending in `/`).
    pub public_routes: Vec<String>,
    pub verifier: Arc<TokenVerifier>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("public_routes", &self.public_routes)
            .finish()
    }
}

impl Edge {
    /// Whether `method path` may be called without a token. A public route is `/path` (any
    /// method) or `METHOD /path`; a trailing `/` covers everything below.
    fn is_public(&self, method: &Method, path: &str) -> bool {
        if !path.starts_with("/api/v1/") {
            // Health, metrics, docs, the JWKS and the web UI are not behind the token check.
            return true;
        }
        self.public_routes.iter().any(|route| {
            let (route_method, route) = match route.split_once(' ') {
                Some((m, r)) => (Some(m), r),
                None => (None, route.as_str()),
            };
            let method_ok = route_method.is_none_or(|m| m == method.as_str() || (m == "GET" && method == Method::HEAD));
            let path_ok = if route.ends_with('/') {
                path.starts_with(route)
            } else {
                path == route
            };
            method_ok && path_ok
        })
    }

    /// Wraps `routes` (every service's public router, merged) in the edge.
    pub fn wrap(self, routes: Router) -> Router {
        self.wrap_keeping_fallback(
            routes
                .fallback(not_found_fallback)
                .method_not_allowed_fallback(method_not_allowed_fallback),
        )
    }

    /// Wraps `routes` whose fallback is their own (the gateway's proxy answers every path the
    /// gateway itself does not).
    pub fn wrap_keeping_fallback(self, routes: Router) -> Router {
        let http = self.http.clone();
        let verifier = self.verifier.clone();
        let cors = cors_layer(&http.cors_origins);
        let edge = Arc::new(self);
        let router = routes
            .layer(middleware::from_fn_with_state(edge, guard))
            .layer(axum::Extension(verifier))
            .layer(DefaultBodyLimit::max(http.body_limit_bytes));
        let router = match cors {
            Some(cors) => router.layer(cors),
            None => router,
        };
        router
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn(platform::telemetry::observe))
    }
}

/// A handler that panicked answers a plain problem+json 500; the panic is logged, not sent.
fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    // Explicit origins only: credentials are allowed, so a wildcard would be unsafe (and
    // `CorsLayer` refuses the combination anyway).
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| o.as_str() != "*")
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let headers = [
        "authorization",
        "content-type",
        "idempotency-key",
        "if-match",
        "x-request-id",
        "x-correlation-id",
        "x-cart-token",
    ];
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers(headers.map(HeaderName::from_static))
            .expose_headers(["x-request-id", "x-correlation-id", "retry-after"].map(HeaderName::from_static))
            .max_age(Duration::from_secs(600)),
    )
}

async fn guard(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    match check(&edge, request).await {
        Ok(request) => {
            let timeout = Duration::from_secs(edge.http.request_timeout_secs.max(1));
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ApiError::Unavailable {
                    message: "the request took too long".to_owned(),
                    retry_after_secs: 1,
                }
                .into_response(),
            }
        }
        Err(err) => err.into_response(),
    }
}

async fn check(edge: &Edge, request: Request) -> Result<Request, ApiError> {
    let path = request.uri().path();
    if edge.mode == EdgeMode::Service {
        return check_body_size(edge, &request).map(|()| request);
    }
    if path.starts_with("/internal/") || path == "/internal" {
        return Err(ApiError::NotFound("no route matches this path".to_owned()));
    }
    check_body_size(edge, &request)?;
    let public = edge.is_public(request.method(), path);
    let (mut parts, body) = request.into_parts();
    let user = if bearer_token(&parts).is_some() {
        match authenticate(&parts).await {
            Ok(user) => Some(user),
            Err(err) if !public => return Err(err),
            // A bad token on a public route is the service's business (it may ignore it).
            Err(_) => None,
        }
    } else if public {
        None
    } else {
        return Err(ApiError::Unauthorized("missing bearer token".to_owned()));
    };
    if edge.rate_limit.enabled && parts.method != Method::OPTIONS {
        let minute = Duration::from_secs(60);
        if let Some(ip) = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) {
            limit(edge, &format!("ip:{ip}"), edge.rate_limit.per_ip_per_minute, minute).await?;
        }
        if let Some(user) = &user {
            limit(
                edge,
                &format!("user:{}", user.id),
                edge.rate_limit.per_user_per_minute,
                minute,
            )
            .await?;
        }
    }
    if let Some(user) = user {
        parts.extensions.insert::<CurrentUser>(user);
    }
    Ok(Request::from_parts(parts, body))
}

/// Refuses a declared body over the limit before reading it (chunked bodies are cut off by
/// `DefaultBodyLimit` when a handler reads them).
fn check_body_size(edge: &Edge, request: &Request) -> Result<(), ApiError> {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > edge.http.body_limit_bytes) {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(())
}

async fn limit(edge: &Edge, key: &str, per_minute: u32, window: Duration) -> Result<(), ApiError> {
    match edge.limiter.check(key, per_minute, window).await {
        Decision::Allow => Ok(()),
        Decision::Deny { retry_after } => {
            metrics::counter!("mercato_rate_limited_total").increment(1);
            Err(ApiError::TooManyRequests {
                message: "rate limit exceeded; slow down".to_owned(),
                retry_after_secs: retry_after.as_secs_f64().ceil() as u64,
            })
        }
    }
}

/// The OpenAPI document and its interactive page.
pub fn docs_router(openapi: utoipa::openapi::OpenApi) -> Router {
    utoipa_swagger_ui::SwaggerUi::new("/api/docs")
        .url("/api/openapi.json", openapi)
        .into()
}
