//! The reverse proxy over real TCP: upstreams are small axum apps on ports of their own, the
//! proxy runs on another, and the tests call it with reqwest.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gateway::proxy::{Balance, Proxy, ProxyConfig, Route, UpstreamStatus};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Serves `router` on a fresh port until the test's runtime ends; answers its base URL.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// The URL of a port that was bound and let go: connections to it are refused.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// One request as an upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// What an upstream received, in order.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// An upstream that records every request and answers `status` with its `name` as the body.
async fn recording_upstream(name: &'static str, status: StatusCode) -> (String, Log) {
    let log = Log::default();
    let record = {
        let log = log.clone();
        move |request: Request| async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            log.0.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
            });
            (status, name)
        }
    };
    (serve(Router::new().fallback(record)).await, log)
}

async fn live(name: &'static str) -> (String, Log) {
    recording_upstream(name, StatusCode::OK).await
}

fn route(pattern: &str, service: &str) -> Route {
    Route {
        pattern: pattern.to_owned(),
        service: service.to_owned(),
        timeout: Some(Duration::from_secs(5)),
    }
}

/// Every path to `service`, whose instances are `urls`; no ejection unless a test asks for it.
fn config(service: &str, urls: &[&str]) -> ProxyConfig {
    ProxyConfig {
        routes: vec![route("/", service)],
        upstreams: BTreeMap::from([(service.to_owned(), urls.iter().map(|u| (*u).to_owned()).collect())]),
        balance: Balance::RoundRobin,
        health_path: "/health/ready".to_owned(),
        health_interval: Duration::from_millis(50),
        eject_after: 1_000,
        eject_for: Duration::from_secs(60),
        retries: 1,
        connect_timeout: Duration::from_secs(1),
        max_retry_body_bytes: 64 * 1024,
    }
}

/// The proxy, served on its own port.
struct Gateway {
    url: String,
    proxy: Arc<Proxy>,
    http: reqwest::Client,
}

impl Gateway {
    async fn start(config: ProxyConfig) -> Self {
        let proxy = Proxy::new(config).unwrap();
        let url = serve(proxy.router()).await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { url, proxy, http }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path).send().await.unwrap()
    }

    async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response = self.get(path).await;
        (response.status(), response.text().await.unwrap())
    }

    fn instance(&self, url: &str) -> UpstreamStatus {
        self.proxy.status().into_iter().find(|s| s.url == url).unwrap()
    }
}

/// Waits until `condition` holds, failing the test after five seconds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts a problem+json answer with `status`, and answers its body.
async fn assert_problem(response: reqwest::Response, status: StatusCode) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status.as_u16());
    assert!(problem["type"].is_string() && problem["title"].is_string() && problem["detail"].is_string());
    problem
}

#[tokio::test]
async fn each_path_reaches_its_most_specific_route_and_an_unmatched_one_is_a_404_problem() {
    let (cart, _) = live("cart").await;
    let (orders, _) = live("orders").await;
    let (delivery, _) = live("delivery").await;
    let gateway = Gateway::start(ProxyConfig {
        routes: vec![
            route("/api/v1/orders", "orders"),
            route("/api/v1/orders/*/tracking", "delivery"),
            route("/api/v1/cart", "cart"),
        ],
        upstreams: BTreeMap::from([
            ("cart".to_owned(), vec![cart]),
            ("orders".to_owned(), vec![orders]),
            ("delivery".to_owned(), vec![delivery]),
        ]),
        ..config("unused", &[])
    })
    .await;

    for (path, service) in [
        ("/api/v1/cart", "cart"),
        ("/api/v1/cart/items/x", "cart"),
        ("/api/v1/orders", "orders"),
        ("/api/v1/orders/42", "orders"),
        ("/api/v1/orders/42/tracking", "delivery"),
        ("/api/v1/orders/42/tracking/live", "delivery"),
    ] {
        assert_eq!(
            gateway.get_text(path).await,
            (StatusCode::OK, service.to_owned()),
            "{path}"
        );
    }
    for path in ["/api/v1/cartx", "/api/v1", "/elsewhere"] {
        assert_problem(gateway.get(path).await, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_the_instances() {
    let (a, a_log) = live("a").await;
    let (b, b_log) = live("b").await;
    let gateway = Gateway::start(config("svc", &[&a, &b])).await;

    let mut answers = BTreeMap::<String, usize>::new();
    for _ in 0..10 {
        let (status, body) = gateway.get_text("/anything").await;
        assert_eq!(status, StatusCode::OK);
        *answers.entry(body).or_default() += 1;
    }
    assert_eq!(answers, BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 5)]));
    assert_eq!((a_log.len(), b_log.len()), (5, 5));
}

/// An upstream whose `/slow` reports its start on `started` and then waits for `release`;
/// every other path answers its name at once.
async fn slow_upstream(
    name: &'static str,
    started: mpsc::UnboundedSender<&'static str>,
    release: Arc<Notify>,
) -> String {
    let slow = move || async move {
        started.send(name).unwrap();
        release.notified().await;
        name
    };
    serve(
        Router::new()
            .route("/slow", get(slow))
            .fallback(move || async move { name }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_requests_to_the_idle_instance_while_the_other_is_busy() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let a = slow_upstream("a", started_tx.clone(), release.clone()).await;
    let b = slow_upstream("b", started_tx, release.clone()).await;
    let gateway = Arc::new(
        Gateway::start(ProxyConfig {
            balance: Balance::LeastConnections,
            ..config("svc", &[&a, &b])
        })
        .await,
    );

    let slow = tokio::spawn({
        let gateway = gateway.clone();
        async move { gateway.get_text("/slow").await }
    });
    let busy = tokio::time::timeout(Duration::from_secs(5), started.recv())
        .await
        .expect("the slow request never reached an instance")
        .unwrap();
    let (busy_url, idle) = if busy == "a" { (&a, "b") } else { (&b, "a") };
    assert_eq!(gateway.instance(busy_url).in_flight, 1);

    for _ in 0..6 {
        assert_eq!(gateway.get_text("/fast").await, (StatusCode::OK, idle.to_owned()));
    }

    release.notify_one();
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, busy.to_owned()));
    eventually("the finished slow request no longer counts", || {
        gateway.instance(busy_url).in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn a_get_to_a_pool_with_a_dead_instance_succeeds_every_time_by_retrying_on_the_live_one() {
    let (live_url, live_log) = live("live").await;
    let dead = dead_url().await;
    let gateway = Gateway::start(config("svc", &[&live_url, &dead])).await;

    for _ in 0..10 {
        assert_eq!(gateway.get_text("/items").await, (StatusCode::OK, "live".to_owned()));
    }
    assert_eq!(live_log.len(), 10, "each GET reached the live instance exactly once");
    // Not ejected (eject_after is high): the retries alone kept every request whole.
    assert_eq!(gateway.instance(&dead).ejected_until, None);
}

#[tokio::test]
async fn a_post_that_meets_a_dead_instance_is_a_502_and_is_never_retried() {
    let (live_url, live_log) = live("live").await;
    let dead = dead_url().await;
    let gateway = Gateway::start(config("svc", &[&live_url, &dead])).await;

    let mut answered = BTreeSet::new();
    let mut bad_gateways = 0;
    for i in 0..4 {
        let body = format!("order-{i}");
        let response = gateway
            .request(reqwest::Method::POST, "/orders")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::OK => {
                answered.insert(body);
            }
            StatusCode::BAD_GATEWAY => {
                assert_problem(response, StatusCode::BAD_GATEWAY).await;
                bad_gateways += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(bad_gateways >= 1, "round robin sent no POST to the dead instance");
    let received: Vec<String> = live_log
        .all()
        .into_iter()
        .map(|seen| String::from_utf8(seen.body.to_vec()).unwrap())
        .collect();
    let unique: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(received.len(), unique.len(), "a POST arrived twice: {received:?}");
    assert_eq!(
        unique, answered,
        "the live instance saw a POST that failed at the gateway"
    );
}

#[tokio::test]
async fn an_instance_answering_503_is_ejected_after_eject_after_failures_and_gets_no_more_requests() {
    let (good, _) = live("good").await;
    let (failing, failing_log) = recording_upstream("failing", StatusCode::SERVICE_UNAVAILABLE).await;
    let gateway = Gateway::start(ProxyConfig {
        eject_after: 3,
        ..config("svc", &[&good, &failing])
    })
    .await;

    for _ in 0..20 {
        assert_eq!(gateway.get_text("/x").await, (StatusCode::OK, "good".to_owned()));
    }
    assert_eq!(
        failing_log.len(),
        3,
        "the failing instance was tried after its ejection"
    );
    assert!(gateway.instance(&failing).ejected_until.is_some());
    assert_eq!(gateway.instance(&good).ejected_until, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_an_unready_instance_out_and_bring_it_back_when_ready() {
    let ready = Arc::new(AtomicBool::new(true));
    let health = |State(ready): State<Arc<AtomicBool>>| async move {
        if ready.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let upstream = serve(
        Router::new()
            .route("/health/ready", get(health))
            .fallback(|| async { "served" })
            .with_state(ready.clone()),
    )
    .await;
    let gateway = Gateway::start(config("svc", &[&upstream])).await;
    let cancel = CancellationToken::new();
    let checks = gateway.proxy.spawn_health_checks(cancel.clone());

    ready.store(false, Ordering::SeqCst);
    eventually("the instance is marked unhealthy", || {
        !gateway.instance(&upstream).healthy
    })
    .await;
    assert!(!gateway.proxy.ready().await);
    let response = gateway.get("/x").await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;

    ready.store(true, Ordering::SeqCst);
    eventually("the instance is healthy again", || gateway.instance(&upstream).healthy).await;
    assert!(gateway.proxy.ready().await);
    assert_eq!(gateway.get_text("/x").await, (StatusCode::OK, "served".to_owned()));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), checks)
        .await
        .expect("the health checks did not stop when cancelled")
        .unwrap();
}

#[tokio::test]
async fn the_only_instance_ejected_makes_a_503_problem_with_retry_after() {
    let dead = dead_url().await;
    let gateway = Gateway::start(ProxyConfig {
        eject_after: 1,
        ..config("svc", &[&dead])
    })
    .await;

    assert_problem(gateway.get("/x").await, StatusCode::BAD_GATEWAY).await;
    assert!(gateway.instance(&dead).ejected_until.is_some());
    assert!(!gateway.proxy.ready().await);

    let response = gateway.get("/x").await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_reach_the_client_as_they_are_produced() {
    let release = Arc::new(Notify::new());
    let events = |State(release): State<Arc<Notify>>| async move {
        let stream = futures::stream::unfold(0, move |step| {
            let release = release.clone();
            async move {
                match step {
                    0 => Some((Ok::<_, Infallible>("data: one\n\n"), 1)),
                    1 => {
                        release.notified().await;
                        Some((Ok("data: two\n\n"), 2))
                    }
                    _ => None,
                }
            }
        });
        ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
    };
    let upstream = serve(Router::new().route("/events", get(events)).with_state(release.clone())).await;
    let gateway = Gateway::start(ProxyConfig {
        routes: vec![Route {
            timeout: None,
            ..route("/events", "live")
        }],
        ..config("live", &[&upstream])
    })
    .await;

    let mut response = gateway.get("/events").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut received = String::new();
    while !received.contains("data: one\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("the first event was held back by the proxy")
            .unwrap()
            .expect("the stream ended before the first event");
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!received.contains("two"));

    release.notify_one();
    while !received.contains("data: two\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("the second event never came")
            .unwrap()
            .expect("the stream ended before the second event");
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(received, "data: one\n\ndata: two\n\n");
}

#[tokio::test]
async fn a_response_slower_than_the_route_timeout_is_a_504_problem() {
    let upstream = serve(Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        "too late"
    }))
    .await;
    let gateway = Gateway::start(ProxyConfig {
        routes: vec![Route {
            timeout: Some(Duration::from_millis(200)),
            ..route("/", "slow")
        }],
        ..config("slow", &[&upstream])
    })
    .await;

    let started = Instant::now();
    assert_problem(gateway.get("/x").await, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "took {:?}",
        started.elapsed()
    );
}

/// An upstream that records requests and answers with hop-by-hop headers of its own.
async fn echo_upstream() -> (String, Log) {
    let log = Log::default();
    let record = {
        let log = log.clone();
        move |request: Request| async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            log.0.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
            });
            Response::builder()
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("x-end-to-end", "yes")
                .body(Body::from("echoed"))
                .unwrap()
        }
    };
    (serve(Router::new().fallback(record)).await, log)
}

#[tokio::test]
async fn headers_query_and_body_are_forwarded_as_a_proxy_should() {
    let (upstream, log) = echo_upstream().await;
    let gateway = Gateway::start(config("svc", &[&upstream])).await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    let response = gateway
        .request(reqwest::Method::POST, "/api/v1/echo/a?x=1&y=two%20words&y=3")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-request-id", "req-123")
        .header("x-correlation-id", "corr-9")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-host", "spoofed.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["x-end-to-end"], "yes");
    for hop in ["x-upstream-hop", "keep-alive"] {
        assert!(!headers.contains_key(hop), "{hop} reached the client");
    }
    assert_eq!(response.text().await.unwrap(), "echoed");

    let seen = log.all();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/api/v1/echo/a?x=1&y=two%20words&y=3");
    assert_eq!(seen.body, body, "the body changed on the way");
    for hop in ["connection", "x-client-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(!seen.headers.contains_key(hop), "{hop} reached the upstream");
    }
    let proxy_host = gateway.url.trim_start_matches("http://");
    let upstream_host = upstream.trim_start_matches("http://");
    for (name, value) in [
        ("x-request-id", "req-123"),
        ("x-correlation-id", "corr-9"),
        ("x-forwarded-for", "203.0.113.7, 127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", proxy_host),
        ("host", upstream_host),
    ] {
        assert_eq!(seen.headers[name], value, "{name}");
    }

    // The upstream really sends those hop-by-hop headers: the proxy is what removes them.
    let direct = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{upstream}/direct"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.headers()["x-upstream-hop"], "1");
    assert_eq!(direct.headers()["keep-alive"], "timeout=5");
}

#[tokio::test]
async fn an_idempotent_body_arrives_whole_and_one_over_the_retry_buffer_is_a_413_problem() {
    let (upstream, log) = live("svc").await;
    let gateway = Gateway::start(ProxyConfig {
        max_retry_body_bytes: 1_000,
        ..config("svc", &[&upstream])
    })
    .await;

    let fits = vec![b'x'; 1_000];
    let response = gateway
        .request(reqwest::Method::PUT, "/doc")
        .body(fits.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = log.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].body, fits);
    assert_eq!(seen[0].headers["content-length"], "1000");

    let too_big = gateway
        .request(reqwest::Method::PUT, "/doc")
        .body(vec![b'x'; 1_001])
        .send()
        .await
        .unwrap();
    assert_problem(too_big, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(log.len(), 1, "the refused body reached the upstream");
}

#[tokio::test]
async fn a_request_without_the_client_address_is_still_forwarded() {
    let (upstream, log) = live("svc").await;
    let proxy = Proxy::new(config("svc", &[&upstream])).unwrap();
    // Served without `into_make_service_with_connect_info`: no `ConnectInfo` in the request.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, proxy.router()).await.unwrap() });

    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/x"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(log.all()[0].headers["x-forwarded-for"], "203.0.113.7");
}
