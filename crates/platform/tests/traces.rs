//! Trace export end to end, against a collector that decodes what it receives: a request that
//! arrives with a `traceparent` is served by one process, which calls another through the
//! service client; the second writes an event, and a consumer handles it. Every span lands at
//! the collector under the caller's trace id, each one the child of the one before. Its own test
//! binary: trace export installs process-wide state (the subscriber, the exporting flag).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use http::Method;
use platform::bus::Delivery;
use platform::config::TelemetryConfig;
use platform::consumer::{EventHandler, IdempotentConsumer};
use platform::events::Event;
use platform::http_client::{ClientPolicy, ServiceClient};
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::store::Tx;
use platform::testing::{OtlpCollector, ReceivedSpan};
use platform::traces::TraceExport;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// `GET /checkout` on the first server as a client with `traceparent`: the event the second
/// server wrote for it.
async fn checkout(first: &str, traceparent: &str) -> Event {
    reqwest::Client::new()
        .get(format!("{first}/checkout"))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Flushes the exporter until `pick` finds what it wants among the spans the collector holds.
async fn exported<T>(
    export: &TraceExport,
    collector: &OtlpCollector,
    pick: impl Fn(Vec<ReceivedSpan>) -> Option<T>,
) -> Option<T> {
    let pick = &pick;
    platform::testing::eventually(Duration::from_secs(20), || async move {
        let export = export.clone();
        tokio::task::spawn_blocking(move || export.flush()).await.unwrap();
        pick(collector.spans())
    })
    .await
}

/// The second process: writes an event inside its request and answers it.
async fn write_event() -> Json<Event> {
    Json(Event::new(
        "orders",
        "order.created",
        "o-1",
        serde_json::json!({}),
        Some("corr-1"),
    ))
}

struct Handled(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl EventHandler for Handled {
    async fn handle(&self, _tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        tracing::info!("handled");
        self.0.lock().unwrap().push(event.id.to_string());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_calls_and_its_events_export_one_trace() {
    // Off by default: no trace context on events.
    assert!(!platform::traces::exporting());
    let quiet = Event::new("orders", "order.created", "o-0", serde_json::json!({}), None);
    assert_eq!(quiet.traceparent, None);
    assert!(!quiet.to_json().contains("traceparent"));

    let collector = OtlpCollector::start().await.unwrap();
    let refused = TelemetryConfig {
        otlp_endpoint: Some("collector:4318".to_owned()),
        ..TelemetryConfig::default()
    };
    assert!(TraceExport::start(&refused, "x", true).is_err(), "not an http URL");
    // The edge trusts its caller's trace context here (a tracer in front, say).
    let config = TelemetryConfig {
        otlp_endpoint: Some(format!("{}/", collector.url)),
        trust_incoming_traceparent: true,
        ..TelemetryConfig::default()
    };
    let export = TraceExport::start(&config, "mercato-test", true)
        .unwrap()
        .expect("an endpoint is set");
    platform::telemetry::init_logging(true, Some(&export));

    let second = serve(
        Router::new()
            .route("/internal/event", post(write_event))
            .layer(middleware::from_fn(platform::telemetry::observe)),
    )
    .await;
    let client = Arc::new(ServiceClient::new(&second, ClientPolicy::default()));
    let first = serve(
        Router::new()
            .route(
                "/checkout",
                get(|State(client): State<Arc<ServiceClient>>| async move {
                    let response = client.call(Method::POST, "/internal/event", None, &[]).await.unwrap();
                    Json(response.json::<Event>().await.unwrap())
                }),
            )
            .with_state(client)
            .layer(middleware::from_fn(platform::telemetry::observe)),
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let client_traceparent = format!("00-{trace_id}-{caller_span}-01");
    let event = checkout(&first, &client_traceparent).await;
    let traceparent = event.traceparent.clone().expect("the event carries its trace");
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")), "{traceparent}");

    // A consumer in a third place handles the event inside the same trace.
    let (db, _dir) = platform::testing::sqlite_db().await.unwrap();
    db.migrate("platform", PLATFORM_MIGRATIONS).await.unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let consumer = IdempotentConsumer::new("analytics", db, Arc::new(Handled(handled.clone())));
    let delivered = Event::from_json(&event.to_json()).unwrap();
    consumer.deliver(&delivered).await.unwrap();
    assert_eq!(handled.lock().unwrap().len(), 1);

    let wanted = |spans: &[ReceivedSpan]| {
        spans.iter().filter(|s| s.name == "request").count() >= 2 && spans.iter().any(|s| s.name == "event")
    };
    let spans = exported(&export, &collector, |spans| wanted(&spans).then_some(spans))
        .await
        .expect("the collector receives the request spans and the event span");

    let outer = spans
        .iter()
        .find(|s| s.name == "request" && s.attribute("route") == Some("/checkout"))
        .expect("the first process's request span");
    let inner = spans
        .iter()
        .find(|s| s.name == "request" && s.attribute("route") == Some("/internal/event"))
        .expect("the second process's request span");
    let handling = spans.iter().find(|s| s.name == "event").expect("the consumer's span");
    for span in [outer, inner, handling] {
        assert_eq!(span.trace_id, trace_id, "{span:?}");
        assert_eq!(span.service, "mercato-test");
    }
    assert_eq!(outer.parent_span_id, caller_span, "the caller's span is the parent");
    assert_eq!(
        inner.parent_span_id, outer.span_id,
        "the service call carries the trace"
    );
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", inner.span_id),
        "the event names the span that wrote it"
    );
    assert_eq!(
        handling.parent_span_id, inner.span_id,
        "the consumer continues the event's trace"
    );
    assert_eq!(handling.attribute("consumer"), Some("analytics"));
    assert_eq!(handling.attribute("correlation_id"), Some("corr-1"));

    // By default the edge does not: a client's traceparent starts nothing, and what the
    // edge sends on is its own trace.
    platform::traces::trust_incoming(false);
    let event = checkout(&first, &client_traceparent).await;
    let traceparent = event.traceparent.expect("the event carries a trace of its own");
    assert!(!traceparent.contains(trace_id), "{traceparent}");
    // (Both servers live in this test's process, so the second one distrusts the first here;
    // a service behind the gateway trusts it, which the distributed journey test checks.)
    let edge = exported(&export, &collector, |spans| {
        spans
            .into_iter()
            .find(|s| s.trace_id != trace_id && s.attribute("route") == Some("/checkout"))
    })
    .await
    .expect("the edge's span of the untrusted request, in a trace of its own");
    assert_eq!(edge.parent_span_id, "", "a root span, not the client's child");

    tokio::task::spawn_blocking(move || export.shutdown()).await.unwrap();
    assert!(!platform::traces::exporting());
}
