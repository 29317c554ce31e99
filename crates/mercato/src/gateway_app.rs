//! The gateway of the distributed mode (`mercato serve gateway`): the public edge (JWT check,
//! rate limits shared in Redis, CORS, body limits, request and correlation ids, `/internal`
//! refused) in front of a reverse proxy to the service processes, which it finds in
//! `cluster.urls`. It owns nothing durable.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use gateway::proxy::{Balance, Proxy, ProxyConfig, Route};
use platform::auth::{HttpJwks, TokenVerifier};
use platform::clock::SharedClock;
use platform::config::Config;
use platform::error::ApiError;
use platform::http_client::ServiceClient;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::app;

/// Which service answers which paths. A pattern covers its path and everything below it; `*`
/// stands for one segment; the most specific pattern wins.
pub const ROUTES: &[(&str, &str)] = &[
    ("/.well-known/jwks.json", "identity"),
    ("/api/v1/auth", "identity"),
    ("/api/v1/users/me", "identity"),
    ("/api/v1/admin/users", "identity"),
    ("/api/v1/categories", "catalog"),
    ("/api/v1/products", "catalog"),
    ("/api/v1/search", "catalog"),
    ("/api/v1/seller/products", "catalog"),
    ("/api/v1/admin/categories", "catalog"),
    ("/api/v1/admin/reviews", "catalog"),
    ("/api/v1/users/me/reviews", "catalog"),
    ("/api/v1/users/me/wishlist", "catalog"),
    ("/api/v1/inventory", "inventory"),
    ("/api/v1/admin/inventory", "inventory"),
    ("/api/v1/admin/reservations", "inventory"),
    ("/api/v1/cart", "cart"),
    ("/api/v1/checkout", "orders"),
    ("/api/v1/orders", "orders"),
    ("/api/v1/seller/orders", "orders"),
    ("/api/v1/admin/orders", "orders"),
    ("/api/v1/admin/coupons", "orders"),
    ("/api/v1/admin/returns", "orders"),
    ("/api/v1/payments", "payments"),
    ("/api/v1/admin/payments", "payments"),
    ("/psp", "payments"),
    ("/api/v1/users/me/notifications", "notifications"),
    ("/api/v1/admin/notifications", "notifications"),
    ("/api/v1/delivery", "delivery"),
    ("/api/v1/admin/delivery", "delivery"),
    ("/api/v1/orders/*/tracking", "delivery"),
];

/// Streams that stay open: no response timeout.
const STREAMS: &[&str] = &["/api/v1/orders/*/events", "/api/v1/admin/orders/live"];

/// The route table with its timeouts.
pub fn routes(config: &Config) -> Vec<Route> {
    let timeout = Duration::from_secs(config.http.request_timeout_secs.max(1));
    ROUTES
        .iter()
        .map(|(pattern, service)| Route {
            pattern: (*pattern).to_owned(),
            service: (*service).to_owned(),
            timeout: Some(timeout),
        })
        .chain(STREAMS.iter().map(|pattern| Route {
            pattern: (*pattern).to_owned(),
            service: "orders".to_owned(),
            timeout: None,
        }))
        .collect()
}

/// A running gateway: its router and the handle to stop its health checks.
pub struct GatewayApp {
    pub router: Router,
    pub proxy: Arc<Proxy>,
    cancel: CancellationToken,
}

impl GatewayApp {
    pub async fn start(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        platform::telemetry::metrics_handle();
        let cancel = CancellationToken::new();
        let mut upstreams = std::collections::BTreeMap::new();
        for service in crate::service::SERVICES {
            let urls = config.service_urls(service);
            anyhow::ensure!(
                !urls.is_empty(),
                "the gateway has no address for {service}; set MERCATO_CLUSTER__URLS__{}",
                service.to_uppercase()
            );
            upstreams.insert(service.to_owned(), urls);
        }
        let g = &config.gateway;
        let proxy = Proxy::new(ProxyConfig {
            routes: routes(&config),
            upstreams,
            balance: match g.balance {
                platform::config::Balance::RoundRobin => Balance::RoundRobin,
                platform::config::Balance::LeastConnections => Balance::LeastConnections,
            },
            health_path: "/health/ready".to_owned(),
            health_interval: Duration::from_millis(g.health_interval_ms.max(100)),
            eject_after: g.eject_after.max(1),
            eject_for: Duration::from_secs(g.eject_secs.max(1)),
            retries: g.retries,
            connect_timeout: Duration::from_millis(g.connect_timeout_ms.max(1)),
            max_retry_body_bytes: config.http.body_limit_bytes,
        })
        .context("invalid gateway configuration")?;
        proxy.spawn_health_checks(cancel.clone());

        let verifier = Arc::new(TokenVerifier::new(
            Arc::new(HttpJwks {
                url: crate::service::jwks_url(&config)?,
                client: reqwest::Client::new(),
            }),
            &config.auth.issuer,
            &config.auth.audience,
        ));
        let for_ready = proxy.clone();
        let for_status = proxy.clone();
        let own = Router::new()
            .route(
                "/health/live",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route(
                "/health/ready",
                get(move || {
                    let proxy = for_ready.clone();
                    async move {
                        let ready = proxy.ready().await;
                        let status = if ready {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        };
                        let body = serde_json::json!({
                            "status": if ready { "ok" } else { "unavailable" },
                            "upstreams": proxy.status(),
                        });
                        (status, Json(body)).into_response()
                    }
                }),
            )
            .route(
                "/api/v1/admin/gateway/upstreams",
                get(move |_admin: platform::auth::Admin| {
                    let proxy = for_status.clone();
                    async move { Json(serde_json::json!({ "items": proxy.status() })) }
                }),
            )
            .route("/metrics", get(|| async { platform::telemetry::render_metrics() }))
            .merge(dead_letters_router(&config))
            .merge(gateway::docs_router(app::openapi()));
        let edge = gateway::Edge {
            mode: gateway::EdgeMode::Gateway,
            http: config.http.clone(),
            rate_limit: config.rate_limit.clone(),
            limiter: app::build_rate_limiter(&config, clock).await?,
            public_routes: app::public_routes(),
            verifier,
        };
        let router = edge.wrap_keeping_fallback(own.merge(proxy.router()));
        Ok(Self { router, proxy, cancel })
    }

    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

// ----- every service's dead letters ----------------------------------------------------------

/// Each service keeps the dead letters of its own consumers, in its own database. The gateway
/// answers `GET /api/v1/admin/dead-letters` with all of them (each item naming its `service`) and
/// sends `POST /api/v1/admin/dead-letters/{id}/replay` to the service that holds the letter.
struct Services {
    /// Each service with a client per instance (timeouts, retries of reads, a circuit breaker).
    instances: Vec<(&'static str, Vec<ServiceClient>)>,
}

/// A service's answer: status, content type, body.
type Answer = (StatusCode, Option<HeaderValue>, Bytes);

impl Services {
    /// `method path` on one instance of the service (the next when one does not answer or fails
    /// with a 5xx), with the caller's authorization. `None`: no instance answered.
    async fn call(
        instances: &[ServiceClient],
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
    ) -> Option<Answer> {
        let auth = auth.and_then(|value| value.to_str().ok());
        let headers: Vec<(&str, &str)> = auth.map(|value| ("authorization", value)).into_iter().collect();
        for instance in instances {
            match instance.call(method.clone(), path, None, &headers).await {
                Ok(response) => {
                    let status = response.status();
                    let content_type = response.headers().get(CONTENT_TYPE).cloned();
                    match response.bytes().await {
                        Ok(body) => return Some((status, content_type, body)),
                        Err(err) => tracing::warn!(error = %err, "a service's answer broke off"),
                    }
                }
                Err(err) => tracing::warn!(error = %err, "a service did not answer"),
            }
        }
        None
    }
}

fn dead_letters_router(config: &Config) -> Router {
    let policy = crate::peers::policy(config);
    let services = Services {
        instances: crate::service::SERVICES
            .iter()
            .map(|service| {
                let clients = config
                    .service_urls(service)
                    .iter()
                    .map(|url| ServiceClient::new(url, policy.clone()))
                    .collect();
                (*service, clients)
            })
            .collect(),
    };
    Router::new()
        .route("/api/v1/admin/dead-letters", get(every_dead_letter))
        .route("/api/v1/admin/dead-letters/{id}/replay", post(replay_where_it_is))
        .with_state(Arc::new(services))
}

/// One page of every service's open dead letters, newest first (their ids are time-ordered
/// UUIDs, so one cursor pages through all services). Services that did not answer are named in
/// `unavailable`; the page holds the others'.
async fn every_dead_letter(
    State(services): State<Arc<Services>>,
    _admin: platform::auth::Admin,
    headers: HeaderMap,
    platform::extract::Query(params): platform::extract::Query<platform::page::PageParams>,
) -> Result<Json<Value>, ApiError> {
    let page = params.parse()?;
    let mut path = format!("/api/v1/admin/dead-letters?limit={}", page.limit);
    if let Some(key) = &page.after {
        path.push_str(&format!("&cursor={}", platform::page::encode_cursor(key)));
    }
    let auth = headers.get(AUTHORIZATION);
    let answers = futures::future::join_all(services.instances.iter().map(|(service, instances)| {
        let path = &path;
        async move { (*service, Services::call(instances, Method::GET, path, auth).await) }
    }))
    .await;
    let mut items: Vec<Value> = Vec::new();
    let mut more = false;
    let mut unavailable = Vec::new();
    for (service, answer) in answers {
        let page = answer
            .filter(|(status, ..)| status.is_success())
            .and_then(|(_, _, body)| serde_json::from_slice::<Value>(body.as_ref()).ok());
        let Some(mut page) = page else {
            unavailable.push(service);
            continue;
        };
        more |= page.get("next_cursor").is_some_and(|cursor| !cursor.is_null());
        if let Some(found) = page.get_mut("items").and_then(Value::as_array_mut) {
            for mut item in found.drain(..) {
                item["service"] = json!(service);
                items.push(item);
            }
        }
    }
    let id = |item: &Value| item["id"].as_str().unwrap_or_default().to_owned();
    items.sort_by_key(|item| std::cmp::Reverse(id(item)));
    let limit = page.limit as usize;
    let next_cursor = if items.len() > limit || more {
        items.truncate(limit);
        items.last().map(|last| platform::page::encode_cursor(&id(last)))
    } else {
        None
    };
    let mut body = json!({ "items": items, "unavailable": unavailable });
    if let Some(cursor) = next_cursor {
        body["next_cursor"] = json!(cursor);
    }
    Ok(Json(body))
}

/// Replays a dead letter in the service that holds it: the first service that knows the id
/// answers, as it answered.
async fn replay_where_it_is(
    State(services): State<Arc<Services>>,
    _admin: platform::auth::Admin,
    headers: HeaderMap,
    platform::extract::Path(id): platform::extract::Path<uuid::Uuid>,
) -> Result<axum::response::Response, ApiError> {
    let path = format!("/api/v1/admin/dead-letters/{id}/replay");
    let auth = headers.get(AUTHORIZATION);
    let mut silent = Vec::new();
    for (service, instances) in &services.instances {
        match Services::call(instances, Method::POST, &path, auth).await {
            Some((StatusCode::NOT_FOUND, ..)) => {}
            Some((status, content_type, body)) => {
                let mut response = (status, body).into_response();
                if let Some(content_type) = content_type {
                    response.headers_mut().insert(CONTENT_TYPE, content_type);
                }
                return Ok(response);
            }
            None => silent.push(*service),
        }
    }
    if silent.is_empty() {
        Err(ApiError::not_found("dead letter"))
    } else {
        Err(ApiError::Unavailable {
            message: format!(
                "not found in the services that answered; no answer from {}",
                silent.join(", ")
            ),
            retry_after_secs: 5,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service a path goes to, as the proxy picks it: the matching pattern with the most
    /// literal segments.
    fn service_of(path: &str) -> Option<&'static str> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        ROUTES
            .iter()
            .filter(|(pattern, _)| {
                let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
                parts.len() <= segments.len() && parts.iter().zip(&segments).all(|(p, s)| *p == "*" || p == s)
            })
            .max_by_key(|(pattern, _)| pattern.split('/').filter(|p| *p != "*").count())
            .map(|(_, service)| *service)
    }

    #[test]
    fn every_path_of_the_api_reaches_a_service_through_the_gateway() {
        // Served by every process itself (each service has its own consumers' dead letters).
        let own = [
            "/health",
            "/metrics",
            "/api/v1/admin/dead-letters",
            "/api/docs",
            "/api/openapi.json",
        ];
        let doc = crate::app::openapi();
        let mut unrouted = Vec::new();
        let mut checked = 0;
        for path in doc.paths.paths.keys() {
            if own.iter().any(|prefix| path.starts_with(prefix)) {
                continue;
            }
            checked += 1;
            // `{id}` segments stand for any value.
            let concrete: String = path
                .split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            if service_of(&concrete).is_none() {
                unrouted.push(path.clone());
            }
        }
        assert!(checked > 80, "the whole API was looked at ({checked} paths)");
        assert!(unrouted.is_empty(), "no gateway route for {unrouted:?}");
        assert_eq!(service_of("/api/v1/orders/x/tracking"), Some("delivery"));
        assert_eq!(service_of("/api/v1/orders/x"), Some("orders"));
    }

    #[test]
    fn every_service_route_is_served_by_a_known_service() {
        for (pattern, service) in ROUTES {
            assert!(
                crate::service::SERVICES.contains(service),
                "{pattern} → {service} is not a service"
            );
        }
    }
}
