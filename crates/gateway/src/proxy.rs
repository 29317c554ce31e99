//! The reverse proxy of the distributed mode: it matches a request's path to a service, picks
//! one of that service's instances, and forwards the request to it with its body and the answer
//! streamed through. Instances that fail are ejected for a while (passive checks) and every
//! instance's readiness is asked on an interval (active checks). Connection upgrades
//! (WebSocket) are not proxied: `Upgrade` is a hop-by-hop header and is dropped.
//!
//! Authentication, CORS and rate limits are not done here: [`crate::Edge`] wraps this router.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use platform::error::{ApiError, Problem, PROBLEM_JSON};
use reqwest::Url;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// How a request picks among the available instances of its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each instance in turn.
    RoundRobin,
    /// The instance with the fewest requests in flight (a streamed answer counts until it ends);
    /// ties are taken in turn.
    LeastConnections,
}

/// Which service answers the paths a pattern matches.
#[derive(Debug, Clone)]
pub struct Route {
    /// `/api/v1/cart` matches that path and every path below it; a `*` segment matches any one
    /// segment (`/api/v1/orders/*/tracking`).
    pub pattern: String,
    /// A key of [`ProxyConfig::upstreams`].
    pub service: String,
    /// The longest wait for the response headers, retries included; `None` for routes whose
    /// answers are streams that may take long to start (Server-Sent Events). A body, once
    /// started, is never cut off.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub routes: Vec<Route>,
    /// Each service's instances as base URLs (`http://127.0.0.1:9101`), without a path.
    pub upstreams: BTreeMap<String, Vec<String>>,
    pub balance: Balance,
    /// The path every instance is asked on (`/health/ready`); a 2xx answer means healthy.
    pub health_path: String,
    pub health_interval: Duration,
    /// Consecutive failures (connection error, timeout, 502/503/504) that eject an instance.
    pub eject_after: u32,
    pub eject_for: Duration,
    /// Extra attempts, each on another instance, of idempotent requests only: after a
    /// 502/503/504 answer or a transport error (a second copy of an idempotent request is
    /// harmless even if the first one got through).
    pub retries: u32,
    pub connect_timeout: Duration,
    /// Idempotent requests are buffered so that they can be retried; a larger body is refused.
    pub max_retry_body_bytes: usize,
}

/// One instance as [`Proxy::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamStatus {
    pub service: String,
    pub url: String,
    /// What the last active health check said (true until the first one fails).
    pub healthy: bool,
    /// Until when passive checks keep the instance out of its pool, if they do now.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ejected_until: Option<OffsetDateTime>,
    pub in_flight: usize,
}

/// The reverse proxy. Cheap to share: build it once with [`Proxy::new`], then take its
/// [`Proxy::router`] and run [`Proxy::spawn_health_checks`].
pub struct Proxy {
    /// Most specific first, so the first match wins.
    routes: Vec<CompiledRoute>,
    pools: Vec<Arc<Pool>>,
    /// One pooled client for every instance, so connections are reused across requests.
    client: reqwest::Client,
    balance: Balance,
    health_interval: Duration,
    health_timeout: Duration,
    eject_after: u32,
    eject_for: Duration,
    retries: u32,
    max_retry_body_bytes: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.routes.iter().map(|r| &r.pattern).collect::<Vec<_>>())
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Checks the configuration (patterns, URLs, that every route's service has instances) and
    /// builds the shared HTTP client.
    pub fn new(config: ProxyConfig) -> anyhow::Result<Arc<Self>> {
        ensure!(config.eject_after >= 1, "eject_after must be at least 1");
        for (name, duration) in [
            ("health_interval", config.health_interval),
            ("connect_timeout", config.connect_timeout),
        ] {
            ensure!(
                !duration.is_zero() && duration <= MAX_DURATION,
                "{name} must be longer than zero and at most a year"
            );
        }
        ensure!(config.eject_for <= MAX_DURATION, "eject_for must be at most a year");
        ensure!(
            config.health_path.starts_with('/'),
            "health_path `{}` must start with `/`",
            config.health_path
        );

        let mut pools = BTreeMap::new();
        for (service, urls) in &config.upstreams {
            ensure!(!urls.is_empty(), "service `{service}` has no upstream URLs");
            let mut instances = Vec::with_capacity(urls.len());
            let mut seen = BTreeSet::new();
            for url in urls {
                let instance = Instance::parse(url, &config.health_path)
                    .with_context(|| format!("upstream `{url}` of service `{service}`"))?;
                ensure!(
                    seen.insert(instance.origin.clone()),
                    "upstream `{url}` of service `{service}` is listed twice"
                );
                instances.push(instance);
            }
            pools.insert(
                service.clone(),
                Arc::new(Pool {
                    service: service.clone(),
                    instances,
                    turn: AtomicUsize::new(0),
                }),
            );
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let pool = pools.get(&route.service).with_context(|| {
                format!(
                    "route `{}` names service `{}`, which has no upstreams",
                    route.pattern, route.service
                )
            })?;
            let compiled = CompiledRoute::parse(route, Arc::clone(pool))?;
            if let Some(same) = routes.iter().find(|r: &&CompiledRoute| r.segments == compiled.segments) {
                bail!(
                    "routes `{}` and `{}` have the same pattern",
                    same.pattern,
                    compiled.pattern
                );
            }
            routes.push(compiled);
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.specificity()));

        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            // The answer goes to the client as it came: redirects and encodings are its business.
            .redirect(reqwest::redirect::Policy::none())
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            // Instances are reached directly, whatever HTTP_PROXY says.
            .no_proxy()
            .build()
            .context("building the upstream HTTP client")?;

        Ok(Arc::new(Self {
            routes,
            pools: pools.into_values().collect(),
            client,
            balance: config.balance,
            health_interval: config.health_interval,
            health_timeout: config.connect_timeout + Duration::from_secs(1),
            eject_after: config.eject_after,
            eject_for: config.eject_for,
            retries: config.retries,
            max_retry_body_bytes: config.max_retry_body_bytes,
        }))
    }

    /// Asks every instance's health path at once and then every `health_interval`, until
    /// `cancel`. A failing answer (or none in time) marks the instance unhealthy; a passing
    /// one marks it healthy and ends its ejection.
    pub fn spawn_health_checks(self: &Arc<Self>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let proxy = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(proxy.health_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = proxy.check_health() => {}
                }
            }
        })
    }

    /// A router that forwards every method and path.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(forward).with_state(Arc::clone(self))
    }

    /// Every instance of every service, by service then in configured order.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let now = Instant::now();
        let wall_now = OffsetDateTime::now_utc();
        self.pools
            .iter()
            .flat_map(|pool| {
                pool.instances.iter().map(move |instance| {
                    let state = instance.state();
                    UpstreamStatus {
                        service: pool.service.clone(),
                        url: instance.origin.clone(),
                        healthy: state.healthy,
                        ejected_until: state
                            .ejected_until
                            .filter(|until| *until > now)
                            .map(|until| wall_now + (until - now)),
                        in_flight: instance.in_flight.load(Ordering::Relaxed),
                    }
                })
            })
            .collect()
    }

    /// Whether every service has at least one instance that would be given a request now.
    pub async fn ready(&self) -> bool {
        let now = Instant::now();
        self.pools
            .iter()
            .all(|pool| pool.instances.iter().any(|i| i.is_available(now)))
    }

    fn route(&self, path: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|route| route.matches(path))
    }

    async fn check_health(&self) {
        let checks = self.pools.iter().flat_map(|pool| {
            pool.instances.iter().map(move |instance| async move {
                let passed = match self
                    .client
                    .get(instance.health_url.clone())
                    .timeout(self.health_timeout)
                    .send()
                    .await
                {
                    Ok(response) => response.status().is_success(),
                    Err(_) => false,
                };
                instance.record_health(passed, &pool.service);
            })
        });
        futures::future::join_all(checks).await;
        for pool in &self.pools {
            let healthy = pool.instances.iter().filter(|i| i.state().healthy).count();
            metrics::gauge!("mercato_gateway_healthy_instances", "service" => pool.service.clone()).set(healthy as f64);
        }
    }

    async fn forward(&self, request: Request) -> Result<Response, ProxyError> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let route = self.route(path).ok_or(ProxyError::NoRoute)?;
        let pool = &route.pool;
        let path_and_query = parts.uri.path_and_query().map_or(path, |pq| pq.as_str());
        let mut headers = upstream_headers(&parts);
        // The upstream's request span is a child of this one (when traces are exported).
        platform::traces::inject(&mut headers);
        let idempotent = is_idempotent(&parts.method);
        let mut body = if idempotent {
            Outgoing::Buffered(self.buffer(&parts.headers, body).await?)
        } else {
            Outgoing::Streamed(Some(body))
        };
        let deadline = route.timeout.map(|timeout| tokio::time::Instant::now() + timeout);
        let max_attempts = body.max_attempts(self.retries);

        let mut tried = Vec::new();
        let mut index = pool.pick(self.balance, &tried).ok_or_else(|| {
            count(&pool.service, "unavailable");
            ProxyError::NoInstance
        })?;
        loop {
            tried.push(index);
            let instance = &pool.instances[index];
            let url = instance.url_for(path_and_query, path)?;
            let mut upstream = reqwest::Request::new(parts.method.clone(), url);
            *upstream.headers_mut() = headers.clone();
            *upstream.body_mut() = Some(body.next_attempt());
            let in_flight = instance.begin();
            let sent = self.client.execute(upstream);
            let result = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, sent).await,
                None => Ok(sent.await),
            };
            let may_retry = tried.len() < max_attempts;
            match result {
                Err(_elapsed) => {
                    instance.record_failure(self.eject_after, self.eject_for, &pool.service);
                    count(&pool.service, "timeout");
                    tracing::warn!(service = %pool.service, upstream = %instance.origin, "upstream timed out");
                    return Err(ProxyError::Timeout);
                }
                Ok(Ok(answer)) if !is_gateway_failure(answer.status()) => {
                    instance.record_success();
                    let outcome = if answer.status().is_server_error() {
                        "error_5xx"
                    } else {
                        "ok"
                    };
                    count(&pool.service, outcome);
                    return Ok(downstream_response(answer, in_flight));
                }
                Ok(Ok(answer)) => {
                    instance.record_failure(self.eject_after, self.eject_for, &pool.service);
                    match pool.pick(self.balance, &tried).filter(|_| may_retry) {
                        Some(next) => {
                            tracing::debug!(
                                service = %pool.service,
                                upstream = %instance.origin,
                                status = answer.status().as_u16(),
                                "retrying on another instance"
                            );
                            count(&pool.service, "retry");
                            index = next;
                        }
                        None => {
                            // The last word is the upstream's own 502/503/504, passed on as it is.
                            count(&pool.service, "error_5xx");
                            return Ok(downstream_response(answer, in_flight));
                        }
                    }
                }
                Ok(Err(err)) => {
                    if err.is_connect() {
                        instance.record_failure(self.eject_after, self.eject_for, &pool.service);
                    }
                    match pool.pick(self.balance, &tried).filter(|_| may_retry) {
                        Some(next) => {
                            tracing::debug!(
                                service = %pool.service,
                                upstream = %instance.origin,
                                error = %format!("{err:#}"),
                                "retrying on another instance"
                            );
                            count(&pool.service, "retry");
                            index = next;
                        }
                        None => {
                            count(&pool.service, "error_5xx");
                            tracing::warn!(
                                service = %pool.service,
                                upstream = %instance.origin,
                                error = %format!("{err:#}"),
                                "forwarding to the upstream failed"
                            );
                            return Err(ProxyError::Unreachable);
                        }
                    }
                }
            }
        }
    }

    /// Reads an idempotent request's body whole, so that a retry can send it again.
    async fn buffer(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ProxyError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_retry_body_bytes as u64) {
            return Err(ProxyError::BodyTooLarge);
        }
        match Limited::new(body, self.max_retry_body_bytes).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.is::<LengthLimitError>() => Err(ProxyError::BodyTooLarge),
            Err(_) => Err(ProxyError::UnreadableBody),
        }
    }
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    match proxy.forward(request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// Counts one event of a request to `service`. Outcomes: `ok` (the instance answered below
/// 500), `error_5xx` (the client got a 5xx from the instance, or a 502 because none could be
/// reached), `retry` (an attempt failed and another instance is tried), `unavailable` (no
/// instance to try: 503) and `timeout` (no answer within the route's timeout: 504).
fn count(service: &str, outcome: &'static str) {
    metrics::counter!(
        "mercato_gateway_upstream_requests_total",
        "service" => service.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The longest duration the configuration may hold: longer than any sensible setting, and
/// short enough that adding it to the clock cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the proxy itself answers when it cannot pass on an upstream's answer.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    /// 404: no route matches the path.
    #[error("no route matches this path")]
    NoRoute,
    /// 400: the path would reach the instance in another form than the one that was routed
    /// (dot segments, backslashes), which could let it reach routes the edge refuses.
    #[error("the request path is not in canonical form")]
    PathNotCanonical,
    /// 400: the client's body broke off while it was being read.
    #[error("the request body could not be read")]
    UnreadableBody,
    /// 413: an idempotent request's body is larger than `max_retry_body_bytes`.
    #[error("the request body is too large")]
    BodyTooLarge,
    /// 503 with `Retry-After: 1`: every instance of the service is unhealthy or ejected.
    #[error("the service is unavailable; retry shortly")]
    NoInstance,
    /// 502: no instance could be reached, retries included.
    #[error("the upstream service could not be reached")]
    Unreachable,
    /// 504: the response headers did not come within the route's timeout.
    #[error("the upstream service did not answer in time")]
    Timeout,
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        match self {
            Self::NoRoute => ApiError::NotFound(detail).into_response(),
            Self::PathNotCanonical | Self::UnreadableBody => ApiError::BadRequest(detail).into_response(),
            Self::BodyTooLarge => ApiError::PayloadTooLarge.into_response(),
            Self::NoInstance => ApiError::Unavailable {
                message: detail,
                retry_after_secs: 1,
            }
            .into_response(),
            Self::Unreachable => problem(StatusCode::BAD_GATEWAY, "bad-gateway", detail),
            Self::Timeout => problem(StatusCode::GATEWAY_TIMEOUT, "gateway-timeout", detail),
        }
    }
}

/// A problem+json answer for the statuses [`ApiError`] has no variant for, in its format.
fn problem(status: StatusCode, slug: &str, detail: String) -> Response {
    let body = Problem {
        kind: format!("https://mercato.dev/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: Some(detail),
        errors: Vec::new(),
        extensions: serde_json::Map::new(),
    };
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// One route, parsed.
struct CompiledRoute {
    pattern: String,
    segments: Vec<Segment>,
    pool: Arc<Pool>,
    timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl CompiledRoute {
    fn parse(route: &Route, pool: Arc<Pool>) -> anyhow::Result<Self> {
        let pattern = &route.pattern;
        ensure!(
            pattern.starts_with('/'),
            "route pattern `{pattern}` must start with `/`"
        );
        ensure!(
            route.timeout.is_none_or(|t| !t.is_zero() && t <= MAX_DURATION),
            "route `{pattern}`: a timeout must be longer than zero and at most a year"
        );
        let trimmed = pattern.trim_end_matches('/');
        let segments = trimmed
            .split('/')
            .skip(1)
            .map(|segment| match segment {
                "" => bail!("route pattern `{pattern}` has an empty segment"),
                "*" => Ok(Segment::Any),
                literal if literal.contains('*') => {
                    bail!("route pattern `{pattern}`: `*` must be a whole segment")
                }
                literal => Ok(Segment::Literal(literal.to_owned())),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            pattern: pattern.clone(),
            segments,
            pool,
            timeout: route.timeout,
        })
    }

    /// Whether `path` is the pattern or lies below it.
    fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut path_segments = rest.split('/');
        self.segments
            .iter()
            .all(|segment| match (segment, path_segments.next()) {
                (_, None) => false,
                (Segment::Any, Some(actual)) => !actual.is_empty(),
                (Segment::Literal(literal), Some(actual)) => literal == actual,
            })
    }

    /// More literal segments first, then more segments; between patterns of the same shape, a
    /// literal earlier in the path wins (two such patterns never match the same path anyway).
    fn specificity(&self) -> (usize, usize, Vec<bool>) {
        let literal: Vec<bool> = self.segments.iter().map(|s| matches!(s, Segment::Literal(_))).collect();
        (literal.iter().filter(|l| **l).count(), self.segments.len(), literal)
    }
}

/// The instances of one service.
struct Pool {
    service: String,
    instances: Vec<Instance>,
    /// Advances on every pick: round-robin's position, and least-connections' tie breaker.
    turn: AtomicUsize,
}

impl Pool {
    /// The index of the instance to try next, among those that are healthy, not ejected and
    /// not `tried` already by this request.
    fn pick(&self, balance: Balance, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        // Each candidate with its load read once, so the choice below works on one snapshot.
        let candidates: Vec<(usize, usize)> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(index, instance)| !tried.contains(index) && instance.is_available(now))
            .map(|(index, instance)| (index, instance.in_flight.load(Ordering::Relaxed)))
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let eligible: Vec<usize> = match balance {
            Balance::RoundRobin => candidates.iter().map(|(index, _)| *index).collect(),
            Balance::LeastConnections => {
                let least = candidates.iter().map(|(_, load)| *load).min()?;
                candidates
                    .iter()
                    .filter(|(_, load)| *load == least)
                    .map(|(index, _)| *index)
                    .collect()
            }
        };
        eligible.get(turn.checked_rem(eligible.len())?).copied()
    }
}

/// One instance of a service and what the checks know about it.
struct Instance {
    /// `scheme://host:port`, what request paths are appended to.
    origin: String,
    health_url: Url,
    /// Requests sent and not yet answered in full; shared with the guards of those requests.
    in_flight: Arc<AtomicUsize>,
    /// Held only for reads and writes, never across an await.
    state: Mutex<InstanceState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InstanceState {
    /// Set by the active checks.
    healthy: bool,
    /// Failures since the last success; passive checks eject at `eject_after`. Not reset by an
    /// ejection, so an instance still failing when it comes back is ejected at its next failure.
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
}

impl InstanceState {
    const NEW: Self = Self {
        healthy: true,
        consecutive_failures: 0,
        ejected_until: None,
    };

    fn is_available(&self, now: Instant) -> bool {
        self.healthy && self.ejected_until.is_none_or(|until| until <= now)
    }

    /// Counts a failure; answers whether it ejected the instance (which was not ejected before).
    fn fail(&mut self, eject_after: u32, eject_for: Duration, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures < eject_after {
            return false;
        }
        let was_ejected = self.ejected_until.is_some_and(|until| until > now);
        self.ejected_until = Some(now + eject_for);
        !was_ejected
    }

    fn succeed(&mut self) {
        self.consecutive_failures = 0;
    }

    fn checked(&mut self, passed: bool) {
        self.healthy = passed;
        if passed {
            self.consecutive_failures = 0;
            self.ejected_until = None;
        }
    }
}

impl Instance {
    fn parse(url: &str, health_path: &str) -> anyhow::Result<Self> {
        let parsed = Url::parse(url).context("not a URL")?;
        ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "the scheme must be http or https"
        );
        ensure!(parsed.host().is_some(), "the URL has no host");
        ensure!(
            parsed.username().is_empty() && parsed.password().is_none(),
            "the URL must not carry credentials"
        );
        ensure!(
            parsed.path() == "/" && parsed.query().is_none() && parsed.fragment().is_none(),
            "the URL must be scheme://host:port with no path, query or fragment"
        );
        let origin = parsed.origin().ascii_serialization();
        let health_url = Url::parse(&format!("{origin}{health_path}")).context("building the health URL")?;
        Ok(Self {
            origin,
            health_url,
            in_flight: Arc::new(AtomicUsize::new(0)),
            state: Mutex::new(InstanceState::NEW),
        })
    }

    fn state(&self) -> MutexGuard<'_, InstanceState> {
        // The state stays consistent even if a holder panicked: every write is one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_available(&self, now: Instant) -> bool {
        self.state().is_available(now)
    }

    /// The upstream URL of a request, refused when URL parsing would change the path that was
    /// routed (`/api/v1/cart/../../internal` must not become `/internal`).
    fn url_for(&self, path_and_query: &str, path: &str) -> Result<Url, ProxyError> {
        let url = Url::parse(&format!("{}{path_and_query}", self.origin)).map_err(|_| ProxyError::PathNotCanonical)?;
        if url.path() != path {
            return Err(ProxyError::PathNotCanonical);
        }
        Ok(url)
    }

    /// Counts a request in flight until the returned guard is dropped.
    fn begin(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.in_flight))
    }

    fn record_success(&self) {
        self.state().succeed();
    }

    fn record_failure(&self, eject_after: u32, eject_for: Duration, service: &str) {
        let ejected = self.state().fail(eject_after, eject_for, Instant::now());
        if ejected {
            tracing::warn!(
                service,
                upstream = %self.origin,
                eject_for_ms = eject_for.as_millis() as u64,
                "upstream ejected after consecutive failures"
            );
        }
    }

    fn record_health(&self, passed: bool, service: &str) {
        let was_healthy = {
            let mut state = self.state();
            let was_healthy = state.healthy;
            state.checked(passed);
            was_healthy
        };
        match (was_healthy, passed) {
            (true, false) => tracing::warn!(service, upstream = %self.origin, "upstream failed its health check"),
            (false, true) => tracing::info!(service, upstream = %self.origin, "upstream healthy again"),
            _ => {}
        }
    }
}

/// One request counted in an instance's load; the count drops with the guard.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request body as each attempt sends it.
enum Outgoing {
    /// Idempotent requests: read whole, so every attempt can send it again.
    Buffered(Bytes),
    /// Other requests: streamed, and so sent once.
    Streamed(Option<Body>),
}

impl Outgoing {
    fn max_attempts(&self, retries: u32) -> usize {
        match self {
            Self::Buffered(_) => retries as usize + 1,
            Self::Streamed(_) => 1,
        }
    }

    fn next_attempt(&mut self) -> reqwest::Body {
        match self {
            Self::Buffered(bytes) => reqwest::Body::from(bytes.clone()),
            Self::Streamed(body) => match body.take() {
                // No body at all (a bodiless POST) goes out as an empty one, not a chunked one.
                Some(body) if body.size_hint().exact() == Some(0) => reqwest::Body::from(Bytes::new()),
                Some(body) => reqwest::Body::wrap_stream(body.into_data_stream()),
                // Not reached: `max_attempts` gives a streamed body a single attempt.
                None => reqwest::Body::from(Bytes::new()),
            },
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::PUT, Method::DELETE, Method::OPTIONS].contains(method)
}

/// The answers that mean "this instance cannot serve now", retried elsewhere and counted
/// against the instance.
fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Headers set by the edge for the whole request's life; a client's `Connection` header
/// cannot make the proxy drop them.
const KEPT: [HeaderName; 2] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-correlation-id"),
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !KEPT.contains(name))
        .collect();
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in named.iter().chain(&proxy_headers).chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request's headers as the instance gets them: without hop-by-hop headers and `Host`
/// (reqwest sets the instance's own), with the client appended to `X-Forwarded-For`, and with
/// `X-Forwarded-Proto` and `X-Forwarded-Host` saying what this proxy was asked (a client's own
/// values for those two are replaced, since the instance builds links from them).
fn upstream_headers(parts: &axum::http::request::Parts) -> HeaderMap {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    let host = headers.remove(header::HOST).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // reqwest sets the length of a buffered body itself. A streamed one keeps the declared
    // length, unless the client sent a chunked body too, whose framing wins over it.
    if is_idempotent(&parts.method) || parts.headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }

    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        let mut chain: Vec<String> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect();
        chain.push(peer.ip().to_string());
        if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    let proto = parts.uri.scheme_str().unwrap_or("http");
    if let Ok(value) = HeaderValue::from_str(proto) {
        headers.insert(X_FORWARDED_PROTO, value);
    }
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    } else {
        headers.remove(X_FORWARDED_HOST);
    }
    headers
}

/// The instance's answer as the client gets it, the body streamed chunk by chunk while the
/// instance stays counted as busy.
fn downstream_response(answer: reqwest::Response, in_flight: InFlight) -> Response {
    let status = answer.status();
    let mut headers = answer.headers().clone();
    strip_hop_by_hop(&mut headers);
    let body = CountedStream {
        inner: answer.bytes_stream().boxed(),
        _in_flight: in_flight,
    };
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// An upstream body that keeps its instance counted as busy until it ends or the client leaves.
struct CountedStream {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    _in_flight: InFlight,
}

impl Stream for CountedStream {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &[(&str, &str)]) -> ProxyConfig {
        let services: BTreeSet<&str> = routes.iter().map(|(_, service)| *service).collect();
        ProxyConfig {
            routes: routes
                .iter()
                .map(|(pattern, service)| Route {
                    pattern: (*pattern).to_owned(),
                    service: (*service).to_owned(),
                    timeout: None,
                })
                .collect(),
            upstreams: services
                .into_iter()
                .enumerate()
                .map(|(i, service)| (service.to_owned(), vec![format!("http://127.0.0.1:{}", 9100 + i)]))
                .collect(),
            balance: Balance::RoundRobin,
            health_path: "/health/ready".to_owned(),
            health_interval: Duration::from_secs(1),
            eject_after: 3,
            eject_for: Duration::from_secs(10),
            retries: 1,
            connect_timeout: Duration::from_secs(1),
            max_retry_body_bytes: 1024,
        }
    }

    /// Which pattern answers each path (`None`: no route).
    fn check(routes: &[(&str, &str)], cases: &[(&str, Option<&str>)]) {
        let proxy = Proxy::new(config(routes)).unwrap();
        for (path, expected) in cases {
            let actual = proxy.route(path).map(|r| r.pattern.as_str());
            assert_eq!(actual, *expected, "path {path}");
        }
    }

    #[test]
    fn a_pattern_matches_its_path_and_everything_below_it_only() {
        check(
            &[("/api/v1/cart", "cart")],
            &[
                ("/api/v1/cart", Some("/api/v1/cart")),
                ("/api/v1/cart/", Some("/api/v1/cart")),
                ("/api/v1/cart/items/x", Some("/api/v1/cart")),
                ("/api/v1/cartx", None),
                ("/api/v1/car", None),
                ("/api/v1", None),
                ("/", None),
                ("*", None),
            ],
        );
    }

    #[test]
    fn a_star_segment_matches_any_one_nonempty_segment() {
        check(
            &[("/api/v1/orders/*/tracking", "delivery")],
            &[
                ("/api/v1/orders/42/tracking", Some("/api/v1/orders/*/tracking")),
                ("/api/v1/orders/42/tracking/live", Some("/api/v1/orders/*/tracking")),
                ("/api/v1/orders//tracking", None),
                ("/api/v1/orders/42", None),
                ("/api/v1/orders/42/tracks", None),
            ],
        );
    }

    #[test]
    fn the_most_specific_route_wins_whatever_the_order_of_the_config() {
        let routes = [
            ("/", "web"),
            ("/api/v1/orders", "orders"),
            ("/api/v1/orders/*/tracking", "delivery"),
            ("/api/v1/orders/export", "reports"),
            ("/api/*/orders/*/tracking/*", "legacy"),
        ];
        let cases = [
            ("/api/v1/orders", Some("/api/v1/orders")),
            ("/api/v1/orders/7", Some("/api/v1/orders")),
            // Four literals beat three.
            ("/api/v1/orders/7/tracking", Some("/api/v1/orders/*/tracking")),
            ("/api/v1/orders/export", Some("/api/v1/orders/export")),
            // Same literal count: the longer pattern wins.
            ("/api/v1/orders/export/tracking", Some("/api/v1/orders/*/tracking")),
            // Four literals beat three even with fewer segments.
            ("/api/v1/orders/7/tracking/9", Some("/api/v1/orders/*/tracking")),
            ("/api/v2/orders/7/tracking/9", Some("/api/*/orders/*/tracking/*")),
            ("/index.html", Some("/")),
        ];
        check(&routes, &cases);
        let mut reversed = routes;
        reversed.reverse();
        check(&reversed, &cases);
    }

    #[test]
    fn a_config_with_mistakes_is_refused() {
        type Spoil = fn(&mut ProxyConfig);
        let cases: [(&str, Spoil); 10] = [
            ("unknown service", |c| c.routes[0].service = "nope".to_owned()),
            ("pattern without slash", |c| c.routes[0].pattern = "api".to_owned()),
            ("empty segment", |c| c.routes[0].pattern = "/api//cart".to_owned()),
            ("partial star", |c| c.routes[0].pattern = "/api/ca*".to_owned()),
            ("bad url", |c| {
                c.upstreams.get_mut("cart").unwrap()[0] = "127.0.0.1:80".to_owned()
            }),
            ("url with path", |c| {
                c.upstreams.get_mut("cart").unwrap()[0] = "http://127.0.0.1:80/x".to_owned()
            }),
            ("no instances", |c| c.upstreams.get_mut("cart").unwrap().clear()),
            ("duplicate pattern", |c| {
                let mut twin = c.routes[0].clone();
                twin.pattern.push('/');
                c.routes.push(twin);
            }),
            ("zero eject_after", |c| c.eject_after = 0),
            ("zero health interval", |c| c.health_interval = Duration::ZERO),
        ];
        assert!(Proxy::new(config(&[("/api/v1/cart", "cart")])).is_ok());
        for (name, spoil) in cases {
            let mut bad = config(&[("/api/v1/cart", "cart")]);
            spoil(&mut bad);
            assert!(Proxy::new(bad).is_err(), "{name} was accepted");
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_in_between_starts_over() {
        let now = Instant::now();
        let eject_for = Duration::from_secs(10);
        let mut state = InstanceState::NEW;
        assert!(!state.fail(3, eject_for, now));
        assert!(!state.fail(3, eject_for, now));
        state.succeed();
        assert!(!state.fail(3, eject_for, now));
        assert!(!state.fail(3, eject_for, now));
        assert!(state.is_available(now));
        assert!(state.fail(3, eject_for, now), "the third failure in a row ejects");
        assert!(!state.is_available(now));
        assert!(state.is_available(now + eject_for));
        // Back from ejection and failing again: out at once.
        assert!(state.fail(3, eject_for, now + eject_for));
        assert!(!state.is_available(now + eject_for));
    }

    #[test]
    fn a_passing_health_check_ends_an_ejection_and_a_failing_one_takes_the_instance_out() {
        let now = Instant::now();
        let mut state = InstanceState::NEW;
        state.fail(1, Duration::from_secs(60), now);
        assert!(!state.is_available(now));
        state.checked(true);
        assert!(state.is_available(now));
        assert_eq!(state.consecutive_failures, 0);
        state.checked(false);
        assert!(!state.is_available(now));
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped_but_request_ids_stay() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop, x-request-id"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-whatever", "1"),
            ("x-secret-hop", "1"),
            ("x-request-id", "req-1"),
            ("x-correlation-id", "corr-1"),
            ("content-type", "text/plain"),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-correlation-id", "x-request-id"]);
    }

    #[test]
    fn a_path_that_url_parsing_would_change_is_refused() {
        let instance = Instance::parse("http://127.0.0.1:9100", "/health/ready").unwrap();
        let url = instance
            .url_for("/api/v1/cart/items?x=1&y=a%20b", "/api/v1/cart/items")
            .unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9100/api/v1/cart/items?x=1&y=a%20b");
        for path in [
            "/api/v1/cart/../../internal/x",
            "/api/v1/cart/%2e%2e/x",
            "/api/v1/cart/./x",
        ] {
            assert!(
                matches!(instance.url_for(path, path), Err(ProxyError::PathNotCanonical)),
                "{path}"
            );
        }
    }
}
